"""Unlabelled crops (the ``crops`` dataset): cameras from sub-folders, a file-name pattern, a CSV column or unknown;
and an unsupervised run on them, which trains and records without a query / gallery."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_overrides
from reidkit.data import build_dataset
from reidkit.data.records import DatasetLayoutError
from reidkit.engine import Trainer
from reidkit.recipe_files import load_recipe


def write_crop(path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 8, 3), value, dtype=np.uint8)).save(path)


def test_cameras_from_folders_patterns_csv_or_unknown(tmp_path):
    root = tmp_path / "crops"
    write_crop(root / "lobby" / "a.jpg")
    write_crop(root / "lobby" / "day2" / "b.jpg")
    write_crop(root / "street" / "c.png")
    write_crop(root / "loose.jpg")
    (root / "notes.txt").write_text("not an image")
    d = build_dataset("crops", str(root))
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in d.train}
    assert set(by_name) == {"a.jpg", "b.jpg", "c.png", "loose.jpg"} and not d.query and not d.gallery
    cams = {name: r.camid for name, r in by_name.items()}
    assert cams["a.jpg"] == cams["b.jpg"] != cams["c.png"] and len(set(cams.values())) == 3     # + unknown
    assert sorted(r.pid for r in d.train) == [0, 1, 2, 3] and not d.identities
    assert "1 crop(s) of unknown camera" in d.notes[0]

    named = tmp_path / "named"
    for name in ("0001_c1s1_000151_00.jpg", "0002_c3s1_000151_00.jpg", "0003_c1s2_000151_00.jpg", "odd.jpg"):
        write_crop(named / name)
    p = build_dataset("crops", str(named), camera="pattern", pattern=r"_c(?P<camera>\d+)s")
    cams = {r.path.rsplit("/", 1)[-1]: r.camid for r in p.train}
    assert cams["0001_c1s1_000151_00.jpg"] == cams["0003_c1s2_000151_00.jpg"] != cams["0002_c3s1_000151_00.jpg"]
    assert len(set(cams.values())) == 3                                               # "1", "3", unknown
    with pytest.raises(DatasetLayoutError, match="group named camera"):
        build_dataset("crops", str(named), camera="pattern", pattern=r"_c(\d+)")

    (named / "crops.csv").write_text("path,camera\n0001_c1s1_000151_00.jpg,gate\nodd.jpg,\n")
    c = build_dataset("crops", str(named), camera="csv")
    assert len(c.train) == 2 and len({r.camid for r in c.train}) == 2
    (named / "crops.csv").write_text("path,camera\nmissing.jpg,gate\n")
    with pytest.raises(DatasetLayoutError, match=r"crops.csv:2: image not found"):
        build_dataset("crops", str(named), camera="csv")
    assert {r.camid for r in build_dataset("crops", str(named), camera="unknown").train} == {0}
    with pytest.raises(DatasetLayoutError, match="camera must be one of"):
        build_dataset("crops", str(named), camera="exif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images"):
        build_dataset("crops", str(tmp_path / "empty"))


def test_an_unsupervised_run_on_crops_trains_and_keeps_its_last_epoch(tiny_data, tmp_path):
    root = tmp_path / "crops"
    for image in sorted((tiny_data / "bounding_box_train").glob("*.jpg")):
        camera = image.name.split("_")[1][:2]                                 # Market-style names: c1, c2, c3
        target = root / camera / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    out = tmp_path / "run"
    base = [o for o in tiny_overrides(tiny_data, out, epochs=2) if not o.startswith(("data.dataset", "data.root",
                                                                                      "data.options"))]
    recipe = load_recipe(None, [*base, "data.dataset=crops", f"data.root={root}", "data.labels=hidden",
                                "loss.ce_weight=0", "loss.triplet_weight=0", "center_loss.weight=0",
                                "cluster_memory.eps=0.6", "cluster_memory.min_samples=2", "cluster_memory.k1=6",
                                "cluster_memory.k2=2"])
    trainer = Trainer(recipe, progress=False)
    assert trainer.hidden_labels is None and not trainer.has_test
    trainer.fit()
    h = trainer.history
    assert len(h["cluster_memory/clusters"]) == 2 and "cluster_memory/purity" not in h and not h.get("mAP")
    assert (out / "best.pth").is_file() and (out / "history.json").is_file()
    with pytest.raises(ValueError, match="has no identity labels: set data.labels=hidden"):
        Trainer(load_recipe(None, [*base, "data.dataset=crops", f"data.root={root}"]), progress=False)
