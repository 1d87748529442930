"""objective=grace, the policy-gradient update: one file per stage of a step.

* ``step``: the objective (rollouts -> rewards -> advantages -> PPO update, metrics);
* ``global_batch``: what every rank knows of the step's rollouts (the rows every reward sees);
* ``advantages``: GRPO / RLOO / REINFORCE baselines;
* ``logprobs``: the update forward's log-probs (and pooled embeddings) of finished rollouts;
* ``ppo_loss``: the clipped surrogate with KL and entropy, a pure function of tensors;
* ``embedding_loss``: each rollout's InfoNCE partners (GRACE + embedding loss);
* ``ppo_update``: mini-batches of micro-batches -> optimizer updates.
"""
