"""The training loop, method-neutral: batch -> forward -> objective + pieces' losses -> backward -> step -> log.

It runs on any device (``train.device``), in mixed precision (``train.amp``) and, when
launched by ``torchrun``, as one of several data-parallel processes
(:mod:`reidkit.engine.distributed`).  What a method adds is a training piece
(:mod:`reidkit.pieces`): the loop, the checkpoints and the plots know no method by name.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch

from ..config import Recipe
from ..data.cache import ImageCache
from ..data.loader import Batch
from ..data.samplers import shard_bounds
from ..evaluation import RankResult
from ..logs import EpochProgress
from ..losses.objective import ReIDObjective, build_miner
from ..models import build_model, check_model
from ..models.heads import embed
from ..numerics import place_model
from ..pieces import PieceContext, StepOutputs, TrainingPiece, branch_outputs, build_pieces
from .checkpoint import (
    EmbeddingSpec,
    model_from_checkpoint,
    save_checkpoint,
)
from .device import autocast, choose_kernels, describe, gradient_scaler, resolve_device, set_threads
from .distributed import (
    DistEnv,
    DistributedError,
    convert_batchnorm,
    data_parallel,
    gather_rows,
    is_collective_failure,
)
from .epoch_evaluation import RunEvaluation, log_evaluation, select_checkpoint
from .guards import DivergenceGuard, StopRequests, TrainingInterrupted
from .meter import NonFiniteLossError, StepMeter
from .optim import build_optimizer
from .pipeline import build_train_loader, relabelled_sampler
from .run_data import decode_run_images, prepare_dataset
from .run_folder import release_run_folder
from .run_outputs import open_run_outputs
from .run_record import DiagnosticSums, RunRecord
from .run_report import RunFacts, log_run_plan
from .run_state import (
    RunPosition,
    TrainingParts,
    check_resume,
    embedding_spec_of,
    restore_training_state,
    training_state,
    weights_state,
)
from .schedulers import WarmupScheduler

log = logging.getLogger("reidkit")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains the recipe's model on its dataset; see :meth:`fit`.

    Building a trainer decodes the training images and builds the model, its
    training pieces and optimisers on ``train.device``; nothing is written until
    :meth:`fit`.  Under ``torchrun`` (the process group initialised, see
    :func:`reidkit.engine.distributed.init_from_env`) it is one of the data-parallel
    processes; the first one alone writes logs, TensorBoard, checkpoints and reports.
    """

    def __init__(self, recipe: Recipe, progress: bool = True):
        self.recipe, self.progress = recipe, progress
        d, t = recipe.data, recipe.train
        self.env = DistEnv.current()
        self.device = resolve_device(t.device, self.env.local_rank if self.env.enabled else None)
        set_threads(t.threads)
        choose_kernels(self.device, t.deterministic)
        self.out = Path(t.output_dir)
        self.is_main = self.env.is_main
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        seed_everything(t.seed)
        check_model(recipe.model.name, pretrained=recipe.model.pretrained or "none", **recipe.model.options())
        self.dataset, self.hidden_labels, self.validation = prepare_dataset(recipe)
        self.labels_hidden = d.labels == "hidden"
        self.select_on = t.select_on if t.select_on != "auto" else ("val" if self.validation else "last")
        self.facts = RunFacts(recipe, self.dataset, self.validation, self.select_on, describe(self.device),
                              self.env.describe() if self.env.enabled else None)
        if self.is_main:
            log_run_plan(self.facts)
        # unlabelled crops have no query / gallery: the run trains, records, and keeps its last epoch
        self.has_test = bool(self.dataset.query) and bool(self.dataset.gallery)
        if not self.has_test and self.is_main:
            log.info("%s has no query / gallery: nothing is evaluated; best.pth is the last epoch",
                     self.dataset.name)
        images = decode_run_images(recipe, self.dataset, self.validation, self.env, progress)
        self.train_cache = images.train
        self.num_classes = 1 if self.labels_hidden else self.dataset.num_train_pids
        self._build_model()
        self._build_optimisation()
        self.loader = build_train_loader(recipe, self.train_cache, self.device, self.env)
        self.augment = self.loader.augment
        sampler = self.loader.sampler
        self.shard_counts = tuple(b - a for a, b in (shard_bounds(sampler.batch_size, sampler.group_size, r,
                                                                  self.env.world_size)
                                                     for r in range(self.env.world_size)))
        self.start_epoch, self.best_map, self.step = 0, -1.0, 0
        # what checkpoints save and a resume restores (the same objects, by reference)
        self.parts = TrainingParts(recipe, self.model, self.num_classes, self.optimizer, self.scheduler, self.pieces,
                                   self.augment.gen, self.device, self.scaler, self.env.world_size)
        # the test and validation splits; eval.datasets' layout is checked now
        self.evaluation = RunEvaluation(recipe, self.dataset, self.validation, images.test, images.validation,
                                        self.device, self.env, progress)
        self.record = RunRecord()                          # history.json and TensorBoard
        self.on_check: Callable[[int, dict[str, float]], None] | None = None    # (step, terms) at every read
        self.guard = DivergenceGuard()
        self.stop = StopRequests(enabled=False)             # Ctrl-C: finish the step, then stop (during fit)

    # -- construction ------------------------------------------------------
    def _build_model(self) -> None:
        r, t = self.recipe, self.recipe.train
        m = r.model
        model = build_model(m.name, self.num_classes, pretrained=m.pretrained or "none", **m.options())
        if self.env.enabled and t.sync_bn:
            model = convert_batchnorm(model, self.device)
        self.model = place_model(model, self.device, self.memory_format)
        self.objective = ReIDObjective(r.loss, build_miner(r)).to(self.device)
        ctx = PieceContext(r, None, self.model, self.num_classes, cast(int, self.model.feature_dim), self.device,
                           self.objective, self.memory_format, load_model=model_from_checkpoint,
                           train_images=self.train_cache, env=self.env, hidden_labels=self.hidden_labels)
        self.pieces: list[TrainingPiece] = build_pieces(ctx)
        # every network trained: the recipe's model, then those the pieces add (deep mutual learning's peers)
        self.models = [self.model] + [m for piece in self.pieces for m in piece.models()]
        for piece in self.pieces:
            piece.setup(self.models)
        if self.labels_hidden and not any(piece.relabels for piece in self.pieces):
            raise ValueError("data.labels=hidden, but no training piece labels the training images: switch on an "
                             "unsupervised method (e.g. cluster_memory.eps=0.6; `reidkit methods` lists them)")
        # parameters without a gradient in some steps: the frozen layers of fixbase epochs, the classifier when no
        # identity loss reads it (an unsupervised method's memory loss)
        self.train_model = data_parallel(self.model, self.device,
                                         find_unused_parameters=t.fixbase_epochs > 0 or r.loss.ce_weight == 0,
                                         broadcast_buffers=not t.sync_bn)

    def _build_optimisation(self) -> None:
        r = self.recipe
        groups = [g for piece in self.pieces for g in piece.parameter_groups()]
        self.optimizer = build_optimizer(self.model, r.optim, groups)
        self.optimizers = [self.optimizer] + [o for piece in self.pieces for o in piece.optimizers()]
        self.scaler = gradient_scaler(self.device, r.train.amp)
        self.scheduler = WarmupScheduler(self.optimizer, r.schedule, r.train.epochs)

    def piece(self, name: str) -> TrainingPiece | None:
        """The training piece ``name`` if the recipe switched it on."""
        return next((p for p in self.pieces if p.name == name), None)

    @property
    def query_cache(self) -> ImageCache:
        """Query images, decoded with the train images (this process's share under DDP)."""
        return self.evaluation.test_caches[0]

    @property
    def gallery_cache(self) -> ImageCache:
        return self.evaluation.test_caches[1]

    @property
    def last_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Query and gallery features of the latest test evaluation."""
        return self.evaluation.last_features

    @property
    def cross_dataset(self) -> dict[str, RankResult]:
        """``eval.datasets``' figures, after the last epoch."""
        return self.evaluation.cross_dataset

    @property
    def history(self) -> dict:
        """What ``history.json`` holds so far (:class:`~reidkit.engine.run_record.RunRecord`)."""
        return self.record.history

    @history.setter
    def history(self, values: dict) -> None:
        self.record.history = values

    # -- checkpoints -------------------------------------------------------
    def state(self, epoch: int) -> dict:
        """Everything a resume needs (``last.pth``; :func:`reidkit.engine.run_state.training_state`)."""
        return training_state(self.parts, RunPosition(epoch, self.step, self.best_map), self.history)

    def weights_state(self, epoch: int) -> dict:
        """What embedding and evaluation need (``best.pth``)."""
        return weights_state(self.parts, RunPosition(epoch, self.step, self.best_map), self.history)

    def embedding_spec(self) -> EmbeddingSpec:
        """What embedding with this run's checkpoints needs (stored in each)."""
        return embedding_spec_of(self.recipe)

    def resume(self, path: str | Path, state: dict | None = None) -> None:
        """Continue from a training checkpoint (:func:`reidkit.engine.run_state.restore_training_state`;
        ``state``: its contents, read already)."""
        state = check_resume(self.parts, path)[0] if state is None else state
        at, self.history = restore_training_state(self.parts, path, state)
        self.start_epoch, self.step, self.best_map = at.epoch, at.step, at.best_map
        self.guard.saved(path, self.start_epoch)
        if self.is_main:
            log.info("resumed from %s at epoch %d (saved by %d process(es))", path, self.start_epoch,
                     int(state.get("world_size", 1)))

    # -- loop --------------------------------------------------------------
    def train_epoch(self, epoch: int, max_batches: int | None = None) -> dict[str, float]:
        """One epoch (or its first ``max_batches`` batches); returns mean loss terms, lr, images/s."""
        self._relabel(epoch)
        for model in self.models:
            model.train()
        self.loader.set_epoch(epoch)
        self.scheduler.set_epoch(epoch)
        for piece in self.pieces:                       # in order: fixbase, BatchNorm modes, then the methods
            piece.on_epoch_start(self.models, epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        meter = StepMeter(self.device, self.recipe.train.log_every)
        diagnostics: DiagnosticSums = {}
        images = 0
        total = len(self.loader) if max_batches is None else min(max_batches, len(self.loader))
        screen = EpochProgress(epoch, self.recipe.train.epochs, total, self.progress, self.is_main,
                               self.recipe.train.progress_seconds)
        first_step = self.step + 1

        def where(step: int) -> str:
            return f"epoch {epoch + 1}, iteration {step - first_step + 1} (lr {lr:.2e})"
        shown: dict[str, float] = {}
        for i, batch in enumerate(self.loader):
            if max_batches is not None and i >= max_batches:
                break
            terms = self._train_step(batch, epoch)
            meter.add(terms, self.step)
            for piece in self.pieces:
                values = piece.diagnostics()
                if values:
                    self.record.add_piece_values(piece, values, self.step, diagnostics)
            images += len(batch.global_pids) if batch.global_pids is not None else batch.images.shape[0]
            if meter.due(self.step) or self.step % self.recipe.train.log_every == 0:
                shown = meter.read(where)
                if self.on_check is not None:
                    self.on_check(self.step, shown)
                if self.step % self.recipe.train.log_every == 0:
                    self.record.add_step(self.step, shown, lr)
            screen.update(i + 1, images, shown, lr)
            if self.stop.requested:
                screen.close()
                raise TrainingInterrupted(self.guard.interrupted(epoch, i + 1, total))
        screen.close()
        if meter.count:
            meter.read(where)                            # every step is checked before the epoch counts
        means = meter.means()
        for piece in self.pieces:
            step_means = {k: v["sum"] / v["count"] for k, v in diagnostics.get(piece.name, {}).items()}
            values = piece.epoch_diagnostics(step_means)
            if values:
                self.record.add_panel(piece)
            for k, v in values.items():
                means[f"{piece.name}/{k}"] = v
        means["images_per_s"] = images / screen.seconds()
        means["lr"] = lr
        return means

    def _relabel(self, epoch: int) -> None:
        """Before an epoch: the training images' labels a piece gives (an unsupervised method's pseudo-labels),
        and the batches the recipe's sampler draws from them."""
        given = [(piece.name, labels) for piece in self.pieces
                 if (labels := piece.relabel(self.models, epoch)) is not None]
        if len(given) > 1:
            raise ValueError(f"training pieces {', '.join(n for n, _ in given)} both relabel the training set")
        if given:
            labels = np.asarray(given[0][1], dtype=np.int64)
            self.loader.relabel(labels, relabelled_sampler(self.recipe, labels, self.train_cache.camids()))

    def _train_step(self, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Forward, losses, backward and every optimiser's step for one batch; returns the weighted terms."""
        for piece in self.pieces:
            piece.on_step_start(self.step, epoch)
        inputs = batch.images.contiguous(memory_format=self.memory_format)
        pids = batch.global_pids if batch.global_pids is not None else batch.pids
        camids = batch.global_camids if batch.global_camids is not None else batch.camids
        counts = self.shard_counts if self.env.enabled else None
        with autocast(self.device, self.recipe.train.amp):
            logits, features = branch_outputs(embed(self.train_model, inputs, batch.camids))
            gathered = [gather_rows(f, counts) for f in features]
            id_scale = inputs.shape[0] * self.env.world_size / len(pids)
            terms = self.objective(logits, gathered, pids, camids, logit_pids=batch.pids, id_scale=id_scale,
                                   branch_weights=getattr(self.model, "branch_weights", None))
            out = StepOutputs(inputs, logits, features, gathered, pids, camids, self.step, epoch,
                              gather=lambda x: gather_rows(x, counts))
            for piece in self.pieces:
                for name, value in piece.extra_loss(out).items():
                    if name in terms:
                        raise ValueError(f"training piece {piece.name} adds a loss term {name!r} that exists already")
                    terms[name] = value
        loss = sum(terms.values())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        else:
            loss.backward()
        for piece in self.pieces:
            piece.after_backward()
        for opt in self.optimizers:
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        self.step += 1
        return terms

    def before_evaluation(self, epoch: int) -> None:
        """Every piece's ``before_evaluation`` (precise BN re-measures BatchNorm statistics, ...); called before
        every evaluation of epoch ``epoch`` (0-based)."""
        for piece in self.pieces:
            piece.before_evaluation(self.models, epoch)

    def evaluate(self) -> RankResult:
        """mAP / CMC of the current model on the test set; its features stay in ``last_features``."""
        return self.evaluation.test(self.model)

    def evaluate_validation(self) -> RankResult:
        """mAP / CMC of the current model on the held-out validation identities."""
        return self.evaluation.on_validation(self.model)

    def _save(self, epoch: int, name: str) -> None:
        if self.is_main:
            save_checkpoint(self.state(epoch) if name == "last.pth" else self.weights_state(epoch), self.out / name)
            if name == "last.pth":
                self.guard.saved(self.out / name, epoch)

    def fit(self, resume: str | Path | None = None, overwrite: bool = False) -> RankResult | None:
        """Train for ``train.epochs`` epochs; returns the last evaluation.

        A run already in ``train.output_dir`` is continued only with ``resume`` (its ``last.pth``) and
        replaced only with ``overwrite``; otherwise :class:`~reidkit.engine.run_folder.RunFolderError`.
        """
        state, changes = check_resume(self.parts, resume) if resume else (None, {})
        if self.is_main:
            open_run_outputs(self.out, self.recipe, self.validation, self.record, resume, overwrite, changes,
                             int(state.get("epoch", 0)) if state else 0)
        try:
            if resume:
                self.resume(resume, state)
            with StopRequests(enabled=not self.env.enabled) as self.stop:
                return self._fit()
        except RuntimeError as e:
            if self.env.enabled and is_collective_failure(e):
                raise DistributedError(
                    f"process {self.env.rank} of {self.env.world_size} lost the others at step {self.step} "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}); another process "
                    f"died or hung. Resume with --resume {self.out / 'last.pth'}") from e
            raise
        finally:
            self.record.close()
            if self.is_main:
                release_run_folder(self.out)

    def _fit(self) -> RankResult | None:
        t = self.recipe.train
        result = None
        for epoch in range(self.start_epoch, t.epochs):
            try:
                means = self.train_epoch(epoch)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e} {self.guard.last_finite()}") from None
            self.guard.check_epoch(self.model, epoch, self.step, means,
                                   {p.name: p.state_dict() for p in self.pieces})
            self.record.add_epoch(epoch, means)
            if self.is_main:
                # the loss terms; the pieces' diagnostics go to history.json and TensorBoard (and their own lines)
                line = " ".join(f"{k}={v:.4f}" for k, v in means.items()
                                if k not in ("lr", "images_per_s") and "/" not in k)
                log.info("epoch %d/%d  %s  lr=%.2e  %.1f img/s", epoch + 1, t.epochs, line, means["lr"],
                         means["images_per_s"])
            if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                if self.has_test:
                    result = self._evaluate_epoch(epoch)
                else:                                    # nothing to evaluate on: the latest epoch is kept
                    self.before_evaluation(epoch)
                    self._save(epoch + 1, "best.pth")
            self._save(epoch + 1, "last.pth")
        self.evaluation.finish(self.model, result, self.out, self.facts, self.record, self.pieces, self.is_main)
        return result

    def _evaluate_epoch(self, epoch: int) -> RankResult:
        """After an epoch due for evaluation: precise BN, validation and test, the record, the lr plateau's
        reading and ``best.pth`` (selected on ``select_on``: validation, test, or simply the latest)."""
        self.before_evaluation(epoch)
        val = self.evaluate_validation() if self.validation is not None else None
        result = self.evaluate()
        for piece in self.pieces:
            piece.after_evaluation(epoch, result, val)
        self.record.add_evaluation(epoch, result, val, self.select_on)
        if self.is_main:
            log_evaluation(epoch, result, val, self.select_on)
        chosen = select_checkpoint(self.select_on, result, val, self.best_map)
        if chosen.reading is not None:                  # a plateau schedule needs val or an explicit test
            self.scheduler.observe(chosen.reading)
        self.best_map = chosen.best_map
        if chosen.keep:
            self._save(epoch + 1, "best.pth")
        return result


__all__ = ["Trainer", "seed_everything"]
