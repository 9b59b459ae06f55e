import pytest

from reidkit.data.records import ImageRecord
from reidkit.data.validation import hold_out_identities


def records():
    out = []
    for pid in range(10):
        cams = [0] if pid == 9 else [0, 1, 2][: 2 + pid % 2]          # identity 9: one camera only
        for cam in cams:
            out += [ImageRecord(f"/x/{pid}_{cam}_{i}.jpg", pid, cam) for i in range(2)]
    return out


def test_whole_identities_leave_training_one_query_per_camera():
    split = hold_out_identities(records(), 3, seed=1)
    assert len(split.identities) == 3 and 9 not in split.identities
    held = set(split.identities)
    assert {r.pid for r in split.query} == held == {r.pid for r in split.gallery}
    assert sorted({r.pid for r in split.train}) == list(range(7))          # relabelled 0..6
    for pid in held:
        q = [r for r in split.query if r.pid == pid]
        assert sorted(r.camid for r in q) == sorted({r.camid for r in records() if r.pid == pid})
        assert all(r.path.endswith("_0.jpg") for r in q)                      # the first of each camera
    assert len(split.train) + len(split.query) + len(split.gallery) == len(records())
    assert hold_out_identities(records(), 3, seed=1).identities == split.identities    # seeded
    assert len(hold_out_identities(records(), 0.5, seed=0).identities) == 4      # half of the 9 multi-camera


def test_impossible_splits_are_named():
    with pytest.raises(ValueError, match="data.val_identities=10"):
        hold_out_identities(records(), 10)
