import numpy as np
import pytest
import torch

from reidkit.data.samplers import RandomIdentityBatchSampler
from reidkit.losses import BatchHardMiner, CameraAwareBatchHardMiner, TripletLoss
from reidkit.losses.miners import pairwise_euclidean


def hand_batch():
    """Anchor 0 (id 0, cam 0). Positives: 1 (cam 0, d=3), 2 (cam 1, d=2).
    Negatives: 3 (cam 1, d=1.0), 4 (cam 0, d=1.5)."""
    d = torch.tensor([
        [0.0, 3.0, 2.0, 1.0, 1.5],
        [3.0, 0.0, 2.5, 2.0, 2.0],
        [2.0, 2.5, 0.0, 2.0, 2.0],
        [1.0, 2.0, 2.0, 0.0, 1.2],
        [1.5, 2.0, 2.0, 1.2, 0.0],
    ])
    pids = torch.tensor([0, 0, 0, 1, 1])
    camids = torch.tensor([0, 0, 1, 1, 0])
    return d, pids, camids


def test_bias_changes_the_selection_and_k0_does_not():
    d, pids, camids = hand_batch()
    plain = BatchHardMiner()(d, pids, camids)
    assert (int(plain.positive[0]), int(plain.negative[0])) == (1, 3)
    off = CameraAwareBatchHardMiner(k=0.0)(d, pids, camids)
    assert torch.equal(off.positive, plain.positive) and torch.equal(off.negative, plain.negative)
    miner = CameraAwareBatchHardMiner(k=5.0, m=0.1)
    biased = miner(d, pids, camids)
    # same-camera positive 1 is lowered below the cross-camera positive 2;
    # cross-camera negative 3 is raised above the same-camera negative 4
    assert (int(biased.positive[0]), int(biased.negative[0])) == (2, 4)
    assert miner.stats.cross_camera_positives > 0 and miner.stats.same_camera_negatives > 0


def test_bias_follows_the_formula_over_time():
    d, pids, camids = hand_batch()
    eye = torch.eye(5, dtype=torch.bool)
    same = pids[None] == pids[:, None]
    std_p, std_n = float(d[same & ~eye].std()), float(d[~same].std())
    miner = CameraAwareBatchHardMiner(k=5.0, m=0.1)
    for t in (0, 10, 100):
        miner.set_time(t, 0)
        miner(d, pids, camids)
        assert miner.stats.bias_positive == pytest.approx(5 * std_p / (1 + 0.1 * t))
        assert miner.stats.bias_negative == pytest.approx(5 * std_n / (1 + 0.1 * t))
    per_epoch = CameraAwareBatchHardMiner(k=2.0, m=0.5, time_unit="epoch")
    per_epoch.set_time(1000, 2)
    assert per_epoch.scale() == pytest.approx(2.0 / (1 + 0.5 * 2))
    early = CameraAwareBatchHardMiner(k=3.0, schedule="early", early_epochs=2)
    early.set_time(50, 1)
    assert early.scale() == 3.0
    early.set_time(60, 2)
    assert early.scale() == 0.0
    assert CameraAwareBatchHardMiner(schedule="constant").scale() == 5.0
    assert CameraAwareBatchHardMiner(schedule="off").scale() == 0.0


def test_gradients_reach_only_the_true_distances():
    torch.manual_seed(0)
    x = torch.randn(6, 4, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    camids = torch.tensor([0, 1, 0, 1, 0, 1])
    miner = CameraAwareBatchHardMiner(k=5.0)
    loss = TripletLoss(margin=0.3, miner=miner)(x, pids, camids)
    chosen = loss  # recompute the same loss from the selected triplets, without any bias
    t = miner(pairwise_euclidean(x), pids, camids)
    dist = pairwise_euclidean(x)
    rows = torch.arange(6)
    expected = torch.relu(dist[rows, t.positive] - dist[rows, t.negative] + 0.3).mean()
    assert chosen.item() == pytest.approx(expected.item())
    g1, = torch.autograd.grad(loss, x)
    g2, = torch.autograd.grad(expected, x)
    torch.testing.assert_close(g1, g2)
    # identity 0's only pairs share a camera: with bias_in_loss their distance counts as smaller
    same_cam_pids, same_cam = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 0, 1])
    plain = TripletLoss(margin=0.3, miner=CameraAwareBatchHardMiner(k=5.0))(x, same_cam_pids, same_cam)
    in_loss = TripletLoss(margin=0.3, miner=CameraAwareBatchHardMiner(k=5.0, bias_in_loss=True))(
        x, same_cam_pids, same_cam)
    assert float(in_loss) < float(plain)


