import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reidkit.models import build_model


def test_osnet_x1_0_size_and_multiply_adds():
    model = build_model("osnet_x1_0", 1000).eval()
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier"))
    assert params == pytest.approx(2.2e6, rel=0.03)               # paper: 2.2M
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 256, 128))
    mult_adds = counter.get_total_flops() / 2
    assert mult_adds == pytest.approx(978.9e6, rel=0.01)          # paper: 978.9M at 256x128


@pytest.mark.slow
@pytest.mark.parametrize("name", ["osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0",
                                  "osnet_x0_25_bnneck"])
def test_variants_train_and_eval(name):
    model = build_model(name, 5)
    logits, feats = model(torch.randn(2, 3, 64, 32))
    assert logits.shape == (2, 5) and feats.shape[0] == 2
    model.eval()
    assert model(torch.randn(2, 3, 64, 32)).shape == feats.shape


def test_ibn_has_instance_norm_early_only():
    model = build_model("osnet_ibn_x1_0", 3)
    assert isinstance(model.conv1.bn, torch.nn.InstanceNorm2d)
    assert model.conv2[0].IN is not None and model.conv3[0].IN is None


@pytest.mark.parametrize("name", ["osnet_x1_0", "osnet_x0_25", "osnet_ibn_x1_0"])
def test_torchreid_weights_give_equal_outputs(name, torchreid):
    torchreid_build = torchreid.models.build_model
    torch.manual_seed(0)
    theirs = torchreid_build(name, num_classes=11, loss="triplet", pretrained=False)
    for m in theirs.modules():                      # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = build_model(name, 11)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 3, 256, 128)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    theirs.train(), ours.train()
    torch.manual_seed(1)
    y_theirs, v_theirs = theirs(x)
    y_ours, v_ours = ours(x)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-4, rtol=1e-4)


def test_pretrained_path_loads_all_but_the_new_head(tmp_path):
    source = build_model("osnet_x0_25", 30)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "src.pth")
    target = build_model("osnet_x0_25", 10, pretrained=str(tmp_path / "src.pth"))
    src, tgt = source.state_dict(), target.state_dict()
    for k, v in tgt.items():
        if k.startswith("classifier."):
            assert v.shape[0] == 10
        else:
            assert torch.equal(v, src[k]), k
    # a backbone-only file nests under the BNNeck model's backbone
    neck = build_model("osnet_x0_25_bnneck", 10, pretrained=str(tmp_path / "src.pth"))
    assert torch.equal(neck.state_dict()["backbone.conv2.0.conv1.conv.weight"], src["conv2.0.conv1.conv.weight"])


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    torch.save(build_model("resnet18_bnneck", 5, pretrained="none").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="r18.pth"):
        build_model("osnet_x0_25", 10, pretrained=str(tmp_path / "r18.pth"))
