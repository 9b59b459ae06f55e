"""What a training run writes besides its checkpoints: at the start the run folder, its recipe, the validation
split and TensorBoard; after the last epoch the cross-dataset evaluation, the summary lines, ``history.json``, the
training pieces' files, the curves and the report.  The first process writes; every process evaluates."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluation import RankResult
from ..files import write_text_atomic
from ..recipe_files import recipe_to_dict
from ..reporting.plots import plot_curves
from .evaluate import evaluate_other_datasets
from .run_folder import prepare_run_folder, record_run_file
from .run_report import selection_summary, write_run_report

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("reidkit")


def open_run_outputs(trainer: Trainer, resume: str | Path | None, overwrite: bool,
                     changes: dict[str, tuple[Any, Any]] | None = None, resumed_epoch: int = 0) -> None:
    """The run folder (refused when it holds a finished run, unless ``resume`` or ``overwrite``), ``recipe.json``,
    ``validation_split.json`` and the TensorBoard writer.  A resumed run whose recipe ``changes`` keeps
    ``recipe.json`` (it describes the earlier epochs) and writes ``recipe_resumed_epoch_N.json`` beside it."""
    if not trainer.is_main:
        return
    prepare_run_folder(trainer.out, resume, overwrite, recipe_inputs(trainer.recipe))
    text = json.dumps(recipe_to_dict(trainer.recipe), indent=2)
    if resume is not None and changes and (trainer.out / "recipe.json").is_file():
        epoch = resumed_epoch
        name = f"recipe_resumed_epoch_{epoch}.json"
        log.warning("resuming %s at epoch %d with a changed recipe: %s. recipe.json keeps the recipe of epochs 1-%d; "
                    "%s holds this one", resume, epoch, "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in
                                                           changes.items()), epoch, name)
        write_text_atomic(trainer.out / name, text)
    elif resume is None or not (trainer.out / "recipe.json").is_file():
        write_text_atomic(trainer.out / "recipe.json", text)
    if trainer.validation is not None:
        v = trainer.validation
        write_text_atomic(trainer.out / "validation_split.json", json.dumps(
            {"held_out_identities": v.identities, "seed": trainer.recipe.train.seed,
             "queries": [r.path for r in v.query], "gallery": [r.path for r in v.gallery]}, indent=1))
    for events in trainer.record.open_tensorboard(trainer.out / "tensorboard"):
        record_run_file(events)


def recipe_inputs(recipe) -> dict[str, str]:
    """The files a recipe reads, by their dotted key (``model.pretrained``, ``data.cache_file``, a teacher's
    weights, ...): every string value that names an existing file."""
    found: dict[str, str] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and value and len(value) < 4096 and Path(value).is_file():
            found[key] = value
    walk(recipe_to_dict(recipe), "")
    return found


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
