"""Data-parallel training on the CPU (gloo, 2 processes spawned from the test): the same model as one
process with the same global batch, a killed process ends the run with a clear message, resume is exact."""
import json
import os
import signal
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_tiny_synthetic
from reidkit.recipe_files import load_recipe

# BoT with center loss, camera-aware mining (camera-diverse P x K batches) and adaptive L2, augmentation on
METHODS = ["loss.miner=camera_aware", "data.sampler=camera_diverse", "center_loss.weight=0.0005",
           "adaptive_l2.amplitude=0.005", "optim.weight_decay=0", "optim.weight_decay_bias=0",
           "augment.color_jitter=0.2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_synthetic(tmp_path_factory, "ddp", num_ids=12, seed=2, num_distractors=4)


def overrides(root, out, epochs=2, extra=()):
    return [f"data.root={root}", "data.options={num_cameras: 3}", "data.height=32", "data.width=16",
            "data.batch_size=8", "data.num_instances=2", "data.test_batch_size=16",
            "model.name=resnet18_bnneck", "model.pretrained=none", "optim.name=sgd", "optim.lr=0.01",
            "schedule.kind=multistep", "schedule.warmup_epochs=0", f"train.epochs={epochs}", "train.eval_every=1",
            f"train.output_dir={out}", "train.device=cpu", "train.threads=1", "train.dist_timeout=30",
            "augment.padding=2", *METHODS, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, plan: dict) -> None:
    """One process of a run: join the group, train, write its per-step losses (and the weights, rank 0)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import datetime

    from reidkit.engine import Trainer
    from reidkit.engine.distributed import shutdown
    torch.set_num_threads(1)
    if plan.get("float64"):               # exact arithmetic, so that any difference is a real one
        torch.set_default_dtype(torch.float64)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
    losses = []
    result = {"rank": rank}
    try:
        trainer = Trainer(load_recipe(None, plan["overrides"]), progress=False)

        def on_check(step, terms):
            losses.append(terms)
            if plan.get("kill_rank") == rank and step == plan["kill_at"]:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer.on_check = on_check
        if rank == 0:
            torch.save(trainer.model.state_dict(), plan["weights"] + ".before")
        if plan.get("steps"):
            trainer.train_epoch(0, max_batches=plan["steps"])
        else:
            trainer.fit(resume=plan.get("resume"))
        result.update(losses=losses, mAP=trainer.history["mAP"], world=trainer.env.world_size,
                      loader_share=[trainer.loader.start, trainer.loader.end])
        if rank == 0:
            torch.save(trainer.model.state_dict(), plan["weights"])
        if plan.get("pieces"):                # every process's pieces (a memory must be the same in each)
            torch.save({p.name: p.state_dict() for p in trainer.pieces}, f"{plan['weights']}.pieces{rank}")
    except Exception as e:  # noqa: BLE001 - reported to the test
        import traceback
        result.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(), losses=losses)
    finally:
        with open(f"{plan['report']}.{rank}", "w") as f:
            json.dump(result, f)
        shutdown()


def run(world: int, plan: dict, tmp_path, deadline_s: float = 240) -> list[dict]:
    """Run ``world`` processes of ``plan``; every one must end before ``deadline_s`` (no hang)."""
    plan = dict(plan, report=str(tmp_path / f"report_{time.monotonic_ns()}"))
    ctx = mp.start_processes(_worker, args=(world, free_port(), plan), nprocs=world, join=False,
                             start_method="spawn")
    end = time.monotonic() + deadline_s
    try:
        while not all(not p.is_alive() for p in ctx.processes):
            if time.monotonic() > end:
                raise AssertionError(f"a process still runs after {deadline_s} s: a rank hangs")
            time.sleep(0.2)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    reports = []
    for rank in range(world):
        path = f"{plan['report']}.{rank}"
        reports.append(json.load(open(path)) if os.path.exists(path) else {"rank": rank, "killed": True})
    return reports


def totals(report: dict) -> list[float]:
    return [step["total"] for step in report["losses"]]


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tiny_data, tmp_path):
    """Two epochs in float64, where rounding cannot hide a difference.

    (In float32 this regime is chaotic: two exact one-process runs that differ only in memory layout
    already disagree by 3e-3 in the second update and by 10% in the triplet loss after five steps, and
    the two-process run tracks either as closely as they track each other.)
    """
    one = run(1, {"overrides": overrides(tiny_data, tmp_path / "one"), "weights": str(tmp_path / "one.pt"),
                  "float64": True}, tmp_path)[0]
    two = run(2, {"overrides": overrides(tiny_data, tmp_path / "two"), "weights": str(tmp_path / "two.pt"),
                  "float64": True}, tmp_path)
    assert "error" not in one and all("error" not in r for r in two), (one, two)
    assert two[0]["loader_share"] == [0, 4] and two[1]["loader_share"] == [4, 8]     # 2 of the 4 identities each
    assert len(totals(one)) == len(totals(two[0])) >= 8
    # every term of every step, as the mean over the processes, equals the one-process value
    for a, b, c in zip(one["losses"], two[0]["losses"], two[1]["losses"]):
        assert set(a) == {"id", "triplet", "center_loss", "adaptive_l2", "total"}
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), (k, a, b)
            assert c[k] == b[k]                                             # all processes report the same
    w0, w1, w2 = (torch.load(tmp_path / name) for name in ("one.pt.before", "one.pt", "two.pt"))
    assert set(w1) == set(w2)
    for name in w1:
        if w1[name].is_floating_point():
            update1, update2 = w1[name] - w0[name], w2[name] - w0[name]
            torch.testing.assert_close(update2, update1, rtol=1e-7, atol=1e-12 * (1 + float(update1.abs().max())),
                                       msg=lambda m, name=name: f"{name}: {m}")
    assert two[0]["mAP"] == pytest.approx(one["mAP"], abs=1e-9)


@pytest.mark.slow
def test_resume_under_ddp_continues_exactly_and_checkpoints_cross_world_sizes(tiny_data, tmp_path):
    plan = lambda name, **kw: {"overrides": overrides(tiny_data, tmp_path / name, epochs=kw.pop("epochs", 2)),  # noqa: E731
                               "weights": str(tmp_path / f"{name}.pt"), "float64": True, **kw}
    straight = run(2, plan("a"), tmp_path)
    run(2, plan("first", epochs=1), tmp_path)
    epoch1 = str(tmp_path / "first" / "last.pth")
    resumed = run(2, plan("b", resume=epoch1), tmp_path)
    assert all("error" not in r for r in straight + resumed), (straight, resumed)
    n = len(totals(resumed[0]))
    assert n > 0 and totals(resumed[0]) == pytest.approx(totals(straight[0])[-n:], rel=1e-12)
    assert resumed[0]["mAP"] == pytest.approx(straight[0]["mAP"], rel=1e-12)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.allclose(a[k], b[k], rtol=1e-10, atol=1e-14) for k in a if a[k].is_floating_point())
    # the two-process checkpoint continues in one process as the two processes did (same global batch)
    alone = run(1, plan("c", resume=epoch1), tmp_path)[0]
    assert "error" not in alone and alone["world"] == 1
    assert totals(alone) == pytest.approx(totals(straight[0])[-n:], rel=1e-9)


@pytest.mark.slow
def test_a_killed_process_ends_the_run_with_a_clear_message(tiny_data, tmp_path):
    t0 = time.monotonic()
    reports = run(2, {"overrides": overrides(tiny_data, tmp_path / "k", epochs=3), "weights": str(tmp_path / "k.pt"),
                      "kill_rank": 1, "kill_at": 3}, tmp_path, deadline_s=120)
    assert reports[1].get("killed")
    error = reports[0].get("error", "")
    assert error.startswith("DistributedError: process 0 of 2 lost the others at step"), reports[0]
    assert "--resume" in error and time.monotonic() - t0 < 120


@pytest.mark.slow
def test_torchrun_launches_data_parallel_training_from_the_command_line(tiny_data, tmp_path):
    """``torchrun --nproc-per-node 2 -m reidkit train RECIPE``: gloo on the CPU, the first process writes."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "reidkit", "train", str(root / "configs" / "bot_r18_cuhk03.yaml"), "--no-progress",
                           "data.dataset=synthetic", "data.val_identities=null",
                           *overrides(tiny_data, out, epochs=1)[:-len(METHODS)]],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data parallel: 2 processes (gloo), 2 on this machine" in proc.stdout
    assert proc.stdout.count("epoch 1/1") == 1                 # one process logs
    assert (out / "last.pth").is_file() and (out / "history.json").is_file()
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["world_size"] == 2 and not any(k.startswith("module.") for k in state["state_dict"])


