"""PTL (seed 003): the BConv-Cell's equations across batches, by hand; the PTL network's state handling."""
import copy

import pytest
import torch

from reidkit.models import build_model
from reidkit.models.ptl import BConvCell, BConvCellV2, reset_cell_states


def gates_by_hand(cell: BConvCell, x: torch.Tensor):
    z = torch.nn.functional.conv2d(x, cell.gates.weight, cell.gates.bias, padding=1)
    i, f, o, g = z.chunk(4, dim=1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)


def test_bconv_cell_carries_its_state_from_batch_to_batch():
    torch.manual_seed(0)
    cell = BConvCell(3, 4).train()
    x1, x2 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    i1, _, o1, g1 = gates_by_hand(cell, x1)
    c1 = i1 * g1                                                 # C_0 = 0
    torch.testing.assert_close(cell(x1), o1 * torch.tanh(c1))
    i2, f2, o2, g2 = gates_by_hand(cell, x2)
    c2 = f2 * c1 + i2 * g2                                       # C_b = f o C_{b-1} + i o tanh(.)
    y2 = cell(x2)
    torch.testing.assert_close(y2, o2 * torch.tanh(c2))
    torch.testing.assert_close(cell.state, c2)
    # gradients stop at the batch boundary: batch 2's loss reaches the gates only through batch 2
    y2.sum().backward()
    assert not cell.state.requires_grad and cell.gates.weight.grad is not None
    # eval: the state is zero and stays untouched
    cell.eval()
    torch.testing.assert_close(cell(x2), o2 * torch.tanh(i2 * g2))
    torch.testing.assert_close(cell.state, c2)
    # a batch of another shape starts from zero; reset clears the state
    cell.train()
    x3 = torch.randn(1, 3, 5, 4)
    i3, _, o3, g3 = gates_by_hand(cell, x3)
    torch.testing.assert_close(cell(x3), o3 * torch.tanh(i3 * g3))
    reset_cell_states(torch.nn.Sequential(cell))
    assert cell.state is None


def test_bconv_cell_v2_recovers_the_previous_output_into_its_input():
    torch.manual_seed(0)
    cell = BConvCellV2(3, 4).train()
    x1, x2 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    i1, _, o1, g1 = gates_by_hand(cell, torch.cat([x1, torch.zeros_like(x1)], dim=1))   # no history yet
    c1 = i1 * g1
    y1 = o1 * torch.tanh(c1)
    torch.testing.assert_close(cell(x1), y1)
    torch.testing.assert_close(cell.hidden, y1)
    # r_2 = ConvT(y_1), by hand: a transposed 3x3 convolution with padding 1 is the flipped, transposed kernel
    w = cell.recover.weight.flip(-1, -2).transpose(0, 1)
    r2 = torch.nn.functional.conv2d(y1, w, cell.recover.bias, padding=1)
    i2, f2, o2, g2 = gates_by_hand(cell, torch.cat([x2, r2], dim=1))
    c2 = f2 * c1 + i2 * g2
    y2 = cell(x2)
    torch.testing.assert_close(y2, o2 * torch.tanh(c2))
    y2.sum().backward()                                  # the recovery is trained, through this batch only
    assert cell.recover.weight.grad is not None and not cell.hidden.requires_grad
    cell.eval()                                          # test time: no history at all
    i3, _, o3, g3 = gates_by_hand(cell, torch.cat([x2, torch.zeros_like(x2)], dim=1))
    torch.testing.assert_close(cell(x2), o3 * torch.tanh(i3 * g3))
    reset_cell_states(torch.nn.Sequential(cell.train()))
    assert cell.state is None and cell.hidden is None


@pytest.mark.parametrize("name", ["resnet18_ptl", "resnet18_ptl_v2"])
def test_ptl_network_outputs_and_test_embeddings_ignore_the_training_history(name):
    torch.manual_seed(0)
    model = build_model(name, 6, pretrained="none")
    fresh = copy.deepcopy(model)
    x = torch.randn(4, 3, 64, 32)
    for _ in range(2):
        logits, f_t = model(torch.randn(4, 3, 64, 32))
    assert logits.shape == (4, 6) and f_t.shape == (4, 512) and model.feature_dim == 512
    assert all(c.state is not None for c in model.cells) and model.image_cell.state is not None
    model.eval(), fresh.eval()
    fresh.load_state_dict(model.state_dict())                   # same weights and BN statistics, no history
    torch.testing.assert_close(model(x), fresh(x))
    assert sum(p.numel() for p in model.parameters()) > sum(
        p.numel() for p in build_model("resnet18_bnneck", 6, pretrained="none").parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18_ptl", "resnet18_regional", "densenet121_ptl", "resnet18_ptl_v2"])
def test_new_models_export_to_onnx_with_the_same_features(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from reidkit.deploy.optimize import export_onnx
    torch.manual_seed(0)
    model = build_model(name, 5, pretrained="none").eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", (130, 66))        # odd sizes: ceil-mode pooling
    x = torch.randn(3, 3, 130, 66)
    out = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)


def test_the_papers_head_and_the_cell_width():
    """ptl_head=paper: the pooled 1x1-conv output is the test embedding, three FC layers classify it; cell_ratio
    sets the cells' width; both counted against the paper's Table I in docs/MODELS.md."""
    from reidkit.models.ptl import ThreeLayerClassifier
    torch.manual_seed(0)
    model = build_model("resnet18_ptl", 7, pretrained="none", ptl_head="paper", cell_ratio=8)
    assert isinstance(model.head, ThreeLayerClassifier)
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 1024), (1024, 7)]
    assert [c.gates.out_channels for c in model.cells] == [4 * 64 // 8, 4 * 64 // 8, 4 * 128 // 8, 4 * 256 // 8]
    x = torch.randn(4, 3, 64, 32)
    logits, feature = model.train()(x)
    assert logits.shape == (4, 7) and feature.shape == (4, 512)
    model.eval()
    fused = []
    model.fuse.register_forward_hook(lambda m, i, out: fused.append(out))
    with torch.no_grad():
        embedding = model(x)
    # the test embedding is the pooled output of the 1x1 conv (+ BN + ReLU), nothing after it
    torch.testing.assert_close(embedding, fused[0].mean(dim=(2, 3)))
    assert embedding.shape == (4, 512) and (embedding >= 0).all()
    quarter = build_model("resnet18_ptl", 7, pretrained="none")
    n = lambda m: sum(p.numel() for p in m.parameters())                                   # noqa: E731
    assert n(quarter.cells) > 3 * n(model.cells)
    with pytest.raises(ValueError, match="ptl_head=paper has no BNNeck"):
        build_model("resnet18_ptl", 7, pretrained="none", ptl_head="paper", test_feature="before_bn")
