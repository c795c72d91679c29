"""A pool reads only inside its own folder: shard paths with '..' or absolute ones, and symlinks
(to a folder or to an array) that lead out, are refused before anything is read, by the pool
itself, by `xgal pool verify` and by the scorer (PERMISSION_DENIED)."""

import json
import os
import shutil

import grpc
import numpy as np
import pytest
from helpers import run_xgal

from xgal.pool.format import Pool, PoolAccessError, PoolFormatError, PoolWriter
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc


def _pool(path, n=20, prefix="in"):
    rng = np.random.default_rng(0)
    with PoolWriter(path, image_shape=(1, 8, 8), shard_size=10) as w:
        w.add(
            [f"{prefix}{i}" for i in range(n)],
            rng.integers(0, 256, (n, 1, 8, 8), np.uint8),
            np.ones((n, 8, 8), np.uint8),
        )
    return path


def _edit_manifest(pool, shard, value):
    manifest = pool / "manifest.json"
    m = json.loads(manifest.read_text())
    m["shards"][shard]["path"] = value
    manifest.write_text(json.dumps(m))


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = _pool(tmp_path / "outside", prefix="SECRET")
    return root, outside


def _attacks(root, outside):
    """Pools under `root` that try to read `outside`, by name."""
    made = {}
    p = _pool(root / "shard-dir-link")
    shutil.rmtree(p / "shard-00001")
    os.symlink(outside / "shard-00001", p / "shard-00001")
    made["a shard folder that is a symlink out"] = p
    p = _pool(root / "shard-file-link")
    (p / "shard-00000" / "ids.npy").unlink()
    os.symlink(outside / "shard-00000" / "ids.npy", p / "shard-00000" / "ids.npy")
    made["an array file that is a symlink out"] = p
    p = _pool(root / "dotdot")
    _edit_manifest(p, 1, os.path.relpath(outside / "shard-00001", p))
    made["a manifest path with '..'"] = p
    p = _pool(root / "absolute")
    _edit_manifest(p, 0, str(outside / "shard-00000"))
    made["an absolute manifest path"] = p
    return made


def test_the_pool_refuses_to_read_outside_its_folder(layout):
    root, outside = layout
    for what, path in _attacks(root, outside).items():
        with pytest.raises(PoolAccessError, match="outside the pool's folder"):
            pool = Pool(path)
            pool.verify()
            pool.read(0, pool.count)
        assert what  # the loop ran for each attack
    assert Pool(outside).read(0, 20)["ids"][0] == "SECRET0"  # the outside pool itself is fine


def test_a_symlink_loop_is_a_clear_error(tmp_path):
    p = _pool(tmp_path / "loop")
    shutil.rmtree(p / "shard-00000")
    os.symlink(p / "shard-00000", p / "shard-00000")
    with pytest.raises((PoolFormatError, PoolAccessError)):
        Pool(p).check()


def test_the_scorer_answers_permission_denied(layout, tmp_path):
    root, outside = layout
    attacks = _attacks(root, outside)
    srv = RunningServer(ServerConfig(data_root=root, model_repo=tmp_path / "repo", port=0))
    try:
        with grpc.insecure_channel(srv.address) as ch:
            stub = scorer_pb2_grpc.ScorerStub(ch)
            for name in [p.name for p in attacks.values()] + ["../outside"]:
                with pytest.raises(grpc.RpcError) as err:
                    stub.DescribePool(pb.DescribePoolRequest(pool=name), timeout=10)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
                assert "SECRET" not in err.value.details() and str(outside) not in err.value.details()
    finally:
        srv.stop(grace=0)


def test_pool_verify_names_the_problem_in_one_line(layout):
    root, outside = layout
    path = _attacks(root, outside)["a shard folder that is a symlink out"]
    out = run_xgal("pool", "verify", path, timeout=60)
    assert out.returncode == 2 and "outside the pool's folder" in out.stderr and "Traceback" not in out.stderr
