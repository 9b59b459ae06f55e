"""Where each gallery image was seen: its camera and time, for a search service's filters.

Read from the file names with a regular expression (named groups ``camera`` and, optionally, ``time``; presets for
the public datasets' names), from a CSV (``path,camera,time``; paths as the gallery stores them, or their file
names), or absent.  A name the pattern does not match, or a row the CSV lacks, has neither.

:func:`sie_camera_indices` is the other reading of a camera: the 0-based index a model with a side-information
embedding (TransReID's SIE) takes, as the dataset's reader numbered it in training.
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

#: the public datasets' file names: Market-1501 ``0002_c1s1_000451_03.jpg`` (camera 1; time = the frame in its
#: camera's sequence), DukeMTMC-reID ``0005_c2_f0046985.jpg`` (frame of the synchronised 60 fps videos), MSMT17
#: ``0514_012_05_0303afternoon_0585_1.jpg`` (camera 05; time = the frame within its time slot)
PRESETS = {
    "market1501": r"_c(?P<camera>\d+)s\d+_(?P<time>\d+)",
    "dukemtmc": r"_c(?P<camera>\d+)_f(?P<time>\d+)",
    "msmt17": r"^\d+_\d+_(?P<camera>\d+)_\d+[a-z]+_(?P<time>\d+)_",
}


@dataclass
class Metadata:
    """Per gallery image: its camera (``""``: unknown) and time (NaN: unknown)."""

    cameras: list[str]
    times: np.ndarray                      # float64


def compile_pattern(pattern: str) -> re.Pattern:
    """A preset's name or a regular expression with a named group ``camera`` (and optionally ``time``)."""
    text = PRESETS.get(pattern, pattern)
    try:
        regex = re.compile(text)
    except re.error as e:
        raise ValueError(f"metadata pattern {pattern!r} is not a regular expression ({e}); presets: "
                         f"{', '.join(PRESETS)}") from None
    if "camera" not in regex.groupindex:
        raise ValueError(f"metadata pattern {pattern!r} needs a group named camera, e.g. '_c(?P<camera>\\d+)' "
                         f"(presets: {', '.join(PRESETS)})")
    return regex


def from_names(paths: Sequence[str], pattern: str | re.Pattern | None) -> Metadata:
    """Cameras and times from the file names (nothing when ``pattern`` is None)."""
    if pattern is None:
        return Metadata([""] * len(paths), np.full(len(paths), np.nan))
    regex = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    cameras, times = [], np.full(len(paths), np.nan)
    for i, path in enumerate(paths):
        found = regex.search(Path(path).name)
        cameras.append(found.group("camera") if found else "")
        if found and "time" in regex.groupindex and found.group("time") is not None:
            times[i] = float(found.group("time"))
    return Metadata(cameras, times)


def read_table(table: str | Path) -> dict[str, tuple[str, float]]:
    """The rows of a metadata CSV (header ``path,camera,time``; ``time`` a number or empty): path -> (camera,
    time); a ``ValueError`` naming the file and line for a bad value."""
    rows: dict[str, tuple[str, float]] = {}
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames or "camera" not in reader.fieldnames:
                raise ValueError(f"{table}: the header must name path and camera (and optionally time), "
                                 f"got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                raw = (row.get("time") or "").strip()
                try:
                    t = float(raw) if raw else math.nan
                except ValueError:
                    raise ValueError(f"{table}, line {line}: time {raw!r} is not a number") from None
                if math.isinf(t):
                    raise ValueError(f"{table}, line {line}: time {raw!r} is not a finite number")
                rows[row["path"]] = (row["camera"] or "", t)
    except FileNotFoundError:
        raise FileNotFoundError(f"metadata table not found: {table}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{table}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    return rows


def from_csv(paths: Sequence[str], table: str | Path | dict[str, tuple[str, float]]) -> Metadata:
    """Cameras and times from ``table`` (a CSV file as :func:`read_table` reads it, or its rows), matched by the
    gallery's path or, failing that, the file name."""
    rows = table if isinstance(table, dict) else read_table(table)
    found = [v or ("", math.nan) for v in _by_path_or_name(rows, paths)]
    return Metadata([c for c, _ in found], np.array([t for _, t in found], dtype=np.float64))


def metadata_source(pattern: str | None = None, table: str | Path | None = None
                    ) -> Callable[[Sequence[str]], Metadata] | None:
    """What gives a gallery's images their camera and time when their rows do not: a file-name pattern (a preset or
    a regular expression), a CSV table (read once), or None."""
    if table is not None:
        rows = read_table(table)
        return lambda paths: from_csv(paths, rows)
    if pattern:
        regex = compile_pattern(pattern)
        return lambda paths: from_names(paths, regex)
    return None


def _by_path_or_name(rows: dict[str, T], paths: Sequence[str]) -> list[T | None]:
    """Each path's row of a table keyed by path: the row of that path, else of its file name, else None."""
    by_name = {Path(p).name: v for p, v in rows.items()}
    return [rows[str(p)] if str(p) in rows else by_name.get(Path(p).name) for p in paths]


def _reader_cameras() -> dict[str, Callable[[str], int]]:
    """The 0-based camera index of a file name, as reidkit's reader of each public dataset numbers it (what a model
    with a side-information embedding was trained on)."""
    from ..data.datasets.cuhk import parse_cuhk03_name
    from ..data.datasets.market_style import parse_market_name
    from ..data.datasets.msmt17 import parse_msmt17_name
    return {"market1501": lambda name: parse_market_name(name, 6)[1],
            "dukemtmc": lambda name: parse_market_name(name, 8)[1],
            "msmt17": parse_msmt17_name,
            "cuhk03": lambda name: parse_cuhk03_name(name)[1]}


def sie_camera_indices(paths: Sequence[str], source: str | Path) -> list[int]:
    """Each image's camera index for a model that embeds cameras (TransReID's SIE): ``source`` is a public
    dataset's name (``market1501``, ``dukemtmc``, ``msmt17``, ``cuhk03``: the index that dataset's reader gives the
    file name, 0-based) or a CSV with the header ``path,camera_index`` (matched by path, else by file name).
    A name the dataset's pattern does not fit, or an image the table does not list, is a ``ValueError`` naming it."""
    readers = _reader_cameras()
    if str(source) in readers:
        read = readers[str(source)]
        indices = []
        for path in paths:
            try:
                indices.append(read(Path(path).name))
            except ValueError as e:              # the readers' DatasetLayoutError names the file and the pattern
                raise ValueError(f"--sie-cameras {source}: {e}") from None
        return indices
    table = Path(source)
    if not table.is_file():
        raise FileNotFoundError(f"--sie-cameras {source}: neither a dataset ({', '.join(readers)}) nor a CSV file "
                                "(header path,camera_index)")
    rows: dict[str, int] = {}
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "camera_index"} <= set(reader.fieldnames):
            raise ValueError(f"{table}: the header must name path and camera_index, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            raw = (row.get("camera_index") or "").strip()
            if not raw.isdigit():
                raise ValueError(f"{table}, line {line}: camera_index {raw!r} is not a 0-based integer")
            rows[row["path"]] = int(raw)
    found = _by_path_or_name(rows, paths)
    missing = [str(p) for p, v in zip(paths, found) if v is None]
    if missing:
        raise ValueError(f"{table} gives no camera_index for {len(missing)} image(s), e.g. {missing[0]}")
    return [int(v) for v in found if v is not None]
