
import numpy as np
import pytest
from PIL import Image

from reidkit.data import ImageRecord
from reidkit.data import images as images_module
from reidkit.data.cache import ImageCache
from reidkit.data.images import BadImageError, check_images, load_rgb


@pytest.fixture
def bad_files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((40, 20, 3), 128, np.uint8)).save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    return good, {"empty": empty, "not an image": text, "truncated": truncated}


def test_each_bad_file_is_named(bad_files):
    good, bad = bad_files
    assert load_rgb(good, (16, 8)).size == (8, 16)
    for reason, path in bad.items():
        with pytest.raises(BadImageError, match=path.name) as info:
            load_rgb(path)
        assert reason.split()[0] in str(info.value).lower()


def test_decompression_bomb_is_refused(bad_files, monkeypatch):
    good, _ = bad_files
    monkeypatch.setattr(images_module, "MAX_PIXELS", 100)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_rgb(good)


def test_check_images_lists_all_bad(bad_files):
    good, bad = bad_files
    found = dict(check_images([str(good)] + [str(p) for p in bad.values()]))
    assert set(found) == {str(p) for p in bad.values()}


def test_cache_raises_listing_all_or_skips_and_counts(bad_files):
    good, bad = bad_files
    records = [ImageRecord(str(good), 0, 0)] + [ImageRecord(str(p), 1, 0) for p in bad.values()]
    with pytest.raises(BadImageError) as info:
        ImageCache(records, (16, 8), progress=False)
    assert all(p.name in str(info.value) for p in bad.values())
    cache = ImageCache(records, (16, 8), skip_bad_images=True, progress=False)
    assert len(cache) == 1 and len(cache.skipped) == 3
    assert cache.images.shape == (1, 3, 16, 8)


def test_memory_mapped_cache_equals_ram_cache(tmp_path, shared_data):
    paths = sorted((shared_data / "cuhk03" / "labeled" / "val").glob("*.jpg"))[:10]
    records = [ImageRecord(str(p), i, 0) for i, p in enumerate(paths)]
    ram = ImageCache(records, (64, 32), progress=False)
    mapped = ImageCache(records, (64, 32), mmap_path=tmp_path / "cache.u8", progress=False)
    again = ImageCache(records, (64, 32), mmap_path=tmp_path / "cache.u8", progress=False)  # reused
    assert np.array_equal(ram.images.numpy(), mapped.images.numpy())
    assert np.array_equal(ram.images.numpy(), again.images.numpy())
    # same count, other images: the manifest does not match, so the file is rebuilt
    others = [ImageRecord(str(p), i, 0) for i, p in enumerate(reversed(paths))]
    rebuilt = ImageCache(others, (64, 32), mmap_path=tmp_path / "cache.u8", progress=False)
    assert np.array_equal(rebuilt.images.numpy(), ram.images.numpy()[::-1])
