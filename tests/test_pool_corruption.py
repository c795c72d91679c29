"""Corrupt pools are found and named, never ranked: `Pool.verify`, `xgal pool verify` (exit 2),
scoring in process (as `xgal score` does: checksums first) and the scorer (FAILED_PRECONDITION
naming the shard or the sample, no server paths) agree on each corruption, including ones whose
manifest checksum was edited to match: damaged, truncated or missing shards, checksum
mismatches, ROIs of the wrong shape or with values other than 0 and 1, float (NaN) pixels where
the manifest says integers, an empty pool."""

import json
import re
import shutil

import grpc
import numpy as np
import pytest
import torch
from helpers import run_xgal

from xgal.client import ScorerClient, ScorerError
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.checksum import sha256_file
from xgal.core.masks import roi_present
from xgal.export import export_scoring_graph
from xgal.pool.format import Pool, PoolFormatError, PoolWriter
from xgal.scorer.engines import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc


def _pool(path):
    rng = np.random.default_rng(0)
    rois = np.zeros((40, 16, 16), np.uint8)
    rois[:, 4:10, 4:10] = 1
    with PoolWriter(
        path, image_shape=(1, 16, 16), class_names=["a", "b", "c"], with_labels=True, shard_size=20
    ) as w:
        w.add(
            [f"s{i}" for i in range(40)],
            rng.integers(0, 256, (40, 1, 16, 16), np.uint8),
            rois,
            np.arange(40) % 3,
        )
    return path


def _manifest(pool, edit):
    f = pool / "manifest.json"
    m = json.loads(f.read_text())
    m = edit(m)
    f.write_text(json.dumps(m))


def _resign(pool, shard, key):
    """What a careful vandal does: make the manifest's checksum (and ROI count) match the edited
    file."""

    def edit(m):
        f = pool / f"shard-{shard:05d}" / f"{key}.npy"
        m["shards"][shard]["sha256"][key] = sha256_file(f)
        if key == "rois":
            rois = np.load(f)
            m["shards"][shard]["with_roi"] = int(roi_present(rois).sum())
        return m

    _manifest(pool, edit)


def _rewrite(pool, shard, key, change, resign):
    f = pool / f"shard-{shard:05d}" / f"{key}.npy"
    arr = np.load(f)
    np.save(f, change(arr.copy()))
    if resign:
        _resign(pool, shard, key)


def _overwrite_pixels(p):
    f = p / "shard-00001" / "images.npy"
    data = bytearray(f.read_bytes())
    data[-50:] = bytes(50)
    f.write_bytes(bytes(data))


def _nan_pixels(a):
    out = a.astype(np.float32)
    out[3, 0, 5, 5] = np.nan
    out[4, 0, 1, 1] = np.inf
    return out


def _one_roi(a):
    a[7, 0, 0] = 2
    return a


def _with_roi(m, shard, count):
    m["shards"][shard]["with_roi"] = count
    return m


def _emptied(p):
    """What a pool with no samples looks like (an import that matched nothing writes one)."""
    for shard in p.glob("shard-*"):
        shutil.rmtree(shard)
    _manifest(p, lambda m: {**m, "count": 0, "shards": []})


