"""What a training run writes besides its checkpoints: at the start the run folder, its recipe, the validation
split and TensorBoard; after the last epoch the cross-dataset evaluation, the summary lines, ``history.json``, the
training pieces' files and the curves (the report: :mod:`reidkit.engine.run_report`).  The first process writes."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..data.validation import ValidationSplit
from ..evaluation import RankResult
from ..files import write_text_atomic
from ..pieces import TrainingPiece
from ..recipe_files import recipe_to_dict
from ..reporting.plots import plot_curves
from .run_folder import prepare_run_folder, record_run_file
from .run_record import RunRecord
from .run_report import RunFacts, selection_summary

log = logging.getLogger("reidkit")


def open_run_outputs(out: Path, recipe: Recipe, validation: ValidationSplit | None, record: RunRecord,
                     resume: str | Path | None, overwrite: bool, changes: dict[str, tuple[Any, Any]] | None = None,
                     resumed_epoch: int = 0) -> None:
    """(The first process.)  The run folder ``out`` (refused when it holds a finished run, unless ``resume`` or
    ``overwrite``), ``recipe.json``, ``validation_split.json`` and the TensorBoard writer.  A resumed run whose
    recipe ``changes`` keeps ``recipe.json`` (it describes the earlier epochs) and writes
    ``recipe_resumed_epoch_N.json`` beside it."""
    prepare_run_folder(out, resume, overwrite, recipe_inputs(recipe))
    text = json.dumps(recipe_to_dict(recipe), indent=2)
    if resume is not None and changes and (out / "recipe.json").is_file():
        name = f"recipe_resumed_epoch_{resumed_epoch}.json"
        log.warning("resuming %s at epoch %d with a changed recipe: %s. recipe.json keeps the recipe of epochs 1-%d; "
                    "%s holds this one", resume, resumed_epoch, "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in
                                                                   changes.items()), resumed_epoch, name)
        write_text_atomic(out / name, text)
    elif resume is None or not (out / "recipe.json").is_file():
        write_text_atomic(out / "recipe.json", text)
    if validation is not None:
        write_text_atomic(out / "validation_split.json", json.dumps(
            {"held_out_identities": validation.identities, "seed": recipe.train.seed,
             "queries": [r.path for r in validation.query], "gallery": [r.path for r in validation.gallery]},
            indent=1))
    for events in record.open_tensorboard(out / "tensorboard"):
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


def write_run_outputs(out: Path, facts: RunFacts, record: RunRecord, pieces: list[TrainingPiece],
                      cross_dataset: dict[str, RankResult]) -> None:
    """(The first process, after the last epoch.)  The selection summary and the cross-dataset lines in the log,
    ``history.json``, the training pieces' files and ``curves.png``."""
    for line in selection_summary(facts.select_on, record.history, facts.validation):
        log.info("%s", line)
    for name, r in cross_dataset.items():
        log.info("cross-dataset, %s (last epoch's model): mAP %.2f%%  rank-1 %.2f%%", name, 100 * r.mAP,
                 100 * r.rank(1))
    record.flush()
    write_text_atomic(out / "history.json", json.dumps(record.history, indent=1))
    for piece in pieces:
        piece.write_outputs(out)
    if record.history["epoch"]:
        plot_curves(record.history, out / "curves.png")
