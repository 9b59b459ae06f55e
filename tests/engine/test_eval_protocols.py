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
