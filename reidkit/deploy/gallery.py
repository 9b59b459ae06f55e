"""Gallery search: a gallery's embeddings and image paths in a faiss index, queried for the k nearest.

    index = GalleryIndex(features, paths, metric="cosine")              # exact
    index = GalleryIndex(features, paths, index="hnsw")                 # approximate, fast
    index = GalleryIndex(features, paths, index="ivfpq")                # approximate, compressed
    distances, indices = index.search(query_features, k=10)
    index.add(more_features, more_paths)                                # into the built index, no retraining
    index.save("gallery.npz"); index = GalleryIndex.load("gallery.npz")

Distances are the evaluation's (:func:`reidkit.evaluation.compute_distance`): ``"cosine"`` is ``1 - cos``
(features L2-normalised; computed as half the squared Euclidean distance, which it equals) and
``"euclidean"`` the squared Euclidean distance.  ``index`` chooses faiss's index:

- ``"flat"`` (default): exact, every gallery vector compared; ``dim x 4`` bytes per image.
- ``"ivf"``: the gallery clustered into ``ivf_lists`` inverted lists (default ``4 sqrt(N)``; their centres
  found through a small HNSW graph); a query scans the ``nprobe`` nearest lists.
- ``"hnsw"``: a navigable small-world graph (``hnsw_m`` links per vector, ``ef_search`` candidates per
  query): the fastest single-query search; ``dim x 4 + hnsw_m x 8`` bytes per image.
- ``"ivfpq"``: inverted lists of product-quantised codes (``pq_bytes`` per image, default ``dim / 8``),
  each query's ``refine x k`` best candidates re-ranked on 8-bit
  scalar-quantised vectors (``dim`` bytes per image): a 1M x 512 gallery in about 0.6 GB instead of 2 GB
  (docs/BENCHMARKS.md).
- ``"hnswpq"``: the ``hnsw`` graph over product-quantised codes, re-ranked as ``ivfpq``: 0.79 GB for
  1M x 512, recall@10 0.94 at 1.4 ms per query with the defaults (docs/BENCHMARKS.md).
- any other text: a faiss ``index_factory`` description (``"IVF4096,PQ64"``, ``"OPQ32,IVF1024,PQ32"``).

Indices that learn (clusters, codebooks) learn on the first vectors they are given (a seeded sample of
``train_size`` of them); later :meth:`add` calls put new images into the built index without learning
again, so the first gallery should be representative.
"""
from __future__ import annotations

import inspect
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.distance import check_metric
from ..files import write_atomic
from .kmeans import kmeans

#: 3: paths as a JSON list (any file name round-trips: newlines, non-UTF-8 bytes); 2: newline-joined UTF-8
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)


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


class _SearchSetting:
    """A search-time setting of a :class:`GalleryIndex` (a positive int), applied to the built index when set."""

    def __init__(self, name: str, doc: str):
        self.name, self.__doc__ = name, doc

    def __get__(self, index: GalleryIndex | None, owner: type) -> Any:
        return self if index is None else index._settings[self.name]

    def __set__(self, index: GalleryIndex, value: int) -> None:
        if value < 1:
            raise ValueError(f"{self.name} must be at least 1, got {value}")
        index._settings[self.name] = int(value)
        index._apply_search_settings()


