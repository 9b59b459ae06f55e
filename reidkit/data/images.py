"""Image decoding that names the bad file instead of crashing mid-epoch."""
from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64 * 1024 * 1024  # far above any person crop; larger files are refused as bombs


class BadImageError(ValueError):
    """One or more images could not be decoded; ``bad`` lists ``(path, reason)``."""

    def __init__(self, bad: list[tuple[str, str]], hint: str = "set data.skip_bad_images=true to skip them",
                 splits: dict[str, list[tuple[str, str]]] | None = None):
        self.bad, self.splits = bad, splits
        super().__init__(describe_bad_images(splits or {"": bad}) + f"\n({hint})")


def describe_bad_images(splits: dict[str, list[tuple[str, str]]], limit: int = 20) -> str:
    """The bad files of each split (``{"train": [(path, reason), ...], ...}``), grouped by folder."""
    total = sum(len(b) for b in splits.values())
    lines = [f"{total} image(s) could not be decoded" + (":" if len(splits) == 1 and "" in splits else
             " (" + ", ".join(f"{s}: {len(b)}" for s, b in splits.items() if b) + "):")]
    listed = 0
    for split, bad in splits.items():
        folders: dict[str, list[tuple[str, str]]] = {}
        for path, reason in bad:
            folders.setdefault(str(Path(path).parent), []).append((path, reason))
        for folder, items in folders.items():
            lines.append(f"  {split + ' ' if split else ''}{folder}/ ({len(items)} bad):")
            for path, reason in items[:max(0, limit - listed)]:
                lines.append(f"    {Path(path).name}: {reason}")
                listed += 1
    if total > listed:
        lines.append(f"  ... {total - listed} more not listed")
    return "\n".join(lines)


def _full_scale(img: Image.Image, values: np.ndarray) -> float:
    """The value that is white in a deep greyscale image: 65535 for 16-bit modes; for 32-bit integer and float
    data the smallest common sensor depth (8, 10, 12, 14 or 16 bits) that holds its largest value."""
    if img.mode.startswith("I;16"):
        return 65535.0
    top = float(values.max(initial=0))
    for bits in (8, 10, 12, 14, 16):
        if top <= 2 ** bits - 1:
            return float(2 ** bits - 1)
    return top


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB.  16- and 32-bit greyscale (PNG ``I;16``, TIFF ``I``) are scaled to 0..255 by their bit
    depth (PIL's own ``convert("RGB")`` clips them, turning a 16-bit image almost white; 12-bit data in a 32-bit
    TIFF is scaled by 4095, not 65535); float images are read as 0..1 when they lie there, else by the same
    depths."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and values.size and 0 <= values.min() and values.max() <= 1:
            top = 1.0
        else:
            top = _full_scale(img, values)
        grey = np.clip(np.round(np.nan_to_num(values) * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` to RGB (resized to ``size = (height, width)`` if given).

    Raises :class:`BadImageError` naming the file for zero-byte, truncated,
    corrupt, non-image and oversized (decompression bomb) files.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError([(str(path), "empty file (0 bytes)")])
    except FileNotFoundError:
        raise BadImageError([(str(path), "file not found")]) from None
    return _decode(path, str(path), size, MAX_PIXELS)


def decode_rgb(data: bytes, name: str = "the upload", size: tuple[int, int] | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file's bytes exactly as :func:`load_rgb` decodes the file (EXIF orientation, 16-bit and
    float greyscale by their depth): a crop uploaded to the search service ranks as the same file given to
    ``reidkit search``.  ``max_pixels`` is checked from the header, before decoding."""
    if not data:
        raise BadImageError([(name, "empty file (0 bytes)")])
    return _decode(io.BytesIO(data), name, size, max_pixels)


def _decode(source, name: str, size: tuple[int, int] | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise BadImageError([(name, f"{img.width}x{img.height} pixels: refused as a decompression bomb "
                                                f"(the limit is {max_pixels} pixels)")])
                img.load()
                rgb = to_rgb(ImageOps.exif_transpose(img))     # phone crops: upright, as their viewer shows them
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError([(name, "file not found")]) from None
    except UnidentifiedImageError:
        raise BadImageError([(name, "not an image (unidentified format)")]) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError([(name, f"decompression bomb: {e}")]) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError([(name, f"corrupt or truncated: {e}")]) from None
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return rgb


def check_images(paths: Iterable[str], workers: int = 4) -> list[tuple[str, str]]:
    """Decode every image; return ``(path, reason)`` for each bad one."""
    def check(path: str) -> tuple[str, str] | None:
        try:
            load_rgb(path)
        except BadImageError as e:
            return e.bad[0]
        return None

    with ThreadPoolExecutor(workers) as pool:
        return [r for r in pool.map(check, list(paths)) if r is not None]
