"""docs/GETTING_STARTED.md's commands, run as written on a small synthetic folder of crops (the training ones with a
smaller image size and two epochs), so that the guide cannot go stale (issue 41)."""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from reidkit.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "GETTING_STARTED.md"
#: what the test adds to `reidkit train` so that it runs in seconds (the guide's recipe: 256x128, 30 epochs)
QUICK = ["data.height=64", "data.width=32", "train.epochs=2", "train.eval_every=1", "data.batch_size=8",
         "data.num_instances=2", "model.pretrained=none", "--no-progress"]


def guide_commands() -> list[list[str]]:
    """The ``reidkit`` commands of the guide's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("reidkit "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_guide_holds_the_whole_path():
    verbs = [c[0] for c in guide_commands()]
    assert verbs == ["data", "train", "eval", "export", "extract", "search"]


@pytest.mark.slow
def test_the_getting_started_guide_runs_as_written(tiny_data, tmp_path, monkeypatch, capsys):
    from reidkit.data import build_dataset
    mydata = tmp_path / "mydata"                 # the synthetic crops in the guide's folder layout
    dataset = build_dataset("synthetic", str(tiny_data), num_cameras=3)
    for split in ("train", "query", "gallery"):
        for r in getattr(dataset, split):
            if r.pid > 0:                        # (the synthetic set's distractors have no person folder)
                folder = mydata / split / f"person{r.pid:03d}" / f"cam{r.camid + 1}"
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(r.path, folder / Path(r.path).name)
    monkeypatch.chdir(tmp_path)
    from reidkit.reporting import ranked_lists
    drawn = []
    real_draw = ranked_lists.ranked_rows_image

    def spy(rows, *args, **kwargs):              # each picture's rows, as drawn (the search's is the last)
        drawn.append(rows)
        return real_draw(rows, *args, **kwargs)
    monkeypatch.setattr(ranked_lists, "ranked_rows_image", spy)
    outputs = {}
    for command in guide_commands():
        args = command + (QUICK if command[0] == "train" else ["--no-progress"] if command[0] in ("eval", "extract")
                          else [])
        assert main(args) == 0, command
        outputs[command[0]] = capsys.readouterr()
    assert "decoded" in outputs["data"].out and "0 bad" in outputs["data"].out
    assert "outputs in runs/mine:\n  report       runs/mine/report/index.html" in outputs["train"].out
    assert "look: python -m webbrowser file://" in outputs["train"].out
    for path in ("runs/mine/best.pth", "runs/mine/report/index.html", "reports/eval_best/index.html",
                 "mine.onnx", "gallery.npz", "ranked.png", "ranked.json"):
        assert (tmp_path / path).is_file(), path
    assert "report -> reports/eval_best/index.html\nlook: python -m webbrowser" in outputs["eval"].out
    ranked = json.loads((tmp_path / "ranked.json").read_text())
    assert len(ranked) == len(list((mydata / "query").rglob("*.jpg"))) and len(ranked[0]["matches"]) == 5
    # the picture labels every match with its rank and distance (issue 41, item 6)
    first = drawn[-1][0][1]
    assert [m[2] for m in first] == [f"#{k} {m['distance']:.3f}" for k, m in enumerate(ranked[0]["matches"], 1)]
