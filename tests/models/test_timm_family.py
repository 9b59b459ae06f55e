"""Any timm network under reidkit's ReID head (issue 37, item 1): it trains a step, evaluates, saves a checkpoint
that rebuilds it, and exports to ONNX with the same outputs; weights come from a file, timm's cache or nowhere,
never silently from the network."""
import logging

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'reidkit[timm]'")

from conftest import tiny_overrides  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.models.timm_family import TimmBackbone  # noqa: E402
from reidkit.recipe_files import load_recipe  # noqa: E402

#: CNNs of three designs and a ViT, each tiny enough for a CPU step: (input H x W, recipe overrides)
ARCHITECTURES = {"resnet18": ((32, 16), []), "mobilenetv3_small_050": ((32, 16), []),
                 "convnext_atto": ((64, 32), []),          # its last downsampling (2 x 2 kernel) needs a 2 x 2 map
                 "vit_tiny_patch16_224": ((32, 16), ["model.img_size=[32,16]"])}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_a_timm_network_trains_evaluates_and_exports_with_equal_outputs(architecture, tiny_data, tmp_path):
    from reidkit.deploy.onnx_model import onnx_session, run_session
    from reidkit.deploy.optimize import export_onnx
    from reidkit.engine import Trainer
    from reidkit.engine.checkpoint import load_embedding_model
    out = tmp_path / "run"
    (h, w), extra = ARCHITECTURES[architecture]
    recipe = load_recipe(None, tiny_overrides(tiny_data, out, epochs=1)
                         + [f"model.name=timm/{architecture}", f"data.height={h}", f"data.width={w}", *extra])
    result = Trainer(recipe, progress=False).fit()
    assert np.isfinite(result.mAP) and result.mAP > 0
    assert (out / "history.json").is_file() and (out / "best.pth").is_file()
    model, spec = load_embedding_model(out / "best.pth")           # the checkpoint says what to build
    assert spec is not None and spec.arch == f"timm/{architecture}"
    images = torch.randn(3, 3, h, w)
    with torch.no_grad():
        expected = model(images).numpy()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=(h, w))
    got = run_session(onnx_session(path), images.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_last_stride_one_doubles_the_map_and_the_resnet_is_reidkits_size():
    one = TimmBackbone("resnet18", last_stride=1, pretrained=None).eval()
    two = TimmBackbone("resnet18", last_stride=2, pretrained=None).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 256, 128)
        assert tuple(one(x).shape) == (1, 512, 16, 8) and tuple(two(x).shape) == (1, 512, 8, 4)
    ours = build_model("resnet18_bnneck", 10, pretrained=None)
    theirs = build_model("timm/resnet18", 10, pretrained=None)
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())


def test_a_transformer_is_pooled_by_its_own_class_token_and_refuses_gem():
    model = build_model("timm/vit_tiny_patch16_224", 5, pretrained=None, img_size=(64, 32)).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 32)
        net = model.backbone.net
        tokens = net.forward_features(x)
        assert torch.allclose(model.backbone(x), net.fc_norm(tokens[:, 0]) if hasattr(net, "fc_norm") else tokens[:, 0])
    with pytest.raises(ValueError, match="has no map to pool"):
        build_model("timm/vit_tiny_patch16_224", 5, pretrained=None, img_size=(64, 32), pooling="gem")


def test_an_embedding_reduction_gives_the_asked_dimension():
    model = build_model("timm/resnet18", 7, pretrained=None, embedding_dim=96, pooling="gem")
    logits, f_t = model.train()(torch.randn(4, 3, 64, 32))
    assert logits.shape == (4, 7) and f_t.shape == (4, 96) and model.eval()(torch.randn(2, 3, 64, 32)).shape == (2, 96)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_file_load_without_the_classifier(tmp_path, suffix, caplog):
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    state = source.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with caplog.at_level(logging.INFO):
        model = build_model("timm/resnet18", 3, pretrained=str(path), last_stride=2)
    loaded = model.backbone.net.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert "weights loaded from" in caplog.text