def test_camera_diverse_sampler_spreads_cameras():
    pids = np.repeat(np.arange(8), 8)
    camids = np.tile(np.repeat([0, 1, 2, 3], 2), 8)       # 2 images in each of 4 cameras
    sampler = RandomIdentityBatchSampler(pids, 4, 4, seed=0, camids=camids, camera_diverse=True)
    for batch in sampler:
        for pid in set(pids[batch]):
            group = [i for i in batch if pids[i] == pid]
            assert len(set(camids[group])) == 4
    plain = RandomIdentityBatchSampler(pids, 4, 4, seed=0)
    spreads = [len(set(camids[[i for i in b if pids[i] == p]])) for b in plain for p in set(pids[b])]
    assert min(spreads) < 4


def test_works_with_bnneck_and_center_loss(tmp_path):
    from reidkit.config import LossConfig
    from reidkit.losses.objective import ReIDObjective
    from reidkit.methods.camera_aware import CameraAwarePiece
    from reidkit.methods.center_loss import CenterLossPiece
    from reidkit.models import build_model
    from reidkit.pieces import StepOutputs
    model = build_model("resnet18_bnneck", 3, pretrained="none")
    objective = ReIDObjective(LossConfig(miner="camera_aware"), CameraAwareBatchHardMiner())
    mining, center = CameraAwarePiece(objective.miner), CenterLossPiece(3, model.feature_dim, 5e-4, 0.5)
    x, pids, camids = torch.randn(6, 3, 32, 16), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    mining.on_step_start(7, 0)
    logits, feats = model(x)
    terms = objective(logits, feats, pids, camids)
    terms |= center.extra_loss(StepOutputs(x, [logits], [feats], [feats], pids, camids, 7, 0))
    assert set(terms) == {"id", "triplet", "center_loss"} and objective.miner.iteration == 7
    sum(terms.values()).backward()
    assert model.backbone.conv1.weight.grad is not None and center.loss.centers.grad is not None
    assert set(mining.diagnostics()) == {"cross_camera_positives", "same_camera_negatives",
                                         "bias_positive", "bias_negative"}
    assert mining.diagnostics() == {}                       # read once


def test_multi_branch_diagnostics_average_the_branches():
    from reidkit.config import LossConfig
    from reidkit.losses.objective import ReIDObjective
    from reidkit.methods.camera_aware import CameraAwarePiece
    _, pids, camids = hand_batch()
    branches = [torch.randn(5, 4, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    logits = torch.zeros(5, 2)
    objective = ReIDObjective(LossConfig(miner="camera_aware"), CameraAwareBatchHardMiner())
    piece = CameraAwarePiece(objective.miner)
    per_branch = []
    for f in branches:
        objective([logits], [f], pids, camids)
        per_branch.append(piece.diagnostics())
    assert per_branch[0]["bias_negative"] != per_branch[1]["bias_negative"]
    objective([logits, logits], branches, pids, camids)
    both = piece.diagnostics()
    for key in both:
        assert both[key] == pytest.approx((per_branch[0][key] + per_branch[1][key]) / 2)


def test_unrecorded_calls_mine_alike_and_keep_no_statistics():
    d, pids, camids = hand_batch()
    miner = CameraAwareBatchHardMiner(k=5.0, m=0.0, schedule="constant")
    recorded = miner(d, pids, camids)
    first = miner.take_stats()
    with miner.unrecorded():
        quiet = miner(d + torch.eye(5), pids, camids)
    assert miner.take_stats() == {} and miner.recording
    torch.testing.assert_close(quiet.positive, recorded.positive)
    torch.testing.assert_close(quiet.negative, recorded.negative)
    miner(d, pids, camids)
    assert miner.take_stats() == first
