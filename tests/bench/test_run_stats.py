"""bench/run_stats.py: the pair statistics against hand-computed values, and its errors."""
from __future__ import annotations

import math

import pytest

from bench.run_stats import DEFAULT, compare, main, read_runs

ROWS = """# a comment
setting,variant,seed,mAP,rank1,loss
cpu,ours,0,11.0,,
cpu,ours,1,13.0,,
cpu,ours,2,15.0,,
cpu,ours,9,50.0,,
cpu,torchreid,0,10.0,,
cpu,torchreid,1,11.0,,
cpu,torchreid,2,12.0,,
gpu,ours,0,14.0,,
"""


def write(tmp_path, text: str):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    return path


def test_pairs_only_the_seeds_both_sides_ran_and_match_the_closed_form(tmp_path):
    c = compare(read_runs(write(tmp_path, ROWS)), "cpu/ours", "cpu/torchreid")
    assert c.seeds == [0, 1, 2] and c.ours == [11.0, 13.0, 15.0]
    # differences 1, 2, 3: mean 2, sd 1, s.e. 1/sqrt(3), t = 2 sqrt(3)
    assert c.mean_difference == pytest.approx(2.0)
    assert c.standard_error == pytest.approx(1 / math.sqrt(3))
    t = 2 * math.sqrt(3)
    assert c.paired_t == pytest.approx(t)
    # Student's t with 2 degrees of freedom: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2)
    assert c.paired_p == pytest.approx(1 - t / math.sqrt(2 + t * t))
    # its 97.5% point is 4.30265 (the t table), the interval 2 -+ 4.30265 / sqrt(3)
    assert c.interval95 == pytest.approx((2 - 4.30265 / math.sqrt(3), 2 + 4.30265 / math.sqrt(3)), abs=1e-4)
    assert c.ahead == 3 and (c.n_ours, c.n_peer) == (4, 3)     # Welch's test reads seed 9 too


def test_a_single_pair_has_no_spread_and_seeds_restrict(tmp_path):
    runs = read_runs(write(tmp_path, ROWS))
    one = compare(runs, "gpu/ours", "cpu/torchreid")
    assert one.seeds == [0] and one.mean_difference == pytest.approx(4.0) and math.isnan(one.standard_error)
    assert compare(runs, "cpu/ours", "cpu/torchreid", seeds=[0, 1]).mean_difference == pytest.approx(1.5)  # (1 + 2) / 2


@pytest.mark.parametrize("text, message", [
    (ROWS + "cpu,ours,1,99.0,,\n", "cpu/ours: seed 1 is recorded twice"),
    (ROWS + "cpu,ours,x,99.0,,\n", "line 11"),
    ("setting,variant,mAP\n", "lacks seed"),
])
def test_bad_files_name_what_is_wrong(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        compare(read_runs(write(tmp_path, text)), "cpu/ours", "cpu/torchreid")


def test_unknown_runs_are_named(tmp_path):
    with pytest.raises(ValueError, match="no runs of 'cpu/nothing'"):
        compare(read_runs(write(tmp_path, ROWS)), "cpu/nothing", "cpu/torchreid")


def test_the_recorded_issue_16_runs_read_and_compare(capsys):
    out = main([str(DEFAULT), "--seeds", "0", "1", "2"])
    first = next(c for c in out if c.ours_key == "cpu_fullres/cl_exact")
    assert first.seeds == [0, 1, 2] and first.peer_key == "cpu_fullres/torchreid"
    assert "cpu_fullres/cl_exact against cpu_fullres/torchreid" in capsys.readouterr().out


def test_settings_without_peer_runs_are_named_not_compared(tmp_path, capsys):
    out = main([str(write(tmp_path, ROWS + "rerun,ours,0,12.0,,\n"))])
    assert [c.ours_key for c in out] == ["cpu/ours"]          # gpu and rerun have no torchreid runs
    assert "no torchreid runs beside gpu/ours, rerun/ours" in capsys.readouterr().out


def test_seeds_that_a_setting_lacks_leave_it_out_by_name(tmp_path, capsys):
    out = main([str(write(tmp_path, ROWS + "late,ours,7,12.0,,\nlate,torchreid,7,11.0,,\n")), "--seeds", "0", "1"])
    assert [c.ours_key for c in out] == ["cpu/ours"] and out[0].seeds == [0, 1]
    assert "no runs of seeds 0 1 on both sides in late/ours" in capsys.readouterr().out
