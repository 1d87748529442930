"""GraceWordSim353 and GraceSimLex999: word-pair similarity benchmarks from gensim's test data, run as STS.

Both files are tab-separated ``word1 word2 score`` with ``#`` comment lines, scores on a 0-10 scale.
WordSim353 rates relatedness (coffee-cup is high) and keeps its one duplicated pair (353 rows, as in the
original collection); SimLex-999 rates similarity proper (coffee-cup is low), so an encoder can do well on
one and poorly on the other. The words go to the encoder as they are, each a text of its own.
"""
from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.task_metadata import TaskMetadata

from ._common import UniqueTextSTS, gensim_test_file, package_revision


def read_word_pairs(file_name: str) -> Dataset:
    """``sentence1``, ``sentence2``, ``score`` for every non-comment line of a gensim word-pair file."""
    columns: dict[str, list[Any]] = {"sentence1": [], "sentence2": [], "score": []}
    for number, line in enumerate(gensim_test_file(file_name).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{file_name}:{number}: expected 'word1<TAB>word2<TAB>score'")
        columns["sentence1"].append(fields[0].strip())
        columns["sentence2"].append(fields[1].strip())
        columns["score"].append(float(fields[2]))
    return Dataset.from_dict(columns)


_COMMON: dict[str, Any] = dict(
    type="STS",
    category="t2t",
    modalities=["text"],
    eval_splits=["test"],
    eval_langs=["eng-Latn"],
    main_score="cosine_spearman",
    domains=["Constructed"],
    task_subtypes=[],
    license="not specified",
    annotations_creators="human-annotated",
    dialect=[],
    sample_creation="created",
)


class WordPairSTS(UniqueTextSTS):
    """A gensim word-pair file as an STS task; subclasses name the file and carry the metadata."""

    min_score = 0
    max_score = 10
    file_name: str

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = DatasetDict({"test": read_word_pairs(self.file_name)})
        self.data_loaded = True


class GraceWordSim353(WordPairSTS):
    file_name = "wordsim353.tsv"

    metadata = TaskMetadata(
        name="GraceWordSim353",
        description=(
            "WordSimilarity-353: 353 English word pairs with mean human relatedness ratings (0-10), run as "
            "an STS task on single words. Reads gensim/test/test_data/wordsim353.tsv from the installed "
            "gensim package."
        ),
        reference="http://www.cs.technion.ac.il/~gabr/resources/data/wordsim353/",
        dataset={"path": "gensim/test/test_data/wordsim353.tsv", "revision": package_revision("gensim")},
        date=("2001-01-01", "2002-01-31"),
        bibtex_citation=r"""@article{finkelstein2002placing,
  author = {Finkelstein, Lev and Gabrilovich, Evgeniy and Matias, Yossi and Rivlin, Ehud and Solan, Zach and Wolfman, Gadi and Ruppin, Eytan},
  journal = {ACM Transactions on Information Systems},
  number = {1},
  pages = {116--131},
  title = {Placing Search in Context: The Concept Revisited},
  volume = {20},
  year = {2002},
}""",
        **_COMMON,
    )


class GraceSimLex999(WordPairSTS):
    file_name = "simlex999.txt"

    metadata = TaskMetadata(
        name="GraceSimLex999",
        description=(
            "SimLex-999: 999 English word pairs (nouns, verbs, adjectives) with mean human similarity "
            "ratings (0-10) that score relatedness without similarity low, run as an STS task on single "
            "words. Reads gensim/test/test_data/simlex999.txt from the installed gensim package."
        ),
        reference="https://www.cl.cam.ac.uk/~fh295/simlex.html",
        dataset={"path": "gensim/test/test_data/simlex999.txt", "revision": package_revision("gensim")},
        date=("2014-01-01", "2015-12-31"),
        bibtex_citation=r"""@article{hill2015simlex,
  author = {Hill, Felix and Reichart, Roi and Korhonen, Anna},
  journal = {Computational Linguistics},
  number = {4},
  pages = {665--695},
  title = {SimLex-999: Evaluating Semantic Models With (Genuine) Similarity Estimation},
  volume = {41},
  year = {2015},
}""",
        **_COMMON,
    )
