"""Corrupt pools are found and named, never ranked: `Pool.verify`, `xgal pool verify` (one line,
exit 2) and the scorer (FAILED_PRECONDITION naming the shard, no server paths) agree on each
corruption, including ones whose manifest checksum was edited to match."""

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch

from xgal.client import ScorerClient
from xgal.core.checksum import sha256_file
from xgal.pool.format import Pool, PoolFormatError, PoolWriter
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model
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
    """What a careful vandal does: make the manifest's checksum match the edited file."""

    def edit(m):
        m["shards"][shard]["sha256"][key] = sha256_file(pool / f"shard-{shard:05d}" / f"{key}.npy")
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
    "manifest without shards": (
        lambda p: _manifest(p, lambda m: {k: v for k, v in m.items() if k != "shards"}),
        "malformed",
    ),
    "manifest without count": (
        lambda p: _manifest(p, lambda m: {k: v for k, v in m.items() if k != "count"}),
        "malformed",
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
    with pytest.raises(PoolFormatError, match=message):
        Pool(pool).verify()
    out = subprocess.run(
        [sys.executable, "-m", "xgal.cli", "pool", "verify", str(pool)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and "Aborted" not in out.stderr


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    (root / "data").mkdir()
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 16, 16))
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
