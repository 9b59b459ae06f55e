"""A run folder (``train.output_dir``) is never replaced by accident.

Training into a folder that already holds a run's checkpoints or history is refused
unless the run is resumed (``--resume``) or replaced on purpose (``--overwrite``, which
deletes the old run folder first, and only a folder reidkit wrote: it must hold
``recipe.json``).  Temporary files that killed checkpoint writes left behind are removed
when the folder is opened again.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..files import ensure_writable_dir, remove_orphan_temporaries

log = logging.getLogger("reidkit")

#: the files whose presence means a folder holds a run (something that would be lost)
RUN_FILES = ("last.pth", "best.pth", "history.json")
#: every file a run writes atomically (their orphaned temporaries are cleaned up)
ATOMIC_FILES = RUN_FILES + ("recipe.json", "curves.png")


class RunFolderError(ValueError):
    """Training would replace a run that is already in the output folder."""


def describe_run(folder: Path) -> str:
    """What the run in ``folder`` holds, e.g. ``best.pth, last.pth, history.json (6 epochs, best mAP 33.80%)``."""
    files = ", ".join(n for n in RUN_FILES if (folder / n).exists())
    try:
        history = json.loads((folder / "history.json").read_text())
        maps = history.get("mAP") or []
        best = f", best mAP {100 * max(maps):.2f}%" if maps else ""
        return f"{files} ({len(history.get('epoch', []))} epochs{best})"
    except (OSError, ValueError, AttributeError):
        return files


def prepare_run_folder(folder: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> Path:
    """Check (and with ``overwrite`` empty) ``folder`` before a run writes into it; returns it.

    Raises :class:`RunFolderError` when ``folder`` holds a run that this one would replace:
    neither resumed from a checkpoint inside it nor ``overwrite``.
    """
    folder = Path(folder)
    holds_run = folder.is_dir() and any((folder / n).exists() for n in RUN_FILES)
    resumes_here = resume is not None and Path(resume).resolve().parent == folder.resolve()
    if holds_run and not resumes_here:
        if not overwrite:
            also = (f"; --resume {resume} continues a run from another folder: write it to a new "
                    "train.output_dir") if resume is not None else ""
            raise RunFolderError(
                f"{folder} already holds a run: {describe_run(folder)}. Continue it with --resume "
                f"{folder / 'last.pth'}, replace it with --overwrite, or choose a new train.output_dir{also}")
        if not (folder / "recipe.json").is_file():
            raise RunFolderError(f"{folder} holds {describe_run(folder)} but no recipe.json: not a folder reidkit "
                                 "wrote, so --overwrite leaves it alone; choose a new train.output_dir")
        log.warning("--overwrite: deleting the run in %s (%s)", folder, describe_run(folder))
        shutil.rmtree(folder)
    ensure_writable_dir(folder)
    removed = remove_orphan_temporaries(folder, ATOMIC_FILES)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s (%.1f MB)", len(removed), folder,
                 sum(size for _, size in removed) / 1e6)
    return folder
