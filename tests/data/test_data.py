"""The data layer: every source form round-trips, every kind of bad input is named precisely, the
packaged corpora have the size and shape the experiments rely on."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grace.data import (
    HELD_OUT_CATEGORIES,
    DataError,
    DataIssue,
    LoadedData,
    Sentence,
    Triplet,
    chatterbot_split,
    chatterbot_triplets,
    lee_background_documents,
    load_examples,
    wiki_sentences,
)
from grace.data.packaged import split_sentences
from grace.data.readers import check_source

TRIPLETS = [
    {"query": "What is the capital of France?", "positive": "Paris is it.", "negative": "Cats purr."},
    {"query": "How do plants eat?", "positive": "By photosynthesis.", "negative": "Trains are fast."},
    {"query": "Who wrote Hamlet?", "positive": "Shakespeare wrote it.", "negative": "Water boils."},
    {"query": "Why is the sky blue?", "positive": "Rayleigh scattering.", "negative": "Pizza is round."},
]


def write_lines(path: Path, lines: list[object]) -> Path:
    """Write one line per item: dicts as JSON, str as is, bytes as raw bytes (for encoding errors)."""
    raw = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        raw += (line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n"
    path.write_bytes(raw)
    return path


def as_triplets(rows: list[dict], name: str, lines: list[int]) -> list[Triplet]:
    return [Triplet(r["query"], r["positive"], r["negative"], f"{name}:{n}") for r, n in zip(rows, lines)]


# ---------------------------------------------------------------- formats round-trip


def test_jsonl_supervised_round_trip(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", TRIPLETS)
    data = load_examples(str(path), "supervised")
    assert data.examples == as_triplets(TRIPLETS, "train.jsonl", [1, 2, 3, 4])
    assert data.issues == []
    assert data.summary() == f"read 4 examples from {path}"


def test_json_suffix_is_json_lines_and_blank_lines_and_bom_are_layout(tmp_path):
    path = tmp_path / "train.json"
    first, second = (json.dumps(row).encode() for row in TRIPLETS[:2])
    path.write_bytes(b"\xef\xbb\xbf" + first + b"\n\n" + second)
    data = load_examples(str(path), "supervised")
    assert data.examples == as_triplets(TRIPLETS[:2], "train.json", [1, 3])


def test_jsonl_unsupervised_reads_the_text_field_and_strips_whitespace(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [{"sentence": "  One text.\n", "id": 1}, {"sentence": "Two."}])
    data = load_examples(str(path), "unsupervised", text_field="sentence")
    assert data.examples == [Sentence("One text.", "s.jsonl:1"), Sentence("Two.", "s.jsonl:2")]


def test_txt_round_trip_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = write_lines(tmp_path / "corpus.txt", ["First sentence.", "", "   ", "Second one.\r"])
    data = load_examples(str(path), "unsupervised")
    assert data.examples == [
        Sentence("First sentence.", "corpus.txt:1"),
        Sentence("Second one.", "corpus.txt:4"),
    ]
    assert data.issues == []


def test_txt_in_supervised_mode_is_a_clear_error(tmp_path):
    path = write_lines(tmp_path / "corpus.txt", ["a text"])
    with pytest.raises(ValueError, match=r"corpus\.txt.*unsupervised.*query, positive, negative"):
        load_examples(str(path), "supervised")


def test_parquet_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "train.parquet"
    pd.DataFrame(TRIPLETS).to_parquet(path)
    data = load_examples(str(path), "supervised")
    assert data.examples == as_triplets(TRIPLETS, "train.parquet", [1, 2, 3, 4])


def test_parquet_bad_row_is_named_by_row_number(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [dict(row) for row in TRIPLETS]
    rows[2]["negative"] = None
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    expected = r"train\.parquet, line 3, field 'negative': not a string \(got null\)"
    with pytest.raises(DataError, match=expected):
        load_examples(str(path), "supervised")


def test_dataset_saved_to_disk_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "saved"
    datasets.Dataset.from_list(TRIPLETS).save_to_disk(str(directory))
    data = load_examples(str(directory), "supervised")
    assert data.examples == as_triplets(TRIPLETS, "saved", [1, 2, 3, 4])
    via_hf_prefix = load_examples(f"hf:{directory}", "supervised", limit=2)
    assert via_hf_prefix.examples == as_triplets(TRIPLETS[:2], f"hf:{directory}", [1, 2])


def test_dataset_dict_saved_to_disk_honours_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "saved"
    splits = {"train": [{"text": "A train text."}], "test": [{"text": "A test text."}, {"text": ""}]}
    dataset_dict = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    dataset_dict.save_to_disk(str(directory))
    assert [s.text for s in load_examples(str(directory), "unsupervised").examples] == ["A train text."]
    with pytest.raises(DataError, match=r"saved, line 2, field 'text': empty text"):
        load_examples(str(directory), "unsupervised", split="test")
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_examples(str(directory), "unsupervised", split="validation")


def test_hub_source_passes_name_config_and_split_to_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(TRIPLETS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_examples("hf:sentence-transformers/all-nli:triplet", "supervised", split="dev")
    assert calls == [("sentence-transformers/all-nli", "triplet", "dev")]
    assert data.examples[0].origin == "hf:sentence-transformers/all-nli:triplet:1"
    load_examples("hf:some/dataset", "supervised")
    assert calls[-1] == ("some/dataset", None, "train")


# ---------------------------------------------------------------- bad input

GOOD = TRIPLETS[0]
BAD_LINES = {
    # case: (line 3 of the file, field named in the message or None, reason in the message)
    "malformed JSON": (
        '{"query": "q" "positive": "p", "negative": "n"}', None, "malformed JSON: Expecting ',' delimiter"
    ),
    "not an object": ('["q", "p", "n"]', None, "not a JSON object (got array)"),
    "missing field": ({"query": "q", "positive": "p"}, "negative", "missing field"),
    "not a string": ({"query": "q", "positive": 3, "negative": "n"}, "positive", "not a string (got number)"),
    "empty text": ({"query": "q", "positive": " \t ", "negative": "n"}, "positive", "empty text"),
    "not UTF-8": (
        b'{"query": "caf\xff", "positive": "p", "negative": "n"}',
        None,
        "not valid UTF-8 (byte 0xff at position 14)",
    ),
    "over budget": (
        {"query": "q", "positive": "one two three four five six seven", "negative": "n"},
        "positive",
        "text has 7 tokens, over the prompt budget of 6",
    ),
}


def word_count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_raises_naming_file_line_and_field(tmp_path, case):
    bad, field, reason = BAD_LINES[case]
    path = write_lines(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as caught:
        load_examples(str(path), "supervised", token_count=word_count, max_tokens=6)
    message = str(caught.value)
    where = f"{path}, line 3" + (f", field '{field}'" if field else "")
    assert message == f"{where}: {reason} (use data.on_error=skip to skip bad examples)"
    assert caught.value.issue == DataIssue(str(path), 3, field, reason)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_skipped_and_counted(tmp_path, case):
    bad, field, reason = BAD_LINES[case]
    path = write_lines(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    data = load_examples(str(path), "supervised", on_error="skip", token_count=word_count, max_tokens=6)
    assert [e.origin for e in data.examples] == ["train.jsonl:1", "train.jsonl:2", "train.jsonl:4"]
    assert data.issues == [DataIssue(str(path), 3, field, reason)]
    assert data.summary().startswith(f"read 3 examples from {path}; skipped 1 (1 ")


def test_raise_names_the_first_bad_line(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [GOOD, {"query": ""}, "{oops"])
    with pytest.raises(DataError, match=r"line 2, field 'query': empty text"):
        load_examples(str(path), "supervised")


def test_summary_counts_issues_by_kind(tmp_path):
    empty = {"query": "q", "positive": "", "negative": "n"}
    path = write_lines(tmp_path / "train.jsonl", [empty, GOOD, "{oops", empty])
    data = load_examples(str(path), "supervised", on_error="skip")
    assert data.summary() == f"read 1 examples from {path}; skipped 3 (2 empty text, 1 malformed JSON)"


def test_txt_bad_byte_and_token_budget(tmp_path):
    lines = ["Fine text here.", b"caf\xc3 au lait", "far too many words for this budget"]
    path = write_lines(tmp_path / "corpus.txt", lines)
    with pytest.raises(DataError, match=r"corpus\.txt, line 2: not valid UTF-8 \(byte 0xc3 at position 3\)"):
        load_examples(str(path), "unsupervised")
    data = load_examples(str(path), "unsupervised", on_error="skip", token_count=word_count, max_tokens=4)
    assert data.examples == [Sentence("Fine text here.", "corpus.txt:1")]
    assert [(i.line, i.field) for i in data.issues] == [(2, None), (3, "text")]
    assert data.summary().endswith("skipped 2 (1 not valid UTF-8, 1 over the token budget)")


def test_a_file_with_nothing_usable_is_an_error(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", ["{oops", {"query": "q"}])
    with pytest.raises(DataError, match=r"train\.jsonl: no usable examples \(all 2 skipped: .*line 1"):
        load_examples(str(path), "supervised", on_error="skip")
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DataError, match=r"empty\.jsonl: no usable examples$"):
        load_examples(str(empty), "supervised")


def test_limit_stops_after_that_many_good_examples(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [GOOD, "{bad", GOOD, GOOD, "{never reached"])
    data = load_examples(str(path), "supervised", on_error="skip", limit=2)
    assert [e.origin for e in data.examples] == ["train.jsonl:1", "train.jsonl:3"]
    assert len(data.issues) == 1
    assert "stopped at limit=2" in data.summary()


def test_bad_arguments_are_named(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [GOOD])
    with pytest.raises(ValueError, match="supervised, unsupervised"):
        load_examples(str(path), "contrastive")
    with pytest.raises(ValueError, match="raise, skip"):
        load_examples(str(path), "supervised", on_error="ignore")
    with pytest.raises(ValueError, match="token_count"):
        load_examples(str(path), "supervised", max_tokens=10)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl.*packaged:wiki.*hf:"):
        load_examples(str(tmp_path / "nowhere.jsonl"), "supervised")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        load_examples(str(write_lines(tmp_path / "train.csv", ["a,b"])), "supervised")
    with pytest.raises(ValueError, match="use one of packaged:wiki, packaged:chatterbot, packaged:lee_background"):
        load_examples("packaged:imdb", "unsupervised")
    with pytest.raises(ValueError, match="holds supervised data.*use mode='supervised', or unsupervised data such as packaged:wiki"):
        load_examples("packaged:chatterbot", "unsupervised")
    with pytest.raises(ValueError, match="packaged:wiki has no split 'eval'; it has train"):
        load_examples("packaged:wiki", "unsupervised", split="eval")


@pytest.mark.parametrize(
    "source, mode, split, error, message",
    [
        ("packaged:imdb", "supervised", "train", ValueError, "unknown packaged corpus 'imdb'"),
        ("packaged:wiki", "supervised", "train", ValueError, "holds unsupervised data.*packaged:chatterbot"),
        ("packaged:chatterbot", "supervised", "test", ValueError, "has no split 'test'; it has train, eval"),
        ("{tmp}/corpus.txt", "supervised", "train", ValueError, r"\.txt file .* only suits mode='unsupervised'"),
        ("{tmp}/train.csv", "supervised", "train", ValueError, "unsupported file type '.csv'"),
        ("{tmp}/nowhere.jsonl", "supervised", "train", FileNotFoundError, "does not exist"),
        ("{tmp}", "supervised", "train", FileNotFoundError, "not one written by datasets' save_to_disk"),
    ],
)
def test_check_source_rejects_hopeless_sources_without_reading_them(tmp_path, source, mode, split, error, message):
    for name in ("corpus.txt", "train.csv"):
        (tmp_path / name).write_text("a\n")
    with pytest.raises(error, match=message):
        check_source(source.format(tmp=tmp_path), mode, split)


@pytest.mark.parametrize(
    "source, mode, split",
    [("packaged:chatterbot", "supervised", "eval"), ("packaged:wiki", "unsupervised", "train"), ("hf:any/name", "supervised", "x")],
)
def test_check_source_accepts_what_the_readers_read(source, mode, split):
    check_source(source, mode, split)


# ---------------------------------------------------------------- packaged corpora

SENTENCE_SHAPE = re.compile(r"[A-Z0-9].*[.!?]")


def test_wiki_sentences_look_like_sentences():
    sentences = wiki_sentences()
    assert len(sentences) > 10_000
    assert len(set(sentences)) == len(sentences)
    for sentence in sentences:
        assert SENTENCE_SHAPE.fullmatch(sentence), sentence
        assert not any(markup in sentence for markup in ("[[", "{{", "|", "''", "==")), sentence
        assert 6 <= len(sentence.split()) <= 60, sentence
    sentences.clear()  # callers get their own list; the cache is untouched
    assert wiki_sentences()[0].startswith("Anarchism is a political philosophy")


def words(text: str) -> int:
    return len(text.split())


def test_a_bad_chatterbot_example_is_named_by_its_yaml_file_and_line():
    with pytest.raises(DataError, match=r"packaged:chatterbot, (\w+\.yml):(\d+), field 'positive'") as caught:
        load_examples("packaged:chatterbot", "supervised", token_count=words, max_tokens=4)
    name, line = re.search(r"(\w+\.yml):(\d+)", str(caught.value)).groups()
    first = chatterbot_triplets("train")[0]
    assert first.origin == f"packaged:chatterbot:{name}:{line}"
    from grace.data.chatterbot import corpus_dir

    assert first.query in (corpus_dir() / name).read_text(encoding="utf-8").splitlines()[int(line) - 1]


@pytest.mark.parametrize(
    "source, place", [("packaged:wiki", "sentence 1"), ("packaged:lee_background", "lee_background.cor:1")]
)
def test_a_bad_packaged_text_is_named_by_its_place(source, place):
    with pytest.raises(DataError, match=f"{source}, {place}, field 'text': text has"):
        load_examples(source, "unsupervised", token_count=words, max_tokens=2)


def test_wiki_loader_reads_packaged_sentences():
    data = load_examples("packaged:wiki", "unsupervised", limit=3)
    assert [s.text for s in data.examples] == wiki_sentences()[:3]
    assert data.examples[0].origin == "packaged:wiki:1"


def test_sentence_split_keeps_abbreviations_and_initials():
    paragraph = 'Harry S. Truman met Dr. Smith in the U.S. capital. It rained. "Why?" she asked. 3 left.'
    assert split_sentences(paragraph) == [
        "Harry S. Truman met Dr. Smith in the U.S. capital.",
        "It rained.",
        '"Why?" she asked.',
        "3 left.",
    ]


def test_lee_background_has_300_documents():
    documents = lee_background_documents()
    assert len(documents) == 300
    assert all(document and document == document.strip() for document in documents)
    data = load_examples("packaged:lee_background", "unsupervised")
    assert len(data.examples) == 300


def category_of(triplet: Triplet) -> str:
    return triplet.origin.split(":")[2].removesuffix(".yml")  # "packaged:chatterbot:trivia.yml:3"


def test_chatterbot_splits_are_disjoint_and_train_has_no_held_out_category():
    train, evaluation = chatterbot_triplets("train"), chatterbot_triplets("eval")
    assert len(train) == len(chatterbot_split("train")) and len(evaluation) == len(chatterbot_split("eval"))
    train_categories = {category_of(t) for t in train}
    assert train_categories.isdisjoint(category_of(t) for t in evaluation)
    assert train_categories.isdisjoint(HELD_OUT_CATEGORIES)
    assert {category_of(t) for t in evaluation} == set(HELD_OUT_CATEGORIES)
    assert {t.query.lower() for t in train}.isdisjoint(t.query.lower() for t in evaluation)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_chatterbot_negatives_come_from_another_category_of_the_same_split(split):
    categories_of_answer: dict[str, set[str]] = {}
    for pair in chatterbot_split(split):
        categories_of_answer.setdefault(pair.answer, set()).add(pair.category)
    for triplet in chatterbot_triplets(split):
        assert triplet.negative != triplet.positive
        assert categories_of_answer[triplet.negative] - {category_of(triplet)}, triplet


def test_chatterbot_triplets_are_deterministic_for_a_seed():
    assert chatterbot_triplets("train", seed=0) == chatterbot_triplets("train", seed=0)
    assert chatterbot_triplets("train", seed=0) != chatterbot_triplets("train", seed=1)
    loaded = load_examples("packaged:chatterbot", "supervised", split="eval")
    assert loaded.examples == chatterbot_triplets("eval")
    assert isinstance(loaded, LoadedData)
