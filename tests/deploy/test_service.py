"""The search service (issues 38 and 49): its JSON API with an in-process client over a gallery store (and a
read-only gallery file), against the gallery's own search; filters inside the index; every bad input a 4xx with
a message; tokens and rights; adds that lose nothing whoever else writes; deletes; the audit."""
import hashlib
import io
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service is an optional extra: pip install 'reidkit[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from reidkit.cli import main  # noqa: E402
from reidkit.deploy import GalleryIndex  # noqa: E402
from reidkit.deploy.access import Users, add_user  # noqa: E402
from reidkit.deploy.live import LiveGallery  # noqa: E402
from reidkit.deploy.service import SearchService  # noqa: E402
from reidkit.deploy.store import GalleryStore  # noqa: E402
from reidkit.deploy.web import create_app  # noqa: E402


@pytest.fixture(scope="module")
def gallery(tiny_run, tiny_data, tmp_path_factory) -> Path:
    """A gallery file (.npz): served read-only."""
    out = tmp_path_factory.mktemp("service") / "gallery.npz"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def built_store(tiny_run, tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("service_store") / "gallery.db"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(out), "--no-progress", "--device", "cpu", "--metadata", "market1501"]) == 0
    return out


@pytest.fixture
def store(built_store, tmp_path) -> Path:
    """A copy of the gallery store (and its snapshot) that a test may write to."""
    copy = tmp_path / "gallery.db"
    with sqlite3.connect(built_store) as source, sqlite3.connect(copy) as target:
        source.backup(target)                      # the rows, wherever they are (the database or its WAL)
    copy.with_name("gallery.db.index").write_bytes(built_store.with_name("gallery.db.index").read_bytes())
    return copy


def client(path, token=None, users=None, **options) -> tuple[TestClient, SearchService]:
    service = SearchService(path, metadata="market1501", **options)
    return TestClient(create_app(service, token, users)), service


def upload(path: Path, field="image") -> dict:
    return {field: (path.name, path.read_bytes(), "image/jpeg")}


def query_file(tiny_data) -> Path:
    return sorted((tiny_data / "query").glob("*.jpg"))[0]


def test_health_describes_the_gallery_and_its_cameras(gallery, store):
    for path, kind in ((gallery, "file (read-only)"), (store, "sqlite")):
        api, service = client(path)
        body = api.get("/api/health").json()
        assert body["images"] == len(GalleryIndex.load(gallery)) and body["model"] == "resnet18_bnneck"
        assert body["cameras"] == ["1", "2", "3"] and body["time_range"][0] <= body["time_range"][1]
        assert body["store"] == kind and body["writable"] == (kind == "sqlite")
    assert "<title>reidkit search</title>" in api.get("/").text


def test_a_search_by_upload_ranks_as_the_gallery_search_does(gallery, store, tiny_data):
    q = query_file(tiny_data)
    file_index = GalleryIndex.load(gallery)
    for path, first_id in ((gallery, 0), (store, 1)):        # a file's items are 0-based, a store's ids from 1
        api, service = client(path)
        body = api.post("/api/search?k=7", files=upload(q)).json()
        distances, ids = file_index.search(service.extractor([q]).numpy(), 7)
        assert [r["id"] for r in body["results"]] == (ids[0] + first_id).tolist()
        assert [r["rank"] for r in body["results"]] == list(range(1, 8))
        assert [r["distance"] for r in body["results"]] == pytest.approx(distances[0].tolist(), abs=1e-5)
        assert all(r["camera"] in ("1", "2", "3") and r["time"] is not None for r in body["results"])


