"""The benchmarking tools: FLOP counting, flat memory over a pool pass, the bench's INT8 and
FP16 figures (made with the product's converters, and equal to a recomputation), and
`xgal bench` end to end on a tiny configuration (bounded). The converters themselves are
tested in test_precision.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import run_xgal
from onnx import TensorProto, helper, numpy_helper

from xgal.bench.flops import count_flops
from xgal.bench.pools import random_pool
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import graph_sha256, read_metadata
from xgal.core.errors import InvalidArgument
from xgal.core.ranking import ranking_agreement
from xgal.export import export_scoring_graph
from xgal.pool.format import Pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.train.nets import build_model


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


def _agreement_of(ref, other, pool, *, batch, threads):
    """What the bench's agreement figures claim, recomputed from the graphs it wrote."""
    engines = [OnnxRuntimeEngine(m, intra_op_threads=threads, spinning=False) for m in (ref, other)]
    k = min(50, pool.count)
    a, b = (
        score_pool(e, pool, AcquisitionConfig(), k, return_all=True, batch_size=batch).all for e in engines
    )
    return ranking_agreement(a.ids, a.score, b.ids, b.score, k)


def _check_precision_figures(doc, precision, model, converted, pool, *, batch, threads):
    """The bench's `precision` section: its graph is the product converter's (metadata), its
    speedup is the ratio of its two paired rows, its agreement is a recomputation's."""
    info = read_metadata(onnx.load(converted))
    assert info.precision == precision and info.graph_sha256 == graph_sha256(onnx.load(converted))
    res = doc[precision]
    rows = {r["name"]: r for r in doc["rows"]}
    name = Path(res["model"]).name if "model" in res else "scoring graph"
    fast, ref = rows[f"{precision}: {name} {precision.upper()}"], rows[f"{precision}: {name} fp32"]
    assert res["speedup"] == pytest.approx(fast["images_per_s"] / ref["images_per_s"])
    assert res["top_k"] == min(50, pool.count) and res["pool_size"] == pool.count
    again = _agreement_of(model, converted, pool, batch=batch, threads=threads)
    assert res["topk_overlap"] == again["topk_overlap"], (res, again)
    assert res["spearman"] == pytest.approx(again["spearman"], abs=1e-9), (res, again)


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
    assert [r["name"] for r in doc["rows"]] == [
        "engine: scoring graph fp32",
        "engine: forward-only graph fp32",
        "int8: scoring graph fp32",
        "int8: scoring graph INT8",
        "fp16: scoring graph fp32",
        "fp16: scoring graph FP16",
        "fp16: scoring graph FP16 (in turn with forward-only)",
        "fp16: forward-only graph FP16",
        "fp16: scoring graph FP16, fixed batch",
        "pool: in process fp32",
    ]
    # No baselines, no replicas asked for; FP16 against its own forward half.
    assert set(doc["ratios"]) == {
        "scoring_vs_forward",
        "fp16_scoring_vs_fp16_forward",
        "fp16_fixed_scoring_vs_fp16_forward",
    }
    rows = {r["name"]: r for r in doc["rows"]}
    assert doc["ratios"]["fp16_scoring_vs_fp16_forward"] == pytest.approx(
        rows["fp16: scoring graph FP16 (in turn with forward-only)"]["images_per_s"]
        / rows["fp16: forward-only graph FP16"]["images_per_s"]
    )
    fixed = onnx.load(tmp_path / "work" / "scoring-fp16-fixed.onnx")  # the batch the rows ran
    fixed_rows = rows["fp16: scoring graph FP16, fixed batch"]["batch"]
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == fixed_rows == 16
    # The forward half is the FP16 network up to `probs`, without the explanation path.
    half_forward = onnx.load(tmp_path / "work" / "forward-fp16.onnx")
    assert [o.name for o in half_forward.graph.output] == ["probs"]
    assert [i.name for i in half_forward.graph.input] == ["image"]
    work = tmp_path / "work"
    scans = Pool(work / "synthetic-scans")
    assert scans.image_shape == (3, 32, 32) and scans.count == 64
    assert doc["int8"]["pool"] == doc["fp16"]["pool"] == "synthetic scans"
    assert doc["fp16"]["providers"] == ["CPUExecutionProvider"]
    for precision in ("int8", "fp16"):
        _check_precision_figures(
            doc,
            precision,
            work / "scoring.onnx",
            work / f"scoring-{precision}.onnx",
            scans,
            batch=cfg.batch,
            threads=cfg.n_threads,
        )
    # FP16 keeps the explanation math in float: it ranks the scans as fp32 does.
    assert doc["fp16"]["spearman"] > 0.99 and doc["fp16"]["topk_overlap"] >= 0.9, doc["fp16"]


