"""Bad samples (ROI values other than 0 and 1) under `--on-bad-sample`: FAIL (the default) names
the sample; SKIP leaves exactly the bad samples out, lists them in the result (in pool order) and
ranks the rest exactly as a clean pool without them, on every path: in process, gRPC ScorePool,
the client over several shards and replicas, `xgal score`, `xgal client score`; `xgal pool
verify` lists every bad sample."""

import json

import grpc
import numpy as np
import pytest
import torch
from helpers import blob_images, box_rois, spoil_rois
from typer.testing import CliRunner

from xgal.cli import app
from xgal.client import ScorerClient
from xgal.client.transport import ScorerError
from xgal.core.acquisition import AcquisitionConfig
from xgal.export import export_scoring_graph
from xgal.pool.format import Pool, PoolFormatError, PoolWriter
from xgal.scorer.engines import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model
from xgal.v1 import scorer_pb2 as pb
from xgal.v1 import scorer_pb2_grpc

N, SIZE, SHARD = 40, 16, 10
# Spread over three of the four shards; 16-19 fill a whole batch of 4 (nothing left to score).
BAD = {3: 2, 16: 255, 17: 2, 18: 3, 19: 2, 35: 7}
IDS = [f"s{i:02d}" for i in range(N)]
BAD_IDS = [IDS[i] for i in sorted(BAD)]
OPTIONS = [{}, {"normalise": "minmax"}, {"balance": "oracle"}]


def _write(path, keep):
    images = blob_images(N, 1, SIZE, seed=5)
    rois = box_rois(N, SIZE, seed=6, empty=(9,))
    with PoolWriter(
        path, image_shape=(1, SIZE, SIZE), class_names=["a", "b", "c"], with_labels=True, shard_size=SHARD
    ) as w:
        w.add([IDS[i] for i in keep], images[keep], rois[keep], (np.arange(N) % 3)[keep])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    _write(data / "bad", np.arange(N))
    spoil_rois(data / "bad", BAD)
    _write(data / "clean", np.array([i for i in range(N) if i not in BAD]))
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    onnx = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, SIZE, SIZE))
    servers = [
        RunningServer(ServerConfig(data_root=data, model_repo=root / f"repo{i}", port=0, max_batch=8))
        for i in range(2)
    ]
    client = ScorerClient([s.address for s in servers])
    client.publish_model(onnx, "m")
    yield data, onnx, servers, client
    client.close()
    for s in servers:
        s.stop(grace=0)


