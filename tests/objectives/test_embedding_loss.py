"""GRACE's embedding loss: partner structure, agreement with the contrastive reward, exact micro-batching."""
import pytest
import torch
import torch.nn.functional as F
from train_helpers import compose_config, read_metrics

from grace.data.roles import Role
from grace.distributed.parallel import Parallel
from grace.generation.rollout import RoleSampling, RolloutRequest, expand_requests, rollout
from grace.model.loading import TINY_RANDOM, load_policy
from grace.model.prompts import PromptTemplate
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT
from grace.objectives.infonce import info_nce
from grace.objectives.policy_gradient.advantages import compute_advantages
from grace.objectives.policy_gradient.embedding_loss import rollout_partners
from grace.objectives.policy_gradient.logprobs import policy_logprobs
from grace.objectives.policy_gradient.ppo_loss import ppo_loss
from grace.objectives.policy_gradient.ppo_update import MiniBatch, StepTotals, accumulate_gradients
from grace.rewards import compute_rewards
from grace.training.trainer import train

Q, P, N = int(Role.QUERY), int(Role.POSITIVE), int(Role.NEGATIVE)


def test_partners_are_the_detached_group_means_of_the_other_roles():
    # Two groups; group 0 has two positives whose mean is re-normalised.
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    role = torch.tensor([Q, P, P, N, Q, P, N])
    partners = rollout_partners(e, group, role, "supervised")
    s = 2**-0.5
    mean_p0 = F.normalize(torch.tensor([0.0, 1.0]) + torch.tensor([s, s]), dim=0)
    expected = torch.stack([  # blocks: queries, positives, negatives; group g of block b at 2b + g
        torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1.0]),
        mean_p0, torch.tensor([s, -s]),
        torch.tensor([-1.0, 0.0]), torch.tensor([-s, -s]),
    ])  # fmt: skip
    assert torch.allclose(partners.candidates, expected, atol=1e-6)
    assert not partners.candidates.requires_grad
    assert partners.takes_part.tolist() == [True, True, True, False, True, True, False]
    assert partners.targets.tolist() == [2, 0, 0, 0, 3, 1, 0]  # query -> its positive mean; positive -> its query mean
    queries_see = [False, False, True, True, True, True]
    positives_see = [True, True, False, False, False, False]
    assert (~partners.exclude[0]).tolist() == queries_see and (~partners.exclude[1]).tolist() == positives_see


def test_a_group_without_a_positive_is_refused():
    with pytest.raises(ValueError, match=r"needs a positive rollout in every group; group\(s\) \[1\]"):
        rollout_partners(torch.eye(3), torch.tensor([0, 0, 1]), torch.tensor([Q, P, Q]), "unsupervised")


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_its_infonce_is_minus_the_contrastive_reward_term_of_queries_and_positives(mode):
    """The embedding loss trains the representation on the very partner structure the reward scores."""
    torch.manual_seed(1)
    roles = [Q, P, N] if mode == "supervised" else [Q, P]
    group = torch.tensor([g for g in range(3) for r in roles for _ in range(2)])
    role = torch.tensor([r for g in range(3) for r in roles for _ in range(2)])
    e = F.normalize(torch.randn(len(group), 16), dim=-1)
    tau = 0.1
    partners = rollout_partners(e, group, role, mode)
    out = info_nce(e, partners.candidates, partners.targets, temperature=tau, exclude=partners.exclude)
    reward = compute_rewards(e, group, role, torch.zeros(len(group), dtype=torch.bool), variant="contrastive", mode=mode, tau=tau)
    rows = partners.takes_part
    assert torch.allclose(-out.loss[rows], reward.terms["contrastive"][rows], atol=1e-5)


TRIPLETS = [
    ("What is the capital of France?", "Paris is the capital of France.", "Bananas are rich in potassium."),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", "The train leaves at noon."),
    ("How do plants make food?", "Leaves turn light into sugar.", "The museum opens at nine."),
]


