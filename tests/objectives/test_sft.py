"""Supervised fine-tuning (objective=sft, grace-sft): the loss on rationale tokens only, hand-computed on the
tiny model; the demonstrations reader; exact micro-batching and resume; rejection sampling; the SFT -> GRACE
pipeline through the command lines, with the KL reference pinned to the SFT model."""
import json
import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from train_helpers import assert_resume_is_exact, compose_config, read_metrics

from grace.config import ConfigError
from grace.data import DataError, Demonstration
from grace.embedding.encoder import GraceEncoder
from grace.model.loading import TINY_RANDOM, load_policy
from grace.model.prompts import Span, render_prompt, text_token_ids
from grace.objectives import TrainContext, build_objective
from grace.objectives.optimizer import make_scheduler
from grace.objectives.sft_loss import demonstration_batch, rationale_nll
from grace.training.demonstrations import best_of_k
from grace.training.trainer import train

DEMOS = [
    Demonstration("What is a cat?", "A cat is a small animal that people keep as a pet."),
    Demonstration("Bees make honey.", "Bees are insects; honey is their food store."),
    Demonstration("Who wrote Hamlet?", "Shakespeare wrote <|im_end|> Hamlet."),  # a control-token string, as literal text
]


def write_demos(path, demos=DEMOS, extra=()):
    lines = [json.dumps({"text": d.text, "rationale": d.rationale}) for d in demos] + list(extra)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def sft(*overrides):
    return compose_config("objective=sft", *overrides)


# ---------------------------------------------------------------- the loss


def test_the_loss_counts_the_rationale_and_its_eos_and_nothing_else(tiny, tiny_template):
    model, tokenizer = tiny
    batch = demonstration_batch(tokenizer, tiny_template, DEMOS, max_prompt_tokens=None)
    out = rationale_nll(model, batch)

    # By hand, one demonstration at a time (no padding): the plain model forward over prompt + rationale + EOS,
    # and the cross-entropy of each rationale token given everything before it.
    expected, tokens = 0.0, 0
    for demo in DEMOS:
        prompt = render_prompt(tokenizer, demo.text, tiny_template).ids
        target = text_token_ids(tokenizer, demo.rationale) + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0].float()
        for j, token in enumerate(target):
            expected -= float(torch.log_softmax(logits[len(prompt) - 1 + j], dim=-1)[token])
        tokens += len(target)
    assert out.tokens == tokens
    assert float(out.nll_sum.detach()) == pytest.approx(expected, rel=1e-4)

    # The layout: prompt as rendered for GRACE, then the rationale as literal text and EOS, spanned RATIONALE.
    for row, demo in enumerate(DEMOS):
        ids = batch.sequence_ids[row][batch.attention_mask[row].bool()].tolist()
        prompt = render_prompt(tokenizer, demo.text, tiny_template).ids
        assert ids == prompt + text_token_ids(tokenizer, demo.rationale) + [tokenizer.eos_token_id]
        spans = batch.spans[row][batch.attention_mask[row].bool()]
        assert (spans == Span.RATIONALE).sum() == len(ids) - len(prompt)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in batch.rationale_ids[2][batch.rationale_mask[2]][:-1].tolist()  # literal: not a control token


def test_prompt_and_padding_tokens_take_no_part_in_the_loss(tiny, tiny_template):
    model, tokenizer = tiny
    batch = demonstration_batch(tokenizer, tiny_template, DEMOS[:2], max_prompt_tokens=None)
    with torch.no_grad():
        base = float(rationale_nll(model, batch).nll_sum)
        padded = batch.sequence_ids.clone()
        padded[~batch.attention_mask.bool()] = 17  # whatever sits under padding
        batch.sequence_ids = padded
        assert float(rationale_nll(model, batch).nll_sum) == pytest.approx(base, rel=1e-6)
        assert rationale_nll(model, batch).tokens == sum(len(text_token_ids(tokenizer, d.rationale)) + 1 for d in DEMOS[:2])


def sft_context(*overrides):
    cfg = sft(*overrides)
    model, tokenizer = load_policy(TINY_RANDOM)
    from grace.model.prompts import PromptTemplate

    template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    return TrainContext(cfg, model, tokenizer, template, torch.device("cpu"), nullcontext())


def gradients_of_one_step(*overrides):
    context = sft_context("trainer.batch_size=3", "rollout.max_new_tokens=64", *overrides)
    objective = build_objective(context)
    optimizer = torch.optim.SGD(context.model.parameters(), lr=0.0)  # the step's gradient, weights left alone
    objective.step(1, DEMOS, optimizer, make_scheduler(optimizer, context.cfg, objective.updates_per_step()))
    return {n: p.grad.clone() for n, p in context.model.named_parameters() if p.grad is not None}


