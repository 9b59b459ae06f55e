"""The report a training run leaves (``OUTPUT/report/index.html``) and how its best.pth was selected."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.validation import ValidationSplit
from ..evaluation import RankResult
from ..evaluation.cameras import camera_pair_map
from ..evaluation.distance import compute_distance
from ..recipe_files import recipe_to_dict
from ..reporting import write_report
from .device import describe
from .distributed import unwrap

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("reidkit")


def log_run_plan(recipe, dataset, validation: ValidationSplit | None, select_on: str, device: str,
                 data_parallel: str | None) -> None:
    """Before training: the dataset, the validation split, what best.pth is selected on, foot-guns, the device."""
    t = recipe.train
    log.info("\n%s", dataset.summary())
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
    log.info("training on %s, amp %s%s", device, t.amp, f"; data parallel: {data_parallel}" if data_parallel else "")


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


def write_run_report(trainer: Trainer, result: RankResult) -> Path:
    """``OUTPUT/report/index.html`` of ``trainer``'s run: the last evaluation (metrics, the camera-pair mAP table,
    ranked lists with rank and distance), the curves, the data summary and the recipe."""
    assert trainer.last_features is not None
    qf, gf = trainer.last_features
    recipe, history = trainer.recipe, trainer.history
    distmat = compute_distance(qf, gf, recipe.eval.metric).cpu().numpy()
    # the features were gathered from every process: the whole splits' records, not this process's share
    q_records, g_records = ((trainer.dataset.query, trainer.dataset.gallery) if trainer.env.enabled
                            else (trainer.query_cache.records, trainer.gallery_cache.records))
    epoch = history["eval_epoch"][-1] if history["eval_epoch"] else "?"
    notes = [initialisation_note(recipe.model.pretrained, unwrap(trainer.model)),
             f"test set (query / gallery) after epoch {epoch}, {recipe.eval.metric} distance"
             f"{', re-ranked' if recipe.eval.rerank else ''}",
             *selection_summary(trainer.select_on, history, trainer.validation),
             f"trained on {describe(trainer.device)}"
             + (f", data parallel: {trainer.env.describe()}" if trainer.env.enabled else "")]
    ids = [np.array([getattr(r, k) for r in recs]) for k in ("pid", "camid") for recs in (q_records, g_records)]
    cameras = camera_pair_map(distmat, ids[0], ids[1], ids[2], ids[3])
    if trainer.cross_dataset:
        notes.append("cross-dataset rows: the last epoch's model on another dataset's query / gallery "
                     "(eval.datasets)")
    rows = {f"epoch {epoch}": result, **{f"{name} (cross-dataset)": r for name, r in trainer.cross_dataset.items()}}
    return write_report(trainer.out / "report", f"reidkit train: {recipe.model.name} on {trainer.dataset.name}",
                        rows, history, q_records, g_records, distmat, notes,
                        recipe=recipe_to_dict(recipe), data_summary=trainer.dataset.summary(), camera_table=cameras)
