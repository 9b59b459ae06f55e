"""Gallery search: a gallery's embeddings and image paths in a faiss index, queried for the k nearest.

    index = GalleryIndex(features, paths, metric="cosine")
    distances, indices = index.search(query_features, k=10)
    index.save("gallery.npz"); index = GalleryIndex.load("gallery.npz")

Distances are the evaluation's (:func:`reidkit.evaluation.compute_distance`):
``"cosine"`` is ``1 - cos`` (features L2-normalised, searched by inner product)
and ``"euclidean"`` the squared Euclidean distance.  The default index is exact
(``faiss.IndexFlat``).  ``ivf_lists=N`` clusters the gallery into ``N``
inverted lists (``faiss.IndexIVFFlat``, for galleries of millions) and searches
the ``nprobe`` lists nearest to each query: approximate, and exact again when
``nprobe == ivf_lists``.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.distance import check_metric
from ..files import write_atomic

FORMAT_VERSION = 1


def _import_faiss():
    try:
        import faiss
    except ImportError as e:                    # a dependency of reidkit; only a broken install lacks it
        raise ImportError("gallery search needs faiss: pip install faiss-cpu") from e
    return faiss


def _as_matrix(features, what: str) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (num_images, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{what} has NaN or infinite values in rows {rows[:10].tolist()}")
    return x


class GalleryIndex:
    """Embeddings of gallery images with their paths, searchable for a query's nearest neighbours.

    ``meta`` is free-form JSON kept with the index: ``reidkit extract`` records
    the model that made the embeddings there, so that ``reidkit search`` embeds
    queries the same way.
    """

    def __init__(self, features, paths: Sequence[str], metric: str = "cosine", ivf_lists: int | None = None,
                 nprobe: int = 8, meta: dict | None = None):
        check_metric(metric)
        self.metric, self.ivf_lists = metric, ivf_lists
        self.meta = dict(meta or {})
        self.features = np.zeros((0, 0), dtype=np.float32)
        self.paths: list[str] = []
        self._index: Any = None                     # a faiss index, built on first use
        self.nprobe = nprobe
        self.add(features, paths)

    @property
    def nprobe(self) -> int:
        """Inverted lists searched per query (``ivf_lists`` indices only)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be at least 1, got {value}")
        self._nprobe = value
        if self._index is not None and self.ivf_lists is not None:
            self._index.nprobe = min(value, self.ivf_lists)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def _prepare(self, features, what: str) -> np.ndarray:
        x = _as_matrix(features, what)
        if len(self.paths) and x.shape[1] != self.dim:
            raise ValueError(f"{what} have dimension {x.shape[1]}, the gallery {self.dim}")
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return x

    def add(self, features, paths: Sequence[str]) -> None:
        """Append gallery images (``features``: N x dim, one path each)."""
        x = self._prepare(features, "gallery features")
        paths = [str(p) for p in paths]
        if len(paths) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} feature rows but {len(paths)} paths")
        self.features = x if not self.paths else np.concatenate([self.features, x])
        self.paths += paths
        self._index = None                           # rebuilt on the next search

    def _build(self):
        faiss = _import_faiss()
        d = self.dim
        flat = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
        if self.ivf_lists is None:
            index = flat
        else:
            if not 1 <= self.ivf_lists <= len(self):
                raise ValueError(f"ivf_lists must be between 1 and the gallery size {len(self)}, "
                                 f"got {self.ivf_lists}")
            kind = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
            index = faiss.IndexIVFFlat(flat, d, self.ivf_lists, kind)
            index.cp.seed = 0                        # the same clusters every time
            index.train(self.features)
            index.nprobe = min(self.nprobe, self.ivf_lists)
        index.add(self.features)
        return index

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery images of each query: ``(distances, indices)``, each Q x k, nearest first.

        With ``ivf_lists``, a query whose probed lists hold fewer than ``k``
        images gets index -1 (distance inf) in the remaining places.
        """
        if len(self) == 0:
            raise ValueError("the gallery is empty")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = self._prepare(queries, "query features")
        if self._index is None:
            self._index = self._build()
        k = min(k, len(self))
        scores, indices = self._index.search(q, k)
        distances = (1.0 - scores).astype(np.float32) if self.metric == "cosine" else scores
        distances[indices < 0] = np.inf
        return distances, indices

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.npz): features, paths, metric, index settings and ``meta``.

        An ``ivf_lists`` index is trained (k-means) here if it was not yet, and
        stored trained, so that loading it does not cluster the gallery again.
        """
        path = Path(path)
        header = {"format": FORMAT_VERSION, "metric": self.metric, "ivf_lists": self.ivf_lists,
                  "nprobe": self.nprobe, "meta": self.meta}
        arrays: dict[str, Any] = {"features": self.features, "paths": np.array(self.paths, dtype=str),
                  "header": np.array(json.dumps(header))}
        if self.ivf_lists is not None:
            if self._index is None:
                self._index = self._build()
            arrays["faiss_index"] = _import_faiss().serialize_index(self._index)
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:               # a file object: numpy would otherwise append ".npz"
                np.savez(f, **arrays)
        return write_atomic(path, write)             # a failed write leaves the previous gallery intact

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """Read a gallery written by :meth:`save` (or ``reidkit extract``)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                features, paths = z["features"], z["paths"].tolist()
                trained = z["faiss_index"] if "faiss_index" in z.files else None
        except FileNotFoundError:
            raise FileNotFoundError(f"gallery file not found: {path}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a reidkit gallery file, or a truncated one ({type(e).__name__}: "
                             f"{str(e)[:200]}); write it again with `reidkit extract`") from None
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: gallery format {header.get('format')!r}, this reidkit reads {FORMAT_VERSION}")
        gallery = cls(features, paths, header["metric"], header["ivf_lists"], header["nprobe"], header["meta"])
        if trained is not None:
            gallery._index = _import_faiss().deserialize_index(trained)
            gallery.nprobe = gallery.nprobe              # onto the loaded index
        return gallery
