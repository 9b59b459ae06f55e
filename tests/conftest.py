import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).parent / "evaluation"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_tiny_synthetic(tmp_path_factory, name: str, num_ids: int = 16, seed: int = 1,
                        num_distractors: int = 6) -> Path:
    """A tiny built-in synthetic dataset (3 cameras, 2-3 images per camera) for end-to-end tests."""
    from reidkit.data.synthetic import generate
    root = tmp_path_factory.mktemp(name) / "synthetic"
    generate(root, num_ids=num_ids, num_cameras=3, seed=seed, images_per_camera=(2, 3),
             num_distractors=num_distractors, quiet=True)
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device (torch {torch.__version__}); bench/gpu_check.sh runs these on a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the checkout (../shared/data); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data not found at {SHARED} (expected ../shared/data beside the checkout)")
    return SHARED
