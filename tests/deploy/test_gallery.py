import json

import numpy as np
import pytest
import torch
from PIL import Image

import reidkit
from reidkit.cli import main
from reidkit.data.records import find_images
from reidkit.deploy import GalleryIndex
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


def random_osnet(tmp_path):
    """A seeded untrained OSNet x0.25 checkpoint (a bare state_dict) and a seeded image generator."""
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    save_checkpoint({"state_dict": build_model("osnet_x0_25", 3).state_dict()}, weights)
    return weights, np.random.default_rng(0)


@pytest.mark.slow
def test_extract_then_search_from_the_command_line(tmp_path, capsys):
    weights, rng = random_osnet(tmp_path)
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
    # --max-distance keeps the matches strictly nearer than D: the ranked list cut between its 2nd and 3rd match
    cut = (matches[1]["distance"] + matches[2]["distance"]) / 2
    assert main(["search", str(out), str(query), "--top-k", "4", "--max-distance", str(cut),
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())[0]["matches"] == matches[:2]
    assert main(["search", str(out), str(query), "--max-distance", "0"]) == 2


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Vectors around ``clusters`` centres (as embeddings of identities are)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


def test_hnsw_with_a_wide_search_is_exact_on_a_small_gallery(features):
    gallery, queries = features
    index = reidkit.GalleryIndex(gallery, [str(i) for i in range(300)], index="hnsw", ef_search=300)
    distances, indices = index.search(queries, k=10)
    want_d, want_i = brute_force(queries, gallery, "cosine", 10)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_allclose(distances, want_d, atol=1e-4)
    assert index.description == "HNSW32"


def test_ivfpq_is_compressed_and_finds_the_neighbours():
    data = clustered(12050)
    gallery, queries = data[:12000], data[12000:]
    paths = [str(i) for i in range(len(gallery))]
    exact = brute_force(queries, gallery, "cosine", 10)[1]
    pq = reidkit.GalleryIndex(gallery, paths, index="ivfpq", ivf_lists=32, nprobe=32, refine=20)
    flat = reidkit.GalleryIndex(gallery, paths)
    assert recall_at(pq.search(queries, 10)[1], exact) >= 0.9    # the 200 best codes re-ranked on 8-bit vectors
    assert pq.description == "IVF32_HNSW32,PQ4,Refine(SQ8)"              # dim 32 / 8 bytes of PQ code
    assert pq.memory_bytes() < 0.5 * flat.memory_bytes()
    unit = gallery[:5] / np.linalg.norm(gallery[:5], axis=1, keepdims=True)
    np.testing.assert_allclose(pq.vectors(np.arange(5)), unit, atol=0.02)  # decoded: close, not exact
    with pytest.raises(ValueError, match="pq_bytes=5 must divide the feature dimension 32"):
        reidkit.GalleryIndex(gallery, paths, index="ivfpq", pq_bytes=5).search(queries)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq", "hnswpq"])
def test_adding_to_a_built_index_keeps_what_it_learnt(tmp_path, kind):
    gallery = clustered(4000)
    paths = [f"g{i}" for i in range(4000)]
    index = reidkit.GalleryIndex(gallery[:3000], paths[:3000], index=kind, nprobe=64, ef_search=200)
    index.search(gallery[:1])                                              # built (and trained) here
    import faiss
    ivf = faiss.try_extract_index_ivf(index._index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist) if ivf is not None else None
    index.add(gallery[3000:], paths[3000:])
    if ivf is not None:                                                    # the clusters are not learnt again
        np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist), centroids)
    assert len(index) == 4000
    _, found = index.search(gallery[3000:3020], k=1)                       # an added image is its own nearest
    assert (found[:, 0] == np.arange(3000, 3020)).mean() >= 0.95
    loaded = reidkit.GalleryIndex.load(index.save(tmp_path / "g.npz"))
    assert loaded.paths == paths and loaded.description == index.description
    np.testing.assert_array_equal(loaded.search(gallery[:20], 10)[1], index.search(gallery[:20], 10)[1])


def test_a_first_format_gallery_still_loads(tmp_path, features):
    gallery, queries = features
    header = {"format": 1, "metric": "cosine", "ivf_lists": None, "nprobe": 8, "meta": {"arch": "x"}}
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, features=gallery, paths=np.array([str(i) for i in range(300)]),
                 header=np.array(json.dumps(header)))
    old = reidkit.GalleryIndex.load(tmp_path / "old.npz")
    assert old.meta == {"arch": "x"} and len(old) == 300
    np.testing.assert_array_equal(old.search(queries, 5)[1], brute_force(queries, gallery, "cosine", 5)[1])


def test_index_settings_are_checked(features):
    gallery, queries = features
    paths = [str(i) for i in range(300)]
    with pytest.raises(ValueError, match="ivf_lists must be between 1 and the gallery size 300, got 500"):
        reidkit.GalleryIndex(gallery, paths, ivf_lists=500).search(queries)
    with pytest.raises(ValueError, match="faiss cannot build 'IVF9,Nonsense'"):
        reidkit.GalleryIndex(gallery, paths, index="IVF9,Nonsense").search(queries)
    with pytest.raises(ValueError, match="ef_search must be at least 1"):
        reidkit.GalleryIndex(gallery, paths, index="hnsw", ef_search=0)
    with pytest.raises(ValueError, match="refine must be at least 1"):
        reidkit.GalleryIndex(gallery, paths, index="ivfpq").refine = 0


