"""The GPU paths: the scoring graph on ONNX Runtime's CUDA provider (pixels in device buffers)
equals the CPU's, its FP16 version ranks the synthetic scans as fp32 does, and the trainer
trains with the guidance loss on CUDA and exports from the CUDA model. They run where
onnxruntime-gpu sees a CUDA device (`pip install xgal[gpu]`, in place of the CPU onnxruntime)
and PyTorch sees it too; scripts/gpu-check.sh runs them (docs/gpu.md)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.ranking import ranking_agreement
from xgal.export import export_scoring_graph
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.providers import ProviderSettings
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision.fp16 import half_scoring_graph
from xgal.train.nets import build_model

CUDA = "CUDAExecutionProvider"


def _cuda_works() -> bool:
    """onnxruntime-gpu lists CUDA even where no device or cuDNN can start; a session tells."""
    if CUDA not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", io[:1], io[1:])
    # IR 9: onnx writes its own newest IR version by default, which an older ONNX Runtime refuses.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, "CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any failure to start means: no usable CUDA here
        return False
    return session.get_providers()[0] == CUDA


pytestmark = pytest.mark.skipif(
    not (_cuda_works() and torch.cuda.is_available()),
    reason="needs onnxruntime-gpu, a usable CUDA device and PyTorch with CUDA; ONNX Runtime providers "
    f"here: {ort.get_available_providers()}, torch.cuda.is_available() = {torch.cuda.is_available()}",
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
    gpu = OnnxRuntimeEngine(
        fp32, providers=[CUDA, "CPUExecutionProvider"], settings=ProviderSettings(tf32=False)
    )
    assert gpu.providers[0] == CUDA and gpu.io_binding and gpu.device == "cuda"
    # Batches of two sizes, twice each: the device buffers are reused and must follow each batch.
    for start, n in ((0, 64), (64, 37), (101, 64), (0, 37)):
        data = scans.read(start, start + n)
        a = cpu.run(data["images"], data["rois"], want_cam=True)
        b = gpu.run(data["images"], data["rois"], want_cam=True)
        for name in ("probs", "entropy", "dice", "cam"):
            # cuDNN may pick TF32 or other conv algorithms: close, not bit-equal.
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(b.roi_area, a.roi_area)


def test_cuda_graph_on_a_fixed_batch_equals_cpu(setup, tmp_path):
    """CUDA graphs (captured at the first run, replayed after) over a fixed-batch graph: short,
    exact and split batches score as the dynamic graph on the CPU."""
    from xgal.scorer.fixed_batch import write_fixed_batch_graph

    fp32, scans = setup
    fixed = write_fixed_batch_graph(fp32, tmp_path / "m-b32.onnx", 32)
    cpu = OnnxRuntimeEngine(fp32, providers=["CPUExecutionProvider"])
    gpu = OnnxRuntimeEngine(fixed, providers=[CUDA], settings=ProviderSettings(tf32=False, cuda_graph=True))
    assert gpu.providers[0] == CUDA and gpu.cuda_graph and gpu.fixed_batch == 32
    for start, n in ((0, 32), (32, 7), (40, 70), (0, 32)):
        data = scans.read(start, start + n)
        a, b = cpu.run(data["images"], data["rois"]), gpu.run(data["images"], data["rois"])
        for name in ("probs", "entropy", "dice"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(b.roi_area, a.roi_area)


def test_trainer_on_cuda_with_guidance_exports_a_graph_equal_to_eager(tmp_path):
    """Training with the Grad-CAM guidance loss runs on CUDA, and the graph exported from the
    CUDA model scores as eager Grad-CAM on the same GPU does."""
    from xgal.scorer.engines.torch_ref import TorchReferenceEngine
    from xgal.train.fit import TrainConfig, to_input, train_classifier
    from xgal.train.nets import default_target_layer

    pool = synth_pool(tmp_path / "train", 96, image_size=64, split="train")
    data = pool.read(0, 96, ("images", "rois", "labels"))
    x = to_input(data["images"], 255.0)
    y = torch.from_numpy(data["labels"]).long()
    roi = torch.from_numpy(data["rois"]).float()
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    layer = default_target_layer("small_cnn")
    cfg = TrainConfig(steps=30, batch_size=16, alpha=0.5, device="cuda")
    history = train_classifier(model, x, y, cfg, roi=roi, target_layer=layer)
    assert next(model.parameters()).is_cuda
    assert all(np.isfinite(h["loss"]) for h in history) and history[-1]["guidance"] > 0
    graph = export_scoring_graph(model, layer, tmp_path / "cuda.onnx", image_shape=(1, 64, 64))
    assert next(model.parameters()).is_cuda  # the export works on a copy
    # fp32 on both sides: TF32 rounding (on by default in cuDNN and ONNX Runtime) is not an export fault.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = TorchReferenceEngine(model, layer, image_shape=(1, 64, 64), device="cuda")
    onnx_gpu = OnnxRuntimeEngine(
        graph, providers=[CUDA, "CPUExecutionProvider"], settings=ProviderSettings(tf32=False)
    )
    a = eager.run(data["images"][:32], data["rois"][:32], want_cam=True)
    b = onnx_gpu.run(data["images"][:32], data["rois"][:32], want_cam=True)
    for name in ("probs", "dice"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-3, err_msg=name)


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
