"""Demonstrations without a teacher (``grace-sft sample``): the policy's best rationale of k, per text.

For ``sample.num_examples`` training examples, ``trainer.batch_size`` at a time (in the training stream's
seeded order), the GRACE objective's own ``sample`` rolls out k = ``rollout.num_samples`` rationales for
every text of every role and rewards them with the run's composed reward (``reward.*``): exactly what a
training step computes before its update, the same rollout seeds included. Of each text's k rollouts the
one with the highest reward is kept (best-of-k rejection sampling); a rollout cut at its length limit
without EOS is passed over unless ``sample.keep_truncated``, and a text whose k rollouts were all cut
contributes nothing. Roles the reward does not train (the paper variant's single query and negative) are
not kept: nothing was chosen among their rationales.

Each kept rollout is one line of ``sample.output``:
``{"text", "rationale", "reward", "role", "origin", "batch"}``; grace-sft reads ``text`` and ``rationale``.
Fine-tuning on them (rejection-sampling fine-tuning, or expert iteration) teaches the policy to write at
once the rationales it wrote at its best. A text that occurs in several examples (chatterbot's negatives
are other triplets' answers) may get several demonstrations.
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grace.config import ConfigError, SampleConfig, resolve_train_file
from grace.data.roles import Role
from grace.data.stream import ExampleStream
from grace.model.loading import load_policy, load_tokenizer
from grace.model.prompts import PromptTemplate
from grace.objectives import TrainContext
from grace.objectives.policy_gradient.step import PolicyGradient
from grace.training.trainer import read_examples, resolve_device
from grace.training.validation import validate


@dataclass
class Selection:
    rows: list[int]  # the kept rollout of each text, in rollout order
    all_truncated: int  # texts whose k rollouts were all cut without EOS (none kept)


def best_of_k(
    total: torch.Tensor, group: torch.Tensor, role: torch.Tensor, trained: torch.Tensor, truncated: torch.Tensor, *, keep_truncated: bool
) -> Selection:
    """The highest-``total`` [R] rollout of every trained (group, role) text; see the module docstring."""
    eligible = trained & (torch.ones_like(truncated) if keep_truncated else ~truncated)
    key = (group * len(Role) + role).tolist()
    best: dict[int, int] = {}
    for row in torch.nonzero(eligible).flatten().tolist():
        if key[row] not in best or total[row] > total[best[key[row]]]:
            best[key[row]] = row
    texts = {key[row] for row in torch.nonzero(trained).flatten().tolist()}
    return Selection(sorted(best.values()), len(texts - set(best)))


def write_demonstrations(cfg: SampleConfig) -> Path:
    """Roll out, reward, keep the best of k per text and write ``cfg.sample.output``; returns its path."""
    check(cfg)
    output = Path(cfg.sample.output)
    tokenizer = load_tokenizer(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
    template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    loaded = read_examples(cfg, tokenizer, template, resolve_train_file(cfg), cfg.mode, cfg.data.split, cfg.data.limit)
    print(loaded.summary())
    device = resolve_device(cfg.model.device)
    model, tokenizer = load_policy(cfg.model.source, dtype=cfg.model.dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.trainer.precision == "bf16" else nullcontext()
    objective = PolicyGradient(TrainContext(cfg, model, tokenizer, template, device, autocast))
    stream = ExampleStream(loaded.examples, cfg.trainer.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)

    batches = math.ceil(cfg.sample.num_examples / cfg.trainer.batch_size)
    kept, texts, all_truncated = 0, 0, 0
    partial = output.with_name(output.name + ".partial")  # renamed into place when complete
    output.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w", encoding="utf-8") as handle:
        for number in tqdm(range(1, batches + 1), desc="sample", disable=not cfg.logger.progress_bar, dynamic_ncols=True):
            examples = stream.batch_at((number - 1) * cfg.trainer.batch_size)
            sampled = objective.sample(number, examples)
            batch, rewards = sampled.everyone, sampled.rewards
            chosen = best_of_k(rewards.total, batch.group, batch.role, rewards.trained, batch.truncated, keep_truncated=cfg.sample.keep_truncated)
            for row in chosen.rows:
                ids = batch.rationale_ids[row][batch.rationale_mask[row]].tolist()
                line = {
                    "text": batch.texts[row],
                    "rationale": objective.decode(ids).strip(),
                    "reward": float(rewards.total[row]),
                    "role": Role(int(batch.role[row])).name.lower(),
                    "origin": examples[int(batch.group[row])].origin,
                    "batch": number,
                }
                if line["rationale"]:  # an immediate EOS is no demonstration
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                    kept += 1
            texts += len(chosen.rows) + chosen.all_truncated
            all_truncated += chosen.all_truncated
    partial.replace(output)
    skipped = f"; {all_truncated} texts had no rationale that finished within {objective.sampling[Role.POSITIVE].max_new_tokens} tokens" if all_truncated else ""
    print(f"wrote {kept} demonstrations (best of {cfg.rollout.num_samples} for each of {texts} texts{skipped}) to {output}")
    return output


def check(cfg: SampleConfig) -> None:
    """The settings, before anything loads."""
    validate(cfg)
    if cfg.objective.name != "grace":
        raise ConfigError(f"grace-sft sample rolls out and rewards as objective=grace does: objective={cfg.objective.name} has no rollouts")
    if not cfg.sample.output:
        raise ConfigError("sample.output is required: the demonstrations file to write, e.g. sample.output=demos.jsonl")
    if Path(cfg.sample.output).exists():
        raise ConfigError(f"sample.output={cfg.sample.output!r} already exists: choose another file or remove it")
    if cfg.sample.num_examples < 1:
        raise ConfigError(f"sample.num_examples={cfg.sample.num_examples} must be at least 1")
