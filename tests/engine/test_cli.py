from pathlib import Path

import pytest

from reidkit.cli import main


def test_synth_summary_and_check_images(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--ids", "6", "--cameras", "2",
                 "--distractors", "2", "--grid", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    capsys.readouterr()
    assert main(["data", "summary", "market1501", "--root", str(out), "--check-images"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "0 bad" in text
    victim = next((out / "query").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:100])          # truncate one image
    assert main(["data", "summary", "market1501", "--root", str(out), "--check-images"]) == 1
    text = capsys.readouterr().out
    assert "1 bad" in text and victim.name in text


def test_summary_of_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "summary", "market1501", "--root", str(tmp_path / "none")]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_eval_with_missing_weights(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[2] / "configs" / "bot_r50_market1501.yaml"
    assert main(["eval", str(recipe), "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_an_onnx_model_with_the_same_features(tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort
    import torch

    from reidkit.engine.checkpoint import save_checkpoint
    from reidkit.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet18_bnneck", 7, pretrained="none")
    model.train()(torch.randn(8, 3, 64, 32))          # non-trivial BN running statistics
    save_checkpoint({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    out = tmp_path / "m.onnx"
    rc = main(["export", str(Path(__file__).resolve().parents[2] / "configs" / "bot_r18_cuhk03.yaml"),
               "data.height=64", "data.width=32",
               "--weights", str(tmp_path / "w.pth"), "--out", str(out)])
    assert rc == 0 and "max |diff|" in capsys.readouterr().out
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_debug_shows_the_traceback_and_the_plain_error_does_not(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "nope.yaml")
    assert main(["train", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reidkit train: error: recipe not found") and "Traceback" not in err
    for argv in (["--debug", "train", missing], ["train", missing, "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "RecipeError: recipe not found" in err
    monkeypatch.setenv("REIDKIT_DEBUG", "1")
    assert main(["train", missing]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
