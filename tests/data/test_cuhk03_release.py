"""CUHK03 from cuhk-03.mat (HDF5) and the new protocol's config files, on tiny files of the same structure."""
import numpy as np
import pytest

from reidkit.data import build_dataset
from reidkit.data.datasets.cuhk03_release import image_name
from reidkit.data.records import DatasetLayoutError

h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")

PAIRS = [3, 2]                       # persons per camera pair (the real file: 843, 440, 77, 58, 49)


def pixels(pair: int, person: int, index: int, boxes: str) -> np.ndarray:
    """A distinct 6 x 4 image per box (H x W x 3), so that a misplaced file is caught."""
    value = (pair * 40 + person * 10 + index + (100 if boxes == "detected" else 0)) % 256
    img = np.full((6, 4, 3), value, np.uint8)
    img[0, 0] = [pair, person, index]
    return img


def write_release(root, empty=((0, 1, 7),)):
    """cuhk-03.mat as MATLAB v7.3 stores it: cell arrays of object references, every array transposed;
    ``empty`` lists (pair, person, index) cells left empty (some persons lack images of one view)."""
    (root / "cuhk03_release").mkdir(parents=True)
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "w") as f:
        refs = f.create_group("#refs#")
        counter = iter(range(10_000))

        def store(array):
            name = f"r{next(counter)}"
            refs.create_dataset(name, data=array)
            return refs[name].ref

        for boxes in ("labeled", "detected"):
            top = f.create_dataset(boxes, (1, len(PAIRS)), dtype=h5py.ref_dtype)
            for pair, persons in enumerate(PAIRS):
                cells = np.empty((10, persons), dtype=object)       # stored transposed: 10 x persons
                for person in range(persons):
                    for index in range(10):
                        cells[index, person] = store(np.zeros(2, np.uint64) if (pair, person, index) in empty
                                                     else pixels(pair, person, index, boxes).T)
                name = f"cells_{boxes}_{pair}"
                refs.create_dataset(name, data=cells, dtype=h5py.ref_dtype)
                top[0, pair] = refs[name].ref
        tests = f.create_dataset("testsets", (1, 2), dtype=h5py.ref_dtype)
        tests[0, 0] = store(np.array([[1, 2], [2, 1]], float).T)          # (pair, person) 1-based, stored transposed
        tests[0, 1] = store(np.array([[1, 1]], float).T)


def write_new_protocol(root, boxes):
    names = [image_name(p, q, i) for p, n in enumerate(PAIRS) for q in range(n) for i in range(10)
             if (p, q, i) != (0, 1, 7)]
    labels = np.array([int(n.split("_")[0]) * 100 + int(n.split("_")[1]) for n in names])
    people = sorted(set(labels))
    train_people, test_people = set(people[:3]), set(people[3:])
    train = [i for i, lab in enumerate(labels) if lab in train_people]
    test = [i for i, lab in enumerate(labels) if lab in test_people]
    query = [i for i in test if names[i].endswith(("_01.png", "_06.png"))]
    gallery = [i for i in test if i not in query]
    filelist = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        filelist[i, 0] = n
    scipy_io.savemat(str(root / f"cuhk03_new_protocol_config_{boxes}.mat"), {
        "train_idx": np.array(train)[:, None] + 1, "query_idx": np.array(query)[:, None] + 1,
        "gallery_idx": np.array(gallery)[:, None] + 1, "labels": labels[:, None], "filelist": filelist})
    return names, labels, train, query, gallery


@pytest.mark.parametrize("boxes", ["labeled", "detected"])
def test_the_new_protocol_reads_the_config_and_the_extracted_boxes(tmp_path, boxes):
    from PIL import Image
    root = tmp_path / "cuhk03"
    write_release(root)
    names, labels, train, query, gallery = write_new_protocol(root, boxes)
    ds = build_dataset("cuhk03", str(tmp_path), boxes=boxes)           # the folder above cuhk03/ works too
    assert [r.path.rsplit("/", 1)[1] for r in ds.query] == [names[i] for i in query]
    assert [r.path.rsplit("/", 1)[1] for r in ds.gallery] == [names[i] for i in gallery]
    assert [r.pid for r in ds.query] == [labels[i] for i in query]       # test identities keep their labels
    assert sorted({r.pid for r in ds.train}) == list(range(3))           # training identities relabelled
    assert all(r.camid == int(r.path.rsplit("/", 1)[1].split("_")[2]) - 1 for r in ds.train + ds.query)
    # the boxes were written out with the right pixels, the empty cell skipped
    img = np.asarray(Image.open(root / f"images_{boxes}" / image_name(1, 0, 6)))
    np.testing.assert_array_equal(img, pixels(1, 0, 6, boxes))
    assert not (root / f"images_{boxes}" / image_name(0, 1, 7)).exists()
    # a second load reuses the extraction (the manifest), even with the .mat's boxes gone
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "a") as f:
        del f[boxes]
    again = build_dataset("cuhk03", str(root), boxes=boxes)
    assert [r.path for r in again.train] == [r.path for r in ds.train]


def test_the_classic_protocol_uses_the_numbered_test_set(tmp_path):
    root = tmp_path / "cuhk03"
    write_release(root)
    ds = build_dataset("cuhk03", str(root), protocol="classic", split=0)
    test_people = {(1, 2), (2, 1)}
    named = {tuple(int(x) for x in r.path.rsplit("/", 1)[1].split("_")[:2]) for r in ds.query}
    assert named == test_people and ds.query == ds.gallery
    assert len(ds.train) == 30 and len(ds.query) == 19     # 5 persons x 10 boxes, one empty (a test person's)
    train_people = {tuple(int(x) for x in r.path.rsplit("/", 1)[1].split("_")[:2]) for r in ds.train}
    assert train_people.isdisjoint(test_people) and len(train_people) == sum(PAIRS) - 2
    assert build_dataset("cuhk03", str(root), protocol="classic", split=1).query[0].path.endswith("1_001_1_01.png")
    with pytest.raises(ValueError, match="classic split 5 outside 0..1"):
        build_dataset("cuhk03", str(root), protocol="classic", split=5)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match="cuhk-03.mat not found"):
        build_dataset("cuhk03", str(tmp_path))
    root = tmp_path / "cuhk03"
    write_release(root)
    with pytest.raises(DatasetLayoutError, match="cuhk03_new_protocol_config_detected.mat not found"):
        build_dataset("cuhk03", str(root), boxes="detected")
    with pytest.raises(ValueError, match="boxes must be 'labeled' or 'detected'"):
        build_dataset("cuhk03", str(root), boxes="both")
