"""Nothing lost, second pass (issue 39, items 1-6): --overwrite deletes only what a run wrote, an output is never
one of the command's inputs, the image cache overwrites only itself, concurrent writers take a lock, any file
name round-trips through a gallery, and a split emptied by skipped images is refused before epoch 1."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from reidkit.cli import main
from reidkit.data import cache as cache_module
from reidkit.data.cache import ImageCache
from reidkit.data.records import ImageRecord
from reidkit.deploy import GalleryIndex
from reidkit.engine import Trainer
from reidkit.engine.run_folder import MANIFEST, RunFolderError, prepare_run_folder, release_run_folder
from reidkit.files import BusyError, OutputError, write_text_atomic
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe


def hold_lock(lock_file):
    """Another process holding ``lock_file`` (an OS file lock) until it is killed."""
    code = textwrap.dedent(f"""
        import filelock, sys, time
        lock = filelock.FileLock({str(lock_file)!r}); lock.acquire()
        print("held", flush=True); time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def project_folder(tmp_path):
    """A user's project folder: their script, recipe, data and notes."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "main.py").write_text("print('my experiment')\n")
    (folder / "my_recipe.yaml").write_text("train: {epochs: 1}\n")
    (folder / "data" / "labels.csv").write_text("a.png,1,1\n")
    (folder / "notes.txt").write_text("results so far\n")
    return folder


USER_FILES = {"main.py": "print('my experiment')\n", "my_recipe.yaml": "train: {epochs: 1}\n",
              "data/labels.csv": "a.png,1,1\n", "notes.txt": "results so far\n"}


# 1. --overwrite deletes only what a run wrote ---------------------------------------------------------------
@pytest.mark.slow
def test_overwrite_keeps_a_projects_own_files(tiny_data, tmp_path):
    folder = project_folder(tmp_path)
    args = ["train", str(folder / "my_recipe.yaml"), *tiny_overrides(tiny_data, folder, epochs=1), "--no-progress"]
    assert main(args) == 0
    written = json.loads((folder / MANIFEST).read_text())["files"]
    assert {"recipe.json", "last.pth", "best.pth", "history.json", "log.txt", "curves.png"} <= set(written)
    assert any(f.startswith("tensorboard/") for f in written) and any(f.startswith("report/") for f in written)
    assert not set(written) & set(USER_FILES)
    assert main(args) == 2                                         # a finished run: refused without --overwrite
    assert main(args + ["--overwrite"]) == 0
    for name, text in USER_FILES.items():
        assert (folder / name).read_text() == text
    assert len(list((folder / "tensorboard").iterdir())) == 1      # the old run's events went with it


def test_overwrite_deletes_the_manifests_files_and_nothing_else(tmp_path):
    folder = project_folder(tmp_path)
    prepare_run_folder(folder)
    try:
        for name in ("recipe.json", "history.json", "best.pth", "report/index.html"):
            write_text_atomic(folder / name, "run output")
    finally:
        release_run_folder(folder)
    (folder / "report" / "my_own_figure.png").write_text("mine")           # the user's, in the run's sub-folder
    prepare_run_folder(folder, overwrite=True)
    release_run_folder(folder)
    remaining = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert remaining == sorted([*USER_FILES, "report/my_own_figure.png", "run.lock"])


def test_overwrite_refuses_a_folder_without_a_manifest_a_link_and_a_run_holding_an_input(tmp_path):
    folder = project_folder(tmp_path)
    (folder / "recipe.json").write_text("{}")
    (folder / "best.pth").write_text("a run of an older reidkit")
    with pytest.raises(RunFolderError, match=f"no readable {MANIFEST}"):
        prepare_run_folder(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["data", "main.py", "my_recipe.yaml", "notes.txt",
                                                                 "recipe.json", "best.pth", "run.lock"])
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": ["recipe.json", "best.pth"]}))
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(RunFolderError, match="symbolic link"):
        prepare_run_folder(link, overwrite=True)
    with pytest.raises(RunFolderError, match="would delete .*best.pth, which this run reads \\(model.pretrained"):
        prepare_run_folder(folder, overwrite=True, inputs={"model.pretrained": str(folder / "best.pth")})
    assert (folder / "best.pth").exists()
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": ["../outside.txt", "best.pth"]}))
    (tmp_path / "outside.txt").write_text("not in the run folder")
    prepare_run_folder(folder, overwrite=True)
    release_run_folder(folder)
    assert (tmp_path / "outside.txt").exists() and not (folder / "best.pth").exists()


def test_two_trainings_into_one_folder_are_refused(tiny_data, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    other = hold_lock(folder / "run.lock")
    try:
        with pytest.raises(BusyError, match=f"the run folder {folder} is being written by another process"):
            prepare_run_folder(folder)
        recipe = tmp_path / "r.yaml"
        recipe.write_text("train: {epochs: 1}\n")
        code = main(["train", str(recipe), *tiny_overrides(tiny_data, folder, epochs=1), "--no-progress"])
        assert code == 2 and not (folder / "recipe.json").exists()
    finally:
        other.kill()
        other.wait()
    prepare_run_folder(folder)               # free again once the other process is gone
    release_run_folder(folder)


# 2. an output is never one of the command's inputs ------------------------------------------------------------
@pytest.fixture(scope="module")
def gallery_setup(tmp_path_factory, tiny_data):
    """A gallery of 8 query crops embedded by a random OSNet x0.25 at 64x32, and its weights."""
    root = tmp_path_factory.mktemp("gallery")
    images = root / "imgs"
    images.mkdir()
    for p in sorted((tiny_data / "query").iterdir())[:8]:
        shutil.copy(p, images / p.name)
    torch.manual_seed(0)
    weights = root / "w.pth"
    torch.save({"state_dict": build_model("osnet_x0_25", 2, pretrained="none").state_dict()}, weights)
    gallery = root / "g.npz"
    assert main(["extract", str(images), "--arch", "osnet_x0_25", "--size", "64", "32", "--weights", str(weights),
                 "--device", "cpu", "--no-progress", "--out", str(gallery)]) == 0
    return root, images, weights, gallery


def test_outputs_that_are_inputs_are_refused(gallery_setup, tmp_path, capsys):
    root, images, weights, gallery = gallery_setup
    query = sorted(images.iterdir())[0]
    before = {p: p.read_bytes() for p in (gallery, weights, query)}
    link = tmp_path / "link.npz"
    link.symlink_to(gallery)
    for args, said in [(["search", str(gallery), str(query), "--json", str(gallery)], "--json"),
                       (["search", str(gallery), str(query), "--picture", str(link)], "--picture"),
                       (["search", str(gallery), str(query), "--json", str(query)], "--json"),
                       (["extract", str(images), "--arch", "osnet_x0_25", "--size", "64", "32", "--weights",
                         str(weights), "--device", "cpu", "--out", str(weights)], "--out"),
                       (["import-onnx", str(gallery), "--arch", "osnet_x0_25", "--out", str(gallery)], "--out")]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"{said} " in err and "would destroy an input" in err, err
    for p, data in before.items():
        assert p.read_bytes() == data


# 3. the image cache overwrites only a cache ---------------------------------------------------------------------
def small_records(folder, n=6):
    folder.mkdir(exist_ok=True)
    records = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(np.full((16, 8, 3), 10 * i, np.uint8)).save(p)
        records.append(ImageRecord(str(p), i, 0))
    return records


def test_the_cache_never_overwrites_a_file_that_is_not_a_cache(tmp_path):
    records = small_records(tmp_path / "imgs")
    checkpoint = tmp_path / "best.pth"
    checkpoint.write_bytes(b"a 45 MB checkpoint" * 100)
    before = checkpoint.read_bytes()
    with pytest.raises(OutputError, match="best.pth exists and is not a reidkit image cache"):
        ImageCache(records, (16, 8), mmap_path=checkpoint, progress=False)
    assert checkpoint.read_bytes() == before
    cache = tmp_path / "train.u8"
    first = ImageCache(records, (16, 8), mmap_path=cache, progress=False)
    assert json.loads(cache.with_name("train.u8.json").read_text())["complete"] is True
    # a rebuild (other size) replaces the file atomically: the first run's mapped images keep their bytes
    second = ImageCache(records, (8, 4), mmap_path=cache, progress=False)
    assert int(first.images[3].float().mean()) == 30 and int(second.images[3].float().mean()) == 30
    assert cache.stat().st_size == 6 * 3 * 8 * 4
    assert not list(tmp_path.glob("train.u8*.tmp"))


def test_a_cache_being_built_by_another_process_is_waited_for_then_named(tmp_path, monkeypatch):
    records = small_records(tmp_path / "imgs")
    cache = tmp_path / "train.u8"
    other = hold_lock(f"{cache}.lock")
    monkeypatch.setattr(cache_module, "CACHE_WAIT_S", 0.3)
    try:
        with pytest.raises(BusyError, match="the image cache .*train.u8 is being written by another process"):
            ImageCache(records, (16, 8), mmap_path=cache, progress=False)
    finally:
        other.kill()
        other.wait()
    assert not cache.exists()


# 4. concurrent writers of one gallery lose nothing ---------------------------------------------------------------
def test_concurrent_additions_to_one_gallery_keep_every_image(gallery_setup, tiny_data, tmp_path):
    root, images, weights, gallery = gallery_setup
    work = tmp_path / "g.npz"
    shutil.copy(gallery, work)
    batches = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        for p in sorted((tiny_data / "bounding_box_test").iterdir())[(0 if name == "a" else 6):][:6]:
            shutil.copy(p, folder / p.name)
        batches.append(folder)
    from reidkit.deploy import extractor
    real = extractor.FeatureExtractor.embed_files
    nested = {"done": False}

    def embed_then_race(self, paths, **kw):          # while "a" embeds, another process adds "b"
        out = real(self, paths, **kw)
        if not nested["done"]:
            nested["done"] = True
            assert main(["extract", str(batches[1]), "--add-to", str(work), "--device", "cpu", "--no-progress"]) == 0
        return out

    extractor.FeatureExtractor.embed_files = embed_then_race
    try:
        assert main(["extract", str(batches[0]), "--add-to", str(work), "--device", "cpu", "--no-progress"]) == 0
    finally:
        extractor.FeatureExtractor.embed_files = real
    paths = GalleryIndex.load(work).paths
    assert len(paths) == 8 + 12 and len(set(paths)) == 20


def test_a_killed_extract_leaves_no_temporary_behind(gallery_setup, tmp_path):
    root, images, weights, gallery = gallery_setup
    work = tmp_path / "g.npz"
    shutil.copy(gallery, work)
    (tmp_path / "g.npzk1l2.tmp").write_bytes(b"x" * 1000)               # what a kill -9 mid-write leaves
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(sorted(images.iterdir())[0], extra / "new.png")
    assert main(["extract", str(extra), "--add-to", str(work), "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "g.npz.lock", "more"]


# 5. any file name round-trips through a gallery ------------------------------------------------------------
def test_file_names_with_newlines_and_undecodable_bytes_round_trip(gallery_setup, tmp_path, capsys):
    root, images, weights, gallery = gallery_setup
    work = tmp_path / "g.npz"
    shutil.copy(gallery, work)
    odd = tmp_path / "odd"
    odd.mkdir()
    source = sorted(images.iterdir())[0]
    names = ["line\nbreak.png", os.fsdecode(b"caf\xe9.png"), "plain.png"]
    for name in names:
        shutil.copy(source, odd / name)
    assert main(["extract", str(odd), "--add-to", str(work), "--device", "cpu", "--no-progress"]) == 0
    loaded = GalleryIndex.load(work)
    assert len(loaded) == 8 + 3
    assert sorted(loaded.paths[8:]) == sorted(str((odd / n).resolve()) for n in names)
    assert set(GalleryIndex.load(gallery).paths) <= set(loaded.paths)
    capsys.readouterr()
    assert main(["search", str(work), str(odd / names[0]), "--device", "cpu", "--top-k", "11",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "line\\nbreak.png" in out and "caf\ufffd.png" in out
    found = json.loads((tmp_path / "r.json").read_text())[0]["matches"]
    assert {m["path"] for m in found} == set(loaded.paths)


# 6. a split that skipped images emptied is refused before epoch 1 ------------------------------------------
def test_skipping_every_query_image_is_refused_before_training(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for p in (data / "query").iterdir():
        p.write_bytes(b"broken")
    recipe = load_recipe(None, tiny_overrides(data, tmp_path / "run", epochs=1) + ["data.skip_bad_images=true"])
    with pytest.raises(ValueError, match=r"skip_bad_images left no image in the query split"):
        Trainer(recipe, progress=False)
    assert not (tmp_path / "run").exists()


def test_eval_writes_its_report_under_the_working_folder_and_keeps_earlier_ones(tiny_run, tiny_data, tmp_path,
                                                                               monkeypatch, capsys):
    """Issue 49 H: `reidkit eval --weights DIR/x` never writes beside the weights it was given (a data folder), and
    a second evaluation does not replace the first one's report."""
    weights = tmp_path / "models" / "best.pth"
    weights.parent.mkdir()
    weights.write_bytes((tiny_run / "best.pth").read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    command = ["eval", str(tiny_run / "recipe.json"), f"data.root={tiny_data}", "--weights", str(weights),
               "--no-progress"]
    assert main(command) == 0 and main(command) == 0
    out = capsys.readouterr().out
    assert "report -> reports/eval_best/index.html" in out and "report -> reports/eval_best_2/index.html" in out
    assert sorted(p.name for p in weights.parent.iterdir()) == ["best.pth"]
    assert (work / "reports" / "eval_best" / "index.html").is_file()
