"""ScorePool over gRPC and ScoreStream vs the in-process pipeline: same pool, model, batch.

A scorer on 127.0.0.1 (in this process, so the figures share the machine state) serves the
same scoring graph the in-process engine runs; the in-process pipeline is the baseline.

    .venv/bin/python -m pytest benchmarks/test_grpc_throughput.py --benchmark-only
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.export import export_scoring_graph
from xgal.pool.format import PoolWriter
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model, default_target_layer

ARCH = os.environ.get("XGAL_BENCH_ARCH", "resnet18")
SIZE = int(os.environ.get("XGAL_BENCH_SIZE", "224"))
POOL = int(os.environ.get("XGAL_BENCH_POOL", "256"))
BATCH = int(os.environ.get("XGAL_BENCH_BATCH", "32"))
GROUP = f"pool-{ARCH}-{SIZE}px-{POOL}images-batch{BATCH}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-bench")
    rng = np.random.default_rng(0)
    with PoolWriter(root / "data" / "pool", image_shape=(3, SIZE, SIZE), shard_size=128) as w:
        for lo in range(0, POOL, 64):
            n = min(64, POOL - lo)
            rois = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
            rois[:, SIZE // 4 : SIZE // 2, SIZE // 3 : SIZE // 2] = 1
            w.add(
                [f"img-{i:06d}" for i in range(lo, lo + n)],
                rng.integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8),
                rois,
            )
    torch.manual_seed(0)
    model = build_model(ARCH, "linear", 3, in_channels=3).eval()
    onnx = export_scoring_graph(
        model, default_target_layer(ARCH), root / "m.onnx", image_shape=(3, SIZE, SIZE)
    )
    server = RunningServer(
        ServerConfig(
            data_root=root / "data", model_repo=root / "repo", port=0, max_batch=BATCH, max_delay_ms=1
        )
    )
    client = ScorerClient(server.address)
    client.publish_model(onnx, "bench")
    yield root, onnx, server, client
    client.close()
    server.stop(grace=1)


@pytest.fixture(scope="module")
def in_process(setup):
    """The whole pool through the in-process pipeline: the baseline and every gRPC row's pair."""
    from xgal.pool.format import Pool

    root, onnx, _, _ = setup
    engine = OnnxRuntimeEngine(onnx, spinning=False)  # as the server's engine
    pool = Pool(root / "data" / "pool")
    return lambda: score_pool(engine, pool, AcquisitionConfig(), 20, batch_size=BATCH)


def _run(measure, fn, baseline=False, paired_with=None):
    measure(
        fn,
        group=GROUP,
        images=POOL,
        baseline=baseline,
        paired_with=paired_with,
        paired_label="in process",
        rounds=3,
        warmup=1,
    )


def test_in_process_pool(measure, in_process):
    _run(measure, in_process, baseline=True)


def test_score_pool_over_grpc(measure, setup, in_process):
    _, _, _, client = setup
    _run(
        measure,
        lambda: client.score_pool("pool", model="bench", top_k=20, progress=False),
        paired_with=in_process,
    )


def test_score_stream_client_data(measure, setup, in_process):
    from xgal.pool.format import Pool

    root, _, _, client = setup
    d = Pool(root / "data" / "pool").read(0, POOL)
    _run(
        measure,
        lambda: client.score_arrays(d["images"], d["rois"], d["ids"], model="bench", batch_size=BATCH),
        paired_with=in_process,
    )
