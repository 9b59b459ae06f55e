"""The newcomer's path (issue 41): progress lines in logs without a terminal, and the warnings for two foot-guns
(a fixbase phase that covers the whole run, an imported model used at another input size).  The output summaries
and the ranked-list picture's labels are checked by tests/test_getting_started.py."""
import logging

import torch

from conftest import tiny_overrides
from reidkit.engine import Trainer
from reidkit.engine.checkpoint import load_checkpoint, load_recipe_model, save_checkpoint
from reidkit.logs import progress_line
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe


def test_a_log_without_a_terminal_gets_progress_lines(tiny_data, tmp_path, caplog):
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run", epochs=1) + ["train.progress_seconds=1e-9"])
    trainer = Trainer(recipe, progress=False)
    steps = len(trainer.loader)
    with caplog.at_level(logging.INFO, logger="reidkit"):
        trainer.train_epoch(0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1: batch")]
    assert len(lines) == steps
    assert lines[-1].startswith(f"epoch 1/1: batch {steps}/{steps} (100%), {8 * steps} images, ")
    assert "img/s, ETA 0 s, loss " in lines[-1]
    caplog.clear()
    quiet = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "q", epochs=1)
                                + ["train.progress_seconds=0"]), progress=False)
    with caplog.at_level(logging.INFO, logger="reidkit"):
        quiet.train_epoch(0)
    assert not [r for r in caplog.records if ": batch " in r.getMessage()]


def test_progress_line_by_hand():
    assert progress_line(1, 8, 12, 40, 768, 17.0, {"total": 3.2144}) == \
        "epoch 2/8: batch 12/40 (30%), 768 images, 45.2 img/s, ETA 40 s, loss 3.214"


def test_a_fixbase_phase_covering_the_whole_run_warns(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run", epochs=1)
                            + ["train.fixbase_epochs=1"]), progress=False)
    assert "train.fixbase_epochs=1 >= train.epochs=1: the whole run trains only classifier" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run2", epochs=2)
                            + ["train.fixbase_epochs=1"]), progress=False)
    assert "fixbase_epochs" not in caplog.text


def test_an_imported_model_used_at_another_size_warns(tmp_path, caplog, shared_data):
    from reidkit.cli import main
    imported = tmp_path / "osnet.pth"
    assert main(["import-onnx", str(shared_data / "weights" / "osnet_x0_25_msmt17.onnx"), "--arch", "osnet_x0_25",
                 "--out", str(imported)]) == 0
    assert load_checkpoint(imported)["trained_image_size"] == [256, 128]
    small = load_recipe("osnet_x0_25_cuhk03", ["data.height=128", "data.width=64"])
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        load_recipe_model(small, imported)
    assert "osnet.pth was trained at 256x128 and is used here at 128x64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        load_recipe_model(load_recipe("osnet_x0_25_cuhk03"), imported)
    assert "was trained at" not in caplog.text


def test_a_checkpoint_without_a_recorded_size_does_not_warn(tmp_path, caplog):
    torch.manual_seed(0)
    bare = tmp_path / "bare.pth"
    save_checkpoint({"state_dict": build_model("osnet_x0_25", 2, pretrained="none").state_dict()}, bare)
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        load_recipe_model(load_recipe("osnet_x0_25_cuhk03", ["data.height=128", "data.width=64"]), bare)
    assert "was trained at" not in caplog.text
