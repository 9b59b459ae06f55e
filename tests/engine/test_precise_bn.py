"""``train.precise_bn``: population BatchNorm statistics before each evaluation (fast-reid's precise BN)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from conftest import tiny_overrides
from reidkit.config import RecipeError
from reidkit.data.transforms import normalize
from reidkit.engine import Trainer
from reidkit.engine.batchnorm_modes import precise_batchnorm
from reidkit.recipe_files import load_recipe


class FakeCache:
    """What precise_batchnorm reads of an ImageCache: uint8 images and a length."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)


def small_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_statistics_are_plain_averages_over_the_chosen_images_and_nothing_else_changes():
    torch.manual_seed(0)
    model = small_model()
    for bn in (model[1], model[6]):                       # stale running statistics, to be replaced
        bn.running_mean.uniform_(-5, 5)
        bn.running_var.uniform_(3, 9)
    model.eval()
    params = {k: v.clone() for k, v in model.named_parameters()}
    images = torch.randint(0, 256, (13, 3, 8, 6), dtype=torch.uint8)
    count = precise_batchnorm(model, FakeCache(images), images=10, batch_size=4, mean=None, std=None,
                              device=torch.device("cpu"), memory_format=torch.contiguous_format)
    assert count == 10 and not model.training
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    # by hand: the 10 images spread evenly over 13 (0, 1, 3, 4, 5, 7, 8, 9, 11, 12), batches of 4, 4, 2, each
    # through the model in train mode (every BatchNorm normalising with its batch's statistics); a BatchNorm's
    # running mean (variance) is the plain average of its input's batch means (unbiased variances)
    x = normalize(images[[0, 1, 3, 4, 5, 7, 8, 9, 11, 12]])
    conv_in, head_in = [], []
    for part in (slice(0, 4), slice(4, 8), slice(8, 10)):
        c = model[0](x[part])
        h = nn.functional.batch_norm(c, None, None, model[1].weight, model[1].bias, training=True)
        conv_in.append(c)
        head_in.append(model[5](model[4](model[3](model[2](h)))))
    for bn, inputs, dims in ((model[1], conv_in, (0, 2, 3)), (model[6], head_in, (0,))):
        mean = torch.stack([b.mean(dims) for b in inputs]).mean(0)
        var = torch.stack([b.var(dims, unbiased=True) for b in inputs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean.detach())
        torch.testing.assert_close(bn.running_var, var.detach())


def test_frozen_statistics_and_precise_bn_are_refused_together():
    with pytest.raises(RecipeError, match="precise_bn=64 .*bn_stats=frozen"):
        load_recipe(None, ["train.precise_bn=64", "train.bn_stats=frozen"])


@pytest.mark.slow
def test_training_is_unchanged_and_evaluations_read_population_statistics(tiny_data, tmp_path):
    """The train-mode passes change no weight and no later batch: the losses equal a run without precise BN's;
    the statistics the evaluations read are those of the final weights measured afresh."""
    plain = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "plain", epochs=2)), progress=False)
    plain.fit()
    precise = Trainer(load_recipe(None, [*tiny_overrides(tiny_data, tmp_path / "precise", epochs=2),
                                         "train.precise_bn=40"]), progress=False)
    precise.fit()
    assert precise.history["loss/total"] == plain.history["loss/total"]
    weights = {k: v for k, v in precise.model.state_dict().items() if "running" not in k and "tracked" not in k}
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in weights.items())
    bn = [m for m in precise.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    measured = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    precise.before_evaluation(1)                              # again, on the same weights: the same statistics
    for m, (mean, var) in zip(bn, measured):
        torch.testing.assert_close(m.running_mean, mean, rtol=0, atol=0)
        torch.testing.assert_close(m.running_var, var, rtol=0, atol=0)
    plain_bn = [m for m in plain.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert any(not torch.allclose(a.running_var, b.running_var) for a, b in zip(bn, plain_bn))
    saved = torch.load(tmp_path / "precise" / "last.pth", map_location="cpu", weights_only=True)["state_dict"]
    first = next(k for k in saved if k.endswith("running_var"))
    torch.testing.assert_close(saved[first], dict(precise.model.state_dict())[first])


def _measure_in_group(rank: int, world: int, port: int, synced: bool, out: str) -> None:
    """One of ``world`` gloo processes: precise BN on the shared images; writes its statistics."""
    import datetime
    import os

    import torch.distributed as dist

    from reidkit.engine.distributed import DistEnv, convert_batchnorm
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        model = small_model()
        if synced:
            model = convert_batchnorm(model, torch.device("cpu"))
        images = torch.randint(0, 256, (17, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        count = precise_batchnorm(model, FakeCache(images), images=16, batch_size=4, mean=None, std=None,
                                  device=torch.device("cpu"), memory_format=torch.contiguous_format,
                                  env=DistEnv(rank=rank, world_size=world))
        torch.save({"count": count, "bn": [(m.running_mean, m.running_var) for m in (model[1], model[6])]},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("synced", [True, False], ids=["sync_bn", "per_process_bn"])
def test_two_processes_measure_each_image_once_and_agree(tmp_path, synced):
    """16 images, 2 processes x 2 batches of 4: the running means equal one process's over the same 16 images
    (every batch full, so the average of batch means is the images' mean), and both processes hold the same
    statistics; with synchronised BatchNorm the first layer's variance is the average over the two global
    batches (process 0's k-th batch with process 1's) of their unbiased variance."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "stats")
    mp.start_processes(_measure_in_group, args=(2, port, synced, out), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    assert ranks[0]["count"] == ranks[1]["count"] == 16
    for (m0, v0), (m1, v1) in zip(ranks[0]["bn"], ranks[1]["bn"]):
        assert torch.equal(m0, m1) and torch.equal(v0, v1)
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = small_model()
        images = torch.randint(0, 256, (17, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        x = normalize(images[torch.linspace(0, 16, 16).round().long()]).double()
        conv = model[0](x)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(ranks[0]["bn"][0][0], conv.mean((0, 2, 3)).detach())
    if synced:                        # global batch k: images 4k..4k+3 (process 0) and 8+4k..8+4k+3 (process 1)
        batches = [torch.cat([conv[4 * k:4 * k + 4], conv[8 + 4 * k:12 + 4 * k]]) for k in range(2)]
        var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
        torch.testing.assert_close(ranks[0]["bn"][0][1], var.detach())


def test_every_model_trained_gets_precise_bn_and_frozen_statistics(tiny_data, tmp_path):
    """Precise BN and BatchNorm freezing are pieces whose hooks receive every model the run trains: deep mutual
    learning's peer is re-measured before each evaluation, as the recipe's model is, and frozen with it."""
    overrides = [*tiny_overrides(tiny_data, tmp_path / "dml", epochs=1), "mutual.peers=[resnet18_bnneck]",
                 "train.precise_bn=24"]
    trainer = Trainer(load_recipe(None, overrides), progress=False)
    assert [p.name for p in trainer.pieces if p.name in ("precise_bn", "mutual")] == ["precise_bn", "mutual"]
    trainer.fit()
    peer = trainer.models[1]
    # the peer's statistics are the population ones of its final weights, measured as precise BN measures them
    measured = copy.deepcopy(peer)
    r = trainer.recipe
    precise_batchnorm(measured, trainer.train_cache, 24, r.data.test_batch_size, r.augment.mean, r.augment.std,
                      trainer.device, trainer.memory_format)
    pairs = [(a, b) for a, b in zip(peer.modules(), measured.modules())
             if isinstance(a, nn.modules.batchnorm._BatchNorm)]
    assert pairs
    for a, b in pairs:
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0)
    frozen = Trainer(load_recipe(None, [*tiny_overrides(tiny_data, tmp_path / "frozen", epochs=1),
                                        "mutual.peers=[resnet18_bnneck]", "train.bn_stats=frozen"]),
                     progress=False)
    peer = frozen.models[1]
    before = [m.running_var.clone() for m in peer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    frozen.train_epoch(0, max_batches=2)
    assert all(not m.training for m in peer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    after = [m.running_var for m in peer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
