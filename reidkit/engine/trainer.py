"""The training loop: epochs of P x K batches, periodic evaluation, logging, checkpoints."""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .. import __version__
from ..config import Recipe, recipe_to_dict
from ..data import build_dataset
from ..data.cache import ImageCache
from ..data.loader import TrainLoader
from ..data.samplers import RandomIdentityBatchSampler
from ..data.transforms import AugmentConfig, BatchAugment
from ..evaluation import RankResult
from ..losses.adaptive_l2 import AdaptiveL2Regularizer
from ..models import build_model
from ..models.ptl import reset_cell_states
from ..reporting.plots import plot_curves
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights, model_from_checkpoint, save_checkpoint
from .evaluate import evaluate_model
from .freeze import find_modules, open_all_layers, open_layers
from .objective import BoTObjective, check_finite
from .optim import build_optimizer
from .schedulers import WarmupScheduler

log = logging.getLogger("reidkit")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_regularizer(model: torch.nn.Module, recipe: Recipe) -> AdaptiveL2Regularizer | None:
    """Adaptive L2 over the model's trainable tensors when ``loss.adaptive_l2.amplitude > 0``."""
    cfg = recipe.loss.adaptive_l2
    if cfg.amplitude <= 0:
        return None
    if recipe.optim.weight_decay > 0 or recipe.optim.weight_decay_bias > 0:
        log.warning("adaptive L2 is on and optim.weight_decay=%g / weight_decay_bias=%g add a fixed L2 on top; "
                    "the paper sets both to 0", recipe.optim.weight_decay, recipe.optim.weight_decay_bias)
    return AdaptiveL2Regularizer.for_model(model, cfg.amplitude, cfg.c, cfg.theta_init)


def load_teacher(recipe: Recipe, memory_format: torch.memory_format) -> torch.nn.Module | None:
    """The frozen teacher of ``loss.distill`` (eval mode, no gradients), or None."""
    cfg = recipe.loss.distill
    if not cfg.teacher:
        return None
    if not cfg.arch:
        raise ValueError(f"loss.distill.teacher={cfg.teacher}: name its model with loss.distill.arch")
    # the student is matched on its training embedding (before any BNNeck), so the teacher gives the same kind
    teacher = model_from_checkpoint(cfg.arch, cfg.teacher, test_feature="before_bn").to(memory_format=memory_format)
    for p in teacher.parameters():
        p.requires_grad_(False)
    log.info("distilling from %s (%s, frozen)", cfg.teacher, cfg.arch)
    return teacher


def build_test_caches(recipe: Recipe, dataset, progress: bool = True) -> tuple[ImageCache, ImageCache]:
    d = recipe.data
    size = (d.height, d.width)
    kw = dict(skip_bad_images=d.skip_bad_images, workers=d.decode_workers, progress=progress)
    return (ImageCache(dataset.query, size, desc="query", **kw),
            ImageCache(dataset.gallery, size, desc="gallery", **kw))