def test_micro_batches_add_up_to_the_full_batch_gradient():
    full, micro = gradients_of_one_step("trainer.micro_batch_size=3"), gradients_of_one_step("trainer.micro_batch_size=1")
    assert full.keys() == micro.keys() and all(torch.allclose(full[k], micro[k], atol=1e-6) for k in full)


def test_steps_on_a_repeated_batch_lower_the_loss():
    context = sft_context("trainer.batch_size=3", "rollout.max_new_tokens=64", "trainer.lr=1e-2")
    objective = build_objective(context)
    optimizer = torch.optim.AdamW(context.model.parameters(), lr=1e-2)
    scheduler = make_scheduler(optimizer, context.cfg, objective.updates_per_step())
    results = [objective.step(step, DEMOS, optimizer, scheduler) for step in range(1, 9)]
    losses = [r.metrics["loss/sft"] for r in results]
    assert losses[-1] < 0.5 * losses[0], losses
    assert results[-1].metrics["sft/token_accuracy"] > results[0].metrics["sft/token_accuracy"]


# ---------------------------------------------------------------- data and settings


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"text": "q"}', "line 4, field 'rationale': missing field"),
        ('{"text": "q", "rationale": "  "}', "line 4, field 'rationale': empty text"),
        ('{"text": "q", "rationale": "' + "word " * 40 + '"}', "line 4, field 'rationale': text has .* tokens, over the rationale budget of 15"),
        ('{"rationale": "r"}', "line 4, field 'text': missing field"),
    ],
)
def test_a_bad_demonstration_stops_the_run_naming_file_line_and_field(tmp_path, bad_line, message):
    data = write_demos(tmp_path / "demos.jsonl", extra=[bad_line])
    with pytest.raises(DataError, match=f"demos.jsonl, {message}"):
        train(sft(f"data.train_file={data}", "rollout.max_new_tokens=16"), tmp_path / "out")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "objective=sft reads demonstrations: set data.train_file"),
        (["data.train_file=packaged:chatterbot"], "packaged:chatterbot holds supervised data, not demonstrations"),
        (["algorithm.kl_coef=0.1", "data.train_file={demos}"], "algorithm.kl_coef=0.1 belongs to objective=grace's policy update"),
    ],
)
def test_impossible_sft_settings_fail_at_start_up(tmp_path, overrides, message):
    demos = write_demos(tmp_path / "demos.jsonl")
    with pytest.raises(ConfigError, match=message):
        train(sft(*[o.format(demos=demos) for o in overrides]), tmp_path / "out")


def test_four_sft_steps_equal_two_then_resume_then_two_and_hold_out_demonstrations(tmp_path):
    demos = write_demos(tmp_path / "demos.jsonl", [Demonstration(f"{d.text} ({i})", d.rationale) for i in range(3) for d in DEMOS])
    settings = [f"data.train_file={demos}", "rollout.max_new_tokens=32", "trainer.micro_batch_size=1", "trainer.eval_every=2", "trainer.heldout.size=2"]
    rows = assert_resume_is_exact(tmp_path, *settings, compose=sft)
    assert [row["step"] for row in rows if "eval/token_accuracy" in row] == [0, 2, 4] and all(row["eval/sft_loss"] > 0 for row in rows if "eval/sft_loss" in row)


# ---------------------------------------------------------------- rejection sampling


def test_best_of_k_keeps_each_texts_best_finished_rollout():
    #                      group 0 query    group 0 positive  group 1 query
    total = torch.tensor([0.1, 0.5, 0.3, 2.0, 1.0, 0.2, 0.7, 0.9, 0.8])
    group = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    role = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0])
    truncated = torch.tensor([False, False, False, True, False, False, True, True, True])
    trained = torch.ones(9, dtype=torch.bool)
    chosen = best_of_k(total, group, role, trained, truncated, keep_truncated=False)
    assert chosen.rows == [1, 4] and chosen.all_truncated == 1  # row 3 is best but cut; group 1's query has none
    assert best_of_k(total, group, role, trained, truncated, keep_truncated=True).rows == [1, 3, 7]
    only_positives = role == 1
    assert best_of_k(total, group, role, only_positives, truncated, keep_truncated=True).rows == [3]  # untrained roles: none


# ---------------------------------------------------------------- the pipeline through the command lines