class GalleryIndex:
    """Embeddings of gallery images with their paths, searchable for a query's nearest neighbours.

    ``meta`` is free-form JSON kept with the index: ``reidkit extract`` records the model that made the
    embeddings there, so that ``reidkit search`` (and ``extract --add-to``) embed the same way.
    """

    def __init__(self, features, paths: Sequence[str], metric: str = "cosine", ivf_lists: int | None = None,
                 nprobe: int = 8, meta: dict | None = None, *, index: str | None = None,
                 hnsw_m: int = 32, ef_search: int = 256, pq_bytes: int | None = None, refine: int = 16,
                 train_size: int = 100_000):
        check_metric(metric)
        if index is None:
            index = "ivf" if ivf_lists is not None else "flat"
        for name, value in (("nprobe", nprobe), ("hnsw_m", hnsw_m), ("ef_search", ef_search),
                            ("refine", refine), ("train_size", train_size), ("ivf_lists", ivf_lists or 1),
                            ("pq_bytes", pq_bytes or 1)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.metric, self.kind, self.ivf_lists = metric, index, ivf_lists
        self.hnsw_m, self.pq_bytes, self.train_size = hnsw_m, pq_bytes, train_size
        self._settings = {"nprobe": nprobe, "ef_search": ef_search, "refine": refine}
        self.meta = dict(meta or {})
        self.paths: list[str] = []
        self.description: str | None = None        # the faiss index_factory text, fixed when built
        self._dim: int | None = None
        self._pending: list[np.ndarray] = []        # vectors given before the index is built
        self._index: Any = None
        self._norms: torch.Tensor | None = None     # squared norms of a flat index's vectors
        self.add(features, paths)

    # ---- search-time settings ---------------------------------------------------------------------------
    nprobe = _SearchSetting("nprobe", "Inverted lists scanned per query (``ivf`` / ``ivfpq`` indices).")
    ef_search = _SearchSetting("ef_search", "Candidates kept while walking the graph (``hnsw`` / ``hnswpq``): "
                                            "higher is slower and closer to exact.")
    refine = _SearchSetting("refine", "``ivfpq`` / ``hnswpq``: each query's ``refine x k`` best candidates by "
                                      "code are re-ranked on the 8-bit vectors (higher: closer to exact, slower).")

    def _apply_search_settings(self) -> None:
        if self._index is None:
            return
        faiss = _import_faiss()
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = min(self.nprobe, ivf.nlist)
        hnsw = _find(self._index, "hnsw")
        if hnsw is not None:
            hnsw.efSearch = self.ef_search
        if isinstance(self._index, faiss.IndexRefine):
            self._index.k_factor = float(self.refine)

    # ---- contents ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return self._dim or 0

    def _prepare(self, features, what: str) -> np.ndarray:
        x = _as_matrix(features, what)
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"{what} have dimension {x.shape[1]}, the gallery {self._dim}")
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return x

    def add(self, features, paths: Sequence[str]) -> None:
        """Append gallery images (``features``: N x dim, one path each); into the built index when there is
        one (without learning its clusters or codebooks again)."""
        x = self._prepare(features, "gallery features")
        paths = [str(p) for p in paths]
        if len(paths) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} feature rows but {len(paths)} paths")
        if self._dim is None and x.shape[0]:
            self._dim = x.shape[1]
        if self._index is not None:
            self._index.add(x)
        else:
            self._pending.append(x)
        self.paths += paths

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of gallery images ``ids`` (any shape; -1 gives zeros): exact for ``flat``,
        ``ivf`` and ``hnsw``, the decoded codes for compressed indices."""
        ids = np.asarray(ids, dtype=np.int64)
        self._ensure_built()
        faiss = _import_faiss()
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()                # reconstructing from inverted lists needs id -> list
        flat_ids = ids.reshape(-1)
        out = np.zeros((flat_ids.size, self.dim), dtype=np.float32)
        valid = flat_ids >= 0
        if valid.any():
            out[valid] = self._index.reconstruct_batch(flat_ids[valid])
        return out.reshape(*ids.shape, self.dim)

    @property
    def features(self) -> np.ndarray:
        """Every gallery vector, ``N x dim`` (as :meth:`vectors`)."""
        return self.vectors(np.arange(len(self)))

    # ---- building ---------------------------------------------------------------------------------------
    def _describe(self, n: int) -> str:
        """The faiss index_factory text for a gallery of ``n`` vectors."""
        lists = self.ivf_lists or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
        if self.ivf_lists is not None and not 1 <= self.ivf_lists <= n:
            raise ValueError(f"ivf_lists must be between 1 and the gallery size {n}, got {self.ivf_lists}")
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf":
            return f"IVF{lists}_HNSW32,Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        if self.kind in ("ivfpq", "hnswpq"):
            m = self.pq_bytes or max(1, self.dim // 8)
            if self.dim % m:
                raise ValueError(f"pq_bytes={m} must divide the feature dimension {self.dim}")
            if self.kind == "hnswpq":
                return f"HNSW{self.hnsw_m}_PQ{m},Refine(SQ8)"
            return f"IVF{lists}_HNSW32,PQ{m},Refine(SQ8)"
        return self.kind

    def _ensure_built(self) -> None:
        if self._index is not None:
            return
        if not self.paths:
            raise ValueError("the gallery is empty")
        faiss = _import_faiss()
        x = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self.description = self._describe(len(x))
        try:
            index = faiss.index_factory(self.dim, self.description, faiss.METRIC_L2)
        except RuntimeError as e:
            raise ValueError(f"index {self.kind!r}: faiss cannot build {self.description!r} "
                             f"({str(e).strip().splitlines()[-1][:200]})") from None
        if not index.is_trained:
            sample = x
            if len(x) > self.train_size:
                sample = x[np.sort(np.random.default_rng(0).choice(len(x), self.train_size, replace=False))]
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None and ivf.nlist > len(sample):
                raise ValueError(f"index {self.kind!r} ({self.description}) has {ivf.nlist} inverted lists but the "
                                 f"gallery only {len(sample)} images to place them: give fewer lists "
                                 "(--ivf-lists) or use --index flat / hnsw for a gallery this small")
            try:
                if ivf is not None and ivf.quantizer.ntotal == 0:
                    # the inverted lists' centres by k-means in torch: faiss learns them with its bundled OpenBLAS,
                    # which runs generic kernels on CPUs newer than it knows (10x slower than torch's here)
                    ivf.quantizer.add(kmeans(sample, ivf.nlist))
                index.train(sample)
            except RuntimeError as e:
                reason = str(e).split("Error: ", 1)[-1].strip().splitlines()[0][:200]
                raise ValueError(f"index {self.kind!r} ({self.description}) cannot be trained on {len(sample)} "
                                 f"images ({reason}); product-quantised indices (ivfpq, hnswpq, PQ) need at least "
                                 "256 images: use --index flat or hnsw for a gallery this small") from None
        index.add(x)
        self._index, self._pending = index, []
        self._apply_search_settings()

    def search(self, queries, k: int = 10, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery images of each query: ``(distances, indices)``, each Q x k, nearest first.

        ``allowed``: a boolean mask over the gallery (a camera or a time window, say): only those images are
        searched, inside the index (faiss's ID selectors; the exact search masks its distances), never by
        fetching more and dropping some.  With an approximate index, or fewer allowed images than ``k``, the
        remaining places hold index -1 (distance inf).
        """
        if len(self) == 0:
            raise ValueError("the gallery is empty")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = self._prepare(queries, "query features")
        self._ensure_built()
        k = min(k, len(self))
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (len(self),):
                raise ValueError(f"allowed must be a mask of the {len(self)} gallery images, got {allowed.shape}")
        if self.description == "Flat":
            distances, indices = self._exact_search(q, k, allowed)
        elif allowed is not None:
            distances, indices = self._index.search(q, k, params=self._selecting(allowed))
        else:
            distances, indices = self._index.search(q, k)
        if self.metric == "cosine":
            distances = distances / 2                  # |a - b|^2 / 2 = 1 - cos for unit vectors
        distances = distances.astype(np.float32)
        distances[indices < 0] = np.inf
        return distances, indices

    def _selecting(self, allowed: np.ndarray) -> Any:
        """faiss search parameters that restrict this index's search to the ``allowed`` images."""
        faiss = _import_faiss()
        ids = np.packbits(allowed, bitorder="little")      # faiss's bitmap: bit i & 7 of byte i >> 3
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(ids))
        base = self._index.base_index if isinstance(self._index, faiss.IndexRefine) else self._index
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=min(self.nprobe, ivf.nlist))
        elif _find(base, "hnsw") is not None:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef_search)
        else:
            params = faiss.SearchParameters(sel=selector)
        params._keep = (selector, ids)                  # the selector must outlive the search (SWIG)
        if isinstance(self._index, faiss.IndexRefine):
            refined = faiss.IndexRefineSearchParameters(k_factor=float(self.refine), base_index_params=params)
            refined.sel = selector
            refined._keep = (params, selector, ids)
            return refined
        return params

    def _exact_search(self, q: np.ndarray, k: int,
                      allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact squared distances by torch's matrix product over the flat index's own storage (no copy): faiss
        computes the same, but with the generic kernels of its bundled OpenBLAS on CPUs newer than it knows
        (3x slower for one query, 10x for batches, on this project's CPU: docs/BENCHMARKS.md)."""
        faiss = _import_faiss()
        n = self._index.ntotal
        gallery = torch.from_numpy(faiss.rev_swig_ptr(self._index.get_xb(), n * self.dim).reshape(n, self.dim))
        if self._norms is None or len(self._norms) > n:
            self._norms = (gallery * gallery).sum(1)
        elif len(self._norms) < n:                   # rows appended since: only theirs (an add costs its own rows)
            fresh = gallery[len(self._norms):]
            self._norms = torch.cat([self._norms, (fresh * fresh).sum(1)])
        queries = torch.from_numpy(q)
        rows = max(1, 2 ** 26 // n)                  # query rows per step: a distance block of <= 256 MB
        excluded = torch.from_numpy(~allowed) if allowed is not None else None
        distances, indices = [], []
        for s in range(0, len(queries), rows):
            part = queries[s:s + rows]
            block = ((part * part).sum(1, keepdim=True) + self._norms - 2 * part @ gallery.T).clamp_(min=0)
            if excluded is not None:
                block[:, excluded] = float("inf")
            d, i = torch.topk(block, k, dim=1, largest=False, sorted=True)
            if excluded is not None:
                i[torch.isinf(d)] = -1
            distances.append(d)
            indices.append(i)
        return torch.cat(distances).numpy(), torch.cat(indices).numpy()

    def memory_bytes(self) -> int:
        """The size of the built index (what :meth:`save` writes for it, and about what it takes in memory)."""
        self._ensure_built()
        return int(_import_faiss().serialize_index(self._index).nbytes)

    # ---- files ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.npz): the built faiss index (learnt clusters and codebooks included, so loading
        learns nothing again), the paths, the metric, the search settings and ``meta``."""
        path = Path(path)
        self._ensure_built()
        header = {"format": FORMAT_VERSION, **self.header()}
        encoded = json.dumps(self.paths).encode("ascii")    # \n and undecodable bytes (surrogates) escaped
        arrays: dict[str, Any] = {"header": np.array(json.dumps(header)),
                                  "paths_json": np.frombuffer(encoded, dtype=np.uint8),
                                  "faiss_index": _import_faiss().serialize_index(self._index)}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:               # a file object: numpy would otherwise append ".npz"
                np.savez(f, **arrays)
        return write_atomic(path, write)             # a failed write leaves the previous gallery intact

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """Read a gallery written by :meth:`save` (or ``reidkit extract``), this version's or the first."""
        faiss = _import_faiss()
        try:
            with np.load(path, allow_pickle=False) as z:
                header = _check_header(json.loads(str(z["header"])))
                if header["format"] == 1:
                    return cls._load_first_format(z, header)
                if header["format"] == 2:
                    paths = bytes(z["paths_utf8"]).decode().split("\n") if z["paths_utf8"].size else []
                else:
                    paths = json.loads(bytes(z["paths_json"]).decode("ascii"))
                    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                        raise ValueError("paths_json is not a list of file names")
                index = faiss.deserialize_index(z["faiss_index"])
        except FileNotFoundError:
            raise FileNotFoundError(f"gallery file not found: {path}") from None
        except _FormatError as e:
            raise ValueError(f"{path}: {e.args[0]}; write it again with `reidkit extract`") from None
        except (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a reidkit gallery file, or a truncated one ({type(e).__name__}: "
                             f"{str(e)[:200]}); write it again with `reidkit extract`") from None
        if index.ntotal != len(paths):
            raise ValueError(f"{path}: the index holds {index.ntotal} vectors but the file {len(paths)} paths")
        return cls.from_faiss(index, paths, header)

    @classmethod
    def from_faiss(cls, index: Any, paths: list[str], header: dict) -> GalleryIndex:
        """A gallery over a built faiss ``index`` (one path per vector) with ``header``'s metric, kind, description,
        search settings and meta (what :meth:`save` writes; a gallery store's snapshot too)."""
        gallery = cls(np.zeros((0, index.d), np.float32), [], header["metric"], None, header.get("nprobe", 8),
                      header.get("meta", {}), index=header["index"], ef_search=header.get("ef_search", 256),
                      refine=header.get("refine", 16))
        gallery.paths, gallery._dim, gallery._index = paths, index.d, index
        gallery._pending, gallery.description = [], header["description"]
        gallery._apply_search_settings()
        return gallery

    def header(self) -> dict:
        """What :meth:`from_faiss` needs besides the index and paths."""
        return {"metric": self.metric, "index": self.kind, "description": self.description, "nprobe": self.nprobe,
                "ef_search": self.ef_search, "refine": self.refine, "meta": self.meta}

    @classmethod
    def _load_first_format(cls, z, header: dict) -> GalleryIndex:
        """reidkit 0.1 galleries: the raw features (and an inner-product IVF index, rebuilt here)."""
        return cls(z["features"], z["paths"].tolist(), header["metric"], header["ivf_lists"], header["nprobe"],
                   header["meta"])


class _FormatError(Exception):
    pass


#: what a gallery header must hold: key -> (allowed types, required)
_HEADER_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "format": ((int,), True), "metric": ((str,), True), "nprobe": ((int,), True), "meta": ((dict,), True),
    "index": ((str,), False), "description": ((str, type(None)), False), "ef_search": ((int,), False),
    "refine": ((int,), False), "ivf_lists": ((int, type(None)), False)}


def _check_header(header: Any) -> dict:
    """The gallery header, checked: a JSON object with a known format and each key of the right type."""
    if not isinstance(header, dict):
        raise _FormatError(f"the header is a JSON {type(header).__name__}, not an object")
    if header.get("format") not in READABLE_FORMATS:
        raise _FormatError(f"gallery format {header.get('format')!r}; this reidkit reads "
                           f"{', '.join(map(str, READABLE_FORMATS))}")
    for key, (types, required) in _HEADER_KEYS.items():
        if key not in header:
            if required:
                raise _FormatError(f"the header has no {key!r}")
        elif not isinstance(header[key], types) or isinstance(header[key], bool):
            raise _FormatError(f"the header's {key!r} is {header[key]!r}")
    check_metric(header["metric"])
    made = inspect.signature(GalleryIndex.__init__).parameters            # an older header lacks the newer keys
    defaults = {"index": "flat", "description": None, "ivf_lists": None,
                "ef_search": made["ef_search"].default, "refine": made["refine"].default}
    return {**defaults, **header}


def _find(index: Any, attribute: str) -> Any:
    """``index.<attribute>`` of ``index`` or of the index it wraps (faiss's composite indices), else None."""
    faiss = _import_faiss()
    for candidate in (index, getattr(index, "base_index", None)):
        if candidate is None:
            continue
        candidate = faiss.downcast_index(candidate)
        if hasattr(candidate, attribute):
            return getattr(candidate, attribute)
    return None
