"""The memories of unsupervised training, checked by hand: initialisation, momentum updates, InfoNCE losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidkit.losses.cluster_memory import CameraProxyMemory, ClusterMemory, cluster_means


def test_centroids_start_as_the_normalised_cluster_means():
    f = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 1, 1, -1])
    means = cluster_means(f, labels)
    torch.testing.assert_close(means, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    memory = ClusterMemory(2)
    memory.reset(f, labels)
    torch.testing.assert_close(memory.centroids, means)


def test_the_mean_and_hard_updates_by_hand():
    memory = ClusterMemory(2, momentum=0.25, update="mean")
    memory.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    batch = torch.tensor([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])          # two images of cluster 0, one of 1
    memory.update(batch, torch.tensor([0, 0, 1]))
    s = 1 / math.sqrt(2)
    mean0 = torch.tensor([s / 2, (1 + s) / 2])                           # mean of the normalised (0, 1), (s, s)
    want0 = F.normalize(0.25 * torch.tensor([1.0, 0.0]) + 0.75 * mean0, dim=0)
    want1 = F.normalize(0.25 * torch.tensor([0.0, 1.0]) + 0.75 * torch.tensor([1.0, 0.0]), dim=0)
    torch.testing.assert_close(memory.centroids, torch.stack([want0, want1]))
    hard = ClusterMemory(2, momentum=0.25, update="hard")
    hard.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    hard.update(batch[:2], torch.tensor([0, 0]))
    # the hardest of cluster 0's images is (0, 1): the least similar to its centroid (1, 0)
    torch.testing.assert_close(hard.centroids[0], F.normalize(torch.tensor([0.25, 0.75]), dim=0))
    torch.testing.assert_close(hard.centroids[1], torch.tensor([0.0, 1.0]))


def test_the_cluster_loss_is_infonce_over_the_centroids():
    memory = ClusterMemory(3, temperature=0.5)
    centroids = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), dim=1)
    memory.centroids = centroids
    f = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    loss = memory(f, torch.tensor([0, 2]))
    logits = F.normalize(f.detach(), dim=1) @ centroids.t() / 0.5
    by_hand = -(logits[0, 0] - torch.logsumexp(logits[0], 0) + logits[1, 2] - torch.logsumexp(logits[1], 0)) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    assert f.grad is not None and memory.centroids.grad is None          # the memory is not trained by gradient
    assert memory(f, torch.tensor([-1, -1])).item() == 0.0               # outliers left out


def test_camera_proxies_and_their_two_terms_by_hand():
    # two clusters, each seen by cameras 3 and 7: four proxies
    f = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    labels, cams = torch.tensor([0, 0, 1, 1]), torch.tensor([3, 7, 3, 7])
    memory = CameraProxyMemory(2, temperature=1.0, momentum=0.5, hard_negatives=1)
    memory.reset(f, labels, cams)
    assert memory.proxy_cluster.tolist() == [0, 0, 1, 1] and memory.proxy_camera.tolist() == [3, 7, 3, 7]
    torch.testing.assert_close(memory.proxies, F.normalize(f, dim=1))
    x = torch.tensor([[0.6, 0.8]])                                        # an image of cluster 0, camera 3
    intra, inter = memory(x, torch.tensor([0]), torch.tensor([3]))
    s = (F.normalize(x, dim=1) @ memory.proxies.t())[0]                   # similarities to the four proxies
    # intra: against the proxies of camera 3 (0 and 2), its own (0) the positive
    assert intra.item() == pytest.approx(-(s[0] - torch.logsumexp(s[[0, 2]], 0)).item(), rel=1e-6)
    # inter: positives = cluster 0's proxies (0, 1); negatives = the 1 hardest of cluster 1's (2 or 3)
    hard = max(s[2], s[3])
    denominator = torch.logsumexp(torch.stack([s[0], s[1], hard]), 0)
    assert inter.item() == pytest.approx(-((s[0] - denominator) + (s[1] - denominator)).item() / 2, rel=1e-6)
    memory.update(x, torch.tensor([0]), torch.tensor([3]))
    torch.testing.assert_close(memory.proxies[0], F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * x[0], dim=0))
    torch.testing.assert_close(memory.proxies[1:], F.normalize(f[1:], dim=1))         # the others untouched
    with pytest.raises(ValueError, match="camera id"):
        memory(x, torch.tensor([0]), torch.tensor([5]))
