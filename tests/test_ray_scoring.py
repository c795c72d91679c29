"""Pool scoring on Ray, on a local Ray cluster this module starts (the CI machine's 2 CPUs): the
ranking equals in-process scoring for the same graph and pool, pointwise (blocks merged from
their candidates), with a pool-level normalisation (every row gathered) and with a diversity
step (chosen once over the merged candidates); a bad sample fails as it does in process; and
`xgal score --ray local` writes the same --out JSON as `xgal score`; an actor that dies inside
a block is restarted and the block tried again."""

import json
import shutil
import sys

import numpy as np
import pytest
from helpers import mix_predictions, run_xgal, spoil_rois

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import InvalidArgument
from xgal.pool.format import PoolFormatError
from xgal.pool.synth import synth_pool
from xgal.scorer.engines import OnnxRuntimeEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.ray_pool import RayOptions, blocks, score_pool_ray, start_local

ray = pytest.importorskip("ray", reason="Ray is xgal[ray]; scripts/setup.sh installs it")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from xgal.export import export_scoring_graph
    from xgal.train.nets import build_model

    root = tmp_path_factory.mktemp("ray")
    pool = synth_pool(root / "pool", 300, seed=3, image_size=32, shard_size=128)
    torch.manual_seed(0)
    # With an ROI head, so that --roi learned runs on Ray too; its bias at 0 (its map about 0.5,
    # masks of many sizes) as no training has set it.
    model = build_model("small_cnn", "linear", 3, in_channels=1, roi_head="shared")
    torch.nn.init.constant_(model.roi_head.out.bias, 0.0)
    mix_predictions(model, torch.rand(8, 1, 32, 32))  # confident on some scans, not on others
    graph = export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    (root / "faults").mkdir()
    # Every worker of this cluster runs _die_once_when_armed at its start; it is sent by value
    # (the workers cannot import this test module).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    runtime_env = {
        "worker_process_setup_hook": _die_once_when_armed,
        "env_vars": {"XGAL_TEST_RAY_FAULTS": str(root / "faults")},
    }
    start_local(2, runtime_env=runtime_env)
    yield root, pool, graph
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _die_once_when_armed() -> None:
    """In a Ray worker: the first block started after the test creates FAULTS/armed takes it
    (renamed to FAULTS/fired, atomically: once only), writes its process and rows there, and
    kills its actor's process at its second engine batch, inside the block. Every block that
    finishes appends its process and rows to FAULTS/done."""
    import os

    from xgal.scorer import ray_pool

    folder = os.environ["XGAL_TEST_RAY_FAULTS"]
    score = ray_pool.BlockScorer.score

    def score_or_die(self, pool, start, stop, *args, **kwargs):
        mine = f"{os.getpid()} {start} {stop}\n"
        try:
            os.rename(os.path.join(folder, "armed"), os.path.join(folder, "fired"))
        except FileNotFoundError:
            pass
        else:
            with open(os.path.join(folder, "fired"), "w") as f:
                f.write(mine)
            run, batches = self.engine.run, []

            def run_then_die(*a, **k):
                if batches:
                    os._exit(1)
                batches.append(1)
                return run(*a, **k)

            self.engine.run = run_then_die
        result = score(self, pool, start, stop, *args, **kwargs)
        with open(os.path.join(folder, "done"), "a") as f:
            f.write(mine)
        return result

    ray_pool.BlockScorer.score = score_or_die


# 6 blocks over 2 actors; blocks of 50 rows cut the pool's shards (128) and the engine's batches
# (64) where in-process scoring does not.
OPTIONS = RayOptions(actors=2, block_size=50)