def run(module, *args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_sample_then_sft_then_grace_through_the_command_lines(tmp_path):
    tiny = ["model=tiny-random", "logger=none", "logger.progress_bar=false", "data.limit=16", "trainer.batch_size=2"]
    done = run("grace.cli.sft", "sample", *tiny, "sample.output=demos.jsonl", "sample.num_examples=4", "rollout.num_samples=3",
               "rollout.max_new_tokens=8", "sample.keep_truncated=true", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "demos.jsonl").read_text().splitlines()]
    # 2 batches x 2 triplets x 3 roles = 12 texts; a rationale that decodes to nothing is no demonstration.
    assert 6 <= len(lines) <= 12 and {"text", "rationale", "reward", "role"} <= lines[0].keys()
    assert f"wrote {len(lines)} demonstrations (best of 3 for each of 12 texts) to demos.jsonl" in done.stdout

    again = run("grace.cli.sft", "sample", *tiny, "sample.output=demos.jsonl", cwd=tmp_path)
    assert again.returncode == 2 and "sample.output='demos.jsonl' already exists" in again.stderr

    done = run("grace.cli.sft", *tiny, "data.train_file=demos.jsonl", "rollout.max_new_tokens=32", "trainer.max_steps=2", "trainer.output_dir=sft", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "== grace-sft: 2 steps" in done.stdout
    assert [row["step"] for row in read_metrics(tmp_path / "sft")] == [1, 2] and "loss/sft" in read_metrics(tmp_path / "sft")[0]
    encoder = GraceEncoder.from_pretrained(tmp_path / "sft")  # a valid encoder, which writes rationales
    assert encoder.configs["document"].rationale and encoder.encode(["a test sentence"]).shape == (1, 64)

    grace = ["trainer.max_steps=2", "rollout.max_new_tokens=8", "algorithm.kl_coef=0.1", "trainer.output_dir=grace", "model.source=sft"]
    done = run("grace.cli.train", *tiny, *grace, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = read_metrics(tmp_path / "grace")
    assert rows[0]["loss/kl"] == pytest.approx(0.0, abs=1e-7) and rows[1]["loss/kl"] > 0  # the reference: the SFT model it starts as
    pinned = json.loads((tmp_path / "grace" / "start_model.json").read_text())
    assert pinned["source"] == str((tmp_path / "sft" / "checkpoints" / "step-2").resolve())


def test_a_resumed_run_keeps_its_original_starting_model_as_the_kl_reference(tmp_path, monkeypatch):
    demos = write_demos(tmp_path / "demos.jsonl", DEMOS * 2)
    first_sft = sft(f"data.train_file={demos}", "rollout.max_new_tokens=32", "trainer.max_steps=1")
    train(first_sft, tmp_path / "sft")
    import grace.training.trainer

    loads = []
    load_policy_ = grace.training.trainer.load_policy
    monkeypatch.setattr("grace.training.trainer.load_policy", lambda source, **kw: loads.append(str(source)) or load_policy_(source, **kw))
    grace_run = ["algorithm.kl_coef=0.1", f"model.source={tmp_path / 'sft'}"]
    train(compose_config(*grace_run, "trainer.max_steps=1"), tmp_path / "grace")
    start = str((tmp_path / "sft" / "checkpoints" / "step-1").resolve())
    assert loads == [start, start]  # the policy, then the reference

    # The SFT run goes on (its newest checkpoint is now step-2); the GRACE run resumes from its own step-1.
    train(sft(f"data.train_file={demos}", "rollout.max_new_tokens=32", "trainer.max_steps=2", "trainer.resume=auto"), tmp_path / "sft")
    loads.clear()
    train(compose_config(*grace_run, "trainer.max_steps=2", "trainer.resume=auto"), tmp_path / "grace")
    assert loads == [str(tmp_path / "grace" / "checkpoints" / "step-1"), start]  # policy resumed, reference as at the start


def compose_primary(name, *overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from grace.cli.train import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name=name, overrides=["model=tiny-random", *overrides]))


def test_grace_sft_and_its_sample_command_compose_their_own_configs(tmp_path):
    from grace.config import SampleConfig
    from grace.training.demonstrations import check
    from grace.training.validation import validate

    demos = write_demos(tmp_path / "demos.jsonl")
    cfg = compose_primary("sft", f"data.train_file={demos}", "experiment=two_stage_sft", "model=tiny-random")
    validate(cfg)
    assert cfg.objective.name == "sft" and cfg.trainer.lr == 1e-5 and cfg.rollout.max_new_tokens == 32  # the preset's
    sample = compose_primary("sample", f"sample.output={tmp_path / 'new.jsonl'}")
    assert isinstance(sample, SampleConfig) and sample.objective.name == "grace"
    check(sample)
    for overrides, message in [
        ([], "sample.output is required"),
        ([f"sample.output={demos}"], "already exists"),
        ([f"sample.output={tmp_path / 'x.jsonl'}", "sample.num_examples=0"], "sample.num_examples=0 must be at least 1"),
        ([f"sample.output={tmp_path / 'x.jsonl'}", "objective=contrastive"], "objective=contrastive has no rollouts"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check(compose_primary("sample", *overrides))
