"""Which evaluation's checkpoint becomes best.pth (train.select_on), checked by hand over a run's evaluations."""
from __future__ import annotations

import numpy as np
import pytest

from reidkit.engine.epoch_evaluation import select_checkpoint
from reidkit.evaluation import RankResult


def figures(m: float) -> RankResult:
    empty = np.zeros(0)
    return RankResult(m, np.ones(5), m, 1, 0, empty, empty, empty)


def walk(select_on: str, test: list[float], val: list[float] | None) -> tuple[list[int], list[float | None]]:
    """The evaluations (0-based) kept as best.pth, and what a plateau schedule read after each."""
    best, kept, readings = -1.0, [], []
    for i, m in enumerate(test):
        chosen = select_checkpoint(select_on, figures(m), figures(val[i]) if val else None, best)
        best = chosen.best_map
        readings.append(chosen.reading)
        if chosen.keep:
            kept.append(i)
    return kept, readings


def test_validation_selects_and_the_test_figures_are_never_read():
    kept, readings = walk("val", test=[0.9, 0.1, 0.2, 0.95], val=[0.1, 0.5, 0.3, 0.5])
    assert kept == [0, 1]                       # a tie (0.5 again) keeps the earlier checkpoint
    assert readings == [0.1, 0.5, 0.3, 0.5]     # the schedule reads validation too


def test_an_explicit_test_selection_reads_the_test_figures():
    kept, readings = walk("test", test=[0.2, 0.4, 0.3, 0.6], val=None)
    assert kept == [0, 1, 3] and readings == [0.2, 0.4, 0.3, 0.6]


@pytest.mark.parametrize("val", [None, [0.9, 0.1, 0.1]])
def test_last_keeps_every_evaluation_and_reads_nothing(val):
    kept, readings = walk("last", test=[0.5, 0.2, 0.1], val=val)
    assert kept == [0, 1, 2] and readings == [None, None, None]
    assert select_checkpoint("last", figures(0.1), None, 0.5).best_map == 0.1     # recorded, not compared
