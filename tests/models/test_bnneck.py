import logging

import pytest
import torch
import torchvision

from reidkit.models import build_model, model_names


def test_registry_lists_resnets():
    assert {"resnet18_bnneck", "resnet50_bnneck", "resnet152_bnneck"} <= set(model_names())
    with pytest.raises(ValueError, match="unknown model 'resnet51_bnneck'"):
        build_model("resnet51_bnneck", 3)


def test_train_and_eval_outputs():
    torch.manual_seed(0)
    model = build_model("resnet18_bnneck", 7, pretrained="none")
    x = torch.randn(4, 3, 64, 32)
    logits, f_t = model(x)
    assert logits.shape == (4, 7) and f_t.shape == (4, 512)
    assert model.head.classifier.bias is None
    assert not model.head.bottleneck.bias.requires_grad
    model.eval()
    f_i = model(x)
    pooled = model.pool(model.backbone(x))
    torch.testing.assert_close(f_i, model.head.bottleneck(pooled))
    model.head.test_feature = "before_bn"
    torch.testing.assert_close(model(x), pooled)


def test_last_stride_one_doubles_the_final_map():
    x = torch.randn(1, 3, 256, 128)
    for name in ("resnet18_bnneck", "resnet50_bnneck"):
        assert build_model(name, 2, pretrained="none", last_stride=1).backbone(x).shape[-2:] == (16, 8)
        assert build_model(name, 2, pretrained="none", last_stride=2).backbone(x).shape[-2:] == (8, 4)


def test_pretrained_from_path_and_missing_hub_cache(tmp_path, monkeypatch, caplog):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18_bnneck", 3, pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    with caplog.at_level(logging.WARNING):
        build_model("resnet18_bnneck", 3, pretrained="auto")
    assert "random initialisation" in caplog.text
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("resnet18_bnneck", 3, pretrained=str(tmp_path / "nope.pth"))
