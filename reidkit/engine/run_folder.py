"""A run folder (``train.output_dir``) is never replaced by accident, and ``--overwrite`` deletes only what a run
wrote.

Training into a folder that already holds a run's checkpoints or history is refused unless the run is resumed
(``--resume``) or replaced on purpose (``--overwrite``).  Every file a run writes is recorded in the folder's
``run_manifest.json`` as it is written; ``--overwrite`` deletes exactly those files (a project's own files in
the same folder stay), and refuses a folder without a manifest, a folder that is a symbolic link, and a run
whose files include one of the new run's inputs.  While a run writes into a folder it holds ``run.lock`` there:
a second process training into the same folder is refused.  Temporary files that killed checkpoint writes left
behind are removed when the folder is opened again.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..files import (
    acquire_lock,
    ensure_writable_dir,
    observe_writes,
    release_lock,
    remove_orphan_temporaries,
    same_file,
    write_text_atomic,
)

log = logging.getLogger("reidkit")

#: the files whose presence means a folder holds a run (something that would be lost)
RUN_FILES = ("last.pth", "best.pth", "history.json")
#: every file a run writes atomically at its top level (their orphaned temporaries are cleaned up)
ATOMIC_FILES = RUN_FILES + ("recipe.json", "curves.png")
#: the record of every file a run wrote (relative to the run folder)
MANIFEST = "run_manifest.json"


class RunFolderError(ValueError):
    """Training would replace a run that is already in the output folder, or delete what it did not write."""


def describe_run(folder: Path) -> str:
    """What the run in ``folder`` holds, e.g. ``best.pth, last.pth, history.json (6 epochs, best mAP 33.80%)``."""
    files = ", ".join(n for n in RUN_FILES if (folder / n).exists())
    try:
        history = json.loads((folder / "history.json").read_text())
        maps = history.get("mAP") or []
        best = f", best mAP {100 * max(maps):.2f}%" if maps else ""
        return f"{files} ({len(history.get('epoch', []))} epochs{best})"
    except (OSError, ValueError, AttributeError, TypeError):
        return files


class RunManifest:
    """The files a run wrote into ``folder``, kept in ``folder/run_manifest.json`` (rewritten atomically as
    each new file appears, so a killed run's manifest is complete up to its last write)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root = folder.resolve()
        self.files: list[str] = read_manifest(folder) or []

    def relative(self, path: str | Path) -> str | None:
        """``path`` relative to the run folder, or None when it is outside it (or is the manifest)."""
        try:
            rel = Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None
        return None if rel in (MANIFEST, ".") else rel

    def add(self, path: str | Path) -> None:
        rel = self.relative(path)
        if rel is None or rel in self.files:
            return
        self.files.append(rel)
        write_text_atomic(self.folder / MANIFEST, json.dumps({"format": 1, "files": self.files}, indent=1))


def read_manifest(folder: Path) -> list[str] | None:
    """The files listed in ``folder``'s manifest; None when it has none (or an unreadable one)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


#: the manifests of the run folders this process writes now: resolved folder -> (manifest, times opened)
_open_runs: dict[str, tuple[RunManifest, int]] = {}


def _record_write(path: Path) -> None:
    for manifest, _ in _open_runs.values():
        manifest.add(path)


observe_writes(_record_write)


def record_run_file(path: str | Path) -> None:
    """Add ``path`` (a file written other than by :func:`reidkit.files.write_atomic`: a log, TensorBoard's
    events) to the manifest of the open run folder holding it."""
    _record_write(Path(path))


def prepare_run_folder(folder: str | Path, resume: str | Path | None = None, overwrite: bool = False,
                       inputs: Mapping[str, str | Path] | None = None) -> Path:
    """Check (and with ``overwrite`` clear) ``folder`` before a run writes into it, lock it and open its manifest;
    returns it.  Each call needs a :func:`release_run_folder` when the run ends.

    Raises :class:`RunFolderError` when ``folder`` holds a run that this one would replace (neither resumed from
    a checkpoint inside it nor ``overwrite``), or when ``overwrite`` would delete something that is not the old
    run's (no manifest, a symbolic link, one of ``inputs``); :class:`reidkit.files.BusyError` when another process
    is writing there.
    """
    folder = Path(folder)
    if overwrite and folder.is_symlink():
        raise RunFolderError(f"{folder} is a symbolic link (to {folder.resolve()}): --overwrite deletes only in a "
                             "real folder; give the folder's own path")
    ensure_writable_dir(folder)
    key = str(folder.resolve())
    reopened = key in _open_runs                # by this process already (the command, then the Trainer)
    acquire_lock(folder / "run", f"the run folder {folder}")
    try:                                        # reopened, the run is this process's own: never deleted
        _check_and_clear(folder, resume, overwrite and not reopened, inputs or {})
    except BaseException:
        release_lock(folder / "run")
        raise
    if reopened:
        manifest, count = _open_runs[key]
        _open_runs[key] = (manifest, count + 1)
        return folder
    _open_runs[key] = (RunManifest(folder), 1)
    removed = remove_orphan_temporaries(folder, ATOMIC_FILES + (MANIFEST,))
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s (%.1f MB)", len(removed), folder,
                 sum(size for _, size in removed) / 1e6)
    return folder


def release_run_folder(folder: str | Path) -> None:
    """Undo one :func:`prepare_run_folder`: the last one closes the manifest and releases the lock."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key not in _open_runs:
        return
    manifest, count = _open_runs[key]
    if count > 1:
        _open_runs[key] = (manifest, count - 1)
    else:
        del _open_runs[key]
    release_lock(folder / "run")


def _check_and_clear(folder: Path, resume: str | Path | None, overwrite: bool,
                     inputs: Mapping[str, str | Path]) -> None:
    holds_run = any((folder / n).exists() for n in RUN_FILES)
    resumes_here = resume is not None and Path(resume).resolve().parent == folder.resolve()
    if not holds_run or resumes_here:
        return
    if not overwrite:
        also = (f"; --resume {resume} continues a run from another folder: write it to a new "
                "train.output_dir") if resume is not None else ""
        raise RunFolderError(
            f"{folder} already holds a run: {describe_run(folder)}. Continue it with --resume "
            f"{folder / 'last.pth'}, replace it with --overwrite, or choose a new train.output_dir{also}")
    files = read_manifest(folder)
    if files is None:
        raise RunFolderError(f"{folder} holds {describe_run(folder)} but no readable {MANIFEST} (the list of files "
                             "a run wrote): not a run folder this reidkit wrote, so --overwrite leaves it alone; "
                             "delete what you no longer need yourself, or choose a new train.output_dir")
    owned = _owned_files(folder, files)
    for name, given in inputs.items():
        for path in owned:
            if same_file(path, given):
                raise RunFolderError(f"--overwrite would delete {path}, which this run reads ({name} = {given}); "
                                     "copy it elsewhere first, or choose a new train.output_dir")
    log.warning("--overwrite: deleting the run in %s (%s): %d file(s) it wrote", folder, describe_run(folder),
                len(owned))
    for path in owned:
        path.unlink()
    for parent in sorted({p.parent for p in owned}, key=lambda p: len(p.parts), reverse=True):
        _remove_empty_dirs(parent, folder)
    (folder / MANIFEST).unlink(missing_ok=True)
    kept = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))
    if kept:
        log.info("kept %d file(s) in %s that no run wrote: %s%s", len(kept), folder, ", ".join(kept[:8]),
                 ", ..." if len(kept) > 8 else "")


def _owned_files(folder: Path, files: Iterable[str]) -> list[Path]:
    """The manifest's files that exist and lie inside ``folder`` once links are resolved (an entry that leads
    outside it, through ``..`` or a linked sub-folder, is never deleted)."""
    root = folder.resolve()
    owned = []
    for rel in files:
        path = folder / rel
        try:
            inside = path.parent.resolve().relative_to(root) is not None
        except ValueError:
            inside = False
        if inside and (path.is_file() or path.is_symlink()):
            owned.append(path)
    return owned


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
