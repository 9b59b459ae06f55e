"""On a CUDA GPU: the GPU gives the CPU's losses, features, batches and evaluation; fp16 / bf16 training;
data parallelism through torchrun.  Skipped without CUDA (bench/gpu_check.sh runs them on a GPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.config import LossConfig
from reidkit.data.transforms import IMAGENET_STD
from reidkit.engine import Trainer
from reidkit.engine.checkpoint import load_checkpoint, model_from_checkpoint
from reidkit.evaluation import evaluate_features
from reidkit.losses.objective import ReIDObjective
from reidkit.methods.center_loss import CenterLossPiece
from reidkit.models import build_model
from reidkit.pieces import StepOutputs
from reidkit.recipe_files import load_recipe

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 while comparing with the CPU."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def recipe(root, out, *extra):
    return load_recipe(None, [f"data.root={root}", "data.options={num_cameras: 3}", "data.height=64", "data.width=32",
                              "data.batch_size=16", "data.num_instances=2", "model.name=resnet18_bnneck",
                              "model.pretrained=none", "optim.lr=0.001", "schedule.warmup_epochs=0", "train.epochs=2",
                              "train.eval_every=1", f"train.output_dir={out}", *extra])


def test_losses_and_their_gradients_equal_the_cpu():
    torch.manual_seed(0)
    features, logits = torch.randn(16, 32, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    pids, camids = torch.arange(8).repeat_interleave(2), torch.arange(16) % 3
    values, grads = {}, {}
    for device in ("cpu", "cuda"):
        f, lg = features.detach().to(device).requires_grad_(), logits.detach().to(device).requires_grad_()
        objective = ReIDObjective(LossConfig(miner="camera_aware")).to(device)
        center = CenterLossPiece(8, 32, 5e-4, 0.5)
        center.loss.centers.data = torch.linspace(-1, 1, 8 * 32).view(8, 32)
        center.to(torch.device(device))
        p, c = pids.to(device), camids.to(device)
        terms = objective(lg, f, p, c) | center.extra_loss(StepOutputs(None, [lg], [f], [f], p, c, 0, 0))
        sum(terms.values()).backward()
        values[device] = {k: float(v.detach()) for k, v in terms.items()}
        grads[device] = (f.grad.cpu(), lg.grad.cpu())
    assert values["cuda"] == pytest.approx(values["cpu"], rel=1e-5)
    for a, b in zip(grads["cuda"], grads["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet50_bnneck", "osnet_x1_0"])
def test_features_equal_the_cpu(name):
    model = build_model(name, 10, pretrained="none").eval()
    x = torch.randn(4, 3, 256, 128)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("rerank", [False, True])
def test_evaluation_on_the_gpu_equals_the_cpu(rerank):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 64)).astype(np.float32)
    q_ids, g_ids = rng.integers(0, 40, 300), rng.integers(0, 40, 1500)
    qf = torch.from_numpy(centers[q_ids] + rng.standard_normal((300, 64)).astype(np.float32))
    gf = torch.from_numpy(centers[g_ids] + rng.standard_normal((1500, 64)).astype(np.float32))
    qc, gc = rng.integers(0, 6, 300), rng.integers(0, 6, 1500)
    cpu = evaluate_features(qf, gf, q_ids, g_ids, qc, gc, metric="euclidean", rerank=rerank)
    gpu = evaluate_features(qf.cuda(), gf.cuda(), q_ids, g_ids, qc, gc, metric="euclidean", rerank=rerank)
    assert gpu.mAP == pytest.approx(cpu.mAP, abs=1e-5) and gpu.mINP == pytest.approx(cpu.mINP, abs=1e-5)
    np.testing.assert_allclose(gpu.cmc, cpu.cmc, atol=1e-5)


@pytest.mark.parametrize("crop", ["pad", "enlarge"])
@pytest.mark.parametrize("cache_on_device", [True, False])
def test_gpu_batches_equal_the_cpu_batches(tiny_data, tmp_path, cache_on_device, crop):
    """The images on the GPU or streamed from pinned memory: the CPU's augmented batches.  Padded crops are
    equal; the enlarge crop rounds a bilinear resize to uint8 like torchvision, and the two devices' resize
    kernels may land on opposite sides of a .5, so a few pixels may differ by one grey level (times the
    colour jitter's brightness, contrast and saturation factors, at most 1.2 each) and no more."""
    extra = ["augment.color_jitter=0.2", f"augment.crop={crop}", "augment.crop_prob=0.5"]
    cpu = Trainer(recipe(tiny_data, tmp_path / "cpu", "train.device=cpu", *extra), progress=False)
    gpu = Trainer(recipe(tiny_data, tmp_path / "gpu", "train.device=cuda", f"data.cache_on_device={cache_on_device}",
                         *extra), progress=False)
    assert (gpu.loader.images.device.type == "cuda") == cache_on_device
    one_level = 1.2 ** 3 / 255 / min(IMAGENET_STD)        # brightness, contrast, saturation factors <= 1.2
    batches = 0
    for a, b in zip(cpu.loader, gpu.loader):
        diff = (b.images.cpu() - a.images).abs()
        if crop == "pad":
            assert diff.max() <= 1e-4
        else:
            assert diff.max() <= one_level + 1e-4 and (diff > 1e-4).float().mean() < 0.01
        assert torch.equal(b.pids.cpu(), a.pids) and torch.equal(b.camids.cpu(), a.camids)
        batches += 1
    assert batches == len(cpu.loader) > 0


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_the_gpu_and_its_checkpoint_on_the_cpu(tiny_data, tmp_path, amp):
    trainer = Trainer(recipe(tiny_data, tmp_path / amp, "train.device=cuda", f"train.amp={amp}"), progress=False)
    result = trainer.fit()
    losses = trainer.history["loss/total"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] and 0 < result.mAP <= 1
    state = load_checkpoint(tmp_path / amp / "last.pth")
    assert all(v.device.type == "cpu" for v in state["state_dict"].values())
    assert ("scaler" in state) == (amp == "fp16")
    model = model_from_checkpoint("resnet18_bnneck", tmp_path / amp / "last.pth")          # evaluates on the CPU
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.model.eval()(x.cuda()).cpu(), rtol=1e-3, atol=1e-3)


