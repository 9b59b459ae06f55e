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


def test_demo_pretrained_reference_equals_the_onnx_model(shared_data, tmp_path):
    """The demo's reference row: import + fold + channels_last + cache give the ONNX model's ranking."""
    ort = pytest.importorskip("onnxruntime")
    from reidkit.data import build_dataset
    from reidkit.data.cache import ImageCache
    from reidkit.data.loader import iter_test_batches
    from reidkit.data.synthesis import generate
    from reidkit.demo import evaluate_reference, find_reference
    from reidkit.evaluation import compute_distance, evaluate_rank

    onnx_file = find_reference()
    assert onnx_file == shared_data / "weights" / "osnet_x0_25_msmt17.onnx"
    generate(tmp_path / "syn", num_ids=12, num_cameras=3, seed=2, images_per_camera=(2, 2), num_distractors=4,
             quiet=True)
    dataset = build_dataset("synthetic", tmp_path / "syn", num_cameras=3)
    ours = evaluate_reference(onnx_file, dataset, "cosine", progress=False)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    q, g = (ImageCache(records, (256, 128), progress=False) for records in (dataset.query, dataset.gallery))
    qf, gf = (torch.cat([torch.from_numpy(session.run(None, {"images": b.numpy()})[0])
                         for b in iter_test_batches(cache, 32)]) for cache in (q, g))
    expected = evaluate_rank(compute_distance(qf, gf, "cosine").numpy(), q.pids(), g.pids(), q.camids(), g.camids())
    assert ours.mAP == pytest.approx(expected.mAP, abs=1e-6)
    np.testing.assert_allclose(ours.cmc, expected.cmc, atol=1e-6)
