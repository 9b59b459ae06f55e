"""Many short trainings side by side on one machine: seeds of method-vs-baseline pairs and of reidkit vs torchreid.

    python -m bench.seed_study --study methods --seeds 0 1 2 --epochs 20 --device cuda --jobs 8 --out DIR
    python -m bench.seed_study --study osnet_softmax --seeds 0 1 2 --device cuda --out DIR
    python -m bench.seed_study --study methods --quick --device cpu --out /tmp/s   # a dry run

Studies (CUHK03-labeled; ``--data`` may be the 128x64 copy):

* ``methods`` (issue 17, "each method beside its baseline"): every recipe below with a validation split
  of 100 training identities (``data.val_identities=100``); the checkpoint is selected on validation mAP
  and the test figures of that checkpoint are reported, with the last epoch's beside them:

  - ``softmax``: softmax_r18_cuhk03 (the plain baseline), ``bot``: bot_r18_cuhk03 (Bag of Tricks),
  - ``camaware``: bot_camaware_r18_cuhk03 (camera-aware batch-hard, decay) vs ``bot`` (batch-hard),
  - ``adaptive_l2``: adaptive_l2_r18_cuhk03 vs ``constant_l2`` (the same recipe, weight decay 5e-4), and the fair
    baselines ``l2_at_start`` (weight decay 5e-3: the adaptive factors' starting strength) and ``l2_at_authors``
    (1e-2: the authors' Keras l2(0.005)),
  - ``dml``: the BoT recipe trained as one of a deep-mutual-learning pair (peer: another ResNet-18) vs ``bot``,
  - ``ptl``: the BoT recipe on a ResNet-18 PTL network (from scratch, as everything here) vs ``bot``,
  - ``std``: student-teacher distillation (std_osnet_x0_25_cuhk03: OSNet x0.25 from scratch at 256x128,
    0.2 CE + 0.8 L1 to the frozen MSMT17 OSNet x0.25 teacher, ``--teacher``) vs ``student`` (the same student,
    CE alone); both with the AMSGrad optimiser of torchreid's softmax recipe, which trains OSNet from scratch
    within this budget (the paper's SGD lr 0.01 is for an ImageNet-initialised student).

* ``osnet_softmax`` (issue 16): torchreid's default softmax recipe for OSNet x0.25 from scratch
  (osnet_x0_25_cuhk03_amsgrad, 10 epochs) by reidkit and by torchreid 0.2.5 on the same device, through
  ``bench.bench_osnet_cuhk03`` (each side its own process); ``--pairing paired|both`` runs pairs that start
  from the same initial weights.

Each training is a subprocess; ``--jobs`` run at once; a job is started only while the budget
(``--budget`` seconds) leaves its estimated time (``--estimate``, then 1.1 x the longest finished job of
its group), and jobs still running at the end are stopped and recorded as such.  Results go to
``DIR/study_<name>.json``; the per-group mean and standard deviation are printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "reidkit" / "recipes"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cuhk03" / "labeled"

#: torchreid's softmax-recipe optimiser (osnet_x0_25_cuhk03_amsgrad), constant lr, for the OSNet students
AMSGRAD = ["optim.name=amsgrad", "optim.lr=0.0015", "optim.betas=[0.9,0.99]", "schedule.milestones=[1000]"]
DEFAULT_TEACHER_ONNX = ROOT.parent / "shared" / "data" / "weights" / "osnet_x0_25_msmt17.onnx"
#: name -> (recipe, overrides): the methods study's recipes, each beside its baseline ({teacher}: --teacher)
METHODS = {
    "softmax": ("softmax_r18_cuhk03.yaml", []),
    "bot": ("bot_r18_cuhk03.yaml", []),
    "camaware": ("bot_camaware_r18_cuhk03.yaml", []),
    "adaptive_l2": ("adaptive_l2_r18_cuhk03.yaml", []),
    "constant_l2": ("adaptive_l2_r18_cuhk03.yaml", ["adaptive_l2.amplitude=0", "optim.weight_decay=0.0005",
                                                    "optim.weight_decay_bias=0.0005"]),
    # issue 35: constant L2 as strong as the adaptive factors start (A/2 per |w|^2 = weight decay 2 x 0.0025) and
    # at the authors' Keras baseline (l2(0.005) = weight decay 0.01)
    "l2_at_start": ("adaptive_l2_r18_cuhk03.yaml", ["adaptive_l2.amplitude=0", "optim.weight_decay=0.005",
                                                    "optim.weight_decay_bias=0.005"]),
    "l2_at_authors": ("adaptive_l2_r18_cuhk03.yaml", ["adaptive_l2.amplitude=0", "optim.weight_decay=0.01",
                                                      "optim.weight_decay_bias=0.01"]),
    "dml": ("bot_r18_cuhk03.yaml", ["mutual.peers=[resnet18_bnneck]"]),    # peer 0 of a DML pair
    "ptl": ("bot_r18_cuhk03.yaml", ["model.name=resnet18_ptl"]),                # BConv-Cells beside the blocks
    "student": ("std_osnet_x0_25_cuhk03.yaml", ["distillation.teacher=null", "loss.ce_weight=1.0", *AMSGRAD]),
    "std": ("std_osnet_x0_25_cuhk03.yaml", ["distillation.teacher={teacher}", *AMSGRAD]),
}
#: method -> its baseline, for the printed differences
BASELINES = {"bot": "softmax", "camaware": "bot", "adaptive_l2": "constant_l2", "dml": "bot", "ptl": "bot",
             "std": "student"}


@dataclass
class Job:
    group: str
    seed: int
    argv: list[str]
    kind: str                               # "train" (history.json), "bench" (JSON line), "eval" (ensemble)
    run_dir: Path | None = None
    estimate_s: float = 120.0
    result: dict = field(default_factory=dict)
    then: Job | None = None                 # queued first once this one has finished well (dml: its ensemble)


def methods_jobs(args) -> list[Job]:
    """Group by group in ``--only``'s order (the longest first keeps the card busy to the end), seed by seed."""
    jobs = []
    for name in args.only or list(METHODS):
        recipe, extra = METHODS[name]
        for seed in args.seeds:
            run_dir = Path(args.scratch) / f"{name}_{seed}"
            sets = [f"data.root={args.data}", f"train.device={args.device}", f"train.seed={seed}",
                    f"train.epochs={args.epochs}", f"train.eval_every={args.eval_every}", "data.val_identities=100",
                    f"train.output_dir={run_dir}", f"train.threads={args.threads}",
                    *(x.format(teacher=args.teacher) for x in extra)]
            if args.quick:
                sets += ["data.height=64", "data.width=32"]
            argv = [sys.executable, "-m", "reidkit", "train", str(RECIPES / recipe), *sets, "--overwrite"]
            jobs.append(Job(name, seed, argv, "train", run_dir, estimate_s=args.estimate,
                            then=ensemble_job(name, seed, recipe, sets, run_dir) if name == "dml" else None))
    return jobs


