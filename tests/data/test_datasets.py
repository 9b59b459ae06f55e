import shutil
from pathlib import Path

import pytest

from reidkit.data import DatasetLayoutError, build_dataset, dataset_names
from reidkit.data.datasets.cuhk import parse_cuhk03_name
from reidkit.data.datasets.market_style import parse_market_name
from reidkit.data.datasets.msmt17 import parse_msmt17_name


def test_registered_names():
    assert set(dataset_names()) >= {"market1501", "dukemtmcreid", "msmt17", "cuhk03_np", "cuhk01",
                                    "cuhk03_labeled", "synthetic", "custom"}


def test_real_file_names_parse(shared_data):
    samples = shared_data / "name_samples"
    market = sorted((samples / "market1501").glob("*.jpg"))
    duke = sorted((samples / "dukemtmc").glob("*.jpg"))
    msmt = sorted((samples / "msmt17").glob("*.jpg"))
    assert len(market) == 51 and len(duke) == 20 and len(msmt) == 15
    parsed = {p.name: parse_market_name(p.name, 6) for p in market}
    assert parsed["0000_c3s1_107067_00.jpg"] == (0, 2)       # distractor
    assert parsed["1285_c1s5_053991_00.jpg"] == (1285, 0)
    assert {p.name: parse_market_name(p.name, 8) for p in duke}["4141_c8_f0022224.jpg"] == (4141, 7)
    cams = {p.name: parse_msmt17_name(p.name) for p in msmt}
    assert cams["0168_018_14_0303morning_1118_1_ex.jpg"] == 13
    assert cams["0917_021_15_0113morning_0174_0.jpg"] == 14


@pytest.mark.parametrize("name", ["c1s1_000451_03.jpg", "0002-c1s1.jpg", "abcd_c1s1_0.jpg"])
def test_bad_market_name_names_the_file(name):
    with pytest.raises(DatasetLayoutError, match=name):
        parse_market_name(name, 6)


def test_camera_out_of_range():
    with pytest.raises(DatasetLayoutError, match="camera 7 outside 1..6"):
        parse_market_name("0002_c7s1_000451_03.jpg", 6)


def make_market(tmp_path: Path, shared_data: Path) -> Path:
    src = sorted((shared_data / "name_samples" / "market1501").glob("*.jpg"))
    root = tmp_path / "Market-1501-v15.09.15"
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (root / folder).mkdir(parents=True)
    for i, path in enumerate(src):
        folder = ["bounding_box_train", "query", "bounding_box_test"][i % 3]
        shutil.copy(path, root / folder / path.name)
    shutil.copy(src[1], root / "bounding_box_test" / "-1_c1s1_000001_00.jpg")   # junk
    shutil.copy(src[1], root / "bounding_box_test" / "0000_c2s1_000001_00.jpg")  # distractor
    return tmp_path


def test_market_layout_junk_and_distractors(tmp_path, shared_data):
    ds = build_dataset("market1501", str(make_market(tmp_path, shared_data)))   # sub-folder found
    assert all(r.pid != -1 for r in ds.gallery)
    assert sum(r.pid == 0 for r in ds.gallery) >= 1
    assert sorted({r.pid for r in ds.train}) == list(range(ds.num_train_pids))
    assert "subset" in ds.summary() and "train" in ds.summary()


def test_missing_and_wrong_layouts_name_the_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match="folder not found"):
        build_dataset("market1501", str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetLayoutError, match="bounding_box_train"):
        build_dataset("dukemtmcreid", str(tmp_path / "flat"))
    with pytest.raises(DatasetLayoutError, match="list_train.txt"):
        build_dataset("msmt17", str(tmp_path / "flat"))
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        build_dataset("market", str(tmp_path))


def test_misnamed_file_in_dataset_names_it(tmp_path, shared_data):
    root = make_market(tmp_path, shared_data)
    sample = next((shared_data / "name_samples" / "market1501").glob("*.jpg"))
    bad = root / "Market-1501-v15.09.15" / "query" / "holiday_photo.jpg"
    shutil.copy(sample, bad)
    with pytest.raises(DatasetLayoutError, match="holiday_photo.jpg"):
        build_dataset("market1501", str(root))


