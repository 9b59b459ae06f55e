"""Deploying a model that embeds each image's camera (TransReID's SIE): the extractor (torch and ONNX Runtime),
the ONNX export with its camera input, `reidkit extract / search --sie-cameras`, the search service's
camera_index, and the camera indices read from file names and tables.  Each embedding is checked against the model
called by hand with the same cameras, and each check also shows that the cameras change the embedding (so a path
that dropped them would fail)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("timm", reason="timm is an optional extra: pip install 'reidkit[timm]'")

from reidkit.cli import main  # noqa: E402
from reidkit.data.images import load_rgb  # noqa: E402
from reidkit.data.transforms import normalize  # noqa: E402
from reidkit.deploy import FeatureExtractor, GalleryIndex  # noqa: E402
from reidkit.deploy.metadata import sie_camera_indices  # noqa: E402
from reidkit.deploy.onnx_model import OnnxEmbedding, quantize_onnx  # noqa: E402
from reidkit.deploy.optimize import export_onnx  # noqa: E402
from reidkit.engine.checkpoint import EmbeddingSpec, save_checkpoint  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.models.heads import embed  # noqa: E402

ARCH = "transreid/vit_tiny_patch16_224"
SIZE = (64, 32)
SPEC = EmbeddingSpec(ARCH, {"img_size": [64, 32], "sie_cameras": 3}, SIZE)


@pytest.fixture(scope="module")
def sie_model(tmp_path_factory):
    """A tiny TransReID with 3 camera vectors far from zero (so that each camera moves the embedding), saved as
    a self-describing reidkit checkpoint."""
    torch.manual_seed(0)
    model = build_model(ARCH, 5, pretrained=None, img_size=SIZE, sie_cameras=3, sie_weight=3.0).eval()
    with torch.no_grad():
        model.sie.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("sie") / "sie.pth"
    save_checkpoint({"state_dict": model.state_dict(), "embedding": SPEC.as_dict()}, path)
    return path, model


def by_hand(model, images: np.ndarray, cameras) -> torch.Tensor:
    """The model called directly on uint8 H x W x 3 images (already at the model's size) and their cameras."""
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        return embed(model, x, torch.as_tensor(cameras))


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, *SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("backend, optimize", [("torch", False), ("torch", True), ("onnxruntime", True)])
def test_the_extractor_embeds_each_image_with_its_camera(sie_model, backend, optimize):
    path, model = sie_model
    images, cameras = random_images(5), [0, 2, 1, 1, 0]
    extractor = FeatureExtractor(weights=path, batch_size=2, backend=backend, optimize=optimize)
    assert extractor.takes_cameras and extractor.num_cameras == 3
    got = extractor(list(images), cameras=cameras)
    torch.testing.assert_close(got, by_hand(model, images, cameras), atol=1e-4, rtol=1e-4)
    other = extractor(list(images), cameras=[2, 0, 0, 2, 1])
    assert (got - other).abs().amax(dim=1).min() > 1e-2          # every image's embedding moved with its camera


def test_missing_miscounted_or_unknown_cameras_are_named(sie_model):
    path, _ = sie_model
    extractor = FeatureExtractor(weights=path, backend="torch")
    images = list(random_images(2))
    with pytest.raises(ValueError, match="give the cameras"):
        extractor(images)
    with pytest.raises(ValueError, match="1 given for 2 image"):
        extractor(images, cameras=[0])
    with pytest.raises(ValueError, match="camera index 3 is outside 0..2"):
        extractor(images, cameras=[0, 3])
    with pytest.raises(ValueError, match="camera index -1"):
        extractor(images, cameras=[-1, 0])


def test_a_model_without_sie_ignores_cameras_and_extract_refuses_them(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("osnet_x0_25", 4).eval()
    save_checkpoint({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    extractor = FeatureExtractor("osnet_x0_25", tmp_path / "w.pth", image_size=SIZE, backend="torch")
    images = list(random_images(2))
    assert not extractor.takes_cameras
    torch.testing.assert_close(extractor(images, cameras=[0, 5]), extractor(images))
    Image.fromarray(images[0]).save(tmp_path / "0001_c1s1_000001_01.png")     # the command refuses the option
    assert main(["extract", str(tmp_path / "0001_c1s1_000001_01.png"), "--weights", str(tmp_path / "w.pth"),
                 "--arch", "osnet_x0_25", "--size", "64", "32", "--out", str(tmp_path / "g.npz"), "--device", "cpu",
                 "--sie-cameras", "market1501"]) == 2
    assert not (tmp_path / "g.npz").exists()
    assert "does not embed cameras" in capsys.readouterr().err


def test_the_onnx_export_takes_the_cameras_as_a_second_input(sie_model, tmp_path):
    path, model = sie_model
    onnx_path = export_onnx(model, tmp_path / "sie.onnx", SIZE, spec=SPEC)
    images, cameras = random_images(3, seed=1), [2, 0, 1]
    expected = by_hand(model, images, cameras)
    extractor = FeatureExtractor(weights=onnx_path)                 # runs the file as it is, its spec read back
    assert extractor.takes_cameras and extractor.num_cameras == 3
    torch.testing.assert_close(extractor(list(images), cameras=cameras), expected, atol=1e-4, rtol=1e-4)
    net = OnnxEmbedding(onnx_path)                                  # as reidkit's evaluation runs an ONNX model
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    torch.testing.assert_close(embed(net, x, torch.tensor(cameras)), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="give the cameras"):
        net(x)
    with pytest.raises(ValueError, match="int8 export is not supported"):
        quantize_onnx(onnx_path, tmp_path / "sie.int8.onnx", [x.numpy()])
    assert not (tmp_path / "sie.int8.onnx").exists()


def test_embed_files_keeps_each_camera_with_its_image_when_a_bad_one_is_left_out(sie_model, tmp_path):
    path, model = sie_model
    images = random_images(3, seed=2)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    files[1].write_bytes(b"not an image")
    extractor = FeatureExtractor(weights=path, backend="torch", batch_size=2)
    features, kept = extractor.embed_files(files, skip_bad_images=True, cameras=[1, 0, 2])
    assert kept == [str(files[0]), str(files[2])]
    decoded = np.stack([np.asarray(load_rgb(f, SIZE)) for f in (files[0], files[2])])
    torch.testing.assert_close(features, by_hand(model, decoded, [1, 2]), atol=1e-5, rtol=1e-5)


def test_camera_indices_from_dataset_names_and_from_a_table(tmp_path):
    # each dataset's reader numbers its cameras from 0: Market c1 -> 0, MSMT17's third field 05 -> 4, CUHK03 images
    # 00-04 of a pair -> 0 and 05-09 -> 1
    assert sie_camera_indices(["/x/0002_c1s1_000451_03.jpg", "0007_c6s3_0123_01.jpg"], "market1501") == [0, 5]
    assert sie_camera_indices(["0005_c8_f0046985.jpg"], "dukemtmc") == [7]
    assert sie_camera_indices(["0514_012_05_0303afternoon_0585_1.jpg"], "msmt17") == [4]
    assert sie_camera_indices(["0003_04.jpg", "0003_07.jpg"], "cuhk03") == [0, 1]
    with pytest.raises(ValueError, match="market1501.*0002_c7s1"):
        sie_camera_indices(["0002_c7s1_000451_03.jpg"], "market1501")        # Market has 6 cameras
    table = tmp_path / "cams.csv"
    table.write_text("path,camera_index\n/data/a.jpg,0\nb.jpg,2\n")
    assert sie_camera_indices(["/data/a.jpg", "/elsewhere/b.jpg"], table) == [0, 2]   # by path, then by name
    with pytest.raises(ValueError, match="no camera_index for 1 image.*c.jpg"):
        sie_camera_indices(["/data/a.jpg", "c.jpg"], table)
    table.write_text("path,camera_index\na.jpg,one\n")
    with pytest.raises(ValueError, match="line 2: camera_index 'one'"):
        sie_camera_indices(["a.jpg"], table)
    with pytest.raises(FileNotFoundError, match="neither a dataset"):
        sie_camera_indices(["a.jpg"], tmp_path / "missing.csv")


def test_extract_and_search_take_the_cameras_from_the_file_names(sie_model, tmp_path, capsys):
    path, model = sie_model
    folder = tmp_path / "gallery"
    folder.mkdir()
    names = ["0001_c1s1_000001_01.png", "0001_c3s1_000002_01.png", "0002_c2s1_000003_01.png"]
    images = random_images(3, seed=3)
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / name)
    out = tmp_path / "g.npz"
    assert main(["extract", str(folder), "--weights", str(path), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 2
    assert "--sie-cameras" in capsys.readouterr().err
    assert main(["extract", str(folder), "--weights", str(path), "--out", str(out), "--device", "cpu",
                 "--no-progress", "--sie-cameras", "market1501"]) == 0
    index = GalleryIndex.load(out)
    order = [names.index(p.rsplit("/", 1)[-1]) for p in index.paths]
    expected = by_hand(model, images[order], [[0, 2, 1][i] for i in order]).numpy()
    np.testing.assert_allclose(index.vectors(np.arange(len(index))), expected / np.linalg.norm(
        expected, axis=1, keepdims=True), atol=1e-4)
    query = folder / names[1]
    capsys.readouterr()
    assert main(["search", str(out), str(query), "--top-k", "1", "--device", "cpu",
                 "--sie-cameras", "market1501"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(names[1]) and printed[1].split()[0] == "1" and printed[1].endswith(names[1])
    assert float(printed[1].split()[1]) < 1e-4                         # itself, embedded with the same camera


def test_reidkit_export_writes_the_camera_input_and_checks_it(sie_model, tmp_path, capsys):
    path, model = sie_model
    recipe = tmp_path / "sie.yaml"
    recipe.write_text(f"model: {{name: {ARCH}, img_size: [64, 32], sie_cameras: 3}}\n"
                      "data: {dataset: synthetic, height: 64, width: 32}\n")
    out = tmp_path / "sie.onnx"
    assert main(["export", str(recipe), "--weights", str(path), "--out", str(out), "--int8"]) == 2
    assert "int8 export is not supported" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(recipe), "--weights", str(path), "--out", str(out)]) == 0
    assert "ONNX Runtime vs torch max |diff|" in capsys.readouterr().out
    images, cameras = random_images(2, seed=4), [1, 2]
    got = FeatureExtractor(weights=out)(list(images), cameras=cameras)
    torch.testing.assert_close(got, by_hand(model, images, cameras), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def sie_gallery(sie_model, tmp_path_factory):
    """A gallery of three Market-named crops embedded with their cameras (c1 -> 0, c3 -> 2, c2 -> 1)."""
    path, _ = sie_model
    folder = tmp_path_factory.mktemp("sie_gallery")
    names = ["0001_c1s1_000001_01.png", "0001_c3s1_000002_01.png", "0002_c2s1_000003_01.png"]
    for name, image in zip(names, random_images(3, seed=5)):
        Image.fromarray(image).save(folder / name)
    out = folder / "g.npz"
    assert main(["extract", str(folder), "--weights", str(path), "--out", str(out), "--device", "cpu",
                 "--no-progress", "--sie-cameras", "market1501"]) == 0
    return out, folder, names


def test_the_service_takes_each_uploads_camera_index(sie_model, sie_gallery, tmp_path):
    pytest.importorskip("fastapi", reason="the service is an optional extra: pip install 'reidkit[serve]'")
    pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")
    from fastapi.testclient import TestClient

    from reidkit.deploy.service import SearchService
    from reidkit.deploy.web import create_app
    _, model = sie_model
    source, folder, names = sie_gallery
    from reidkit.cli import main
    from reidkit.deploy.store import GalleryStore
    gallery = tmp_path / "g.db"                                   # a store: the service adds to it
    assert main(["gallery", "import", str(source), "--out", str(gallery)]) == 0
    api = TestClient(create_app(SearchService(gallery, metadata="market1501")))
    health = api.get("/api/health").json()
    assert health["camera_index_needed"] is True and health["sie_cameras"] == 3
    crop = (folder / names[1]).read_bytes()                     # seen by camera c3: index 2

    def search(**params):
        return api.post("/api/search", params={"k": 3, **params}, files={"image": ("q.png", crop, "image/png")})
    refused = search()
    assert refused.status_code == 422 and "camera_index" in refused.json()["detail"]
    assert search(camera_index=3).status_code == 422 and "outside 0..2" in search(camera_index=3).json()["detail"]
    first = search(camera_index=2).json()["results"][0]
    assert first["name"] == names[1] and first["distance"] < 1e-6          # itself, embedded as the gallery was
    other = {r["name"]: r["distance"] for r in search(camera_index=0).json()["results"]}
    assert other[names[1]] > 1e-5                                         # another camera, another embedding
    image = random_images(1, seed=6)
    buffer = io.BytesIO()
    Image.fromarray(image[0]).save(buffer, format="PNG")
    assert api.post("/api/items", files=[("images", ("a.png", buffer.getvalue(), "image/png"))]).status_code == 422
    added = api.post("/api/items", data={"camera_index": "1"},
                     files=[("images", ("a.png", buffer.getvalue(), "image/png"))]).json()
    stored = GalleryStore(gallery).rows(added["ids"]).vectors
    expected = by_hand(model, image, [1]).numpy()
    np.testing.assert_allclose(stored / np.linalg.norm(stored, axis=1, keepdims=True),
                               expected / np.linalg.norm(expected), atol=1e-4)
