"""Training curves: every loss term and the evaluation metrics over epochs, what a miner picked, and the
adaptive L2 factors per parameter category."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: dict, out: str | Path) -> Path:
    """Loss terms, mAP / rank-1 / mINP and, when present, what the miner picked and the adaptive L2 factors."""
    out = Path(out)
    mining = sorted(k for k in history if k.startswith("mining/"))
    factors = sorted(k for k in history if k.startswith("l2_factor/"))
    panels = 2 + bool(mining) + bool(factors)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
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
        _plot_mining(axes[2], history)
    if factors:
        _plot_factors(axes[-1], history, factors)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_factors(ax, history: dict, keys: list[str]) -> None:
    """Mean adaptive L2 factor of each parameter category at each epoch's end (the paper's Fig. 3)."""
    for key in keys:
        ax.plot(history["epoch"], history[key], marker=".", label=key.split("/", 1)[1])
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean regularisation factor")
    ax.legend(fontsize=7)
    ax.set_title("adaptive L2 factors")


def _plot_mining(ax, history: dict) -> None:
    """Per iteration when traced (fractions left axis, bias values right axis), else epoch means."""
    trace = history.get("iteration_trace")
    if trace and trace.get("step"):
        x, series, unit = trace["step"], {k: v for k, v in trace.items() if k != "step"}, "iteration"
    else:
        x, unit = history["epoch"], "epoch"
        series = {k[7:]: history[k] for k in history if k.startswith("mining/")}
    bias_ax = ax.twinx()
    for key, values in sorted(series.items()):
        target = bias_ax if key.startswith("bias") else ax
        color = "C0" if "positive" in key else "C1"          # a pair's fraction and its bias share a colour
        target.plot(x, values, lw=0.8, label=key, color=color, linestyle="--" if key.startswith("bias") else "-")
    ax.set_xlabel(unit)
    ax.set_ylabel("fraction of anchors")
    ax.set_ylim(0, 1.02)
    bias_ax.set_ylabel("bias added to distances")
    lines = ax.get_lines() + bias_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center right")
    ax.set_title(f"camera-aware mining (per {unit})")