def test_msmt17_list_layout(tmp_path, shared_data):
    base = tmp_path / "MSMT17_V2"
    samples = sorted((shared_data / "name_samples" / "msmt17").glob("*.jpg"))
    for folder, lst, part in (("mask_train_v2", "list_train.txt", samples[:8]),
                              ("mask_test_v2", "list_query.txt", samples[8:11]),
                              ("mask_test_v2", "list_gallery.txt", samples[11:])):
        lines = []
        for p in part:
            pid = p.name[:4]
            (base / folder / pid).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, base / folder / pid / p.name)
            lines.append(f"{pid}/{p.name} {int(pid)}")
        (base / lst).write_text("\n".join(lines) + "\n")
    (base / "list_val.txt").write_text("")
    ds = build_dataset("msmt17", str(tmp_path))
    assert len(ds.train) == 8 and len(ds.query) == 3 and len(ds.gallery) == 4
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    (base / "list_query.txt").write_text("only_one_field\n")
    with pytest.raises(DatasetLayoutError, match="list_query.txt:1"):
        build_dataset("msmt17", str(tmp_path))


def test_cuhk03_labeled_protocol(shared_data):
    ds = build_dataset("cuhk03_labeled", str(shared_data / "cuhk03" / "labeled"))
    assert ds.num_train_pids == 743
    assert len({r.pid for r in ds.query}) == 100
    assert len(ds.query) == 200                      # one per identity per camera view
    keys = [(r.pid, r.camid) for r in ds.query]
    assert len(set(keys)) == len(keys)
    assert len(ds.query) + len(ds.gallery) == 938
    first = {}
    for r in ds.query + ds.gallery:
        idx = int(Path(r.path).stem.split("_")[1])
        first[(r.pid, r.camid)] = min(first.get((r.pid, r.camid), 99), idx)
    assert all(int(Path(r.path).stem.split("_")[1]) == first[(r.pid, r.camid)] for r in ds.query)
    assert parse_cuhk03_name("0003_07.jpg") == (3, 1)


def test_custom_folders_and_csv(tmp_path, shared_data):
    sample = next((shared_data / "cuhk03" / "labeled" / "val").glob("*.jpg"))
    for split in ("train", "query", "gallery"):
        for person in ("alice", "bob"):
            for cam in ("door", "hall"):
                (tmp_path / split / person / cam).mkdir(parents=True)
                shutil.copy(sample, tmp_path / split / person / cam / "a.jpg")
    ds = build_dataset("custom", str(tmp_path))
    assert ds.num_train_pids == 2 and len(ds.query) == 4
    assert {r.camid for r in ds.gallery} == {0, 1}
    for split in ("train", "query", "gallery"):
        (tmp_path / f"{split}.csv").write_text(f"path,identity,camera\n{split}/bob/door/a.jpg,bob,door\n"
                                               f"{split}/alice/hall/a.jpg,alice,hall\n")
    ds = build_dataset("custom", str(tmp_path))
    assert len(ds.train) == 2 and "CSV" in ds.notes[0]
    (tmp_path / "query.csv").write_text("path,identity\nx.jpg,1\n")
    with pytest.raises(DatasetLayoutError, match="missing column"):
        build_dataset("custom", str(tmp_path))


def test_relative_roots_are_found_under_reidkit_data(tmp_path, monkeypatch):
    from reidkit.data.datasets.registry import resolve_data_root
    from reidkit.data.synthesis import generate
    store = tmp_path / "datasets"
    generate(store / "syn", num_ids=4, num_cameras=2, seed=0, images_per_camera=(1, 2), num_distractors=0,
             quiet=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("REIDKIT_DATA", str(store))
    assert resolve_data_root("syn") == str(store / "syn")
    assert len(build_dataset("synthetic", "syn", num_cameras=2, generate=False).train) > 0
    (work / "syn").mkdir()                            # the working directory's folder wins over $REIDKIT_DATA
    assert resolve_data_root("syn") == "syn"
    assert resolve_data_root(str(store / "syn")) == str(store / "syn")
    monkeypatch.setenv("REIDKIT_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"looked for in the working directory .* then under \$REIDKIT_DATA="):
        build_dataset("market1501", "market1501")