def test_an_upload_ranks_exactly_as_reidkit_search_ranks_the_same_file(store, tmp_path, tiny_data):
    """Uploads are decoded by reidkit's reader (EXIF orientation, 16-bit): a sideways JPEG and a 16-bit PNG give
    the CLI's ranking, distances included."""
    crop = Image.open(query_file(tiny_data)).convert("RGB")
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                                            # rotate 90 degrees to show it upright
    crop.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif.tobytes(), quality=95)
    deep = tmp_path / "deep.png"
    grey = (np.asarray(crop.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey).save(deep)                              # mode I;16
    assert Image.open(deep).mode.startswith("I;16")
    api, _ = client(store)
    for file in (sideways, deep):
        out = tmp_path / f"{file.stem}.json"
        assert main(["search", str(store), str(file), "--top-k", "10", "--json", str(out), "--device", "cpu"]) == 0
        import json
        cli = json.loads(out.read_text())[0]["matches"]
        served = api.post("/api/search?k=10", files=upload(file)).json()["results"]
        assert [Path(m["path"]).name for m in cli] == [r["name"] for r in served]
        assert [m["distance"] for m in cli] == pytest.approx([r["distance"] for r in served], abs=1e-5)


def test_max_distance_keeps_the_matches_nearer_than_it(store, tiny_data):
    api, _ = client(store)
    q = query_file(tiny_data)
    ranked = api.post("/api/search?k=10", files=upload(q)).json()["results"]
    cut = (ranked[3]["distance"] + ranked[4]["distance"]) / 2
    assert api.post(f"/api/search?k=10&max_distance={cut}", files=upload(q)).json()["results"] == ranked[:4]
    similar = api.get(f"/api/items/{ranked[0]['id']}/similar?k=10").json()["results"]
    cut = (similar[1]["distance"] + similar[2]["distance"]) / 2
    assert api.get(f"/api/items/{ranked[0]['id']}/similar?k=10&max_distance={cut}").json()["results"] == similar[:2]
    refused = api.post("/api/search?max_distance=0", files=upload(q))
    assert refused.status_code == 422 and "max_distance" in refused.json()["detail"]


def test_filters_restrict_the_search_inside_the_index(store, tiny_data):
    api, service = client(store)
    q = query_file(tiny_data)
    live = service.live
    times = live.times.values
    lo, hi = (float(x) for x in np.quantile(times, [0.2, 0.8]))       # a window in the middle
    body = api.post(f"/api/search?k=50&camera=2&camera=3&start={lo}&end={hi}", files=upload(q)).json()
    cameras = [live.camera_names[c] for c in live.camera_codes.values]
    allowed = np.array([c in ("2", "3") and lo <= t <= hi for c, t in zip(cameras, times)])
    assert 0 < allowed.sum() < len(allowed)
    features = service.extractor([q]).numpy()
    vectors = live.index.features
    d = ((vectors - features / np.linalg.norm(features)) ** 2).sum(1) / 2    # cosine distance, by hand
    expected = [int(live.ids.values[i]) for i in np.argsort(d, kind="stable") if allowed[i]][:50]
    assert [r["id"] for r in body["results"]] == expected
    assert all(r["camera"] in ("2", "3") and lo <= r["time"] <= hi for r in body["results"])
    assert api.post("/api/search?camera=9", files=upload(q)).json()["results"] == []


def test_a_search_from_a_gallery_item_leaves_the_item_out(store):
    api, service = client(store)
    body = api.get("/api/items/4/similar?k=5").json()
    live = LiveGallery.open(store)
    expected = [i for i, _ in live.search(live.vector(4), 6) if i != 4][:5]
    assert [r["id"] for r in body["results"]] == expected
    assert body["query"]["id"] == 4 and body["query"]["camera"] in ("1", "2", "3")


def test_images_are_served_by_id_only(store):
    api, service = client(store)
    got = api.get("/api/items/1/image")
    assert got.status_code == 200 and got.content == Path(service.live.paths[0]).read_bytes()
    assert api.get(f"/api/items/{len(service.live) + 1}/image").status_code == 404
    assert api.get("/api/items/0/image").status_code == 404
    assert api.get("/api/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)


def test_every_bad_input_is_a_4xx_with_a_message(store):
    api, service = client(store, max_upload_bytes=200_000, max_pixels=1_000_000)

    def send(data: bytes, url="/api/search"):
        response = api.post(url, files={"image": ("x.jpg", data, "image/jpeg")})
        assert 400 <= response.status_code < 500 and response.json()["detail"], response.text
        return response.status_code, response.json()["detail"]
    assert send(b"")[0] in (400, 422)
    assert send(b"not an image at all")[1].startswith("the upload is not an image")
    big = io.BytesIO()
    Image.new("RGB", (4000, 4000), (9, 9, 9)).save(big, format="PNG")        # small file, 16 Mpixel: a bomb
    status, detail = send(big.getvalue())
    assert status == 413 and "4000x4000 pixels" in detail and "1000000 pixels" in detail
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(noise, "PNG")
    assert send(noise.getvalue())[0] == 413                               # over 200,000 bytes
    good = io.BytesIO()
    Image.new("RGB", (32, 64), (200, 10, 10)).save(good, format="JPEG")
    assert send(good.getvalue()[:40])[0] == 400                           # truncated
    image = {"image": ("x.jpg", good.getvalue(), "image/jpeg")}
    for query in ("k=0", "k=5000", "start=5&end=1", "start=nan", "end=inf", "max_distance=nan"):
        response = api.post(f"/api/search?{query}", files=image)
        assert response.status_code == 422, (query, response.text)
    assert api.post("/api/search").status_code == 422                        # no file
    assert api.get("/api/items/abc").status_code == 422
    for when in ("inf", "nan", "-inf"):
        response = api.post("/api/items", files={"images": ("x.jpg", good.getvalue(), "image/jpeg")},
                            data={"time": when})
        assert response.status_code == 422, (when, response.text)
    assert len(service.live) == len(GalleryStore(store))                    # nothing was added
    assert api.get("/api/stats").json()["refused"] >= 4


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(store):
    api, service = client(store, max_upload_bytes=1 << 20)
    before = api.get("/api/stats").json()
    huge = b"\0" * (50 << 20)
    response = api.post("/api/search", content=huge, headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]
    sent = []

    def stream():                                        # no Content-Length: refused while it streams
        for _ in range(50):
            sent.append(1)
            yield b"\0" * (1 << 20)
    response = api.post("/api/items", content=stream(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413
    assert api.get("/api/stats").json()["searches"] == before["searches"]


def test_tokens_and_rights(store, tmp_path):
    api, _ = client(store, token="s3cret")
    assert api.get("/api/health").status_code == 401
    assert api.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/api/health", headers={"Authorization": "Bearer s3cret"}).json()["token_required"] is True
    assert api.get("/api/items/1/image?token=s3cret").status_code == 200
    assert api.get("/").status_code == 200                                  # the page asks for the token itself
    with pytest.raises(ValueError, match="empty"):
        client(store, token="")                                             # an unset variable is not "no token"
    users = tmp_path / "users.toml"
    viewer = add_user(users, "viewer", ["search"])
    clerk = add_user(users, "clerk", ["search", "add", "delete"])
    assert viewer not in users.read_text() and hashlib.sha256(viewer.encode()).hexdigest() in users.read_text()
    api, _ = client(store, users=Users.load(users))
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    health = api.get("/api/health", headers=as_viewer).json()
    assert health["user"] == "viewer" and health["rights"] == ["search"]
    assert api.get("/api/items/2/similar", headers=as_viewer).status_code == 200
    refused = api.delete("/api/items/2", headers=as_viewer)
    assert refused.status_code == 403 and "may not delete" in refused.json()["detail"]
    assert api.delete("/api/items/2", headers={"Authorization": f"Bearer {clerk}"}).status_code == 200
    lines = GalleryStore(store).audit_rows()
    assert [(r["user"], r["action"], r["results"]) for r in lines] == [("clerk", "delete", 1)]  # searches: queued


def test_every_search_add_and_delete_is_audited(store, tiny_data, capsys):
    api, service = client(store)
    q = query_file(tiny_data)
    api.post("/api/search?k=3&camera=2", files=upload(q))
    api.get("/api/items/3/similar?k=4")
    added = api.post("/api/items", files=upload(q, "images"), data={"camera": "7"}).json()
    api.delete(f"/api/items/{added['ids'][0]}")
    service.upkeep()                                                       # the queued search lines
    lines = GalleryStore(store).audit_rows()
    assert sorted((r["action"], r["results"]) for r in lines) == [("add", 1), ("delete", 1), ("search", 3),
                                                                   ("search", 4)]
    by_upload = next(r for r in lines if r["action"] == "search" and r["filters"].get("cameras"))
    assert by_upload["query_sha256"] == hashlib.sha256(q.read_bytes()).hexdigest()
    assert by_upload["filters"] == {"k": 3, "cameras": ["2"]}
    assert main(["gallery", "audit", str(store), "--action", "search"]) == 0
    assert "(2 lines)" in capsys.readouterr().out


def test_added_crops_are_kept_searchable_and_survive_a_restart(store, tiny_data, tmp_path):
    api, service = client(store, uploads=tmp_path / "added")
    before = len(service.live)
    crops = sorted((tiny_data / "query").glob("*.jpg"))[:2]
    files = [("images", (c.name, c.read_bytes(), "image/jpeg")) for c in crops]
    body = api.post("/api/items", files=files, data={"camera": "9", "time": "123.5", "track": "t7"}).json()
    assert body["new"] == [True, True] and body["images"] == before + 2
    new = body["ids"]
    item = api.get(f"/api/items/{new[0]}").json()
    assert (item["camera"], item["time"], item["track"]) == ("9", 123.5, "t7")
    stored = sorted((tmp_path / "added").iterdir())
    assert len(stored) == 2 and all(len(p.stem) == 32 and p.suffix == ".png" for p in stored)
    found = api.post("/api/search?k=1&camera=9", files=upload(crops[0])).json()
    assert found["results"][0]["id"] == new[0] and found["results"][0]["distance"] < 1e-4
    again = SearchService(store, metadata="market1501")                      # the store, read again
    assert len(again.live) == before + 2 and again.item(new[1])["camera"] == "9"


def test_the_same_bytes_added_twice_are_one_item(store, tiny_data, tmp_path):
    api, service = client(store, uploads=tmp_path / "added")
    crop = query_file(tiny_data)
    first = api.post("/api/items", files=upload(crop, "images")).json()
    second = api.post("/api/items", files=upload(crop, "images")).json()
    assert second["ids"] == first["ids"] and first["new"] == [True] and second["new"] == [False]
    ranked = api.post("/api/search?k=2", files=upload(crop)).json()["results"]
    assert ranked[0]["id"] == first["ids"][0] and ranked[1]["id"] != first["ids"][0]


def test_rows_another_writer_commits_are_kept_and_searched(store, tiny_data, tiny_run, tmp_path):
    """Issue 49 item 1: `extract --add-to` while the service runs, then an add through the service: both kept
    (the service never writes a stale copy; it commits rows)."""
    api, service = client(store, uploads=tmp_path / "added")
    before = len(service.live)
    folder = tmp_path / "more"
    folder.mkdir()
    train = sorted((tiny_data / "bounding_box_train").glob("*.jpg"))[:20]
    for crop in train:
        (folder / crop.name).write_bytes(crop.read_bytes())
    assert main(["extract", str(folder), "--add-to", str(store), "--no-progress", "--device", "cpu"]) == 0
    added = api.post("/api/items", files=upload(query_file(tiny_data), "images")).json()
    assert added["images"] == before + 21 and len(GalleryStore(store)) == before + 21
    hit = api.post("/api/search?k=1", files=upload(folder / train[3].name)).json()["results"][0]
    assert hit["name"] == train[3].name and hit["distance"] < 1e-4


def test_a_failed_add_is_rolled_back_everywhere(store, tiny_data, tmp_path):
    """Issue 49 item 2: the store refuses the add (a full disk, here an SQLite trigger saying so): a 507 with a
    message, no row, no stored crop, and later searches never return it."""
    api, service = client(store, uploads=tmp_path / "added")
    before = len(service.live)
    con = sqlite3.connect(store)
    con.execute("CREATE TRIGGER full BEFORE INSERT ON items BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    con.commit()
    crop = query_file(tiny_data)
    response = api.post("/api/items", files=upload(crop, "images"), data={"camera": "5"})
    assert response.status_code == 507 and "nothing was changed" in response.json()["detail"]
    assert len(service.live) == before == len(GalleryStore(store))
    assert not any((tmp_path / "added").iterdir())
    con.execute("DROP TRIGGER full")
    con.commit()
    assert api.post("/api/search?camera=5", files=upload(crop)).json()["results"] == []
    assert api.post("/api/items", files=upload(crop, "images")).status_code == 200     # then it works


def test_a_file_gallery_is_read_only(gallery, tiny_data):
    api, _ = client(gallery)
    response = api.post("/api/items", files=upload(query_file(tiny_data), "images"))
    assert response.status_code == 409 and "reidkit gallery import" in response.json()["detail"]
    assert api.delete("/api/items/1").status_code == 409


def test_deletes_by_item_camera_time_and_crop(store, tiny_data, tmp_path):
    api, service = client(store, uploads=tmp_path / "added")
    crop = query_file(tiny_data)
    added = api.post("/api/items", files=upload(crop, "images"), data={"camera": "8", "time": "5"}).json()
    stored = next((tmp_path / "added").iterdir())
    ranked = api.post("/api/search?k=5", files=upload(crop)).json()["results"]
    assert ranked[0]["id"] == added["ids"][0]
    gone = api.post("/api/items/delete", json={"crop_sha256": hashlib.sha256(crop.read_bytes()).hexdigest()}).json()
    assert gone["deleted"] == added["ids"] and gone["files_removed"] == 1 and not stored.exists()
    after = api.post("/api/search?k=5", files=upload(crop)).json()["results"]
    assert [r["id"] for r in after] == [r["id"] for r in ranked[1:]] + [after[-1]["id"]]
    assert api.get(f"/api/items/{added['ids'][0]}").status_code == 404
    live = service.live
    cameras = np.array([live.camera_names[c] for c in live.camera_codes.values])
    times = live.times.values
    hit = (cameras == "2") & (times <= np.median(times)) & live.alive.values
    gone = api.post("/api/items/delete", json={"cameras": ["2"], "end": float(np.median(times))}).json()
    assert sorted(gone["deleted"]) == sorted(live.ids.values[hit].tolist()) and hit.sum() > 0
    similar = api.get("/api/items/1/similar?k=200").json()["results"]
    assert not set(gone["deleted"]) & {r["id"] for r in similar}
    assert api.post("/api/items/delete", json={}).status_code == 422


def test_retention_prunes_items_added_before_it(store, tiny_data, tmp_path):
    api, service = client(store, uploads=tmp_path / "added", retention_s=3600)
    added = api.post("/api/items", files=upload(query_file(tiny_data), "images")).json()["ids"][0]
    con = sqlite3.connect(store)
    con.execute("UPDATE items SET added_at = added_at - 7200 WHERE id <= 5")      # five items two hours old
    con.commit()
    service.upkeep()
    assert sorted(service.live.ids.values[~service.live.alive.values].tolist()) == [1, 2, 3, 4, 5]
    assert api.get("/api/items/3").status_code == 404 and api.get(f"/api/items/{added}").status_code == 200
    assert [r["user"] for r in GalleryStore(store).audit_rows(action="delete")] == ["retention"]


def test_searches_go_on_while_an_add_waits_for_the_store(store, tiny_data, tmp_path):
    """Issue 49 B: handlers run in the thread pool: while another process holds the store's write lock, an add
    waits (then a 503 with a message), and health and searches answer meanwhile."""
    api, service = client(store, uploads=tmp_path / "added")
    service.store.busy_s = 4.0
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")                                      # another writer holds the store
    result = {}

    def add():
        result["response"] = api.post("/api/items", files=upload(query_file(tiny_data), "images"))
    adding = threading.Thread(target=add)
    adding.start()
    time.sleep(0.5)
    answered = 0
    while adding.is_alive() and answered < 3:
        assert api.get("/api/health").status_code == 200
        assert api.get("/api/items/2/similar?k=3").status_code == 200
        answered += 1
    assert answered == 3 and adding.is_alive()                               # both answered while the add waited
    adding.join()
    assert result["response"].status_code == 503 and "busy" in result["response"].json()["detail"]
    holder.execute("ROLLBACK")


def test_two_clients_adding_at_once_lose_nothing(store, tiny_data, tmp_path):
    api, service = client(store, uploads=tmp_path / "added")
    before = len(service.live)
    crops = sorted((tiny_data / "bounding_box_train").glob("*.jpg"))[:8]
    errors = []

    def add(part):
        try:
            for c in part:
                response = api.post("/api/items", files=upload(c, "images"))
                assert response.status_code == 200, response.text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=add, args=(crops[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(GalleryStore(store)) == before + 8 == len(service.live)
    assert api.get("/api/stats").json()["images_added"] == 8
