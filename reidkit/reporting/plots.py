"""Training curves: every loss term and the evaluation metrics over epochs."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: dict, out: str | Path) -> Path:
    """Loss terms (left) and mAP / rank-1 / mINP (right) against epochs."""
    out = Path(out)
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = history["epoch"]
    for key in sorted(k for k in history if k.startswith("loss/")):
        ax_loss.plot(epochs, history[key], marker=".", label=key[5:])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (weighted)")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title("training losses")
    for key in ("mAP", "rank1", "mINP"):
        if history.get(key):
            ax_map.plot(history["eval_epoch"], [100 * v for v in history[key]], marker="o", label=key)
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("%")
    ax_map.set_ylim(0, 100)
    ax_map.legend()
    ax_map.set_title("evaluation")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
