"""Every run leaves a report (issue 19, part 2): reidkit train and reidkit eval write report/index.html."""
import re

import numpy as np
import yaml
from PIL import Image

from conftest import tiny_overrides
from reidkit.cli import main
from reidkit.recipe_files import load_recipe


def test_training_writes_a_report_with_the_camera_table_ranked_lists_data_and_recipe(tiny_run):
    page = (tiny_run / "report" / "index.html").read_text()
    for section in ("Metrics (%)", "mAP (%) by query camera", "Training curves", "Ranked lists", "Data", "Recipe"):
        assert f"<h2>{section}" in page, section
    assert "best.pth is the latest evaluated epoch (no validation split" in page      # nothing read the test set
    assert "initialisation: random (model.pretrained=none)" in page
    rows = re.findall(r"<tr><th>cam (\d+)</th>", page)
    assert rows == ["0", "1", "2"]                            # the tiny set's three cameras
    assert (tiny_run / "report" / "ranked_lists.png").is_file()


def test_the_header_warns_when_auto_found_no_imagenet_weights(tmp_path, monkeypatch):
    from reidkit.engine.run_report import initialisation_note
    from reidkit.models import build_model
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))         # no cached ImageNet file
    model = build_model("resnet18_bnneck", 3, pretrained="auto")
    assert initialisation_note("auto", model).startswith("WARNING: model.pretrained=auto found no ImageNet")
    model.backbone.pretrained = True                                      # as when the cache file loaded
    assert initialisation_note("auto", model).startswith("initialisation: ImageNet weights from the torch hub")
    assert initialisation_note("none", model) == "initialisation: random (model.pretrained=none)"
    assert initialisation_note("runs/a/best.pth", model) == "initialisation: runs/a/best.pth"


def test_eval_writes_a_report_with_the_requested_ranked_lists(tiny_run, tiny_data, tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "unused"))
                                     .model_dump(mode="json")))
    out = tmp_path / "rep"
    assert main(["eval", str(recipe), "--weights", str(tiny_run / "best.pth"), "--report", str(out),
                 "--ranked", "3", "--no-progress"]) == 0
    assert f"report -> {out / 'index.html'}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "mAP (%) by query camera" in page and "Training curves" not in page     # no history in an eval
    ranked = np.asarray(Image.open(out / "ranked_lists.png"))
    outline = (ranked[:, 0] == 0).all(axis=1)                # the query frames' black outline, left edge
    starts = np.diff(np.concatenate([[0], outline.astype(int)])) == 1
    assert starts.sum() == 3                                 # three query rows
