"""The same gallery on both backends (issue 49 F): the SQLite store with its live faiss index, and Milvus (here
Milvus Lite, the embedded Milvus that speaks the cluster's client API): the same flat rankings as a brute-force
search of the rows, the same filters, the same deletes, the same service answers."""
import numpy as np
import pytest

from reidkit.cli import main
from reidkit.deploy.live import LiveGallery
from reidkit.deploy.store import GalleryStore, StoreError

pytest.importorskip("pymilvus", reason="the Milvus backend is an optional extra: pip install 'reidkit[milvus]'")
pytest.importorskip("milvus_lite", reason="Milvus Lite: pip install 'pymilvus[milvus-lite]'")

DIM = 16


@pytest.fixture(autouse=True, scope="module")
def stop_milvus_lite():
    """Stop this module's Milvus Lite servers while the test run's log streams are open (at interpreter exit its
    own clean-up logs into closed streams)."""
    yield
    from milvus_lite.server_manager import server_manager_instance
    server_manager_instance.release_all()

META = {"arch": "test", "weights_sha256": "f" * 64}


class Backend:
    """A gallery on one backend: ``writer`` takes adds and deletes, ``searcher`` searches (one object for
    Milvus; the store and a :class:`LiveGallery` for SQLite)."""

    def __init__(self, kind: str, tmp_path, metric: str = "cosine"):
        self.kind = kind
        if kind == "sqlite":
            self.writer = GalleryStore.create(tmp_path / "g.db", metric=metric, index="flat", dim=DIM, meta=META)
            self.searcher = LiveGallery.open(self.writer)
            self.spec = str(tmp_path / "g.db")
        else:
            from reidkit.deploy.milvus import MilvusGallery
            self.spec = f"milvus+lite://{tmp_path / 'milvus.db'}/people"
            self.writer = self.searcher = MilvusGallery.create(self.spec, metric=metric, index="flat", dim=DIM,
                                                               meta=META)


@pytest.fixture(params=["sqlite", "milvus"])
def kind(request) -> str:
    return request.param


