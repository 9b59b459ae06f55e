"""CUHK01 under torchreid's protocol (issue 35, item 1), checked against a literal transcription of how
torchreid 0.2.5's ``CUHK01.prepare_split`` builds its 20 splits, on a fixture folder."""
import os

import numpy as np
import pytest

from reidkit.data import build_dataset


def torchreid_splits(campus: str, seed: int) -> list[dict]:
    """torchreid's construction, step by step: images in sorted path order, identity = first four digits - 1,
    view = (next three digits - 1) // 2; 10 times: shuffle the identity indices with numpy's global generator,
    the first half (sorted) train with labels in that order, the rest split by view: A -> B, then B -> A."""
    np.random.seed(seed)                                  # torchreid leaves it unseeded; seeded, it is this
    paths = sorted(os.path.join(campus, n) for n in os.listdir(campus) if n.endswith(".png"))
    images = [(p, int(os.path.basename(p)[:4]) - 1, (int(os.path.basename(p)[4:7]) - 1) // 2) for p in paths]
    num_pids = len({pid for _, pid, _ in images})
    splits = []
    for _ in range(10):
        order = np.arange(num_pids)
        np.random.shuffle(order)
        train_idxs = np.sort(order[:num_pids // 2])
        label = {idx: k for k, idx in enumerate(train_idxs)}
        train, view_a, view_b = [], [], []
        for path, pid, camid in images:
            if pid in train_idxs:
                train.append((path, label[pid], camid))
            elif camid == 0:
                view_a.append((path, pid, camid))
            else:
                view_b.append((path, pid, camid))
        splits.append({"train": train, "query": view_a, "gallery": view_b})
        splits.append({"train": train, "query": view_b, "gallery": view_a})
    return splits


@pytest.fixture
def campus(tmp_path):
    """11 identities (0001-0011), 4 images each: 001-002 camera A, 003-004 camera B (empty files: not decoded)."""
    folder = tmp_path / "cuhk01" / "campus"
    folder.mkdir(parents=True)
    for pid in range(1, 12):
        for image in range(1, 5):
            (folder / f"{pid:04d}{image:03d}.png").write_bytes(b"")
    return folder


@pytest.mark.parametrize("seed", [0, 3])
def test_every_split_is_torchreids(campus, seed):
    reference = torchreid_splits(str(campus), seed)
    assert len(reference) == 20
    for split_id, expected in enumerate(reference):
        got = build_dataset("cuhk01", str(campus.parent), split_id=split_id, seed=seed)
        assert [(r.path, r.pid, r.camid) for r in got.train] == expected["train"]
        for ours, theirs in ((got.query, expected["query"]), (got.gallery, expected["gallery"])):
            assert [(r.path, r.pid - 1, r.camid) for r in ours] == theirs        # identities as in the file names
    assert len(build_dataset("cuhk01", str(campus.parent)).train) == 5 * 4        # num_pids // 2 identities


def test_the_splits_differ_and_a_bad_split_id_is_named(campus):
    first, second = (build_dataset("cuhk01", str(campus.parent), split_id=k) for k in (0, 2))
    assert {r.path for r in first.train} != {r.path for r in second.train}     # other identities
    reversed_ = build_dataset("cuhk01", str(campus.parent), split_id=1)
    assert [r.path for r in reversed_.query] == [r.path for r in first.gallery]
    with pytest.raises(ValueError, match="split_id 20 outside 0..19"):
        build_dataset("cuhk01", str(campus.parent), split_id=20)


def test_the_single_shot_variant_keeps_its_own_name(campus):
    single = build_dataset("cuhk01_single_shot", str(campus.parent), seed=0, num_train_ids=5)
    assert single.name == "cuhk01_single_shot" and len({r.pid for r in single.train}) == 5
    test_ids = {r.pid for r in single.query}
    assert len(single.query) == 2 * len(test_ids) == 12          # one query per identity and camera view
    assert len(single.gallery) == 4 * len(test_ids) - len(single.query)