@pytest.mark.slow
def test_extract_adds_to_an_existing_gallery(tmp_path, capsys):
    weights, rng = random_osnet(tmp_path)
    for folder, count in (("first", 5), ("second", 4)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (80, 40, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    out = tmp_path / "g.npz"
    assert main(["extract", str(tmp_path / "first"), "--arch", "osnet_x0_25", "--size", "64", "32", "--weights",
                 str(weights), "--out", str(out), "--index", "hnsw", "--no-progress"]) == 0
    # the second folder, embedded with the gallery's own model and size; the first folder again is left out
    assert main(["extract", str(tmp_path / "second"), str(tmp_path / "first"), "--add-to", str(out),
                 "--no-progress"]) == 0
    assert "5 images already in" in capsys.readouterr().out
    gallery = reidkit.GalleryIndex.load(out)
    everything = sorted((tmp_path / "first").glob("*.png")) + sorted((tmp_path / "second").glob("*.png"))
    assert sorted(gallery.paths) == sorted(str(p.resolve()) for p in everything)
    assert gallery.description == "HNSW32"
    extractor = reidkit.FeatureExtractor("osnet_x0_25", weights, image_size=(64, 32))
    added = str((tmp_path / "second" / "2.png").resolve())
    _, found = gallery.search(extractor([added]).numpy(), k=1)
    assert gallery.paths[found[0, 0]] == added                   # embedded as the first images were
    assert main(["extract", str(tmp_path / "second"), "--add-to", str(out), "--arch", "osnet_x0_25"]) == 2
    assert "the gallery records its model" in capsys.readouterr().err


def test_kmeans_converges_to_the_means_of_its_clusters():
    from reidkit.deploy.gallery import kmeans
    rng = np.random.default_rng(0)
    blobs = 20 * rng.normal(size=(16, 8))
    points = (blobs[rng.integers(0, 16, 2000)] + rng.normal(size=(2000, 8))).astype(np.float32)
    found = kmeans(points, 16, iterations=50)
    assign = np.linalg.norm(points[:, None] - found[None], axis=2).argmin(1)
    for c in np.unique(assign):                             # Lloyd's fixed point: every centre is its mean
        np.testing.assert_allclose(found[c], points[assign == c].mean(0), atol=1e-3)
    def sse(centres):
        return float((np.linalg.norm(points[:, None] - centres[None], axis=2).min(1) ** 2).sum())
    start = points[rng.choice(2000, 16, replace=False)]
    assert sse(found) < sse(start)
    again = kmeans(np.repeat(points[:2], 5, axis=0), 3)     # fewer distinct points than k: still finite
    assert np.isfinite(again).all()


def test_extract_takes_recipe_overrides_as_key_value_words_like_every_command(tmp_path, caplog):
    """`reidkit extract IMAGES --recipe R data.height=64 data.width=32`: the words that look like dotted overrides
    (and name no file) are overrides; the older --set spelling still works, with a note."""
    from reidkit.deploy.commands import split_overrides
    odd = tmp_path / "a=b.png"
    odd.write_bytes(b"")
    assert split_overrides([str(tmp_path), "data.height=64", str(odd), "model.last_stride=2"]) == (
        [str(tmp_path), str(odd)], ["data.height=64", "model.last_stride=2"])
    weights, rng = random_osnet(tmp_path)
    (tmp_path / "gallery").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 40, 3), dtype=np.uint8)).save(tmp_path / "gallery" / f"{i}.png")
    recipe = ["--recipe", "osnet_x0_25_cuhk03", "--weights", str(weights), "--no-progress"]
    for out, words in ((tmp_path / "words.npz", ["data.height=64", "data.width=32"]),
                       (tmp_path / "set.npz", ["--set", "data.height=64", "data.width=32"])):
        assert main(["extract", str(tmp_path / "gallery"), *words, *recipe, "--out", str(out)]) == 0
        assert GalleryIndex.load(out).meta["image_size"] == [64, 32]
    assert "--set is the older spelling" in caplog.text
    assert main(["extract", "data.height=64", "--arch", "osnet_x0_25", "--weights", str(weights),
                 "--out", str(tmp_path / "x.npz")]) == 2


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "hnswpq", "ivfpq"])
def test_a_filtered_search_searches_only_the_allowed_images_inside_the_index(kind):
    """The search service's camera / time filters: ``allowed`` restricts faiss's search (ID selectors) or the exact
    search's distances; an exhaustive setting of each index finds exactly the exact filtered neighbours."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((800, 32)).astype(np.float32)
    q = rng.standard_normal((4, 32)).astype(np.float32)
    allowed = rng.random(800) < 0.25
    index = GalleryIndex(x, [f"{i}.jpg" for i in range(800)], index=kind, ivf_lists=8 if "ivf" in kind else None,
                         pq_bytes=8 if "pq" in kind else None, ef_search=800, nprobe=8, refine=100)
    d, ids = index.search(q, 10, allowed=allowed)
    assert all(allowed[i] for i in ids.ravel() if i >= 0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    exact = [[int(j) for j in np.argsort(-(xn @ row)) if allowed[j]][:10] for row in qn]
    if kind in ("flat", "ivf", "hnsw"):                    # exhaustive settings: exactly the filtered neighbours
        assert ids.tolist() == exact
    else:                                                  # compressed codes: near, and only allowed ones
        assert np.mean([len(set(a) & set(b)) for a, b in zip(ids.tolist(), exact)]) >= 7
    none = index.search(q, 5, allowed=np.zeros(800, dtype=bool))[1]
    assert (none == -1).all()
    with pytest.raises(ValueError, match="mask of the 800"):
        index.search(q, 5, allowed=allowed[:10])
