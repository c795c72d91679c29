"""Engine-level rows (one batch in memory): the fp32 scoring graph against the forward-only
graph, its ceiling, and against the eager PyTorch Grad-CAM baselines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xgal.bench.record import Recorder
from xgal.bench.timing import open_engine, timed_in_turn


def export_models(rec: Recorder) -> tuple[Any, Path, Path, str]:
    """The bench's untrained network (seeded) and its scoring and forward-only graphs:
    (torch model, scoring graph, forward graph, target layer)."""
    import torch

    from xgal.export import export_forward_graph, export_scoring_graph
    from xgal.train.nets import build_model, default_target_layer

    cfg = rec.cfg
    mean, std = cfg.mean_std
    torch.manual_seed(0)
    model = build_model(cfg.arch, "linear", 3, in_channels=cfg.channels).eval()
    layer = default_target_layer(cfg.arch)
    c, s = cfg.channels, cfg.image_size
    rec.log(f"exporting {cfg.arch} at {c}x{s}x{s} (scoring graph and forward-only) ...")
    scoring = export_scoring_graph(
        model, layer, rec.work / "scoring.onnx", image_shape=cfg.image_shape, mean=mean, std=std
    )
    forward = export_forward_graph(
        model, rec.work / "forward.onnx", image_shape=cfg.image_shape, mean=mean, std=std
    )
    return model, scoring, forward, layer


def engine_rows(
    rec: Recorder, scoring: Path, forward: Path, batch: dict[str, np.ndarray], flops: dict[str, float]
) -> tuple[Any, dict[str, float]]:
    """The scoring graph and the forward-only graph timed in turn on `batch`; returns the fp32
    scoring engine (the reference of every later row) and the ratio `scoring_vs_forward`."""
    from xgal.scorer.engines.ort import OnnxRuntimeEngine

    cfg = rec.cfg
    b, t = len(batch["ids"]), cfg.n_threads
    engine = open_engine(scoring, cfg.providers, t)
    rec.extra["providers"] = engine.providers
    fwd = OnnxRuntimeEngine.plain_session(forward, t, providers=cfg.providers, spinning=False)
    sec, sec_fwd = timed_in_turn(
        [
            lambda: engine.run(batch["images"], batch["rois"]),
            lambda: fwd.run(["probs"], {"image": batch["images"]}),
        ],
        cfg.repeats,
    )
    score_row = rec.row(
        "engine: scoring graph fp32", sec, b, batch=b, threads=t, flops_per_image=flops["scoring"]
    )
    fwd_row = rec.row(
        "engine: forward-only graph fp32", sec_fwd, b, batch=b, threads=t, flops_per_image=flops["forward"]
    )
    return engine, {"scoring_vs_forward": score_row["images_per_s"] / fwd_row["images_per_s"]}


def baseline_rows(
    rec: Recorder,
    model: Any,
    layer: str,
    batch: dict[str, np.ndarray],
    score: Callable[[], object],
    device: str = "cpu",
) -> dict[str, float]:
    """Each eager baseline is timed in turn with `score` (one batch through the fp32 scoring
    engine), and its ratio comes from that pair: rows timed minutes apart would carry the
    machine's drift in their ratio. `device` is where the eager code runs (the engine's)."""
    import torch

    from xgal.scorer.engines.torch_ref import TorchReferenceEngine

    cfg = rec.cfg
    torch.set_num_threads(cfg.n_threads)
    mean, std = cfg.mean_std
    ref = TorchReferenceEngine(model, layer, image_shape=cfg.image_shape, mean=mean, std=std, device=device)
    rec.extra["eager_device"] = device
    n = len(batch["ids"])

    def scoring_vs(name: str, baseline: Callable[[], object]) -> float:
        sec_score, sec = timed_in_turn([score, baseline], max(2, cfg.repeats // 2))
        rec.row(
            name,
            sec,
            n,
            batch=n,
            threads=cfg.n_threads,
            device=device,
            scoring_images_per_s_in_turn=n / sec_score,
        )
        return sec / sec_score

    out = {
        "scoring_vs_eager": scoring_vs(
            "engine: eager PyTorch Grad-CAM (reference)",
            lambda: ref.run(batch["images"], batch["rois"]),
        )
    }
    try:
        from pytorch_grad_cam import GradCAM  # type: ignore[import-not-found]
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or its torchvision failing beside this torch
        reason = f"pytorch-grad-cam not usable here: {type(exc).__name__}: {exc}".splitlines()[0]
        rec.skip("pytorch_grad_cam", reason)
        return out
    x = (torch.from_numpy(batch["images"].astype(np.float32)).to(device) / 255.0 - ref.mean) / ref.std
    cam = GradCAM(model=model, target_layers=[model.get_submodule(layer)])
    targets = [ClassifierOutputTarget(0)] * len(x)
    out["scoring_vs_pytorch_grad_cam"] = scoring_vs(
        "engine: pytorch-grad-cam", lambda: cam(input_tensor=x, targets=targets)
    )
    return out
