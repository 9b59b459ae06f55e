"""The built-in synthetic dataset, generated on first use (Market-1501 layout)."""
from __future__ import annotations

from pathlib import Path

from ..records import DatasetLayoutError, ReIDDataset
from ..synthesis import generate as write_synthetic
from .market_style import load_market_style
from .registry import register_dataset


@register_dataset("synthetic")
def synthetic(root: str, num_ids: int = 200, num_cameras: int = 6, seed: int = 0,
              generate: bool = True) -> ReIDDataset:
    """The built-in synthetic set at ``root``, generated there first when the folder is absent or empty."""
    base = Path(root).expanduser()
    if not (base / "bounding_box_train").is_dir():
        if not generate:
            raise DatasetLayoutError(f"synthetic: no dataset at {base} (`reidkit data synth --out {base}` "
                                     "writes one)")
        write_synthetic(base, num_ids=num_ids, num_cameras=num_cameras, seed=seed)
    dataset = load_market_style(base, "synthetic", num_cameras)
    return dataset