@pytest.mark.slow
def test_the_cluster_memory_is_the_same_in_every_process_and_as_in_one(tiny_data, tmp_path):
    """Unsupervised training (hidden labels, clustering, a cluster memory): every process clusters the same
    features into the same labels and updates its memory from the same gathered batch, so two processes hold
    identical memories, equal to the one-process run's."""
    extra = ["data.labels=hidden", "loss.ce_weight=0", "loss.triplet_weight=0", "center_loss.weight=0",
             "adaptive_l2.amplitude=0", "cluster_memory.eps=0.6", "cluster_memory.min_samples=2",
             "cluster_memory.k1=6", "cluster_memory.k2=2", "train.eval_every=2"]
    plan = lambda name: {"overrides": overrides(tiny_data, tmp_path / name, extra=extra),  # noqa: E731
                         "weights": str(tmp_path / f"{name}.pt"), "float64": True, "pieces": True}
    one = run(1, plan("one"), tmp_path)[0]
    two = run(2, plan("two"), tmp_path)
    assert "error" not in one and all("error" not in r for r in two), (one, two)
    memories = [torch.load(f"{tmp_path / name}.pt.pieces{rank}")["cluster_memory"]
                for name, rank in (("one", 0), ("two", 0), ("two", 1))]
    assert torch.equal(memories[1]["labels"], memories[2]["labels"])
    assert torch.equal(memories[1]["memory"]["centroids"], memories[2]["memory"]["centroids"])
    assert torch.equal(memories[0]["labels"], memories[1]["labels"])
    torch.testing.assert_close(memories[1]["memory"]["centroids"], memories[0]["memory"]["centroids"],
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(one["losses"], two[0]["losses"]):
        assert b["cluster_memory"] == pytest.approx(a["cluster_memory"], rel=1e-6)
