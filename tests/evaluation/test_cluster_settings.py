"""Clustering settings chosen without labels (``eps: auto``, ``min_samples: auto``) and the label-free warnings,
checked on constructed crops whose answer is known, and by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reidkit.evaluation.cluster_settings import (
    EPS_GRID,
    choose_settings,
    label_free_warnings,
    merged_share,
    typical_group_size,
)
from reidkit.evaluation.clustering import cluster_statistics, distance_graph


def crops(people: int, per_camera: int, cameras: int = 2, dim: int = 32, seed: int = 0,
          spread: float = 0.05, camera_shift: float = 0.3):
    """Each person a direction; each camera a shift shared by its crops; ``per_camera`` crops of a person per
    camera, tight around (person + camera)."""
    rng = np.random.default_rng(seed)
    person = rng.standard_normal((people, dim))
    camera = rng.standard_normal((cameras, dim)) * camera_shift
    pids = np.repeat(np.arange(people), cameras * per_camera)
    cams = np.tile(np.repeat(np.arange(cameras), per_camera), people)
    x = person[pids] + camera[cams] + spread * rng.standard_normal((len(pids), dim))
    return torch.from_numpy(x).float(), cams, pids


@pytest.mark.parametrize("per_camera", [2, 3, 4, 5])
def test_the_typical_crops_per_person_and_camera_are_found_without_labels(per_camera):
    x, cams, pids = crops(60, per_camera)
    assert typical_group_size(x, cams) == per_camera
    # a sample of the crops finds the same median; the identities are never an argument
    assert typical_group_size(x, cams, sample=50, seed=3) == per_camera


def test_min_samples_follows_the_estimate_within_two_to_four():
    x, cams, _ = crops(10, 2)
    graph = distance_graph(x, max(EPS_GRID), k1=8, k2=2)
    assert [choose_settings(graph, cams, t, eps=0.5).min_samples for t in (1, 2, 3, 4, 9)] == [2, 2, 3, 4, 4]
    assert choose_settings(graph, cams, 9, eps=0.5, min_samples=7).min_samples == 7      # given: kept


def test_eps_is_the_largest_radius_before_the_cluster_count_falls():
    """Pairs of people close to each other: small radii find the people, larger ones merge the pairs, then all.
    The choice sits at the end of the peak's plateau (within 2%), below the merging."""
    x, cams, pids = crops(40, 3, spread=0.35, seed=1)
    x[pids % 2 == 1] = 0.5 * x[pids % 2 == 1] + 0.5 * x[pids % 2 == 0]         # pairs of people lean together
    graph = distance_graph(x, max(EPS_GRID), k1=8, k2=2)
    choice = choose_settings(graph, cams, 3)
    counts = [r["clusters"] for r in choice.rows]
    assert [r["eps"] for r in choice.rows] == list(EPS_GRID)
    at = [r["eps"] for r in choice.rows].index(choice.eps)
    peak = max(counts)
    assert counts[at] >= 0.98 * peak and at >= int(np.flatnonzero(np.array(counts) == peak)[-1])
    assert at + 1 == len(counts) or counts[at + 1] < 0.98 * peak
    assert 0 < at < len(counts) - 1 and counts[-1] < 0.5 * peak          # a peak inside the grid, then merging
    # the rows are the radii's own clusterings: recomputed by hand at the chosen one
    from reidkit.evaluation.clustering import dbscan_precomputed
    assert cluster_statistics(dbscan_precomputed(graph, choice.eps, 3), cams)["clusters"] == counts[at]
    assert "<- chosen" in choice.describe()


def test_a_graph_with_no_groups_is_refused_with_the_radii_tried():
    x = torch.eye(12)                                      # twelve crops like no other
    graph = distance_graph(x, max(EPS_GRID), k1=2, k2=1)
    with pytest.raises(ValueError, match="no cluster at any radius"):
        choose_settings(graph, np.zeros(12, int), 4)


def test_label_free_warnings_by_hand():
    labels = np.array([0] * 12 + [1, 1, 2, 2, -1])
    cams = np.array([0] * 10 + [1, 1] + [0, 1, 0, 1, 0])
    # cluster 0 holds 10 crops of camera 0: over 4 x 2 (typical 2)
    assert merged_share(labels, cams, 2) == pytest.approx(12 / 16)
    assert merged_share(labels, cams, 3) == 0.0
    calm = {"clusters": 100, "outliers": 0.2, "single_camera": 0.2, "mean_size": 5, "merged_share": 0.0}
    assert label_free_warnings(calm, None, 2, 2) == []
    assert label_free_warnings(calm | {"stability": 0.9}, calm, 2, 2) == []
    said = " ".join(label_free_warnings({"clusters": 70, "outliers": 0.6, "single_camera": 0.7, "mean_size": 7,
                                         "merged_share": 0.3, "stability": 0.3}, calm, 2, 2))
    for words in ("look merged", "left out", "one camera", "drift", "clusters merging: 100 -> 70",
                  "lower min_samples rather than move eps"):
        assert words in said
    assert "raise cluster_memory.eps" not in said                # merged and sparse: no advice that fights
    alone = " ".join(label_free_warnings(calm | {"outliers": 0.6}, None, 2, 2))
    assert "raise cluster_memory.eps" in alone and "merged" not in alone
    assert "lower cluster_memory.eps" in " ".join(label_free_warnings(calm | {"merged_share": 0.2}, None, 2, 2))
    assert "one camera" not in " ".join(label_free_warnings(calm | {"single_camera": 0.9}, None, 2, 1))
