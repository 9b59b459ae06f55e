"""What a training run writes besides its checkpoints: at the start the run folder, its recipe, the validation
split and TensorBoard; after the last epoch the cross-dataset evaluation, the summary lines, ``history.json``, the
training pieces' files, the curves and the report.  The first process writes; every process evaluates."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..evaluation import RankResult
from ..files import write_text_atomic
from ..recipe_files import recipe_to_dict
from ..reporting.plots import plot_curves
from .evaluate import evaluate_other_datasets
from .run_folder import prepare_run_folder
from .run_report import selection_summary, write_run_report

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("reidkit")


def open_run_outputs(trainer: Trainer, resume: str | Path | None, overwrite: bool) -> None:
    """The run folder (refused when it holds a finished run, unless ``resume`` or ``overwrite``), ``recipe.json``,
    ``validation_split.json`` and the TensorBoard writer."""
    if not trainer.is_main:
        return
    prepare_run_folder(trainer.out, resume, overwrite)
    write_text_atomic(trainer.out / "recipe.json", json.dumps(recipe_to_dict(trainer.recipe), indent=2))
    if trainer.validation is not None:
        v = trainer.validation
        write_text_atomic(trainer.out / "validation_split.json", json.dumps(
            {"held_out_identities": v.identities, "seed": trainer.recipe.train.seed,
             "queries": [r.path for r in v.query], "gallery": [r.path for r in v.gallery]}, indent=1))
    trainer.record.open_tensorboard(trainer.out / "tensorboard")


def finish_run(trainer: Trainer, result: RankResult | None) -> None:
    """After the last epoch: ``eval.datasets`` (cross-dataset), the selection summary, and every output file."""
    trainer.cross_dataset = evaluate_other_datasets(trainer.model, trainer.recipe, trainer.device, trainer.env,
                                                    trainer.progress, trainer.other_datasets)
    trainer.history["cross_dataset"] = {name: r.as_dict() for name, r in trainer.cross_dataset.items()}
    if not trainer.is_main:
        return
    for line in selection_summary(trainer.select_on, trainer.history, trainer.validation):
        log.info("%s", line)
    for name, r in trainer.cross_dataset.items():
        log.info("cross-dataset, %s (last epoch's model): mAP %.2f%%  rank-1 %.2f%%", name, 100 * r.mAP,
                 100 * r.rank(1))
    trainer.record.flush()
    write_text_atomic(trainer.out / "history.json", json.dumps(trainer.history, indent=1))
    for piece in trainer.pieces:
        piece.write_outputs(trainer.out)
    if trainer.history["epoch"]:
        plot_curves(trainer.history, trainer.out / "curves.png")
    if result is not None and trainer.last_features is not None:
        write_run_report(trainer, result)
