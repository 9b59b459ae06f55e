import collections

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.data import ImageRecord
from reidkit.data.cache import ImageCache
from reidkit.data.loader import iter_test_batches
from reidkit.data.samplers import (
    RandomBatchSampler,
    RandomIdentityBatchSampler,
    RepeatedBatchSampler,
    build_sampler,
    identity_camera_groups,
    shard_bounds,
)
from reidkit.data.transforms import (
    AugmentConfig,
    BatchAugment,
    random_enlarge_crop,
    random_erasing,
    random_flip,
    random_pad_crop,
    torchvision_transforms,
)


def test_pk_batches():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(30), rng.integers(1, 9, 30))     # some ids with fewer than K
    sampler = RandomIdentityBatchSampler(pids, 6, 4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = collections.Counter(pids[batch].tolist())
        assert len(batch) == 24 and len(counts) == 6 and set(counts.values()) == {4}
    few = [p for p in range(30) if (pids == p).sum() < 4]
    seen = [b for b in batches if any(pids[i] in few for i in b)]
    assert seen, "identities with fewer than K images must still be sampled (with replacement)"
    sampler.set_epoch(0)
    again = list(sampler)
    assert again == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_pk_needs_p_identities():
    with pytest.raises(ValueError, match="fewer than P=8"):
        RandomIdentityBatchSampler([0, 1, 2], 8, 4)


def test_random_erasing_statistics():
    gen = torch.Generator().manual_seed(0)
    batch = torch.ones(4000, 3, 64, 32)
    out = random_erasing(batch, 0.5, (0.02, 0.4), 0.3, gen)
    erased = (out[:, 0] == 0)
    frac = erased.flatten(1).float().mean(1)
    hit = frac > 0
    assert 0.47 < hit.float().mean() < 0.53
    # side lengths are rounded to pixels, so the area can overshoot [0.02, 0.4] slightly
    assert frac[hit].min() >= 0.015 and frac[hit].max() <= 0.43
    assert 0.1 < frac[hit].mean() < 0.25     # mean area of U(0.02, 0.4) is 0.21, minus rejections
    rows = erased.any(2).sum(1)[hit].float()
    cols = erased.any(1).sum(1)[hit].float()
    aspect = rows / cols
    assert aspect.min() >= 0.3 * 0.8 and aspect.max() <= (1 / 0.3) * 1.25


def test_erasing_fill_reference_code_writes_the_mean_values_where_mean_pixel_writes_zero():
    images = torch.full((64, 3, 32, 16), 200, dtype=torch.uint8)          # 200 is far from both fills
    plain = dict(flip=0.0, crop_prob=0.0, erasing=1.0)
    zero = BatchAugment(AugmentConfig(**plain), seed=3)(images)
    ref = BatchAugment(AugmentConfig(**plain, erasing_fill="reference_code"), seed=3)(images)
    erased = zero[:, 0] == 0
    assert erased.any(dim=(1, 2)).float().mean() > 0.9                   # the same patches, same random draws
    for channel, value in enumerate((0.485, 0.456, 0.406)):
        assert torch.equal(ref[:, channel] == value, erased)
        assert torch.equal(ref[:, channel][~erased], zero[:, channel][~erased])


def test_flip_and_crop():
    gen = torch.Generator().manual_seed(0)
    batch = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    assert torch.equal(random_flip(batch, 1.0, gen), batch.flip(-1))
    assert torch.equal(random_flip(batch, 0.0, gen), batch)
    assert torch.equal(random_pad_crop(batch, 0, gen), batch)
    cropped = random_pad_crop(batch, 2, gen)
    assert cropped.shape == batch.shape
    padded = torch.nn.functional.pad(batch, (2,) * 4)
    for i in range(2):                                  # each output is one window of the padded image
        assert any(torch.equal(cropped[i], padded[i, :, y:y + 4, x:x + 5]) for y in range(5) for x in range(5))


def test_enlarge_crop_is_a_window_of_the_enlarged_image():
    """OSNet's crop: enlarge x1.125 (bilinear), then a random 256x128-style window; p=0 changes nothing."""
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (6, 3, 32, 16), dtype=torch.uint8)
    assert torch.equal(random_enlarge_crop(batch, 0.0, gen), batch)
    out = random_enlarge_crop(batch, 1.0, gen)
    big = torch.nn.functional.interpolate(batch.float(), size=(36, 18), mode="bilinear").round().to(torch.uint8)
    for i in range(6):
        assert any(torch.equal(out[i], big[i, :, y:y + 32, x:x + 16]) for y in range(5) for x in range(3))