def test_gpu_and_cpu_training_start_alike(tiny_data, tmp_path):
    """The first step on the GPU gives the CPU's loss and gradients (fp32, no TF32, NCHW).  The gradients agree
    to 1% of their norm, not to float rounding: the early convolutions' weight gradients are small sums of
    many large terms of both signs, summed in another order on the GPU (H100, 2026-11-27: 0.55% of the norm,
    the loss equal to 1e-5); a wrong gradient is off by far more.  The second loss is only close: Adam's first
    update is about lr * sign(gradient) for every weight, so weights whose gradient is rounding noise move by
    a full lr in either direction (H100, 2026-11-26: 3.3758 vs 3.3825)."""
    losses, grads = {}, {}
    for device in ("cpu", "cuda"):
        t = Trainer(recipe(tiny_data, tmp_path / device, f"train.device={device}", "train.channels_last=false",
                           "center_loss.weight=0", "train.log_every=1"), progress=False)
        seen = losses.setdefault(device, [])

        def check(step, terms, t=t, seen=seen, device=device):
            seen.append(terms["total"])
            if len(seen) == 1:          # gradients of the first step (zeroed at the start of the next)
                grads[device] = torch.cat([p.grad.flatten().cpu() for p in t.model.parameters() if p.grad is not None])
        t.on_check = check
        t.train_epoch(0, max_batches=2)
    assert losses["cuda"][0] == pytest.approx(losses["cpu"][0], rel=1e-5)
    assert grads["cuda"].shape == grads["cpu"].shape
    assert (grads["cuda"] - grads["cpu"]).norm() <= 1e-2 * grads["cpu"].norm()
    assert torch.nn.functional.cosine_similarity(grads["cuda"], grads["cpu"], dim=0) > 0.999
    assert losses["cuda"][1] == pytest.approx(losses["cpu"][1], rel=1e-2)


def test_deterministic_gpu_training_repeats_bit_for_bit(tiny_data, tmp_path):
    """``train.deterministic=true``: two runs of a seed on the GPU (each its own process, as cuBLAS reads its
    workspace setting when it starts) give the same losses and mAP to the last bit."""
    histories = []
    for run in ("a", "b"):
        out = tmp_path / run
        overrides = ["data.dataset=synthetic", f"data.root={tiny_data}", "data.options={num_cameras: 3}",
                     "data.val_identities=null", "data.height=64", "data.width=32", "data.batch_size=16",
                     "data.num_instances=2",
                     "model.name=resnet18_bnneck", "model.pretrained=none", "train.epochs=2", "train.eval_every=1",
                     "train.device=cuda", "train.deterministic=true", f"train.output_dir={out}"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-m", "reidkit", "train", str(ROOT / "configs" / "bot_r18_cuhk03.yaml"),
                               "--no-progress", *overrides], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        histories.append(json.loads((out / "history.json").read_text()))
    assert histories[0]["loss/total"] == histories[1]["loss/total"]
    assert histories[0]["mAP"] == histories[1]["mAP"]


def test_torchrun_on_one_gpu(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    overrides = ["data.dataset=synthetic", f"data.root={tiny_data}", "data.options={num_cameras: 3}",
                 "data.val_identities=null", "data.height=64", "data.width=32",
                 "data.batch_size=16", "data.num_instances=2", "model.name=resnet18_bnneck", "model.pretrained=none",
                 "train.epochs=1", "train.eval_every=1", f"train.output_dir={out}", "train.device=cuda"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "reidkit", "train", str(ROOT / "configs" / "bot_r18_cuhk03.yaml"), "--no-progress",
                           *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "last.pth").is_file() and "mAP" in proc.stdout
