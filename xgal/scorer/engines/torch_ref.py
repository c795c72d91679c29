"""The PyTorch reference engine: eager Grad-CAM with a forward hook and autograd.

It shares nothing with the export's gradient path (no tracing, no decomposition, no ONNX):
the activation is whatever the hooked layer returned and its gradient comes from eager
autograd; the post-processing is done in float64 NumPy. Agreement between this engine and an
exported graph is therefore evidence that the export is right. Imports torch: tests and
checks only, never a scorer replica's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xgal.core.contract import CAM_EPS, CAM_METHODS, PIXEL_SCALE, ScoringGraphInfo
from xgal.scorer.engines.base import BatchScores, Engine, cam_range, no_learned_roi


class TorchReferenceEngine(Engine):
    name = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        target_layer: str,
        *,
        image_shape: Sequence[int],
        pixel_dtype: str = "uint8",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        cam_method: str = "gradcam",
        device: str | torch.device = "cpu",
        roi_threshold: float = 0.5,
    ) -> None:
        """`device`: where the network, its gradients and the map run ("cuda" for the eager
        baseline a GPU engine is set against); the model is moved there."""
        if cam_method not in CAM_METHODS:
            raise ValueError(f"cam_method must be one of {CAM_METHODS}, got {cam_method!r}")
        self.cam_method = cam_method
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.layer = model.get_submodule(target_layer)
        c, h, w = (int(v) for v in image_shape)
        self.scale = PIXEL_SCALE[pixel_dtype]
        self.mean = torch.tensor(mean if mean is not None else [0.0] * c, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * c, device=self.device).view(1, c, 1, 1)
        with torch.no_grad():
            k = int(model(torch.zeros(1, c, h, w, device=self.device)).shape[1])
        self.info = ScoringGraphInfo(
            class_names=tuple(class_names or [f"class{i}" for i in range(k)]),
            input_shape=(c, h, w),
            pixel_dtype=pixel_dtype,
            cam_shape=(0, 0),
            target_layer=target_layer,
            head=str(getattr(model, "head_kind", "unknown")),
            arch=str(getattr(model, "arch", "unknown")),
            version="reference",
            cam_method=cam_method,
            roi_head=str(getattr(model, "roi_head_kind", "none")),
            roi_threshold=roi_threshold,
        )

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
        self.check_batch(image, roi, target)
        if (want_learned or want_roi_map) and not self.info.has_learned_roi:
            raise no_learned_roi("the reference model")
        x = (torch.from_numpy(image.astype(np.float32)).to(self.device) / self.scale - self.mean) / self.std
        stored: dict[str, torch.Tensor] = {}
        handle = self.layer.register_forward_hook(lambda _m, _i, out: stored.__setitem__("a", out))
        try:
            with torch.enable_grad():
                if self.info.has_learned_roi:
                    logits, roi_logits = self.model.forward_with_roi(x)
                else:
                    logits, roi_logits = self.model(x), None
                acts = stored["a"]
                chosen = (
                    logits.argmax(1)
                    if target is None
                    else torch.where(
                        torch.from_numpy(target).to(self.device) >= 0,
                        torch.from_numpy(target).to(self.device),
                        logits.argmax(1),
                    )
                )
                picked = logits.gather(1, chosen.view(-1, 1)).sum()
                (grads,) = torch.autograd.grad(picked, acts)
        finally:
            handle.remove()

        z = logits.detach().double().cpu().numpy()
        z = z - z.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        entropy = -(probs * np.log(np.clip(probs, 1e-300, None))).sum(1)

        cam_t = _cam(self.cam_method, acts.detach(), grads.detach())
        up = F.interpolate(cam_t[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)
        up64 = up[:, 0].double().cpu().numpy()
        cam = cam_t.cpu().numpy()
        lo = up64.min(axis=(1, 2), keepdims=True)
        hi = up64.max(axis=(1, 2), keepdims=True)
        cam01 = (up64 - lo) / (hi - lo + CAM_EPS)
        dice, area = _dice(cam01, roi)
        learned_dice = learned_area = roi_prob = None
        if roi_logits is not None:
            roi_prob = 1 / (1 + np.exp(-roi_logits.detach().double().cpu().numpy()))
            learned_dice, learned_area = _dice(cam01, roi_prob >= self.info.roi_threshold)
        return BatchScores(
            probs=probs.astype(np.float32),
            entropy=entropy.astype(np.float32),
            dice=dice.astype(np.float32),
            roi_area=area.astype(np.float32),
            cam=cam.astype(np.float32) if want_cam else None,
            cam_range=cam_range(cam),
            embedding=acts.detach().float().mean(dim=(2, 3)).cpu().numpy() if want_embedding else None,
            view_probs=self._views(x) if want_views else None,
            learned_dice=_f32(learned_dice if want_learned else None),
            learned_area=_f32(learned_area if want_learned else None),
            roi_prob=_f32(roi_prob if want_roi_map else None),
        )

    def _views(self, x: torch.Tensor) -> np.ndarray:
        """[N, 4, K]: the image, flipped left-right, up-down and both (the graph's order)."""
        with torch.no_grad():
            views = [x, x.flip(-1), x.flip(-2), x.flip(-2).flip(-1)]
            return torch.stack([self.model(v).softmax(1) for v in views], 1).float().cpu().numpy()


def _f32(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else values.astype(np.float32)


def _dice(cam01: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft Dice of [0, 1] maps against masks (0 where both are empty) and the masks' areas."""
    r = roi.astype(np.float64)
    area = r.sum(axis=(1, 2))
    denom = cam01.sum(axis=(1, 2)) + area
    return np.where(denom > 0, 2 * (cam01 * r).sum(axis=(1, 2)) / np.where(denom > 0, denom, 1), 0), area


def _cam(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The map [N, h, w] from activations and gradients [N, C, h, w], written out here again (not
    imported from the trainer) so that parity with a graph means something. In float32, as the
    graph computes it: a float64 reference differs from any float32 graph by the cancellation in
    Σ_k w_k A_k, not by a fault of the export."""
    if method == "gradcam":
        return torch.relu(torch.einsum("nc,nchw->nhw", g.mean(dim=(2, 3)), a))
    if method == "gradcam++":
        g2, g3 = g**2, g**3
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(g != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
        weights = (alpha * torch.relu(g)).sum(dim=(2, 3))
        return torch.relu(torch.einsum("nc,nchw->nhw", weights, a))
    if method == "hirescam":
        return torch.relu((g * a).sum(1))
    return torch.relu((torch.relu(g) * a).sum(1))  # layercam
