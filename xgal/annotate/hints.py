"""The pictures a radiologist is shown: the hint (scan, Grad-CAM, ROI outline, prediction) and
the scan itself at the pool's size, to draw a mask on."""

from __future__ import annotations

import numpy as np

HINT_SIDE = 256  # pixels: a 64x64 scan is too small to judge on a screen


def hint_image(image: np.ndarray, roi: np.ndarray, cam: np.ndarray | None, title: str):  # noqa: ANN201
    """The scan (first channel) in gray, the Grad-CAM blended over it in jet, the ROI's outline
    in green and `title` on top: a PIL image HINT_SIDE wide."""
    import matplotlib
    from PIL import Image, ImageDraw

    gray = stretch(image[0])
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if cam is not None:
        heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
        rgb = 0.6 * rgb + 0.4 * heat
    inside = roi > 0
    edge = inside & ~_eroded(inside)
    rgb[edge] = (0.0, 1.0, 0.0)
    img = Image.fromarray((rgb * 255).astype(np.uint8)).resize((HINT_SIDE, HINT_SIDE), Image.NEAREST)
    canvas = Image.new("RGB", (HINT_SIDE, HINT_SIDE + 18), "black")
    canvas.paste(img, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="white")
    return canvas


def scan_image(image: np.ndarray):  # noqa: ANN201 - a PIL image
    """The scan at its own size, for drawing a mask on: 8 bits, its first channel stretched."""
    from PIL import Image

    return Image.fromarray((stretch(image[0]) * 255).astype(np.uint8))


def stretch(channel: np.ndarray) -> np.ndarray:
    """To [0, 1] by the image's own 1st–99th percentiles: a 16-bit CT (HU + 1024) stored in
    0–65535 would otherwise show nearly black."""
    v = channel.astype(np.float64)
    lo, hi = np.percentile(v, [1, 99])
    return np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)


def _eroded(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
