"""The engine interface: pixels and ROIs in, the few floats per image the ranking needs out."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from xgal.core.contract import EMBEDDING, VIEW_PROBS, NotAScoringGraphError, ScoringGraphInfo
from xgal.core.errors import InvalidArgument


@dataclass
class BatchScores:
    probs: np.ndarray  # [N, K] float32
    entropy: np.ndarray  # [N] nats
    dice: np.ndarray  # [N] soft Dice of the [0, 1]-scaled, upsampled CAM vs the ROI
    roi_area: np.ndarray  # [N] pixels inside the ROI; 0 = no ROI
    cam: np.ndarray | None = None  # [N, h, w] ReLU'd, unscaled Grad-CAM, only when asked for
    # [N] max − min of that map: at most CAM_EPS, the map carries no evidence (a flat map, which
    # min–max scaling turns into zeros: Dice 0 whatever the ROI). None: not measured.
    cam_range: np.ndarray | None = None
    embedding: np.ndarray | None = None  # [N, D] pooled target-layer activations, when asked for
    view_probs: np.ndarray | None = None  # [N, V, K] probabilities of flipped views, when asked for
    # The learned ROI (a graph with an ROI head, when asked for): the soft Dice of the scaled CAM
    # against the predicted mask, the mask's pixel count, and (only when asked) the soft map.
    learned_dice: np.ndarray | None = None  # [N]
    learned_area: np.ndarray | None = None  # [N]; 0 = the head found nothing
    roi_prob: np.ndarray | None = None  # [N, H, W] in [0, 1]

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    def rows(self, lo: int, hi: int) -> BatchScores:
        """Samples [lo, hi) of the batch, without the per-pixel map."""
        cut = None if self.cam_range is None else self.cam_range[lo:hi]
        emb = None if self.embedding is None else self.embedding[lo:hi]
        views = None if self.view_probs is None else self.view_probs[lo:hi]
        return BatchScores(
            self.probs[lo:hi],
            self.entropy[lo:hi],
            self.dice[lo:hi],
            self.roi_area[lo:hi],
            None,
            cut,
            emb,
            views,
            None if self.learned_dice is None else self.learned_dice[lo:hi],
            None if self.learned_area is None else self.learned_area[lo:hi],
        )


def cam_range(cam: np.ndarray) -> np.ndarray:
    """Per sample, max − min of a [N, h, w] map (float64)."""
    flat = cam.reshape(cam.shape[0], -1).astype(np.float64)
    return flat.max(axis=1) - flat.min(axis=1) if flat.shape[1] else np.zeros(cam.shape[0])


def no_embedding(where: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where} has no '{EMBEDDING}' output, which a diversity selection needs: it was exported "
        "before xgal exported embeddings; export the model again"
    )


def no_views(where: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where} has no '{VIEW_PROBS}' output, which the uncertainties over views (bald, "
        "mean_entropy) need: export it with views (ScoringGraphExporter(views=4))"
    )


def no_learned_roi(where: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where} has no learned ROI (its classifier has no ROI head), which --roi learned and "
        "expert-else-learned need: train with an ROI head (--roi-head shared) and export again"
    )


class Engine(abc.ABC):
    """Runs one scoring graph. Thread-safe `run`; `close` releases the session."""

    name: str
    info: ScoringGraphInfo

    @abc.abstractmethod
    def run(
        self,
        image: np.ndarray,
        roi: np.ndarray,
        target: np.ndarray | None = None,
        *,
        want_cam: bool = False,
        want_embedding: bool = False,
        want_views: bool = False,
        want_learned: bool = False,
        want_roi_map: bool = False,
    ) -> BatchScores:
        """Score a batch: image [N, C, H, W] (the graph's pixel dtype), roi [N, H, W] uint8,
        target [N] int64 (-1 = predicted class) or None for the predicted class. The map, the
        embedding, the views' probabilities, the learned ROI's Dice and area (`want_learned`) and
        its soft map (`want_roi_map`) come back only when asked for (a graph without the output
        refuses)."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Release what the engine holds."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_batch(self, image: np.ndarray, roi: np.ndarray, target: np.ndarray | None) -> None:
        """Reject a malformed batch with a message that names the mismatch."""
        c, h, w = self.info.input_shape
        if image.ndim != 4 or tuple(image.shape[1:]) != (c, h, w):
            raise ValueError(f"image batch has shape {image.shape}, the model wants [N, {c}, {h}, {w}]")
        if image.dtype != np.dtype(self.info.pixel_dtype):
            raise ValueError(f"image dtype is {image.dtype}, the model wants {self.info.pixel_dtype}")
        if roi.shape != (image.shape[0], h, w):
            raise ValueError(f"roi batch has shape {roi.shape}, expected {(image.shape[0], h, w)}")
        if roi.dtype != np.uint8:
            raise ValueError(f"roi dtype is {roi.dtype}, expected uint8 (1 inside the region)")
        if target is not None and target.shape != (image.shape[0],):
            raise ValueError(f"target has shape {target.shape}, expected {(image.shape[0],)}")
        if target is not None and target.size and int(target.max()) >= self.info.num_classes:
            raise ValueError(f"target class {int(target.max())} >= {self.info.num_classes} classes")

    def self_check(self, where: str = "model") -> None:
        """Run a small probe batch and check what the graph returns against its metadata: a graph
        whose outputs are NaN, or that computes another number of classes than it declares, is
        refused here (at publish and load) rather than ranking a pool with it."""
        c, h, w = self.info.input_shape
        rng = np.random.default_rng(0)
        hi = np.iinfo(np.dtype(self.info.pixel_dtype)).max
        image = rng.integers(0, hi, (2, c, h, w), dtype=np.int64).astype(self.info.pixel_dtype)
        roi = np.zeros((2, h, w), dtype=np.uint8)
        roi[0, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1  # the second sample has no ROI
        learned = self.info.has_learned_roi
        try:
            out = self.run(image, roi, want_learned=learned, want_roi_map=learned)
        except Exception as exc:  # the graph is unusable however it fails: say why
            raise NotAScoringGraphError(f"{where} fails on a probe batch: {exc}") from None
        k = self.info.num_classes
        problems = []
        if out.probs.shape != (2, k):
            problems.append(f"probs has shape {list(out.probs.shape)}, the metadata declares {k} classes")
        for name in ("probs", "entropy", "dice", "roi_area"):
            values = getattr(out, name)
            if values.shape[0] != 2 or not np.all(np.isfinite(values)):
                problems.append(f"{name} is not finite for every sample")
        if not problems and not np.allclose(out.probs.sum(1), 1.0, atol=1e-3):
            problems.append("probs do not sum to 1")
        if not problems and (np.any(out.dice < -1e-6) or np.any(out.dice > 1 + 1e-5)):
            problems.append("dice lies outside [0, 1]")
        if not problems and not np.allclose(out.roi_area, roi.sum(axis=(1, 2))):
            problems.append("roi_area is not the ROI's pixel count")
        if learned and not problems:
            assert out.learned_dice is not None and out.learned_area is not None and out.roi_prob is not None
            # A sigmoid in float32 may round to a hair past 1 (1.0000001 seen): not a defect.
            inside = (out.roi_prob >= -1e-5) & (out.roi_prob <= 1 + 1e-5)
            if out.roi_prob.shape != (2, h, w) or not np.all(inside):
                problems.append(f"roi_prob is not a [N, {h}, {w}] map in [0, 1]")
            elif not np.all(np.isfinite(out.learned_dice)) or not np.all(np.isfinite(out.learned_area)):
                problems.append("the learned ROI's Dice or area is not finite")
        if problems:
            raise NotAScoringGraphError(f"{where} is not a usable scoring graph: " + "; ".join(problems))
