"""Synthetic 2-D grayscale "scans" with lesions, expert ROIs and a shortcut confounder.

Each image is a body-shaped region of smooth tissue texture with one lesion; the lesion's shape
and texture decide the class, and its mask is the ROI. A burned-in tag (a saturated glyph in a
corner, like the text markers on chest X-rays) is drawn on a fraction of the images; in the
training split its glyph names the true class with probability `marker_agreement`, in the test
split it is drawn at random. A model trained on few labels can learn the tag instead of the
lesion, i.e. look outside the ROI: the failure that explanation-guided selection targets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool, PoolWriter

CLASS_NAMES = ("round", "striated", "spiculated", "ring")


def _lesion(
    rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mask, intensity) of one lesion of class `cls` centred at (cy, cx) with radius ~r."""
    dy, dx = yy - cy, xx - cx
    theta = rng.uniform(0, np.pi)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if cls == 0:  # round, homogeneous
        dist = np.hypot(u, v) / r
        mask = dist <= 1.0
        inten = np.ones_like(dist)
    elif cls == 1:  # elongated, striped along its long axis
        a, b = r * 1.5, r * 0.6
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        inten = 0.65 + 0.35 * np.sin(u * (2.2 * np.pi / r * 1.2)) ** 2
    elif cls == 2:  # spiculated: radius modulated by spikes, speckled
        ang = np.arctan2(v, u)
        spikes = rng.integers(5, 9)
        edge = r * (0.75 + 0.35 * np.abs(np.sin(spikes * ang / 2)) ** 3)
        mask = np.hypot(u, v) <= edge
        inten = 0.7 + 0.3 * (rng.random(u.shape) > 0.5)
    else:  # ring: bright rim, dark core
        dist = np.hypot(u, v) / r
        mask = dist <= 1.0
        inten = np.where(dist > 0.6, 1.0, 0.35)
    return mask, inten


