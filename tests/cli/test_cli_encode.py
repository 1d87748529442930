"""grace-encode: every input format, the output files, and a killed run that resumes without redoing work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import grace.cli.encode as encode_module
from grace.cli.encode import CHUNKS, EMBEDDINGS, MANIFEST, RATIONALES, encode_to_directory, main
from grace.cli.shared_arguments import encoder_options, read_texts
from grace.data.errors import DataError
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.generation.options import GenerationOptions
from grace.model.loading import TINY_RANDOM

TEXTS = [f"Sentence number {i}: {word} are discussed here." for i, word in enumerate(
    "cats dogs stocks rivers poems engines tides clouds bread violins glaciers markets comets ferns".split()
)]
SHORT = EmbeddingConfig(decoding=Decoding(max_new_tokens=3))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_text_jsonl_and_parquet_inputs_read_alike(tmp_path):
    texts = TEXTS[:3]
    (tmp_path / "in.txt").write_text(f"{texts[0]}\n\n{texts[1]}\n{texts[2]}\n")  # a blank line is layout
    write_jsonl(tmp_path / "in.jsonl", [{"key": f"k{i}", "body": t} for i, t in enumerate(texts)])
    pq.write_table(pa.table({"key": [10, 11, 12], "body": texts}), tmp_path / "in.parquet")

    from_txt = read_texts(str(tmp_path / "in.txt"))
    from_jsonl = read_texts(str(tmp_path / "in.jsonl"), field="body", id_field="key")
    from_parquet = read_texts(str(tmp_path / "in.parquet"), field="body", id_field="key")
    assert [r.text for r in from_txt] == [r.text for r in from_jsonl] == [r.text for r in from_parquet] == texts
    assert [r.id for r in from_txt] == ["1", "3", "4"]  # line numbers, so ids point into the file
    assert [r.id for r in from_jsonl] == ["k0", "k1", "k2"]
    assert [r.id for r in from_parquet] == ["10", "11", "12"]  # integer ids become strings


@pytest.mark.parametrize(
    "lines, arguments, message",
    [
        (['{"text": "fine"}', '{"txt": "typo"}'], {}, r"line 2, field 'text': missing field \(name the text field"),
        (['{"text": "fine"}', '{"text": "  "}'], {}, r"line 2, field 'text': empty text"),
        (['{"text": "fine"}', "{broken"], {}, r"line 2: malformed JSON"),
        (['{"text": "a", "id": "x"}', '{"text": "b"}'], {"id_field": "id"}, r"line 2, field 'id': missing field"),
        (['{"text": "a", "id": [1]}'], {"id_field": "id"}, r"line 1, field 'id': an id must be a string or an integer"),
        ([], {}, r"holds no texts"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, lines, arguments, message):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises((DataError, ValueError), match=message):
        read_texts(str(path), **arguments)


def test_cli_writes_embeddings_and_rationales_for_each_line(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"t{i}", "body": t} for i, t in enumerate(TEXTS[:5])])
    out = tmp_path / "out"
    arguments = [str(source), str(out), "--model", TINY_RANDOM, "--field", "body", "--id-field", "id",
                 "--role", "query", "--max-new-tokens", "3", "--chunk-size", "2", "--no-cache", "--quiet"]
    assert main(arguments) == 0

    vectors = np.load(out / EMBEDDINGS)
    lines = [json.loads(line) for line in (out / RATIONALES).read_text().splitlines()]
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32
    assert [line["id"] for line in lines] == [f"t{i}" for i in range(5)]
    expected = GraceEncoder.from_pretrained(TINY_RANDOM, query=SHORT).encode_with_rationales(TEXTS[:5], role="query")
    np.testing.assert_allclose(vectors, expected.embeddings, atol=1e-5)
    assert [line["rationale"] for line in lines] == expected.rationales
    assert [line["truncated"] for line in lines] == expected.truncated.tolist()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["role"] == "query" and manifest["settings"] == SHORT.to_dict()
    assert not (out / CHUNKS).exists() and not list(out.glob(".*"))  # no chunks, no temporary files left

    assert main(arguments) == 0  # a finished run is not redone
    assert "already complete" in capsys.readouterr().err
    other_settings = [*arguments[:-6], "--max-new-tokens", "4", "--chunk-size", "2", "--no-cache", "--quiet"]
    assert main(other_settings) == 1
    error = capsys.readouterr().err
    assert "differs in: settings" in error and "--overwrite" in error


class Interrupted(KeyboardInterrupt):
    """What Ctrl-C raises; a SIGKILL runs no Python at all, which the stray temporary file below stands for."""


def interrupt_after(count: int):
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done >= count:
            raise Interrupted

    return progress


def test_interrupted_run_resumes_where_it_stopped_and_recomputes_no_chunk(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")  # 14 texts: chunks of 4, 4, 4, 2
    out = tmp_path / "out"
    encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT, batch_size=2)
    with pytest.raises(Interrupted):  # stopped half-way through chunk 2: one batch of it computed
        encode_to_directory(encoder, read_texts(str(source)), out, chunk_size=4, progress=interrupt_after(10))
    assert sorted(p.name for p in (out / CHUNKS).iterdir()) == ["00000.jsonl", "00000.npy", "00001.jsonl", "00001.npy"]
    assert not (out / EMBEDDINGS).exists()
    # What a kill during a write leaves: a temporary file that must never be taken for a chunk.
    (out / CHUNKS / ".00002.npy.abc123.tmp").write_bytes(b"\x93NUMPY half")

    resumed_encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT, batch_size=2)  # as a new process would
    seen: list[list[str]] = []
    encode = resumed_encoder.encode_with_rationales
    def recording(texts: list[str], **kwargs):
        seen.append(list(texts))
        return encode(texts, **kwargs)

    resumed_encoder.encode_with_rationales = recording
    done: list[int] = []
    summary = encode_to_directory(resumed_encoder, read_texts(str(source)), out, chunk_size=4, progress=done.append)

    assert summary.reused == [0, 1] and summary.computed == [2, 3]
    assert seen == [TEXTS[8:12], TEXTS[12:14]]  # the model saw only the texts of the missing chunks
    assert sum(done) == len(TEXTS)  # the progress bar still reaches the end
    assert not (out / CHUNKS).exists() and not list(out.glob(".*"))

    fresh = tmp_path / "fresh"
    uninterrupted = encode_to_directory(encoder, read_texts(str(source)), fresh, chunk_size=4)
    assert uninterrupted.computed == [0, 1, 2, 3]
    assert np.array_equal(np.load(out / EMBEDDINGS), np.load(fresh / EMBEDDINGS))
    assert (out / RATIONALES).read_text() == (fresh / RATIONALES).read_text()


def test_output_directory_of_something_else_is_never_touched(tmp_path, tiny):
    records = read_texts(str(write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:2]])))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"...")
    encoder = GraceEncoder(*tiny, document=SHORT)
    with pytest.raises(ValueError, match="not a grace-encode output directory"):
        encode_to_directory(encoder, records, foreign, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]

    out = tmp_path / "out"
    encode_to_directory(encoder, records, out)
    with pytest.raises(ValueError, match=r"differs in: count, input_sha256"):
        encode_to_directory(encoder, records[:1], out)
    summary = encode_to_directory(encoder, records[:1], out, overwrite=True)
    assert summary.computed == [0] and np.load(out / EMBEDDINGS).shape == (1, 64)


def test_missing_model_directory_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{"text": TEXTS[0]}])
    assert main(["in.jsonl", "out", "--model", "outputs/run", "--no-cache", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("grace-encode: error: no local directory 'outputs/run', and it could not be loaded as a hub")
    assert error.count("\n") == 1


def test_chunks_left_by_a_run_killed_after_completing_are_removed_by_the_next(tmp_path, tiny, monkeypatch):
    records = read_texts(str(write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:3]])))
    encoder, out = GraceEncoder(*tiny, document=SHORT), tmp_path / "out"
    rmtree = encode_module.shutil.rmtree
    def killed_before_removing_chunks(path, *args, **kwargs):
        if Path(path) != out / CHUNKS:
            rmtree(path, *args, **kwargs)

    monkeypatch.setattr(encode_module.shutil, "rmtree", killed_before_removing_chunks)
    encode_to_directory(encoder, records, out, chunk_size=2)
    monkeypatch.undo()
    assert json.loads((out / MANIFEST).read_text())["complete"] and (out / CHUNKS).is_dir()

    summary = encode_to_directory(encoder, records, out, chunk_size=2)
    assert summary.already_complete
    assert sorted(p.name for p in out.iterdir()) == [EMBEDDINGS, MANIFEST, RATIONALES]


def test_directory_with_only_a_stale_manifest_temporary_counts_as_empty(tmp_path, tiny):
    records = read_texts(str(write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:2]])))
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{MANIFEST}.x1y2z3.tmp").write_text('{"format_vers')  # killed during the first manifest write
    summary = encode_to_directory(GraceEncoder(*tiny, document=SHORT), records, out)
    assert summary.computed == [0]
    assert sorted(p.name for p in out.iterdir()) == [EMBEDDINGS, MANIFEST, RATIONALES]


def test_cli_encodes_a_parquet_column_end_to_end(tmp_path, capsys):
    texts = TEXTS[:4]
    pq.write_table(pa.table({"doc_id": [7, 8, 9, 10], "body": texts, "other": ["x"] * 4}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    arguments = [str(tmp_path / "in.parquet"), str(out), "--model", TINY_RANDOM, "--column", "body",
                 "--id-field", "doc_id", "--max-new-tokens", "3", "--chunk-size", "3", "--no-cache", "--quiet"]
    assert main(arguments) == 0, capsys.readouterr().err
    assert "wrote 4 embeddings of dimension 64" in capsys.readouterr().err

    expected = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT).encode_with_rationales(texts)
    np.testing.assert_allclose(np.load(out / EMBEDDINGS), expected.embeddings, atol=1e-5)
    lines = [json.loads(line) for line in (out / RATIONALES).read_text().splitlines()]
    assert [line["id"] for line in lines] == ["7", "8", "9", "10"]  # integer ids from the column, as strings
    assert [line["rationale"] for line in lines] == expected.rationales
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["input"]["field"] == "body" and manifest["count"] == 4 and manifest["complete"]


def test_compile_flag_turns_on_compiled_decoding_only():
    arguments = ["in.jsonl", "out", "--model", TINY_RANDOM]
    assert encoder_options(encode_module.build_parser().parse_args(arguments))["generation"] == GenerationOptions()
    compiled = encoder_options(encode_module.build_parser().parse_args([*arguments, "--compile"]))["generation"]
    assert compiled == GenerationOptions(compile=True)


def test_a_full_disk_stops_with_a_message_keeps_the_committed_chunks_and_the_rerun_continues(tmp_path, monkeypatch):
    import errno

    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS[:6]) + "\n")  # chunks of 2: 0, 1, 2
    out = tmp_path / "out"
    encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT, batch_size=2)
    writes = []
    real_save = np.save

    def disk_fills_at_the_second_chunk(handle, array, *args, **kwargs):
        writes.append(len(array))
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(handle, array, *args, **kwargs)

    monkeypatch.setattr(encode_module.np, "save", disk_fills_at_the_second_chunk)
    with pytest.raises(OSError, match=f"no space left on the device while writing to {out} .*the 1 chunks of 2 texts committed so far are kept"):
        encode_to_directory(encoder, read_texts(str(source)), out, chunk_size=2)
    # Chunk 0 whole; of chunk 1 only its rationales, which do not count without the .npy renamed in last; no temporary.
    assert sorted(p.name for p in (out / CHUNKS).iterdir()) == ["00000.jsonl", "00000.npy", "00001.jsonl"]
    monkeypatch.undo()
    summary = encode_to_directory(encoder, read_texts(str(source)), out, chunk_size=2)
    assert summary.reused == [0] and summary.computed == [1, 2]
    assert np.load(out / EMBEDDINGS).shape == (6, 64)
    assert main([str(source), str(tmp_path / "cli"), "--model", TINY_RANDOM, "--max-new-tokens", "3", "--quiet", "--chunk-size", "2"]) == 0
