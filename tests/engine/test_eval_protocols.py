import re

import numpy as np
import pytest

from reidkit.config import EvalConfig
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.engine.checkpoint import model_from_checkpoint
from reidkit.engine.evaluate import evaluate_model
from reidkit.evaluation import compute_distance, evaluate_single_shot


def test_the_single_shot_protocol_is_wired_into_evaluation(tiny_run, tiny_data):
    model = model_from_checkpoint(None, tiny_run / "best.pth")
    ds = build_dataset("synthetic", str(tiny_data), num_cameras=3)
    q, g = ImageCache(ds.query, (32, 16), progress=False), ImageCache(ds.gallery, (32, 16), progress=False)
    market, qf, gf = evaluate_model(model, q, g, EvalConfig(metric="cosine"), return_features=True)
    single = evaluate_model(model, q, g, EvalConfig(metric="cosine", protocol="single_shot", single_shot_trials=5))
    reference = evaluate_single_shot(compute_distance(qf, gf, "cosine"), q.pids(), g.pids(), q.camids(),
                                     g.camids(), max_rank=50, num_repeats=5)
    np.testing.assert_allclose(single.cmc, reference.cmc)
    assert single.mAP == pytest.approx(market.mAP)            # mAP stays multi-shot, as torchreid's eval_cuhk03
    with pytest.raises(ValueError, match="single_shot ranks plain distances"):
        evaluate_model(model, q, g, EvalConfig(protocol="single_shot", rerank=True))


@pytest.mark.slow
def test_eval_of_several_weights_reports_each_and_their_ensemble(tiny_run, tiny_data, tmp_path, capsys):
    """An ensemble of a model with itself ranks as the model (cosine: the mean of two equal cosines); an
    ensemble of two different checkpoints is evaluated beside both."""
    import yaml

    from conftest import tiny_overrides
    from reidkit.cli import main
    from reidkit.recipe_files import load_recipe
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "unused") +
                                                 ["eval.metric=cosine"]).model_dump(mode="json")))
    best = str(tiny_run / "best.pth")
    assert main(["eval", str(recipe), "--weights", best, "--weights", best, "--no-report", "--no-progress"]) == 0
    text = capsys.readouterr().out
    maps = [float(m) for m in re.findall(r"mAP:\s*([\d.]+)%", text)]
    assert len(maps) == 3 and maps[0] == maps[1] == maps[2]
    assert "ensemble of 2:" in text
    out = tmp_path / "rep"
    assert main(["eval", str(recipe), "--weights", best, "--weights", str(tiny_run / "last.pth"),
                 "--report", str(out), "--no-progress"]) == 0
    page = (out / "index.html").read_text()
    assert "ensemble of 2" in page and page.count("best.pth") >= 1


def test_eval_of_an_exported_onnx_model_matches_its_checkpoint(tiny_run, tiny_data, tmp_path, capsys):
    """`reidkit eval --weights model.onnx` evaluates the deployed file (ONNX Runtime) with the checkpoint's figures
    (to float rounding); a recipe that contradicts the export's recorded model or normalisation is refused."""
    import yaml

    from conftest import tiny_overrides
    from reidkit.cli import main
    from reidkit.deploy.optimize import export_onnx
    from reidkit.engine.checkpoint import load_embedding_model
    from reidkit.recipe_files import load_recipe
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "unused") +
                                                 ["eval.metric=cosine"]).model_dump(mode="json")))
    model, spec = load_embedding_model(tiny_run / "best.pth")
    onnx_path = export_onnx(model, tmp_path / "m.onnx", (32, 16), spec=spec)
    figures = []
    for weights in (tiny_run / "best.pth", onnx_path):
        assert main(["eval", str(recipe), "--weights", str(weights), "--no-report", "--no-progress"]) == 0
        text = capsys.readouterr().out
        figures.append([float(v) for v in re.findall(r"(?:mAP|Rank-1)\s*:\s*([\d.]+)%", text)])
    assert len(figures[0]) == 2 and figures[1] == pytest.approx(figures[0], abs=0.02)
    assert main(["eval", str(recipe), "model.name=resnet34_bnneck", "--weights", str(onnx_path), "--no-report"]) == 2
    assert "architecture resnet34_bnneck" in capsys.readouterr().err
    assert main(["eval", str(recipe), "augment.mean=[0.5,0.5,0.5]", "--weights", str(onnx_path), "--no-report"]) == 2
    assert "normalised with mean" in capsys.readouterr().err