def _glyph(cls: int, s: int) -> np.ndarray:
    g = np.zeros((s, s), dtype=bool)
    t = max(1, s // 4)
    if cls == 0:  # "="
        g[t - 1 : t + t - 1, :] = True
        g[s - 2 * t + 1 : s - t + 1, :] = True
    elif cls == 1:  # "||"
        g[:, t - 1 : t + t - 1] = True
        g[:, s - 2 * t + 1 : s - t + 1] = True
    elif cls == 2:  # "+"
        g[s // 2 - t // 2 : s // 2 - t // 2 + t, :] = True
        g[:, s // 2 - t // 2 : s // 2 - t // 2 + t] = True
    else:  # hollow square
        g[:t, :] = g[-t:, :] = g[:, :t] = g[:, -t:] = True
    return g


def synth_scan(
    rng: np.random.Generator, cls: int, size: int, marker: int | None, lesion_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 [size, size] scan with a lesion of class `cls` and its ROI mask.
    `marker` is the glyph to burn in (a class index) or None; `lesion_scale` multiplies the
    lesion's radius (8-14% of the side at 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Body: an ellipse of smooth tissue made of a few broad Gaussian blobs.
    by, bx = size / 2 + rng.normal(0, size * 0.02, 2)
    ry, rx = size * rng.uniform(0.38, 0.46, 2)
    body = ((yy - by) / ry) ** 2 + ((xx - bx) / rx) ** 2 <= 1.0
    tissue = np.full((size, size), 0.35)
    for _ in range(4):
        gy, gx = rng.uniform(0.2, 0.8, 2) * size
        gs = rng.uniform(0.1, 0.3) * size
        tissue += rng.uniform(-0.12, 0.12) * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * gs * gs))
    img = np.where(body, tissue, 0.05)
    # Lesion inside the body.
    r = size * rng.uniform(0.08, 0.14) * lesion_scale
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(0, 0.55) * min(ry, rx) - r * 0.2
    cy, cx = by + max(rad, 0) * np.sin(ang), bx + max(rad, 0) * np.cos(ang)
    mask, inten = _lesion(rng, cls, yy, xx, cy, cx, r)
    mask &= body
    contrast = rng.uniform(0.25, 0.45)
    img = np.where(mask, img + contrast * inten, img)
    img = img + rng.normal(0, 0.04, img.shape)
    if marker is not None:
        s = max(4, size // 8)
        corner = rng.integers(4)
        y0 = 1 if corner < 2 else size - s - 1
        x0 = 1 if corner % 2 == 0 else size - s - 1
        img[y0 : y0 + s, x0 : x0 + s][_glyph(marker, s)] = 1.0
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask.astype(np.uint8)


def synth_description(
    seed: int,
    split: str,
    num_classes: int,
    marker_fraction: float,
    marker_agreement: float,
    lesion_scale: float = 1.0,
) -> str:
    """The description a synthetic pool's manifest carries: what made it (a pool is reused only
    when it matches)."""
    return (
        f"synthetic {split} split: seed={seed}, classes={num_classes}, "
        f"marker_fraction={marker_fraction}, marker_agreement="
        f"{marker_agreement if split == 'train' else 'none (random)'}"
        + (f", lesion_scale={lesion_scale}" if lesion_scale != 1.0 else "")
    )


def synth_pool(
    out: str | os.PathLike[str],
    size: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    channels: int = 1,
    num_classes: int = 3,
    marker_fraction: float = 0.7,
    marker_agreement: float = 0.95,
    lesion_scale: float = 1.0,
    split: str = "train",
    shard_size: int = 8192,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Pool:
    """Write a synthetic pool of `size` scans to `out` and open it.

    split "train": the tag agrees with the class with probability `marker_agreement`;
    split "test": the tag's glyph is independent of the class (the shortcut fails there).
    `channels` > 1 repeats the grayscale scan, as X-rays are fed to three-channel networks.
    """
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise InvalidArgument(f"num_classes must be in [2, {len(CLASS_NAMES)}], got {num_classes}")
    if split not in ("train", "test"):
        raise InvalidArgument(f"split must be 'train' or 'test', got {split!r}")
    if size < 1 or image_size < 16 or channels < 1:
        raise InvalidArgument("size must be >= 1, image_size >= 16 and channels >= 1")
    if not (0 <= marker_fraction <= 1 and 0 <= marker_agreement <= 1):
        raise InvalidArgument("marker_fraction and marker_agreement must be in [0, 1]")
    if not 0.25 <= lesion_scale <= 3:
        raise InvalidArgument(f"lesion_scale must be in [0.25, 3], got {lesion_scale}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.permutation(np.arange(size) % num_classes)
    prefix = "scan" if split == "train" else "test"
    desc = synth_description(seed, split, num_classes, marker_fraction, marker_agreement, lesion_scale)
    with PoolWriter(
        out,
        image_shape=(channels, image_size, image_size),
        class_names=CLASS_NAMES[:num_classes],
        with_labels=True,
        shard_size=shard_size,
        overwrite=overwrite,
        description=desc,
    ) as writer:
        batch = 256
        for start in range(0, size, batch):
            n = min(batch, size - start)
            images = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
            rois = np.empty((n, image_size, image_size), dtype=np.uint8)
            for j in range(n):
                cls = int(labels[start + j])
                marker = None
                if rng.random() < marker_fraction:
                    if split == "train" and rng.random() < marker_agreement:
                        marker = cls
                    elif split == "train":
                        marker = int(rng.choice([k for k in range(num_classes) if k != cls]))
                    else:
                        marker = int(rng.integers(num_classes))
                images[j, :], rois[j] = synth_scan(rng, cls, image_size, marker, lesion_scale)
            ids = [f"{prefix}-{i:07d}" for i in range(start, start + n)]
            writer.add(ids, images, rois, labels[start : start + n])
            if progress is not None:
                progress(n)
    return Pool(Path(out))
