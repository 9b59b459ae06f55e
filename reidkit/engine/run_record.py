"""What a training run records as it goes: ``history.json``'s values (per epoch the mean loss terms, lr and speed;
per evaluation the test and validation metrics; the training pieces' per-iteration traces and panels) and the same
figures in TensorBoard (the first process only; the others record without a writer)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..evaluation import RankResult
from ..pieces import TrainingPiece

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

DiagnosticSums = dict[str, dict[str, dict[str, float]]]   # piece -> value name -> {"sum", "count"}


class RunRecord:
    """``history`` (a JSON-ready dict, saved in every checkpoint and as ``history.json``) and its TensorBoard twin."""

    def __init__(self) -> None:
        self.history: dict = {"epoch": [], "lr": [], "images_per_s": [],
                              "eval_epoch": [], "mAP": [], "rank1": [], "rank5": [], "mINP": []}
        self.writer: SummaryWriter | None = None
        self._latest_diagnostics: dict[str, dict[str, float]] = {}     # piece -> its values at the last step

    def open_tensorboard(self, folder: Path) -> list[Path]:
        """Start TensorBoard's writer in ``folder``; returns the event file(s) it created."""
        from torch.utils.tensorboard import SummaryWriter
        before = set(folder.glob("*")) if folder.is_dir() else set()
        self.writer = SummaryWriter(str(folder))
        return sorted(set(folder.glob("*")) - before)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def add_piece_values(self, piece: TrainingPiece, values: dict[str, float], step: int,
                         sums: DiagnosticSums) -> None:
        """One step's diagnostics of a training piece: summed into ``sums`` for the epoch's means, kept per
        iteration when the piece asks for a trace, and shown in TensorBoard at the next logged step."""
        acc = sums.setdefault(piece.name, {})
        for k, v in values.items():
            slot = acc.setdefault(k, {"sum": 0.0, "count": 0})
            slot["sum"] += float(v)
            slot["count"] += 1
        if piece.trace:                                  # per-iteration trace for the piece's panel
            trace = self.history.setdefault(f"trace/{piece.name}", {"step": []})
            trace["step"].append(step)
            for k, v in values.items():
                trace.setdefault(k, []).append(float(v))
        self.add_panel(piece)
        self._latest_diagnostics[piece.name] = values

    def add_panel(self, piece: TrainingPiece) -> None:
        """How ``curves.png`` draws the piece's diagnostics (``history["panels"][name]``)."""
        self.history.setdefault("panels", {})[piece.name] = piece.panel()

    def add_step(self, step: int, terms: dict[str, float], lr: float) -> None:
        """A logged step (every ``train.log_every``): loss terms, lr and the pieces' latest values, TensorBoard only."""
        if self.writer is None:
            return
        for k, v in terms.items():
            self.writer.add_scalar(f"loss/{k}", v, step)
        self.writer.add_scalar("lr", lr, step)
        for name, values in self._latest_diagnostics.items():
            for k, v in values.items():
                self.writer.add_scalar(f"{name}/{k}", float(v), step)

    def add_epoch(self, epoch: int, means: dict[str, float]) -> None:
        """An epoch's means (loss terms under ``loss/``; ``lr``, ``images_per_s`` and ``piece/value`` as named)."""
        self.history["epoch"].append(epoch + 1)
        for k, v in means.items():
            key = k if k in ("lr", "images_per_s") or "/" in k else f"loss/{k}"
            self.history.setdefault(key, []).append(float(v))
            if self.writer is not None:
                self.writer.add_scalar(f"epoch/{key}", float(v), epoch + 1)

    def add_evaluation(self, epoch: int, result: RankResult, val: RankResult | None, selected_on: str) -> None:
        """An evaluation: test metrics, and validation ones under ``val/`` (fractions here, percent in TensorBoard)."""
        self.history["eval_epoch"].append(epoch + 1)
        for prefix, r in (("", result), ("val/", val)):
            if r is None:
                continue
            values = {"mAP": r.mAP, "rank1": r.rank(1), "rank5": r.rank(min(5, len(r.cmc))), "mINP": r.mINP}
            for k, v in values.items():
                self.history.setdefault(prefix + k, []).append(float(v))
                if self.writer is not None:
                    self.writer.add_scalar(f"metrics/{prefix}{k}", 100 * float(v), epoch + 1)
        self.history["selected_on"] = selected_on


__all__ = ["DiagnosticSums", "RunRecord"]
