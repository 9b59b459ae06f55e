from pathlib import Path

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