@pytest.mark.parametrize("crop", ["pad", "enlarge"])
def test_crop_probability(crop):
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(1, 256, (400, 3, 16, 16), dtype=torch.uint8)    # random pixels: any change shows
    out = (random_pad_crop(batch, 3, gen, p=0.5) if crop == "pad" else random_enlarge_crop(batch, 0.5, gen))
    kept = sum(torch.equal(a, b) for a, b in zip(out, batch))
    assert 150 < kept < 260                # ~200 left alone (+ the rare chosen image whose window is the original)


def test_batch_augment_is_seeded():
    batch = torch.randint(0, 255, (8, 3, 32, 16), dtype=torch.uint8)
    a = BatchAugment(AugmentConfig(color_jitter=0.2), seed=3)(batch)
    b = BatchAugment(AugmentConfig(color_jitter=0.2), seed=3)(batch)
    assert torch.equal(a, b)


def test_cached_path_equals_plain_torchvision_path(shared_data):
    paths = sorted((shared_data / "cuhk03" / "labeled" / "val").glob("*.jpg"))[:12]
    cache = ImageCache([ImageRecord(str(p), 0, 0) for p in paths], (64, 32), progress=False)
    fast = torch.cat(list(iter_test_batches(cache, batch_size=5)))
    plain_tf = torchvision_transforms((64, 32))
    plain = torch.stack([plain_tf(Image.open(p).convert("RGB")) for p in paths])
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("crop", ["pad", "enlarge"])
def test_torchvision_pipeline_crop_modes(crop):
    """The per-image reference pipeline: crop_prob=0 equals the test pipeline, crop_prob=1 keeps the size."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 20, 3), dtype=np.uint8))
    never = torchvision_transforms((32, 16), AugmentConfig(flip=0, crop=crop, crop_prob=0, erasing=0))(image)
    torch.testing.assert_close(never, torchvision_transforms((32, 16))(image))
    always = torchvision_transforms((32, 16), AugmentConfig(flip=0, crop=crop, crop_prob=1, erasing=0))(image)
    assert always.shape == (3, 32, 16)
    if crop == "enlarge":                              # an enlarged window never equals the original
        assert not torch.equal(always, never)


def test_random_batches_cover_every_image_once_and_drop_the_last_partial_batch():
    sampler = RandomBatchSampler(7239, 64, seed=3)         # CUHK03-labeled train, torchreid's batch
    batches = list(sampler)
    assert len(batches) == len(sampler) == 113 and all(len(b) == 64 for b in batches)   # 7,232 images
    seen = [i for b in batches for i in b]
    assert len(set(seen)) == len(seen) == 7232 and max(seen) < 7239
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        RandomBatchSampler(10, 64)


@pytest.mark.parametrize("seed", range(20))
def test_shards_split_batches_between_processes_without_cutting_an_identity(seed):
    rng = np.random.default_rng(seed)
    k, groups, world = int(rng.integers(1, 5)), int(rng.integers(1, 20)), int(rng.integers(1, 6))
    if groups < world:
        with pytest.raises(ValueError, match=f"cannot be shared by {world} processes"):
            shard_bounds(groups * k, k, 0, world)
        return
    bounds = [shard_bounds(groups * k, k, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == groups * k
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))               # contiguous, in rank order
    sizes = [e - s for s, e in bounds]
    assert all(s % k == 0 and s > 0 for s in sizes) and max(sizes) - min(sizes) <= k


def test_build_sampler_names_the_recipe_samplers():
    pids, camids = np.repeat(np.arange(10), 6), np.tile(np.arange(3), 20)
    assert isinstance(build_sampler("random", pids, camids, 16, 4), RandomBatchSampler)
    pk = build_sampler("camera_diverse", pids, camids, 16, 4)
    assert (pk.p, pk.k, pk.camids is not None) == (4, 4, True)
    assert build_sampler("identity", pids, camids, 16, 4).camids is None
    with pytest.raises(ValueError, match="not a multiple of K=4"):
        build_sampler("identity", pids, camids, 18, 4)
    with pytest.raises(ValueError, match="unknown sampler 'pk'"):
        build_sampler("pk", pids, camids, 16, 4)
    with pytest.raises(ValueError, match="not a multiple of K=4"):
        build_sampler("identity_camera", pids, camids, 18, 4)


def test_identity_camera_groups_number_each_identity_and_camera_pair():
    pids = np.array([5, 5, 5, 2, 2, 9, 5])
    cams = np.array([1, 0, 1, 3, 3, 0, 0])
    # pairs in (identity, camera) order: (2, 3) -> 0, (5, 0) -> 1, (5, 1) -> 2, (9, 0) -> 3
    assert identity_camera_groups(pids, cams).tolist() == [2, 1, 2, 0, 0, 3, 1]
    with pytest.raises(ValueError, match="7 identity labels but 6 camera ids"):
        identity_camera_groups(pids, cams[:6])


@pytest.mark.parametrize("seed", range(5))
def test_identity_camera_batches_hold_k_images_of_one_identity_and_one_camera(seed):
    """The camera-aware proxies' sampler: every group of K is one (identity, camera) pair and a batch holds P
    distinct pairs.  40 identities of 3 crops each, 20 seen by one camera and 20 by three: the identity sampler
    draws each identity once an epoch; this one draws each pair once (fewer than K crops: with replacement), so
    an identity seen by three cameras three times as often."""
    rng = np.random.default_rng(seed)
    pids = rng.permutation(np.repeat(np.arange(40), 3))
    camids = np.zeros_like(pids)
    for p in range(20, 40):
        camids[pids == p] = rng.permutation(3)
    sampler = build_sampler("identity_camera", pids, camids, 16, 4, seed=seed)
    assert (sampler.p, sampler.k, sampler.batch_size) == (4, 4, 16)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20                 # 80 pairs, 4 a batch
    drawn = []
    for batch in batches:
        keys = [{(int(pids[i]), int(camids[i])) for i in batch[g:g + 4]} for g in range(0, 16, 4)]
        assert all(len(k) == 1 for k in keys)                 # one identity, one camera per group
        drawn += [next(iter(k)) for k in keys]
    assert len(set(drawn)) == len(drawn) == 80                # every pair once, P distinct in each batch
    per_identity = collections.Counter(p for p, _ in drawn)
    assert {per_identity[p] for p in range(20)} == {1} and {per_identity[p] for p in range(20, 40)} == {3}
    plain = build_sampler("identity", pids, camids, 16, 4, seed=seed)
    assert collections.Counter(int(pids[b[g]]) for b in plain for g in range(0, 16, 4)) == dict.fromkeys(range(40), 1)


def test_relabelled_batches_draw_only_the_kept_images_under_their_new_labels():
    """A piece's labels (-1: left out) become P x K batches of the whole training set's indices."""
    import numpy as np

    from reidkit.engine.pipeline import relabelled_sampler
    from reidkit.recipe_files import load_recipe
    recipe = load_recipe(None, ["data.batch_size=4", "data.num_instances=2", "data.sampler=identity"])
    labels = np.array([0, -1, 0, 1, 1, -1, 2, 2, 2, -1])
    camids = np.zeros(10, dtype=int)
    sampler = relabelled_sampler(recipe, labels, camids, seed=3)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert batches and all(len(b) == 4 for b in batches)
    drawn = [i for b in batches for i in b]
    assert all(labels[i] >= 0 for i in drawn)                         # the left-out images never come
    for b in batches:                                                 # K = 2 images of each of P = 2 labels
        assert [labels[i] for i in b][0::2] == [labels[i] for i in b][1::2]
    again = relabelled_sampler(recipe, labels, camids, seed=3)
    again.set_epoch(0)
    assert list(again) == batches                                     # seeded: a resumed epoch draws the same
    with pytest.raises(ValueError, match="fewer than one batch"):
        relabelled_sampler(recipe, np.array([0, 0, -1, -1, -1]), np.zeros(5, dtype=int))
    merged = np.array([0, 0, 0, 0, -1, 0])                          # one cluster: no batch of P = 2 clusters
    with pytest.raises(ValueError, match="hold 1 clusters, fewer than the 2 a batch draws"):
        relabelled_sampler(recipe, merged, camids[:6])
    by_camera = load_recipe(None, ["data.batch_size=4", "data.num_instances=2", "data.sampler=identity_camera"])
    two_cameras = np.array([0, 1, 0, 1, 0, 1])                      # one cluster seen by two cameras: 2 pairs
    assert len(relabelled_sampler(by_camera, merged, two_cameras)) > 0


class _TheirRandom:
    """The random calls of the authors' samplers (torch.randperm, random.choice, np.random.choice,
    random.shuffle) drawn from one numpy generator in the order reidkit draws them, so that a transcription of
    their code and reidkit's sampler can be compared batch for batch."""

    def __init__(self, seed_sequence):
        self.rng = np.random.default_rng(seed_sequence)

    def randperm(self, n):
        return self.rng.permutation(n).tolist()

    def choice_of_list(self, items):
        return items[self.rng.integers(len(items))]

    def np_choice(self, a, size, replace):
        return self.rng.choice(a, size=size, replace=replace)

    def shuffle(self, values):
        values[:] = self.rng.permutation(values).tolist()


