"""faiss retrieval: build and search end to end, the embedding cache, agreement with mteb, bad input.

All on the tiny random model: its rankings mean nothing, but they are real embeddings from the real
pipeline, so every id mapping, score and error path is exercised as it would be with a trained model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import mteb
import numpy as np
import pytest
import pytrec_eval
from transformers import LlamaConfig, LlamaForCausalLM

from grace.cli.index import format_result, main
from grace.data.packaged import lee_background_documents
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.evaluation.adapter import GraceMtebEncoder
from grace.evaluation.tasks import GraceChatterbotRetrieval, chatterbot_retrieval_data
from grace.model.loading import TINY_RANDOM, load_policy
from grace.retrieval.index import (
    DOCUMENTS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    Document,
    EncoderMismatchError,
    Hit,
    IndexSpec,
    InvalidIndexError,
    RetrievalIndex,
    SearchResult,
    build_index,
)

NO_RATIONALE = EmbeddingConfig(rationale=False)
SHORT_RATIONALE = EmbeddingConfig(decoding=Decoding(max_new_tokens=3))
CORPUS = lee_background_documents()[:60]


@pytest.fixture
def encoder(tiny) -> GraceEncoder:
    return GraceEncoder(*tiny, document=NO_RATIONALE, query=SHORT_RATIONALE, name=TINY_RANDOM)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny) -> Path:
    """60 news documents, rationale-free, ids "doc-0".. ; copy it before damaging it."""
    encoder = GraceEncoder(*tiny, document=NO_RATIONALE, query=SHORT_RATIONALE, name=TINY_RANDOM)
    directory = tmp_path_factory.mktemp("indexes") / "lee"
    build_index(encoder, CORPUS, directory, ids=[f"doc-{i}" for i in range(len(CORPUS))], source=TINY_RANDOM)
    return directory


def test_cli_build_then_search_on_a_packaged_corpus(tmp_path, capsys):
    index_dir, cache = tmp_path / "lee-index", tmp_path / "cache.sqlite"
    built = main(["build", "packaged:lee_background", str(index_dir), "--limit", "50", "--model", TINY_RANDOM,
                  "--no-rationale", "--query-max-new-tokens", "3", "--cache-file", str(cache), "--quiet"])
    assert built == 0, capsys.readouterr().err
    assert "indexed 50 documents" in capsys.readouterr().err

    query = lee_background_documents()[41]
    assert main(["search", str(index_dir), query, "-k", "3", "--cache-file", str(cache), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["query"] == query and result["rationale"]  # the query's own rationale comes back
    assert [hit["rank"] for hit in result["hits"]] == [1, 2, 3]
    scores = [hit["score"] for hit in result["hits"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)
    assert all(hit["text"] == lee_background_documents()[int(hit["id"]) - 1] for hit in result["hits"])  # ids are lines

    assert main(["search", str(index_dir), query, "-k", "2", "--cache-file", str(cache), "--show-doc-rationales"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"query: {query[:40]}")
    assert ("query rationale" in shown) == bool(result["rationale"].strip())  # the random model may write blanks
    assert len([line for line in shown.splitlines() if line.lstrip().startswith(("1  ", "2  "))]) == 2


def test_search_finds_each_document_by_its_own_text_when_settings_match(tmp_path, tiny):
    """Queries embedded like documents: every document is its own nearest neighbour, with score 1."""
    encoder = GraceEncoder(*tiny, document=SHORT_RATIONALE, query=SHORT_RATIONALE, name=TINY_RANDOM)
    texts = CORPUS[:8]
    index = build_index(encoder, texts, tmp_path / "index", ids=[f"d{i}" for i in range(8)])
    results = RetrievalIndex.load(tmp_path / "index").search(encoder, texts, k=3)
    assert [r.hits[0].document.id for r in results] == [f"d{i}" for i in range(8)]
    assert all(r.hits[0].score == pytest.approx(1.0, abs=1e-5) for r in results)
    assert [r.rationale for r in results] == [d.rationale for d in index.documents]  # rationales stored per row


def test_second_build_of_the_same_corpus_is_served_from_the_cache(tmp_path):
    cache = tmp_path / "cache.sqlite"
    first_encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT_RATIONALE, cache=cache)
    first = build_index(first_encoder, CORPUS[:10], tmp_path / "first")

    second_encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT_RATIONALE, cache=cache)
    forward_calls: list[int] = []
    # On the decoder: rollouts call it directly for the hidden states, never the model's own forward.
    second_encoder.model.get_decoder().register_forward_pre_hook(lambda module, args: forward_calls.append(1))
    second = build_index(second_encoder, CORPUS[:10], tmp_path / "second")

    assert forward_calls == []  # not one model call
    assert np.array_equal(first.index.reconstruct_n(0, 10), second.index.reconstruct_n(0, 10))
    assert first.documents == second.documents


@pytest.mark.parametrize("spec", [IndexSpec("hnsw", hnsw_m=8, ef_search=32), IndexSpec("ivf", nprobe=4)])
def test_approximate_indexes_agree_with_exact_search(tmp_path, small_index, spec):
    exact = RetrievalIndex.load(small_index)
    vectors = exact.index.reconstruct_n(0, len(exact))
    rebuilt = spec.resolved(len(vectors)).create(exact.dim)
    if spec.type == "ivf":
        rebuilt.train(vectors)
    rebuilt.add(vectors)
    faiss.write_index(rebuilt, str(tmp_path / INDEX_FILE))
    copy = tmp_path / "approximate"
    shutil.copytree(small_index, copy)
    shutil.copy(tmp_path / INDEX_FILE, copy / INDEX_FILE)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["index"] = vars(spec.resolved(len(vectors)))
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))

    approximate = RetrievalIndex.load(copy)
    kind = type(faiss.downcast_index(approximate.index)).__name__
    assert kind == {"hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}[spec.type]
    _, exact_rows = exact.search_vectors(vectors[:20], k=5)
    _, approximate_rows = approximate.search_vectors(vectors[:20], k=5)
    assert list(approximate_rows[:, 0]) == list(range(20))  # every vector finds itself
    overlap = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approximate_rows, exact_rows)])
    assert overlap >= 0.8, overlap


def test_cli_builds_an_approximate_index(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS[:40]) + "\n")
    arguments = ["build", str(corpus), str(tmp_path / "ivf"), "--model", TINY_RANDOM, "--no-rationale", "--no-cache",
                 "--quiet", "--index-type", "ivf"]
    assert main(arguments) == 0, capsys.readouterr().err
    loaded = RetrievalIndex.load(tmp_path / "ivf")
    assert loaded.manifest.spec.type == "ivf" and loaded.manifest.spec.nlist == 1  # 40 documents: one list to train
    assert faiss.extract_index_ivf(loaded.index).nprobe == 1


# ---------------------------------------------------------------------- agreement with mteb


def test_faiss_retrieval_scores_match_mteb_exact_search_on_chatterbot(tmp_path, tiny):
    data = chatterbot_retrieval_data()
    encoder = GraceEncoder(*tiny, document=NO_RATIONALE, query=SHORT_RATIONALE)
    index = build_index(encoder, list(data.corpus.values()), tmp_path / "chatterbot", ids=list(data.corpus))
    results = index.search(encoder, list(data.queries.values()), k=10)
    run = {qid: {hit.document.id: hit.score for hit in result.hits} for qid, result in zip(data.queries, results)}
    # What mteb's RetrievalEvaluator does with a run: pytrec_eval per query, mean, rounded to 5 places.
    per_query = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.1,5,10", "recall.10"}).evaluate(run)
    ours = {
        f"{name}_at_{k}": round(float(np.mean([scores[f"{trec}_{k}"] for scores in per_query.values()])), 5)
        for name, trec in (("ndcg", "ndcg_cut"), ("recall", "recall"))
        for k in ((1, 5, 10) if name == "ndcg" else (10,))
    }

    # The evaluation's own adapter, so its query/document role mapping is what is checked against faiss.
    adapter = GraceMtebEncoder(GraceEncoder(*tiny, document=NO_RATIONALE, query=SHORT_RATIONALE, name=TINY_RANDOM))
    evaluated = mteb.evaluate(adapter, [GraceChatterbotRetrieval()], cache=None, co2_tracker=False,
                              encode_kwargs={"batch_size": 16, "show_progress_bar": False}, show_progress_bar=False)
    assert not evaluated.exceptions
    assert adapter.stats.texts == {"document": len(data.corpus), "query": len(data.queries)}  # roles as mapped
    theirs = evaluated.task_results[0].scores["test"][0]
    assert ours["ndcg_at_10"] > 0  # a real ranking, not an empty run
    for metric, value in ours.items():
        assert value == pytest.approx(theirs[metric], abs=1e-5), metric


# ---------------------------------------------------------------------- bad input


def damaged_copy(small_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(small_index, copy)
    return copy


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / INDEX_FILE).unlink(), r"is missing index\.faiss: rebuild it with `grace-index build"),
        (lambda d: (d / INDEX_FILE).write_bytes(b"not a faiss index"), r"index\.faiss is corrupt, faiss cannot read"),
        (lambda d: (d / INDEX_FILE).write_bytes((d / INDEX_FILE).read_bytes()[:5000]), r"index\.faiss is corrupt"),
        (lambda d: (d / MANIFEST_FILE).write_text("{ truncated"), r"manifest\.json is corrupt"),
        (lambda d: (d / MANIFEST_FILE).write_text('{"format_version": 1}'), r"manifest\.json is corrupt \(missing key"),
        (lambda d: (d / MANIFEST_FILE).write_text('{"format_version": 9}'), r"newer than this grace understands"),
        (lambda d: (d / DOCUMENTS_FILE).write_text("".join((d / DOCUMENTS_FILE).read_text().splitlines(True)[:-1])),
         r"documents\.jsonl lists 59 documents, the index holds 60"),
        (lambda d: (d / DOCUMENTS_FILE).write_text("{oops\n"), r"documents\.jsonl, line 1 is corrupt"),
        (lambda d: (d / DOCUMENTS_FILE).write_bytes((d / DOCUMENTS_FILE).read_bytes().splitlines(True)[0] + b"\xff\n"),
         r"documents\.jsonl, line 2 is corrupt \('utf-8' codec can't decode byte 0xff"),
    ],
)
def test_corrupt_index_says_what_is_wrong_and_how_to_fix_it(tmp_path, small_index, damage, message):
    directory = damaged_copy(small_index, tmp_path)
    damage(directory)
    with pytest.raises(InvalidIndexError, match=message):
        RetrievalIndex.load(directory)


def test_mismatched_index_files_are_caught(tmp_path, small_index, encoder):
    other = build_index(encoder, CORPUS[:5], tmp_path / "other")
    directory = damaged_copy(small_index, tmp_path)
    shutil.copy(other.directory / INDEX_FILE, directory / INDEX_FILE)  # a faiss file from another build
    with pytest.raises(InvalidIndexError, match="holds 5 vectors of dimension 64, but manifest.json says 60"):
        RetrievalIndex.load(directory)


def test_missing_index(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"no index at .*nowhere: build one with `grace-index build"):
        RetrievalIndex.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a GRACE index"):
        RetrievalIndex.load(tmp_path / "empty")
    assert main(["search", str(tmp_path / "nowhere"), "a query"]) == 1
    assert "grace-index: error: no index at" in capsys.readouterr().err


def test_encoder_of_another_dimension_is_refused(tmp_path, small_index, tiny, capsys):
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny[1]), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    narrow = GraceEncoder(model, tiny[1], document=NO_RATIONALE)
    with pytest.raises(EncoderMismatchError, match="dimension mismatch: .* 64-dimensional .* 32-dimensional"):
        RetrievalIndex.load(small_index).search(narrow, ["a query"])

    narrow.save(tmp_path / "narrow")  # the same through the command line
    assert main(["search", str(small_index), "a query", "--model", str(tmp_path / "narrow"), "--no-cache"]) == 1
    error = capsys.readouterr().err
    assert "dimension mismatch" in error and "rebuild the index with this encoder" in error
    assert "made by tiny-random, but" in error  # name and source are the same: said once


def test_encoder_with_other_weights_is_refused_unless_allowed(small_index, tiny):
    other = GraceEncoder(*load_policy(TINY_RANDOM, seed=1), document=NO_RATIONALE, query=SHORT_RATIONALE)
    index = RetrievalIndex.load(small_index)
    with pytest.raises(EncoderMismatchError, match="other weights"):
        index.search(other, ["a query"])
    assert len(index.search(other, ["a query"], k=4, same_weights=False)[0].hits) == 4


def test_empty_corpus_is_refused(tmp_path, encoder, capsys):
    with pytest.raises(ValueError, match="the corpus is empty"):
        build_index(encoder, [], tmp_path / "index")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["build", str(tmp_path / "empty.txt"), str(tmp_path / "index"), "--model", TINY_RANDOM]) == 1
    assert "holds no texts" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_duplicate_ids_are_refused(tmp_path, encoder, capsys):
    with pytest.raises(ValueError, match=r"duplicate document id 'a' \(documents 1 and 3\)"):
        build_index(encoder, ["x", "y", "z"], tmp_path / "index", ids=["a", "b", "a"])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in [(1, "x"), (2, "y"), (1, "z")]))
    assert main(["build", str(corpus), str(tmp_path / "index"), "--id-field", "id", "--model", TINY_RANDOM]) == 1
    assert "duplicate document id '1' (field 'id', lines 1 and 3)" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_build_never_replaces_a_directory_that_is_not_an_index(tmp_path, encoder):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a GRACE index"):
        build_index(encoder, CORPUS[:2], tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_missing_model_directory_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("a document\n")
    assert main(["build", "corpus.txt", "index", "--model", "models/mine", "--no-cache", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("grace-index: error: no local directory 'models/mine', and it could not be loaded as a hub")
    assert error.count("\n") == 1 and not (tmp_path / "index").exists()


# ---------------------------------------------------------------------- what search reloads


def test_index_built_in_bfloat16_is_searched_in_bfloat16(tmp_path, capsys):
    corpus, index_dir = tmp_path / "corpus.txt", tmp_path / "bf16"
    corpus.write_text("\n".join(CORPUS[:6]) + "\n")
    assert main(["build", str(corpus), str(index_dir), "--model", TINY_RANDOM, "--dtype", "bfloat16",
                 "--no-rationale", "--no-query-rationale", "--no-cache", "--quiet"]) == 0, capsys.readouterr().err
    encoder = json.loads((index_dir / MANIFEST_FILE).read_text())["encoder"]
    assert (encoder["dtype"], encoder["device"]) == ("bfloat16", "cpu")

    assert main(["search", str(index_dir), CORPUS[2], "-k", "1", "--no-cache", "--json"]) == 0, capsys.readouterr().err
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert hit["id"] == "3" and hit["score"] == pytest.approx(1.0, abs=1e-3)  # line 3 finds itself

    assert main(["search", str(index_dir), CORPUS[2], "--dtype", "float32", "--no-cache"]) == 1
    error = capsys.readouterr().err
    assert "was built by tiny-random in bfloat16" in error and "runs in float32" in error
    assert "search with --dtype bfloat16" in error


def test_search_after_the_encoder_moved_suggests_model(tmp_path, tiny, capsys):
    GraceEncoder(*tiny, document=NO_RATIONALE, query=NO_RATIONALE).save(tmp_path / "encoder")
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS[:3]) + "\n")
    assert main(["build", str(tmp_path / "corpus.txt"), str(tmp_path / "index"), "--model", str(tmp_path / "encoder"),
                 "--no-cache", "--quiet"]) == 0
    (tmp_path / "encoder").rename(tmp_path / "moved")

    assert main(["search", str(tmp_path / "index"), "a query", "--no-cache"]) == 1
    error = capsys.readouterr().err
    assert f"records its encoder as '{tmp_path / 'encoder'}'" in error
    assert "if the encoder has moved, give its new location with --model" in error
    assert main(["search", str(tmp_path / "index"), "a query", "--model", str(tmp_path / "moved"), "--no-cache"]) == 0


def test_a_blank_query_rationale_gets_no_header():
    hits = [Hit(1, 0.5, Document("d1", "a document", "", False))]
    assert "query rationale" not in format_result(SearchResult("a query", " \n ", False, hits))
    shown = format_result(SearchResult("a query", "because", True, hits))
    assert "query rationale (cut at the length limit):\n    because\n" in shown
