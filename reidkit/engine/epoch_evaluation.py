"""The evaluations of a training run and which of them ``best.pth`` keeps.

After an epoch due for evaluation the trainer asks :class:`RunEvaluation` for the validation figures (the held-out
training identities, :mod:`reidkit.data.validation`) and the test figures, then :func:`select_checkpoint` for what
``train.select_on`` makes of them; after the last epoch :meth:`RunEvaluation.finish` evaluates ``eval.datasets``
and (the first process) writes the run's summary, files and report.  The loop itself stays in
:mod:`reidkit.engine.trainer`; nothing here knows a method.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..config import Recipe
from ..data.cache import ImageCache
from ..data.records import ReIDDataset
from ..data.validation import ValidationSplit
from ..evaluation import RankResult
from ..pieces import TrainingPiece
from .distributed import DistEnv, unwrap
from .evaluate import evaluate_model, evaluate_other_datasets, load_other_datasets
from .run_data import validation_dataset
from .run_outputs import write_run_outputs
from .run_record import RunRecord
from .run_report import RunFacts, write_training_report

log = logging.getLogger("reidkit")


@dataclass(frozen=True)
class Selection:
    """What one evaluation means for ``best.pth``."""
    best_map: float             # the selection mAP to beat from now on (with select_on=last: the latest test mAP)
    keep: bool                  # this evaluation's weights become best.pth
    reading: float | None       # what a plateau schedule observes (None with select_on=last: nothing is read)


def select_checkpoint(select_on: str, result: RankResult, val: RankResult | None, best_map: float) -> Selection:
    """``best.pth`` after an evaluation with test figures ``result`` and validation figures ``val``: with
    ``select_on="last"`` the latest is kept (and nothing is read for a schedule); otherwise the evaluation
    ``select_on`` names ("val", or an explicit "test") is kept when it beats ``best_map``."""
    if select_on == "last":
        return Selection(result.mAP, True, None)
    selected = val if select_on == "val" and val is not None else result
    better = selected.mAP > best_map
    return Selection(selected.mAP if better else best_map, better, selected.mAP)


class RunEvaluation:
    """The test and validation splits of one run, decoded with its training images (this process's share under
    DDP), and what evaluating on them leaves: the latest test features (for the report) and the cross-dataset
    figures (``eval.datasets``, their layout checked when this is built)."""

    def __init__(self, recipe: Recipe, dataset: ReIDDataset, validation: ValidationSplit | None,
                 test_caches: tuple[ImageCache, ImageCache] | None,
                 val_caches: tuple[ImageCache, ImageCache] | None, device: torch.device, env: DistEnv,
                 progress: bool):
        self.recipe, self.dataset, self.validation = recipe, dataset, validation
        self._test_caches, self.val_caches = test_caches, val_caches
        self.device, self.env, self.progress = device, env, progress
        self.last_features: tuple[torch.Tensor, torch.Tensor] | None = None
        self.other_datasets = load_other_datasets(recipe)
        self.cross_dataset: dict[str, RankResult] = {}

    @property
    def test_caches(self) -> tuple[ImageCache, ImageCache]:
        if self._test_caches is None:
            raise ValueError(f"{self.dataset.name} has no query / gallery to evaluate on")
        return self._test_caches

    def test(self, model: nn.Module) -> RankResult:
        """mAP / CMC of ``model`` on the test split; its features stay in ``last_features``."""
        t = self.recipe.train
        query, gallery = self.test_caches
        result, qf, gf = evaluate_model(model, query, gallery, self.recipe.eval, self.recipe.data.test_batch_size,
                                        t.amp, return_features=True, channels_last=t.channels_last,
                                        device=self.device, env=self.env, dataset=self.dataset,
                                        progress=self.progress)
        self.last_features = (qf, gf)
        return result

    def on_validation(self, model: nn.Module) -> RankResult:
        """mAP / CMC of ``model`` on the held-out validation identities."""
        if self.val_caches is None or self.validation is None:
            raise ValueError("this run holds no validation split (data.val_identities)")
        t = self.recipe.train
        return evaluate_model(model, *self.val_caches, self.recipe.eval, self.recipe.data.test_batch_size, t.amp,
                              channels_last=t.channels_last, device=self.device, env=self.env,
                              dataset=validation_dataset(self.dataset, self.validation), progress=self.progress)

    def finish(self, model: nn.Module, result: RankResult | None, out: Path, facts: RunFacts, record: RunRecord,
               pieces: list[TrainingPiece], is_main: bool) -> None:
        """After the last epoch: ``eval.datasets`` (every process), then (the first process) the summaries,
        ``history.json``, the pieces' files, the curves and the report."""
        self.cross_dataset = evaluate_other_datasets(model, self.recipe, self.device, self.env, self.progress,
                                                     self.other_datasets)
        record.history["cross_dataset"] = {name: r.as_dict() for name, r in self.cross_dataset.items()}
        if not is_main:
            return
        write_run_outputs(out, facts, record, pieces, self.cross_dataset)
        if result is not None and self.last_features is not None:
            # the features were gathered from every process: the whole splits' records, not this process's share
            query, gallery = ((self.dataset.query, self.dataset.gallery) if self.env.enabled
                              else (self.test_caches[0].records, self.test_caches[1].records))
            write_training_report(out, facts, unwrap(model), result, self.last_features, query, gallery,
                                  record.history, self.cross_dataset)


def log_evaluation(epoch: int, result: RankResult, val: RankResult | None, select_on: str) -> None:
    """The log lines of one evaluation (0-based ``epoch``): validation first, then test, said to be monitoring
    only when validation selects."""
    if val is not None:
        log.info("epoch %d  validation mAP %.2f%%  rank-1 %.2f%%", epoch + 1, 100 * val.mAP, 100 * val.rank(1))
    log.info("epoch %d  test%s mAP %.2f%%  rank-1 %.2f%%  mINP %.2f%%", epoch + 1,
             " (monitoring, not used for selection)" if select_on == "val" else "",
             100 * result.mAP, 100 * result.rank(1), 100 * result.mINP)


__all__ = ["RunEvaluation", "Selection", "log_evaluation", "select_checkpoint"]