def cluster_contrast_multiple_gallery(data_source, num_instances, rand):
    """Cluster Contrast's ``RandomMultipleGallerySampler.__init__`` / ``__iter__`` (clustercontrast/utils/data/
    sampler.py) transcribed, its random calls through ``rand``; ``data_source``: (index, pid, cam) tuples."""
    index_pid, pid_cam, pid_index = {}, collections.defaultdict(list), collections.defaultdict(list)
    for index, (_, pid, cam) in enumerate(data_source):
        if pid < 0:
            continue
        index_pid[index] = pid
        pid_cam[pid].append(cam)
        pid_index[pid].append(index)
    pids = list(pid_index.keys())
    ret = []
    for kid in rand.randperm(len(pids)):
        i = rand.choice_of_list(pid_index[pids[kid]])
        _, i_pid, i_cam = data_source[i]
        ret.append(i)
        pid_i = index_pid[i]
        cams = pid_cam[pid_i]
        index = pid_index[pid_i]
        select_cams = [j for j, c in enumerate(cams) if c != i_cam]            # No_index(cams, i_cam)
        if select_cams:
            cam_indexes = rand.np_choice(select_cams, num_instances - 1, len(select_cams) < num_instances)
            ret.extend(index[kk] for kk in cam_indexes)
        else:
            select_indexes = [j for j, x in enumerate(index) if x != i]         # No_index(index, i)
            if not select_indexes:
                continue
            ind_indexes = rand.np_choice(select_indexes, num_instances - 1, len(select_indexes) < num_instances)
            ret.extend(index[kk] for kk in ind_indexes)
    return ret


