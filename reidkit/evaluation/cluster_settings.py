"""Clustering settings chosen from the unlabelled crops, and the signs, read without labels, that clusters go wrong.

DBSCAN's ``eps`` and ``min_samples`` decide what an unsupervised run trains on, and the published values fit the
published datasets (Cluster Contrast's eps 0.6 and min_samples 4 on Market-1501, about 17 crops of a person over
4-6 cameras).  ``cluster_memory.eps: auto`` and ``min_samples: auto`` choose them from the training crops the
run clusters first, reading no identity:

* ``min_samples`` — the typical number of crops of one person one camera sees, estimated from each crop's
  nearest crops of its own camera: the largest jump in their distances ends the crop's group
  (:func:`typical_group_size`; the median over crops), clamped to 2-4: a person with 2 crops per camera can then
  form a cluster, and 4 (Cluster Contrast's) stays the ceiling;
* ``eps`` — the largest radius of :data:`EPS_GRID` before the number of clusters falls: from small radii up,
  clusters form and their count grows; past the peak they merge and it falls.  The choice is the largest radius
  whose count stays within ``tolerance`` (2%) of the peak, walking up from it (:func:`choose_settings`).

The table behind the choice (clusters, outliers, single-camera share per radius) is logged and kept in the run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .clustering import cluster_statistics, dbscan_precomputed

#: the radii ``eps: auto`` tries (Jaccard distances)
EPS_GRID: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))      # 0.20 ... 0.80
MIN_SAMPLES_RANGE = (2, 4)


@dataclass
class SettingsChoice:
    """What ``auto`` chose, and from what: ``typical`` crops per person and camera (the estimate), and one row
    per radius tried (``eps``, ``clusters``, ``outliers``, ``single_camera``)."""

    eps: float
    min_samples: int
    typical: float
    rows: list[dict[str, float]] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"typical crops per person and camera (label-free estimate): {self.typical:g} -> min_samples "
                 f"{self.min_samples}"]
        if self.rows:
            lines.append("eps    clusters  outliers  single-camera")
            for r in self.rows:
                mark = "  <- chosen" if r["eps"] == self.eps else ""
                lines.append(f"{r['eps']:.2f}  {int(r['clusters']):9d}  {r['outliers']:8.1%}  "
                             f"{r['single_camera']:13.1%}{mark}")
        return "\n".join(lines)


def typical_group_size(features: torch.Tensor, camids: Sequence[int] | np.ndarray, neighbours: int = 8,
                       sample: int = 4096, seed: int = 0) -> float:
    """The median over crops of the size of a crop's group among the crops of its own camera: self plus its
    nearest crops up to the largest jump in their Euclidean distances (of L2-normalised features), looking at
    ``neighbours`` of them.  Over a seeded sample of ``sample`` crops (each against every crop of its camera):
    the median needs no more, and a million crops cost seconds.  Reads features and cameras only."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    cams = np.asarray(camids).reshape(-1)
    n = len(f)
    if len(cams) != n:
        raise ValueError(f"{n} features but {len(cams)} camera ids")
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[:sample])
    sizes = []
    with torch.no_grad():
        for camera in np.unique(cams[chosen]):
            members = torch.from_numpy(np.flatnonzero(cams == camera))
            mine = torch.from_numpy(chosen[cams[chosen] == camera])
            k = min(neighbours, len(members) - 1)
            if k < 2:                                         # a camera of one or two crops: no jump to find
                sizes.append(torch.full((len(mine),), float(k + 1)))
                continue
            g = f[members]
            step = max(1, (1 << 24) // len(members))
            for s in range(0, len(mine), step):
                q = f[mine[s:s + step]]
                d = torch.cdist(q, g)
                d[mine[s:s + step, None] == members[None, :]] = float("inf")       # not itself
                near = torch.topk(d, k, dim=1, largest=False).values
                sizes.append((near[:, 1:] - near[:, :-1]).argmax(dim=1).float() + 2)   # self + those before the jump
    return float(torch.cat(sizes).median())


def choose_settings(graph: sp.csr_matrix | None, camids: Sequence[int] | np.ndarray, typical: float,
                    eps: float | None = None, min_samples: int | None = None,
                    grid: Sequence[float] = EPS_GRID, tolerance: float = 0.02) -> SettingsChoice:
    """``eps`` and / or ``min_samples`` where not given (None), by the module's rules, from a Jaccard ``graph``
    stored out to at least ``max(grid)`` and the ``typical`` crops per person and camera."""
    lo, hi = MIN_SAMPLES_RANGE
    ms = min_samples if min_samples is not None else int(min(hi, max(lo, round(typical))))
    if eps is not None:
        return SettingsChoice(float(eps), ms, typical)
    if graph is None:
        raise ValueError("choosing eps needs the distance graph")
    rows = []
    for radius in grid:
        s = cluster_statistics(dbscan_precomputed(graph, radius, ms), np.asarray(camids))
        rows.append({"eps": float(radius), "clusters": s["clusters"], "outliers": s["outliers"],
                     "single_camera": s.get("single_camera", 0.0)})
    counts = np.array([r["clusters"] for r in rows])
    if counts.max() == 0:
        raise ValueError(f"eps: auto found no cluster at any radius of {list(grid)} with min_samples {ms}: the "
                         "features hold no groups of crops; check the model and the crops")
    at = int(np.flatnonzero(counts == counts.max())[-1])
    while at + 1 < len(rows) and counts[at + 1] >= (1.0 - tolerance) * counts.max():
        at += 1
    return SettingsChoice(rows[at]["eps"], ms, typical, rows)


def label_free_warnings(stats: dict[str, float], previous: dict[str, float] | None, typical: float | None,
                        cameras: int) -> list[str]:
    """What a user can act on, read from one epoch's clustering statistics (``cluster_statistics`` plus
    ``merged_share``, ``stability``) and the previous epoch's, without labels."""
    out = []
    merged = typical is not None and typical > 0 and stats.get("merged_share", 0.0) > 0.10
    sparse = stats.get("outliers", 0.0) > 0.5
    if merged and typical is not None:
        out.append(f"{stats['merged_share']:.0%} of the clustered crops sit in clusters holding over "
                   f"{4 * typical:g} crops of one camera (4 x the typical {typical:g} per person and camera): "
                   "clusters look merged; " + ("lower cluster_memory.eps" if not sparse else
                                               "with many crops left out too, one radius is too wide for some "
                                               "groups and too narrow for others: lower min_samples rather than "
                                               "move eps"))
    if sparse:
        out.append(f"{stats['outliers']:.0%} of the crops are left out of every cluster: " +
                   ("raise cluster_memory.eps or lower min_samples" if not merged else "lower min_samples"))
    if cameras > 1 and stats.get("single_camera", 0.0) > 0.5:
        out.append(f"{stats['single_camera']:.0%} of the clusters hold crops of one camera: the camera gap "
                   "decides the clusters; cluster_memory.distance=camera_jaccard links crops across cameras")
    if previous:
        if "stability" in stats and stats["stability"] < 0.5:
            out.append(f"the clusters changed much since the last epoch (agreement, ARI, {stats['stability']:.2f}): "
                       "the pseudo-labels drift; a lower lr or a larger momentum keeps them steadier")
        grew = stats.get("mean_size", 0.0) / max(previous.get("mean_size", 0.0), 1e-9)
        fell = stats.get("clusters", 0.0) / max(previous.get("clusters", 0.0), 1e-9)
        if grew > 1.25 and fell < 0.8:
            out.append(f"clusters merging: {int(previous['clusters'])} -> {int(stats['clusters'])} clusters, mean "
                       f"size {previous['mean_size']:.1f} -> {stats['mean_size']:.1f} in one epoch; lower "
                       "cluster_memory.eps")
    return out


def merged_share(labels: np.ndarray, camids: np.ndarray, typical: float) -> float:
    """The share of the clustered crops in clusters holding more than 4 x ``typical`` crops of one camera."""
    labels, camids = np.asarray(labels), np.asarray(camids)
    kept = labels >= 0
    if not kept.any():
        return 0.0
    pairs, counts = np.unique(np.stack([labels[kept], camids[kept]]), axis=1, return_counts=True)
    big = np.unique(pairs[0][counts > 4 * typical])
    return float(np.isin(labels[kept], big).mean())
