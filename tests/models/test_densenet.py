"""DenseNet backbones: torchvision's computation, last stride, ImageNet files of both key layouts, PTL."""
import logging
import re

import pytest
import torch
import torchvision

from reidkit.models import build_model, model_names
from reidkit.models.densenet import modern_densenet_keys


def test_registry_lists_densenets_under_both_heads():
    names = set(model_names())
    for depth in (121, 161, 169, 201):
        assert {f"densenet{depth}_bnneck", f"densenet{depth}_ptl"} <= names
    with pytest.raises(ValueError, match="unknown DenseNet 'densenet122'"):
        from reidkit.models.densenet import DenseNetBackbone
        DenseNetBackbone("densenet122")


def test_backbone_is_torchvision_densenet_features_and_last_stride_keeps_the_map():
    torch.manual_seed(0)
    reference = torchvision.models.densenet121(weights=None).eval()
    model = build_model("densenet121_bnneck", 4, pretrained=None, last_stride=2).eval()
    model.backbone.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(2, 3, 128, 64)
    expected = torch.relu(reference.features(x))
    torch.testing.assert_close(model.backbone(x), expected)
    # the pooled vector before the BNNeck is what torchvision feeds its classifier
    torch.testing.assert_close(model.pool(model.backbone(x)).flatten(1),
                               torch.nn.functional.adaptive_avg_pool2d(expected, 1).flatten(1))
    assert model.feature_dim == 1024 and expected.shape[-2:] == (4, 2)
    stride_one = build_model("densenet121_bnneck", 4, pretrained="none", last_stride=1).backbone
    assert stride_one(x).shape[-2:] == (8, 4)
    # chaining the stages is the forward pass, for both strides
    for backbone in (model.backbone, stride_one.eval()):
        y = x
        for stage in backbone.stages():
            y = stage(y)
        torch.testing.assert_close(y, backbone(x))


def old_layout(state: dict) -> dict:
    """The key names of the torch hub DenseNet files (``norm.1`` for ``norm1``)."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}


def test_imagenet_weights_load_from_either_key_layout(tmp_path, monkeypatch, caplog):
    reference = torchvision.models.densenet121(weights=None)
    with torch.no_grad():
        reference.features.denseblock3.denselayer5.norm2.running_var.uniform_(0.5, 2.0)
    state = reference.state_dict()
    hub_style = old_layout(state)
    assert "features.denseblock1.denselayer1.norm.1.weight" in hub_style and "classifier.weight" in hub_style
    assert modern_densenet_keys(hub_style).keys() == state.keys()
    for i, layout in enumerate((state, hub_style)):
        path = tmp_path / f"d121_{i}.pth"
        torch.save(layout, path)
        model = build_model("densenet121_bnneck", 3, pretrained=str(path))
        torch.testing.assert_close(model.backbone.features.conv0.weight, reference.features.conv0.weight)
        torch.testing.assert_close(model.backbone.features.denseblock3.denselayer5.norm2.running_var,
                                   reference.features.denseblock3.denselayer5.norm2.running_var)
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if "denseblock4" not in k}, broken)
    with pytest.raises(ValueError, match="missing .*denseblock4"):
        build_model("densenet121_bnneck", 3, pretrained=str(broken))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    with caplog.at_level(logging.WARNING):
        build_model("densenet121_bnneck", 3, pretrained="auto")
    assert "densenet121" in caplog.text and "random initialisation" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("last_stride", [1, 2])
def test_ptl_densenet_cells_follow_the_blocks_at_odd_sizes(last_stride):
    torch.manual_seed(0)
    model = build_model("densenet121_ptl", 5, pretrained="none", last_stride=last_stride)
    assert [m.out_channels for m in model.mix] == [16, 64, 128, 256]     # a quarter of 64, 256, 512, 1024
    for size in ((128, 64), (130, 66)):                                  # odd: the transitions round down
        logits, f_t = model(torch.randn(2, 3, *size))
        assert logits.shape == (2, 5) and f_t.shape == (2, 1024)
    assert all(c.state is not None for c in model.cells)
