"""GraceMiniNewsgroupsClustering: 200 20-Newsgroups posts (alt.atheism vs sci.space) from gensim's test data.

``mini_newsgroup`` is a zlib-compressed protocol-0 (Python 2) pickle of a scikit-learn ``Bunch`` with
``data`` (200 raw posts), ``target`` (0/1, 100 each) and ``target_names``. The class lived at
``sklearn.datasets.base.Bunch``, which modern scikit-learn no longer has, so we unpickle with a shim that
maps it to a plain dict and refuses every other global except the numpy array machinery.

Each raw post starts with its mail headers, including a ``Newsgroups:`` line that names the label; we
drop everything up to the first blank line, as scikit-learn's ``remove=("headers",)`` does.
"""
from __future__ import annotations

import copyreg
import io
import pickle
import zlib
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTaskClustering
from mteb.abstasks.task_metadata import TaskMetadata

from ._common import gensim_test_file, package_revision


class _Bunch(dict):
    """Stand-in for the scikit-learn ``Bunch`` the file was pickled with."""


class _NewsgroupsUnpickler(pickle.Unpickler):
    """Resolves only the globals this one file needs, so a tampered file cannot run code."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("sklearn.datasets.base", "Bunch"): _Bunch,
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("__builtin__", "dict"): dict,
        ("__builtin__", "object"): object,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            # numpy 2 renamed numpy.core to numpy._core; the old path still imports, with a warning
            return super().find_class(
                "numpy._core.multiarray" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else module,
                name,
            )
        raise pickle.UnpicklingError(f"mini_newsgroup: refusing to load global {module}.{name}")


def strip_headers(post: str) -> str:
    """The body of a post: everything after the first blank line (the header block ends there)."""
    _headers, _blank, body = post.partition("\n\n")
    return body.strip()


def read_mini_newsgroups() -> tuple[list[str], list[str]]:
    """(post bodies, newsgroup names), in file order."""
    raw = zlib.decompress(gensim_test_file("mini_newsgroup").read_bytes())
    bunch = _NewsgroupsUnpickler(io.BytesIO(raw), encoding="latin1").load()
    names = [str(name) for name in bunch["target_names"]]
    bodies = [strip_headers(str(post)) for post in bunch["data"]]
    labels = [names[int(target)] for target in bunch["target"]]
    if not all(bodies) or len(bodies) != len(labels):
        raise ValueError("mini_newsgroup: a post has no body or the labels do not line up")
    return bodies, labels


class GraceMiniNewsgroupsClustering(AbsTaskClustering):
    # mteb's defaults embed 4% of the corpus and draw 16384-item bootstrap samples, sized for corpora of
    # hundreds of thousands. Here: embed all 200 posts, and cluster 10 bootstrap samples of 200 each.
    max_fraction_of_documents_to_embed = None
    max_document_to_embed = None
    max_documents_per_cluster = 200
    n_clusters = 10

    metadata = TaskMetadata(
        name="GraceMiniNewsgroupsClustering",
        description=(
            "Clustering of 200 Usenet posts from two 20 Newsgroups groups (alt.atheism, sci.space; 100 "
            "each), headers removed. Reads the pickle gensim/test/test_data/mini_newsgroup from the "
            "installed gensim package. Score: V-measure of k-means (k=2) over 10 bootstrap samples of 200 posts."
        ),
        reference="http://qwone.com/~jason/20Newsgroups/",
        dataset={"path": "gensim/test/test_data/mini_newsgroup", "revision": package_revision("gensim")},
        type="Clustering",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="v_measure",
        date=("1993-01-01", "1993-12-31"),
        domains=["Web", "Social", "Written"],
        task_subtypes=["Thematic clustering"],
        license="not specified",
        annotations_creators="derived",  # the label is the group the post was sent to
        dialect=[],
        sample_creation="found",
        bibtex_citation=r"""@inproceedings{lang1995newsweeder,
  author = {Lang, Ken},
  booktitle = {Proceedings of the Twelfth International Conference on Machine Learning},
  pages = {331--339},
  title = {NewsWeeder: Learning to Filter Netnews},
  year = {1995},
}""",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        bodies, labels = read_mini_newsgroups()
        self.dataset = DatasetDict({"test": Dataset.from_dict({"sentences": bodies, "labels": labels})})
        self.data_loaded = True