def ensemble_job(name: str, seed: int, recipe: str, sets: list[str], run_dir: Path) -> Job:
    """The two peers of a DML run (both as of its last epoch) evaluated alone and as one ensemble."""
    peers = ["--weights", str(run_dir / "last.pth"), "--weights", str(run_dir / "peer_1_resnet18_bnneck.pth")]
    argv = [sys.executable, "-m", "reidkit", "eval", str(RECIPES / recipe), *sets, *peers, "--no-report",
            "--no-progress"]
    return Job(f"{name}_ensemble", seed, argv, "eval", run_dir, estimate_s=30.0)


def ensure_teacher(args) -> None:
    """``--teacher`` exists: imported from ``--teacher-onnx`` (the MSMT17 OSNet x0.25) when it does not."""
    if Path(args.teacher).is_file():
        return
    if not Path(args.teacher_onnx).is_file():
        raise SystemExit(f"the std study needs a teacher: neither {args.teacher} nor {args.teacher_onnx} exists")
    Path(args.teacher).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "reidkit", "import-onnx", str(args.teacher_onnx), "--arch", "osnet_x0_25",
                    "--out", str(args.teacher)], cwd=ROOT, check=True)


def osnet_jobs(args) -> list[Job]:
    jobs = []
    pairings = {"unpaired": [False], "paired": [True], "both": [False, True]}[args.pairing]
    for paired in pairings:
        for seed in args.seeds:
            for side in ("reidkit", "torchreid"):
                argv = [sys.executable, "-m", "bench.bench_osnet_cuhk03", "--recipe", "amsgrad", "--epochs",
                        str(args.epochs), "--eval-every", "5", "--seed", str(seed), "--device", args.device,
                        "--data", str(args.data), "--threads", str(args.threads), "--workers", str(args.workers),
                        f"--{side}-only", *(["--paired"] if paired else [])]
                if args.quick:
                    argv += ["--max-batches", "3", "--set", "data.height=64", "data.width=32"]
                jobs.append(Job(f"{side}{'_paired' if paired else ''}", seed, argv, "bench",
                                estimate_s=args.estimate))
    return jobs


