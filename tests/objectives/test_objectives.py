"""The objectives behind the trainer: contrastive fine-tuning and SimCSE on the tiny model, exact
micro-batching (gradient cache), dropout views, resume per objective, checkpoints that embed as trained."""
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from train_helpers import compose_config, read_metrics, without_timing

from grace.config import OBJECTIVES
from grace.data import Sentence, Triplet
from grace.embedding.encoder import GraceEncoder
from grace.model.loading import TINY_RANDOM, load_policy
from grace.model.prompts import PromptTemplate, render_prompt
from grace.objectives import REGISTRY, TrainContext, build_objective
from grace.objectives.dropout import attention_dropout
from grace.objectives.infonce import info_nce
from grace.objectives.optimizer import make_scheduler
from grace.objectives.prompt_contrast import contrast_backward, embed_prompts, same_text_as_partner
from grace.training.trainer import train

TRIPLETS = [
    Triplet("What is the capital of France?", "Paris is the capital of France.", "Bananas are rich in potassium."),
    Triplet("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", "The train leaves at noon."),
    Triplet("How do plants make food?", "Leaves turn light into sugar.", "Paris is the capital of France."),
]
SENTENCES = [Sentence("The river floods every spring."), Sentence("Chess is a board game."), Sentence("Bees make honey.")]
SUPERVISED = ["objective=contrastive"]
UNSUPERVISED = ["objective=simcse", "mode=unsupervised"]


def tiny_context(*overrides: str) -> TrainContext:
    cfg = compose_config(*overrides)
    model, tokenizer = load_policy(TINY_RANDOM)
    template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    return TrainContext(cfg, model, tokenizer, template, torch.device("cpu"), nullcontext())


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_every_objective_name_the_config_accepts_is_built_by_the_registry():
    assert set(REGISTRY) == set(OBJECTIVES)


@pytest.mark.parametrize("overrides, examples", [(SUPERVISED, TRIPLETS), (UNSUPERVISED, SENTENCES)], ids=["contrastive", "simcse"])
def test_steps_on_a_repeated_batch_change_the_weights_and_lower_the_loss(overrides, examples):
    context = tiny_context(*overrides, "trainer.lr=1e-3")
    objective = build_objective(context)
    optimizer = torch.optim.AdamW(context.model.parameters(), lr=1e-3)
    scheduler = make_scheduler(optimizer, context.cfg, objective.updates_per_step())
    before = [p.detach().clone() for p in context.model.parameters()]
    results = [objective.step(step, examples, optimizer, scheduler) for step in range(1, 7)]
    losses = [r.metrics["loss/infonce"] for r in results]
    assert losses[-1] < 0.5 * losses[0], losses
    assert results[-1].metrics["infonce/accuracy"] == 1.0
    assert all(r.updates == 1 and not r.rationales for r in results)
    assert all(not torch.equal(b, p) for b, p in zip(before, context.model.parameters()))
    assert not context.model.training  # back in eval mode between steps, as the trainer expects


def test_the_gradient_cache_equals_one_full_batch_backward():
    full = tiny_context(*SUPERVISED, "trainer.micro_batch_size=64")
    problem = build_objective(full).problem(TRIPLETS)
    out, loss, embeddings = contrast_backward(full, problem)
    reference = gradients(full.model)
    full.model.zero_grad(set_to_none=True)
    micro = replace(full, cfg=compose_config(*SUPERVISED, "trainer.micro_batch_size=2"))  # 9 rows in 5 micro-batches
    out_micro, loss_micro, _ = contrast_backward(micro, problem)
    assert float(loss_micro) == pytest.approx(float(loss), abs=1e-6)
    cached = gradients(micro.model)
    assert reference.keys() == cached.keys()
    for name, grad in reference.items():
        # atol 1e-5 (gradients here reach 0.55): float32 sums in another order differ by a few 1e-6 on some
        # CPUs (2.6e-6 in one of 2048 elements on 2026-12-02's machine, with 1e-6 failing on unchanged code).
        assert torch.allclose(cached[name], grad, rtol=1e-4, atol=1e-5), name