CORRUPTIONS = {
    "pixels overwritten": (_overwrite_pixels, "checksum mismatch"),
    "ROI set to 255": (lambda p: _rewrite(p, 0, "rois", lambda a: a * 255, False), "checksum mismatch"),
    "ROI set to 255, checksum re-signed": (
        lambda p: _rewrite(p, 0, "rois", lambda a: a * 255, True),
        "0 and 1",
    ),
    "duplicated ID, re-signed": (
        lambda p: _rewrite(p, 1, "ids", lambda a: np.where(a == "s25", "s3", a), True),
        "unique",
    ),
    "empty ID, re-signed": (
        lambda p: _rewrite(p, 1, "ids", lambda a: np.where(a == "s25", "", a), True),
        "empty ID",
    ),
    "label out of range, re-signed": (
        lambda p: _rewrite(p, 0, "labels", lambda a: a + 5, True),
        "outside the 3 classes",
    ),
    "checksum edited": (
        lambda p: _manifest(
            p,
            lambda m: {
                **m,
                "shards": [
                    {**m["shards"][0], "sha256": {**m["shards"][0]["sha256"], "ids": "0" * 64}},
                    *m["shards"][1:],
                ],
            },
        ),
        "checksum mismatch",
    ),
    "array truncated": (
        lambda p: (p / "shard-00000" / "images.npy").write_bytes(
            (p / "shard-00000" / "images.npy").read_bytes()[:300]
        ),
        "cannot be read",
    ),
    "array empty": (lambda p: (p / "shard-00001" / "rois.npy").write_bytes(b""), "cannot be read"),
    "pickled array": (
        lambda p: np.save(p / "shard-00000" / "ids.npy", np.array([{}] * 20, dtype=object)),
        "cannot be read",
    ),
    "shard missing": (lambda p: [f.unlink() for f in (p / "shard-00001").iterdir()], "missing"),
    "shard folder removed": (lambda p: shutil.rmtree(p / "shard-00001"), "shard-00001/images.npy is missing"),
    "images short by one row": (
        lambda p: (p / "shard-00001" / "images.npy").write_bytes(
            (p / "shard-00001" / "images.npy").read_bytes()[: -16 * 16]
        ),
        "shard-00001/images.npy cannot be read",
    ),
    "ROIs of the wrong shape, re-signed": (
        lambda p: _rewrite(p, 0, "rois", lambda a: np.ascontiguousarray(a[:, :8]), True),
        "uint8[20, 8, 16] does not match the manifest's uint8[20, 16, 16]",
    ),
    "float32 pixels with NaN and Inf, re-signed": (
        lambda p: _rewrite(p, 1, "images", _nan_pixels, True),
        "float32[20, 1, 16, 16] does not match the manifest's uint8",
    ),
    "one ROI value 2, re-signed": (
        lambda p: _rewrite(p, 1, "rois", _one_roi, True),
        "shard-00001: sample 27 (ID 's27'): its ROI holds values other than 0 and 1 (max 2)",
    ),
    "no samples": (_emptied, "the pool holds no samples"),
    "manifest says float32 pixels": (
        lambda p: _manifest(p, lambda m: {**m, "pixel_dtype": "float32"}),
        "are not one of ('uint8', 'uint16')",
    ),
    "manifest without shards": (
        lambda p: _manifest(p, lambda m: {k: v for k, v in m.items() if k != "shards"}),
        "malformed",
    ),
    "manifest without count": (
        lambda p: _manifest(p, lambda m: {k: v for k, v in m.items() if k != "count"}),
        "malformed",
    ),
    "manifest's ROI count edited": (
        lambda p: _manifest(p, lambda m: _with_roi(m, 1, 19)),
        "shard-00001: the manifest counts 19 samples with an ROI, its rois.npy 20",
    ),
    "manifest's ROI count not a count": (
        lambda p: _manifest(p, lambda m: _with_roi(m, 0, 2.5)),
        "shard 0 counts 2.5 samples with an ROI, not a number from 0 to its 20",
    ),
    "manifest is a list": (lambda p: _manifest(p, lambda m: [m]), "not a manifest"),
    "manifest not JSON": (lambda p: (p / "manifest.json").write_bytes(b"\xff\xfe{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_verify_names_each_corruption(tmp_path, case):
    corrupt, message = CORRUPTIONS[case]
    pool = _pool(tmp_path / "pool")
    Pool(pool).verify()  # clean before
    corrupt(pool)
    with pytest.raises(PoolFormatError, match=re.escape(message)):
        Pool(pool).verify()
    out = run_xgal("pool", "verify", pool, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and "Aborted" not in out.stderr


@pytest.fixture(scope="module")
def onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    path = tmp_path_factory.mktemp("model") / "m.onnx"
    return export_scoring_graph(model, "features.stage4.0", path, image_shape=(1, 16, 16))


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_scoring_in_process_names_each_corruption(tmp_path, onnx, case):
    """What `xgal score` runs: the shards' checksums first, then each batch's samples."""
    corrupt, message = CORRUPTIONS[case]
    pool = _pool(tmp_path / "pool")
    engine = OnnxRuntimeEngine(onnx)
    assert len(score_pool(engine, Pool(pool), AcquisitionConfig(), 5, verify=True).top) == 5
    corrupt(pool)
    with pytest.raises(PoolFormatError, match=re.escape(message)):
        score_pool(engine, Pool(pool), AcquisitionConfig(), 5, verify=True)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, onnx):
    root = tmp_path_factory.mktemp("corrupt")
    (root / "data").mkdir()
    srv = RunningServer(ServerConfig(data_root=root / "data", model_repo=root / "repo", port=0))
    with ScorerClient(srv.address) as client:
        client.publish_model(onnx, "m")
    yield root / "data", srv
    srv.stop(grace=0)


@pytest.mark.parametrize("case", [c for c in CORRUPTIONS if not c.startswith("manifest")])
def test_the_scorer_refuses_to_rank_a_corrupt_pool(scorer, case):
    data, srv = scorer
    corrupt, message = CORRUPTIONS[case]
    name = case.replace(" ", "-").replace(",", "")
    pool = _pool(data / name)
    with grpc.insecure_channel(srv.address) as ch:
        stub = scorer_pb2_grpc.ScorerStub(ch)
        request = pb.ScorePoolRequest(pool=name, model=pb.ModelRef(name="m"), top_k=5)
        assert len(list(stub.ScorePool(request, timeout=30))[-1].result.top) == 5  # clean: ranked
        corrupt(pool)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ScorePool(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert message in err.value.details() and str(data) not in err.value.details()


def test_an_empty_pool_is_refused_everywhere(scorer, onnx, tmp_path):
    """A writer given no samples still writes a pool; verify, scoring in process, ScorePool and
    the client each refuse it by name rather than rank nothing."""
    data, srv = scorer
    PoolWriter(data / "empty", image_shape=(1, 16, 16), class_names=["a", "b", "c"]).close()
    message = "empty: the pool holds no samples"
    with pytest.raises(PoolFormatError, match=message):
        Pool(data / "empty").verify()
    with pytest.raises(PoolFormatError, match=message):
        score_pool(OnnxRuntimeEngine(onnx), Pool(data / "empty"), AcquisitionConfig(), 5)
    with ScorerClient(srv.address) as client:
        with pytest.raises(ScorerError, match=message) as err:
            client.score_pool("empty", model="m", top_k=5)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
