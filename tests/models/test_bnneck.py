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


def _torchreid_resnet18_checkpoint(path):
    """A checkpoint as torchreid's model zoo and ``save_checkpoint`` write them: ``state_dict`` under a dict with
    the epoch and rank-1, DataParallel ``module.`` keys, the ReID classifier as ``classifier.*``.  torchreid's
    own ResNet-18 when installed (``make bench-peers``), else torchvision's under the same key names."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchreid.reid as tr
        net = tr.models.build_model("resnet18", num_classes=751, pretrained=False)
        state = net.state_dict()
    except ImportError:
        net = torchvision.models.resnet18(weights=None)
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        state |= {"classifier.weight": torch.randn(751, 512), "classifier.bias": torch.zeros(751)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 60, "rank1": 0.8}, path)
    return state


def test_a_torchreid_resnet_checkpoint_initialises_the_backbone(tmp_path, caplog):
    state = _torchreid_resnet18_checkpoint(tmp_path / "model.pth.tar")
    with caplog.at_level(logging.INFO):
        model = build_model("resnet18_bnneck", 5, pretrained=str(tmp_path / "model.pth.tar"), last_stride=2)
    for key in ("conv1.weight", "layer3.1.bn2.running_mean", "layer4.0.downsample.0.weight"):
        torch.testing.assert_close(model.backbone.state_dict()[key], state[key])
    assert "classifier.weight" in caplog.text and model.head.classifier.weight.shape == (5, 512)


def test_imagenet_weights_are_fetched_with_their_hash_checked_or_the_error_says_where(tmp_path, monkeypatch):
    import hashlib

    import torch.nn as nn

    from reidkit.models.pretrained import fetch_imagenet_weights, hub_cache_file, load_backbone_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    net = nn.Sequential(nn.Linear(3, 2))
    source = tmp_path / "served" / "toy.pth"
    source.parent.mkdir()
    torch.save(net.state_dict(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    named = source.with_name(f"toy-{digest[:8]}.pth")
    source.rename(named)
    url = named.as_uri()                                     # file:// stands in for download.pytorch.org
    other = nn.Sequential(nn.Linear(3, 2))
    assert load_backbone_weights(other, "imagenet", url, "toy", head_prefix="fc.")
    assert torch.equal(other[0].weight, net[0].weight)
    assert hub_cache_file(url).is_file()                    # cached where torch.hub keeps it
    bad = named.with_name("toy-00000000.pth")               # a file whose content does not match its hash
    bad.write_bytes(named.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"model.pretrained=imagenet: no ImageNet weights at .*toy-00000000.pth"
                                                r".*give its path"):
        fetch_imagenet_weights(bad.as_uri(), "toy")
    assert not hub_cache_file(bad.as_uri()).exists()
    with pytest.raises(FileNotFoundError, match="OSNet.s ImageNet weights are not published .*give its path"):
        build_model("osnet_x0_25", 3, pretrained="imagenet")
