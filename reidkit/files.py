"""Atomic outputs: every file is written to a temporary file beside it, then renamed over the target.

A crash, a kill or a full disk mid-write leaves the previous file (or none), never a
truncated one; a write that fails names the file and the free space left.  Temporary
files left by a killed process (``NAME…​.tmp`` beside ``NAME``) are removed by
:func:`remove_orphan_temporaries` when a run starts again.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

#: what :func:`write_atomic` appends to its temporary files
TEMPORARY_SUFFIX = ".tmp"


class OutputError(OSError):
    """An output that cannot be written (a full disk, a read-only folder, a path that is a file); names the path."""


#: how torch.save's C++ writer reports a failed write (it raises RuntimeError, not OSError)
_TORCH_WRITE_FAILURES = ("basic_ios", "file write failed", "unexpected pos", "No space left")


def _describe_failure(path: Path, error: BaseException) -> str:
    try:
        free_bytes = shutil.disk_usage(path.parent).free
        free = f"{free_bytes / 2**20:.0f} MiB free on that disk"
    except OSError:
        free_bytes, free = None, "free space unknown"
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) \
        or "No space left" in str(error) \
        or (any(m in str(error) for m in _TORCH_WRITE_FAILURES) and free_bytes is not None and free_bytes < 2**26)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = "the disk is full" if full else f"{type(error).__name__}: {first}"
    return f"could not write {path} ({reason}; {free}); the previous file, if any, is unchanged"


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or those of a new file under the current umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


#: called with each file :func:`write_atomic` has put in place (a run's manifest records its own files)
_write_observers: list[Callable[[Path], None]] = []


def observe_writes(callback: Callable[[Path], None]) -> None:
    """Call ``callback(path)`` after every completed :func:`write_atomic` (once per callback)."""
    if callback not in _write_observers:
        _write_observers.append(callback)


def write_atomic(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result to ``path`` in one step.

    Raises :class:`OutputError` (naming ``path``) when the folder cannot be created or written,
    the disk fills up, or the writer fails with an I/O error; nothing is left behind.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))           # mkstemp's 0600 -> what a plain open() would have given
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(_describe_failure(path, e)) from e
    except RuntimeError as e:             # torch.save reports a failed write as a RuntimeError
        if any(m in str(e) for m in _TORCH_WRITE_FAILURES) or "write" in str(e):
            raise OutputError(_describe_failure(path, e)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for observe in _write_observers:
        observe(path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def save_image_atomic(path: str | Path, image) -> Path:
    """Save a PIL image atomically, in the format of ``path``'s suffix (.png, .jpg, ...)."""
    from PIL import Image
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return write_atomic(path, lambda tmp: image.save(tmp, format=fmt))


def save_figure_atomic(path: str | Path, figure, **savefig_options) -> Path:
    """Save a matplotlib figure atomically, in the format of ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format=fmt, **savefig_options))


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there (before work is spent)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose another output path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder {folder}: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"the output folder {folder} is not writable")
    return folder


def check_output_file(path: str | Path) -> Path:
    """Fail now, before minutes of work, if ``path`` cannot be written (its folder is a file or read-only,
    or ``path`` is a folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name for the output")
    ensure_writable_dir(path.parent)
    return path


def remove_orphan_temporaries(folder: str | Path, names: Iterable[str] | None = None) -> list[tuple[Path, int]]:
    """Delete ``NAME*.tmp`` files that killed writes left in ``folder`` (for each of ``names``; all when None);
    returns each one's path and size."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = tuple(names) if names is not None else None
    removed = []
    for p in folder.glob(f"*{TEMPORARY_SUFFIX}"):
        if p.is_file() and (names is None or p.name.startswith(names)):
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            removed.append((p, size))
    return removed


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file (after resolving links; an absent file by its resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def refuse_outputs_over_inputs(outputs: Mapping[str, str | Path | None],
                               inputs: Mapping[str, str | Path | Iterable[str | Path] | None]) -> None:
    """Raise :class:`OutputError` when an output (``{"--json": path}``) is one of the command's inputs
    (``{"the gallery": path, "a query image": [paths]}``), the same file after resolving links: writing it
    would destroy the input."""
    for out_name, out in outputs.items():
        if out is None:
            continue
        for in_name, given in inputs.items():
            if given is None:
                continue
            for candidate in ([given] if isinstance(given, (str, Path)) else given):
                if same_file(out, candidate):
                    raise OutputError(f"{out_name} {out} is {in_name} ({candidate}): writing it would destroy "
                                      "an input of this command; choose another output path")


class BusyError(OutputError):
    """Another process is writing the same output (a gallery, a run folder, a cache) right now."""


_held_locks: dict[str, tuple[object, int]] = {}


def acquire_lock(target: str | Path, what: str, wait_s: float = 0.0) -> Path:
    """Take ``TARGET.lock`` (an OS file lock through :mod:`filelock`) before writing ``target``; returns the
    lock file.  Another process holding it: wait up to ``wait_s`` seconds, then :class:`BusyError` naming
    ``what``.  Re-entrant within one process (each acquire needs a :func:`release_lock`).  The lock file stays
    afterwards: removing it would race with a process waiting on it."""
    import filelock
    lock_path = Path(f"{target}.lock")
    key = str(lock_path.resolve())
    held = _held_locks.get(key)
    if held is not None:
        _held_locks[key] = (held[0], held[1] + 1)
        return lock_path
    ensure_writable_dir(lock_path.parent)
    lock = filelock.FileLock(str(lock_path), timeout=wait_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BusyError(f"{what} is being written by another process (it holds {lock_path}); wait until it "
                        "finishes, or write to another path") from None
    except OSError as e:
        raise OutputError(f"cannot lock {what} through {lock_path}: {e.strerror or e}") from e
    _held_locks[key] = (lock, 1)
    return lock_path


def release_lock(target: str | Path) -> None:
    """Undo one :func:`acquire_lock` of ``target`` by this process (nothing when it holds none)."""
    key = str(Path(f"{target}.lock").resolve())
    held = _held_locks.get(key)
    if held is None:
        return
    if held[1] > 1:
        _held_locks[key] = (held[0], held[1] - 1)
    else:
        del _held_locks[key]
        held[0].release()  # type: ignore[attr-defined]


@contextmanager
def exclusive_lock(target: str | Path, what: str, wait_s: float = 0.0) -> Iterator[Path]:
    """:func:`acquire_lock` for the duration of a ``with`` block."""
    lock_path = acquire_lock(target, what, wait_s)
    try:
        yield lock_path
    finally:
        release_lock(target)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def printable(path: str | Path) -> str:
    """``path`` as text any terminal can print: bytes that are not UTF-8 (kept by Python as surrogates) shown as
    U+FFFD, control characters such as a newline escaped."""
    text = os.fsencode(str(path)).decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
