"""Nothing lost, nothing poisoned: each case reproduces a way work was lost or a bad input crashed (issue 18)."""
import errno
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from reidkit.cli import main
from reidkit.config import RecipeError
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.data.images import BadImageError, load_rgb
from reidkit.data.records import DatasetLayoutError, ImageRecord
from reidkit.deploy import GalleryIndex
from reidkit.deploy.extractor import check_image_size
from reidkit.engine import CheckpointError, Trainer
from reidkit.engine.checkpoint import NonFiniteWeightsError, save_checkpoint
from reidkit.engine.run_folder import RunFolderError, prepare_run_folder, release_run_folder
from reidkit.files import OutputError, write_atomic
from reidkit.models import build_model
from reidkit.models.pretrained import load_matching_weights
from reidkit.recipe_files import load_recipe


def fake_run(folder, mAP=0.338):
    """A finished run's files (what ``reidkit train`` leaves), without training one."""
    folder.mkdir(parents=True)
    (folder / "recipe.json").write_text("{}")
    (folder / "best.pth").write_bytes(b"best model of a 6-epoch run")
    (folder / "history.json").write_text(json.dumps({"epoch": [1, 2, 3, 4, 5, 6], "mAP": [0.1, mAP]}))
    (folder / "run_manifest.json").write_text(json.dumps({"format": 1, "files": ["recipe.json", "best.pth",
                                                                                "history.json"]}))
    return folder


