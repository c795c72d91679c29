"""The benchmarking tools: FLOP counting, INT8 quantization and ranking agreement, flat memory
over a pool pass, and `xgal bench` end to end on a tiny configuration (bounded)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from xgal.bench.flops import count_flops
from xgal.bench.pools import random_pool
from xgal.bench.quantize import quantize_scoring_graph, ranking_agreement
from xgal.pool.format import Pool
from xgal.core.acquisition import AcquisitionConfig
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model


def test_count_flops_conv_and_gemm():
    w = numpy_helper.from_array(np.zeros((3, 2, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.zeros((3 * 8 * 8, 5), np.float32), "fc")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["y", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5])],
        [w, fc, shape],
    )
    model = helper.make_model(graph)
    conv = 2 * (3 * 8 * 8) * (2 * 9)
    matmul = 2 * 5 * (3 * 8 * 8)
    assert count_flops(model, batch=1) == conv + matmul
    assert count_flops(model, batch=4) == 4 * (conv + matmul)


def test_ranking_agreement():
    ids = np.array(["a", "b", "c", "d"])
    same = ranking_agreement(ids, np.array([4.0, 3, 2, 1]), ids[::-1], np.array([1.0, 2, 3, 4]), 2)
    assert same == {"topk_overlap": 1.0, "spearman": pytest.approx(1.0)}
    flipped = ranking_agreement(ids, np.array([4.0, 3, 2, 1]), ids, np.array([1.0, 2, 3, 4]), 2)
    assert flipped["topk_overlap"] == 0.0 and flipped["spearman"] == pytest.approx(-1.0)


def test_int8_scoring_graph_agrees_with_fp32(tmp_path):
    pool = random_pool(tmp_path / "pool", 96, (1, 32, 32))
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    fp32 = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
    int8 = quantize_scoring_graph(fp32, pool, tmp_path / "m8.onnx", calibration=64)
    meta = {p.key: p.value for p in onnx.load(int8).metadata_props}
    assert meta["xgal.precision"] == "int8" and meta["xgal.target_layer"] == "features.stage4.0"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(int8).graph.node)
    a = score_pool(OnnxRuntimeEngine(fp32), pool, AcquisitionConfig(), 10, return_all=True).all
    b = score_pool(OnnxRuntimeEngine(int8), pool, AcquisitionConfig(), 10, return_all=True).all
    agree = ranking_agreement(a.ids, a.score, b.ids, b.score, 10)
    assert agree["spearman"] > 0.8, agree


def test_int8_formats(tmp_path):
    pool = random_pool(tmp_path / "pool", 32, (1, 32, 32))
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    fp32 = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
    ops = {}
    for fmt in ("operator", "qdq"):
        q = quantize_scoring_graph(fp32, pool, tmp_path / f"{fmt}.onnx", calibration=32, quant_format=fmt)
        ops[fmt] = [n.op_type for n in onnx.load(q).graph.node]
    # The operator format writes QLinearConv itself, and the first (pixel-reading) Conv stays float.
    assert "QLinearConv" in ops["operator"] and ops["operator"].count("Conv") >= 1
    assert "QLinearConv" not in ops["qdq"] and "DequantizeLinear" in ops["qdq"]
    with pytest.raises(ValueError, match="quant_format must be one of"):
        quantize_scoring_graph(fp32, pool, tmp_path / "x.onnx", quant_format="int4")


def test_bench_int8_and_fp16_on_synthetic_scans(tmp_path):
    from xgal.bench.run import Bench, BenchConfig

    cfg = BenchConfig(
        arch="small_cnn",
        image_size=32,
        channels=3,
        batch=16,
        pool_size=64,
        repeats=1,
        baselines=False,
        replicas=[],
        fp16=True,  # the GPU path, run on the CPU kernels to check the code and its agreement
        workdir=tmp_path / "work",
    )
    doc = Bench(cfg, log=lambda _: None).run()
    fp16 = doc["fp16"]
    assert fp16["providers"] == ["CPUExecutionProvider"] and fp16["pool"] == "synthetic scans"
    assert fp16["spearman"] > 0.99 and fp16["topk_overlap"] >= 0.9, fp16
    int8 = doc["int8"]
    assert int8["pool"] == "synthetic scans" and int8["pool_size"] == 64 and int8["top_k"] == 50
    assert int8["speedup"] > 0 and -1 <= int8["spearman"] <= 1 and 0 <= int8["topk_overlap"] <= 1
    names = [r["name"] for r in doc["rows"]]
    assert "int8: scoring graph fp32" in names and "int8: scoring graph INT8" in names
    assert "fp16: scoring graph fp32" in names and "fp16: scoring graph FP16" in names
    with pytest.raises(ValueError, match="not installed"):
        BenchConfig(providers=["NoSuchExecutionProvider"])
    scans = Pool(tmp_path / "work" / "synthetic-scans")
    assert scans.image_shape == (3, 32, 32) and scans.count == 64


def _rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_a_pass_over_a_pool_keeps_memory_flat(tmp_path):
    pool = random_pool(tmp_path / "pool", 40000, (1, 32, 32), shard_size=8192)  # 80 MB of arrays
    before = _rss_kb()
    for lo in range(0, pool.count, 512):
        pool.read(lo, min(lo + 512, pool.count))
    grown_mb = (_rss_kb() - before) / 1024
    assert grown_mb < 20, f"RSS grew by {grown_mb:.0f} MB reading an 80 MB pool"


def test_xgal_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    # INT8 measured on a scoring graph and pool of the user's (--int8-model, --int8-pool).
    pool = random_pool(tmp_path / "own-pool", 64, (1, 32, 32))
    torch.manual_seed(1)
    own = export_scoring_graph(
        build_model("small_cnn", "linear", 3, in_channels=1).eval(),
        "features.stage4.0",
        tmp_path / "own.onnx",
        image_shape=(1, 32, 32),
    )
    cmd = [
        sys.executable,
        "-m",
        "xgal.cli",
        "bench",
        "--arch",
        "small_cnn",
        "--image-size",
        "32",
        "--channels",
        "1",
        "--batch",
        "16",
        "--pool-size",
        "48",
        "--repeats",
        "1",
        "--replicas",
        "1",
        "--sweep-batch",
        "8",
        "--pool-sweep",
        "300,600",
        "--pool-sweep-image-size",
        "32",
        "--peak-gflops",
        "500",
        "--int8-model",
        str(own),
        "--int8-pool",
        str(pool.path),
        "--json",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    names = [r["name"] for r in doc["rows"]]
    for want in (
        "engine: scoring graph fp32",
        "engine: forward-only graph fp32",
        "int8: own.onnx INT8",
        "pool: in process fp32",
        "pool: gRPC ScorePool, 1 replica(s)",
        "sweep: batch 8, 2 thread(s)",
    ):
        assert any(n.startswith(want.split(", 2 thread")[0]) for n in names), want
    assert {"scoring_vs_forward", "scoring_vs_eager", "grpc_1_vs_in_process"} <= set(doc["ratios"])
    assert 0 < doc["rows"][0]["peak_fraction"] and doc["gflop_per_image"]["scoring"] > 0
    # Ratios to baselines come from the pair timed in turn, not from rows timed minutes apart.
    rows = {r["name"]: r for r in doc["rows"]}
    grpc = rows["pool: gRPC ScorePool, 1 replica(s)"]
    paired = grpc["images_per_s"] / grpc["in_process_images_per_s_in_turn"]
    assert doc["ratios"]["grpc_1_vs_in_process"] == pytest.approx(paired)
    eager = rows["engine: eager PyTorch Grad-CAM (reference)"]
    paired = eager["scoring_images_per_s_in_turn"] / eager["images_per_s"]
    assert doc["ratios"]["scoring_vs_eager"] == pytest.approx(paired)
    assert {"speedup", "topk_overlap", "spearman"} <= set(doc["int8"])
    assert doc["int8"]["model"] == str(own) and doc["int8"]["pool_size"] == 64
    assert "GPU path" in doc["fp16"]["skipped"]  # CPU providers: FP16 is not measured by default
    assert "int8: own.onnx fp32" in names
    assert [p["pool_size"] for p in doc["pool_sweep"]] == [300, 600]
    assert (
        "skipped" in doc.get("pytorch_grad_cam", {"skipped": ""})
        or "scoring_vs_pytorch_grad_cam" in doc["ratios"]
    )


def test_pool_sweep_point_reports_its_own_memory(tmp_path):
    """Linux keeps ru_maxrss across exec: a sweep point started by a large parent must still
    report the memory of its own pass, not the parent's."""
    pool = random_pool(tmp_path / "pool", 500, (1, 32, 32))
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    path = export_scoring_graph(model, "features.stage4.0", tmp_path / "m.onnx", image_shape=(1, 32, 32))
    ballast = np.ones(800 * 2**20 // 8)  # 800 MB resident in this process when the child forks
    try:
        res = subprocess.run(
            [sys.executable, "-m", "xgal.bench.poolsweep", str(pool.path), str(path), "64", "1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        del ballast
    point = json.loads(res.stdout.strip().splitlines()[-1])
    assert point["pool_size"] == 500 and point["top"] == 100
    assert 0 < point["rss_before_mb"] <= point["peak_rss_mb"] < 600, point
