"""Checkpoints that describe themselves (issue 19, part 3): what embedding needs is read from the checkpoint,
and a request that contradicts it is an error instead of features unrelated to the right ones."""
import numpy as np
import pytest
import torch

import reidkit
from reidkit.cli import main
from reidkit.data import build_dataset
from reidkit.data.cache import ImageCache
from reidkit.engine import CheckpointError
from reidkit.engine.checkpoint import embedding_spec, load_checkpoint, model_from_checkpoint
from reidkit.engine.features import extract_features
from reidkit.recipe_files import load_recipe


def test_a_checkpoint_says_how_to_embed_with_it(tiny_run, tiny_data):
    state = load_checkpoint(tiny_run / "best.pth")
    spec = embedding_spec(state)
    assert (spec.arch, spec.image_size, spec.options) == ("resnet18_bnneck", (32, 16), {})   # default head
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    # an older checkpoint without the record: the same, derived from its recipe
    del state["embedding"]
    assert embedding_spec(state) == spec
    assert embedding_spec({"state_dict": state["state_dict"]}) is None        # a bare state_dict says nothing


def test_the_extractor_needs_only_the_weights_and_matches_evaluation(tiny_run, tiny_data):
    extractor = reidkit.FeatureExtractor(weights=tiny_run / "best.pth", backend="torch")
    assert extractor.image_size == (32, 16) and extractor.model_name == "resnet18_bnneck"
    query = build_dataset("synthetic", str(tiny_data), num_cameras=3).query
    got = extractor([r.path for r in query])
    model = model_from_checkpoint(None, tiny_run / "best.pth")
    expected = extract_features(model, ImageCache(query, (32, 16), progress=False), 64)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_a_share_of_the_rows_embeds_as_the_whole_does(tiny_run, tiny_data):
    """What each process embeds of the training set when a cluster memory relabels it under data parallelism:
    rows start:stop of the whole, in order, the batches cut elsewhere."""
    from reidkit.data.datasets import build_dataset
    query = build_dataset("synthetic", str(tiny_data), num_cameras=3).query
    cache = ImageCache(query, (32, 16), progress=False)
    model = model_from_checkpoint(None, tiny_run / "best.pth")
    whole = extract_features(model, cache, 8, flip=True)
    parts = [extract_features(model, cache, 8, flip=True, rows=(a, b)) for a, b in ((0, 5), (5, 19), (19, len(cache)))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)


def test_a_request_that_contradicts_the_checkpoint_is_an_error(tiny_run, tiny_data, capsys):
    best = tiny_run / "best.pth"
    with pytest.raises(CheckpointError, match=r"trained as resnet18_bnneck at 32x16.*input 256x128 \(trained: 32x16\)"):
        reidkit.FeatureExtractor("resnet18_bnneck", best, image_size=(256, 128))
    with pytest.raises(CheckpointError, match=r"architecture osnet_x0_25 \(trained: resnet18_bnneck\)"):
        reidkit.FeatureExtractor("osnet_x0_25", best)
    with pytest.raises(CheckpointError, match=r"last_stride=2 \(trained: 1\)"):
        model_from_checkpoint("resnet18_bnneck", best, last_stride=2)
    code = main(["extract", str(tiny_data / "query"), "--arch", "resnet18_bnneck", "--size", "256", "128",
                 "--weights", str(best), "--out", str(tiny_run.parent / "g.npz"), "--no-progress"])
    assert code == 2 and "input 256x128 (trained: 32x16)" in capsys.readouterr().err
    recipe = load_recipe(None, ["data.height=64", "data.width=32", "model.name=resnet18_bnneck"])
    from reidkit.cli import load_trained_model
    with pytest.raises(CheckpointError, match=r"input 64x32 \(trained: 32x16\)"):
        load_trained_model(recipe, str(best))


def test_best_holds_weights_only_and_last_everything(tiny_run):
    best, last = (torch.load(tiny_run / n, weights_only=True) for n in ("best.pth", "last.pth"))
    assert "optimizer" not in best and "rng" not in best and "embedding" in best
    assert {"optimizer", "scheduler", "rng", "embedding"} <= set(last)
    assert (tiny_run / "best.pth").stat().st_size < (tiny_run / "last.pth").stat().st_size