# 1. a finished run is never replaced by default ------------------------------------------------------------
def test_training_into_a_finished_run_is_refused_and_leaves_it_intact(tiny_data, tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    before = (run / "best.pth").read_bytes()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {epochs: 1}\n")
    code = main(["train", str(recipe), *tiny_overrides(tiny_data, run, epochs=1), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{run} already holds a run: best.pth, history.json (6 epochs, best mAP 33.80%)" in err
    assert "--resume" in err and "--overwrite" in err
    assert (run / "best.pth").read_bytes() == before
    assert not (run / "log.txt").exists()             # refused before anything was written there


def test_overwrite_replaces_only_a_run_folder_and_resume_continues_one(tmp_path):
    run = fake_run(tmp_path / "run")
    prepare_run_folder(run, resume=run / "last.pth")          # resuming the run in place is allowed
    assert (run / "best.pth").exists()
    with pytest.raises(RunFolderError, match="--resume .*another folder"):
        prepare_run_folder(run, resume=tmp_path / "elsewhere" / "last.pth")
    release_run_folder(run)
    prepare_run_folder(run, overwrite=True)
    release_run_folder(run)
    assert run.is_dir() and [p.name for p in run.iterdir()] == ["run.lock"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "history.json").write_text("my own notes")
    with pytest.raises(RunFolderError, match="no readable run_manifest.json"):
        prepare_run_folder(foreign, overwrite=True)
    assert (foreign / "history.json").read_text() == "my own notes"


def test_orphan_temporaries_of_killed_writes_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pthk1l2m3.tmp", "best.pthzz.tmp", "recipe.jsonq.tmp"):
        (run / name).write_bytes(b"x" * 1000)
    (run / "notes.tmp").write_text("not ours")
    prepare_run_folder(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.tmp", "run.lock"]


# 2. non-finite weights are never saved ---------------------------------------------------------------------
@pytest.mark.slow
def test_infinite_batchnorm_statistics_stop_training_before_any_save(tiny_data, tmp_path):
    trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run", epochs=2)), progress=False)
    original = trainer.train_epoch

    def poisoned(epoch, max_batches=None):
        means = original(epoch, max_batches)
        if epoch == 1:                      # epoch 2: every loss finite, the BN statistics blown up
            bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return means

    trainer.train_epoch = poisoned
    with pytest.raises(NonFiniteWeightsError, match=r"after epoch 2 \(iteration \d+, lr .*running_var.*"
                                                    r"last finite checkpoint is .*last.pth \(epoch 1\)"):
        trainer.fit()
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    model = build_model("resnet18_bnneck", 3, pretrained="none")
    state = {"state_dict": model.state_dict()}
    state["state_dict"]["head.bottleneck.running_var"] = torch.full((512,), float("nan"))
    with pytest.raises(NonFiniteWeightsError, match="head.bottleneck.running_var"):
        save_checkpoint(state, tmp_path / "bad.pth")
    assert list(tmp_path.iterdir()) == []


def test_an_exploding_loss_is_reported_loudly(tiny_data, tmp_path, caplog):
    trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run", epochs=1)), progress=False)
    trainer.guard.check_epoch(trainer.model, 0, 6, {"total": 6.0, "lr": 1.0})
    with caplog.at_level("WARNING", logger="reidkit"):
        trainer.guard.check_epoch(trainer.model, 1, 12, {"total": 1e14, "lr": 1.0})
    assert "training is diverging at epoch 2" in caplog.text and "1e+14" in caplog.text


# 3. the memory-mapped cache follows its sources --------------------------------------------------------------
def test_cache_rebuilds_after_an_edit_and_after_an_interrupted_build(tmp_path, monkeypatch):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((16, 8, 3), 10 * i, np.uint8)).save(p)
        paths.append(p)
    records = [ImageRecord(str(p), i, 0) for i, p in enumerate(paths)]
    cache_file = tmp_path / "train.u8"
    ImageCache(records, (16, 8), mmap_path=cache_file, progress=False)
    Image.fromarray(np.full((16, 8, 3), 200, np.uint8)).save(paths[2])        # edited in place
    os.utime(paths[2], ns=(os.stat(paths[2]).st_atime_ns, os.stat(paths[2]).st_mtime_ns + 10**9))
    assert int(ImageCache(records, (16, 8), mmap_path=cache_file, progress=False).images[2].float().mean()) == 200

    from reidkit.data import cache as cache_module
    calls = {"n": 0}
    real = cache_module.load_rgb

    def killed(path, size=None):                 # the process dies after 3 images of a rebuild
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(path, size)

    Image.fromarray(np.full((16, 8, 3), 77, np.uint8)).save(paths[5])
    os.utime(paths[5], ns=(os.stat(paths[5]).st_atime_ns, os.stat(paths[5]).st_mtime_ns + 2 * 10**9))
    monkeypatch.setattr(cache_module, "load_rgb", killed)
    with pytest.raises(KeyboardInterrupt):
        ImageCache(records, (16, 8), mmap_path=cache_file, progress=False, workers=1)
    manifest = json.loads(cache_file.with_name(cache_file.name + ".json").read_text())
    assert manifest["complete"] is False                                  # no completion marker
    monkeypatch.setattr(cache_module, "load_rgb", real)
    again = ImageCache(records, (16, 8), mmap_path=cache_file, progress=False)
    assert [int(again.images[i].float().mean()) for i in range(6)] == [0, 10, 200, 30, 40, 77]


# 4. outputs are replaced only once complete ------------------------------------------------------------------
def test_a_full_disk_during_re_extraction_keeps_the_previous_gallery(tmp_path, monkeypatch):
    feats = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = tmp_path / "gallery.npz"
    GalleryIndex(feats, list("abcde")).save(out)
    before = out.read_bytes()

    def full_disk(file, **arrays):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OutputError, match=r"could not write .*gallery.npz \(the disk is full; .* MiB free"):
        GalleryIndex(feats * 2, list("abcde")).save(out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.npz"]


def test_a_checkpoint_write_that_fails_names_the_file(tmp_path, monkeypatch):
    def failing(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 512 vs 448: basic_ios::clear")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OutputError, match=r"could not write .*last.pth \(RuntimeError: .*unexpected pos.* MiB free"):
        save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.pth")
    # torch says only "unexpected pos": with the disk (nearly) full, that is what the message says
    from reidkit import files
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(OutputError, match=r"could not write .*last.pth \(the disk is full; 0 MiB free"):
        save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.pth")
    assert list(tmp_path.iterdir()) == []


def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch, capsys):
    from reidkit.deploy import extractor
    monkeypatch.setattr(extractor.FeatureExtractor, "__init__",
                        lambda *a, **k: pytest.fail("the model was built before the output was checked"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = main(["extract", str(tmp_path), "--arch", "osnet_x0_25", "--weights", "w.pth",
                 "--out", str(blocker / "gallery.npz")])
    assert code == 2 and f"{blocker} is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:                              # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["extract", str(tmp_path), "--arch", "osnet_x0_25", "--weights", "w.pth",
                     "--out", str(ro / "g.npz")]) == 2
        assert "is not writable" in capsys.readouterr().err


# 5. recipes and data commands that would silently write ------------------------------------------------------
def test_an_empty_recipe_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n\n")
    with pytest.raises(RecipeError, match=r"empty.yaml: the recipe is empty"):
        load_recipe(path)


def test_data_summary_never_writes_and_generation_needs_a_new_or_empty_folder(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "bounding_box_test").write_text("my file")
    assert main(["data", "summary", "synthetic", "--root", str(folder)]) == 2
    assert "no dataset at" in capsys.readouterr().err
    assert main(["data", "summary", "synthetic", "--root", str(tmp_path / "absent")]) == 2
    assert not (tmp_path / "absent").exists()
    assert main(["data", "synth", "--out", str(folder), "--ids", "4"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["bounding_box_test"]
    assert (folder / "bounding_box_test").read_text() == "my file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]        # no half-written staging folder


# 6. 16-bit images ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, suffix", [("I;16", "png"), ("I", "tif")])
def test_sixteen_bit_greyscale_decodes_to_its_eight_bit_values(tmp_path, mode, suffix):
    values = (np.arange(64 * 32).reshape(64, 32) * 31).astype(np.uint16)
    path = tmp_path / f"deep.{suffix}"
    Image.fromarray(values).convert(mode).save(path)
    assert Image.open(path).mode == mode
    got = np.asarray(load_rgb(path)).astype(np.float64)
    expected = np.round(values / 257.0)
    assert np.abs(got[..., 0] - expected).max() <= 1
    assert abs(got.mean() - expected.mean()) < 0.5          # not almost white (PIL's convert clips)


# 7. clear errors instead of tracebacks --------------------------------------------------------------------------
@pytest.mark.slow
def test_resuming_with_another_optimiser_is_named(tiny_data, tiny_run, tmp_path):
    sgd = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run", epochs=2) + ["optim.name=sgd"]),
                  progress=False)
    with pytest.raises(CheckpointError, match=r"trained with the optimiser adam .*this recipe uses sgd"):
        sgd.fit(resume=tiny_run / "last.pth")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/reidkit_pwned_by_pickle",))


def test_a_malicious_pretrained_file_is_refused_and_runs_nothing(tmp_path):
    marker = "/tmp/reidkit_pwned_by_pickle"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "weights.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _RunsCode()}, f)
    model = build_model("osnet_x0_25", 3, pretrained="none")
    with pytest.raises(ValueError, match=r"weights.pth is not a readable weights file .*nothing in the file was run"):
        load_matching_weights(model, path, "osnet_x0_25")
    assert not os.path.exists(marker)


def test_a_truncated_gallery_file_is_named(tmp_path):
    out = tmp_path / "g.npz"
    GalleryIndex(np.ones((3, 4), np.float32), list("abc")).save(out)
    out.write_bytes(out.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"g.npz: not a reidkit gallery file, or a truncated one \(BadZipFile"):
        GalleryIndex.load(out)
    assert zipfile  # the error type named above


def test_a_malformed_csv_row_is_named(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(img)
    for split in ("train", "query", "gallery"):
        (tmp_path / f"{split}.csv").write_text("path,identity,camera\na.png,1,c1\n")
    (tmp_path / "query.csv").write_text("path,identity,camera\na.png,1,c1\na.png,2\n")
    with pytest.raises(DatasetLayoutError, match=r"query.csv:3: malformed row 'a.png,2,'"):
        build_dataset("custom", str(tmp_path))


def test_a_gallery_asking_for_a_huge_input_is_refused():
    with pytest.raises(ValueError, match=r"g.npz: the metadata's image_size: input size 12000x6000"):
        check_image_size([12000, 6000], "g.npz: the metadata's image_size")
    assert check_image_size([256, 128]) == (256, 128)


# 8. every bad file of every split in one pass; skipping them on extract -------------------------------------
def test_bad_files_of_all_splits_are_listed_together(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    bad_train = sorted((root / "bounding_box_train").iterdir())[3]
    bad_query = sorted((root / "query").iterdir())[0]
    bad_train.write_bytes(b"\xff\xd8 truncated")
    bad_query.write_bytes(b"")
    with pytest.raises(BadImageError) as info:
        Trainer(load_recipe(None, tiny_overrides(root, tmp_path / "run", epochs=1)), progress=False)
    message = str(info.value)
    assert "2 image(s) could not be decoded (train: 1, query: 1)" in message
    assert f"train {bad_train.parent}/ (1 bad)" in message and f"query {bad_query.parent}/ (1 bad)" in message
    assert bad_train.name in message and f"{bad_query.name}: empty file" in message


@pytest.mark.slow
def test_extract_lists_or_skips_bad_images(tiny_data, tmp_path, capsys):
    images = tmp_path / "imgs"
    shutil.copytree(tiny_data / "query", images)
    bad = sorted(images.iterdir())[1]
    bad.write_bytes(b"not an image")
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": build_model("osnet_x0_25", 2, pretrained="none").state_dict()}, weights)
    args = ["extract", str(images), "--arch", "osnet_x0_25", "--size", "64", "32", "--weights", str(weights),
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "g.npz")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad.name}: not an image" in err and "--skip-bad-images" in err
    assert not (tmp_path / "g.npz").exists()
    assert main(args + ["--skip-bad-images"]) == 0
    gallery = GalleryIndex.load(tmp_path / "g.npz")
    assert len(gallery) == len(list(images.iterdir())) - 1 and str(bad.resolve()) not in gallery.paths


# 9. names that do not exist fail before any image is decoded ----------------------------------------------
def test_a_misspelt_model_fails_before_the_data_is_read(tmp_path, monkeypatch):
    from reidkit.engine import run_data as trainer_module  # where the trainer reads its dataset
    monkeypatch.setattr(trainer_module, "build_recipe_dataset", lambda *a, **k: pytest.fail("dataset read first"))
    # (the recipe itself now refuses the name: the model's options are checked against its family)
    with pytest.raises(ValueError, match=r"unknown model 'osnet_x025' \(did you mean 'osnet_x0_25'"):
        Trainer(load_recipe(None, tiny_overrides(tmp_path, tmp_path / "run") + ["model.name=osnet_x025"]),
                progress=False)


def test_models_and_datasets_are_listed(capsys):
    assert main(["models"]) == 0
    models = capsys.readouterr().out
    assert "osnet_x0_25" in models and "resnet50_bnneck" in models
    assert main(["datasets"]) == 0
    datasets = capsys.readouterr().out
    assert "market1501" in datasets and "cuhk03_labeled" in datasets
    with pytest.raises(ValueError, match=r"unknown dataset 'market1502' \(did you mean 'market1501'"):
        build_dataset("market1502", "/nowhere")


def test_write_atomic_leaves_nothing_when_the_writer_fails(tmp_path):
    def broken(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OutputError, match=r"x.bin \(OSError: \[Errno 5\] Input/output error"):
        write_atomic(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []
