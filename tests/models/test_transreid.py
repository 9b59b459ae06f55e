"""TransReID's pieces (issue 37, item 3), each against the paper: overlapping patches and their count, position
embeddings resized bilinearly from the pretrained grid, the side-information embedding added to every token,
JPM's shift, shuffle, split, branch weights and test feature; and a run that trains and evaluates with all three."""
import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'reidkit[timm]'")

from reidkit.config import LossConfig  # noqa: E402
from reidkit.losses.objective import ReIDObjective  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.models.transreid import shift_and_shuffle, split_parts  # noqa: E402

ARCH = "transreid/vit_tiny_patch16_224"


def test_overlapping_patches_at_256x128_make_the_papers_21_x_10_grid():
    model = build_model(ARCH, 5, pretrained=None)                       # patch 16, stride 12
    assert model.grid == (21, 10) and model.num_patches == 210          # (256 - 16) // 12 + 1, (128 - 16) // 12 + 1
    assert model.net.pos_embed.shape == (1, 211, 192)
    assert model.net.patch_embed(torch.zeros(1, 3, 256, 128)).shape == (1, 210, 192)
    plain = build_model(ARCH, 5, pretrained=None, patch_stride=None)
    assert plain.grid == (16, 8) and plain.num_patches == 128


def test_pretrained_position_embeddings_are_resized_bilinearly_and_the_class_tokens_kept(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with torch.no_grad():
        source.pos_embed.normal_()
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = build_model(ARCH, 5, pretrained=str(tmp_path / "vit.pth"))
    grid = source.pos_embed[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(21, 10), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    got = model.net.pos_embed.detach()
    assert torch.equal(got[:, 0], source.pos_embed[:, 0].detach())
    assert torch.allclose(got[:, 1:], expected.reshape(1, 210, 192), atol=1e-6)


def test_the_side_information_embedding_adds_lambda_times_the_cameras_vector_to_every_token():
    model = build_model(ARCH, 5, pretrained=None, img_size=(64, 32), sie_cameras=4, sie_weight=3.0).eval()
    x, cameras = torch.randn(3, 3, 64, 32), torch.tensor([0, 3, 1])
    with torch.no_grad():
        with_sie = model.tokens(x, cameras)
        sie, model.sie = model.sie, None
        without = model.tokens(x)
        model.sie = sie
    assert torch.allclose(with_sie - without, (3.0 * sie[cameras]).expand_as(with_sie), atol=1e-6)
    assert model.takes_cameras
    with pytest.raises(ValueError, match="give the cameras"):
        model.tokens(x)
    with pytest.raises(ValueError, match="outside the 4 cameras"):
        model.tokens(x, torch.tensor([0, 4, 1]))


def test_jpm_shifts_then_shuffles_the_patches_as_the_paper_writes_it():
    tokens = torch.arange(8.0).view(1, 8, 1)
    # shift m = 2: x3..x8, x1, x2 -> [2, 3, 4, 5, 6, 7, 0, 1]; 2 groups: read as 2 x 4, column by column
    assert shift_and_shuffle(tokens, 2, 2).flatten().tolist() == [2, 6, 3, 7, 4, 0, 5, 1]
    assert shift_and_shuffle(tokens, 0, 1).flatten().tolist() == list(range(8))
    parts = split_parts(torch.arange(10.0).view(1, 10, 1), 4)
    assert [p.flatten().tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]    # the authors drop 8, 9
    with pytest.raises(ValueError, match="shuffle groups"):
        shift_and_shuffle(torch.zeros(1, 10, 1), 1, 4)


def test_jpm_trains_k_plus_one_branches_and_tests_on_the_global_feature_and_the_locals_over_k():
    model = build_model(ARCH, 6, pretrained=None, img_size=(64, 32), patch_stride=None, jpm=True, jpm_groups=4,
                        jpm_shift=1, jpm_shuffle=2)
    x = torch.randn(4, 3, 64, 32)
    logits, feats = model.train()(x)
    assert len(logits) == len(feats) == 5 and all(lg.shape == (4, 6) for lg in logits)
    assert model.branch_weights == (0.5, 0.125, 0.125, 0.125, 0.125)
    model.eval()
    with torch.no_grad():
        tested = [head(f) for head, f in zip(model.heads, model.features(x))]
        expected = torch.cat([tested[0]] + [t / 4 for t in tested[1:]], dim=1)
        assert torch.allclose(model(x), expected) and model(x).shape == (4, 5 * 192)
    # the local branch is a copy of the last layer with its own weights
    assert model.local_block is not model.net.blocks[-1]
    assert torch.equal(model.local_block.attn.qkv.weight, model.net.blocks[-1].attn.qkv.weight)


def test_the_objective_weighs_each_branch_as_the_model_asks():
    objective = ReIDObjective(LossConfig(label_smoothing=0.0, triplet_weight=1.0))
    gen = torch.Generator().manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = [torch.randn(6, 3, generator=gen) for _ in range(3)]
    feats = [torch.randn(6, 8, generator=gen) for _ in range(3)]
    weights = (0.5, 0.25, 0.25)
    weighted = objective(logits, feats, pids, torch.zeros(6, dtype=torch.long), branch_weights=weights)
    single = [objective(lg, f, pids, torch.zeros(6, dtype=torch.long)) for lg, f in zip(logits, feats)]
    for term in ("id", "triplet"):
        assert weighted[term].item() == pytest.approx(sum(w * s[term].item() for w, s in zip(weights, single)))


@pytest.mark.slow
def test_a_transreid_run_with_sie_and_jpm_trains_and_evaluates(tiny_data, tmp_path):
    import json
    import math

    from conftest import tiny_overrides
    from reidkit.engine import Trainer
    from reidkit.recipe_files import load_recipe
    out = tmp_path / "transreid"
    recipe = load_recipe(None, tiny_overrides(tiny_data, out, epochs=2) + [
        f"model.name={ARCH}", "data.height=64", "data.width=32", "model.img_size=[64,32]", "model.sie_cameras=3",
        "model.jpm=true", "model.jpm_groups=2", "model.jpm_shift=1", "model.jpm_shuffle=2", "train.precise_bn=32",
        "center_loss.weight=0"])
    result = Trainer(recipe, progress=False).fit()
    history = json.loads((out / "history.json").read_text())
    assert math.isfinite(result.mAP) and result.mAP > 0 and all(math.isfinite(v) for v in history["loss/total"])
    from reidkit.deploy import FeatureExtractor  # the trained run deploys with its cameras
    extractor = FeatureExtractor(weights=out / "best.pth", backend="torch")
    images = sorted(tiny_data.rglob("*.png"))[:4] or sorted(tiny_data.rglob("*.jpg"))[:4]
    with pytest.raises(ValueError, match="embeds each image's camera"):
        extractor(images)
    features = extractor(images, cameras=[0, 1, 2, 0])
    assert features.shape[0] == 4 and torch.isfinite(features).all()
    assert not torch.allclose(features[:1], extractor(images[:1], cameras=[2]), atol=1e-3)
