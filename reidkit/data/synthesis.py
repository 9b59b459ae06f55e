"""The built-in synthetic ReID dataset: procedurally drawn person crops.

Written in the Market-1501 layout, so the ``market1501`` loader (registered
again as ``synthetic``) reads it.  It is built to pose the problems the
methods address rather than to be separable by colour alone:

* identity = attributes: upper/lower garment colours and textures (plain,
  stripes, checks) at several spatial scales, a small chest logo, shoe
  colour, a bag seen only from some viewpoints, body proportions, hair;
* look-alike groups: identities in a group share garment colours and differ
  only in texture scale, logo, shoes, bag or build, so impostors are close;
* camera = its own illumination gain, colour cast, blur, resolution,
  background colour and clutter, and viewpoint mix (front/back/side), so the
  same person looks different across cameras and different people look alike
  within one camera;
* per image: pose jitter, bounding-box shift/scale jitter, partial occlusion;
* distractor identities (pid 0) in the gallery.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..files import OutputError, ensure_writable_dir

HEIGHT, WIDTH = 128, 64
PALETTE = np.array([
    [0.85, 0.1, 0.1], [0.1, 0.2, 0.75], [0.1, 0.55, 0.2], [0.9, 0.8, 0.15], [0.95, 0.95, 0.95],
    [0.08, 0.08, 0.08], [0.5, 0.5, 0.5], [0.55, 0.3, 0.1], [0.5, 0.15, 0.6], [0.95, 0.5, 0.1],
    [0.2, 0.7, 0.8], [0.9, 0.55, 0.65], [0.3, 0.35, 0.15], [0.12, 0.15, 0.35],
])
SKIN = np.array([[0.95, 0.8, 0.68], [0.82, 0.62, 0.46], [0.55, 0.38, 0.26], [0.35, 0.24, 0.16]])
TEXTURES = ("plain", "stripes", "checks")
VIEWS = ("front", "back", "side")


@dataclass
class Look:
    """What identifies a person."""

    upper: np.ndarray
    upper2: np.ndarray
    upper_texture: str
    upper_period: int
    lower: np.ndarray
    lower2: np.ndarray
    lower_texture: str
    lower_period: int
    logo: np.ndarray | None
    logo_x: float
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    bag: str | None          # None, "backpack" (back/side views) or "handbag" (side view)
    bag_color: np.ndarray
    height: float
    width: float
    legs: float


@dataclass
class CameraStyle:
    """How a camera renders a scene."""

    gain: float
    cast: np.ndarray
    blur: float
    scale: float
    background: np.ndarray
    clutter: np.ndarray
    views: np.ndarray        # probabilities of front / back / side
    occlusion: float


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a, b = rng.choice(len(PALETTE), 2, replace=False)
    return PALETTE[a], PALETTE[b]


def make_looks(count: int, rng: np.random.Generator, group_size: int = 3) -> list[Look]:
    """Identities in look-alike groups that share garment colours."""
    looks: list[Look] = []
    while len(looks) < count:
        upper, upper2 = _colour_pair(rng)
        lower, lower2 = _colour_pair(rng)
        for _ in range(min(group_size, count - len(looks))):
            looks.append(Look(
                upper=upper, upper2=upper2, upper_texture=TEXTURES[rng.integers(3)],
                upper_period=int(rng.choice([3, 5, 8, 12])),
                lower=lower, lower2=lower2, lower_texture=TEXTURES[rng.choice(3, p=[0.6, 0.2, 0.2])],
                lower_period=int(rng.choice([4, 7, 11])),
                logo=PALETTE[rng.integers(len(PALETTE))] if rng.random() < 0.6 else None,
                logo_x=float(rng.uniform(-0.25, 0.25)), shoes=PALETTE[rng.integers(len(PALETTE))],
                skin=SKIN[rng.integers(len(SKIN))], hair=PALETTE[rng.choice([5, 7, 6, 3])],
                bag=[None, "backpack", "handbag"][rng.integers(3)],
                bag_color=PALETTE[rng.integers(len(PALETTE))],
                height=float(rng.uniform(0.8, 0.95)), width=float(rng.uniform(0.42, 0.62)),
                legs=float(rng.uniform(0.42, 0.52)),
            ))
    return looks


def make_cameras(count: int, rng: np.random.Generator) -> list[CameraStyle]:
    cams = []
    for _ in range(count):
        views = rng.dirichlet([1.5, 1.5, 1.5])
        cams.append(CameraStyle(
            gain=float(rng.uniform(0.6, 1.3)), cast=rng.uniform(0.8, 1.2, 3),
            blur=float(rng.choice([0.0, 0.6, 1.2])), scale=float(rng.choice([1.0, 0.75, 0.5])),
            background=rng.uniform(0.2, 0.8, 3), clutter=rng.uniform(0.0, 1.0, (4, 3)),
            views=views, occlusion=float(rng.uniform(0.05, 0.3)),
        ))
    return cams


def _texture(h: int, w: int, kind: str, period: int, a: np.ndarray, b: np.ndarray,
             phase: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "stripes":
        mask = ((yy + phase) // period) % 2 == 0
    elif kind == "checks":
        mask = (((yy + phase) // period) + (xx // period)) % 2 == 0
    else:
        mask = np.ones((h, w), dtype=bool)
    return np.where(mask[..., None], a, b)


def _box(img: np.ndarray, y0: float, y1: float, x0: float, x1: float, fill) -> None:
    h, w = img.shape[:2]
    ya, yb = int(np.clip(y0, 0, h)), int(np.clip(y1, 0, h))
    xa, xb = int(np.clip(x0, 0, w)), int(np.clip(x1, 0, w))
    if yb > ya and xb > xa:
        img[ya:yb, xa:xb] = fill if np.ndim(fill) == 1 else fill[: yb - ya, : xb - xa]


def render(look: Look, cam: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """One crop (HEIGHT x WIDTH x 3, uint8) of ``look`` seen by ``cam``."""
    h, w = HEIGHT, WIDTH
    img = np.zeros((h, w, 3)) + cam.background * rng.uniform(0.85, 1.15)
    for _ in range(int(rng.integers(2, 6))):                      # background clutter
        y, x = rng.uniform(0, h), rng.uniform(-10, w)
        _box(img, y, y + rng.uniform(5, 40), x, x + rng.uniform(5, 30), cam.clutter[rng.integers(4)])
    view = VIEWS[rng.choice(3, p=cam.views)]
    cx = w / 2 + rng.normal(0, 2)
    body_h = h * look.height * rng.uniform(0.96, 1.04)
    top = (h - body_h) / 2 + rng.normal(0, 2)
    half = w * look.width / 2 * (0.6 if view == "side" else 1.0)
    head = body_h * 0.14
    torso_top, legs_top = top + head, top + body_h * (1 - look.legs)
    bottom = top + body_h
    _box(img, top, top + head, cx - head * 0.4, cx + head * 0.4, look.skin)       # head
    _box(img, top - 1, top + head * (0.75 if view == "back" else 0.3),
         cx - head * 0.45, cx + head * 0.45, look.hair)                           # hair
    th = legs_top - torso_top
    phase = int(rng.integers(0, 3))
    upper = _texture(h, w, look.upper_texture, look.upper_period,
                     look.upper, look.upper2, phase)
    _box(img, torso_top, legs_top, cx - half, cx + half, upper)                   # torso
    arm = max(2.0, half * 0.28)
    if view != "side":
        _box(img, torso_top + 2, legs_top + 4, cx - half - arm, cx - half, look.upper * 0.9)
        _box(img, torso_top + 2, legs_top + 4, cx + half, cx + half + arm, look.upper * 0.9)
    if view == "front" and look.logo is not None:                                 # chest logo
        lx = cx + look.logo_x * half
        _box(img, torso_top + th * 0.2, torso_top + th * 0.2 + 5, lx - 3, lx + 3, look.logo)
    spread = rng.uniform(0, 4)
    legs = _texture(h, w, look.lower_texture, look.lower_period, look.lower, look.lower2, 0)
    if view == "side":
        _box(img, legs_top, bottom - 4, cx - half * 0.6 - spread, cx + half * 0.6 + spread, legs)
    else:
        gap = max(1.0, half * 0.12)
        _box(img, legs_top, bottom - 4, cx - half - spread * 0.5, cx - gap, legs)
        _box(img, legs_top, bottom - 4, cx + gap, cx + half + spread * 0.5, legs[:, ::-1])
    _box(img, bottom - 4, bottom, cx - half - spread, cx + half + spread, look.shoes)  # shoes
    if look.bag == "backpack" and view in ("back", "side"):
        bw = half * (1.2 if view == "back" else 0.5)
        bx = cx if view == "back" else cx + half
        _box(img, torso_top + 3, torso_top + th * 0.75, bx - bw / 2, bx + bw / 2, look.bag_color)
    if look.bag == "handbag" and view == "side":
        _box(img, legs_top - 4, legs_top + 10, cx - half - 8, cx - half, look.bag_color)
    if rng.random() < cam.occlusion:                                              # occluder
        oy = rng.uniform(h * 0.5, h * 0.85)
        ox = rng.uniform(-w / 2, w / 2)
        _box(img, oy, h, ox, ox + rng.uniform(w * 0.4, w), cam.clutter[rng.integers(4)])
    img = img * cam.cast * cam.gain * rng.uniform(0.9, 1.1)                       # illumination
    img += rng.normal(0, 0.02, img.shape)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    # bounding-box jitter: crop a shifted, rescaled box and resize back
    s = rng.uniform(0.9, 1.1)
    bw, bh = w * s, h * s
    x0, y0 = (w - bw) / 2 + rng.normal(0, 2), (h - bh) / 2 + rng.normal(0, 3)
    pil = pil.transform((w, h), Image.Transform.EXTENT, (x0, y0, x0 + bw, y0 + bh), Image.Resampling.BILINEAR)
    if cam.scale < 1.0:                                                           # resolution
        small = (max(8, int(w * cam.scale)), max(16, int(h * cam.scale)))
        pil = pil.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    if cam.blur > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(cam.blur))
    return np.asarray(pil)


def generate(out: str | Path, num_ids: int = 200, num_cameras: int = 6, seed: int = 0,
             images_per_camera: tuple[int, int] = (2, 4), num_distractors: int = 150,
             quiet: bool = False) -> Path:
    """Write a Market-1501-layout synthetic dataset to ``out`` (deterministic for ``seed``).

    Half the identities train, half test; each identity appears in 2..C cameras.
    Query: one image per test identity per camera; gallery: the rest plus
    ``num_distractors`` images of other people labelled 0000.
    """
    if num_ids < 4 or num_cameras < 2:
        raise ValueError(f"need at least 4 identities and 2 cameras, got {num_ids} and {num_cameras}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty: the synthetic dataset is written only into a new or "
                         "empty folder (nothing of yours is overwritten); choose another folder")
    ensure_writable_dir(out.parent)            # a file in the way or a read-only disk: named now
    try:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as e:
        raise OutputError(f"cannot write the synthetic dataset into {out.parent}: {e.strerror or e}") from None
    try:
        count = _write_images(staging, num_ids, num_cameras, seed, images_per_camera, num_distractors)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)             # mkdtemp makes it private (0700); a folder follows the umask
        os.replace(staging, out)                  # all or nothing: a killed generation leaves no half dataset
    except OSError as e:
        raise OutputError(f"could not write the synthetic dataset {out} ({e.strerror or e}); nothing was left "
                          "behind") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"synthetic dataset: {count} images of {num_ids} identities + {num_distractors} "
              f"distractors, {num_cameras} cameras -> {out}")
    return out


def _write_images(out: Path, num_ids: int, num_cameras: int, seed: int, images_per_camera: tuple[int, int],
                  num_distractors: int) -> int:
    folders = {s: out / s for s in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    root_rng = np.random.default_rng(seed)
    cams = make_cameras(num_cameras, root_rng)
    looks = make_looks(num_ids + num_distractors, root_rng)
    order = root_rng.permutation(num_ids)         # look-alike groups span train and test
    frame = 0
    count = 0
    for index in range(num_ids):
        look = looks[order[index]]
        pid = index + 1
        rng = np.random.default_rng([seed, pid])
        n_cams = int(rng.integers(2, num_cameras + 1))
        train = pid <= num_ids // 2
        for cam in sorted(rng.choice(num_cameras, n_cams, replace=False)):
            n = int(rng.integers(images_per_camera[0], images_per_camera[1] + 1))
            for i in range(n):
                frame += 1
                split = "bounding_box_train" if train else ("query" if i == 0 else "bounding_box_test")
                name = f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg"
                Image.fromarray(render(look, cams[cam], rng)).save(folders[split] / name, quality=90)
                count += 1
    rng = np.random.default_rng([seed, 0])
    for d in range(num_distractors):
        frame += 1
        cam = int(rng.integers(num_cameras))
        image = render(looks[num_ids + d], cams[cam], rng)
        Image.fromarray(image).save(folders["bounding_box_test"] / f"0000_c{cam + 1}s1_{frame:06d}_00.jpg",
                                    quality=90)
        count += 1
    return count
