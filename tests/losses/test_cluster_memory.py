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


def test_the_instance_update_is_cluster_contrasts_cm_backward():
    """``update=instance`` against Cluster Contrast's ``CM.backward`` loop transcribed: every image in the batch's
    order moves its centroid, renormalised each time; clusters drawn repeatedly and interleaved."""
    g = torch.Generator().manual_seed(0)
    centroids = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    inputs = F.normalize(torch.randn(23, 8, generator=g), dim=1)
    targets = torch.randint(0, 5, (23,), generator=g)
    features = centroids.clone()
    momentum = 0.1
    for x, y in zip(inputs, targets):                         # clustercontrast/models/cm.py, CM.backward
        features[y] = momentum * features[y] + (1. - momentum) * x
        features[y] /= features[y].norm()
    memory = ClusterMemory(8, momentum=momentum)
    assert memory.update_rule == "instance"                    # the default, as the authors' code
    memory.centroids = centroids.clone()
    memory.update(inputs, targets)
    torch.testing.assert_close(memory.centroids, features)
    once = ClusterMemory(8, momentum=momentum, update="mean")
    once.centroids = centroids.clone()
    once.update(inputs, targets)
    assert not torch.allclose(once.centroids, features, atol=1e-3)       # the two rules differ


def cap_memory_loss(features, pseudo, cams, all_pseudo_label, all_img_cams, percam_memory, beta, alpha, bg_knn,
                    epoch, crosscam_epoch=5):
    """The camera-aware proxies' ``CAPMemory.loss_using_pseudo_percam_proxy`` transcribed for a CPU (targets are
    the batch's pseudo-labels directly; ``all_*``: the whole training set's; ``percam_memory[c]``: camera c's
    proxies, one per cluster it saw, in label order), with ``ExemplarMemory``'s update; returns the loss and the
    updated memories."""
    unique_cams = sorted(percam_memory)
    memory_class_mapper, concate_intra_class = {}, []
    for cc in unique_cams:
        uniq_class = torch.unique(all_pseudo_label[all_img_cams == cc])
        concate_intra_class.append(uniq_class)
        memory_class_mapper[cc] = {int(uniq_class[j]): j for j in range(len(uniq_class))}
    concate_intra_class = torch.cat(concate_intra_class)
    percam_tempV = torch.cat([percam_memory[ii].clone() for ii in unique_cams], dim=0)
    loss = torch.tensor(0.0)
    updates = []
    for cc in torch.unique(cams).tolist():
        inds = torch.nonzero(cams == cc).squeeze(-1)
        percam_targets = pseudo[inds]
        percam_feat = features[inds]
        mapped_targets = torch.tensor([memory_class_mapper[cc][int(k)] for k in percam_targets])
        percam_inputs = percam_feat.mm(percam_memory[cc].t()) / beta
        loss = loss + F.cross_entropy(percam_inputs, mapped_targets)
        updates.append((cc, percam_feat, mapped_targets))
        if epoch >= crosscam_epoch:
            associate_loss = 0
            target_inputs = percam_feat.mm(percam_tempV.t().clone())
            temp_sims = target_inputs.detach().clone()
            target_inputs = target_inputs / beta
            for k in range(len(percam_feat)):
                ori_asso_ind = torch.nonzero(concate_intra_class == percam_targets[k]).squeeze(-1)
                temp_sims[k, ori_asso_ind] = -10000.0
                sel_ind = torch.sort(temp_sims[k])[1][-bg_knn:]
                concated_input = torch.cat((target_inputs[k, ori_asso_ind], target_inputs[k, sel_ind]), dim=0)
                concated_target = torch.zeros((len(concated_input)), dtype=concated_input.dtype)
                concated_target[0:len(ori_asso_ind)] = 1.0 / len(ori_asso_ind)
                associate_loss += -1 * (F.log_softmax(concated_input.unsqueeze(0), dim=1)
                                        * concated_target.unsqueeze(0)).sum()
            loss = loss + 0.5 * associate_loss / len(percam_feat)
    memory = {c: m.clone() for c, m in percam_memory.items()}
    for cc, feats, targets in updates:                         # ExemplarMemory.backward, camera by camera
        for x, y in zip(feats, targets):
            memory[cc][y] = alpha * memory[cc][y] + (1.0 - alpha) * x
            memory[cc][y] /= memory[cc][y].norm()
    return loss, memory


@pytest.mark.parametrize("epoch", [0, 5])
def test_camera_proxies_match_the_authors_cap_memory(epoch):
    """Loss (each term a camera's mean, summed over the batch's cameras; the inter term from crosscam_epoch 5,
    weight 0.5, 3 hard negatives) and per-instance update against ``CAPMemory`` transcribed, three cameras."""
    g = torch.Generator().manual_seed(1)
    n_train, dim = 60, 6
    train_feats = F.normalize(torch.randn(n_train, dim, generator=g), dim=1)
    train_labels = torch.randint(0, 7, (n_train,), generator=g)
    train_cams = torch.randint(0, 3, (n_train,), generator=g)
    memory = CameraProxyMemory(dim, temperature=0.07, momentum=0.2, hard_negatives=3)
    memory.reset(train_feats, train_labels, train_cams)
    percam = {c: torch.stack([memory.proxies[(memory.proxy_camera == c) & (memory.proxy_cluster == k)][0]
                              for k in torch.unique(train_labels[train_cams == c])]) for c in range(3)}
    batch = torch.randperm(n_train, generator=g)[:16]
    f = F.normalize(torch.randn(16, dim, generator=g), dim=1)
    theirs, their_memory = cap_memory_loss(f, train_labels[batch], train_cams[batch], train_labels, train_cams,
                                           percam, 0.07, 0.2, 3, epoch)
    intra, inter = memory(f, train_labels[batch], train_cams[batch])
    ours = intra + (0.5 * inter if epoch >= 5 else 0.0)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    memory.update(f, train_labels[batch], train_cams[batch])
    for c in range(3):
        for j, k in enumerate(torch.unique(train_labels[train_cams == c])):
            mine = memory.proxies[(memory.proxy_camera == c) & (memory.proxy_cluster == k)][0]
            torch.testing.assert_close(mine, their_memory[c][j])
