"""Which faiss index to build: ``IndexSpec``, the index type and its parameters.

``flat`` scans every vector (exact); ``hnsw`` (a neighbour graph) and ``ivf`` (clusters) trade recall for
speed on corpora too large to scan. The resolved spec is stored in ``manifest.json`` (``manifest``), so
a loaded index searches with the parameters it was built with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import faiss

INDEX_TYPES = ("flat", "hnsw", "ivf")
_TRAINING_POINTS_PER_LIST = 39  # below this faiss's k-means warns that its centroids are unreliable


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build. ``flat`` is exact; ``hnsw`` and ``ivf`` trade recall for speed."""

    type: str = "flat"
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_construction: int = 80  # hnsw: candidate list while building
    ef_search: int = 64  # hnsw: candidate list while searching (more = better recall, slower)
    nlist: int | None = None  # ivf: clusters; None = about 4 sqrt(N), with enough points to train each
    nprobe: int = 16  # ivf: clusters scanned per query

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}: use one of {', '.join(INDEX_TYPES)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be at least 1, got {self.nlist}")

    def resolved(self, count: int) -> "IndexSpec":
        """The spec with ``nlist`` fixed for a corpus of ``count`` documents (stored in the manifest)."""
        if self.type != "ivf":
            return self
        if self.nlist is None:
            nlist = max(1, min(round(4 * math.sqrt(count)), count // _TRAINING_POINTS_PER_LIST))
            return replace(self, nlist=nlist)
        if self.nlist > count:
            raise ValueError(
                f"an IVF index with nlist={self.nlist} clusters needs at least {self.nlist} documents to train, "
                f"the corpus has {count}: lower --nlist or use --index-type flat"
            )
        return self

    def create(self, dim: int) -> faiss.Index:
        """An empty faiss index (``resolved`` first for IVF)."""
        if self.type == "flat":
            return faiss.IndexFlatIP(dim)
        if self.type == "hnsw":
            index = faiss.index_factory(dim, f"HNSW{self.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(index).hnsw.efConstruction = self.ef_construction
        else:
            assert self.nlist is not None, "call resolved() first"
            index = faiss.index_factory(dim, f"IVF{self.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        self.apply_search_parameters(index)
        return index

    def apply_search_parameters(self, index: faiss.Index) -> None:
        if self.type == "hnsw":
            faiss.ParameterSpace().set_index_parameter(index, "efSearch", self.ef_search)
        elif self.type == "ivf":
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", min(self.nprobe, self.nlist or self.nprobe))


__all__ = ["INDEX_TYPES", "IndexSpec"]
