"""Training curves: every loss term and the evaluation metrics over epochs."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: dict, out: str | Path) -> Path:
    """Loss terms, mAP / rank-1 / mINP and (with camera-aware mining) what the miner picked."""
    out = Path(out)
    mining = sorted(k for k in history if k.startswith("mining/"))
    fig, axes = plt.subplots(1, 3 if mining else 2, figsize=(15 if mining else 10, 3.6))
    ax_loss, ax_map = axes[0], axes[1]
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
    if mining:
        ax = axes[2]
        for key in mining:
            ax.plot(epochs, history[key], marker=".", label=key[7:])
        ax.set_xlabel("epoch")
        ax.set_title("camera-aware mining (epoch means)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
