"""The gallery store (issue 49 A, B, D): SQLite rows that every writer commits, the live faiss index over them kept
in step, deletions masked at once and compacted later, snapshots that a restart reads; each checked against a
brute-force search of the rows the store holds."""
import math
import sqlite3

import numpy as np
import pytest

from reidkit.cli import main
from reidkit.deploy import GalleryIndex
from reidkit.deploy.live import LiveGallery
from reidkit.deploy.store import GalleryStore, StoreError, is_store

DIM = 16


def new_store(tmp_path, index="flat", metric="cosine", name="g.db") -> GalleryStore:
    return GalleryStore.create(tmp_path / name, metric=metric, index=index, dim=DIM,
                               meta={"arch": "test", "weights_sha256": "f" * 64})


def vectors(n, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def brute_force(store: GalleryStore, query: np.ndarray, k: int, keep=lambda row: True) -> list[int]:
    """The ``k`` nearest rows of the store by cosine distance, computed from its rows alone."""
    rows = store.rows_after(0)
    x = rows.vectors / np.linalg.norm(rows.vectors, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    d = 1 - x @ q
    order = [i for i in np.argsort(d, kind="stable")
             if keep((rows.cameras[i], rows.times[i]))]
    return [int(rows.ids[i]) for i in order[:k]]


def test_rows_commit_with_growing_ids_and_the_same_path_maps_to_its_item(tmp_path):
    store = new_store(tmp_path)
    x = vectors(5)
    ids, new = store.add(x, [f"/c/{i}.png" for i in range(5)], cameras=["1", "2", None, "1", ""],
                         times=[1.0, None, 3.0, 4.0, 5.0], tracks=["t1", None, None, None, None])
    assert ids == [1, 2, 3, 4, 5] and all(new)
    again, new = store.add(vectors(2, seed=1), ["/c/1.png", "/c/9.png"])
    assert again[0] == 2 and new == [False, True] and again[1] > 5
    rows = store.rows_after(0)
    assert rows.ids.tolist() == [1, 2, 3, 4, 5, again[1]]
    np.testing.assert_array_equal(rows.vectors[:5], x)              # the first add's vector, not the second's
    assert rows.cameras[:5] == ["1", "2", "", "1", ""] and rows.tracks[0] == "t1"
    assert math.isnan(rows.times[1]) and rows.times[2] == 3.0


def test_a_failed_transaction_leaves_nothing(tmp_path):
    """A write that fails mid-way (here: SQLite refuses the third row, as a full disk would) commits none of the
    rows before it, and the live index never sees them."""
    store = new_store(tmp_path)
    store.add(vectors(2), ["/a", "/b"])
    live = LiveGallery.open(store)
    con = sqlite3.connect(store.path)
    con.execute("CREATE TRIGGER full BEFORE INSERT ON items WHEN NEW.path = '/boom' "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    con.commit()
    with pytest.raises(StoreError) as e:
        store.add(vectors(3, seed=2), ["/c", "/d", "/boom"])
    assert e.value.status == 507 and "nothing was changed" in str(e.value)
    assert len(store) == 2 and live.refresh() == 0 and len(live) == 2
    assert store.known_paths(["/c", "/d"]) == set()


def test_features_and_times_are_checked_before_any_row(tmp_path):
    store = new_store(tmp_path)
    with pytest.raises(StoreError, match="finite"):
        store.add(vectors(1), ["/a"], times=[math.inf])
    with pytest.raises(StoreError, match="NaN"):
        store.add(np.full((1, DIM), np.nan, np.float32), ["/a"])
    with pytest.raises(StoreError, match="another model"):
        store.add(vectors(1), ["/a"], model="0" * 64)
    with pytest.raises(StoreError, match="exists already"):
        new_store(tmp_path)
    assert len(store) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_live_search_equals_a_brute_force_search_of_the_rows_through_adds_and_deletes(tmp_path, seed):
    rng = np.random.default_rng(seed)
    store = new_store(tmp_path)
    store.add(vectors(300, seed), [f"/g/{i}" for i in range(300)], cameras=[str(i % 4) for i in range(300)],
              times=rng.uniform(0, 100, 300).tolist())
    live = LiveGallery.open(store)
    other = GalleryStore(store.path)                     # a second writer (another process, in effect)
    other.add(vectors(50, seed + 10), [f"/h/{i}" for i in range(50)], cameras=["9"] * 50, times=[50.0] * 50)
    other.delete(cameras=["1"], start=20, end=80)
    other.delete(ids=[5, 6, 7])
    q = vectors(1, seed + 20)
    assert [i for i, _ in live.search(q, 20)] == brute_force(store, q[0], 20)
    got = [i for i, _ in live.search(q, 15, cameras=["2", "9"], start=10, end=90)]
    assert got == brute_force(store, q[0], 15, lambda r: r[0] in ("2", "9") and 10 <= r[1] <= 90)
    assert len(live) == len(store) and live.dead > 0
    assert all(live.describe(i) is None for i in (5, 6, 7))


def test_a_snapshot_is_read_on_opening_and_rows_since_are_taken_in(tmp_path):
    store = new_store(tmp_path, index="hnsw")
    store.add(vectors(500), [f"/g/{i}" for i in range(500)])
    first = LiveGallery.open(store)
    assert first.save_snapshot() == store.path.with_name("g.db.index")
    store.add(vectors(20, seed=3), [f"/n/{i}" for i in range(20)])     # after the snapshot
    store.delete(ids=[1, 2, 3])
    again = LiveGallery.open(GalleryStore(store.path))
    assert again.index.description == "HNSW32" and len(again) == 517 and again.ids.values[-1] == store.last_id()
    q = vectors(4, seed=9)
    for row in q:
        hits = [i for i, _ in again.search(row[None], 10)]
        assert not {1, 2, 3} & set(hits)
    # the snapshot's index was read, not rebuilt: the same graph answers the same
    rebuilt = LiveGallery.open(GalleryStore(store.path), snapshot=False)
    assert [again.search(r[None], 5) for r in q][0][0][0] in [i for i, _ in rebuilt.search(q[:1], 5)]


def test_a_snapshot_of_another_model_or_a_damaged_one_is_ignored(tmp_path, capsys):
    store = new_store(tmp_path)
    store.add(vectors(30), [f"/g/{i}" for i in range(30)])
    LiveGallery.open(store).save_snapshot()
    store.path.with_name("g.db.index").write_bytes(b"not a snapshot")
    live = LiveGallery.open(GalleryStore(store.path))
    assert len(live) == 30 and "could not be read" in capsys.readouterr().out


def test_compaction_drops_deleted_items_and_keeps_the_rankings(tmp_path):
    store = new_store(tmp_path)
    store.add(vectors(200), [f"/g/{i}" for i in range(200)], cameras=[str(i % 2) for i in range(200)])
    live = LiveGallery.open(store)
    store.delete(cameras=["0"])
    q = vectors(3, seed=5)
    before = [live.search(r[None], 10) for r in q]
    assert live.ids.size == 200 and live.dead == 100
    assert live.compact()
    assert live.ids.size == 100 and live.dead == 0 and len(live.index) == 100
    after = [live.search(r[None], 10) for r in q]
    assert [[i for i, _ in b] for b in before] == [[i for i, _ in a] for a in after]
    assert [d for b in before for _, d in b] == pytest.approx([d for a in after for _, d in a], abs=1e-5)


def test_deleting_by_crop_removes_the_stored_file_only_when_the_store_owns_it(tmp_path):
    store = new_store(tmp_path)
    mine, theirs = tmp_path / "mine.png", tmp_path / "theirs.png"
    mine.write_bytes(b"x")
    theirs.write_bytes(b"y")
    store.add(vectors(1), [str(mine)], crop_sha256=["abc"], owned=True)
    store.add(vectors(1, seed=1), [str(theirs)])
    gone = store.delete(crop_sha256="abc")
    assert gone.owned == [True] and not mine.exists()
    store.delete(ids=[2])
    assert theirs.exists() and len(store) == 0
    with pytest.raises(StoreError, match="say what to delete"):
        store.delete()


def test_an_npz_gallery_imports_into_a_store_with_its_index_as_the_snapshot(tmp_path):
    x = vectors(64)
    paths = [str(tmp_path / f"0001_c{1 + i % 3}s1_{i:06d}_00.jpg") for i in range(64)]
    GalleryIndex(x, paths, index="hnsw", meta={"arch": "test", "weights_sha256": "f" * 64}).save(tmp_path / "g.npz")
    assert main(["gallery", "import", str(tmp_path / "g.npz"), "--out", str(tmp_path / "g.db"),
                 "--metadata", "market1501"]) == 0
    assert is_store(tmp_path / "g.db") and not is_store(tmp_path / "g.npz")
    live = LiveGallery.open(tmp_path / "g.db")
    assert live.index.description == "HNSW32" and len(live) == 64
    assert live.describe(5) == {"id": 5, "path": paths[4], "camera": "2", "time": 4.0, "track": None}
    file_ranking = GalleryIndex.load(tmp_path / "g.npz").search(x[:1], 10)[1][0]
    assert [i for i, _ in live.search(x[:1], 10)] == (file_ranking + 1).tolist()
    assert main(["gallery", "import", str(tmp_path / "g.npz"), "--out", str(tmp_path / "g.db")]) == 2   # never replaced


@pytest.mark.parametrize("option, message", [
    (["--port", "99999"], "--port 99999: give a port between 1 and 65535"),
    (["--device", "banana"], "--device banana"),
    (["--max-upload-mb", "-1"], "--max-upload-mb -1"),
    (["--workers", "0"], "--workers 0"),
    (["--retention", "0"], "--retention '0'"),
    (["--token", ""], "--token is empty"),
])
def test_serve_options_are_checked_in_one_line(tmp_path, option, message, capsys):
    pytest.importorskip("uvicorn", reason="the service is an optional extra: pip install 'reidkit[serve]'")
    store = new_store(tmp_path)
    uploads = tmp_path / "a_file"
    uploads.write_text("")
    assert main(["serve", str(store.path), *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["serve", str(store.path), "--uploads", str(uploads)]) == 2
    assert "is a file" in capsys.readouterr().err
