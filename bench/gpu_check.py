"""reidkit's GPU check: one prepared run on a machine with a CUDA GPU, one JSON summary printed last.

    bash bench/gpu_check.sh                 # on the GPU machine (installs carried wheels, then runs this)
    python -m bench.gpu_check --out DIR [--data DIR] [--budget 450]
    python -m bench.gpu_check --device cpu --quick --out /tmp/x    # a dry run of every step on a CPU

Steps, each timed and guarded (a failing step records its error; the summary still prints):

1. ``pytest -m gpu``: CPU/GPU equality of losses, features, batches and evaluation; fp32 / bf16 / fp16
   training; ``torchrun`` on one GPU.
2. Training images/s, data loading included, BoT ResNet-50 (last stride 1) at 256x128, P=16 x K=4,
   CUHK03-labeled train: reidkit fp32 / bf16 / fp16 and, on the same GPU in the same run, torchreid
   0.2.5's ``ImageTripletEngine`` on its ``ImageDataManager`` (workers = the machine's cores; its ResNet-50
   built with last stride 1 too).
   Then the host-GPU synchronisations inside a training step (CUDA's sync debug mode), by source line.
3. The input pipeline alone (decoded images -> P x K batches -> augmentation on the GPU), images/s, with
   the images in GPU memory and streamed from pinned host memory.
4. OSNet x1.0 feature extraction images/s (fp32 and bf16 autocast).
5. Evaluation at Market-1501 and MSMT17 size (random clustered 2048-d features on the GPU) and
   re-ranking at Market-1501 size: seconds.
6. A short real training on CUHK03-labeled (BoT ResNet-50 and OSNet x0.25, bf16, from scratch, as many
   epochs as the budget allows): val mAP / rank-1.
7. ``studies`` (``--only tests studies``): many short trainings side by side on the one GPU
   (``bench.seed_study``): torchreid's default OSNet x0.25 softmax recipe by reidkit and by torchreid over
   seeds (issue 16) and each method beside its baseline with a validation split over seeds (issue 17),
   with ``pytest -m gpu`` running beside them.

Timings synchronise the device before reading the clock and follow warm-up iterations.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from reidkit.engine import Trainer
from reidkit.evaluation import evaluate_features
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe

ROOT = Path(__file__).resolve().parents[1]

DATA_CANDIDATES = [ROOT / ".gpu_data" / "cuhk03" / "labeled_128x64",
                   ROOT.parent / "shared" / "data" / "cuhk03" / "labeled_128x64"]
SIZES = {"market1501": (3368, 15913, 751), "msmt17": (11659, 82161, 3060)}
SCRATCH = Path("/tmp/gpu_check/studies")                     # the studies' run folders and logs
QUICK = ["model.name=resnet18_bnneck", "data.height=64", "data.width=32"]     # --quick: a dry run of the steps


class Check:
    """Runs the steps within a time budget and collects their results."""

    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.device = torch.device(args.device)
        self.summary: dict = {"machine": machine(self.device), "steps": {}}

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def step(self, name: str, fn, needs_s: float) -> None:
        if self.left() < needs_s:
            self.summary["steps"][name] = {"skipped": f"{self.left():.0f} s left of the budget, needs ~{needs_s:.0f}"}
            return
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - recorded, the other steps still run
            result = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.summary["steps"][name] = result
        (Path(self.args.out) / "gpu_check.json").write_text(json.dumps(self.summary, indent=1))   # kept if killed
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {name}: {json.dumps(result)[:400]}", flush=True)


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cores": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def find_data(explicit: str | None) -> Path:
    for path in ([Path(explicit)] if explicit else DATA_CANDIDATES):
        if (path / "train").is_dir():
            return path
    raise FileNotFoundError(f"CUHK03-labeled not found (looked in {', '.join(map(str, DATA_CANDIDATES))}); "
                            "bench/prepare_gpu_carry.sh copies the 128x64 copy into .gpu_data/")


def run_tests(check: Check) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests"),
           *(["-k", check.args.tests] if check.args.tests else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(60, check.left() - 150))
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    out = Path(check.args.out) / "pytest_gpu.log"
    out.write_text(proc.stdout + proc.stderr)
    return {"returncode": proc.returncode, "result": tail}


def studies(check: Check, data: Path) -> dict:
    """The two seed studies and ``pytest -m gpu`` at once, within the budget left; their summaries."""
    seconds = max(60.0, check.left() - 20)
    common = ["--device", str(check.device), "--data", str(data), "--out", check.args.out, "--threads", "1"]
    quick = ["--quick", "--seeds", "0"] if check.args.quick else []
    commands = {
        "osnet_softmax": ["--study", "osnet_softmax", "--pairing", "both", "--jobs", "4", "--workers", "3",
                          "--estimate", "150", "--scratch", str(SCRATCH / "osnet_softmax")],
        "methods": ["--study", "methods", *([] if check.args.quick else ["--epochs", "16"]), "--jobs", "5",
                    "--estimate", "90",
                    "--scratch", str(SCRATCH / "methods")],
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    procs = {name: subprocess.Popen([sys.executable, "-m", "bench.seed_study", *argv, *common, *quick,
                                     "--budget", str(seconds - 10)],
                                    stdout=open(SCRATCH / f"study_{name}.log", "w"),
                                    stderr=subprocess.STDOUT, cwd=ROOT, env=env)
             for name, argv in commands.items()}
    result: dict = {}
    if "tests" in check.args.only:
        try:
            result["tests"] = run_tests(check)
        except Exception as e:  # noqa: BLE001 - a hung test must not lose the studies
            result["tests"] = {"error": f"{type(e).__name__}: {e}"}
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, seconds - (time.perf_counter() - check.t0) + 30))
        except subprocess.TimeoutExpired:
            proc.kill()
        report = Path(check.args.out) / f"study_{name}.json"
        result[name] = (json.loads(report.read_text())["summary"] if report.is_file()
                        else {"error": f"exit {proc.returncode}, see study_{name}.log"})
    # every training's log in one file (the output folder brings back few files)
    logs = sorted(str(p.relative_to(SCRATCH)) for p in SCRATCH.rglob("*.log"))
    subprocess.run(["tar", "czf", str(Path(check.args.out) / "job_logs.tar.gz"), "-C", str(SCRATCH), *logs],
                   check=False, capture_output=True)
    return result


def bot_recipe(data: Path, out: str, *extra: str):
    return load_recipe(ROOT / "configs" / "bot_r50_market1501.yaml",
                       ["data.dataset=cuhk03_labeled", f"data.root={data}", "model.pretrained=none",
                        "data.val_identities=null",            # the speed check trains on every identity, as before
                        "schedule.warmup_epochs=0", f"train.output_dir={out}", *extra])


def reidkit_speed(check: Check, data: Path, amp: str, batches: int) -> dict:
    extra = [f"train.device={check.device}", f"train.amp={amp}"]
    if check.args.quick:
        extra += QUICK
    trainer = Trainer(bot_recipe(data, f"/tmp/gpu_check/speed_{amp}", *extra), progress=False)
    trainer.train_epoch(0, max_batches=5)                 # warm-up: cuDNN autotuning, allocator
    sync(check.device)
    stats = trainer.train_epoch(1, max_batches=batches)    # the epoch's clock ends after its last loss is read
    return {"images_per_s": round(stats["images_per_s"], 1), "batches": batches, "loss": round(stats["total"], 3)}


def host_syncs(check: Check, data: Path, batches: int = 10) -> dict:
    """Where the training step makes the host wait for the GPU: CUDA's sync debug mode over ``batches``
    steps of BoT ResNet-50 in bf16 (after a warm-up), counted by source line."""
    if check.device.type != "cuda":
        return {"skipped": "CUDA's sync debug mode needs a GPU"}
    trainer = Trainer(bot_recipe(data, "/tmp/gpu_check/syncs", f"train.device={check.device}", "train.amp=bf16"),
                      progress=False)
    trainer.train_epoch(0, max_batches=3)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_epoch(1, max_batches=batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    where: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    return {"steps": batches, "syncs": sum(where.values()), "where": dict(sorted(where.items(), key=lambda kv: -kv[1]))}


def torchreid_speed(check: Check, data: Path, batches: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
        from torchreid.reid.engine import ImageTripletEngine
        from torchreid.reid.models.resnet import Bottleneck, ResNet
    from bench import peers
    workers = os.cpu_count() or 2
    height, width = (64, 32) if check.args.quick else (256, 128)
    dm = peers.torchreid_cuhk03_datamanager(str(data), height, width, 64, 4, workers,
                                            ["random_flip", "random_crop", "random_erase"],
                                            use_gpu=check.device.type == "cuda")
    model = ResNet(dm.num_train_pids, "triplet", Bottleneck, [3, 4, 6, 3], last_stride=1, fc_dims=None)
    model = model.to(check.device)
    optimizer = tr.optim.build_optimizer(model, optim="adam", lr=3.5e-4)
    engine = ImageTripletEngine(dm, model, optimizer, margin=0.3, weight_t=1, weight_x=1, label_smooth=True,
                                use_gpu=check.device.type == "cuda")
    model.train()
    loader = iter(dm.train_loader)
    for _ in range(5):
        engine.forward_backward(next(loader))
    sync(check.device)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            data_batch = next(loader)
        except StopIteration:
            loader = iter(dm.train_loader)
            data_batch = next(loader)
        engine.forward_backward(data_batch)
        n += data_batch["img"].shape[0]
    sync(check.device)
    return {"images_per_s": round(n / (time.perf_counter() - t0), 1), "batches": batches, "workers": workers}


def pipeline_speed(check: Check, data: Path) -> dict:
    out = {}
    for on_device in ((True, False) if check.device.type == "cuda" else (False,)):
        trainer = Trainer(bot_recipe(data, "/tmp/gpu_check/pipeline", f"train.device={check.device}",
                                     f"data.cache_on_device={on_device}", "model.name=resnet18_bnneck",
                                     *(QUICK if check.args.quick else [])),
                          progress=False)
        loader = trainer.loader
        for epoch in range(2):                            # the first epoch warms up
            loader.set_epoch(epoch)
            sync(check.device)
            t0, n = time.perf_counter(), 0
            for batch in loader:
                n += batch.images.shape[0]
            sync(check.device)
        out["images_on_gpu" if on_device else "streamed_from_host"] = round(n / (time.perf_counter() - t0), 1)
    return out


def extraction_speed(check: Check) -> dict:
    name = "osnet_x0_25" if check.args.quick else "osnet_x1_0"
    model = build_model(name, 10, pretrained="none").eval().to(check.device, memory_format=torch.channels_last)
    batch = 256 if check.device.type == "cuda" else 16
    x = torch.randn(batch, 3, 256, 128, device=check.device).contiguous(memory_format=torch.channels_last)
    out = {"model": name, "batch": batch}
    for amp in ("off", "bf16"):
        ctx = torch.autocast(check.device.type, dtype=torch.bfloat16) if amp == "bf16" else torch.no_grad()
        with torch.no_grad(), ctx:
            for _ in range(3):
                model(x)
            sync(check.device)
            reps = 20 if check.device.type == "cuda" else 2
            t0 = time.perf_counter()
            for _ in range(reps):
                model(x)
            sync(check.device)
        out[f"images_per_s_{amp}"] = round(reps * batch / (time.perf_counter() - t0), 1)
    return out


def clustered(centers: torch.Tensor, n: int, gen: torch.Generator, device) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` features around ``centers`` (one per identity), with their identities."""
    pids = torch.randint(0, len(centers), (n,), generator=gen)
    feats = centers[pids] + 4.0 * torch.randn(n, centers.shape[1], generator=gen)
    return feats.to(device), pids.numpy()


