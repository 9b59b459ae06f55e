import numpy as np
import pytest
import torch

from reidkit.data.images import load_rgb
from reidkit.data.transforms import normalize
from reidkit.deploy.onnx_import import import_onnx_osnet, module_path
from reidkit.models import build_model


def test_module_path_from_node_names():
    assert module_path("/conv2/conv2.0/conv2b/conv2b.0/conv1/Conv") == "conv2.0.conv2b.0.conv1"
    assert module_path("/conv1/conv/Conv") == "conv1.conv"
    assert module_path("/conv3/conv3.2/conv3.2.0/conv/Conv") == "conv3.2.0.conv"


def test_imported_msmt17_osnet_matches_onnxruntime_on_real_images(shared_data):
    ort = pytest.importorskip("onnxruntime")
    onnx_file = shared_data / "weights" / "osnet_x0_25_msmt17.onnx"
    model = build_model("osnet_x0_25", 1)
    model.load_state_dict(import_onnx_osnet(onnx_file, "osnet_x0_25"))
    model.eval()
    paths = sorted((shared_data / "cuhk03" / "labeled" / "val").glob("*.jpg"))[:16]
    batch = torch.stack([torch.from_numpy(np.asarray(load_rgb(p, (256, 128))).copy()).permute(2, 0, 1)
                         for p in paths])
    x = normalize(batch)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ours = model(x).numpy()
    assert reference.shape == (16, 512)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)
    assert np.abs(reference).mean() > 1e-3                        # a real, non-trivial output


def test_wrong_architecture_is_named(shared_data):
    with pytest.raises(ValueError, match="does not map onto osnet_x1_0"):
        import_onnx_osnet(shared_data / "weights" / "osnet_x0_25_msmt17.onnx", "osnet_x1_0")
