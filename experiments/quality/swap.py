"""Rationale or weights? Each trained checkpoint's score split into what its rationales and its weights do.

    python experiments/quality/swap.py --out outputs/quality/study --methods quality_grace_contrastive,quality_grace_embedding

A GRACE embedding is the mean of one model's hidden states over the text and a rationale the same model
wrote. Training changes both: which rationale is written, and how text + rationale are represented. For
every run of the given methods (its newest checkpoint) this evaluates, with the quality study's setting,
the two crossed rows beside the two that ``quality.py evaluate`` already has:

    rationale written by | hidden states of | row
    base                 | base             | base + rationale (quality.py)
    trained              | trained          | the checkpoint (quality.py)
    trained              | base             | "trained rationales, base weights"   (this script)
    base                 | trained          | "base rationales, trained weights"   (this script)

The rationale's token ids go from the writer to the reader unchanged (no decode / re-encode round trip).
Before any task, a self-check embeds a few texts with writer = reader through this path and through
``GraceEncoder``: the two must agree (cosine > 0.9999), or the script stops. Writes ``<out>/swap/results.md``
(every row) and ``<out>/swap.md`` (mean ± spread over seeds per crossing).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import BASE, METHODS, _methods, find_runs  # noqa: E402  (also puts this checkout's grace on the path)

from grace.data.roles import Role
from grace.embedding.cache import canonical_config  # noqa: E402
from grace.embedding.encoder import EncodeResult, GraceEncoder  # noqa: E402
from grace.embedding.pipeline import text_seed  # noqa: E402
from grace.embedding.texts import check_not_empty, text_batch  # noqa: E402
from grace.generation.rollout import RoleSampling, RolloutRequest, rollout  # noqa: E402
from grace.model.forward import hidden_and_logits, position_ids  # noqa: E402
from grace.model.pooling import pool_hidden  # noqa: E402

CROSSINGS = {  # (rationale writer, hidden-state reader) -> row name; "trained" is the run's checkpoint
    ("trained", "base"): "trained rationales, base weights",
    ("base", "trained"): "base rationales, trained weights",
}


class CrossedEncoder(GraceEncoder):
    """Embeds with ``reader``'s hidden states over text + the rationale ``writer`` writes (same tokenizer).

    Settings (rationale length, decoding, pooling, prompt budget) are the reader's, applied to both."""

    def __init__(self, writer: GraceEncoder, reader: GraceEncoder, name: str):
        super().__init__(reader.model, reader.tokenizer, document=reader.configs["document"], query=reader.configs["query"], name=name, batch_size=reader.batch_size)
        if writer.tokenizer_fingerprint != reader.tokenizer_fingerprint:
            raise ValueError(f"{writer.name} and {reader.name} use different tokenizers: rationale ids cannot cross")
        self.writer = writer

    @property
    def fingerprint(self) -> str:  # mteb's results folder: one per (writer, reader) pair
        return hashlib.sha256(f"{self.writer.fingerprint}->{super().fingerprint}".encode()).hexdigest()

    def encode_with_rationales(self, texts, *, role="document", batch_size=None, progress=None, **overrides) -> EncodeResult:
        """As ``GraceEncoder.encode_with_rationales`` (texts of ``grace.embedding.texts``; one rationale per text)."""
        config = canonical_config(self.config_for(role, **overrides))
        decoding = config.decoding
        if not config.rationale or decoding.num_samples != 1:
            raise ValueError("a crossed encoder embeds with one rationale per text (rationale=True, num_samples=1)")
        texts, one = text_batch(texts)
        check_not_empty(texts)
        unique = list(dict.fromkeys(texts))
        sampling = {Role.QUERY: RoleSampling(1, decoding.temperature, decoding.top_p, decoding.max_new_tokens)}
        size = batch_size or self.batch_size
        found: dict[str, tuple[np.ndarray, bool]] = {}
        rationale_tokens = 0  # the writer's generation: what a crossed row costs (EncodeResult's cost fields)
        for start in range(0, len(unique), size):
            chunk = unique[start : start + size]
            with torch.inference_mode():
                batch = rollout(
                    self.writer.model, self.tokenizer, self._template(config.system_prompt),
                    [RolloutRequest(text, group, Role.QUERY) for group, text in enumerate(chunk)], sampling,
                    pooling=config.pooling, max_prompt_tokens=config.max_prompt_tokens,
                    seeds=[text_seed(decoding.seed, text, 0) for text in chunk], batch_size=size,
                )  # fmt: skip
                mask = batch.attention_mask
                hidden, _ = hidden_and_logits(self.model, batch.sequence_ids, mask, position_ids(mask))
                pooled = pool_hidden(hidden, batch.spans, config.pooling)
            found.update({text: (pooled[i].numpy(), bool(batch.truncated[i])) for i, text in enumerate(chunk)})
            rationale_tokens += int(batch.rationale_lengths.sum())
            if progress is not None:
                progress(len(chunk))
        embeddings = np.stack([found[t][0] for t in texts]).astype(np.float32)
        truncated = np.array([found[t][1] for t in texts], dtype=bool)
        cost = {"computed_texts": len(unique), "rationale_tokens": rationale_tokens}
        if one:
            return EncodeResult(embeddings[0], "", truncated[0], **cost)
        return EncodeResult(embeddings, [""] * len(texts), truncated, **cost)


