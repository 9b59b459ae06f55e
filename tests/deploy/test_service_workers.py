"""``reidkit serve --workers N`` (issue 49 C): worker processes sharing one gallery store: a row any writer commits
(another worker, ``extract --add-to``) is found by every worker, and a deleted item by none, at once."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the test client needs httpx")
pytest.importorskip("uvicorn", reason="the service is an optional extra: pip install 'reidkit[serve]'")

from reidkit.cli import main  # noqa: E402
from reidkit.deploy.store import GalleryStore  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_worker_sees_every_commit_and_no_deleted_item(tiny_run, tiny_data, tmp_path):
    store = tmp_path / "g.db"
    assert main(["extract", str(tiny_data / "bounding_box_test"), "--weights", str(tiny_run / "best.pth"),
                 "--out", str(store), "--no-progress", "--device", "cpu", "--metadata", "market1501"]) == 0
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "reidkit", "serve", str(store), "--workers", "2", "--port",
                               str(port), "--uploads", str(tmp_path / "added")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):                                   # both workers load the model: up to 60 s
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            server.kill()
            pytest.fail(f"the service did not start: {server.stdout.read().decode()[-2000:]}")
        crop = sorted((tiny_data / "query").glob("*.jpg"))[0]
        added = httpx.post(f"{url}/api/items", files={"images": (crop.name, crop.read_bytes(), "image/jpeg")},
                           data={"camera": "5"}, timeout=60).json()["ids"][0]
        folder = tmp_path / "more"
        folder.mkdir()
        extra = sorted((tiny_data / "bounding_box_train").glob("*.jpg"))[:5]
        for c in extra:
            (folder / c.name).write_bytes(c.read_bytes())
        assert main(["extract", str(folder), "--add-to", str(store), "--no-progress", "--device", "cpu"]) == 0
        committed = GalleryStore(store).rows_after(added).ids.tolist()
        assert len(committed) == 5
        # a fresh connection each time: uvicorn's workers share the socket, so both answer in turn
        for _ in range(12):
            assert httpx.get(f"{url}/api/items/{added}", timeout=30).json()["camera"] == "5"
            for item in committed:
                assert httpx.get(f"{url}/api/items/{item}", timeout=30).status_code == 200
            ranked = httpx.get(f"{url}/api/items/{committed[0]}/similar?k=200", timeout=30).json()["results"]
            assert {added, *committed[1:]} <= {r["id"] for r in ranked}
        assert httpx.delete(f"{url}/api/items/{added}", timeout=30).status_code == 200
        for _ in range(12):
            assert httpx.get(f"{url}/api/items/{added}", timeout=30).status_code == 404
            ranked = httpx.get(f"{url}/api/items/{committed[0]}/similar?k=200", timeout=30).json()["results"]
            assert added not in {r["id"] for r in ranked}
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert len(GalleryStore(store)) == 35 + 5