def plain_full_batch_loss(model, batch, advantages, rows: MiniBatch, cfg, coef, tau):
    """The reference: one forward over every row, partners from loops over the rollout embeddings."""
    selected = torch.nonzero(rows.forward_rows).flatten()
    part = batch.select(selected)
    entropy_coef = cfg.algorithm.entropy_coef
    current = policy_logprobs(model, part, pooling=cfg.embedding.pooling, entropy="trained" if entropy_coef else "none")
    mask = part.rationale_mask & rows.policy_rows[selected].unsqueeze(1)  # rows in the PPO terms: trained ones
    normaliser = max(rows.normaliser, 1.0)
    policy = ppo_loss(current.logprobs, part.logprobs, advantages[selected], mask, normaliser=normaliser, entropy=current.entropy, entropy_coef=entropy_coef).loss
    e = F.normalize(batch.embeddings, dim=-1)

    def mean(g, r):
        members = [i for i in range(len(batch)) if batch.group[i] == g and batch.role[i] == r]
        return F.normalize(sum(e[i] for i in members), dim=0)

    groups = sorted(set(batch.group.tolist()))
    losses = []
    for k, i in enumerate(selected.tolist()):
        if not rows.embedding_rows[i]:
            continue
        g = int(batch.group[i])
        if batch.role[i] == Q:  # picks its positive among every positive and negative mean
            candidates = [mean(h, P) for h in groups] + [mean(h, N) for h in groups]
            target = groups.index(g)
        else:  # a positive picks its query among every query mean
            candidates = [mean(h, Q) for h in groups]
            target = groups.index(g)
        logits = torch.stack([current.embeddings[k] @ c for c in candidates]) / tau
        losses.append(-torch.log_softmax(logits, dim=0)[target])
    return policy + coef * torch.stack(losses).mean()


@pytest.mark.parametrize("variant", ["contrastive", "paper"])
def test_micro_batched_gradient_equals_one_full_batch_backward(variant):
    """Paper variant: the untrained queries are forwarded for the embedding loss only; with an entropy
    bonus (computed on every forwarded row) this checks that their PPO terms are masked out."""
    model, tokenizer = load_policy(TINY_RANDOM)
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    requests = [RolloutRequest(t, g, r) for g, triplet in enumerate(TRIPLETS) for t, r in zip(triplet, Role)]
    k = {Role.QUERY: 1, Role.POSITIVE: 3, Role.NEGATIVE: 1} if variant == "paper" else dict.fromkeys(Role, 2)
    sampling = {role: RoleSampling(k[role], 1.0, 1.0, 5) for role in Role}
    seeds = list(range(len(expand_requests(requests, sampling))))
    batch = rollout(model, tokenizer, template, requests, sampling, pooling="after_system", max_prompt_tokens=256, seeds=seeds)
    rewards = compute_rewards(batch.embeddings, batch.group, batch.role, batch.truncated, variant=variant)
    advantages = compute_advantages(rewards.total, batch.group * 3 + batch.role, rewards.trained)
    if variant == "contrastive":
        advantages[::3] = 0.0  # rows the policy gradient skips still take part in the embedding loss
    partners = rollout_partners(batch.embeddings, batch.group, batch.role, "supervised")
    trained = rewards.trained
    forward = (trained & (advantages != 0)) | partners.takes_part
    rows = MiniBatch(trained, forward, float(batch.rationale_mask[trained].sum()), partners.takes_part)
    coef, tau = 0.5, 0.05
    entropy = ["algorithm.entropy_coef=0.01"] if variant == "paper" else []
    cfg = compose_config(f"algorithm.embedding_loss_coef={coef}", f"algorithm.embedding_loss_temperature={tau}", "trainer.micro_batch_size=2", *entropy)
    model.train()

    accumulate_gradients(Parallel(model), None, batch, advantages, rows, cfg, torch.autocast("cpu", enabled=False), StepTotals(), partners)
    micro = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    plain_full_batch_loss(model, batch, advantages, rows, cfg, coef, tau).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(micro[name], p.grad, rtol=1e-4, atol=1e-6), name
    if variant == "paper":  # every truncated rollout has reward -1: no advantage, the gradient is the other terms'
        assert bool((advantages == 0).all()) and any(bool(g.abs().sum() > 0) for g in micro.values())


def test_the_embedding_loss_trains_rows_the_policy_gradient_skips_and_is_logged(tmp_path):
    # The tiny model never writes EOS: every paper-variant reward is -1, every advantage 0, no policy gradient.
    common = ["reward=paper", "rollout.num_samples=3", "trainer.max_steps=1"]
    train(compose_config(*common), tmp_path / "plain")
    train(compose_config(*common, "algorithm.embedding_loss_coef=1.0"), tmp_path / "embedding")
    plain, embedding = read_metrics(tmp_path / "plain")[0], read_metrics(tmp_path / "embedding")[0]
    assert plain["optim/grad_norm"] == 0.0 and "loss/embedding" not in plain
    assert embedding["optim/grad_norm"] > 0
    assert embedding["loss/embedding"] > 0 and 0 <= embedding["loss/embedding_accuracy"] <= 1
