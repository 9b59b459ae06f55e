"""The report a training run leaves (``OUTPUT/report/index.html``) and how its best.pth was selected."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..config import Recipe
from ..data.records import ImageRecord, ReIDDataset
from ..data.validation import ValidationSplit
from ..evaluation import RankResult
from ..evaluation.cameras import camera_pair_map
from ..evaluation.distance import compute_distance
from ..recipe_files import recipe_to_dict
from ..reporting import write_report

log = logging.getLogger("reidkit")


@dataclass
class RunFacts:
    """What a training run's log, summaries and report say about it (the trainer fills it once)."""

    recipe: Recipe
    dataset: ReIDDataset
    validation: ValidationSplit | None
    select_on: str                 # val, last or test (auto resolved)
    device: str                    # described: "cpu (2 threads)", "cuda:0 (NVIDIA H100 ...)"
    data_parallel: str | None = None


def log_run_plan(facts: RunFacts) -> None:
    """Before training: the dataset, the validation split, what best.pth is selected on, foot-guns, the device."""
    recipe, validation, select_on, data_parallel = facts.recipe, facts.validation, facts.select_on, facts.data_parallel
    t = recipe.train
    log.info("\n%s", facts.dataset.summary())
    if validation is not None:
        log.info("validation: %d training identities held out (%d queries, %d gallery images); best.pth "
                 "and the lr plateau read it, the test set is evaluated for monitoring only",
                 len(validation.identities), len(validation.query), len(validation.gallery))
    if select_on == "test":
        log.warning("WARNING: train.select_on=test: best.pth%s read the TEST set (set "
                    "data.val_identities to select on held-out training identities instead)",
                    " and the lr plateau" if recipe.schedule.kind == "plateau" else "")
    elif select_on == "last":
        log.info("no validation split (data.val_identities): best.pth is the latest evaluated epoch, "
                 "nothing is selected on the test set")
    if t.fixbase_epochs >= t.epochs:
        log.warning("WARNING: train.fixbase_epochs=%d >= train.epochs=%d: the whole run trains only %s; the "
                    "rest of the network stays as loaded (lower fixbase_epochs, or raise train.epochs)",
                    t.fixbase_epochs, t.epochs, ", ".join(t.open_layers))
    log.info("training on %s, amp %s%s", facts.device, t.amp,
             f"; data parallel: {data_parallel}" if data_parallel else "")


def selection_summary(select_on: str, history: dict, validation: ValidationSplit | None) -> list[str]:
    """How best.pth was chosen, and (with a validation split) the test figures of the chosen checkpoint."""
    if select_on == "test":
        return ["WARNING: best.pth was selected on the TEST set (train.select_on=test)"]
    if select_on == "last":
        return ["best.pth is the latest evaluated epoch (no validation split: data.val_identities selects on "
                "held-out training identities)"]
    if not history.get("val/mAP") or validation is None:
        return []
    best = max(range(len(history["val/mAP"])), key=lambda i: history["val/mAP"][i])   # the first of equal ones
    return [f"best.pth: epoch {history['eval_epoch'][best]}, selected on validation ({len(validation.identities)} "
            f"held-out training identities, mAP {100 * history['val/mAP'][best]:.2f}%); its test mAP "
            f"{100 * history['mAP'][best]:.2f}%, rank-1 {100 * history['rank1'][best]:.2f}% (monitoring only)"]


def initialisation_note(pretrained: str | None, model) -> str:
    """What the run started from, as the report's header says it; ``auto`` that found no ImageNet file is a
    warning (a recipe stating the paper's setting would otherwise silently train from random weights)."""
    loaded = [m.pretrained for m in model.modules() if isinstance(getattr(m, "pretrained", None), bool)]
    if pretrained in (None, "none"):
        return "initialisation: random (model.pretrained=none)"
    if pretrained == "auto":
        if loaded and all(loaded):
            return "initialisation: ImageNet weights from the torch hub cache (model.pretrained=auto)"
        return ("WARNING: model.pretrained=auto found no ImageNet weights in the torch hub cache: the backbone "
                "trained from RANDOM initialisation (model.pretrained=imagenet makes it an error)")
    if pretrained == "imagenet":
        return "initialisation: torchvision's ImageNet weights (model.pretrained=imagenet)"
    return f"initialisation: {pretrained}"


def write_evaluation_report(folder: Path, title: str, rows: dict[str, RankResult], history: dict,
                            query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], qf: torch.Tensor,
                            gf: torch.Tensor, recipe: Recipe, notes: list[str], data_summary: str,
                            num_queries: int = 8) -> Path:
    """``folder/index.html``: the metrics of every row, the camera-pair mAP table and ranked lists of the first
    row's features ``qf`` / ``gf`` (query and gallery images ``query`` / ``gallery``), the curves of ``history``
    (when it has any), the data summary and the recipe.  ``reidkit train`` and ``reidkit eval`` both write
    theirs through here."""
    distmat = compute_distance(qf, gf, recipe.eval.metric).cpu().numpy()
    ids = [np.array([getattr(r, k) for r in recs]) for k in ("pid", "camid") for recs in (query, gallery)]
    cameras = camera_pair_map(distmat, ids[0], ids[1], ids[2], ids[3])
    return write_report(folder, title, rows, history, query, gallery, distmat, notes, num_queries=num_queries,
                        recipe=recipe_to_dict(recipe), data_summary=data_summary, camera_table=cameras)


def write_training_report(out: Path, facts: RunFacts, model: nn.Module, result: RankResult,
                          features: tuple[torch.Tensor, torch.Tensor], query: Sequence[ImageRecord],
                          gallery: Sequence[ImageRecord], history: dict,
                          cross_dataset: dict[str, RankResult]) -> Path:
    """``OUT/report/index.html`` of a training run: its last evaluation (``result`` and its ``features`` of the
    ``query`` / ``gallery`` records), the curves, what it started from and how best.pth was chosen."""
    recipe = facts.recipe
    epoch = history["eval_epoch"][-1] if history["eval_epoch"] else "?"
    notes = [initialisation_note(recipe.model.pretrained, model),
             f"test set (query / gallery) after epoch {epoch}, {recipe.eval.metric} distance"
             f"{', re-ranked' if recipe.eval.rerank else ''}",
             *selection_summary(facts.select_on, history, facts.validation),
             f"trained on {facts.device}" + (f", data parallel: {facts.data_parallel}" if facts.data_parallel else "")]
    if cross_dataset:
        notes.append("cross-dataset rows: the last epoch's model on another dataset's query / gallery "
                     "(eval.datasets)")
    rows = {f"epoch {epoch}": result, **{f"{name} (cross-dataset)": r for name, r in cross_dataset.items()}}
    return write_evaluation_report(out / "report", f"reidkit train: {recipe.model.name} on {facts.dataset.name}",
                                   rows, history, query, gallery, *features, recipe, notes, facts.dataset.summary())
