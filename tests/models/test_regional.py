"""The adaptive-L2 paper's baseline model (Ni et al., ICPR 2020): objective module with clipping,
regional stripe branches over a copy of the last stage, and the multi-branch objective."""
import pytest
import torch

from reidkit.config import LossConfig, ModelConfig
from reidkit.losses.objective import ReIDObjective
from reidkit.models import build_model


def test_objective_module_clips_before_batchnorm_and_trains_its_bias():
    torch.manual_seed(0)
    model = build_model("resnet18_bnneck", 5, pretrained="none", feature_clip=(0.0, 0.05), bn_bias="trained",
                        test_feature="before_bn")
    x = torch.randn(6, 3, 64, 32)
    pooled = model.pool(model.backbone(x))
    assert float(pooled.detach().max()) > 0.05           # so the clip below does something
    logits, f_t = model(x)
    torch.testing.assert_close(f_t, pooled.clamp(0.0, 0.05))
    assert model.head.bottleneck.bias.requires_grad
    model.eval()
    torch.testing.assert_close(model(x), model.pool(model.backbone(x)).clamp(0.0, 0.05))
    with pytest.raises(ValueError, match=r"low < high, got \(1.0, 0.0\)"):
        build_model("resnet18_bnneck", 5, pretrained="none", feature_clip=(1.0, 0.0))


def test_regional_model_branches_by_hand():
    torch.manual_seed(0)
    model = build_model("resnet18_regional", 7, pretrained="none", regions=2, region_dim=32)
    # the regional stage is a copy (same start, own parameters), not the global one shared
    assert all(torch.equal(a, b) for a, b in zip(model.regional_stage.parameters(), model.backbone.layer4.parameters()))
    assert model.regional_stage[0].conv1.weight.data_ptr() != model.backbone.layer4[0].conv1.weight.data_ptr()
    x = torch.randn(4, 3, 64, 32)
    logits, features = model(x)
    assert [t.shape for t in logits] == [(4, 7)] * 3
    assert [t.shape for t in features] == [(4, 512), (4, 32), (4, 32)]
    model.eval()
    shared = model.backbone.up_to_layer3(x)
    regional = model.regional_stage(shared)                       # 4 x 512 x 4 x 2 at 64x32, last stride 1
    top, bottom = regional[:, :, :2], regional[:, :, 2:]
    expected = torch.cat([model.head(model.pool(model.backbone.layer4(shared))),
                          model.region_heads[0](model.pool(model.reduce[0](top))),
                          model.region_heads[1](model.pool(model.reduce[1](bottom)))], dim=1)
    torch.testing.assert_close(model(x), expected)
    assert model.feature_dim == 512 + 2 * 32 == model(x).shape[1]


def test_multi_branch_objective_sums_the_branches():
    torch.manual_seed(0)
    cfg = LossConfig(triplet_weight=1.0)
    objective = ReIDObjective(cfg)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    camids = torch.zeros_like(pids)
    logits = [torch.randn(8, 4) for _ in range(3)]
    features = [torch.randn(8, d) for d in (8, 3, 3)]
    terms = objective(logits, features, pids, camids)
    single = [objective(lg, f, pids, camids) for lg, f in zip(logits, features)]
    for key in ("id", "triplet"):
        assert terms[key].item() == pytest.approx(sum(t[key].item() for t in single), rel=1e-6)
    from reidkit.methods.center_loss import CenterLossPiece
    from reidkit.pieces import StepOutputs
    with pytest.raises(ValueError, match="center loss needs one embedding"):
        CenterLossPiece(4, 8, 5e-4, 0.5).extra_loss(StepOutputs(None, logits, features, features, pids, camids, 0, 0))


def test_recipe_options_reach_the_builder_and_unknown_ones_are_named():
    assert "regions" not in ModelConfig().options()               # defaults stay out of older builders' way
    options = ModelConfig(name="resnet18_regional", regions=3, feature_clip=(0, 1)).options()
    assert options["regions"] == 3 and options["feature_clip"] == (0.0, 1.0)
    model = build_model("resnet18_regional", 4, pretrained="none", **options)
    assert len(model.region_heads) == 3 and model.head.clip == (0.0, 1.0)
    with pytest.raises(ValueError, match="model 'resnet18_bnneck' does not take regions"):
        build_model("resnet18_bnneck", 4, pretrained="none", **options)
    # a model without an option refuses it instead of building without it (OSNet has no GeM, no last stride)
    assert ModelConfig(name="osnet_x0_25").options() == {}
    with pytest.raises(ValueError, match="model 'osnet_x0_25' does not take pooling"):
        build_model("osnet_x0_25", 4, pretrained="none", **ModelConfig(name="osnet_x0_25", pooling="gem").options())
    with pytest.raises(ValueError, match="model 'osnet_x0_25_bnneck' does not take last_stride"):
        build_model("osnet_x0_25_bnneck", 4, pretrained="none", **ModelConfig(last_stride=2).options())


def test_the_authors_reduction_block_and_its_conv_bias_category():
    """Ni et al.'s Keras code reduces each stripe with a 3x3 convolution with bias to channels / regions, then
    ReLU (no BatchNorm); its biases are what the paper's conv-bias category (Fig. 3 / 4) regularises."""
    from reidkit.losses.adaptive_l2 import AdaptiveL2Regularizer
    options = ModelConfig(name="resnet18_regional", reduction="authors").options()
    assert options == {"reduction": "authors"}
    model = build_model("resnet18_regional", 4, pretrained="none", **options)
    conv, relu = model.reduce[0]
    assert (conv.kernel_size, conv.in_channels, conv.out_channels) == ((3, 3), 512, 256)    # 512 / 2 regions
    assert conv.bias is not None and torch.equal(conv.bias, torch.zeros(256)) and isinstance(relu, torch.nn.ReLU)
    assert model.feature_dim == 512 + 2 * 256
    x = torch.randn(1, 512, 4, 2)
    torch.testing.assert_close(model.reduce[1](x), torch.relu(torch.nn.functional.conv2d(
        x, model.reduce[1][0].weight, model.reduce[1][0].bias, padding=1)))
    authors = AdaptiveL2Regularizer.for_model(model).categories
    light = AdaptiveL2Regularizer.for_model(build_model("resnet18_regional", 4, pretrained="none")).categories
    assert authors.count("conv_bias") == 2 and "conv_bias" not in light
    # the light reduction keeps its 256 channels; an explicit region_dim applies to either
    assert build_model("resnet18_regional", 4, pretrained="none").reduce[0][0].kernel_size == (1, 1)
    wide = build_model("resnet18_regional", 4, pretrained="none", reduction="authors", region_dim=64, regions=4)
    assert wide.reduce[0][0].out_channels == 64 and wide.feature_dim == 512 + 4 * 64
    with pytest.raises(ValueError, match="model 'resnet18_bnneck' does not take reduction"):
        build_model("resnet18_bnneck", 4, pretrained="none", reduction="authors")