def cap_class_uniformly(samples, class_position, k, rand):
    """The camera-aware proxies' ``ClassUniformlySampler._tuple2dict`` / ``_generate_list`` (reid/utils/data/
    preprocessor.py, has_outlier False) transcribed, its random calls through ``rand``."""
    id_dict = {}
    for index, each_input in enumerate(samples):
        id_dict.setdefault(each_input[class_position], []).append(index)
    sample_list = []
    keys = list(id_dict.keys())
    rand.shuffle(keys)
    for key in keys:
        value = list(id_dict[key])
        if len(value) >= k:
            rand.shuffle(value)
            sample_list.extend(value[0:k])
        else:
            value = value * k
            rand.shuffle(value)
            sample_list.extend(value[0:k])
    return sample_list


def _pseudo_labelled(seed):
    """Clusters as DBSCAN leaves them: labels in no particular order, sizes 2-9, one to three cameras each, a
    cluster seen by one camera, outliers (-1)."""
    rng = np.random.default_rng(seed)
    pids, cams = [], []
    for label in rng.permutation(14):
        size = int(rng.integers(2, 10))
        pids += [int(label)] * size
        cams += (rng.integers(0, 1 if label == 3 else 3, size) * 2 + 1).tolist()
    pids += [-1] * 9                                          # outliers (a cluster of one image is tested apart)
    cams += (rng.integers(0, 3, 9) * 2 + 1).tolist()
    order = rng.permutation(len(pids))
    return np.asarray(pids)[order], np.asarray(cams)[order]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_camera_batches_are_cluster_contrasts_sampler(seed):
    """Batch for batch the stream of RandomMultipleGallerySampler (anchor, then K - 1 from other cameras; every
    cluster once; the loader's drop_last batches) over the kept images, for the same random draws."""
    pids, cams = _pseudo_labelled(seed)
    kept = np.flatnonzero(pids >= 0)
    k, batch = 4, 16
    data_source = [(i, int(pids[i]), int(cams[i])) for i in kept]
    theirs = cluster_contrast_multiple_gallery(data_source, k, _TheirRandom([7, 3]))
    sampler = build_sampler("cross_camera", pids[kept], cams[kept], batch, k, seed=7)
    sampler.set_epoch(3)
    ours = [i for b in sampler for i in b]
    assert len(sampler) == len(theirs) // batch == len(np.unique(pids[kept])) * k // batch
    assert ours == theirs[:len(sampler) * batch]
    for g in range(0, len(theirs), k):                          # the camera pairing, read off the stream
        group = np.asarray(theirs[g:g + k])
        cluster_cams = set(cams[kept][pids[kept] == pids[kept][group[0]]])
        assert len(set(pids[kept][group])) == 1
        if len(cluster_cams) > 1:
            assert all(cams[kept][j] != cams[kept][group[0]] for j in group[1:])


