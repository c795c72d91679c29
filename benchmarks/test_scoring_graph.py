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

from xgal.export import export_forward_graph, export_scoring_graph
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.train.nets import build_model, default_target_layer

ARCH = os.environ.get("XGAL_BENCH_ARCH", "resnet18")
SIZE = int(os.environ.get("XGAL_BENCH_SIZE", "224"))
BATCH = int(os.environ.get("XGAL_BENCH_BATCH", "32"))
THREADS = int(os.environ.get("XGAL_BENCH_THREADS", str(os.cpu_count() or 2)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GROUP = f"{ARCH}-{SIZE}px-batch{BATCH}-threads{THREADS}"
LAYER = default_target_layer(ARCH)


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


def _engine(path):
    # Paired rows run two sessions in turn; a spinning session would slow the other.
    return OnnxRuntimeEngine(
        path, providers=["CPUExecutionProvider"], intra_op_threads=THREADS, spinning=False
    )


@pytest.fixture(scope="module")
def forward_only(setup):
    """One batch through the forward-only graph: the group's baseline and the scoring graph's pair."""
    _, _, forward, images, _ = setup
    sess = OnnxRuntimeEngine.plain_session(forward, THREADS, spinning=False)
    return lambda: sess.run(["probs"], {"image": images})


@pytest.fixture(scope="module")
def scoring_fp32(setup):
    """One batch through the fp32 scoring graph: the reduced-precision and eager rows' pair."""
    _, scoring, _, images, rois = setup
    engine = _engine(scoring)
    return lambda: engine.run(images, rois)


def _run(measure, fn, baseline=False, paired_with=None, paired_label=""):
    measure(
        fn,
        group=GROUP,
        images=BATCH,
        baseline=baseline,
        paired_with=paired_with,
        paired_label=paired_label,
        rounds=8,
        warmup=2,
    )


def test_forward_only_onnx(measure, forward_only):
    _run(measure, forward_only, baseline=True)


def test_scoring_graph_onnx(measure, scoring_fp32, forward_only):
    _run(measure, scoring_fp32, paired_with=forward_only, paired_label="forward-only")


def test_scoring_graph_int8_onnx(measure, setup, scoring_fp32, tmp_path):
    """INT8 (operator format, calibrated on the built-in synthetic scans); its ranking
    agreement with fp32 is measured by `xgal bench`."""
    from xgal.pool.synth import synth_pool
    from xgal.scorer.precision.int8 import quantize_scoring_graph

    _, scoring, _, images, rois = setup
    scans = synth_pool(tmp_path / "scans", 128, image_size=SIZE, channels=3, split="test")
    int8 = quantize_scoring_graph(scoring, scans, tmp_path / "int8.onnx", calibration=128)
    engine = _engine(int8)
    _run(measure, lambda: engine.run(images, rois), paired_with=scoring_fp32, paired_label="scoring fp32")


def test_scoring_graph_learned_roi_onnx(measure, setup, scoring_fp32, tmp_path):
    """The same network with a `shared` ROI head (issue 26), its learned ROI and misalignment
    fetched (`--roi learned`): what the head costs a pool, paired with the graph without it."""
    model, _, _, images, rois = setup
    torch.manual_seed(0)
    headed = build_model(ARCH, "linear", 3, in_channels=3, roi_head="shared").eval()
    headed.load_state_dict(model.state_dict(), strict=False)  # the same trunk and class head
    path = export_scoring_graph(
        headed, LAYER, tmp_path / "learned.onnx", image_shape=(3, SIZE, SIZE), mean=MEAN, std=STD
    )
    engine = _engine(path)
    _run(
        measure,
        lambda: engine.run(images, rois, want_learned=True),
        paired_with=scoring_fp32,
        paired_label="scoring fp32, no head",
    )


def test_eager_reference_gradcam(measure, setup, scoring_fp32):
    model, _, _, images, rois = setup
    ref = TorchReferenceEngine(model, LAYER, image_shape=(3, SIZE, SIZE), mean=MEAN, std=STD)
    _run(measure, lambda: ref.run(images, rois), paired_with=scoring_fp32, paired_label="scoring fp32")
