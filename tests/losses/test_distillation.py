"""Student-Teacher Distillation (PTL paper, Eq. 4): the L1 term and its weights in the objective."""
import pytest
import torch

from reidkit.config import LossConfig
from reidkit.losses import CrossEntropyLabelSmooth, FeatureDistillationLoss
from reidkit.losses.objective import ReIDObjective


def test_l1_term_by_hand_and_gradient_reaches_only_the_student():
    student = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [1.5, 1.0]], requires_grad=True)
    loss = FeatureDistillationLoss()(student, teacher)
    assert loss.item() == pytest.approx((1 + 2 + 1 + 1) / 4)
    loss.backward()
    torch.testing.assert_close(student.grad, torch.tensor([[1.0, -1.0], [-1.0, -1.0]]) / 4)
    assert teacher.grad is None
    with pytest.raises(ValueError, match=r"student's features are \(2, 2\) but the teacher's \(2, 3\)"):
        FeatureDistillationLoss()(student, torch.zeros(2, 3))


def test_objective_and_piece_combine_ce_and_l1_with_the_papers_weights():
    from reidkit.methods.distillation import DistillationPiece
    from reidkit.pieces import StepOutputs
    cfg = LossConfig(ce_weight=0.2, triplet_weight=0)
    objective = ReIDObjective(cfg)
    torch.manual_seed(0)
    logits, student, teacher = torch.randn(6, 5), torch.randn(6, 4), torch.randn(6, 4)
    pids = torch.tensor([0, 1, 2, 3, 4, 0])
    piece = DistillationPiece(torch.nn.Identity(), weight=0.8)       # a "teacher" that returns its input
    out = StepOutputs(teacher, [logits], [student], [student], pids, torch.zeros_like(pids), 0, 0)
    terms = objective(logits, student, pids, torch.zeros_like(pids)) | piece.extra_loss(out)
    assert set(terms) == {"id", "distillation"}
    ce = CrossEntropyLabelSmooth(0.1)(logits, pids)
    assert terms["id"].item() == pytest.approx(0.2 * ce.item(), rel=1e-6)
    assert terms["distillation"].item() == pytest.approx(0.8 * (student - teacher).abs().mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs a single-branch student"):
        piece.extra_loss(StepOutputs(teacher, [logits] * 2, [student] * 2, [student] * 2, pids, pids, 0, 0))


def test_the_student_is_distilled_on_the_feature_it_is_tested_with():
    """A BNNeck student tested after its BatchNorm is matched through that BatchNorm (batch statistics, running
    statistics untouched); one tested before it, on its training embedding."""
    from reidkit.methods.distillation import DistillationPiece
    from reidkit.models.heads import BNNeckHead
    from reidkit.pieces import StepOutputs
    torch.manual_seed(1)
    head = BNNeckHead(4, 5).train()
    with torch.no_grad():
        head.bottleneck.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    f_t, teacher = 3 + 2 * torch.randn(8, 4), torch.randn(8, 4)
    pids = torch.arange(8) % 4
    expected_tested = head.bottleneck(f_t)                         # what the head tests with, batch statistics
    running = head.bottleneck.running_mean.clone()
    out = StepOutputs(teacher, [torch.randn(8, 5)], [f_t], [f_t], pids, pids, 0, 0)
    def student(with_head: torch.nn.Module) -> torch.nn.Module:     # a model is tested as its head says
        model = torch.nn.Module()
        model.head = with_head
        return model

    after = DistillationPiece(torch.nn.Identity(), 1.0, student(head)).extra_loss(out)["distillation"]
    assert after.item() == pytest.approx((expected_tested - teacher).abs().mean().item(), rel=1e-5)
    torch.testing.assert_close(head.bottleneck.running_mean, running)           # no second update
    before = DistillationPiece(torch.nn.Identity(), 1.0, student(BNNeckHead(4, 5, test_feature="before_bn")))
    assert before.extra_loss(out)["distillation"].item() == pytest.approx((f_t - teacher).abs().mean().item(), rel=1e-6)


def test_the_tested_feature_finds_a_synchronised_bnneck():
    """Under data parallelism the BNNeck's BatchNorm is a SyncBatchNorm: distillation (and cluster_memory) still
    compare the embedding as the model tests it (a plain isinstance(BatchNorm1d) check missed it)."""
    from reidkit.models.heads import BNNeckHead, TestedFeature
    model = torch.nn.Module()
    model.head = BNNeckHead(4, 5)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced.head.bottleneck, torch.nn.SyncBatchNorm)
    f_t = 3 + torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    tested = TestedFeature(synced)(f_t)
    torch.testing.assert_close(tested.mean(dim=0), torch.zeros(4), atol=1e-6, rtol=0)     # batch-normalised
    model.head.test_feature = "before_bn"
    assert TestedFeature(model)(f_t) is f_t
