"""Shared plumbing of the offline tasks: where packaged data lives; an STS base that encodes each text once.

The offline tasks read files that ship inside installed packages instead of downloading from a hub, so a
task's "revision" is the version of the package that carries its data: a different version may ship
different files, and results must say which one they were computed on.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset
from mteb._create_dataloaders import create_dataloader
from mteb._evaluators.any_sts_evaluator import STSEvaluatorScores
from mteb.abstasks import AbsTaskSTS
from mteb.models import EncoderProtocol
from mteb.similarity_functions import compute_pairwise_similarity
from sklearn.metrics.pairwise import (
    paired_cosine_distances,
    paired_euclidean_distances,
    paired_manhattan_distances,
)

if TYPE_CHECKING:
    from mteb.abstasks.sts import STSMetrics
    from mteb.models import MTEBModels
    from mteb.timing import TimingStack
    from mteb.types import EncodeKwargs


def package_dir(module: str, distribution: str) -> Path:
    """Directory of an installed package, found without importing it (gensim's import alone takes seconds)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{distribution} is not installed: pip install {distribution}")
    return Path(spec.submodule_search_locations[0])


def gensim_test_file(name: str) -> Path:
    """A file of gensim's test data (the same folder as ``gensim.test.utils.datapath``)."""
    path = package_dir("gensim", "gensim") / "test" / "test_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this gensim build does not ship its test data")
    return path


def package_revision(distribution: str) -> str:
    """``"<distribution>-<version>"``, the revision recorded in a task's metadata and in every result."""
    try:
        return f"{distribution}-{importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{distribution}-not-installed"  # importing the module still works; load_data will raise


def _to_numpy(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # a torch tensor, possibly on an accelerator or in half precision
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32)


class UniqueTextSTS(AbsTaskSTS):
    """An STS task that encodes every distinct text once, then scores the pairs exactly as mteb does.

    mteb's STS evaluator encodes column ``sentence1`` and column ``sentence2`` separately, so a text that
    sits in many pairs is encoded many times: the Lee task would encode its 50 documents 2450 times, and
    a GRACE encoder writes a rationale for every encode. The scores match mteb's evaluator for a
    deterministic encoder (tested); for a sampling encoder every occurrence of a text now shares one
    embedding, which is what a similarity benchmark should measure anyway. Both inputs are symmetric
    (no query/document prompt types), which is what makes the sharing valid.
    """

    def _evaluate_subset(
        self,
        model: MTEBModels,
        data_split: Dataset,
        *,
        encode_kwargs: EncodeKwargs,
        hf_split: str,
        hf_subset: str,
        prediction_folder: Path | None = None,
        num_proc: int | None = None,
        timer: TimingStack,
        **kwargs: Any,
    ) -> STSMetrics:
        if not isinstance(model, EncoderProtocol):
            raise TypeError("Expected model to be an instance of EncoderProtocol")
        first, second = (list(data_split[column]) for column in self.column_names)
        texts = list(dict.fromkeys(first + second))  # first-occurrence order: deterministic batches
        row_of = {text: row for row, text in enumerate(texts)}

        with timer("Encoding unique texts", split=hf_split, subset=hf_subset):
            embeddings = _to_numpy(
                model.encode(
                    create_dataloader(
                        Dataset.from_dict({"text": texts}),
                        task_metadata=self.metadata,
                        input_column="text",
                        num_proc=num_proc,
                        **encode_kwargs,
                    ),
                    task_metadata=self.metadata,
                    hf_split=hf_split,
                    hf_subset=hf_subset,
                    prompt_type=None,
                    **encode_kwargs,
                )
            )
        embeddings1 = embeddings[[row_of[text] for text in first]]
        embeddings2 = embeddings[[row_of[text] for text in second]]

        with timer("Scoring", split=hf_split, subset=hf_subset):
            scores = STSEvaluatorScores(
                cosine_scores=(1 - paired_cosine_distances(embeddings1, embeddings2)).tolist(),
                manhattan_distances=(-paired_manhattan_distances(embeddings1, embeddings2)).tolist(),
                euclidean_distances=(-paired_euclidean_distances(embeddings1, embeddings2)).tolist(),
                similarity_scores=_to_numpy(
                    compute_pairwise_similarity(model, embeddings1, embeddings2)
                ).tolist(),
            )
        if prediction_folder:
            self._save_task_predictions(
                scores, model, prediction_folder, hf_subset=hf_subset, hf_split=hf_split
            )
        return self._calculate_scores(scores, [self._normalize(s) for s in data_split["score"]])
