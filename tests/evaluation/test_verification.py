"""Verification (TAR at FAR with its distance threshold): a hand-computed case, fast-reid's TPR@FPR against a
literal re-implementation of its per-query loop, properties over random matrices, and `reidkit eval
eval.verification=true` end to end (printed line, metrics.json, the report's figure)."""
import json
import re

import numpy as np
import pytest

from reidkit.evaluation.verification import (
    evaluate_verification,
    fastreid_tpr_at_fpr,
    threshold_at_far,
    verification_pairs,
)

# two queries (identities 1 and 2, camera 0) against five gallery images; g0 is q0's identity in q0's camera (junk)
DIST = np.array([[0.1, 0.2, 0.5, 0.7, 0.9],
                 [0.3, 0.8, 0.4, 0.6, 0.05]])
Q_PIDS, Q_CAMS = np.array([1, 2]), np.array([0, 0])
G_PIDS, G_CAMS = np.array([1, 1, 2, 3, 0]), np.array([0, 1, 1, 1, 1])


def test_pairs_thresholds_and_rates_by_hand():
    genuine, impostors = verification_pairs(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    np.testing.assert_allclose(genuine, [0.2, 0.4])                     # 0.1 (same camera) left out
    np.testing.assert_allclose(impostors, [0.5, 0.7, 0.9, 0.3, 0.8, 0.6, 0.05])
    # 7 impostors, sorted 0.05 0.3 0.5 0.6 0.7 0.8 0.9: FAR 0.2 allows floor(1.4) = 1 -> accept d < 0.3
    assert threshold_at_far(impostors, 0.2) == 0.3
    assert threshold_at_far(impostors, 0.1) == 0.05                     # none allowed: below the smallest
    result = evaluate_verification(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, fars=(0.1, 0.2, 0.5))
    assert result.thresholds == [0.05, 0.3, 0.6]
    assert result.tars == [0.0, 0.5, 1.0]                               # genuine 0.2 and 0.4 under each threshold
    assert result.achieved_fars == pytest.approx([0, 1 / 7, 3 / 7])
    assert (result.num_genuine, result.num_impostor) == (2, 7)
    assert result.genuine_hist.sum() == 2 and result.impostor_hist.sum() == 7
    # fast-reid labels genuine 0 and impostors 1 with the distance as the score: at its FPR 0.5 (one of the two
    # genuine pairs at or above the threshold 0.4) its TPR is the 5 of 7 impostors at or above it
    assert fastreid_tpr_at_fpr(*verification_pairs(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS), [0.5]) == [5 / 7]


def fastreid_reference(dist, q_pids, g_pids, q_camids, g_camids, targets):
    """fast-reid's evaluate_roc_py and the three lines of ReidEvaluator that read it, written out literally: each
    query's gallery in distance order, same-identity same-camera images removed, then sklearn's ROC."""
    from sklearn import metrics
    pos, neg = [], []
    for q in range(len(q_pids)):
        order = np.argsort(dist[q])
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        kept = order[keep]
        matches = g_pids[kept] == q_pids[q]
        pos.extend(dist[q][kept[matches]])
        neg.extend(dist[q][kept[~matches]])
    scores = np.hstack((pos, neg))
    labels = np.hstack((np.zeros(len(pos)), np.ones(len(neg))))
    fprs, tprs, _ = metrics.roc_curve(labels, scores)
    return [tprs[np.argmin(np.abs(fprs - t))] for t in targets]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fastreid_tpr_at_fpr_is_built_as_fastreids_code_builds_it(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 40, 300
    q_pids, g_pids = rng.integers(0, 30, nq), rng.integers(0, 30, ng)
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    dist = rng.random((nq, ng)) + 0.5 * (q_pids[:, None] != g_pids[None, :])      # genuine pairs nearer
    targets = (1e-4, 1e-3, 1e-2, 0.1)
    ours = fastreid_tpr_at_fpr(*verification_pairs(dist, q_pids, g_pids, q_cams, g_cams), targets)
    assert ours == pytest.approx(fastreid_reference(dist, q_pids, g_pids, q_cams, g_cams, targets))


@pytest.mark.parametrize("seed", range(5))
def test_each_threshold_keeps_its_far_and_tar_grows_with_far(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 25, 200
    q_pids, g_pids = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    dist = np.round(rng.random((nq, ng)), 2)                            # many ties
    fars = (0.001, 0.01, 0.05, 0.2, 0.5)
    result = evaluate_verification(dist, q_pids, g_pids, rng.integers(0, 3, nq), rng.integers(0, 3, ng), fars)
    assert all(a <= f for a, f in zip(result.achieved_fars, fars))
    assert result.tars == sorted(result.tars) and result.thresholds == sorted(result.thresholds)


def test_reidkit_eval_reports_verification(tiny_run, tiny_data, tmp_path, capsys):
    import yaml

    from conftest import tiny_overrides
    from reidkit.cli import main
    from reidkit.recipe_files import load_recipe
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "unused") +
                                                 ["eval.metric=cosine"]).model_dump(mode="json")))
    out = tmp_path / "report"
    assert main(["eval", str(recipe), "eval.verification=true", "--weights", str(tiny_run / "best.pth"),
                 "--report", str(out), "--no-progress"]) == 0
    line = re.search(r"TAR @ FAR 1e-04 / 1e-03 / 1e-02: (.*) \((\d+) genuine, (\d+) impostor pairs\)",
                     capsys.readouterr().out)
    assert line is not None
    metrics = json.loads((out / "metrics.json").read_text())
    row = next(iter(metrics.values()))
    assert 0 <= row["TAR@FAR=1e-04"] <= row["TAR@FAR=1e-03"] <= row["TAR@FAR=1e-02"] <= 100
    assert (out / "verification.png").stat().st_size > 0 and "TAR @ FAR 1e-02" in (out / "index.html").read_text()
