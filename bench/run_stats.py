"""Recorded accuracy runs, summarised: each side's mean and spread, and reidkit against its peer seed by seed.

    python -m bench.run_stats [docs/results/osnet_amsgrad_cuhk03.csv] [--seeds 0 1 2]

The file lists one run per row (``setting,variant,seed,mAP,rank1,loss``; ``#`` lines are
comments): ``variant`` names what reidkit's side ran, or ``torchreid`` for the peer.  For
each reidkit variant of each setting (or each ``--versus`` pair), this prints the mean ± standard deviation of both
sides over the seeds both ran, the pair differences (reidkit - peer, same seed), their mean
with its standard error, the paired t-test and its 95% interval, and Welch's t-test over
every run of each side in that setting (scipy.stats).  Issue 16's done-when reads the mean
of seeds 0-2 of each side (``--seeds``).
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

DEFAULT = Path(__file__).resolve().parents[1] / "docs" / "results" / "osnet_amsgrad_cuhk03.csv"
PEER = "torchreid"


@dataclass(frozen=True)
class Run:
    setting: str
    variant: str
    seed: int
    mAP: float

    @property
    def key(self) -> str:
        """``setting/variant``, the name of the group the run belongs to."""
        return f"{self.setting}/{self.variant}"


@dataclass
class Comparison:
    ours_key: str                   # "setting/variant" of each side
    peer_key: str
    seeds: list[int]                # seeds both sides ran, ascending
    ours: list[float]               # mAP of those seeds
    peer: list[float]
    mean_difference: float
    standard_error: float           # of the mean pair difference (nan with one pair)
    paired_t: float
    paired_p: float
    interval95: tuple[float, float]
    ahead: int                      # pairs where reidkit's mAP is the higher
    welch_t: float                  # every run of each side in the setting, pairs or not
    welch_p: float
    n_ours: int
    n_peer: int


def read_runs(path: str | Path) -> list[Run]:
    """The rows of ``path``; a row with a missing or non-numeric seed or mAP is an error naming its line."""
    text = Path(path).read_text().splitlines()
    rows = [(i + 1, line) for i, line in enumerate(text) if line.strip() and not line.lstrip().startswith("#")]
    header = next(csv.reader([rows[0][1]])) if rows else []
    missing = {"setting", "variant", "seed", "mAP"} - set(header)
    if missing:
        raise ValueError(f"{path}: the header line lacks {', '.join(sorted(missing))} (has {', '.join(header)})")
    runs = []
    for number, line in rows[1:]:
        row = dict(zip(header, next(csv.reader([line]))))
        try:
            runs.append(Run(row["setting"], row["variant"], int(row["seed"]), float(row["mAP"])))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}, line {number}: cannot read seed and mAP from {line!r} ({e})") from None
    return runs


def compare(runs: list[Run], ours_key: str, peer_key: str, seeds: list[int] | None = None) -> Comparison:
    """The runs ``ours_key`` against ``peer_key`` (each "setting/variant") over the seeds both ran (those in
    ``seeds`` if given); Welch's test over every run of each side (of ``seeds`` if given)."""
    def by_seed(key: str) -> dict[int, float]:
        found: dict[int, float] = {}
        for r in runs:
            if r.key == key and (seeds is None or r.seed in seeds):
                if r.seed in found:
                    raise ValueError(f"{key}: seed {r.seed} is recorded twice")
                found[r.seed] = r.mAP
        if not found:
            raise ValueError(f"no runs of {key!r}" + (f" among seeds {seeds}" if seeds else ""))
        return found
    ours, peer = by_seed(ours_key), by_seed(peer_key)
    common = sorted(set(ours) & set(peer))
    a, b = np.array([ours[s] for s in common]), np.array([peer[s] for s in common])
    d = a - b
    n = len(d)
    if n >= 2:
        se = float(d.std(ddof=1) / math.sqrt(n))
        test = stats.ttest_rel(a, b)
        half = float(stats.t.ppf(0.975, n - 1)) * se
        t, p = float(test.statistic), float(test.pvalue)
    else:
        se = t = p = half = math.nan
    mean = float(d.mean()) if n else math.nan
    if len(ours) >= 2 and len(peer) >= 2:
        welch = stats.ttest_ind(list(ours.values()), list(peer.values()), equal_var=False)
        welch_t, welch_p = float(welch.statistic), float(welch.pvalue)
    else:
        welch_t = welch_p = math.nan
    return Comparison(ours_key, peer_key, common, a.tolist(), b.tolist(), mean, se, t, p, (mean - half, mean + half),
                      int((d > 0).sum()), welch_t, welch_p, len(ours), len(peer))


def describe(c: Comparison) -> str:
    def spread(x: list[float]) -> str:
        return f"{np.mean(x):5.2f} ± {np.std(x, ddof=1):4.2f}" if len(x) >= 2 else (f"{x[0]:5.2f}" if x else "-")
    lines = [f"{c.ours_key} against {c.peer_key}: seeds {' '.join(map(str, c.seeds)) or '-'}",
             f"  first {spread(c.ours)}   second {spread(c.peer)}   pair differences: "
             + " ".join(f"{x - y:+.2f}" for x, y in zip(c.ours, c.peer))]
    if len(c.seeds) >= 2:
        lines.append(f"  mean difference {c.mean_difference:+.2f} ± {c.standard_error:.2f} (s.e.), 95% interval "
                     f"{c.interval95[0]:+.2f} to {c.interval95[1]:+.2f}, paired t {c.paired_t:.2f} p {c.paired_p:.3f}; "
                     f"first ahead in {c.ahead} of {len(c.seeds)}")
    if not math.isnan(c.welch_t):
        lines.append(f"  every run: first {c.n_ours}, second {c.n_peer}: Welch t {c.welch_t:.2f} p {c.welch_p:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Comparison]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (e.g. 0 1 2)")
    parser.add_argument("--versus", nargs=2, action="append", metavar=("SETTING/VARIANT", "SETTING/VARIANT"),
                        help="compare these two instead (repeatable), e.g. cpu_fullres/cl_exact h100_copy/gpu")
    args = parser.parse_args(argv)
    runs = read_runs(args.path)
    groups = dict.fromkeys((r.key, r.setting) for r in runs if r.variant != PEER)   # in file order, once each
    with_peer = {r.setting for r in runs if r.variant == PEER}
    alone = [key for key, setting in groups if setting not in with_peer]
    if alone and not args.versus:
        print(f"no {PEER} runs beside {', '.join(alone)} (compare them with --versus)")
    pairs = args.versus or [(key, f"{setting}/{PEER}") for key, setting in groups if setting in with_peer]
    if args.seeds and not args.versus:
        ran = {r.key for r in runs if r.seed in args.seeds}
        if missing := [a for a, b in pairs if a not in ran or b not in ran]:
            print(f"no runs of seeds {' '.join(map(str, args.seeds))} on both sides in {', '.join(missing)}")
        pairs = [(a, b) for a, b in pairs if a in ran and b in ran]
    out = [compare(runs, a, b, args.seeds) for a, b in pairs]
    for c in out:
        print(describe(c))
    return out


if __name__ == "__main__":
    main()