def self_check(encoder: GraceEncoder, settings) -> None:
    """writer = reader through CrossedEncoder must embed as GraceEncoder does; raises SystemExit if not."""
    texts = ["The movie was a slow, joyless mess.", "How do I reset my password?", "Markets fell sharply on Monday."]
    overrides = {"max_new_tokens": settings.max_new_tokens, "max_prompt_tokens": settings.max_prompt_tokens}
    plain = encoder.encode(texts, **overrides)
    crossed = CrossedEncoder(encoder, encoder, "self-check").encode(texts, **overrides)
    cosine = (plain * crossed).sum(axis=1)
    print(f"self-check, writer = reader: cosine with GraceEncoder {np.round(cosine, 6).tolist()}", flush=True)
    if cosine.min() < 0.9999:
        raise SystemExit("the crossed path does not reproduce GraceEncoder's embeddings: fix it before reading its rows")


def main() -> None:
    from grace.evaluation.config import EvalSettings
    from grace.evaluation.runner import EncoderSpec, evaluate_encoders
    from grace.evaluation.seeds import summarise, to_markdown

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quality")
    parser.add_argument("--methods", default="quality_grace_contrastive,quality_grace_embedding")
    parser.add_argument("--tasks", default="GraceLeeSTS,GracePangLeePolarity,GraceChatterbotRetrieval")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    args = parser.parse_args()
    out = Path(args.out)
    methods = _methods(args.methods)
    runs = [run for run in find_runs(out) if run[0] in methods]
    if not runs:
        raise SystemExit(f"no finished run of {methods} under {out / 'runs'}")
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens, show_progress=False)
    base = GraceEncoder.from_pretrained(BASE, batch_size=settings.batch_size)
    self_check(base, settings)
    specs, labels = [], {}
    for experiment, seed, checkpoint in runs:
        trained = GraceEncoder.from_pretrained(checkpoint, batch_size=settings.batch_size)
        models = {"base": base, "trained": trained}
        for (writer, reader), crossing in CROSSINGS.items():
            label = f"{METHODS[experiment]} {checkpoint.name}: {crossing}, seed {seed}"
            name = f"swap-{experiment}-seed{seed}-{checkpoint.name}-{writer}-writes-{reader}-reads"
            specs.append(EncoderSpec(source=name, label=label, encoder=CrossedEncoder(models[writer], models[reader], name)))
            labels[label] = f"{METHODS[experiment]} {checkpoint.name}: {crossing}"
    table = evaluate_encoders(specs, args.tasks.split(","), out / "swap", settings)
    markdown = to_markdown(table, summarise(table, labels))
    (out / "swap.md").write_text(markdown + f"\nEvery row: {out / 'swap' / 'results.md'}\n")
    print(markdown)


if __name__ == "__main__":
    main()
