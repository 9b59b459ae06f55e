import numpy as np
import pytest
import torch
from PIL import Image

import reidkit
from reidkit.data.images import load_rgb
from reidkit.data.transforms import normalize
from reidkit.engine.checkpoint import save_checkpoint
from reidkit.models import build_model


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("osnet_x0_25", 4)
    for m in model.modules():          # trained-looking BN statistics, so that folding them is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    save_checkpoint({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    return tmp_path / "w.pth", model.eval()


@pytest.mark.slow
def test_paths_pil_and_arrays_give_the_model_features(tmp_path, checkpoint):
    path, model = checkpoint
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (90, 40, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    extractor = reidkit.FeatureExtractor("osnet_x0_25", path, image_size=(64, 32), batch_size=2)
    from_path = extractor([tmp_path / "a.png", str(tmp_path / "a.png"), tmp_path / "a.png"])
    from_pil = extractor(Image.fromarray(array))
    from_array = extractor(array)
    x = normalize(torch.from_numpy(np.asarray(load_rgb(tmp_path / "a.png", (64, 32))).copy())
                  .permute(2, 0, 1)[None])
    with torch.no_grad():
        expected = model(x)
    assert from_path.shape == (3, 512)
    for got in (from_path[:1], from_path[2:], from_pil, from_array):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bad_inputs_are_named(checkpoint):
    path, _ = checkpoint
    extractor = reidkit.FeatureExtractor("osnet_x0_25", path, image_size=(64, 32))
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        extractor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="path, PIL image or uint8 array"):
        extractor([42])


@pytest.mark.slow
@pytest.mark.parametrize("backend, optimize", [("torch", False), ("torch", True), ("onnxruntime", True)])
def test_backends_give_the_model_features(tmp_path, checkpoint, backend, optimize):
    path, model = checkpoint
    images = np.random.default_rng(1).integers(0, 255, (5, 64, 32, 3), dtype=np.uint8)
    extractor = reidkit.FeatureExtractor("osnet_x0_25", path, image_size=(64, 32), batch_size=2,
                                         backend=backend, optimize=optimize, onnx_path=tmp_path / "m.onnx")
    got = extractor(list(images))
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = model(x)
    assert got.shape == (5, 512) and expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if backend == "onnxruntime":
        assert (tmp_path / "m.onnx").is_file()


def test_auto_backend_falls_back_to_torch_when_export_fails(checkpoint, monkeypatch):
    path, model = checkpoint

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("reidkit.deploy.extractor.export_onnx", refuse)
    extractor = reidkit.FeatureExtractor("osnet_x0_25", path, image_size=(64, 32))
    assert extractor.backend == "torch" and extractor.session is None
    images = np.random.default_rng(2).integers(0, 255, (2, 64, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = model(normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))
    torch.testing.assert_close(extractor(list(images)), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="unsupported operator"):
        reidkit.FeatureExtractor("osnet_x0_25", path, image_size=(64, 32), backend="onnxruntime")