def evaluation_speed(check: Check, size: str, rerank: bool) -> dict:
    nq, ng, ids = SIZES[size]
    if check.args.quick:
        nq, ng, ids = nq // 20, ng // 20, ids // 20
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(ids, 2048, generator=gen)          # query and gallery share the identities
    qf, qp = clustered(centers, nq, gen, check.device)
    gf, gp = clustered(centers, ng, gen, check.device)
    qc, gc = np.random.default_rng(0).integers(0, 6, nq), np.random.default_rng(1).integers(0, 6, ng)
    sync(check.device)
    t0 = time.perf_counter()
    result = evaluate_features(qf, gf, qp, gp, qc, gc, metric="euclidean", rerank=rerank)
    sync(check.device)
    return {"queries": nq, "gallery": ng, "rerank": rerank, "seconds_eval": round(time.perf_counter() - t0, 2),
            "mAP": round(100 * result.mAP, 2)}


def real_training(check: Check, data: Path, which: str, seconds: float) -> dict:
    """Train from scratch for as many epochs as ``seconds`` allow at the speed measured on 20 batches first."""
    per_epoch = 7232                                          # CUHK03-labeled train, batches of 64
    out = f"/tmp/gpu_check/real_{which}"

    def recipe(epochs: int):
        run_dir = f"{out}_{epochs}"
        common = [f"train.device={check.device}", "train.amp=bf16", f"train.epochs={epochs}",
                  f"train.eval_every={epochs}"]
        if which == "bot_r50":
            return bot_recipe(data, run_dir, *common, "schedule.kind=cosine", "schedule.warmup_epochs=1",
                              *(QUICK if check.args.quick else []))
        return load_recipe(ROOT / "configs" / "osnet_x0_25_cuhk03_amsgrad.yaml",
                           [f"data.root={data}", f"train.output_dir={run_dir}", *common,
                            *(QUICK[1:] if check.args.quick else [])])

    probe = Trainer(recipe(1), progress=False)
    probe.train_epoch(0, max_batches=5)
    speed = probe.train_epoch(1, max_batches=3 if check.args.quick else 20)["images_per_s"]
    del probe
    epochs = max(1, min(60, int(0.85 * seconds * speed / per_epoch)))   # 15% for evaluation and start-up
    trainer = Trainer(recipe(epochs), progress=False)
    t0 = time.perf_counter()
    result = trainer.fit(overwrite=True)                # a scratch run: a rerun of the check replaces it
    return {"epochs": epochs, "train_and_eval_s": round(time.perf_counter() - t0, 1),
            "mAP": round(100 * result.mAP, 2), "rank1": round(100 * result.rank(1), 2),
            "images_per_s": round(trainer.history["images_per_s"][-1], 1), "probe_images_per_s": round(speed, 1),
            "recipe": trainer.recipe.model.name + f", {trainer.recipe.data.height}x{trainer.recipe.data.width}, "
                      + trainer.recipe.optim.name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check_out"))
    parser.add_argument("--data", default=None, help="CUHK03-labeled (the 128x64 copy is enough)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every step (CPU)")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    parser.add_argument("--tests", default=None, help="a pytest -k expression: only these GPU tests")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run only these steps; 'studies' runs the seed studies (with 'tests': beside them)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    check = Check(args)
    if check.device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device", **check.summary}))
        return 2
    data = find_data(args.data)
    batches = 3 if args.quick else 60
    if args.only:
        if "studies" in args.only:
            check.step("studies", lambda: studies(check, data), 60)
        elif "tests" in args.only:
            check.step("tests", lambda: run_tests(check), 60)
        check.summary["total_s"] = round(time.perf_counter() - check.t0, 1)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(check.summary, indent=1))
        print(json.dumps(check.summary, separators=(",", ":")))
        return 0
    steps = [
        ("tests", lambda: run_tests(check), 120),
        ("train_reidkit_fp32", lambda: reidkit_speed(check, data, "off", batches), 40),
        ("train_reidkit_bf16", lambda: reidkit_speed(check, data, "bf16", batches), 40),
        ("train_reidkit_fp16", lambda: reidkit_speed(check, data, "fp16", batches), 40),   # (slow on a CPU)
        ("train_torchreid_fp32", lambda: torchreid_speed(check, data, batches), 60),
        ("host_syncs", lambda: host_syncs(check, data), 20),
        ("input_pipeline", lambda: pipeline_speed(check, data), 30),
        ("extract_osnet", lambda: extraction_speed(check), 20),
        ("eval_market1501", lambda: evaluation_speed(check, "market1501", False), 15),
        ("eval_msmt17", lambda: evaluation_speed(check, "msmt17", False), 30),
        ("rerank_market1501", lambda: evaluation_speed(check, "market1501", True), 40),
    ]
    if check.device.type == "cpu":
        args.skip.append("train_reidkit_fp16")            # CPUs emulate fp16 convolutions: minutes for nothing
    for name, fn, needs in steps:
        if name not in args.skip:
            check.step(name, fn, needs)
    real = [w for w in ("bot_r50", "osnet_x0_25") if f"real_{w}" not in args.skip]
    for i, which in enumerate(real):
        real_s = 8 if args.quick else max(45.0, (check.left() - 30) / (len(real) - i))
        check.step(f"real_{which}", lambda w=which, s=real_s: real_training(check, data, w, s), real_s * 0.7)
    steps_done = check.summary["steps"]
    theirs = steps_done.get("train_torchreid_fp32", {}).get("images_per_s")
    for amp in ("fp32", "bf16", "fp16"):
        ours = steps_done.get(f"train_reidkit_{amp}", {}).get("images_per_s")
        if ours and theirs:
            check.summary[f"train_{amp}_vs_torchreid_fp32"] = round(ours / theirs, 2)
    check.summary["total_s"] = round(time.perf_counter() - check.t0, 1)
    text = json.dumps(check.summary, indent=1)
    (Path(args.out) / "gpu_check.json").write_text(text)
    print(json.dumps({k: v for k, v in check.summary.items()}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
