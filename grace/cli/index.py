"""``grace-index build`` and ``grace-index search``: a faiss index of a corpus, searched with rationales.

    grace-index build corpus.jsonl my-index --model runs/exp1 --id-field id
    grace-index search my-index "how do plants make food?" -k 5

``build`` embeds the corpus with the encoder's document settings and writes an index directory (see
``grace.retrieval.index``). ``search`` reloads the encoder recorded in that directory (in the recorded dtype),
embeds the queries with the query settings recorded there, and prints the top-k documents with their
scores and the query's rationale: why the query landed where it did.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from grace.cli.shared_arguments import (
    USER_ERRORS,
    TextRecord,
    add_input_arguments,
    add_model_arguments,
    add_setting_arguments,
    encoder_options,
    load_encoder,
    model_source,
    read_texts,
    report_error,
    with_overrides,
)
from grace.retrieval.index import (
    INDEX_TYPES,
    IndexSpec,
    RetrievalIndex,
    SearchResult,
    build_index,
    find_duplicate,
)

_DEFAULT = IndexSpec()
_INPUT_HELP = "a .txt (one document per line), .jsonl or .parquet file, a saved dataset, or packaged:NAME"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grace-index", description="Build and search faiss indexes of GRACE vectors.")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="embed a corpus and write an index directory")
    build.add_argument("corpus", help=_INPUT_HELP)
    build.add_argument("index", type=Path, help="index directory to write (an index already there is replaced)")
    add_input_arguments(build)
    add_model_arguments(build)
    add_setting_arguments(build, what="each document")
    add_setting_arguments(build, prefix="query-", what="each query (recorded for search)")
    build.add_argument(
        "--index-type", choices=INDEX_TYPES, default="flat", help="flat: exact (default); hnsw, ivf: approximate"
    )
    build.add_argument("--hnsw-m", type=int, default=_DEFAULT.hnsw_m, help="hnsw: neighbours per node")
    build.add_argument("--ef-search", type=int, default=_DEFAULT.ef_search, help="hnsw: search breadth")
    build.add_argument("--nlist", type=int, default=None, help="ivf: number of clusters (default about 4 sqrt(N))")
    build.add_argument("--nprobe", type=int, default=_DEFAULT.nprobe, help="ivf: clusters scanned per query")
    build.add_argument("--chunk-size", type=int, default=256, help="texts embedded (and cached) at a time")
    build.add_argument("--quiet", action="store_true", help="no progress bar")

    search = commands.add_parser("search", help="top-k documents for each query, with the query's rationale")
    search.add_argument("index", type=Path, help="index directory written by `grace-index build`")
    search.add_argument("queries", nargs="+", help="query texts")
    search.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="documents per query (default 10)")
    add_model_arguments(search, required=False)  # default: the encoder recorded in the index
    search.add_argument(
        "--allow-other-weights", action="store_true", help="search with --model even if its weights are not the index's"
    )
    search.add_argument("--show-doc-rationales", action="store_true", help="also print each hit's stored rationale")
    search.add_argument("--json", action="store_true", help="one JSON object per query instead of text")
    search.add_argument("--explain", action="store_true", help="for each hit, the tokens that matched most (grace-explain)")
    search.add_argument("--html", metavar="FILE", help="also write the hits, explained token by token, as one HTML page")
    search.add_argument("--ef-search", type=int, help="hnsw: search breadth (default: the index's)")
    search.add_argument("--nprobe", type=int, help="ivf: clusters scanned per query (default: the index's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            return _build(args)
        return _search(args)
    except USER_ERRORS as error:
        return report_error("grace-index", error)


def _build(args: argparse.Namespace) -> int:
    spec = IndexSpec(
        type=args.index_type, hnsw_m=args.hnsw_m, ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe
    )
    records = read_texts(args.corpus, field=args.field, id_field=args.id_field, limit=args.limit)
    _check_unique_ids(records, args)  # before loading a model: a bad corpus should fail in a second
    encoder = load_encoder(args)
    encoder.configs = {
        "document": with_overrides(encoder.configs["document"], args.rationale, args.max_new_tokens),
        "query": with_overrides(encoder.configs["query"], args.query_rationale, args.query_max_new_tokens),
    }
    from tqdm.auto import tqdm

    with tqdm(total=len(records), unit="doc", desc="embedding", disable=args.quiet) as bar:
        index = build_index(
            encoder,
            [r.text for r in records],
            args.index,
            ids=[r.id for r in records],
            spec=spec,
            source=model_source(args.model),
            corpus={"source": args.corpus, "field": args.field, "id_field": args.id_field, "limit": args.limit},
            chunk_size=args.chunk_size,
            progress=bar.update,
        )
    print(f"indexed {len(index)} documents ({index.dim} dimensions, {spec.type}) in {args.index}", file=sys.stderr)
    return 0


def _check_unique_ids(records: list[TextRecord], args: argparse.Namespace) -> None:
    duplicate = find_duplicate([r.id for r in records])
    if duplicate is not None:
        ident, first, second = duplicate
        raise ValueError(
            f"{args.corpus}: duplicate document id {ident!r} (field {args.id_field!r}, lines {records[first].line} "
            f"and {records[second].line}); a hit must name one document: make the ids unique, or leave out "
            f"--id-field to number documents by line"
        )


def _search(args: argparse.Namespace) -> int:
    index = RetrievalIndex.load(args.index)
    if args.nprobe is not None or args.ef_search is not None:
        spec = index.manifest.spec
        tuned = replace(spec, nprobe=args.nprobe or spec.nprobe, ef_search=args.ef_search or spec.ef_search)
        tuned.apply_search_parameters(index.index)
    # The encoder, dtype and query settings recorded in the index, unless --model / --dtype say otherwise.
    same_weights = not args.allow_other_weights
    encoder = index.load_encoder(args.model, same_weights=same_weights, **encoder_options(args))
    results = index.search(encoder, args.queries, k=args.k, same_weights=same_weights)
    explained = [_explain_hits(encoder, result) for result in results] if (args.explain or args.html) else [None] * len(results)
    for result, explanations in zip(results, explained):
        if args.json:
            print(json.dumps(_as_json(result), ensure_ascii=False))
        else:
            print(format_result(result, show_doc_rationales=args.show_doc_rationales, explanations=explanations if args.explain else None))
    if args.html:
        from grace.explanation.html import PageItem, write_page

        items = [
            PageItem(explanation, heading=f"{result.query}  ·  hit {hit.rank}: {hit.document.id}", labels=("Query", f"Document {hit.document.id}"))
            for result, explanations in zip(results, explained) for hit, explanation in zip(result.hits, explanations)
        ]  # fmt: skip
        if not items:
            raise ValueError(f"--html {args.html}: no hits to show")
        print(f"page: {write_page(args.html, items, title='Why these documents?')}", file=sys.stderr)
    return 0


def _explain_hits(encoder, result: SearchResult) -> list:
    """One ``SimilarityExplanation`` per hit: the query (query settings) against the hit (document settings).
    A document cut to the prompt budget at indexing is explained as cut, as it was embedded."""
    if not result.hits:
        return []
    documents = [hit.document.text for hit in result.hits]
    return encoder.explain_similarity(result.query, documents, role_a="query", role_b="document", top_pairs=3, allow_truncated=True)


def format_result(result: SearchResult, *, show_doc_rationales: bool = False, width: int = 100, explanations: list | None = None) -> str:
    """A block a person reads: the query, its rationale, then one line per hit (rank, score, id, text);
    with ``explanations`` (one per hit), the tokens of query and hit that added most to their cosine."""
    lines = [f"query: {result.query}"]
    if result.rationale.strip():  # a blank rationale would print a header over nothing
        lines.append("query rationale" + (" (cut at the length limit)" if result.truncated else "") + ":")
        lines.append(textwrap.indent(result.rationale.strip(), "    "))
    for hit in result.hits:
        text = textwrap.shorten(hit.document.text, width=width, placeholder=" ...")
        lines.append(f"{hit.rank:>4}  {hit.score:+.4f}  {hit.document.id}  {text}")
        if show_doc_rationales and hit.document.rationale.strip():
            lines.append(textwrap.indent(hit.document.rationale.strip(), "        "))
        if explanations:
            lines.append("        " + _matched(explanations[hit.rank - 1]))
    return "\n".join(lines) + "\n"


def _matched(explained) -> str:
    """``matched: query "cats" +0.0123 (input), ...; hit "mat" ...; rationale 42% of the cosine``."""
    from grace.explanation.terminal import shown

    def strongest(side) -> str:
        return ", ".join(f'"{shown(side.pieces[i])}" {float(side.contributions[i]):+.4f} ({side.spans[i]})' for i in side.strongest(3))

    share = explained.shares()["rationale"]
    return f"matched: query {strongest(explained.a)}; hit {strongest(explained.b)}; rationale {100 * share:.0f}% of the cosine"


def _as_json(result: SearchResult) -> dict:
    return {
        "query": result.query,
        "rationale": result.rationale,
        "truncated": result.truncated,
        "hits": [
            {
                "rank": hit.rank,
                "id": hit.document.id,
                "score": hit.score,
                "text": hit.document.text,
                "rationale": hit.document.rationale,
            }
            for hit in result.hits
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
