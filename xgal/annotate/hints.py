"""The pictures a radiologist is shown: the hint (scan, Grad-CAM, ROI outline, prediction) and
the scan itself at the pool's size, to draw a mask on."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

HINT_SIDE = 256  # pixels: a 64x64 scan is too small to judge on a screen
_BAR = 40  # the colour scale's strip at the right
_LINE = 18  # a line of text above (the prediction) and below (what the outline is)
# The outline's colour and legend, by what the ROI is (a row's roi_source).
OUTLINES = {
    "expert": ((0.0, 1.0, 0.0), "green: the expert's ROI"),
    "body": ((0.0, 1.0, 1.0), "cyan: the body found in the scan"),
    "learned": ((1.0, 0.0, 1.0), "magenta: the ROI the model predicts"),
}


def hint_image(
    image: np.ndarray, roi: np.ndarray, cam: np.ndarray | None, title: str, *, source: str = "expert"
) -> Image.Image:
    """The scan (first channel) in gray, the Grad-CAM blended over it in jet with its colour
    scale beside it, the outline of the ROI the misalignment was measured against (`source`,
    OUTLINES: green the expert's, cyan the body found in the scan, magenta the one the model's
    ROI head predicts) and `title` on top."""
    import matplotlib
    from PIL import Image, ImageDraw

    gray = stretch(image[0])
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if cam is not None:
        heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
        rgb = 0.6 * rgb + 0.4 * heat
    inside = roi > 0
    colour, legend = OUTLINES[source]
    rgb[outline(inside)] = colour
    img = Image.fromarray((rgb * 255).astype(np.uint8)).resize((HINT_SIDE, HINT_SIDE), Image.NEAREST)
    canvas = Image.new("RGB", (HINT_SIDE + _BAR, HINT_SIDE + 2 * _LINE), "black")
    canvas.paste(img, (0, _LINE))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill="white")
    if not inside.any():
        legend = "no ROI to outline"
    draw.text((4, HINT_SIDE + _LINE + 3), legend, fill="white")
    if cam is not None:  # the scale: Grad-CAM 1 (top) to 0 (bottom), the blend's colours
        ramp = matplotlib.colormaps["jet"](np.linspace(1, 0, HINT_SIDE - 24))[:, :3]
        bar = np.repeat((0.6 * 0.5 + 0.4 * ramp)[:, None, :], 10, axis=1)
        canvas.paste(Image.fromarray((bar * 255).astype(np.uint8)), (HINT_SIDE + 6, _LINE + 12))
        draw.text((HINT_SIDE + 18, _LINE + 8), "1", fill="white")
        draw.text((HINT_SIDE + 18, HINT_SIDE + _LINE - 18), "0", fill="white")
        draw.text((HINT_SIDE + 4, _LINE - 14), "CAM", fill="white")
    return canvas


def png_bytes(picture: Image.Image) -> bytes:
    """A PIL picture as PNG bytes, to be written with `durable.atomic_write` (never through a
    link someone planted in the run folder)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def scan_image(image: np.ndarray) -> Image.Image:
    """The scan at its own size, for drawing a mask on: 8 bits, its first channel stretched."""
    from PIL import Image

    return Image.fromarray((stretch(image[0]) * 255).astype(np.uint8))


def stretch(channel: np.ndarray) -> np.ndarray:
    """To [0, 1] by the image's own 1st–99th percentiles: a 16-bit CT (HU + 1024) stored in
    0–65535 would otherwise show nearly black."""
    v = channel.astype(np.float64)
    lo, hi = np.percentile(v, [1, 99])
    return np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)


def outline(inside: np.ndarray) -> np.ndarray:
    """The pixels of a bool mask that touch its outside (4-neighbours): its one-pixel outline."""
    m = np.pad(inside, 1)
    return inside & ~(m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