def read_history(run_dir: Path) -> dict:
    """Test figures of the last epoch and of the validation-selected epoch, from the run's history.json."""
    h = json.loads((run_dir / "history.json").read_text())
    val = h.get("val/mAP") or []
    best = max(range(len(val)), key=val.__getitem__) if val else len(h["mAP"]) - 1
    return {"mAP": h["mAP"][-1], "rank1": h["rank1"][-1], "mINP": h["mINP"][-1],
            "selected_epoch": h["eval_epoch"][best], "selected_val_mAP": val[best] if val else None,
            "selected_mAP": h["mAP"][best], "selected_rank1": h["rank1"][best],
            "images_per_s": h["images_per_s"][-1], "loss": h["loss/total"][-1] if "loss/total" in h else None}


def read_bench(log: Path) -> dict:
    """The side's figures from the last JSON line ``bench_osnet_cuhk03`` prints."""
    line = [x for x in log.read_text().splitlines() if x.startswith("{")][-1]
    (side,) = json.loads(line).values()
    return {k: side[k] for k in ("mAP", "rank1", "train_s", "images_per_s", "loss", "curve")}


def read_eval(log: Path) -> dict:
    """The ensemble's figures and each member's mAP from what ``reidkit eval`` with several weights prints."""
    blocks = re.findall(r"^(.+):\nmAP: ([\d.]+)%  mINP: ([\d.]+)%\nRank-1  : ([\d.]+)%", log.read_text(), re.M)
    figures = {name: (float(m) / 100, float(inp) / 100, float(r1) / 100) for name, m, inp, r1 in blocks}
    ensemble = [name for name in figures if name.startswith("ensemble of")]
    if len(ensemble) != 1 or len(figures) < 3:
        raise ValueError(f"expected the members' and one ensemble's figures in {log}, found {sorted(figures)}")
    m, inp, r1 = figures.pop(ensemble[0])
    return {"mAP": m, "mINP": inp, "rank1": r1, "members_mAP": [f[0] for f in figures.values()]}


def run_jobs(jobs: list[Job], args, logs: Path) -> None:
    """Runs ``jobs`` ``args.jobs`` at a time within ``args.budget`` seconds, filling each job's ``result``."""
    t0 = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - t0)  # noqa: E731
    waiting, running = list(jobs), []
    longest: dict[str, float] = {}                    # the longest finished job of each group, seconds
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    while waiting or running:
        while waiting and len(running) < args.jobs:
            job = waiting.pop(0)
            if left() < job.estimate_s:
                job.result = {"skipped": f"{left():.0f} s left, needs ~{job.estimate_s:.0f}"}
                continue
            log = logs / f"{job.group}_{job.seed}.log"
            handle = open(log, "w")
            proc = subprocess.Popen(job.argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            running.append((job, proc, handle, log, time.perf_counter()))
        time.sleep(1.0)
        for entry in list(running):
            job, proc, handle, log, start = entry
            if proc.poll() is None and left() > 0:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            handle.close()
            running.remove(entry)
            seconds = round(time.perf_counter() - start, 1)
            try:
                if proc.returncode != 0:
                    raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(log.read_text().splitlines()[-4:]))
                job.result = read_history(job.run_dir) if job.kind == "train" else (
                    read_bench(log) if job.kind == "bench" else read_eval(log))
                if job.then is not None:
                    waiting.insert(0, job.then)
                    jobs.append(job.then)
            except Exception as e:  # noqa: BLE001 - recorded; the other jobs go on
                job.result = {"error": f"{type(e).__name__}: {e}"[-600:]}
            job.result["seconds"] = seconds
            if "mAP" in job.result:                   # what the group's next jobs are expected to take
                longest[job.group] = max(seconds, longest.get(job.group, 0.0))
                for other in waiting:
                    if other.group == job.group:
                        other.estimate_s = 1.1 * longest[job.group]
            print(f"[{time.perf_counter() - t0:5.0f} s] {job.group} seed {job.seed}: "
                  f"{json.dumps({k: v for k, v in job.result.items() if k != 'curve'})[:300]}", flush=True)
        if waiting and not running and left() < min(j.estimate_s for j in waiting):
            for job in waiting:
                job.result = {"skipped": f"{left():.0f} s left"}
            waiting = []


