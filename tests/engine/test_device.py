"""The device code paths as far as a CPU can run them: device choice, autocast dtypes, the fp16 gradient
scaler and its checkpointed state, threads, device-free checkpoints, the GPU-side augmentation."""
import pytest
import torch

from conftest import make_tiny_synthetic
from reidkit.data.transforms import AugmentConfig, BatchAugment, _enlarge, _pad, apply_crop, apply_erasing
from reidkit.engine import DeviceError, Trainer
from reidkit.engine.checkpoint import load_checkpoint, save_checkpoint, to_cpu
from reidkit.engine.device import (
    THREADS_ENV,
    autocast,
    choose_kernels,
    gradient_scaler,
    resolve_device,
    set_threads,
)
from reidkit.recipe_files import load_recipe


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_synthetic(tmp_path_factory, "dev", num_ids=12, seed=4, num_distractors=4)


def recipe(root, out, *extra):
    return load_recipe(None, [f"data.root={root}", "data.options={num_cameras: 3}", "data.height=32",
                              "data.width=16", "data.batch_size=8", "data.num_instances=2",
                              "model.name=resnet18_bnneck",
                              "model.pretrained=none", "optim.lr=0.001", "schedule.warmup_epochs=0",
                              "train.epochs=2", "train.eval_every=1", f"train.output_dir={out}", *extra])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_device_choice_without_cuda():
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(DeviceError, match="train.device=cuda but torch .* sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="train.device=cuda:1"):
        resolve_device("cuda:1")


def test_autocast_picks_the_recipe_dtype_and_off_keeps_float32():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    cpu = torch.device("cpu")
    for amp, dtype in (("off", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(cpu, amp):
            assert (x @ w).dtype == dtype, amp
    with pytest.raises(ValueError, match="train.amp must be off, bf16 or fp16"):
        autocast(cpu, "fp8")
    assert gradient_scaler(cpu, "bf16") is None and gradient_scaler(cpu, "off") is None
    assert isinstance(gradient_scaler(cpu, "fp16"), torch.amp.GradScaler)


def test_threads_follow_the_recipe_then_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        monkeypatch.setenv(THREADS_ENV, "2")
        assert set_threads(None) == 2
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(DeviceError, match="REIDKIT_THREADS='many'"):
            set_threads(None)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_deterministic_kernels_are_chosen_and_the_default_autotunes(monkeypatch):
    """The flags ``train.deterministic`` sets (a GPU test checks two runs repeat bit for bit)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        choose_kernels(torch.device("cuda"), deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        choose_kernels(torch.device("cuda"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert load_recipe(None, ["train.deterministic=true"]).train.deterministic
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_fp16_training_keeps_the_scaler_in_checkpoints_and_resumes_exactly(tiny_data, tmp_path):
    """fp16 autocast with a gradient scaler runs on a CPU too: the same code path as on a GPU."""
    fp16 = ["train.amp=fp16", "train.channels_last=false"]
    straight = Trainer(recipe(tiny_data, tmp_path / "a", *fp16), progress=False)
    assert straight.scaler is not None
    straight.fit()
    state = load_checkpoint(tmp_path / "a" / "last.pth")
    assert state["scaler"]["scale"] == straight.scaler.get_scale() > 0
    first = Trainer(recipe(tiny_data, tmp_path / "b", *fp16, "train.epochs=1"), progress=False)
    first.fit()
    first.scaler.update(new_scale=123.0)                 # what the checkpoint restores must come from the file
    resumed = Trainer(recipe(tiny_data, tmp_path / "b", *fp16), progress=False)
    resumed.resume(tmp_path / "b" / "last.pth")
    assert resumed.scaler.get_scale() == load_checkpoint(tmp_path / "b" / "last.pth")["scaler"]["scale"] != 123.0
    resumed.fit(resume=tmp_path / "b" / "last.pth")
    assert resumed.history["loss/total"] == pytest.approx(straight.history["loss/total"], rel=1e-6)
    # (at 32x16 torch 2.14's CPU bfloat16 kernels give NaN from the second step on, also before reidkit 0.2)
    bf16 = Trainer(recipe(tiny_data, tmp_path / "c", "train.amp=bf16", "train.epochs=1", "data.height=64",
                          "data.width=32"), progress=False)
    assert bf16.scaler is None
    bf16.fit()
    assert "scaler" not in load_checkpoint(tmp_path / "c" / "last.pth")


def test_checkpoints_hold_device_free_tensors(tmp_path):
    leaf = torch.ones(3, requires_grad=True) * 2
    nested = {"a": leaf, "b": [torch.zeros(2), (torch.ones(1), 5)], "c": "text"}
    moved = to_cpu(nested)
    assert not moved["a"].requires_grad and moved["b"][1][1] == 5 and isinstance(moved["b"][1], tuple)
    save_checkpoint({"state_dict": {"w": leaf}}, tmp_path / "x.pth")
    loaded = torch.load(tmp_path / "x.pth", weights_only=True)
    assert loaded["state_dict"]["w"].device.type == "cpu" and not loaded["state_dict"]["w"].requires_grad


@pytest.mark.parametrize("crop, grow", [("pad", _pad(3)), ("enlarge", _enlarge(1.125))])
def test_gpu_side_crop_equals_the_cpu_crop(crop, grow):
    """On a GPU every image is grown and the drawn ones selected (no host sync); same result as the CPU's."""
    batch = torch.randint(0, 256, (16, 3, 24, 12), dtype=torch.uint8)
    aug = BatchAugment(AugmentConfig(crop=crop, crop_prob=0.5), seed=0)
    draws = aug.draw(16, (24, 12))
    assert 0 < int(draws.crop.sum()) < 16
    assert torch.equal(apply_crop(batch, draws, grow, grow_all=True), apply_crop(batch, draws, grow, grow_all=False))


def test_gpu_side_erasing_equals_the_cpu_erasing():
    aug = BatchAugment(AugmentConfig(erasing=0.7), seed=2)
    draws = aug.draw(16, (24, 12))
    assert 0 < int(draws.erase.sum()) < 16
    batch = torch.randn(16, 3, 24, 12)
    masked = apply_erasing(batch.clone(), draws.erase, draws.erase_box, (0.1, 0.2, 0.3), per_box=False)
    boxes = apply_erasing(batch.clone(), draws.erase, draws.erase_box, (0.1, 0.2, 0.3), per_box=True)
    assert torch.equal(masked, boxes) and not torch.equal(masked, batch)


def test_augment_draws_survive_the_packed_copy_and_shards_match_the_whole_batch():
    aug = BatchAugment(AugmentConfig(color_jitter=0.3, crop_prob=0.5), seed=5)
    draws = aug.draw(12, (32, 16))
    back = draws.unpack(draws.pack())
    for name, value in vars(draws).items():
        assert torch.equal(getattr(back, name), value) and getattr(back, name).dtype == value.dtype, name
    batch = torch.randint(0, 256, (12, 3, 32, 16), dtype=torch.uint8)
    whole = aug.apply(batch, draws)
    halves = torch.cat([aug.apply(batch[:5], draws.rows(0, 5)), aug.apply(batch[5:], draws.rows(5, 12))])
    assert torch.equal(whole, halves)
