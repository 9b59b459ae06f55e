"""Training on several datasets at once (``data.dataset`` a list) and evaluating on others (``eval.datasets``)."""
import json
import re

import pytest

from conftest import make_tiny_synthetic, tiny_overrides
from reidkit.config import EvalConfig
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.data.combine import build_recipe_dataset, combine_datasets, dataset_specs
from reidkit.engine import Trainer
from reidkit.engine.checkpoint import model_from_checkpoint
from reidkit.engine.evaluate import evaluate_model
from reidkit.recipe_files import load_recipe


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """A second tiny synthetic dataset (12 identities, other seed): the 'other domain'."""
    return make_tiny_synthetic(tmp_path_factory, "other", num_ids=12, seed=7, num_distractors=3)


def test_identities_and_cameras_of_each_dataset_are_kept_apart(tiny_data, other_data):
    a = build_dataset("synthetic", str(tiny_data), num_cameras=3)
    b = build_dataset("synthetic", str(other_data), num_cameras=3)
    both = combine_datasets([a, b])
    assert len(both.train) == len(a.train) + len(b.train)
    assert both.num_train_pids == a.num_train_pids + b.num_train_pids
    first, second = both.train[:len(a.train)], both.train[len(a.train):]
    assert [(r.path, r.pid, r.camid) for r in first] == [(r.path, r.pid, r.camid) for r in a.train]
    # the second dataset's identities follow the first's, its cameras follow the first's cameras
    a_cams = 1 + max(r.camid for r in (*a.train, *a.query, *a.gallery))
    assert [(r.path, r.pid, r.camid) for r in second] == [(r.path, r.pid + a.num_train_pids, r.camid + a_cams)
                                                          for r in b.train]
    assert {r.pid for r in first}.isdisjoint({r.pid for r in second})
    assert {r.camid for r in first}.isdisjoint({r.camid for r in second})
    assert both.query == a.query and both.gallery == a.gallery          # tested on the first dataset
    assert both.name == "synthetic+synthetic" and "query / gallery: synthetic's" in both.summary()


def test_one_root_and_options_per_dataset():
    assert dataset_specs("market1501", "m", {}) == [("market1501", "m", {})]
    assert dataset_specs(["a", "b"], ["x", "y"], [{}, {"k": 1}]) == [("a", "x", {}), ("b", "y", {"k": 1})]
    assert dataset_specs(["a", "b"], ["x", "y"], {}) == [("a", "x", {}), ("b", "y", {})]
    with pytest.raises(ValueError, match="one root per dataset"):
        dataset_specs(["a", "b"], "x", {})
    with pytest.raises(ValueError, match="one mapping per dataset"):
        dataset_specs(["a", "b"], ["x", "y"], {"k": 1})
    with pytest.raises(ValueError, match="data.root"):      # at recipe load, naming the keys
        load_recipe(None, ["data.dataset=[synthetic,synthetic]", "data.root=x"])
    # names and options are checked when the recipe loads, not when the last epoch ends
    with pytest.raises(ValueError, match=r"unknown dataset 'market1502' \(did you mean 'market1501'"):
        load_recipe(None, ["data.dataset=[synthetic,market1502]", "data.root=[a,b]"])
    with pytest.raises(ValueError, match=r"dataset 'cuhk01' \(eval.datasets options\) does not take seeed"):
        load_recipe(None, ["eval.datasets=[{dataset: cuhk01, root: x, options: {seeed: 1}}]"])


@pytest.mark.slow
def test_training_on_two_datasets_and_testing_on_a_third(tiny_data, other_data, tmp_path):
    """One command: train on the union of two datasets (one classifier over both identity sets), evaluate on the
    first's query / gallery and, cross-dataset, on another's; the cross-dataset figures are those of the trained
    model evaluated on that dataset directly, and the report shows each."""
    out = tmp_path / "run"
    overrides = [*tiny_overrides(tiny_data, out, epochs=1), "data.dataset=[synthetic,synthetic]",
                 f"data.root=[{tiny_data},{other_data}]", "data.options=[{num_cameras: 3}, {num_cameras: 3}]",
                 f"eval.datasets=[{{dataset: synthetic, root: {other_data}, options: {{num_cameras: 3}}}}]"]
    recipe = load_recipe(None, overrides)
    trainer = Trainer(recipe, progress=False)
    first = build_dataset("synthetic", str(tiny_data), num_cameras=3)
    other = build_dataset("synthetic", str(other_data), num_cameras=3)
    assert trainer.num_classes == first.num_train_pids + other.num_train_pids
    assert build_recipe_dataset(recipe.data).num_train_pids == trainer.num_classes
    trainer.fit()
    model = model_from_checkpoint(None, out / "last.pth")
    q, g = ImageCache(other.query, (32, 16), progress=False), ImageCache(other.gallery, (32, 16), progress=False)
    direct = evaluate_model(model, q, g, EvalConfig(metric=recipe.eval.metric))
    assert trainer.cross_dataset["synthetic"].mAP == pytest.approx(direct.mAP, abs=1e-6)
    history = json.loads((out / "history.json").read_text())
    assert history["cross_dataset"]["synthetic"]["mAP"] == pytest.approx(100 * direct.mAP, abs=1e-4)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics) == {"epoch 1", "synthetic (cross-dataset)"}
    assert "(cross-dataset)" in (out / "report" / "index.html").read_text()


@pytest.mark.slow
def test_eval_command_reports_the_cross_dataset_rows(tiny_run, other_data, tmp_path, capsys):
    import yaml

    from reidkit.cli import main
    recipe = load_recipe(None, [*tiny_overrides(tmp_path / "unused_root", tmp_path / "unused")])
    spec = recipe.model_dump(mode="json")
    spec["data"]["root"] = str(json.loads((tiny_run / "recipe.json").read_text())["data"]["root"])
    spec["eval"]["datasets"] = [{"dataset": "synthetic", "root": str(other_data), "options": {"num_cameras": 3}}]
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["eval", str(path), "--weights", str(tiny_run / "best.pth"), "--no-report", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "on synthetic (cross-dataset):" in text
    maps = [float(m) for m in re.findall(r"mAP:\s*([\d.]+)%", text)]
    assert len(maps) == 2 and all(0 < m <= 100 for m in maps)