def test_a_vit_file_for_224_loads_at_256x128_with_resized_position_embeddings(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = build_model("timm/vit_tiny_patch16_224", 3, pretrained=str(tmp_path / "vit.pth"), img_size=(256, 128))
    net = model.backbone.net
    assert net.pos_embed.shape == (1, 1 + 16 * 8, 192)                  # 16 x 8 patches + the class token
    assert torch.equal(net.pos_embed[0, 0], source.pos_embed[0, 0])      # the class token's is kept
    assert torch.equal(net.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path):
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth do not fit"):
        build_model("timm/resnet18", 3, pretrained=str(tmp_path / "r34.pth"))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("timm/resnet18", 3, pretrained=str(tmp_path / "absent.pth"))


def test_offline_auto_starts_from_random_weights_and_imagenet_names_where_it_looked(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))        # an empty cache
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")
        return real(name, pretrained=pretrained, **kwargs)
    monkeypatch.setattr(timm, "create_model", offline)
    with caplog.at_level(logging.WARNING):
        build_model("timm/resnet18", 3, pretrained="auto")
    assert "no timm weights in the Hugging Face cache" in caplog.text and str(tmp_path / "hf") in caplog.text
    with pytest.raises(FileNotFoundError, match=r"pretrained=imagenet.*Hugging Face cache .*hf.*model.pretrained="):
        build_model("timm/resnet18", 3, pretrained="imagenet")


def test_the_recipe_checks_timm_names_and_options():
    recipe = load_recipe(None, ["model.name=timm/vit_small_patch16_224", "model.img_size=[256,128]",
                                "model.drop_path_rate=0.1"])
    assert recipe.model.options()["img_size"] == (256, 128)
    with pytest.raises(ValueError, match="embedding_dims"):
        load_recipe(None, ["model.name=timm/resnet18", "model.embedding_dims=3"])
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_model("timm/resnet81", 3, pretrained=None)
    with pytest.raises(ValueError, match="families are timm/"):
        load_recipe(None, ["model.name=timmy/resnet18"])


#: every training piece on a timm network (issue 37: "it works with every piece"), with the overrides that turn it on
PIECES = {"center and triplet (BoT)": [],
          "camera-aware mining": ["loss.miner=camera_aware", "data.sampler=camera_diverse"],
          "adaptive L2": ["adaptive_l2.amplitude=0.005", "optim.weight_decay=0", "optim.weight_decay_bias=0",
                          "center_loss.weight=0"],
          "deep mutual learning": ["mutual.peers=[timm/resnet18]"],
          "distillation": ["distillation.teacher={teacher}", "distillation.arch=resnet18_bnneck",
                           "distillation.weight=0.5"],
          "precise BN and a margin loss": ["train.precise_bn=32", "loss.id_loss=cosface", "model.classifier=cosine"]}


@pytest.mark.slow
@pytest.mark.parametrize("piece", sorted(PIECES))
def test_every_piece_trains_a_timm_network(piece, tiny_data, tiny_run, tmp_path):
    import json
    import math

    from reidkit.engine import Trainer
    out = tmp_path / "run"
    extra = [o.format(teacher=tiny_run / "best.pth") for o in PIECES[piece]]
    recipe = load_recipe(None, tiny_overrides(tiny_data, out, epochs=1) + ["model.name=timm/resnet18", *extra])
    result = Trainer(recipe, progress=False).fit()
    history = json.loads((out / "history.json").read_text())
    assert math.isfinite(result.mAP) and all(math.isfinite(v) for v in history["loss/total"])
    if piece == "deep mutual learning":
        assert (out / "peer_1_timm-resnet18.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["resnet18", "vit_tiny_patch16_224"])
def test_a_timm_network_deploys_through_export_int8_extract_and_search(architecture, tiny_data, tmp_path, capsys):
    from reidkit.cli import main
    from reidkit.deploy import GalleryIndex
    from reidkit.engine import Trainer
    out = tmp_path / "run"
    (h, w), extra = ARCHITECTURES[architecture]
    Trainer(load_recipe(None, tiny_overrides(tiny_data, out, epochs=1) + [f"model.name=timm/{architecture}",
                                                                            *extra]), progress=False).fit()
    assert main(["export", str(out / "recipe.json"), f"data.root={tiny_data}", "--weights", str(out / "best.pth"),
                 "--out", str(tmp_path / "m.onnx"), "--int8", "--calibration-images", "32", "--max-map-drop", "100",
                 "--no-progress"]) == 0
    assert (tmp_path / "m.int8.onnx").is_file()
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tmp_path / "m.int8.onnx"),
                 "--out", str(tmp_path / "g.npz"), "--no-progress"]) == 0
    gallery = GalleryIndex.load(tmp_path / "g.npz")
    assert gallery.meta["arch"] == f"timm/{architecture}" and len(gallery) > 0
    query = sorted((tiny_data / "query").glob("*.jpg"))[0]
    capsys.readouterr()
    assert main(["search", str(tmp_path / "g.npz"), str(query), "--top-k", "3"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]) == 3