def _same_ranking(got, want):
    """The same samples in the same order with the same scores (engine batches differ, so the
    floats may differ in their last bits)."""
    assert got.ids.tolist() == want.ids.tolist()
    np.testing.assert_allclose(got.score, want.score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", OPTIONS, ids=["pointwise", "minmax", "oracle"])
def test_in_process_skip_lists_exactly_the_bad_samples(world, options):
    data, onnx, _, _ = world
    engine = OnnxRuntimeEngine(onnx)
    config = AcquisitionConfig(**options)
    got = score_pool(
        engine, Pool(data / "bad"), config, 8, return_all=True, batch_size=4, on_bad_sample="skip"
    )
    want = score_pool(engine, Pool(data / "clean"), config, 8, return_all=True, batch_size=4)
    assert [s.id for s in got.skipped] == BAD_IDS
    assert all("other than 0 and 1" in s.reason for s in got.skipped)
    assert f"max {BAD[16]}" in got.skipped[1].reason
    assert got.scored == N - len(BAD) == want.scored and got.excluded == want.excluded
    _same_ranking(got.top, want.top)
    _same_ranking(got.all, want.all)


def test_in_process_fail_names_the_first_bad_sample(world):
    data, onnx, _, _ = world
    with pytest.raises(PoolFormatError, match=r"bad/shard-00000: sample 3 \(ID 's03'\): its ROI holds"):
        score_pool(OnnxRuntimeEngine(onnx), Pool(data / "bad"), AcquisitionConfig(), 5, batch_size=4)


def _score_pool(stub, pool, **fields):
    request = pb.ScorePoolRequest(pool=pool, model=pb.ModelRef(name="m"), top_k=8, return_all=True, **fields)
    return list(stub.ScorePool(request, timeout=60))[-1].result


def test_grpc_score_pool_skips_or_fails(world):
    _, _, servers, _ = world
    with grpc.insecure_channel(servers[0].address) as ch:
        stub = scorer_pb2_grpc.ScorerStub(ch)
        got = _score_pool(stub, "bad", on_bad_sample=pb.ON_BAD_SAMPLE_SKIP)
        want = _score_pool(stub, "clean")
        assert [s.id for s in got.skipped] == BAD_IDS and not want.skipped
        assert all("other than 0 and 1" in s.reason for s in got.skipped)
        assert got.scored == want.scored == N - len(BAD)
        assert [s.id for s in got.top] == [s.id for s in want.top]
        assert [s.id for s in got.all] == [s.id for s in want.all]
        np.testing.assert_allclose([s.score for s in got.all], [s.score for s in want.all], rtol=1e-5)
        for policy in (pb.ON_BAD_SAMPLE_UNSPECIFIED, pb.ON_BAD_SAMPLE_FAIL):  # unset means FAIL
            with pytest.raises(grpc.RpcError) as err:
                _score_pool(stub, "bad", on_bad_sample=policy)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "sample 3 (ID 's03')" in err.value.details() and "on_bad_sample" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _score_pool(stub, "bad", on_bad_sample=9)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "on_bad_sample" in err.value.details()


@pytest.mark.parametrize("options", OPTIONS[:2], ids=["pointwise", "minmax"])
def test_client_merges_skipped_over_shards_and_replicas(world, options):
    _, _, _, client = world
    got = client.score_pool(
        "bad", model="m", top_k=8, shards=4, on_bad_sample="skip", return_all=True, **options
    )
    want = client.score_pool("clean", model="m", top_k=8, shards=4, return_all=True, **options)
    assert [s.id for s in got.skipped] == BAD_IDS and want.skipped == []
    assert got.scored == want.scored
    _same_ranking(got.top, want.top)
    assert got.all is not None and want.all is not None
    _same_ranking(got.all, want.all)
    with pytest.raises(ScorerError, match="s03|s16|s35"):  # a shard's first bad sample
        client.score_pool("bad", model="m", top_k=8, shards=4)


def test_cli_score_and_client_score_print_and_write_the_skipped(world, tmp_path):
    data, onnx, servers, _ = world
    runner = CliRunner()
    runs = {
        "score": ["score", "--model", str(onnx), "--pool", str(data / "bad")],
        "client": ["client", "score", "--pool", "bad", "--model", "m", "--target", servers[0].address],
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.json"
        res = runner.invoke(app, [*args, "-k", "5", "--on-bad-sample", "skip", "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert f"{len(BAD)} skipped" in res.output
        assert [
            line.split()[1].rstrip(":") for line in res.output.splitlines() if line.startswith("  skipped ")
        ] == BAD_IDS
        doc = json.loads(out.read_text())
        assert doc["skipped_count"] == len(BAD) and [s["id"] for s in doc["skipped"]] == BAD_IDS
        assert doc["scored"] == N - len(BAD)
        res = runner.invoke(app, [*args, "-k", "5"])
        assert res.exit_code == 2 and "s03" in res.output and "on_bad_sample" in res.output, res.output


def test_pool_verify_lists_every_bad_sample(world):
    data, _, _, _ = world
    assert [b.id for b in Pool(data / "bad").bad_samples()] == BAD_IDS
    assert [b.index for b in Pool(data / "bad").bad_samples(15, 25)] == [16, 17, 18, 19]  # shard 1
    with pytest.raises(PoolFormatError, match=rf"sample 3 \(ID 's03'\).*and {len(BAD) - 1} more bad samples"):
        Pool(data / "bad").verify()
    Pool(data / "bad").verify(samples=False)  # the files themselves are intact
    res = CliRunner().invoke(app, ["pool", "verify", str(data / "bad")])
    assert res.exit_code == 2, res.output
    listed = [line for line in res.output.splitlines() if line.startswith("bad sample: ")]
    assert [line.split("(ID '")[1].split("'")[0] for line in listed] == BAD_IDS
    assert f"{len(BAD)} bad samples" in res.output
    res = CliRunner().invoke(app, ["pool", "verify", str(data / "clean")])
    assert res.exit_code == 0 and "none bad" in res.output
