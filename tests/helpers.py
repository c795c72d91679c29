"""Shared test helpers: small images, models with mixed predictions, CAM post-processing, and
bounded waits on real conditions (instead of sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

T = TypeVar("T")


def blob_images(n: int, c: int, size: int, seed: int, dtype: str = "uint8") -> np.ndarray:
    """Noise plus one bright blob per image at a random place: CAMs with structure."""
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == "uint8" else 65535
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, c, size, size), dtype=dtype)
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.08, 0.25) * size
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = 0.3 * rng.random((c, size, size)) + 0.7 * blob * rng.uniform(0.3, 1.0, (c, 1, 1))
        out[i] = (np.clip(img, 0, 1) * hi).astype(dtype)
    return out


def box_rois(n: int, size: int, seed: int, empty: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    roi = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if i in empty:
            continue
        y0, x0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        roi[i, y0 : y0 + h, x0 : x0 + w] = 1
    return roi


def mix_predictions(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Adjust the head so that a batch `x` (already normalised) spans several predicted classes.

    Random networks tend to predict one class for everything; recentring the final bias (or,
    for prototypes, placing each prototype on a different sample) spreads the argmax.
    """
    head = model.head
    with torch.no_grad():
        if head.kind == "prototypical":
            emb = head.embed(model.pooled(x))
            k = head.prototypes.shape[0]
            # Push each prototype out from the batch mean past one sample: that sample (and
            # its look-alikes) then predicts the class, without sitting on the prototype.
            centre = emb.mean(0, keepdim=True)
            head.prototypes.copy_(centre + 3.0 * (emb[:k] - centre))
            return
        last = head.fc if head.kind == "linear" else head.fc2
        logits = model(x)
        last.bias -= logits.mean(0)
        last.bias += logits.std(0) * torch.linspace(-0.5, 0.5, logits.shape[1])


def normalised_upsampled(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(cam)[:, None].double(), size=size, mode="bilinear")[:, 0]
    up = up.numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return (up - lo) / (hi - lo + 1e-7)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` (a real state: a counter, a file, a process) until it is true; fail the
    test if it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:g} s"
        time.sleep(0.005)


def bounded(fn: Callable[[], T], timeout: float, what: str = "call") -> T:
    """`fn()` in a daemon thread: its result or its exception, or a test failure (not a hang)
    when it has not returned within `timeout` seconds."""
    out: list = []

    def target() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:
            out.append((False, exc))

    thread = threading.Thread(target=target, name=f"bounded-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    assert out, f"{what} did not return within {timeout:g} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value
