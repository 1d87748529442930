"""Standard benchmarks by name, for users with the network: the paper's MTEB(eng) list and BRIGHT.

    grace-eval eval.tasks=[mteb-eng]     # MTEB(eng, v1): the 56 English tasks of the paper's Table 1
    grace-eval eval.tasks=[bright]       # BRIGHT: reasoning-intensive retrieval, 12 domains

Each set is resolved through mteb's own benchmark registry (``mteb.get_benchmark``), so it carries
mteb's subset and split choices (STS17 is evaluated on en-en only, AmazonCounterfactual on en, ...).
The paper used mteb 1.38's English list; its official ``eval.sh`` names 55 tasks (it leaves out
StackExchangeClusteringP2P), its text says 56, which is MTEB(eng, v1).

Their data is on the Hugging Face hub. ``check_data_available`` runs before any model loads and fails
with one line when the hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and a task's data is not
in the local hub cache, instead of failing an hour later inside mteb.
"""
from __future__ import annotations

import copy
import urllib.error
import urllib.request
from typing import Sequence

import mteb
from mteb.abstasks import AbsTask

BENCHMARKS: dict[str, str] = {
    "mteb-eng": "MTEB(eng, v1)",  # the paper's MTEB average (56 tasks)
    "mteb-eng-v2": "MTEB(eng, v2)",  # mteb's current English benchmark (41 tasks, faster)
    "bright": "BRIGHT",  # reasoning-intensive retrieval: where rationales should matter most
    "bright-long": "BRIGHT (long)",  # BRIGHT with whole documents instead of passages
}


class DataUnavailable(RuntimeError):
    """A task's data can be neither downloaded nor read from the local cache."""


def benchmark_tasks(name: str) -> list[AbsTask]:
    """Fresh copies of the tasks of ``BENCHMARKS[name]``, with mteb's subset and split selection.

    mteb returns the same task objects on every call and keeps loaded data on them: each evaluation
    gets its own copies (made before any data is loaded, so they are cheap).
    """
    return [copy.deepcopy(task) for task in mteb.get_benchmark(BENCHMARKS[name]).tasks]


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers at all (any HTTP status counts); False in offline mode."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


def is_cached(task: AbsTask) -> bool:
    """Whether the task's dataset (repository and revision) is in the local Hugging Face hub cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    dataset = task.metadata.dataset or {}
    try:
        snapshot_download(dataset["path"], repo_type="dataset", revision=dataset.get("revision"), local_files_only=True)
    except (LocalEntryNotFoundError, KeyError, ValueError, OSError):
        return False
    return True


def check_data_available(tasks: Sequence[AbsTask], offline_tasks: Sequence[str]) -> None:
    """Raise ``DataUnavailable`` (one line) when some hub-hosted task could not load its data here.

    ``offline_tasks``: names whose data ships in installed packages (never checked). Costs one HTTP request
    when the hub is reachable, and local cache look-ups when it is not.
    """
    hosted = [task for task in tasks if task.metadata.name not in offline_tasks]
    if not hosted or hub_reachable():
        return
    missing = [task.metadata.name for task in hosted if not is_cached(task)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataUnavailable(
            f"the data of {len(missing)} task(s) ({shown}) is not available here: the Hugging Face hub cannot be "
            "reached and it is not in the local cache; the offline suite needs no network (eval.tasks=[offline])"
        )
