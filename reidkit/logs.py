"""Logging set-up shared by the command line and the demo: messages to stdout, and a log file in a run folder."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm


def setup_logging(output_dir: str | Path | None = None, main_process: bool = True) -> None:
    """INFO messages to stdout (and to ``output_dir/log.txt``); other data-parallel processes log warnings only."""
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s",
                        stream=sys.stdout, force=True)
    if output_dir and main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handler = QuietFileHandler(Path(output_dir) / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logging.getLogger().addHandler(handler)


class QuietFileHandler(logging.FileHandler):
    """A log file that, when a write fails (a full disk, a removed folder), says so once on stderr and stops
    writing, instead of printing logging's "--- Logging error ---" traceback for every message; the terminal
    keeps every message."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or error
        print(f"reidkit: cannot write the log file {self.baseFilename} ({reason}); its messages go to the terminal "
              "only from here on", file=sys.stderr)
        logging.getLogger().removeHandler(self)
        try:
            self.close()
        except OSError:
            pass


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when not asked for, and (None) off by itself when the output is not a terminal,
    so logs and CI output get no carriage-return frames."""
    return None if progress else True


#: tqdm's layout without its it/s (the postfix says img/s), so that the line fits 80 columns
TRAINING_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def training_postfix(terms: dict[str, float], lr: float, speed: float) -> str:
    """``loss 6.435 lr 3.5e-04 45 img/s``: short enough that the bar stays on one 80-column line."""
    loss = f"loss {terms['total']:.3f} " if "total" in terms else ""
    return f"{loss}lr {lr:.1e} {speed:.0f} img/s"


def outputs_summary(title: str, entries: list[tuple[str, Path]], next_step: str | None = None) -> str:
    """What a command wrote, one line per existing file (``(what, path)``), then the one command to look at them:
    printed at the end of train, eval, export and extract."""
    present = [(what, path) for what, path in entries if Path(path).exists()]
    width = max((len(what) for what, _ in present), default=0)
    lines = [f"{title}:"] + [f"  {what:<{width}}  {path}" for what, path in present]
    if next_step:
        lines.append(next_step)
    return "\n".join(lines)


def browse_command(page: Path) -> str:
    """The one command that opens an HTML page in the default browser, on any system."""
    return f"python -m webbrowser {Path(page).resolve().as_uri()}"


def progress_line(epoch: int, epochs: int, step: int, steps: int, images: int, seconds: float,
                  terms: dict[str, float]) -> str:
    """``epoch 2/8: batch 12/40 (30%), 768 images, 45.1 img/s, ETA 37 s, loss 3.214``: what a log without a
    progress bar shows every ``train.progress_seconds``."""
    speed = images / seconds if seconds > 0 else 0.0
    eta = (steps - step) * seconds / step if step else 0.0
    loss = f", loss {terms['total']:.3f}" if "total" in terms else ""
    return (f"epoch {epoch + 1}/{epochs}: batch {step}/{steps} ({100 * step / max(steps, 1):.0f}%), {images} images, "
            f"{speed:.1f} img/s, ETA {eta:.0f} s{loss}")


class EpochProgress:
    """One epoch's progress on screen: a tqdm bar where one shows (``progress`` on, a terminal), otherwise (a log
    file, a pipe, ``--no-progress``) a :func:`progress_line` every ``every`` seconds (0: none); only ``main`` (the
    first data-parallel process) shows anything."""

    def __init__(self, epoch: int, epochs: int, total: int, progress: bool, main: bool, every: float):
        self.epoch, self.epochs, self.total, self.main, self.every = epoch, epochs, total, main, every
        self.t0 = self.last_line = time.perf_counter()
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", disable=bar_disabled(progress and main),
                        leave=False, bar_format=TRAINING_BAR)

    def seconds(self) -> float:
        """Since the epoch began."""
        return time.perf_counter() - self.t0

    def update(self, done: int, images: int, terms: dict[str, float], lr: float) -> None:
        """After ``done`` batches (``images`` images) with the latest loss ``terms`` read."""
        now = time.perf_counter()
        seconds = now - self.t0
        self.bar.update(1)
        self.bar.set_postfix_str(training_postfix(terms, lr, images / seconds if seconds > 0 else 0.0),
                                 refresh=False)
        if self.bar.disable and self.main and self.every and now - self.last_line >= self.every:
            self.last_line = now
            logging.getLogger("reidkit").info("%s", progress_line(self.epoch, self.epochs, done, self.total, images,
                                                                  seconds, terms))

    def close(self) -> None:
        self.bar.close()
