"""The search service (issue 38): its JSON API with an in-process client, against the gallery's own search;
filters inside the index; every bad input a 4xx with a message; the token; adds that lose nothing."""
import io
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service is an optional extra: pip install 'reidkit[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from reidkit.cli import main  # noqa: E402
from reidkit.deploy import GalleryIndex  # noqa: E402
from reidkit.deploy.service import SearchService, create_app  # noqa: E402


@pytest.fixture(scope="module")
def gallery(tiny_run, tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("service") / "gallery.npz"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


@pytest.fixture
def fresh(gallery, tmp_path) -> Path:
    """A copy of the gallery a test may add to."""
    copy = tmp_path / "gallery.npz"
    copy.write_bytes(gallery.read_bytes())
    return copy


def client(path, token=None, **options) -> tuple[TestClient, SearchService]:
    service = SearchService(path, metadata="market1501", **options)
    return TestClient(create_app(service, token)), service


def jpeg(path) -> bytes:
    return Path(path).read_bytes()


def query_file(tiny_data) -> Path:
    return sorted((tiny_data / "query").glob("*.jpg"))[0]


def test_health_describes_the_gallery_and_its_cameras(gallery):
    api, service = client(gallery)
    body = api.get("/api/health").json()
    assert body["images"] == len(GalleryIndex.load(gallery)) and body["model"] == "resnet18_bnneck"
    assert body["cameras"] == ["1", "2", "3"] and body["time_range"][0] <= body["time_range"][1]
    assert "<title>reidkit search</title>" in api.get("/").text


def test_a_search_by_upload_ranks_as_the_gallery_search_does(gallery, tiny_data):
    api, service = client(gallery)
    q = query_file(tiny_data)
    body = api.post("/api/search?k=7", files={"image": (q.name, jpeg(q), "image/jpeg")}).json()
    features = service.extractor([q]).numpy()
    distances, ids = GalleryIndex.load(gallery).search(features, 7)
    assert [r["id"] for r in body["results"]] == ids[0].tolist()
    assert [r["rank"] for r in body["results"]] == list(range(1, 8))
    assert [r["distance"] for r in body["results"]] == pytest.approx(distances[0].tolist(), abs=1e-5)
    assert all(r["camera"] in ("1", "2", "3") and r["time"] is not None for r in body["results"])


def test_max_distance_keeps_the_matches_nearer_than_it(gallery, tiny_data):
    api, _ = client(gallery)
    q = query_file(tiny_data)
    upload = {"image": (q.name, jpeg(q), "image/jpeg")}
    ranked = api.post("/api/search?k=10", files=upload).json()["results"]
    cut = (ranked[3]["distance"] + ranked[4]["distance"]) / 2
    kept = api.post(f"/api/search?k=10&max_distance={cut}", files=upload).json()["results"]
    assert kept == ranked[:4]
    similar = api.get(f"/api/items/{ranked[0]['id']}/similar?k=10").json()["results"]
    cut = (similar[1]["distance"] + similar[2]["distance"]) / 2
    assert api.get(f"/api/items/{ranked[0]['id']}/similar?k=10&max_distance={cut}").json()["results"] == similar[:2]
    refused = api.post("/api/search?max_distance=0", files=upload)
    assert refused.status_code == 422 and "max_distance" in refused.json()["detail"]


def test_filters_restrict_the_search_inside_the_index(gallery, tiny_data):
    api, service = client(gallery)
    q = query_file(tiny_data)
    lo, hi = (float(x) for x in np.quantile(service.metadata.times, [0.2, 0.8]))       # a window in the middle
    body = api.post(f"/api/search?k=50&camera=2&camera=3&start={lo}&end={hi}",
                    files={"image": (q.name, jpeg(q), "image/jpeg")}).json()
    index, meta = GalleryIndex.load(gallery), service.metadata
    allowed = np.array([c in ("2", "3") and lo <= t <= hi for c, t in zip(meta.cameras, meta.times)])
    assert 0 < allowed.sum() < len(allowed)
    features = service.extractor([q]).numpy()
    d = ((index.features - features / np.linalg.norm(features)) ** 2).sum(1) / 2    # cosine distance, by hand
    expected = [int(i) for i in np.argsort(d, kind="stable") if allowed[i]][:50]
    assert [r["id"] for r in body["results"]] == expected
    assert all(r["camera"] in ("2", "3") and lo <= r["time"] <= hi for r in body["results"])
    none = api.post("/api/search?camera=9", files={"image": (q.name, jpeg(q), "image/jpeg")}).json()
    assert none["results"] == []


def test_a_search_from_a_gallery_item_leaves_the_item_out(gallery):
    api, service = client(gallery)
    body = api.get("/api/items/3/similar?k=5").json()
    index = GalleryIndex.load(gallery)
    _, ids = index.search(index.vectors(np.array([3])), 6)
    assert [r["id"] for r in body["results"]] == [i for i in ids[0].tolist() if i != 3][:5]
    assert body["query"]["id"] == 3 and body["query"]["camera"] in ("1", "2", "3")


def test_images_are_served_by_id_only(gallery):
    api, service = client(gallery)
    got = api.get("/api/items/0/image")
    assert got.status_code == 200 and got.content == Path(GalleryIndex.load(gallery).paths[0]).read_bytes()
    assert api.get(f"/api/items/{len(service.index)}/image").status_code == 404
    assert api.get("/api/items/-1/image").status_code == 404
    assert api.get("/api/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)


def test_every_bad_input_is_a_4xx_with_a_message(gallery, tmp_path):
    api, service = client(gallery, max_upload_bytes=200_000, max_pixels=1_000_000)

    def upload(data: bytes, url="/api/search"):
        response = api.post(url, files={"image": ("x.jpg", data, "image/jpeg")})
        assert 400 <= response.status_code < 500 and response.json()["detail"], response.text
        return response.status_code, response.json()["detail"]
    assert upload(b"")[0] in (400, 422)
    assert upload(b"not an image at all")[1].startswith("the upload is not an image")
    big = io.BytesIO()
    Image.new("RGB", (4000, 4000), (9, 9, 9)).save(big, format="PNG")        # small file, 16 Mpixel: a bomb
    assert upload(big.getvalue()) == (413, "the image is 4000 x 4000 pixels; the limit is 1000000 pixels")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(noise, "PNG")
    assert upload(noise.getvalue())[0] == 413                               # over 200,000 bytes
    good = io.BytesIO()
    Image.new("RGB", (32, 64), (200, 10, 10)).save(good, format="JPEG")
    assert upload(good.getvalue()[:40])[0] == 400                           # truncated
    assert api.post("/api/search?k=0", files={"image": ("x.jpg", good.getvalue(), "image/jpeg")}).status_code == 422
    assert api.post("/api/search?k=5000", files={"image": ("x.jpg", good.getvalue(), "image/jpeg")}).status_code == 422
    assert api.post("/api/search?start=5&end=1",
                    files={"image": ("x.jpg", good.getvalue(), "image/jpeg")}).status_code == 422
    assert api.post("/api/search").status_code == 422                        # no file
    assert api.get("/api/items/abc").status_code == 422
    assert api.get("/api/stats").json()["refused"] >= 4


def test_a_token_guards_every_api_call(gallery):
    api, _ = client(gallery, token="s3cret")
    assert api.get("/api/health").status_code == 401
    assert api.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/api/health", headers={"Authorization": "Bearer s3cret"}).json()["token_required"] is True
    assert api.get("/api/items/0/image?token=s3cret").status_code == 200
    assert api.get("/").status_code == 200                                  # the page asks for the token itself


def test_added_crops_are_kept_searchable_and_survive_a_restart(fresh, tiny_data, tmp_path):
    api, service = client(fresh, uploads=tmp_path / "added")
    before = len(service.index)
    crops = sorted((tiny_data / "query").glob("*.jpg"))[:2]
    files = [("images", (c.name, jpeg(c), "image/jpeg")) for c in crops]
    body = api.post("/api/items", files=files, data={"camera": "9", "time": "123.5"}).json()
    assert body["ids"] == [before, before + 1] and body["images"] == before + 2
    assert api.get(f"/api/items/{before}").json() == {"id": before, "name": Path(service.index.paths[before]).name,
                                                      "camera": "9", "time": 123.5}
    stored = sorted((tmp_path / "added").iterdir())
    assert len(stored) == 2 and all(len(p.stem) == 32 and p.suffix == ".png" for p in stored)
    found = api.post("/api/search?k=1&camera=9", files={"image": (crops[0].name, jpeg(crops[0]), "image/jpeg")})
    assert found.json()["results"][0]["id"] in (before, before + 1)
    again = SearchService(fresh, metadata="market1501")                      # the file written, its metadata kept
    assert len(again.index) == before + 2 and again.metadata.of(before + 1) == {"camera": "9", "time": 123.5}


def test_two_clients_adding_at_once_lose_nothing(fresh, tiny_data, tmp_path):
    api, service = client(fresh, uploads=tmp_path / "added")
    before = len(service.index)
    crops = sorted((tiny_data / "bounding_box_train").glob("*.jpg"))[:8]
    errors = []

    def add(part):
        try:
            response = api.post("/api/items", files=[("images", (c.name, jpeg(c), "image/jpeg")) for c in part])
            assert response.status_code == 200, response.text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=add, args=(crops[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(GalleryIndex.load(fresh)) == before + 8 == len(service.index)
    assert api.get("/api/stats").json()["images_added"] == 8
