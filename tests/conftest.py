import os
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if SHARED.is_dir():                  # the shipped recipes name datasets under $REIDKIT_DATA (cuhk03/labeled, ...)
    os.environ.setdefault("REIDKIT_DATA", str(SHARED))


def make_tiny_synthetic(tmp_path_factory, name: str, num_ids: int = 16, seed: int = 1,
                        num_distractors: int = 6) -> Path:
    """A tiny built-in synthetic dataset (3 cameras, 2-3 images per camera) for end-to-end tests."""
    from reidkit.data.synthesis import generate
    root = tmp_path_factory.mktemp(name) / "synthetic"
    generate(root, num_ids=num_ids, num_cameras=3, seed=seed, images_per_camera=(2, 3),
             num_distractors=num_distractors, quiet=True)
    return root


def tiny_overrides(root, out, epochs=3) -> list[str]:
    """A ResNet-18 BoT run on a tiny synthetic set at 32x16 (seconds per epoch on a CPU)."""
    return ["data.dataset=synthetic", f"data.root={root}", "data.options={num_cameras: 3}", "data.height=32",
            "data.width=16",
            "data.batch_size=8", "data.num_instances=2", "data.test_batch_size=64",
            "model.name=resnet18_bnneck", "model.pretrained=none", "optim.lr=0.001",
            "schedule.kind=cosine", "schedule.warmup_epochs=0", f"train.epochs={epochs}",
            "train.eval_every=1", f"train.output_dir={out}", "augment.padding=2"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny synthetic set of :func:`tiny_overrides` (16 identities, 3 cameras), shared by the session."""
    return make_tiny_synthetic(tmp_path_factory, "tiny", num_ids=16, seed=1, num_distractors=6)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """One epoch of the :func:`tiny_overrides` run, trained once per session: its folder (last.pth, best.pth,
    history.json, recipe.json).  Tests must not write into it."""
    from reidkit.engine import Trainer
    from reidkit.recipe_files import load_recipe
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    Trainer(load_recipe(None, tiny_overrides(tiny_data, out, epochs=1)), progress=False).fit()
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device (torch {torch.__version__}); bench/gpu_check.sh runs these "
                                   "on a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def torchreid():
    """torchreid 0.2.5's ``torchreid.reid`` package (the peer the parity tests compare with); skip when absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchreid.reid as tr
    except Exception as e:  # noqa: BLE001 - a broken peer install is a skip too
        pytest.skip(f"torchreid 0.2.5 not installed ({e}); `make bench-peers` installs it")
    return tr


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the checkout (../shared/data); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data not found at {SHARED} (expected ../shared/data beside the checkout)")
    return SHARED
