import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidkit.losses import BatchHardMiner, CenterLoss, CrossEntropyLabelSmooth, TripletLoss, unweight_center_gradients


def test_label_smoothing_matches_formula():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    eps = 0.1
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    q = np.full((5, 4), eps / 4)
    q[np.arange(5), y.numpy()] += 1 - eps
    expected = -(q * np.log(p)).sum(1).mean()
    assert float(CrossEntropyLabelSmooth(eps)(logits, y)) == pytest.approx(expected, rel=1e-6)
    assert float(CrossEntropyLabelSmooth(0.0)(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def line_batch():
    # points on a line: ids 0,0,1,1 at x = 0, 1, 3, 7
    return torch.tensor([[0.0], [1.0], [3.0], [7.0]], requires_grad=True), torch.tensor([0, 0, 1, 1])


def test_batch_hard_triplet_hand_computed():
    x, pids = line_batch()
    loss_fn = TripletLoss(margin=0.3)
    loss = loss_fn(x, pids)
    # anchor: (hardest pos, hardest neg): 0 -> (1, 2): 1-3+.3<0; 1 -> (0, 2): 1-2+.3<0;
    # 2 -> (3, 1): 4-2+.3 = 2.3; 3 -> (2, 1): 4-6+.3 < 0
    assert float(loss) == pytest.approx(2.3 / 4, rel=1e-5)
    assert loss_fn.last_triplets.positive.tolist() == [1, 0, 3, 2]
    assert loss_fn.last_triplets.negative.tolist() == [2, 2, 1, 1]
    soft = TripletLoss(margin=None)(x, pids)
    expected = np.mean(np.log1p(np.exp([1 - 3, 1 - 2, 4 - 2, 4 - 6])))
    assert float(soft) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # only anchor 2 is active: d(d_ap - d_an)/dx, d_ap = x3 - x2, d_an = x2 - x1
    np.testing.assert_allclose(x.grad.squeeze().numpy(), np.array([0, 1, -2, 1]) / 4, atol=1e-6)


def test_triplet_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert torch.autograd.gradcheck(lambda f: TripletLoss(margin=0.5)(f, pids), (x,))


def test_miner_needs_positives_and_negatives():
    with pytest.raises(ValueError, match="another image of its identity"):
        BatchHardMiner()(torch.rand(3, 3), torch.tensor([0, 1, 1]))


def test_center_loss_value_and_gradients():
    torch.manual_seed(0)
    center = CenterLoss(3, 2)
    f = torch.randn(4, 2, requires_grad=True)
    pids = torch.tensor([0, 2, 2, 1])
    weight = 5e-4
    (weight * center(f, pids)).backward()
    diff = f.detach() - center.centers.detach()[pids]
    assert float(center(f, pids)) == pytest.approx(float((diff ** 2).sum(1).mean()), rel=1e-6)
    torch.testing.assert_close(f.grad, weight * 2 * diff / 4)
    unweight_center_gradients(center, weight)     # BoT: centres move on the unweighted gradient
    expected = torch.zeros(3, 2)
    expected.index_add_(0, pids, -2 * diff / 4)
    torch.testing.assert_close(center.centers.grad, expected)