@pytest.mark.parametrize("seed", [0, 1])
def test_identity_camera_uniform_batches_are_the_camera_aware_proxies_sampler(seed):
    pids, cams = _pseudo_labelled(seed)
    kept = np.flatnonzero(pids >= 0)
    proxies = identity_camera_groups(pids[kept], cams[kept])
    theirs = cap_class_uniformly([(i, p) for i, p in zip(kept, proxies)], 1, 4, _TheirRandom([5, 0]))
    sampler = build_sampler("identity_camera_uniform", pids[kept], cams[kept], 8, 4, seed=5)
    ours = [i for b in sampler for i in b]
    assert len(theirs) == 4 * len(np.unique(proxies)) and ours == theirs[:len(sampler) * 8]


def test_a_single_image_cluster_fills_its_group_and_epochs_repeat_passes():
    pids, cams = np.array([0, 0, 1, 2, 2, 2]), np.array([1, 2, 1, 1, 1, 1])
    sampler = build_sampler("cross_camera", pids, cams, 2, 2, seed=0)
    assert [2, 2] in list(sampler)                             # cluster 1's one image, twice
    repeated = RepeatedBatchSampler(sampler, 5)
    batches = list(repeated)
    assert len(repeated) == len(batches) == 5 and len(sampler) == 3
    assert batches[0] == next(iter(sampler))                  # the first pass is the sampler's own
    assert len({tuple(b) for b in batches}) > 1               # later passes drawn anew
    repeated.set_epoch(1)
    assert list(repeated) != batches and list(RepeatedBatchSampler(sampler, 5)) == list(repeated)
