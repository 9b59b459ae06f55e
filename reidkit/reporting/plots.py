"""Training curves from a run's history: the loss terms, the evaluation metrics, and one panel per
training piece that records diagnostics.

History conventions (kept by the training loop for every piece, see :mod:`reidkit.pieces`):
``loss/<term>`` per epoch; ``mAP``, ``rank1``, ``mINP`` per evaluation (``eval_epoch``);
``<piece>/<key>`` per epoch; ``trace/<piece>``: ``{"step": [...], key: [...]}`` per
iteration; ``panels[<piece>]``: how to draw the piece (title, ylabel, ylim, keys on a
right-hand axis).  The plot knows no method by name.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

from ..files import save_figure_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

RESERVED = ("loss", "trace", "panels", "val")     # val/<metric>: drawn in the evaluation panel


def piece_groups(history: dict) -> list[str]:
    """The pieces with their own panel: every ``group/`` prefix other than the losses and traces."""
    groups = {k.split("/", 1)[0] for k in history if "/" in k}
    groups |= {k.split("/", 1)[1] for k in history if k.startswith("trace/")}
    return sorted(g for g in groups if g not in RESERVED)


def plot_curves(history: dict, out: str | Path) -> Path:
    """Loss terms, mAP / rank-1 / mINP, and a panel per piece group."""
    out = Path(out)
    groups = piece_groups(history)
    panels = 2 + len(groups)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    ax_loss, ax_map = axes[0], axes[1]
    epochs = history["epoch"]
    for key in sorted(k for k in history if k.startswith("loss/")):
        ax_loss.plot(epochs, history[key], marker=".", label=key[5:])
    ax_loss.set_xlabel("epoch")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("loss (weighted)")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title("training losses")
    for key in ("mAP", "rank1", "mINP"):
        if history.get(key):
            ax_map.plot(history["eval_epoch"], [100 * v for v in history[key]], marker="o", label=f"test {key}")
        if history.get(f"val/{key}"):
            ax_map.plot(history["eval_epoch"], [100 * v for v in history[f"val/{key}"]], marker="s", linestyle="--",
                        label=f"validation {key}")
    ax_map.set_xlabel("epoch")
    ax_map.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_map.set_ylabel("%")
    ax_map.set_ylim(0, 100)
    if ax_map.get_lines():
        ax_map.legend()
    ax_map.set_title("evaluation" if ax_map.get_lines() else "evaluation (none: no query / gallery)")
    for ax, group in zip(axes[2:], groups):
        _plot_group(ax, history, group, history.get("panels", {}).get(group, {}))
    fig.tight_layout()
    save_figure_atomic(out, fig, dpi=110)
    plt.close(fig)
    return out


def _plot_group(ax, history: dict, group: str, spec: dict) -> None:
    """One piece's series: per iteration when traced, else per epoch; ``spec["keys"]``: only these are drawn
    (default all); ``spec["right"]`` keys on a second axis."""
    trace = history.get(f"trace/{group}")
    if trace and trace.get("step"):
        x, series, unit = trace["step"], {k: v for k, v in trace.items() if k != "step"}, "iteration"
    else:
        prefix = f"{group}/"
        x, unit = history["epoch"], "epoch"
        series = {k[len(prefix):]: v for k, v in history.items() if k.startswith(prefix)}
    right_keys = set(spec.get("right", []))
    if spec.get("keys"):                      # the piece draws only these (and its right-hand ones)
        series = {k: v for k, v in series.items() if k in set(spec["keys"]) | right_keys}
    right_ax = ax.twinx() if right_keys & set(series) else None
    for i, (key, values) in enumerate(sorted(series.items())):
        target = right_ax if right_ax is not None and key in right_keys else ax
        style = {"lw": 0.8, "linestyle": "--"} if key in right_keys else {"lw": 0.8 if unit == "iteration" else 1.5}
        target.plot(x[:len(values)], values, label=key, marker="." if unit == "epoch" else None,
                    color=f"C{i}", **style)
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(spec.get("ylabel", ""))
    if spec.get("ylim"):
        ax.set_ylim(*spec["ylim"])
    lines = ax.get_lines()
    if right_ax is not None:
        right_ax.set_ylabel(spec.get("right_label", ""))
        lines += right_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="best")
    ax.set_title(f"{spec.get('title', group.replace('_', ' '))} (per {unit})")


def plot_verification(verification, title: str, out: str | Path) -> Path:
    """The genuine and impostor distance distributions of a :class:`~reidkit.evaluation.verification.Verification`
    (each normalised to its own count), with the threshold of each FAR and the TAR it gives."""
    out = Path(out)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    edges = verification.bins
    for hist, label, colour in ((verification.genuine_hist, f"genuine pairs ({verification.num_genuine})", "tab:green"),
                                (verification.impostor_hist, f"impostor pairs ({verification.num_impostor})",
                                 "tab:red")):
        total = max(int(hist.sum()), 1)
        ax.stairs(hist / total, edges, fill=True, alpha=0.4, color=colour, label=label)
    for far, threshold, tar in zip(verification.fars, verification.thresholds, verification.tars):
        if threshold != float("inf"):
            ax.axvline(threshold, color="k", linestyle=":", linewidth=1)
            ax.annotate(f"FAR {far:.0e}: TAR {100 * tar:.1f}%", (threshold, ax.get_ylim()[1] * 0.9), rotation=90,
                        fontsize=7, ha="right", va="top")
    ax.set_xlabel("distance")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(out, fig, dpi=110)
    plt.close(fig)
    return out
