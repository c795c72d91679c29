"""Scoring graph vs forward-only graph vs eager Grad-CAM: same network, batch and threads.

ResNet-18 at 224x224x3, batch 32, two threads (this machine's cores). The forward-only ONNX
graph (uint8 in, probabilities out) is the ceiling the scoring graph is measured against.

    .venv/bin/python -m pytest benchmarks --benchmark-only
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.trainer.export import export_forward_graph, export_scoring_graph
from xgal.trainer.nets import build_model

ARCH = os.environ.get("XGAL_BENCH_ARCH", "resnet18")
SIZE = int(os.environ.get("XGAL_BENCH_SIZE", "224"))
BATCH = int(os.environ.get("XGAL_BENCH_BATCH", "32"))
THREADS = int(os.environ.get("XGAL_BENCH_THREADS", str(os.cpu_count() or 2)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GROUP = f"{ARCH}-{SIZE}px-batch{BATCH}-threads{THREADS}"
LAYER = {"resnet18": "features.layer4.1.conv2"}.get(ARCH, "features.denseblock4.denselayer16.conv2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("bench")
    model = build_model(ARCH, "linear", 3, in_channels=3).eval()
    scoring = export_scoring_graph(
        model, LAYER, root / "scoring.onnx", image_shape=(3, SIZE, SIZE), mean=MEAN, std=STD
    )
    export_forward_graph(model, root / "forward.onnx", image_shape=(3, SIZE, SIZE), mean=MEAN, std=STD)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, 3, SIZE, SIZE), dtype=np.uint8)
    rois = np.zeros((BATCH, SIZE, SIZE), dtype=np.uint8)
    rois[:, SIZE // 4 : SIZE // 2, SIZE // 4 : SIZE // 2] = 1
    return model, scoring, root / "forward.onnx", images, rois


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(measure, fn, baseline=False):
    measure(fn, group=GROUP, images=BATCH, baseline=baseline, rounds=8, warmup=2)


def test_forward_only_onnx(measure, setup):
    _, _, forward, images, _ = setup
    sess = _session(forward)
    _run(measure, lambda: sess.run(["probs"], {"image": images}), baseline=True)


def test_scoring_graph_onnx(measure, setup):
    _, scoring, _, images, rois = setup
    engine = OnnxRuntimeEngine(scoring, providers=["CPUExecutionProvider"], intra_op_threads=THREADS)
    _run(measure, lambda: engine.run(images, rois))


def test_scoring_graph_int8_onnx(measure, setup, tmp_path):
    """INT8 (operator format, calibrated on the built-in synthetic scans); its ranking
    agreement with fp32 is measured by `xgal bench`."""
    from xgal.bench.quantize import quantize_scoring_graph
    from xgal.pool.synth import synth_pool

    _, scoring, _, images, rois = setup
    scans = synth_pool(tmp_path / "scans", 128, image_size=SIZE, channels=3, split="test")
    int8 = quantize_scoring_graph(scoring, scans, tmp_path / "int8.onnx", calibration=128)
    engine = OnnxRuntimeEngine(int8, providers=["CPUExecutionProvider"], intra_op_threads=THREADS)
    _run(measure, lambda: engine.run(images, rois))


def test_eager_reference_gradcam(measure, setup):
    model, _, _, images, rois = setup
    ref = TorchReferenceEngine(model, LAYER, image_shape=(3, SIZE, SIZE), mean=MEAN, std=STD)
    _run(measure, lambda: ref.run(images, rois))
