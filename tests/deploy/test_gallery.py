import json

import numpy as np
import pytest
import torch
from PIL import Image

import reidkit
from reidkit.cli import main
from reidkit.data.records import find_images
from reidkit.engine.checkpoint import save_checkpoint
from reidkit.evaluation import compute_distance
from reidkit.models import build_model


def brute_force(queries, gallery, metric, k):
    dist = compute_distance(torch.from_numpy(queries), torch.from_numpy(gallery), metric).numpy()
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 24)).astype(np.float32), rng.normal(size=(9, 24)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_is_the_evaluation_distance(features, metric):
    gallery, queries = features
    index = reidkit.GalleryIndex(gallery, [f"g{i}.jpg" for i in range(300)], metric)
    distances, indices = index.search(queries, k=15)
    want_d, want_i = brute_force(queries, gallery, metric, 15)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ivf_probing_every_list_is_exact(features, metric):
    gallery, queries = features
    index = reidkit.GalleryIndex(gallery, [str(i) for i in range(300)], metric, ivf_lists=6, nprobe=6)
    _, indices = index.search(queries, k=10)
    np.testing.assert_array_equal(indices, brute_force(queries, gallery, metric, 10)[1])
    index.nprobe = 1                                # approximate: still a ranked list of gallery images
    d, i = index.search(queries, k=10)
    assert (np.diff(d, axis=1) >= -1e-6).all() and (i >= -1).all()
    d, i = index.search(queries, k=200)             # more than one list holds: the rest is -1 at distance inf
    assert (i == -1).any() and np.isinf(d[i == -1]).all() and np.isfinite(d[i >= 0]).all()


def test_a_saved_ivf_index_is_loaded_trained(tmp_path, features):
    gallery, queries = features
    index = reidkit.GalleryIndex(gallery, [str(i) for i in range(300)], ivf_lists=6, nprobe=2)
    loaded = reidkit.GalleryIndex.load(index.save(tmp_path / "g.npz"))
    assert loaded._index is not None and loaded._index.nprobe == 2 and loaded._index.is_trained
    for k in (1, 10):
        np.testing.assert_array_equal(loaded.search(queries, k)[1], index.search(queries, k)[1])
    loaded.nprobe = 6
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], brute_force(queries, gallery, "cosine", 10)[1])


def test_adding_in_parts_saving_and_loading(tmp_path, features):
    gallery, queries = features
    paths = [f"g{i}.jpg" for i in range(300)]
    index = reidkit.GalleryIndex(gallery[:100], paths[:100], meta={"arch": "osnet_x0_25"})
    index.add(torch.from_numpy(gallery[100:]), paths[100:])
    assert len(index) == 300 and index.dim == 24
    whole = reidkit.GalleryIndex(gallery, paths)
    np.testing.assert_array_equal(index.search(queries, 5)[1], whole.search(queries, 5)[1])
    loaded = reidkit.GalleryIndex.load(index.save(tmp_path / "g.npz"))
    assert loaded.paths == paths and loaded.meta == {"arch": "osnet_x0_25"} and loaded.metric == "cosine"
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], whole.search(queries, 5)[1])
    assert loaded.search(queries[:1], k=1000)[1].shape == (1, 300)        # k beyond the gallery: all of it


def test_bad_input_is_named(tmp_path, features):
    gallery, _ = features
    with pytest.raises(ValueError, match="300 feature rows but 2 paths"):
        reidkit.GalleryIndex(gallery, ["a", "b"])
    index = reidkit.GalleryIndex(gallery, [str(i) for i in range(300)])
    with pytest.raises(ValueError, match="dimension 8, the gallery 24"):
        index.search(np.zeros((1, 8), dtype=np.float32))
    bad = gallery[:5].copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in rows \[3\]"):
        index.add(bad, list("abcde"))
    with pytest.raises(ValueError, match="metric"):
        reidkit.GalleryIndex(gallery, [str(i) for i in range(300)], "manhattan")
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="x.npz: not a reidkit gallery file"):
        reidkit.GalleryIndex.load(tmp_path / "x.npz")


def test_find_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.jpg", "a/b/1.png", "a/notes.txt", "c.JPG"):
        (tmp_path / name).write_bytes(b"x")
    assert find_images([tmp_path / "a", tmp_path / "c.JPG"]) == [tmp_path / "a/2.jpg", tmp_path / "a/b/1.png",
                                                                  tmp_path / "c.JPG"]
    with pytest.raises(FileNotFoundError, match="nope: no such file or folder"):
        find_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no images"):
        find_images([tmp_path / "empty"])


@pytest.mark.slow
def test_extract_then_search_from_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    save_checkpoint({"state_dict": build_model("osnet_x0_25", 3).state_dict()}, weights)
    rng = np.random.default_rng(0)
    (tmp_path / "gallery" / "cam2").mkdir(parents=True)
    for i in range(7):
        folder = tmp_path / "gallery" / ("cam2" if i % 2 else "")
        Image.fromarray(rng.integers(0, 255, (80, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "gallery.npz"
    assert main(["extract", str(tmp_path / "gallery"), "--arch", "osnet_x0_25", "--size", "64", "32",
                 "--weights", str(weights), "--out", str(out), "--no-progress"]) == 0
    assert "7 images" in capsys.readouterr().out
    query = tmp_path / "gallery" / "cam2" / "3.png"
    assert main(["search", str(out), str(query), "--top-k", "4", "--json", str(tmp_path / "r.json"),
                 "--picture", str(tmp_path / "r.png")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    matches = result[0]["matches"]
    # the query is in the gallery: it comes first, at distance 0, and the rest follow the model's own ranking
    extractor = reidkit.FeatureExtractor("osnet_x0_25", weights, image_size=(64, 32))
    gallery_paths = [str(p.resolve()) for p in find_images([tmp_path / "gallery"])]
    want_d, want_i = brute_force(extractor([query]).numpy(), extractor(gallery_paths).numpy(), "cosine", 4)
    assert [m["path"] for m in matches] == [gallery_paths[i] for i in want_i[0]]
    assert matches[0]["path"] == str(query.resolve()) and abs(matches[0]["distance"]) < 1e-4
    np.testing.assert_allclose([m["distance"] for m in matches], want_d[0], atol=1e-4)
    assert Image.open(tmp_path / "r.png").size[0] > 5 * 64
    assert main(["search", str(out), str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    # alpha-QE over the index's neighbours: the query (its own nearest, at similarity 1) still ranks first,
    # and the expanded query is what the definition gives
    assert main(["search", str(out), str(query), "--top-k", "4", "--qe", "2", "--json", str(tmp_path / "q.json")]) == 0
    expanded = json.loads((tmp_path / "q.json").read_text())[0]["matches"]
    assert expanded[0]["path"] == str(query.resolve())
    from reidkit.evaluation.expansion import query_expand
    q, g = extractor([query]), extractor(gallery_paths)
    want_d, want_i = brute_force(query_expand(q, g, 2).numpy(), torch.nn.functional.normalize(g, dim=1).numpy(),
                                 "cosine", 4)
    assert [m["path"] for m in expanded] == [gallery_paths[i] for i in want_i[0]]
