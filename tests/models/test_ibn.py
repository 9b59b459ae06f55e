"""IBN-Net-a ResNets (issue 37, item 2): the authors' key layout, the paper's parameter count, the IBN layer's
two halves, and the authors' files loading as they are."""
import pytest
import torch
import torch.nn.functional as F

from reidkit.models import build_model
from reidkit.models.resnet import IBN, ResNetBackbone


def test_ibn_normalises_the_first_half_per_instance_and_the_rest_per_batch():
    layer = IBN(6).train()
    x = torch.randn(4, 6, 5, 3) * 3 + 1
    out = layer(x)
    assert torch.allclose(out[:, :3], F.instance_norm(x[:, :3], eps=1e-5), atol=1e-5)
    assert torch.allclose(out[:, 3:], F.batch_norm(x[:, 3:], None, None, training=True, eps=1e-5), atol=1e-5)
    assert (layer.instance_channels, layer.IN.num_features, layer.BN.num_features) == (3, 3, 3)


def test_resnet50_ibn_a_has_resnet50s_parameters_and_the_authors_layout():
    backbone = ResNetBackbone("resnet50_ibn_a", pretrained=None)
    # with the 1000-class classifier the authors' file has: 25.56 M, ResNet-50's count (IN and BN have the same
    # affine parameters)
    assert sum(p.numel() for p in backbone.parameters()) + 2048 * 1000 + 1000 == 25_557_032
    sd = backbone.state_dict()
    assert sd["layer1.0.bn1.IN.weight"].shape == (32,) and sd["layer1.0.bn1.BN.running_mean"].shape == (32,)
    assert sd["layer3.5.bn1.IN.weight"].shape == (128,) and sd["layer3.5.bn1.BN.weight"].shape == (128,)
    assert "layer4.0.bn1.weight" in sd and not any(k.startswith("layer4") and ".IN." in k for k in sd)
    assert "bn1.weight" in sd and not any(".IN." in k for k in sd if not k.startswith("layer"))   # a BN stem
    assert sum(".IN.weight" in k for k in sd) == 3 + 4 + 6                  # every block of layer1-3


def test_an_authors_file_loads_key_for_key(tmp_path):
    source = ResNetBackbone("resnet18_ibn_a", pretrained=None)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.zeros(1000)}      # their classifier
    torch.save(state, tmp_path / "resnet18_ibn_a-2f571257.pth")
    model = build_model("resnet18_ibn_a_bnneck", 5, pretrained=str(tmp_path / "resnet18_ibn_a-2f571257.pth"),
                        last_stride=2)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_an_ibn_model_exports_to_onnx_with_equal_outputs(tmp_path):
    from reidkit.deploy.onnx_model import onnx_session, run_session
    from reidkit.deploy.optimize import export_onnx
    model = build_model("resnet18_ibn_a_bnneck", 5, pretrained=None).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_session(onnx_session(export_onnx(model, tmp_path / "ibn.onnx", image_size=(64, 32))), x.numpy())
    assert got == pytest.approx(expected, abs=1e-4)