def vectors(n, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def brute_force(held: dict[int, tuple], query: np.ndarray, k: int, metric: str, keep=lambda c, t: True) -> list:
    """``[(id, distance)]`` of the ``k`` nearest held rows (id -> (vector, camera, time)), by hand."""
    scored = []
    for i, (v, camera, t) in held.items():
        if not keep(camera, t):
            continue
        if metric == "cosine":
            d = 1 - float(v @ query / np.linalg.norm(v) / np.linalg.norm(query))
        else:
            d = float(((v - query) ** 2).sum())
        scored.append((d, i))
    return [(i, d) for d, i in sorted(scored)[:k]]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rankings_filters_and_deletes_match_a_brute_force_search(kind, metric, tmp_path):
    gallery = Backend(kind, tmp_path, metric)
    rng = np.random.default_rng(1)
    x = vectors(200)
    cameras = [str(i % 4) for i in range(200)]
    times = [float(t) for t in rng.uniform(0, 100, 200)]
    ids, new = gallery.writer.add(x, [f"/g/{i}.png" for i in range(200)], cameras=cameras, times=times)
    assert all(new) and len(set(ids)) == 200
    held = {i: (x[j], cameras[j], times[j]) for j, i in enumerate(ids)}
    q = vectors(1, seed=7)[0]

    def check(k=15, **filters):
        got = gallery.searcher.search(q[None], k, **filters)
        keep = lambda c, t: (not filters.get("cameras") or c in filters["cameras"]) and \
            filters.get("start", -1e9) <= t <= filters.get("end", 1e9)  # noqa: E731
        expected = brute_force(held, q, k, metric, keep)
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert [d for _, d in got] == pytest.approx([d for _, d in expected], rel=1e-4, abs=1e-4)
    check()
    check(cameras=["1", "3"], start=20.0, end=80.0)
    gone = gallery.writer.delete(cameras=["2"], start=0.0, end=50.0)
    expected_gone = sorted(i for i, (_, c, t) in held.items() if c == "2" and t <= 50)
    assert sorted(gone.ids) == expected_gone and expected_gone
    for i in gone.ids:
        del held[i]
    gallery.writer.delete(ids=ids[:5])
    for i in ids[:5]:
        held.pop(i, None)
    check(k=30)
    assert len(gallery.searcher) == len(held)
    assert gallery.searcher.describe(ids[0]) is None
    item = gallery.searcher.describe(ids[10])
    assert (item["path"], item["camera"], item["time"]) == ("/g/10.png", cameras[10], pytest.approx(times[10]))


def test_the_same_path_is_one_item_and_bad_values_are_refused(kind, tmp_path):
    gallery = Backend(kind, tmp_path)
    first, new = gallery.writer.add(vectors(2), ["/a.png", "/b.png"])
    again, new = gallery.writer.add(vectors(2, seed=1), ["/b.png", "/c.png"])
    assert again[0] == first[1] and new == [False, True] and len(gallery.searcher) == 3
    with pytest.raises(StoreError, match="finite"):
        gallery.writer.add(vectors(1), ["/d.png"], times=[float("inf")])
    with pytest.raises(StoreError, match="another model"):
        gallery.writer.add(vectors(1), ["/d.png"], model="0" * 64)
    with pytest.raises(StoreError, match="say what to delete"):
        gallery.writer.delete()
    assert len(gallery.searcher) == 3 and gallery.writer.count(ids=[first[0]]) == 1


def test_the_service_answers_the_same_on_both_backends(tiny_run, tiny_data, tmp_path):
    """extract into each backend, then the same uploads, searches, filters and deletes through the API."""
    pytest.importorskip("fastapi", reason="the service is an optional extra: pip install 'reidkit[serve]'")
    from fastapi.testclient import TestClient

    from reidkit.deploy.service import SearchService
    from reidkit.deploy.web import create_app
    specs = {"sqlite": str(tmp_path / "g.db"), "milvus": f"milvus+lite://{tmp_path / 'm.db'}/crops"}
    answers = {}
    query = sorted((tiny_data / "query").glob("*.jpg"))[0]
    upload = {"image": (query.name, query.read_bytes(), "image/jpeg")}
    for kind, spec in specs.items():
        assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                     "--out", spec, "--no-progress", "--device", "cpu", "--metadata", "market1501"]) == 0
        service = SearchService(spec, uploads=tmp_path / f"added_{kind}")
        api = TestClient(create_app(service))
        health = api.get("/api/health").json()
        plain = api.post("/api/search?k=10", files=upload).json()["results"]
        filtered = api.post("/api/search?k=10&camera=2&start=0&end=1000000", files=upload).json()["results"]
        added = api.post("/api/items", files={"images": (query.name, query.read_bytes(), "image/jpeg")},
                         data={"camera": "9", "time": "5"}).json()
        twice = api.post("/api/items", files={"images": (query.name, query.read_bytes(), "image/jpeg")}).json()
        top = api.post("/api/search?k=1", files=upload).json()["results"][0]
        deleted = api.post("/api/items/delete", json={"cameras": ["9"]}).json()
        after = api.post("/api/search?k=10", files=upload).json()["results"]
        answers[kind] = {
            "cameras": health["cameras"], "images": health["images"],
            "plain": [(r["name"], round(r["distance"], 4)) for r in plain],
            "filtered": [(r["name"], r["camera"]) for r in filtered],
            "twice": (twice["ids"] == added["ids"], added["new"], twice["new"]),
            "top_is_added": top["id"] == added["ids"][0] and top["camera"] == "9",
            "deleted": (deleted["deleted"] == added["ids"], deleted["files_removed"]),
            "after": [r["name"] for r in after], "search_cli": None}
        assert main(["gallery", "delete", spec, "--camera", "1", "--yes"]) == 0
        answers[kind]["left"] = len(service.live)
    sqlite, milvus = answers["sqlite"], answers["milvus"]
    assert sqlite == milvus
    assert sqlite["twice"] == (True, [True], [False]) and sqlite["top_is_added"] and sqlite["deleted"] == (True, 1)
    assert sqlite["after"] == [name for name, _ in sqlite["plain"]]
    assert all(camera == "2" for _, camera in sqlite["filtered"]) and sqlite["filtered"]


def test_milvus_specs_ids_and_id_clashes(tmp_path, monkeypatch):
    from reidkit.deploy import milvus
    assert milvus.parse_spec("milvus://db.example:19530/people") == ("http://db.example:19530", "people")
    assert milvus.parse_spec(f"milvus+lite://{tmp_path}/g.db/people") == (f"{tmp_path}/g.db", "people")
    for bad in ("milvus://host:19530", "milvus://host/bad-name!", "milvus+lite://people"):
        with pytest.raises(ValueError, match="COLLECTION|NAME"):
            milvus.parse_spec(bad)
    ids = [milvus.path_id(f"/crops/{i}.png") for i in range(1000)]
    assert len(set(ids)) == 1000 and max(ids) < 2 ** 53 and min(ids) >= 0      # exact in a JavaScript number
    gallery = milvus.MilvusGallery.create(f"milvus+lite://{tmp_path / 'm.db'}/clash", metric="cosine",
                                          index="flat", dim=DIM, meta=META)
    gallery.add(vectors(1), ["/one.png"])
    monkeypatch.setattr(milvus, "path_id", lambda path: gallery.search(vectors(1), 1)[0][0])   # every path: one id
    with pytest.raises(StoreError, match="same 53-bit id") as e:
        gallery.add(vectors(1, seed=3), ["/two.png"])
    assert e.value.status == 409 and len(gallery) == 1 and gallery.describe(gallery.search(vectors(1), 1)[0][0])[
        "path"] == "/one.png"
    with pytest.raises(ValueError, match="Milvus Lite is one process"):
        from reidkit.deploy.web import serve
        serve(f"milvus+lite://{tmp_path / 'm.db'}/clash", workers=2)
