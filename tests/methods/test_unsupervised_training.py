"""Unsupervised training by clustering (``cluster_memory``) end to end on the tiny synthetic set: hidden labels are
never read by training, a resumed run continues exactly, both memories train, bad recipes are refused."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import reidkit.engine.run_data as trainer_module  # where the trainer reads its dataset
from conftest import tiny_overrides
from reidkit.config import RecipeError
from reidkit.data.records import ImageRecord
from reidkit.engine import Trainer
from reidkit.engine.checkpoint import load_checkpoint
from reidkit.recipe_files import load_recipe

UNSUPERVISED = ["data.labels=hidden", "loss.ce_weight=0", "loss.triplet_weight=0", "center_loss.weight=0",
                "cluster_memory.eps=0.6", "cluster_memory.min_samples=2", "cluster_memory.k1=6",
                "cluster_memory.k2=2"]


def unsupervised(tiny_data, out, epochs=2, extra=()):
    return load_recipe(None, [*tiny_overrides(tiny_data, out, epochs), *UNSUPERVISED, *extra])


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_scrambled_hidden_labels_give_a_bit_identical_run(tiny_data, tmp_path, monkeypatch):
    """The training identities are scrambled (each image a random identity): the run's losses, pseudo-labels,
    test metrics and weights are bit-identical; only the diagnostics against the hidden labels move."""
    plain = Trainer(unsupervised(tiny_data, tmp_path / "plain"), progress=False)
    plain.fit()
    build = trainer_module.build_recipe_dataset

    def scrambled(cfg):
        dataset = build(cfg)
        rng = np.random.default_rng(7)
        train = [ImageRecord(r.path, int(rng.integers(0, 1000)), r.camid) for r in dataset.train]
        return dataclasses.replace(dataset, train=train)

    monkeypatch.setattr(trainer_module, "build_recipe_dataset", scrambled)
    other = Trainer(unsupervised(tiny_data, tmp_path / "scrambled"), progress=False)
    assert not np.array_equal(other.hidden_labels, plain.hidden_labels)
    other.fit()
    for key in ("loss/cluster_memory", "mAP", "rank1", "cluster_memory/clusters", "cluster_memory/outliers",
                "cluster_memory/single_camera"):
        assert other.history[key] == plain.history[key], key
    assert np.array_equal(other.piece("cluster_memory").labels, plain.piece("cluster_memory").labels)
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in other.model.state_dict().items())
    assert other.history["cluster_memory/purity"] != plain.history["cluster_memory/purity"]     # recorded only
    assert all(0 < p <= 1 for p in plain.history["cluster_memory/purity"])


def test_resume_restores_the_memory_and_the_labels_exactly(tiny_data, tmp_path):
    straight = Trainer(unsupervised(tiny_data, tmp_path / "straight", epochs=2), progress=False)
    straight.fit()
    first = Trainer(unsupervised(tiny_data, tmp_path / "split", epochs=1), progress=False)
    first.fit()
    saved = load_checkpoint(tmp_path / "split" / "last.pth")["pieces"]["cluster_memory"]
    assert torch.equal(saved["memory"]["centroids"], first.piece("cluster_memory").memory.centroids)
    assert np.array_equal(saved["labels"].numpy(), first.piece("cluster_memory").labels)
    resumed = Trainer(unsupervised(tiny_data, tmp_path / "split", epochs=2), progress=False)
    resumed.fit(resume=tmp_path / "split" / "last.pth")
    assert resumed.history["loss/total"] == straight.history["loss/total"]
    assert resumed.history["mAP"] == straight.history["mAP"]
    assert all(torch.equal(v, straight.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())
    assert torch.equal(resumed.piece("cluster_memory").memory.centroids,
                       straight.piece("cluster_memory").memory.centroids)


@pytest.mark.parametrize("sampler,distance", [("identity", "jaccard"), ("identity_camera", "jaccard"),
                                              ("identity", "camera_jaccard")])
def test_camera_proxies_train_with_both_terms_and_every_n_epochs(tiny_data, tmp_path, sampler, distance):
    trainer = Trainer(unsupervised(tiny_data, tmp_path / "cap", epochs=3,
                                   extra=["cluster_memory.memory=camera_proxy", "cluster_memory.temperature=0.07",
                                          "cluster_memory.momentum=0.2", "cluster_memory.every=2",
                                          "cluster_memory.inter_from_epoch=1",
                                          f"data.sampler={sampler}", f"cluster_memory.distance={distance}",
                                          "cluster_memory.k1_intra=2", "cluster_memory.k1_inter=4",
                                          "cluster_memory.k2_intra=1", "cluster_memory.k2_inter=1"]),
                      progress=False)
    before = weights(trainer)
    trainer.fit()
    h = trainer.history
    assert len(h["loss/cluster_memory"]) == len(h["loss/cluster_memory_inter"]) == 3
    # cluster_memory.inter_from_epoch=1: the inter-camera term is off in the first epoch (the authors' crosscam_epoch)
    assert h["loss/cluster_memory_inter"][0] == 0 and all(v > 0 for v in h["loss/cluster_memory_inter"][1:])
    # re-clustered before epochs 1 and 3 only: epoch 2 trains on the labels of epoch 1
    assert h["cluster_memory/clusters"][0] == h["cluster_memory/clusters"][1]
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    memory = trainer.piece("cluster_memory").memory
    assert len(memory.proxies) >= h["cluster_memory/clusters"][-1]       # one proxy per cluster and camera
    assert (trainer.out / "curves.png").is_file() and "cluster_memory" in h["panels"]
    labels, camids, k = trainer.piece("cluster_memory").labels, trainer.train_cache.camids(), 2
    groups = [b[g:g + k] for b in trainer.loader.sampler for g in range(0, len(b), k)]
    assert groups and all(len(set(labels[g])) == 1 and labels[g[0]] >= 0 for g in groups)   # K of one cluster
    one_camera = [len(set(camids[g])) == 1 for g in groups]
    assert all(one_camera) if sampler == "identity_camera" else not all(one_camera)          # ... and one camera


def test_recipes_that_cannot_work_are_refused(tiny_data, tmp_path):
    base = [*tiny_overrides(tiny_data, tmp_path / "x", 1)]
    with pytest.raises(RecipeError, match="validation split needs identity labels"):
        load_recipe(None, [*base, *UNSUPERVISED, "data.val_identities=4"])
    with pytest.raises(RecipeError, match="set loss.ce_weight=0"):
        load_recipe(None, [*base, *UNSUPERVISED, "loss.ce_weight=1"])
    with pytest.raises(ValueError, match="no training piece labels the training images"):
        Trainer(load_recipe(None, [*base, *UNSUPERVISED, "cluster_memory.eps=null"]), progress=False)
    with pytest.raises(ValueError, match="set center_loss.weight=0"):
        Trainer(load_recipe(None, [*base, *UNSUPERVISED, "center_loss.weight=0.0005"]), progress=False)
    with pytest.raises(ValueError, match="data.sampler=identity"):
        Trainer(load_recipe(None, [*base, *UNSUPERVISED, "data.sampler=random"]), progress=False)
    with pytest.raises(RecipeError, match="cluster_memory.eps"):
        load_recipe(None, [*base, *UNSUPERVISED, "cluster_memory.eps=2"])


def test_the_camera_aware_distance_refuses_crops_of_one_camera(tiny_data, tmp_path, monkeypatch):
    build = trainer_module.build_recipe_dataset

    def one_camera(cfg):
        dataset = build(cfg)
        return dataclasses.replace(dataset, train=[ImageRecord(r.path, r.pid, 0) for r in dataset.train])

    monkeypatch.setattr(trainer_module, "build_recipe_dataset", one_camera)
    recipe = unsupervised(tiny_data, tmp_path / "one", extra=["cluster_memory.distance=camera_jaccard"])
    with pytest.raises(ValueError, match="camera_jaccard needs crops from two or more cameras"):
        Trainer(recipe, progress=False)


@pytest.mark.parametrize("sampler,iterations", [("cross_camera", 3), ("identity_camera_uniform", "images")])
def test_the_authors_samplers_and_epoch_lengths_train(tiny_data, tmp_path, sampler, iterations):
    """Cluster Contrast's epoch (cross-camera groups, a fixed number of iterations) and the camera-aware proxies'
    (K images of every proxy, the clustered images / batch size iterations) train end to end."""
    trainer = Trainer(unsupervised(tiny_data, tmp_path / sampler, epochs=2,
                                   extra=[f"data.sampler={sampler}", f"train.iterations={iterations}"]),
                      progress=False)
    trainer.fit()
    n = len(trainer.piece("cluster_memory").labels)
    kept = [n - round(share * n) for share in trainer.history["cluster_memory/outliers"]]    # each epoch's
    per_epoch = [3, 3] if iterations == 3 else [k // trainer.recipe.data.batch_size for k in kept]
    assert trainer.step == sum(per_epoch) and min(per_epoch) > 0
    assert len(trainer.history["loss/cluster_memory"]) == 2


def test_auto_settings_read_no_label_are_recorded_and_kept_by_a_resume(tiny_data, tmp_path, monkeypatch):
    """eps / min_samples auto: scrambled hidden identities give a bit-identical choice and run; the choice is
    written (cluster_settings.json), recorded every epoch, and a resumed run clusters with it."""
    auto = ["cluster_memory.eps=auto", "cluster_memory.min_samples=auto"]
    plain = Trainer(unsupervised(tiny_data, tmp_path / "plain", extra=auto), progress=False)
    plain.fit()
    build = trainer_module.build_recipe_dataset

    def scrambled(cfg):
        dataset = build(cfg)
        rng = np.random.default_rng(11)
        return dataclasses.replace(dataset, train=[ImageRecord(r.path, int(rng.integers(0, 1000)), r.camid)
                                                   for r in dataset.train])

    monkeypatch.setattr(trainer_module, "build_recipe_dataset", scrambled)
    other = Trainer(unsupervised(tiny_data, tmp_path / "scrambled", extra=auto), progress=False)
    other.fit()
    monkeypatch.setattr(trainer_module, "build_recipe_dataset", build)
    mine, theirs = plain.piece("cluster_memory").choice, other.piece("cluster_memory").choice
    assert (mine.eps, mine.min_samples, mine.typical, mine.rows) == (theirs.eps, theirs.min_samples, theirs.typical,
                                                                     theirs.rows)
    assert np.array_equal(plain.piece("cluster_memory").labels, other.piece("cluster_memory").labels)
    import json
    written = json.loads((plain.out / "cluster_settings.json").read_text())
    assert written["eps"] == mine.eps in [r["eps"] for r in written["rows"]] and 2 <= written["min_samples"] <= 4
    assert plain.history["cluster_memory/eps"] == [mine.eps, mine.eps]
    # the piece's saved state (what a checkpoint holds) carries the choice: a resumed run clusters with it,
    # without choosing again
    resumed = Trainer(unsupervised(tiny_data, tmp_path / "resumed", extra=auto), progress=False)
    resumed.piece("cluster_memory").load_state_dict(plain.piece("cluster_memory").state_dict())
    monkeypatch.setattr(resumed.piece("cluster_memory"), "_choose", lambda *a: pytest.fail("chose again"))
    resumed.piece("cluster_memory").relabel(resumed.models, 1)
    assert resumed.piece("cluster_memory").choice.eps == mine.eps