def test_bench_config_refuses_what_it_cannot_measure():
    from xgal.bench.run import BenchConfig

    with pytest.raises(InvalidArgument, match="NoSuchExecutionProvider.* not installed"):
        BenchConfig(providers=["NoSuchExecutionProvider"])
    with pytest.raises(InvalidArgument, match="--int8-model and --int8-pool go together"):
        BenchConfig(int8_model="m.onnx")
    with pytest.raises(InvalidArgument, match="at least one execution provider"):
        BenchConfig(providers=[])
    with pytest.raises(InvalidArgument, match="--ceiling takes a number of images"):
        BenchConfig(ceiling=-1)


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


def _pytorch_grad_cam_usable() -> bool:
    try:
        import pytorch_grad_cam  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # ImportError, or its torchvision failing beside this torch
        return False
    return True


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    """A 1x32x32 small-CNN scoring graph, exported once (the export is most of a test's time)."""
    torch.manual_seed(1)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    path = tmp_path_factory.mktemp("small") / "own.onnx"
    return export_scoring_graph(model, "features.stage4.0", path, image_shape=(1, 32, 32))


def test_xgal_bench_tiny(tmp_path, small_graph):
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    # INT8 measured on a scoring graph and pool of the user's (--int8-model, --int8-pool).
    pool = random_pool(tmp_path / "own-pool", 64, (1, 32, 32))
    own = small_graph
    res = run_xgal(
        "bench", "--arch", "small_cnn", "--image-size", 32, "--channels", 1, "--batch", 16, "--threads", 2,
        "--pool-size", 48, "--repeats", 1, "--replicas", 1, "--ray-actors", 1, "--ceiling", 80,
        "--sweep-batch", "8,16", "--sweep-threads", "1,2", "--pool-sweep", "300,600",
        "--pool-sweep-image-size", 32, "--peak-gflops", 500, "--int8-model", own, "--int8-pool", pool.path,
        "--workdir", work, "--json", out, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    grad_cam = _pytorch_grad_cam_usable()
    assert [r["name"] for r in doc["rows"]] == [
        "engine: scoring graph fp32",
        "engine: forward-only graph fp32",
        "engine: eager PyTorch Grad-CAM (reference)",
        *(["engine: pytorch-grad-cam"] if grad_cam else []),
        "int8: own.onnx fp32",
        "int8: own.onnx INT8",
        "pool: in process fp32",
        "pool: gRPC ScorePool, 1 replica(s)",
        "pool: Ray, 1 actor(s)",
        "ceiling: NumPy copy of the pool's pixels",
        "ceiling: null graph alone (one batch in memory)",
        "ceiling: in process, null graph",
        "ceiling: gRPC ScorePool, 1 replica(s), null graph",
        "sweep: batch 8, 1 thread(s)",
        "sweep: batch 16, 1 thread(s)",
        "sweep: batch 8, 2 thread(s)",
        "sweep: batch 16, 2 thread(s)",
    ]
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(doc["ratios"]) == {
        "scoring_vs_forward",
        "scoring_vs_eager",
        "grpc_1_vs_in_process",
        "ray_1_vs_in_process",
        "ceiling_in_process_vs_copy",
        "ceiling_grpc_1_vs_in_process",
        *(["scoring_vs_pytorch_grad_cam"] if grad_cam else []),
    }
    ray_row = rows["pool: Ray, 1 actor(s)"]
    assert (ray_row["actors"], ray_row["threads_per_actor"]) == (1, 2)
    assert doc["ratios"]["ray_1_vs_in_process"] == pytest.approx(
        ray_row["images_per_s"] / ray_row["in_process_images_per_s_in_turn"]
    )
    _check_ceiling(doc, rows, work, pool_size=80, per_image=32 * 32 + 32 * 32)
    if grad_cam:
        assert "pytorch_grad_cam" not in doc
    else:
        prefix, _, why = doc["pytorch_grad_cam"]["skipped"].partition(": ")
        assert prefix == "pytorch-grad-cam not usable here" and "Error" in why, why
    # GFLOP/s and the fraction of the peak are the per-image count times the row's throughput.
    scoring = rows["engine: scoring graph fp32"]
    assert doc["gflop_per_image"]["scoring"] == pytest.approx(count_flops(work / "scoring.onnx") / 1e9)
    gflops = doc["gflop_per_image"]["scoring"] * scoring["images_per_s"]
    assert scoring["gflops_per_s"] == pytest.approx(gflops)
    assert scoring["peak_fraction"] == pytest.approx(gflops / 500)
    for b, t in ((8, 1), (16, 1), (8, 2), (16, 2)):
        sweep = rows[f"sweep: batch {b}, {t} thread(s)"]
        assert (sweep["batch"], sweep["threads"], sweep["sweep"]) == (b, t, True)
        # Each sweep point is timed in turn with the forward-only graph at its batch.
        assert sweep["scoring_vs_forward"] == pytest.approx(
            sweep["images_per_s"] / sweep["forward_images_per_s_in_turn"]
        )
    # Ratios come from the pair timed in turn, not from rows timed minutes apart.
    forward = rows["engine: forward-only graph fp32"]
    assert doc["ratios"]["scoring_vs_forward"] == pytest.approx(
        scoring["images_per_s"] / forward["images_per_s"]
    )
    grpc = rows["pool: gRPC ScorePool, 1 replica(s)"]
    assert (grpc["replicas"], grpc["threads_per_replica"]) == (1, 2)
    paired = grpc["images_per_s"] / grpc["in_process_images_per_s_in_turn"]
    assert doc["ratios"]["grpc_1_vs_in_process"] == pytest.approx(paired)
    eager = rows["engine: eager PyTorch Grad-CAM (reference)"]
    paired = eager["scoring_images_per_s_in_turn"] / eager["images_per_s"]
    assert doc["ratios"]["scoring_vs_eager"] == pytest.approx(paired)
    assert doc["int8"]["model"] == str(own) and doc["int8"]["pool"] == str(pool.path)
    _check_precision_figures(doc, "int8", own, work / "scoring-int8.onnx", pool, batch=16, threads=2)
    # CPU providers: FP16 is not measured unless asked, and the report says why.
    assert doc["fp16"] == {
        "skipped": "FP16 is the GPU path; the providers are ['CPUExecutionProvider'] "
        "(--fp16 measures it anyway)"
    }
    sweep = doc["pool_sweep"]
    assert [p["pool_size"] for p in sweep] == [300, 600] and all(p["top"] == 100 for p in sweep)
    assert doc["pool_sweep_rss_growth_mb"] == sweep[1]["peak_rss_mb"] - sweep[0]["peak_rss_mb"]


def _check_ceiling(doc, rows, work, *, pool_size, per_image):
    """The ceiling's rows: bytes/s are images/s times a sample's image and ROI bytes, and each
    ratio is its in-turn pair's; the pool and the null graph are where the bench says."""
    assert doc["ceiling"] == {
        "pool_size": pool_size,
        "image_shape": [1, 32, 32],
        "pixel_dtype": "uint8",
        "pixel_bytes_per_image": per_image,
        "pixel_bytes_per_pass": per_image * pool_size,
    }
    assert Pool(work / "ceiling-pool").count == pool_size
    assert read_metadata(onnx.load(work / "null.onnx")).arch == "null"
    ceiling = [r for r in doc["rows"] if r["name"].startswith("ceiling: ")]
    for r in ceiling:
        assert r["pixel_bytes_per_s"] == pytest.approx(r["images_per_s"] * per_image)
    copy, inproc = rows["ceiling: NumPy copy of the pool's pixels"], rows["ceiling: in process, null graph"]
    assert inproc["copy_pixel_bytes_per_s_in_turn"] == pytest.approx(copy["pixel_bytes_per_s"])
    assert doc["ratios"]["ceiling_in_process_vs_copy"] == pytest.approx(
        inproc["images_per_s"] / copy["images_per_s"]
    )
    grpc = rows["ceiling: gRPC ScorePool, 1 replica(s), null graph"]
    assert (grpc["replicas"], grpc["threads_per_replica"]) == (1, 2)
    assert doc["ratios"]["ceiling_grpc_1_vs_in_process"] == pytest.approx(
        grpc["images_per_s"] / grpc["in_process_images_per_s_in_turn"]
    )


def test_pool_sweep_point_reports_its_own_memory(tmp_path, small_graph):
    """Linux keeps ru_maxrss across exec: a sweep point started by a large parent must still
    report the memory of its own pass, not the parent's."""
    pool = random_pool(tmp_path / "pool", 500, (1, 32, 32))
    path = small_graph
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
