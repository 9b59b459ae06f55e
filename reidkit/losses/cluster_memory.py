"""Memories of pseudo-identities for unsupervised training: one centroid per cluster (Cluster Contrast, Dai et
al. 2021) or one proxy per cluster and camera (camera-aware proxies, Wang et al., AAAI 2021).

Both hold L2-normalised vectors that are not parameters: they are initialised from the clusters' mean features
when the training set is relabelled, and after every step (the loss read the memory as it was) each vector of
the batch's clusters moves towards their features: ``v <- momentum * v + (1 - momentum) * f``, renormalised,
``momentum`` the old vector's share.  ``update``: ``instance`` applies that once per image, in the batch's
order (both papers' code: Cluster Contrast's ``CM.backward``, the camera-aware proxies' ``ExemplarMemory``);
``mean`` once per vector towards the mean of its images; ``hard`` (cluster memory) towards its least similar
image (Cluster Contrast's ``CM_Hard``).  The loss is an InfoNCE over the memory with a temperature.  Under data
parallelism the features a loss and an update see are the global batch's (gathered, in the global batch's
order), so every process holds the same memory without communicating.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

UPDATES = ("instance", "mean", "hard")


class ClusterMemory(nn.Module):
    """One centroid per cluster; ``loss = CE(normalize(f) @ centroids.T / temperature, cluster)``.

    ``update`` (module docstring): ``instance`` (Cluster Contrast's), ``mean`` or ``hard``.
    """

    centroids: torch.Tensor

    def __init__(self, dim: int, temperature: float = 0.05, momentum: float = 0.1, update: str = "instance"):
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.temperature, self.momentum, self.update_rule = float(temperature), float(momentum), update
        self.register_buffer("centroids", torch.zeros(0, dim))

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One centroid per label 0..max(labels): the normalised mean of its images' normalised features
        (images labelled -1 left out)."""
        self.centroids = cluster_means(features, labels).to(self.centroids.device)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels >= 0
        if not keep.any():
            return features.sum() * 0.0
        logits = F.normalize(features[keep].float(), dim=1) @ self.centroids.t() / self.temperature
        return F.cross_entropy(logits, labels[keep])

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Move each centroid of the batch's clusters towards their features (see the class docstring)."""
        f = F.normalize(features.detach().float(), dim=1)
        keep = labels >= 0
        f, labels = f[keep], labels[keep]
        if self.update_rule == "instance":
            update_in_sequence(self.centroids, labels, f, self.momentum)
            return
        for c in labels.unique():
            mine = f[labels == c]
            if self.update_rule == "mean":
                target = mine.mean(dim=0)
            else:
                target = mine[(mine @ self.centroids[c]).argmin()]
            moved = self.momentum * self.centroids[c] + (1.0 - self.momentum) * target
            self.centroids[c] = F.normalize(moved, dim=0)


class CameraProxyMemory(nn.Module):
    """One proxy per (cluster, camera) with images (Wang et al., "Camera-aware Proxies", AAAI 2021).

    ``loss`` returns the intra-camera term (each image against the proxies of its own camera: its own proxy is
    the positive) and the inter-camera term (against every proxy of its cluster, over all cameras, as positives,
    and the ``hard_negatives`` most similar proxies of other clusters as negatives), both InfoNCE with the
    temperature.  The inter-camera term is what pulls one identity's images from different cameras together.
    As the authors' ``CAPMemory`` computes them, each term is averaged over the batch's images of one camera and
    summed over the cameras in the batch.  ``update``: ``instance`` (the authors') or ``mean``.
    """

    proxies: torch.Tensor
    proxy_cluster: torch.Tensor
    proxy_camera: torch.Tensor
    cameras: torch.Tensor

    def __init__(self, dim: int, temperature: float = 0.07, momentum: float = 0.2, hard_negatives: int = 50,
                 update: str = "instance"):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if update not in ("instance", "mean"):
            raise ValueError(f"camera proxies update by instance or mean, got {update!r}")
        self.temperature, self.momentum, self.hard_negatives = float(temperature), float(momentum), hard_negatives
        self.update_rule = update
        self.register_buffer("proxies", torch.zeros(0, dim))
        self.register_buffer("proxy_cluster", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proxy_camera", torch.zeros(0, dtype=torch.long))
        self.register_buffer("cameras", torch.zeros(0, dtype=torch.long))     # the camera ids, sorted

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor) -> None:
        """A proxy for every (cluster, camera) pair with images: their normalised mean feature."""
        keep = labels >= 0
        self.cameras = camids[keep].unique().to(self.proxies.device)
        pairs = labels[keep] * len(self.cameras) + self._camera_index(camids[keep])
        keys, pair_of_image = pairs.unique(return_inverse=True)
        self.proxies = cluster_means(features[keep], pair_of_image).to(self.proxies.device)
        self.proxy_cluster = (keys // len(self.cameras)).to(self.proxies.device)
        self.proxy_camera = self.cameras[keys % len(self.cameras)].to(self.proxies.device)

    def _camera_index(self, camids: torch.Tensor) -> torch.Tensor:
        index = torch.searchsorted(self.cameras, camids.to(self.cameras.device))
        if (index >= len(self.cameras)).any() or (self.cameras[index.clamp(max=len(self.cameras) - 1)]
                                                   != camids.to(self.cameras.device)).any():
            raise ValueError("a camera id the proxies were not built with")
        return index

    def own_proxy(self, labels: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """The index of each image's (cluster, camera) proxy."""
        table = torch.full((int(self.proxy_cluster.max()) + 1, len(self.cameras)), -1, dtype=torch.long,
                           device=self.proxies.device)
        table[self.proxy_cluster, self._camera_index(self.proxy_camera)] = torch.arange(
            len(self.proxies), device=self.proxies.device)
        found = table[labels, self._camera_index(camids)]
        if (found < 0).any():
            raise ValueError("an image whose (cluster, camera) has no proxy")
        return found

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                camids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = labels >= 0
        if not keep.any():
            zero = features.sum() * 0.0
            return zero, zero
        f, labels, camids = F.normalize(features[keep].float(), dim=1), labels[keep], camids[keep]
        sims = f @ self.proxies.t() / self.temperature                      # B x P
        own = self.own_proxy(labels, camids)
        same_camera = self.proxy_camera[None, :] == camids[:, None]
        intra = F.cross_entropy(sims.masked_fill(~same_camera, float("-inf")), own, reduction="none")
        positive = self.proxy_cluster[None, :] == labels[:, None]
        negatives = sims.masked_fill(positive, float("-inf"))
        k = min(self.hard_negatives, int((~positive).sum(dim=1).min()))
        hard = negatives.topk(k, dim=1).values if k > 0 else sims[:, :0]
        denominator = torch.logsumexp(torch.cat([sims.masked_fill(~positive, float("-inf")), hard], dim=1), dim=1)
        log_p = (sims - denominator[:, None]).masked_fill(~positive, 0.0)
        inter = -(log_p.sum(dim=1) / positive.sum(dim=1))
        # each camera's mean, summed over the batch's cameras
        _, camera_of, per_camera = camids.unique(return_inverse=True, return_counts=True)
        share = 1.0 / per_camera[camera_of].to(sims.dtype)
        return (intra * share).sum(), (inter * share).sum()

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor) -> None:
        """Move each of the batch's proxies towards its images' features (see the class docstring)."""
        keep = labels >= 0
        f = F.normalize(features.detach()[keep].float(), dim=1)
        own = self.own_proxy(labels[keep], camids[keep])
        if self.update_rule == "instance":
            update_in_sequence(self.proxies, own, f, self.momentum)
            return
        for p in own.unique():
            moved = self.momentum * self.proxies[p] + (1.0 - self.momentum) * f[own == p].mean(dim=0)
            self.proxies[p] = F.normalize(moved, dim=0)


@torch.no_grad()
def update_in_sequence(vectors: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """For each image in order, ``vectors[rows[i]] <- normalize(momentum * vectors[rows[i]] + (1 - momentum) *
    features[i])``, in place: the authors' per-instance loop, run as one vectorised step per occurrence (the
    j-th image of every row at once: a row's images stay in their order, distinct rows do not interact)."""
    if len(rows) == 0:
        return
    order = torch.sort(rows, stable=True).indices
    sorted_rows = rows[order]
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    starts = torch.cummax(torch.where(first, torch.arange(len(rows), device=rows.device), 0), dim=0).values
    occurrence = torch.empty_like(rows)
    occurrence[order] = torch.arange(len(rows), device=rows.device) - starts
    for j in range(int(occurrence.max()) + 1):
        now = occurrence == j
        r = rows[now]
        vectors[r] = F.normalize(momentum * vectors[r] + (1.0 - momentum) * features[now].to(vectors.dtype), dim=1)


def cluster_means(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Row c: the L2-normalised mean of the L2-normalised features labelled c (c = 0..max(labels); -1 left out;
    a label with no image gives a zero row)."""
    keep = labels >= 0
    f = F.normalize(features[keep].float(), dim=1)
    count = int(labels[keep].max()) + 1 if keep.any() else 0
    sums = torch.zeros(count, f.shape[1], device=f.device, dtype=f.dtype).index_add_(0, labels[keep].to(f.device), f)
    return F.normalize(sums, dim=1)