@pytest.mark.parametrize(
    "config",
    [
        AcquisitionConfig(),  # the authors' score: pointwise, merged from each block's top-k
        AcquisitionConfig(normalise="rank"),  # pool-level: every row gathered, ranked once
        AcquisitionConfig(diversity="spread"),  # candidates merged, the batch chosen once
        # k/K per true class, merged per class; M against the graph's predicted ROI
        AcquisitionConfig(balance="oracle", roi="learned"),
    ],
    ids=["pointwise", "pool-normalised", "spread", "balanced-learned-roi"],
)
def test_ray_ranks_as_in_process_scoring(world, config):
    _, pool, graph = world
    exclude = pool.ids()[:7].tolist()
    here = score_pool(OnnxRuntimeEngine(graph), pool, config, 20, exclude_ids=exclude, return_all=True)
    seen = []
    there = score_pool_ray(
        graph,
        pool.path,
        config,
        20,
        options=OPTIONS,
        exclude_ids=exclude,
        return_all=True,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert there.top.ids.tolist() == here.top.ids.tolist()
    np.testing.assert_allclose(there.top.score, here.top.score, rtol=1e-5, atol=1e-6)
    assert there.all.ids.tolist() == here.all.ids.tolist()  # every row, in pool order
    np.testing.assert_array_equal(there.all.roi_source, here.all.roi_source)
    assert set(here.all.roi_source.tolist()) == ({3} if config.roi.learned else {1})
    assert (there.scored, there.excluded, there.with_roi) == (here.scored, here.excluded, here.with_roi)
    done = [d for d, _ in seen]  # rows scored so far, after each block as it finishes
    assert sorted(np.diff([0, *done]).tolist()) == [50] * 6 and {t for _, t in seen} == {300}


def test_bad_samples_fail_the_run_by_the_first_or_are_skipped_in_pool_order(world, tmp_path):
    """Two bad samples in different blocks: the run fails naming the first in pool order, as in
    process, whichever block finishes first; skipped, both are listed in pool order."""
    _, pool, graph = world
    bad = tmp_path / "bad"
    shutil.copytree(pool.path, bad)
    spoil_rois(bad, {77: 2, 260: 5})  # not masks; blocks 50-100 and 250-300
    first, second = pool.ids()[77], pool.ids()[260]
    with pytest.raises(PoolFormatError, match=first):
        score_pool_ray(graph, bad, AcquisitionConfig(), 5, options=OPTIONS)
    skipped = score_pool_ray(graph, bad, AcquisitionConfig(), 5, options=OPTIONS, on_bad_sample="skip")
    assert [s.id for s in skipped.skipped] == [first, second] and skipped.scored == 298


def test_an_actor_killed_inside_a_block_is_restarted_and_the_block_tried_again(world):
    root, pool, graph = world
    faults = root / "faults"
    here = score_pool(OnnxRuntimeEngine(graph), pool, AcquisitionConfig(), 20)
    (faults / "done").unlink(missing_ok=True)
    (faults / "armed").touch()
    try:  # blocks of 50 in batches of 16: the kill lands after one batch of a block
        options = RayOptions(actors=2, block_size=50, batch_size=16)
        there = score_pool_ray(graph, pool.path, AcquisitionConfig(), 20, options=options)
    finally:
        (faults / "armed").unlink(missing_ok=True)  # not left for the next test
    pid, *rows = (faults / "fired").read_text().split()
    done = [line.split() for line in (faults / "done").read_text().splitlines()]
    # Every block finished once, the killed one included, and none by the killed process: its
    # block was scored again by another (the restarted actor).
    assert sorted((int(a), int(b)) for _, a, b in done) == blocks(300, 50), done
    assert pid not in {p for p, *_ in done} and [int(r) for r in rows] in [[0, 50], [50, 100]]
    assert there.top.ids.tolist() == here.top.ids.tolist() and there.scored == here.scored == 300


def test_actors_the_cluster_cannot_place_are_refused_not_waited_for(world):
    _, pool, graph = world
    with pytest.raises(InvalidArgument, match="3 actors cannot all be placed"):
        score_pool_ray(graph, pool.path, AcquisitionConfig(), 5, options=RayOptions(actors=3, block_size=50))


def test_blocks_cover_the_pool_once():
    assert blocks(300, 64) == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 300)]
    assert blocks(0, 64) == [(0, 0)]


def test_xgal_score_on_ray_writes_what_xgal_score_writes(world, tmp_path):
    _, pool, graph = world
    common = ["score", "--model", graph, "--pool", pool.path, "--top-k", 15, "--diversity", "spread"]
    here = run_xgal(*common, "--out", tmp_path / "here.json")
    assert here.returncode == 0, here.stderr
    # A Ray instance of its own (this process's is not the CLI's), started and stopped by it.
    there = run_xgal(
        *common, "--ray", "local", "--ray-actors", 2, "--ray-block", 100, "--out", tmp_path / "ray.json"
    )
    assert there.returncode == 0, there.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("here.json", "ray.json"))
    assert [r["id"] for r in b["top"]] == [r["id"] for r in a["top"]] and len(a["top"]) == 15
    for x, y in zip(a["top"], b["top"], strict=True):
        assert y["score"] == pytest.approx(x["score"], rel=1e-5)
    assert b["scored"] == a["scored"] == 300
