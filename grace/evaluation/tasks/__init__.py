"""An offline MTEB suite: real benchmark data shipped inside installed packages (gensim, chatterbot-corpus).

mteb's stock tasks download their data from the Hugging Face hub, which no machine of this project can
reach. These tasks subclass mteb 2.x's abstract tasks and only override ``load_data`` to read package
files, so ``mteb.evaluate`` runs them like any other task. Names start with ``Grace`` to never collide
with mteb's registry, which ``get_tasks`` falls back to for every other name.

==============================  ==============  ==========================  ================  =============
task                            type            data                        texts to encode   main score
==============================  ==============  ==========================  ================  =============
GraceLeeSTS                     STS             50 news docs, 1225 pairs    50 (long)         cosine_spearman
GracePangLeePolarity            Classification  200 sentences, 100/100      200 (short)       accuracy
GraceMiniNewsgroupsClustering   Clustering      200 posts, 2 groups         200 (long)        v_measure
GraceChatterbotRetrieval        Retrieval       144 queries, 140 answers    284 (short)       ndcg_at_10
GraceWordSim353                 STS             353 word pairs              437 words         cosine_spearman
GraceSimLex999                  STS             999 word pairs              1028 words        cosine_spearman
==============================  ==============  ==========================  ================  =============

``SMALL_SUITE`` is for a CPU smoke run of a GRACE encoder, whose cost is one generated rationale per
distinct text: it takes the two whole tasks with the fewest texts (250 in all) and covers two different
mteb code paths (pairwise similarity, and a trained probe). Subsampling a task instead would make its
score incomparable with the full suite's.
"""
from __future__ import annotations

import mteb
from mteb.abstasks import AbsTask

from grace.evaluation.benchmarks import BENCHMARKS, benchmark_tasks

from .chatterbot import GraceChatterbotRetrieval, RetrievalData, chatterbot_retrieval_data
from .lee import GraceLeeSTS
from .newsgroups import GraceMiniNewsgroupsClustering
from .polarity import GracePangLeePolarity
from .word_similarity import GraceSimLex999, GraceWordSim353

OFFLINE_TASKS: dict[str, type[AbsTask]] = {
    task.metadata.name: task
    for task in (
        GraceLeeSTS,
        GracePangLeePolarity,
        GraceMiniNewsgroupsClustering,
        GraceChatterbotRetrieval,
        GraceWordSim353,
        GraceSimLex999,
    )
}
OFFLINE_SUITE: tuple[str, ...] = tuple(OFFLINE_TASKS)
SMALL_SUITE: tuple[str, ...] = ("GraceLeeSTS", "GracePangLeePolarity")
SUITES: dict[str, tuple[str, ...]] = {"offline": OFFLINE_SUITE, "small": SMALL_SUITE}


def get_tasks(names: list[str] | tuple[str, ...]) -> list[AbsTask]:
    """Fresh task objects for ``names``, in order, each task once.

    A name is one of ours (``OFFLINE_SUITE``), a suite (``"offline"``, ``"small"``), a standard benchmark
    (``BENCHMARKS``: ``"mteb-eng"``, ``"bright"``, ... with mteb's subset and split selection) or any task
    name of mteb's own registry (benchmarks and mteb tasks need the network to load their data).
    """
    tasks: dict[str, AbsTask] = {}
    for name in names:
        if name in BENCHMARKS:
            for task in benchmark_tasks(name):
                tasks.setdefault(task.metadata.name, task)
            continue
        for task_name in SUITES.get(name, (name,)):
            if task_name not in tasks:
                tasks[task_name] = _get_task(task_name)
    return list(tasks.values())


def _get_task(name: str) -> AbsTask:
    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name]()
    try:
        return mteb.get_task(name)
    except KeyError as error:
        raise ValueError(
            f"unknown task {name!r}: not an offline task ({', '.join(OFFLINE_SUITE)}), not a suite "
            f"({', '.join(SUITES)}), not a benchmark ({', '.join(BENCHMARKS)}), and mteb says: "
            f"{error.args[0] if error.args else error}"
        ) from None


__all__ = [
    "BENCHMARKS",
    "OFFLINE_SUITE",
    "OFFLINE_TASKS",
    "SMALL_SUITE",
    "SUITES",
    "GraceChatterbotRetrieval",
    "GraceLeeSTS",
    "GraceMiniNewsgroupsClustering",
    "GracePangLeePolarity",
    "GraceSimLex999",
    "GraceWordSim353",
    "RetrievalData",
    "chatterbot_retrieval_data",
    "get_tasks",
]
