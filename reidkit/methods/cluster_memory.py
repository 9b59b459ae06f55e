"""Unsupervised training and adaptation by clustering, as a method (docs/UNSUPERVISED.md).

Before every epoch (``cluster_memory.every``) the training images are embedded with the current model as it
is evaluated (its test feature, of the image alone as both papers' code embeds it; ``flip`` averages each
image with its mirror), clustered (k-reciprocal Jaccard distances + DBSCAN:
:mod:`reidkit.evaluation.clustering`), and the clusters become the epoch's identity labels: the recipe's
sampler draws P clusters x K images, outliers left out or kept as their own instances.  The loss is an
InfoNCE over a memory initialised from the clusters' mean features and moved by momentum after every step:

* ``memory: cluster`` — one centroid per cluster (Cluster Contrast, Dai et al. 2021; Cluster Contrast's
  settings: temperature 0.05, momentum 0.1, eps 0.6 on Market-1501, DukeMTMC and MSMT17, min_samples 4, k1 30,
  k2 6);
* ``memory: camera_proxy`` — one proxy per cluster and camera, an intra-camera term and an inter-camera term
  with hard negatives (Wang et al., "Camera-aware Proxies", AAAI 2021: temperature 0.07, momentum 0.2,
  inter-camera weight 0.5 from epoch 5, 50 hard negatives): cameras are the one label a deployment always has.

With ``data.labels: hidden`` the run never reads the training identities; they are kept for the diagnostics
recorded every epoch (purity, NMI, ARI of the pseudo-labels), beside the clusters, outliers, the share of
single-camera clusters, the cluster sizes and the time clustering took.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field, model_validator
from sklearn.metrics import adjusted_rand_score

from ..config import Recipe, Strict
from ..data.cache import ImageCache
from ..engine.distributed import DistEnv, gather_rows
from ..engine.features import extract_features
from ..evaluation.cluster_settings import (
    EPS_GRID,
    SettingsChoice,
    choose_settings,
    label_free_warnings,
    merged_share,
    typical_group_size,
)
from ..evaluation.clustering import cluster_features, cluster_statistics, distance_graph, size_histogram
from ..files import write_text_atomic
from ..losses.cluster_memory import CameraProxyMemory, ClusterMemory
from ..models.heads import TestedFeature
from ..pieces import PieceContext, StepOutputs, TrainingPiece, register_piece

log = logging.getLogger("reidkit")


class ClusterMemoryConfig(Strict):
    """The recipe section ``cluster_memory``: pseudo-labels by clustering, and a memory loss over them."""

    # DBSCAN radius on the Jaccard distance; auto: chosen from the unlabelled crops before the first epoch
    # (reidkit.evaluation.cluster_settings); None: the method is off
    eps: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] | None = None
    # DBSCAN's core-point neighbourhood (the image itself counts); auto: from the typical crops per person and camera
    min_samples: Annotated[int, Field(ge=1, strict=True)] | Literal["auto"] = 4
    k1: int = Field(30, ge=1)                     # k-reciprocal neighbourhood
    k2: int = Field(6, ge=1)                      # query expansion of the encoding
    outliers: Literal["drop", "instances"] = "drop"     # unclustered images: left out, or each its own cluster
    weights: Literal["cluster_contrast", "reranking"] = "cluster_contrast"    # how the encoding is weighed
    # jaccard: k-reciprocal neighbours on the whole ranking (k1, k2); camera_jaccard: on each camera's ranking and
    # on the other cameras' (CA-Jaccard, Chen et al., CVPR 2024: k1_intra, k1_inter, then the expansion k2_*)
    distance: Literal["jaccard", "camera_jaccard"] = "jaccard"
    k1_intra: int = Field(5, ge=0)
    k1_inter: int = Field(20, ge=0)
    k2_intra: int = Field(2, ge=0)
    k2_inter: int = Field(4, ge=0)
    memory: Literal["cluster", "camera_proxy"] = "cluster"
    # how a memory vector moves after a step: instance (once per image, in the batch's order: both papers'
    # code), mean (once, towards the mean of its images), hard (cluster memory: towards its least similar image)
    update: Literal["instance", "mean", "hard"] = "instance"
    temperature: float = Field(0.05, gt=0)
    momentum: float = Field(0.1, ge=0, lt=1)      # the old vector's share in each update
    weight: float = Field(1.0, gt=0)
    inter_weight: float = Field(0.5, ge=0)        # camera_proxy: the inter-camera term's weight
    # camera_proxy: the inter-camera term from this epoch on (counted from 0; the authors' crosscam_epoch 5)
    inter_from_epoch: int = Field(5, ge=0)
    hard_negatives: int = Field(50, ge=1)         # camera_proxy: negative proxies in the inter-camera term
    every: int = Field(1, ge=1)                   # re-cluster every this many epochs
    # the clustered features average each image and its mirror (false: the image alone, as both papers' code)
    flip: bool = False
    # cluster on features with each camera's mean removed (what the cameras share is left, what one camera adds to
    # every crop it sees is not); the memory is still built from the features themselves
    camera_centred: bool = False

    @model_validator(mode="after")
    def _update_fits_memory(self) -> ClusterMemoryConfig:
        if self.memory == "camera_proxy" and self.update == "hard":
            raise ValueError("cluster_memory.update=hard is the cluster memory's (Cluster Contrast's hard variant); "
                             "camera proxies update by instance or mean")
        return self


class ClusterMemoryPiece(TrainingPiece):
    """Relabels the training set by clustering and trains the embedding against the memory of its clusters."""

    relabels = True

    def __init__(self, cfg: ClusterMemoryConfig, recipe: Recipe, images: ImageCache, feature_dim: int,
                 tested: TestedFeature, device: torch.device, hidden_labels: np.ndarray | None,
                 env: DistEnv | None = None):
        self.cfg, self.recipe, self.images, self.device = cfg, recipe, images, device
        self.env = env or DistEnv()
        self.speaks = self.env.is_main
        self.tested, self.hidden_labels = tested, hidden_labels
        self.camids = images.camids()
        self.memory: ClusterMemory | CameraProxyMemory
        if cfg.memory == "cluster":
            self.memory = ClusterMemory(feature_dim, cfg.temperature, cfg.momentum, cfg.update)
        else:
            self.memory = CameraProxyMemory(feature_dim, cfg.temperature, cfg.momentum, cfg.hard_negatives,
                                            cfg.update)
        self.labels: np.ndarray | None = None
        self.stats: dict[str, float] = {}
        self.previous: dict[str, float] | None = None      # the last clustering's statistics (drift warnings)
        self.choice: SettingsChoice | None = None         # eps / min_samples as in effect (auto: as chosen)
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.epoch = 0

    def on_epoch_start(self, models: Sequence[nn.Module], epoch: int) -> None:
        self.epoch = epoch

    def to(self, device: torch.device) -> ClusterMemoryPiece:
        self.memory.to(device)
        return self

    def relabel(self, models: Sequence[nn.Module], epoch: int) -> np.ndarray | None:
        if self.labels is not None and epoch % self.cfg.every:
            return self.labels                   # kept (as restored by a resume, or from the last clustering)
        cfg = self.cfg
        t0 = time.perf_counter()
        features = self._embed(models[0])
        t1 = time.perf_counter()
        clustered = camera_centred(features, self.camids) if cfg.camera_centred else features
        cameras = ((self.camids, cfg.k1_intra, cfg.k1_inter, cfg.k2_intra, cfg.k2_inter)
                   if cfg.distance == "camera_jaccard" else None)
        graph = None
        if self.choice is None:
            graph = self._choose(clustered, cameras)
        assert self.choice is not None
        found = cluster_features(clustered, self.choice.eps, self.choice.min_samples, cfg.k1, cfg.k2, cfg.outliers,
                                 cfg.weights, camera_neighbours=cameras, graph=graph)
        labels = torch.from_numpy(found.labels).to(features.device)
        if isinstance(self.memory, ClusterMemory):
            self.memory.reset(features, labels)
        else:
            self.memory.reset(features, labels, torch.from_numpy(self.camids).to(features.device))
        before = self.labels
        self.labels = found.labels
        self.stats = cluster_statistics(found.labels, self.camids, self.hidden_labels)
        self.stats["outliers"] = found.outliers / len(found.labels)         # DBSCAN's, before "instances"
        self.stats |= {f"size_{k}": float(v) for k, v in size_histogram(found.labels).items()}
        self.stats |= {"eps": self.choice.eps, "min_samples": float(self.choice.min_samples),
                       "merged_share": merged_share(found.labels, self.camids, self.choice.typical)}
        if before is not None:                   # label-free agreement with the last clustering
            both = (before >= 0) & (found.labels >= 0)
            self.stats["stability"] = float(adjusted_rand_score(before[both], found.labels[both])) if both.any() \
                else 0.0
        self.stats |= {"seconds_features": t1 - t0, "seconds_distances": found.seconds["distances"],
                       "seconds_dbscan": found.seconds["dbscan"]}
        if self.speaks:
            truth = (f", purity {100 * self.stats['purity']:.1f}% NMI {self.stats['nmi']:.3f} ARI "
                     f"{self.stats['ari']:.3f} (hidden labels, recorded only)" if "purity" in self.stats else "")
            log.info("epoch %d: %d clusters, %.1f%% outliers, %.0f%% of clusters single-camera%s; clustering %.1f s "
                     "(features %.1f s)", epoch + 1, found.clusters, 100 * self.stats["outliers"],
                     100 * self.stats.get("single_camera", 0.0), truth, time.perf_counter() - t0, t1 - t0)
            for warning in label_free_warnings(self.stats, self.previous, self.choice.typical,
                                               len(np.unique(self.camids))):
                log.warning("WARNING: epoch %d: %s", epoch + 1, warning)
        self.previous = dict(self.stats)
        return found.labels

    def _choose(self, features: torch.Tensor, cameras: tuple | None):
        """eps and min_samples as the recipe gives them or, for ``auto``, as chosen from these (the first
        clustering's) features; returns the distance graph when one was computed for the choice."""
        cfg = self.cfg
        typical = typical_group_size(features, self.camids)
        eps = None if cfg.eps == "auto" else float(cfg.eps)          # type: ignore[arg-type]
        min_samples = None if cfg.min_samples == "auto" else int(cfg.min_samples)
        graph = None
        if eps is None:
            graph = distance_graph(features, max(EPS_GRID), cfg.k1, cfg.k2, cfg.weights, cameras)
        self.choice = choose_settings(graph, self.camids, typical, eps, min_samples)
        if self.speaks and (eps is None or min_samples is None):
            log.info("cluster_memory: eps %g, min_samples %d, chosen from the unlabelled training crops (no "
                     "identity read):\n%s", self.choice.eps, self.choice.min_samples, self.choice.describe())
        return graph

    def _embed(self, model: nn.Module) -> torch.Tensor:
        """The training images' features as evaluation sees them; under data parallelism each process embeds an
        equal share of the images and the shares are gathered, so that every process holds all the features."""
        r, n, world = self.recipe, len(self.images), self.env.world_size
        counts = tuple(n // world + (rank < n % world) for rank in range(world))
        start = sum(counts[:self.env.rank])
        mine = extract_features(model, self.images, r.data.test_batch_size, flip=self.cfg.flip, amp=r.train.amp,
                                channels_last=r.train.channels_last, device=self.device,
                                rows=(start, start + counts[self.env.rank]))
        return gather_rows(mine, counts)

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        if len(out.features) > 1:
            raise ValueError("cluster_memory needs a single-branch model (one embedding per image)")
        f = self.tested(out.features[0]).float()
        self._batch = (f.detach(), out.pids, out.camids)
        if isinstance(self.memory, ClusterMemory):
            return {"cluster_memory": self.cfg.weight * self.memory(f, out.pids)}
        intra, inter = self.memory(f, out.pids, out.camids)
        inter_weight = self.cfg.inter_weight if self.epoch >= self.cfg.inter_from_epoch else 0.0   # 0: not yet
        return {"cluster_memory": self.cfg.weight * intra,
                "cluster_memory_inter": self.cfg.weight * inter_weight * inter}

    def after_backward(self) -> None:
        if self._batch is not None:
            f, pids, camids = self._batch
            if isinstance(self.memory, ClusterMemory):
                self.memory.update(f, pids)
            else:
                self.memory.update(f, pids, camids)
            self._batch = None

    def epoch_diagnostics(self, step_means: dict[str, float]) -> dict[str, float]:
        return dict(self.stats)

    def panel(self) -> dict:
        return {"title": "pseudo-labels", "ylabel": "share", "ylim": [0, 1.02],
                "keys": ["purity", "nmi", "ari", "outliers", "single_camera"],
                "right": ["clusters"], "right_label": "clusters"}

    def state_dict(self) -> dict:
        state: dict[str, object] = {"memory": {k: v.detach().cpu() for k, v in self.memory.state_dict().items()}}
        if self.labels is not None:
            state["labels"] = torch.from_numpy(self.labels)
        if self.choice is not None:               # a resume clusters with the settings chosen at the start
            state["settings"] = {"eps": self.choice.eps, "min_samples": self.choice.min_samples,
                                 "typical": self.choice.typical, "rows": self.choice.rows}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["memory"].items():      # the memory's size is the clustering's
            setattr(self.memory, name, value.to(self.device))
        if "labels" in state:
            self.labels = state["labels"].numpy().astype(np.int64)
        if "settings" in state:
            chosen = state["settings"]
            self.choice = SettingsChoice(float(chosen["eps"]), int(chosen["min_samples"]), float(chosen["typical"]),
                                         list(chosen["rows"]))

    def write_outputs(self, out_dir: Path) -> list[Path]:
        if self.choice is None or not self.choice.rows:
            return []
        data = {"eps": self.choice.eps, "min_samples": self.choice.min_samples, "typical": self.choice.typical,
                "rows": self.choice.rows, "rule": "reidkit.evaluation.cluster_settings (no identity read)"}
        return [write_text_atomic(Path(out_dir) / "cluster_settings.json", json.dumps(data, indent=1) + "\n")]


def camera_centred(features: torch.Tensor, camids: np.ndarray) -> torch.Tensor:
    """The L2-normalised ``features`` with each camera's mean subtracted from its crops."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    cams = torch.as_tensor(camids, device=f.device)
    out = f.clone()
    for camera in cams.unique():
        rows = cams == camera
        out[rows] -= f[rows].mean(dim=0)
    return out


@register_piece("cluster_memory", config=ClusterMemoryConfig)
def _cluster_memory(ctx: PieceContext[ClusterMemoryConfig]) -> ClusterMemoryPiece | None:
    """Unsupervised training by clustering (Cluster Contrast; camera-aware proxies), on when
    ``cluster_memory.eps`` is set."""
    cfg = ctx.config
    if cfg.eps is None:
        return None
    if ctx.train_images is None:
        raise ValueError("cluster_memory needs the training images (PieceContext.train_images)")
    if cfg.distance == "camera_jaccard" and len(np.unique(ctx.train_images.camids())) < 2:
        raise ValueError("cluster_memory.distance=camera_jaccard needs crops from two or more cameras; every training "
                         "crop has the same camera id (unknown cameras?): use distance=jaccard")
    if ctx.recipe.data.sampler == "random":
        raise ValueError("cluster_memory draws P clusters x K images: set data.sampler=identity (or camera_diverse, "
                         "identity_camera)")
    return ClusterMemoryPiece(cfg, ctx.recipe, ctx.train_images, ctx.feature_dim, TestedFeature(ctx.model),
                              ctx.device, ctx.hidden_labels, ctx.env)
