"""The GPU paths of ONNX Runtime: the scoring graph on CUDA (with IO binding) equals the CPU's,
and its FP16 version ranks the synthetic scans as fp32 does. They run where onnxruntime-gpu
sees a CUDA device (`pip install onnxruntime-gpu` in place of onnxruntime)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.ranking import ranking_agreement
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision.fp16 import half_scoring_graph
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model

CUDA = "CUDAExecutionProvider"


def _cuda_works() -> bool:
    """onnxruntime-gpu lists CUDA even where no device or cuDNN can start; a session tells."""
    if CUDA not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, "CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any failure to start means: no usable CUDA here
        return False
    return session.get_providers()[0] == CUDA


pytestmark = pytest.mark.skipif(
    not _cuda_works(),
    reason=f"needs onnxruntime-gpu and a usable CUDA device; providers here: {ort.get_available_providers()}",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    torch.manual_seed(0)
    model = build_model("resnet18", "linear", 3, in_channels=3).eval()
    fp32 = export_scoring_graph(model, "features.layer4.1.conv2", root / "m.onnx", image_shape=(3, 64, 64))
    scans = synth_pool(root / "scans", 256, image_size=64, channels=3, split="test")
    return fp32, scans


def test_cuda_equals_cpu(setup):
    fp32, scans = setup
    cpu = OnnxRuntimeEngine(fp32, providers=["CPUExecutionProvider"])
    gpu = OnnxRuntimeEngine(fp32, providers=[CUDA, "CPUExecutionProvider"])
    assert gpu.providers[0] == CUDA and gpu.io_binding
    data = scans.read(0, 64)
    a = cpu.run(data["images"], data["rois"], want_cam=True)
    b = gpu.run(data["images"], data["rois"], want_cam=True)
    for name in ("probs", "entropy", "dice", "cam"):
        # cuDNN may pick TF32 or other conv algorithms: close, not bit-equal.
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-3, err_msg=name)
    np.testing.assert_array_equal(b.roi_area, a.roi_area)


def test_fp16_on_cuda_ranks_as_fp32(setup, tmp_path):
    fp32, scans = setup
    half = half_scoring_graph(fp32, tmp_path / "h.onnx")
    ref = OnnxRuntimeEngine(fp32, providers=[CUDA, "CPUExecutionProvider"])
    fp16 = OnnxRuntimeEngine(half, providers=[CUDA, "CPUExecutionProvider"])
    cfg = AcquisitionConfig()
    a = score_pool(ref, scans, cfg, 50, return_all=True).all
    b = score_pool(fp16, scans, cfg, 50, return_all=True).all
    agree = ranking_agreement(a.ids, a.score, b.ids, b.score, 50)
    assert agree["spearman"] > 0.99 and agree["topk_overlap"] >= 0.9, agree
