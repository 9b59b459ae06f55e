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
from collections.abc import Callable, Iterable
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