class Trainer:
    """Trains the recipe's model on its dataset; see :meth:`fit`."""

    def __init__(self, recipe: Recipe, progress: bool = True):
        self.recipe, self.progress = recipe, progress
        d, t = recipe.data, recipe.train
        self.out = Path(t.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe), indent=2))
        seed_everything(t.seed)
        self.dataset = build_dataset(d.dataset, d.root, **d.options)
        log.info("\n%s", self.dataset.summary())
        self.train_cache = ImageCache(self.dataset.train, (d.height, d.width), mmap_path=d.cache_file,
                                      skip_bad_images=d.skip_bad_images, workers=d.decode_workers,
                                      progress=progress, desc="train")
        self.query_cache, self.gallery_cache = build_test_caches(recipe, self.dataset, progress)
        self.num_classes = self.dataset.num_train_pids
        m = recipe.model
        self.model = build_model(m.name, self.num_classes, pretrained=m.pretrained or "none", **m.options())
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if t.fixbase_epochs:
            find_modules(self.model, t.open_layers)          # fail now on a wrong name, not at epoch 1
        self.objective = BoTObjective(recipe.loss, self.num_classes, self.model.feature_dim)
        self.teacher = load_teacher(recipe, self.memory_format)
        self.regularizer = build_regularizer(self.model, recipe)
        self.optimizer = build_optimizer(self.model, recipe.optim,
                                         list(self.regularizer.parameters()) if self.regularizer else None)
        self.center_optimizer = (torch.optim.SGD(self.objective.center.parameters(), lr=recipe.loss.center_lr)
                                 if self.objective.center is not None else None)
        self.scheduler = WarmupScheduler(self.optimizer, recipe.schedule, t.epochs)
        sampler = RandomIdentityBatchSampler(self.train_cache.pids(), d.num_identities,
                                             d.num_instances, seed=t.seed,
                                             camids=self.train_cache.camids(),
                                             camera_diverse=d.camera_diverse)
        self.augment = BatchAugment(AugmentConfig(**recipe.augment.model_dump()), seed=t.seed + 1)
        self.loader = TrainLoader(self.train_cache, sampler, self.augment)
        self.writer = SummaryWriter(str(self.out / "tensorboard"))
        self.start_epoch, self.best_map, self.step = 0, -1.0, 0
        self.last_features: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: dict[str, list] = {"epoch": [], "lr": [], "images_per_s": [],
                                         "eval_epoch": [], "mAP": [], "rank1": [], "rank5": [], "mINP": []}

    # -- checkpoints -------------------------------------------------------
    def state(self, epoch: int) -> dict:
        state = {
            "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best_mAP": float(self.best_map),
            "step": self.step, "history": self.history, "num_classes": self.num_classes,
            "recipe": recipe_to_dict(self.recipe), "reidkit_version": __version__,
            "rng": {"torch": torch.get_rng_state(), "augment": self.augment.gen.get_state()},
        }
        if self.objective.center is not None:
            state["center"] = self.objective.center.state_dict()
            state["center_optimizer"] = self.center_optimizer.state_dict()
        if self.regularizer is not None:
            state["adaptive_l2"] = self.regularizer.state_dict()
        return state

    def resume(self, path: str | Path) -> None:
        state = load_checkpoint(path)
        if "optimizer" not in state:
            raise CheckpointError(f"{path} holds weights only; --resume needs a training checkpoint (last.pth)")
        if state.get("num_classes") != self.num_classes:
            raise CheckpointError(f"{path} was trained with {state.get('num_classes')} identities, "
                                  f"this dataset has {self.num_classes}")
        if (self.regularizer is not None) != ("adaptive_l2" in state):
            raise CheckpointError(f"{path} was trained {'with' if 'adaptive_l2' in state else 'without'} "
                                  f"adaptive L2; this recipe {'uses' if self.regularizer else 'does not use'} it")
        load_model_weights(self.model, state, str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.objective.center is not None and "center" in state:
            self.objective.center.load_state_dict(state["center"])
            self.center_optimizer.load_state_dict(state["center_optimizer"])
        if self.regularizer is not None:
            self.regularizer.load_state_dict(state["adaptive_l2"])
        self.start_epoch, self.best_map, self.step = int(state["epoch"]), float(state["best_mAP"]), int(state["step"])
        self.history = state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        self.augment.gen.set_state(state["rng"]["augment"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    # -- loop --------------------------------------------------------------
    def train_epoch(self, epoch: int, max_batches: int | None = None) -> dict[str, float]:
        """One epoch (or its first ``max_batches`` batches); returns mean loss terms, lr, images/s."""
        t = self.recipe.train
        if epoch < t.fixbase_epochs:
            open_layers(self.model, t.open_layers)
            if epoch == 0 or epoch == self.start_epoch:
                log.info("epochs 1-%d: training only %s", t.fixbase_epochs, ", ".join(t.open_layers))
        else:
            open_all_layers(self.model)
        self.loader.set_epoch(epoch)
        self.scheduler.set_epoch(epoch)
        reset_cell_states(self.model)                    # PTL: BConv-Cell states restart every epoch
        lr = self.optimizer.param_groups[0]["lr"]
        sums: dict[str, float] = {}
        count, images, t0 = 0, 0, time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.recipe.train.epochs}",
                   disable=not self.progress, leave=False)
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            inputs = batch.images.contiguous(memory_format=self.memory_format)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.recipe.train.amp):
                logits, features = self.model(inputs)
            self.objective.set_time(self.step, epoch)
            teacher_features = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_features = self.teacher(inputs)
            terms = self.objective(logits, features, batch.pids, batch.camids, teacher_features)
            if self.regularizer is not None:
                terms["adaptive_l2"] = self.regularizer()
            diagnostics = self.objective.diagnostics()
            for k, v in diagnostics.items():
                sums[f"mining/{k}"] = sums.get(f"mining/{k}", 0.0) + v
            if diagnostics:                          # per-iteration trace for the report's mining plot
                trace = self.history.setdefault("iteration_trace", {"step": []})
                trace["step"].append(self.step + 1)
                for k, v in diagnostics.items():
                    trace.setdefault(k, []).append(float(v))
            check_finite(terms, f"epoch {epoch + 1}, iteration {i + 1}")
            loss = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            if self.center_optimizer is not None:
                self.center_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.center_optimizer is not None:
                self.objective.before_center_step()
                self.center_optimizer.step()
            self.step += 1
            count += 1
            images += batch.images.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + float(loss.detach())
            if self.step % self.recipe.train.log_every == 0:
                for k, v in terms.items():
                    self.writer.add_scalar(f"loss/{k}", float(v.detach()), self.step)
                self.writer.add_scalar("loss/total", float(loss.detach()), self.step)
                self.writer.add_scalar("lr", lr, self.step)
                for k, v in diagnostics.items():
                    self.writer.add_scalar(f"mining/{k}", v, self.step)
            speed = images / (time.perf_counter() - t0)
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items() if "/" not in k}
                            | {"lr": f"{lr:.2e}", "img/s": f"{speed:.0f}"})
        means = {k: v / max(count, 1) for k, v in sums.items()}
        if self.regularizer is not None:                 # the factors at the epoch's end (paper, Fig. 3)
            means |= {f"l2_factor/{k}": v for k, v in self.regularizer.factors_by_category().items()}
        means["images_per_s"] = images / (time.perf_counter() - t0)
        means["lr"] = lr
        return means

    def evaluate(self) -> RankResult:
        """mAP / CMC of the current model; its query and gallery features stay in ``last_features``."""
        result, qf, gf = evaluate_model(self.model, self.query_cache, self.gallery_cache, self.recipe.eval,
                                        self.recipe.data.test_batch_size, self.recipe.train.amp,
                                        return_features=True, channels_last=self.recipe.train.channels_last)
        self.last_features = (qf, gf)
        return result

    def _record_epoch(self, epoch: int, means: dict[str, float]) -> None:
        self.history["epoch"].append(epoch + 1)
        for k, v in means.items():
            key = k if k in ("lr", "images_per_s") or "/" in k else f"loss/{k}"
            self.history.setdefault(key, []).append(float(v))
            self.writer.add_scalar(f"epoch/{key}", float(v), epoch + 1)

    def _record_eval(self, epoch: int, result: RankResult) -> None:
        values = {"mAP": result.mAP, "rank1": result.rank(1),
                  "rank5": result.rank(min(5, len(result.cmc))), "mINP": result.mINP}
        self.history["eval_epoch"].append(epoch + 1)
        for k, v in values.items():
            self.history[k].append(float(v))
            self.writer.add_scalar(f"metrics/{k}", float(v), epoch + 1)
        self.scheduler.observe(result.mAP)

    def fit(self, resume: str | Path | None = None) -> RankResult | None:
        """Train for ``train.epochs`` epochs; returns the last evaluation."""
        if resume:
            self.resume(resume)
        t = self.recipe.train
        result = None
        for epoch in range(self.start_epoch, t.epochs):
            means = self.train_epoch(epoch)
            self._record_epoch(epoch, means)
            line = " ".join(f"{k}={v:.4f}" for k, v in means.items() if k not in ("lr", "images_per_s"))
            log.info("epoch %d/%d  %s  lr=%.2e  %.1f img/s", epoch + 1, t.epochs, line, means["lr"],
                     means["images_per_s"])
            last = epoch + 1 == t.epochs
            if (epoch + 1) % t.eval_every == 0 or last:
                result = self.evaluate()
                self._record_eval(epoch, result)
                log.info("epoch %d  mAP %.2f%%  rank-1 %.2f%%  mINP %.2f%%", epoch + 1,
                         100 * result.mAP, 100 * result.rank(1), 100 * result.mINP)
                if result.mAP > self.best_map:
                    self.best_map = result.mAP
                    save_checkpoint(self.state(epoch + 1), self.out / "best.pth")
            save_checkpoint(self.state(epoch + 1), self.out / "last.pth")
        self.writer.flush()
        (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
        if self.regularizer is not None:                 # every tensor's factor (the paper's Fig. 4 histogram)
            (self.out / "adaptive_l2_factors.json").write_text(json.dumps(self.regularizer.named_factors(), indent=1))
        if self.history["epoch"]:
            plot_curves(self.history, self.out / "curves.png")
        return result
