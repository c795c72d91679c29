"""A weak ROI from the image itself: the body (or field of view) as the largest bright region.

An unlabelled archive rarely has expert ROIs, and without one the misalignment term says
nothing. The body still tells something: attention on what lies outside it (burned-in text,
rulers, corner markers, the shortcuts models learn from radiographs) is misplaced whatever the
finding. The mask: Otsu's threshold on the image's intensity histogram, the largest 4-connected
bright component (a tag in a corner is not connected to the body), holes filled (a dark lesion
inside the body stays inside). scipy's ndimage does the labelling; it is imported only here.
"""

from __future__ import annotations

import numpy as np

from xgal.core.masks import roi_present

BINS = 256


def otsu_threshold(gray: np.ndarray) -> float:
    """The threshold between two intensity classes that maximises their between-class variance
    (Otsu, 1979), over a 256-bin histogram of `gray`."""
    lo, hi = float(gray.min()), float(gray.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(gray, bins=BINS, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[1:][int(np.argmax(between))])


def body_mask(image: np.ndarray) -> np.ndarray:
    """[H, W] uint8 mask (1 = body) of one image [C, H, W] (channels averaged); all zeros when
    the image is flat (no body to find)."""
    from scipy import ndimage

    gray = image.astype(np.float64).mean(axis=0)
    if gray.max() <= gray.min():
        return np.zeros(gray.shape, dtype=np.uint8)
    bright = gray > otsu_threshold(gray)
    labels, n = ndimage.label(bright)  # 4-connected
    if n == 0:
        return np.zeros(gray.shape, dtype=np.uint8)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ndimage.binary_fill_holes(labels == largest).astype(np.uint8)


def body_masks(images: np.ndarray) -> np.ndarray:
    """`body_mask` of each image of a batch [N, C, H, W] -> [N, H, W] uint8."""
    out = np.zeros((images.shape[0], *images.shape[2:]), dtype=np.uint8)
    for i in range(images.shape[0]):
        out[i] = body_mask(images[i])
    return out


def rois_for(images: np.ndarray, rois: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The ROIs the misalignment is measured against, and where the body stood in (bool [N]):
    `expert` the pool's own, `body` the body mask everywhere, `expert-else-body` the body mask
    only where the expert drew nothing."""
    if source == "expert":
        return rois, np.zeros(len(rois), dtype=bool)
    use_body = np.ones(len(rois), dtype=bool)
    if source == "expert-else-body":
        use_body = ~roi_present(rois)
    elif source != "body":
        raise ValueError(f"unknown ROI source {source!r}")
    if not use_body.any():
        return rois, use_body
    out = rois.copy()
    out[use_body] = body_masks(images[use_body])
    return out, use_body