def summarise(jobs: list[Job]) -> dict:
    """Per group: the seeds done and mean / standard deviation of each figure (percent)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    summary = {}
    for name, members in groups.items():
        done = [j for j in members if "mAP" in j.result]
        entry: dict = {"seeds": [j.seed for j in done]}
        for key in ("selected_mAP", "selected_rank1", "mAP", "rank1", "mINP"):
            values = [100 * j.result[key] for j in done if j.result.get(key) is not None]
            if values:
                entry[key] = {"mean": round(statistics.fmean(values), 2),
                              "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                              "each": [round(v, 2) for v in values]}
        summary[name] = entry
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=["methods", "osnet_softmax"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="methods: 20; osnet_softmax: 10")
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=[], help="methods: these recipes only")
    parser.add_argument("--pairing", choices=["unpaired", "paired", "both"], default="unpaired",
                        help="osnet_softmax: each side its own initial weights, both the same, or both kinds")
    parser.add_argument("--name", default=None, help="the report is DIR/study_NAME.json (default: the study)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--jobs", type=int, default=8, help="trainings at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training")
    parser.add_argument("--workers", type=int, default=3, help="torchreid's loader workers per training")
    parser.add_argument("--budget", type=float, default=400.0, help="seconds for the whole study")
    parser.add_argument("--estimate", type=float, default=120.0, help="seconds one training is expected to take")
    parser.add_argument("--quick", action="store_true", help="tiny images and epochs: a dry run")
    parser.add_argument("--teacher", default=None,
                        help="std: the teacher checkpoint (default SCRATCH/osnet_x0_25_msmt17.pth, imported if absent)")
    parser.add_argument("--teacher-onnx", default=str(DEFAULT_TEACHER_ONNX), help="std: where the teacher comes from")
    parser.add_argument("--out", default="/tmp/seed_study")
    parser.add_argument("--scratch", default="/tmp/seed_study_runs")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = (1 if args.quick else 20) if args.study == "methods" else (1 if args.quick else 10)
    out = Path(args.out)
    logs = Path(args.scratch) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    args.teacher = args.teacher or str(Path(args.scratch) / "osnet_x0_25_msmt17.pth")
    jobs = methods_jobs(args) if args.study == "methods" else osnet_jobs(args)
    if any(j.group == "std" for j in jobs):
        ensure_teacher(args)
    t0 = time.perf_counter()
    run_jobs(jobs, args, logs)
    report = {"study": args.study, "device": args.device, "epochs": args.epochs, "seeds": args.seeds,
              "data": str(args.data), "jobs_at_once": args.jobs, "seconds": round(time.perf_counter() - t0, 1),
              "summary": summarise(jobs),
              "runs": [{"group": j.group, "seed": j.seed, **j.result} for j in jobs]}
    if args.study == "methods":
        report["differences"] = {
            f"{m} - {b}": round(report["summary"][m]["selected_mAP"]["mean"]
                                - report["summary"][b]["selected_mAP"]["mean"], 2)
            for m, b in BASELINES.items()
            if "selected_mAP" in report["summary"].get(m, {}) and "selected_mAP" in report["summary"].get(b, {})}
    (out / f"study_{args.name or args.study}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in report if k != "runs"}))
    return report


if __name__ == "__main__":
    main()
