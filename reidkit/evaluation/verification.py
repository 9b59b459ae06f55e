"""Verification: is a query-gallery pair the same person?  What a deployment needs to pick a distance threshold.

Every query-gallery pair counts, except a gallery image of the query's identity seen by the query's camera (the
ranking protocol's junk, as fast-reid's ``evaluate_roc`` removes it): a *genuine* pair shares the identity, an
*impostor* pair does not (gallery distractors included).  For each false accept rate (FAR) the threshold is the
distance below which at most that fraction of impostor pairs fall (``distance < threshold`` accepts a pair); the
true accept rate (TAR) is the fraction of genuine pairs below it.  Distances are the evaluation's plain metric
(cosine or euclidean; never re-ranked: a deployment thresholds plain distances).

``fastreid_tpr_at_fpr`` is fast-reid's ``TPR@FPR`` (``TEST.ROC_ENABLED``) built as its code builds it: sklearn's
ROC with genuine pairs labelled 0, impostors 1 and the distance as the score, read at the ROC point whose FPR is
nearest each target.  Labelled that way its "FPR" is the false *reject* rate and its "TPR" is 1 - FAR: comparable
with fast-reid's logs, not with a TAR@FAR.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checks import ArrayLike, as_float_matrix, as_id_vector

#: the false accept rates reported (fast-reid's three)
FARS = (1e-4, 1e-3, 1e-2)
HISTOGRAM_BINS = 100


def verification_pairs(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                       g_camids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The distances of the genuine and of the impostor query-gallery pairs (same-identity same-camera pairs left
    out), each as a flat float64 array in query-major order."""
    dist = as_float_matrix(distmat, "distmat").numpy()
    nq, ng = dist.shape
    q_pids, g_pids = as_id_vector(q_pids, "q_pids", nq), as_id_vector(g_pids, "g_pids", ng)
    q_camids, g_camids = as_id_vector(q_camids, "q_camids", nq), as_id_vector(g_camids, "g_camids", ng)
    same_id = q_pids[:, None] == g_pids[None, :]
    junk = same_id & (q_camids[:, None] == g_camids[None, :])
    return dist[same_id & ~junk].astype(np.float64), dist[~same_id].astype(np.float64)


def threshold_at_far(impostors: np.ndarray, far: float) -> float:
    """The distance below which at most ``far`` of the ``impostors`` fall: the ``floor(far * n)``-th smallest
    impostor distance (0-based; ``distance < threshold`` accepts a pair, so ties at it are rejected)."""
    if len(impostors) == 0:
        raise ValueError("no impostor pairs (every gallery image has the query's identity): no FAR to read")
    allowed = int(np.floor(far * len(impostors)))
    if allowed >= len(impostors):
        return float("inf")
    return float(np.partition(impostors, allowed)[allowed])


@dataclass
class Verification:
    """TAR at each FAR with its distance threshold, the pair counts, the two distance histograms (for the report's
    figure) and fast-reid's ``TPR@FPR``."""

    fars: tuple[float, ...]
    tars: list[float]
    thresholds: list[float]
    achieved_fars: list[float]                 # the impostor fraction each threshold accepts (<= its FAR)
    num_genuine: int
    num_impostor: int
    fastreid_tpr: list[float]
    bins: np.ndarray = field(repr=False)
    genuine_hist: np.ndarray = field(repr=False)
    impostor_hist: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        """TAR (percent) and threshold per FAR, and fast-reid's TPR@FPR (percent)."""
        out: dict[str, float] = {}
        for far, tar, threshold, tpr in zip(self.fars, self.tars, self.thresholds, self.fastreid_tpr):
            out[f"TAR@FAR={far:.0e}"] = 100 * tar
            out[f"threshold@FAR={far:.0e}"] = threshold
            out[f"fastreid_TPR@FPR={far:.0e}"] = 100 * tpr
        return out

    def summary(self) -> str:
        """One line: TAR at each FAR with its threshold."""
        parts = [f"{100 * tar:.2f}% (d < {threshold:.4g})" for tar, threshold in zip(self.tars, self.thresholds)]
        return (f"TAR @ FAR {' / '.join(f'{f:.0e}' for f in self.fars)}: {' / '.join(parts)} "
                f"({self.num_genuine} genuine, {self.num_impostor} impostor pairs)")


def fastreid_tpr_at_fpr(genuine: np.ndarray, impostors: np.ndarray, targets=FARS) -> list[float]:
    """fast-reid's ``TPR@FPR`` (see the module docstring for what it measures)."""
    from sklearn.metrics import roc_curve
    labels = np.concatenate([np.zeros(len(genuine)), np.ones(len(impostors))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([genuine, impostors]))
    return [float(tpr[np.argmin(np.abs(fpr - t))]) for t in targets]


def evaluate_verification(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                          g_camids: ArrayLike, fars=FARS) -> Verification:
    """TAR at each of ``fars`` over the query-gallery pairs of ``distmat`` (see the module docstring)."""
    genuine, impostors = verification_pairs(distmat, q_pids, g_pids, q_camids, g_camids)
    if len(genuine) == 0:
        raise ValueError("no genuine pairs (same identity, another camera): check the ids and cameras")
    thresholds = [threshold_at_far(impostors, f) for f in fars]
    tars = [float(np.mean(genuine < t)) for t in thresholds]
    achieved = [float(np.mean(impostors < t)) for t in thresholds]
    edges = np.linspace(min(genuine.min(), impostors.min()), max(genuine.max(), impostors.max()),
                        HISTOGRAM_BINS + 1)
    return Verification(tuple(fars), tars, thresholds, achieved, len(genuine), len(impostors),
                        fastreid_tpr_at_fpr(genuine, impostors, fars), edges,
                        np.histogram(genuine, edges)[0], np.histogram(impostors, edges)[0])
