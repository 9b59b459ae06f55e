"""RunRecord: history.json's values and the TensorBoard events written beside them say the same thing."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reidkit.engine.run_record import DiagnosticSums, RunRecord
from reidkit.evaluation import RankResult
from reidkit.pieces import TrainingPiece


class Traced(TrainingPiece):
    name, trace = "miner", True


class Quiet(TrainingPiece):
    name = "quiet"


def rank_result(m_ap: float, cmc: list[float]) -> RankResult:
    n = np.zeros(1)
    return RankResult(mAP=m_ap, cmc=np.array(cmc), mINP=m_ap / 2, num_valid_queries=1, num_invalid_queries=0,
                      all_AP=n, all_INP=n, valid_queries=n)


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_history_and_tensorboard_agree(tmp_path):
    record = RunRecord()
    record.open_tensorboard(tmp_path / "tb")
    sums: DiagnosticSums = {}
    record.add_piece_values(Traced(), {"fraction": 0.25}, step=1, sums=sums)
    record.add_piece_values(Traced(), {"fraction": 0.75}, step=2, sums=sums)
    record.add_piece_values(Quiet(), {"scale": 3.0}, step=2, sums=sums)
    record.add_step(2, {"total": 1.5, "triplet": 0.5}, lr=0.01)
    record.add_epoch(0, {"total": 1.25, "lr": 0.01, "images_per_s": 40.0, "miner/fraction": 0.5})
    record.add_evaluation(0, rank_result(0.4, [0.5, 0.6, 0.7]), rank_result(0.2, [0.1, 0.3, 0.9]), "val")
    record.close()
    assert record.writer is None

    h = record.history
    # the epoch's sums, for the means the loop takes: 0.25 + 0.75 over two steps
    assert sums == {"miner": {"fraction": {"sum": 1.0, "count": 2}}, "quiet": {"scale": {"sum": 3.0, "count": 1}}}
    assert h["trace/miner"] == {"step": [1, 2], "fraction": [0.25, 0.75]}      # traced piece: every step
    assert "trace/quiet" not in h and set(h["panels"]) == {"miner", "quiet"}
    assert h["epoch"] == [1] and h["loss/total"] == [1.25] and h["lr"] == [0.01] and h["miner/fraction"] == [0.5]
    # rank5 of a three-image CMC is its last rank
    assert (h["mAP"], h["rank1"], h["rank5"], h["mINP"]) == ([0.4], [0.5], [0.7], [0.2])
    assert (h["val/mAP"], h["val/rank1"], h["val/rank5"]) == ([0.2], [0.1], [0.9])
    assert h["eval_epoch"] == [1] and h["selected_on"] == "val"

    tb = scalars(tmp_path / "tb")
    assert tb["loss/total"] == [(2, 1.5)] and tb["loss/triplet"] == [(2, 0.5)]
    assert tb["lr"] == [(2, pytest.approx(0.01))]
    assert tb["miner/fraction"] == [(2, 0.75)] and tb["quiet/scale"] == [(2, 3.0)]   # the latest step's values
    assert tb["epoch/loss/total"] == [(1, 1.25)] and tb["epoch/miner/fraction"] == [(1, 0.5)]
    assert tb["epoch/images_per_s"] == [(1, 40.0)]
    # metrics in percent in TensorBoard, fractions in history
    assert tb["metrics/mAP"] == [(1, pytest.approx(40.0))] and tb["metrics/val/rank5"] == [(1, pytest.approx(90.0))]
    assert tb["metrics/mINP"] == [(1, pytest.approx(20.0))]


def test_without_a_writer_only_history_is_kept():
    record = RunRecord()                          # another data-parallel process: no TensorBoard
    record.add_step(1, {"total": 1.0}, lr=0.1)
    record.add_epoch(0, {"total": 1.0, "lr": 0.1, "images_per_s": 5.0})
    record.flush()
    record.close()
    assert record.history["loss/total"] == [1.0] and record.history["images_per_s"] == [5.0]
