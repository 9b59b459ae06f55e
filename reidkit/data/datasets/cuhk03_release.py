"""CUHK03 from its release file (Li et al., CVPR 2014), with the protocols papers report.

Layout (torchreid's)::

    ROOT/cuhk03_release/cuhk-03.mat                   MATLAB v7.3 (HDF5): the boxes and the 20 classic test sets
    ROOT/cuhk03_new_protocol_config_labeled.mat       the new protocol (Zhong et al., CVPR 2017): 767 / 700
    ROOT/cuhk03_new_protocol_config_detected.mat

``ROOT`` may also be the folder holding ``cuhk03/``.  On first use the boxes are written out as PNG files
(``ROOT/images_labeled/``, ``ROOT/images_detected/``, named ``C_PPP_V_II.png``: camera pair, person in that
pair, view 1 / 2, image 01-10), as torchreid does, each file atomically and a manifest last, so an
interrupted extraction is redone and a finished one is reused.

Protocols (``protocol``):

* ``new`` (default): the config file's train / query / gallery indices (1-based) into its file list;
  767 training identities, 700 test identities; camera = the view (0 or 1), as torchreid reads it.
* ``classic``: split ``split`` (0-19) of ``testsets``: its 100 identities are the test set (query =
  gallery = every test image; evaluate with ``eval.protocol: single_shot``), the other 1,367 train.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..records import DatasetLayoutError, ImageRecord, ReIDDataset, relabel
from .registry import register_dataset

RELEASE = "cuhk03_release/cuhk-03.mat"
LAYOUT = ("  ROOT/cuhk03_release/cuhk-03.mat\n  ROOT/cuhk03_new_protocol_config_labeled.mat\n"
          "  ROOT/cuhk03_new_protocol_config_detected.mat")


def _base(root: str | Path) -> Path:
    root = Path(root).expanduser()
    for candidate in (root, root / "cuhk03"):
        if (candidate / RELEASE).is_file():
            return candidate
    raise DatasetLayoutError(f"cuhk03: {root / RELEASE} not found (nor under {root / 'cuhk03'})\n"
                             f"expected layout:\n{LAYOUT}")


def image_name(pair: int, person: int, index: int) -> str:
    """``C_PPP_V_II.png`` of image ``index`` (0-9) of ``person`` (0-based) in camera ``pair`` (0-based)."""
    return f"{pair + 1:d}_{person + 1:03d}_{1 if index < 5 else 2:d}_{index + 1:02d}.png"


def camera_of(name: str) -> int:
    """The view (0 or 1) of a ``C_PPP_V_II.png`` name."""
    return int(name.split("_")[2]) - 1


def extract_boxes(base: Path, boxes: str) -> dict[tuple[int, int], list[str]]:
    """Write the ``boxes`` ("labeled" or "detected") images of ``cuhk-03.mat`` as PNG files (once); returns
    ``{(pair, person): [file names]}`` (1-based pair and person, as the classic test sets name them)."""
    import h5py
    from PIL import Image

    from ...files import save_image_atomic, write_text_atomic
    folder = base / f"images_{boxes}"
    manifest = folder / "reidkit_extracted.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())["people"]
        return {(int(k.split("_")[0]), int(k.split("_")[1])): v for k, v in saved.items()}
    folder.mkdir(parents=True, exist_ok=True)
    people: dict[tuple[int, int], list[str]] = {}
    with h5py.File(base / RELEASE, "r") as mat:
        if boxes not in mat:
            raise DatasetLayoutError(f"cuhk03: {base / RELEASE} has no {boxes!r} cell array")
        for pair, pair_ref in enumerate(mat[boxes][0]):
            cells = mat[pair_ref][:].T                     # persons x 10 references
            for person in range(cells.shape[0]):
                names = []
                for index, ref in enumerate(cells[person]):
                    pixels = mat[ref][:].T                 # H x W x 3, or an empty cell
                    if pixels.size == 0 or pixels.ndim < 3:
                        continue
                    name = image_name(pair, person, index)
                    save_image_atomic(folder / name, Image.fromarray(np.ascontiguousarray(pixels, np.uint8)))
                    names.append(name)
                if not names:
                    raise DatasetLayoutError(f"cuhk03: camera pair {pair + 1}, person {person + 1} has no "
                                             f"{boxes} image in {base / RELEASE}")
                people[(pair + 1, person + 1)] = names
    write_text_atomic(manifest, json.dumps({"people": {f"{p}_{q}": v for (p, q), v in people.items()}}))
    return people


def _new_protocol(base: Path, boxes: str) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
    from scipy.io import loadmat
    path = base / f"cuhk03_new_protocol_config_{boxes}.mat"
    if not path.is_file():
        raise DatasetLayoutError(f"cuhk03: the new protocol's {path.name} not found in {base}\n"
                                 f"expected layout:\n{LAYOUT}")
    config = loadmat(str(path))
    missing = [k for k in ("train_idx", "query_idx", "gallery_idx", "labels", "filelist") if k not in config]
    if missing:
        raise DatasetLayoutError(f"cuhk03: {path} lacks {', '.join(missing)}")
    names = [str(np.ravel(entry)[0]) for entry in config["filelist"].flatten()]
    labels = config["labels"].flatten().astype(int)
    folder = base / f"images_{boxes}"

    def records(key: str) -> list[ImageRecord]:
        return [ImageRecord(str(folder / names[i]), int(labels[i]), camera_of(names[i]))
                for i in config[key].flatten().astype(int) - 1]
    return relabel(records("train_idx")), records("query_idx"), records("gallery_idx")


def _classic(base: Path, people: dict[tuple[int, int], list[str]], boxes: str, split: int):
    import h5py
    with h5py.File(base / RELEASE, "r") as mat:
        tests = mat["testsets"][0]
        if not 0 <= split < len(tests):
            raise ValueError(f"cuhk03: classic split {split} outside 0..{len(tests) - 1}")
        test_people = {(int(a), int(b)) for a, b in mat[tests[split]][:].T}
    folder = base / f"images_{boxes}"
    train: list[ImageRecord] = []
    test: list[ImageRecord] = []
    for label, (key, names) in enumerate(sorted(people.items())):
        target = test if key in test_people else train
        target += [ImageRecord(str(folder / n), label, camera_of(n)) for n in names]
    return relabel(train), test, list(test)


@register_dataset("cuhk03")
def cuhk03(root: str, boxes: str = "labeled", protocol: str = "new", split: int = 0) -> ReIDDataset:
    """CUHK03 from cuhk-03.mat: labeled or detected boxes, new (767/700) or classic (20 splits) protocol."""
    if boxes not in ("labeled", "detected"):
        raise ValueError(f"cuhk03 boxes must be 'labeled' or 'detected', got {boxes!r}")
    if protocol not in ("new", "classic"):
        raise ValueError(f"cuhk03 protocol must be 'new' or 'classic', got {protocol!r}")
    base = _base(root)
    people = extract_boxes(base, boxes)
    if protocol == "new":
        train, query, gallery = _new_protocol(base, boxes)
        note = f"new protocol (Zhong et al. 2017), {boxes} boxes"
    else:
        train, query, gallery = _classic(base, people, boxes, split)
        note = f"classic split {split} of 20, {boxes} boxes: query = gallery (use eval.protocol=single_shot)"
    missing = [r.path for r in (*train, *query, *gallery) if not Path(r.path).is_file()][:3]
    if missing:
        raise DatasetLayoutError(f"cuhk03: the protocol names images that were not extracted, e.g. {missing}")
    return ReIDDataset("cuhk03", str(base), train, query, gallery, [note])
