"""Image decoding that names the bad file instead of crashing mid-epoch."""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64 * 1024 * 1024  # far above any person crop; larger files are refused as bombs


class BadImageError(ValueError):
    """One or more images could not be decoded; ``bad`` lists ``(path, reason)``."""

    def __init__(self, bad: list[tuple[str, str]]):
        self.bad = bad
        lines = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        super().__init__(f"{len(bad)} image(s) could not be decoded:\n{lines}{more}\n"
                         "(pass skip_bad_images=True to skip them and continue)")


def load_rgb(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` to RGB (resized to ``size = (height, width)`` if given).

    Raises :class:`BadImageError` naming the file for zero-byte, truncated,
    corrupt, non-image and oversized (decompression bomb) files.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError([(str(path), "empty file (0 bytes)")])
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError([(str(path), f"{img.width}x{img.height} pixels: "
                                                     "refused as a decompression bomb")])
                img.load()
                rgb = img.convert("RGB")
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError([(str(path), "file not found")]) from None
    except UnidentifiedImageError:
        raise BadImageError([(str(path), "not an image (unidentified format)")]) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError([(str(path), f"decompression bomb: {e}")]) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError([(str(path), f"corrupt or truncated: {e}")]) from None
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
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
