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
    save_checkpoint({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    return tmp_path / "w.pth", model.eval()


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


def test_bad_inputs_are_named(checkpoint):
    path, _ = checkpoint
    extractor = reidkit.FeatureExtractor("osnet_x0_25", path, image_size=(64, 32))
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        extractor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="path, PIL image or uint8 array"):
        extractor([42])