def test_the_gradient_cache_replays_the_dropout_masks_of_its_first_pass():
    context = tiny_context(*UNSUPERVISED, "objective.dropout=0.5", "trainer.micro_batch_size=2")
    problem = build_objective(context).problem(SENTENCES)
    model, pad = context.model, context.tokenizer.pad_token_id
    # Reference: every micro-batch forwarded once with gradient, in the same order from the same seed.
    torch.manual_seed(3)
    model.train()
    with attention_dropout(model, 0.5):
        chunks = [problem.prompts[i : i + 2] for i in range(0, len(problem.prompts), 2)]
        embeddings = torch.cat([embed_prompts(model, chunk, pad, "after_system") for chunk in chunks])
    out = info_nce(embeddings[problem.anchors], embeddings[problem.candidates], problem.targets, temperature=0.05, exclude=problem.exclude)
    out.loss.mean().backward()
    reference = gradients(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    _, loss, cached_embeddings = contrast_backward(context, problem)
    assert torch.allclose(cached_embeddings, embeddings.detach(), atol=1e-6)
    assert float(loss) == pytest.approx(float(out.loss.mean().detach()), abs=1e-6)
    for name, grad in reference.items():
        assert torch.allclose(gradients(model)[name], grad, rtol=1e-4, atol=1e-6), name


def test_attention_dropout_makes_two_views_in_training_mode_only_and_is_restored(tiny, tiny_template):
    model, tokenizer = load_policy(TINY_RANDOM)
    prompts = [render_prompt(tokenizer, "Bees make honey.", tiny_template)] * 2
    model.train()
    with torch.no_grad():
        with attention_dropout(model, 0.3):
            views = embed_prompts(model, prompts, tokenizer.pad_token_id, "after_system")
            model.eval()
            plain = embed_prompts(model, prompts, tokenizer.pad_token_id, "after_system")
        assert not torch.allclose(views[0], views[1])  # one batch, two dropout masks
        assert torch.equal(plain[0], plain[1])  # eval mode: no dropout
        assert all(m.attention_dropout == 0.0 for m in model.modules() if hasattr(m, "attention_dropout"))
        assert model.config.attention_dropout == 0.0  # never saved into a checkpoint


def test_a_candidate_with_the_partners_text_is_not_a_negative():
    exclude = same_text_as_partner(["a", "b"], ["a", "b", "a ", "c"], torch.tensor([0, 1]))
    assert exclude.tolist() == [[False, False, True, False], [False, False, False, False]]


def test_the_problems_of_a_batch():
    contrastive = build_objective(tiny_context(*SUPERVISED)).problem(TRIPLETS)
    texts = [t.query for t in TRIPLETS] + [t.positive for t in TRIPLETS] + [t.negative for t in TRIPLETS]
    assert len(contrastive.prompts) == 9 and contrastive.anchors.tolist() == [0, 1, 2]
    assert contrastive.candidates.tolist() == [3, 4, 5, 6, 7, 8] and contrastive.targets.tolist() == [0, 1, 2]
    assert texts[8] == texts[3]  # the third negative is the first positive: not a negative for the first query
    assert torch.nonzero(contrastive.exclude).tolist() == [[0, 5]]
    simcse = build_objective(tiny_context(*UNSUPERVISED)).problem([*SENTENCES, SENTENCES[0]])
    assert simcse.anchors.tolist() == [0, 1, 2, 3] and simcse.candidates.tolist() == [4, 5, 6, 7]
    assert torch.equal(torch.tensor(simcse.prompts[0].ids), torch.tensor(simcse.prompts[4].ids))
    assert torch.nonzero(simcse.exclude).tolist() == [[0, 3], [3, 0]]  # a sentence twice in one update


@pytest.mark.parametrize(
    "overrides",
    [
        [*SUPERVISED, "trainer.micro_batch_size=2"],
        [*SUPERVISED, "trainer.batch_size=4", "trainer.mini_batch_size=2", "objective.hard_negatives=false"],
        [*UNSUPERVISED, "trainer.micro_batch_size=2"],
        ["algorithm.embedding_loss_coef=1.0", "trainer.micro_batch_size=3"],
    ],
    ids=["contrastive", "contrastive-mini-batches", "simcse", "grace-embedding-loss"],
)
def test_four_steps_equal_two_steps_then_resume_then_two(tmp_path, overrides):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(compose_config("trainer.max_steps=4", *overrides), straight)
    train(compose_config("trainer.max_steps=2", *overrides), split)
    train(compose_config("trainer.max_steps=4", "trainer.resume=auto", *overrides), split)
    assert without_timing(read_metrics(split)) == without_timing(read_metrics(straight))
    a = GraceEncoder.from_pretrained(straight).model.state_dict()
    b = GraceEncoder.from_pretrained(split).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides", [SUPERVISED, [*UNSUPERVISED, "embedding.pooling=input"]], ids=["contrastive", "simcse"])
def test_a_checkpoint_embeds_without_a_rationale_exactly_as_it_was_trained(tmp_path, overrides):
    train(compose_config("trainer.max_steps=1", *overrides), tmp_path)
    encoder = GraceEncoder.from_pretrained(tmp_path)
    config = encoder.configs["document"]
    assert not config.rationale and encoder.configs["query"] == config
    texts = ["Bees make honey.", "What is the capital of France?"]
    result = encoder.encode_with_rationales(texts)
    assert result.rationales == ["", ""]
    template = PromptTemplate.build(encoder.tokenizer, config.system_prompt)
    prompts = [render_prompt(encoder.tokenizer, t, template, config.max_prompt_tokens) for t in texts]
    with torch.no_grad():
        trained_way = embed_prompts(encoder.model, prompts, encoder.tokenizer.pad_token_id, config.pooling)
    assert torch.allclose(torch.from_numpy(result.embeddings), trained_way, atol=1e-5)
    base = GraceEncoder.from_pretrained(TINY_RANDOM).encode(texts, rationale=False, pooling=config.pooling)
    assert not torch.allclose(torch.from_numpy(base), trained_way, atol=1e-4)  # and training changed it
