"""The active-learning loop against a real local scorer, resume, the oracle's discipline, and
the guidance loss on a toy case."""

import json

import numpy as np
import onnx
import pytest
import torch
from helpers import run_xgal

from xgal.annotate.oracle import OracleAnnotator
from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig, random_scores
from xgal.core.contract import read_metadata
from xgal.core.errors import InvalidArgument
from xgal.loop import ActiveLearningLoop, LoopConfig
from xgal.loop.labelled import initial_selection
from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool
from xgal.pool.writer import PoolWriter
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.fit import TrainConfig, evaluate, to_input, train_classifier
from xgal.train.nets import build_model

LAYER = "features.stage4.0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    pool = synth_pool(root / "data" / "pool", 240, seed=0, image_size=32, shard_size=100)
    test = synth_pool(root / "data" / "test", 60, seed=0, image_size=32, split="test")
    server = RunningServer(ServerConfig(data_root=root / "data", model_repo=root / "repo", port=0))
    client = ScorerClient(server.address)
    yield root, pool, test, client, server
    client.close()
    server.stop(grace=1)


def _config(**kw):
    base = dict(initial=24, per_round=12, rounds=2, train=TrainConfig(epochs=3, alpha=0.1))
    return LoopConfig(**{**base, **kw})


class SpyPool(Pool):
    """Records every row whose label or ROI is read."""

    def __init__(self, path):
        super().__init__(path)
        self.label_rows: list[int] = []

    def take(self, indices, keys=("ids", "images", "rois")):
        if "labels" in keys or "rois" in keys:
            self.label_rows.extend(int(i) for i in indices)
        return super().take(indices, keys)


def test_two_rounds_end_to_end_and_no_label_leaks(world, tmp_path):
    root, pool, test, client, server = world
    spy = SpyPool(pool.path)
    oracle = OracleAnnotator(spy)
    seen = []
    loop = ActiveLearningLoop(
        _config(acquisition=AcquisitionConfig(strategy="xgal")),
        Pool(pool.path),
        test,
        client,
        oracle,
        tmp_path / "run",
        pool_ref="pool",
        model_name="loop",
        log=lambda r, m: seen.append(r.round),
    )
    records = loop.run()
    assert [r.labelled for r in records] == [24, 36, 48] and seen == [0, 1, 2]
    # Every round's model is published, the final one too (the run's result, in model.onnx).
    assert [r.model_version for r in records] == [1, 2, 3]
    assert read_metadata(onnx.load(tmp_path / "run" / "model.onnx")).round_index == 2
    # A round's record holds the test metrics of the model that round ended with.
    final = build_model("small_cnn", "linear", 3, in_channels=1)
    final.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    t = test.read(0, test.count, ("images", "labels", "rois"))
    x, y, roi = to_input(t["images"], 255.0), torch.from_numpy(t["labels"]), torch.from_numpy(t["rois"])
    metrics = evaluate(final, loop.config.layer, x, y, roi)
    assert metrics == pytest.approx({k: getattr(records[-1], k) for k in metrics})
    # Selections are new IDs each round, and the oracle saw exactly the labelled ones.
    selected = records[0].selected + records[1].selected
    assert len(set(selected)) == 24
    ann = np.load(tmp_path / "run" / "annotations.npz")
    assert sorted(oracle.requested) == sorted(ann["ids"].tolist())
    index = {s: i for i, s in enumerate(pool.ids().tolist())}
    assert sorted(spy.label_rows) == sorted(index[i] for i in ann["ids"].tolist())
    np.testing.assert_array_equal(ann["labels"], pool.labels()[[index[i] for i in ann["ids"]]])
    assert [m.version for m in client.list_models("loop")] == [1, 2, 3]


def test_resume_continues_from_the_last_finished_round(world, tmp_path):
    root, pool, test, client, _ = world
    out = tmp_path / "run"

    class Flaky(OracleAnnotator):
        calls = 0

        def annotate(self, request):
            Flaky.calls += 1
            if Flaky.calls == 3:  # initial set, round 0's picks, then the annotator goes away
                raise ConnectionError("annotation service down")
            return super().annotate(request)

    with pytest.raises(ConnectionError):
        ActiveLearningLoop(
            _config(), pool, test, client, Flaky(pool), out, pool_ref="pool", model_name="r"
        ).run()
    state = json.loads((out / "state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0]

    oracle = OracleAnnotator(pool)
    records = ActiveLearningLoop(
        _config(), pool, test, client, oracle, out, pool_ref="pool", model_name="r"
    ).run()
    assert [r.round for r in records] == [0, 1, 2]
    assert len(oracle.requested) == 12  # only round 1's picks: nothing is asked twice
    assert records[0].selected == state["rounds"][0]["selected"]

    with pytest.raises(InvalidArgument, match="different configuration"):
        ActiveLearningLoop(
            _config(acquisition=AcquisitionConfig(lam=0.5)), pool, test, client, oracle, out, pool_ref="pool"
        ).run()


def test_random_strategy_draws_anew_each_round(world, tmp_path):
    """Round r asks the scorers for the draw of seed * 1000 + r: not the same samples' luck
    every round, and the same again when the run is repeated."""
    _, pool, test, client, _ = world
    cfg = _config(
        acquisition=AcquisitionConfig(strategy="random"), seed=3, train=TrainConfig(epochs=1, alpha=0)
    )
    loop = ActiveLearningLoop(
        cfg, pool, test, client, OracleAnnotator(pool), tmp_path / "run", pool_ref="pool", model_name="rand"
    )
    records = loop.run()
    ids = pool.ids()
    labelled = set(initial_selection(pool, cfg.initial, cfg.seed))
    for r in range(cfg.rounds):
        draw = random_scores(ids, 3 * 1000 + r)
        expected = [i for i in ids[np.argsort(-draw)].tolist() if i not in labelled][: cfg.per_round]
        assert records[r].selected == expected, r
        labelled |= set(expected)


class SpyClient:
    """The real client; every score_pool call's arguments and answer are kept."""

    def __init__(self, client):
        self.client, self.calls = client, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def score_pool(self, *args, **kwargs):
        result = self.client.score_pool(*args, **kwargs)
        self.calls.append((kwargs, result.top.ids.tolist()))
        return result


def test_a_typical_cold_start_makes_the_first_selection_by_typiclust_then_the_score(world, tmp_path):
    """The loop asks round 0 for TypiClust over random candidates (the cold start) and later
    rounds for the configured selection, and labels exactly what the scorers chose."""
    _, pool, test, client, _ = world
    spy = SpyClient(client)
    cfg = _config(
        acquisition=AcquisitionConfig(diversity="spread"), cold_start="typical", train=TrainConfig(epochs=1)
    )
    loop = ActiveLearningLoop(
        cfg, pool, test, spy, OracleAnnotator(pool), tmp_path / "run", pool_ref="pool", model_name="cold"
    )
    records = loop.run()
    asked = [(kw["strategy"], kw["diversity"], kw["seed"]) for kw, _ in spy.calls]
    assert asked == [("random", "typical", cfg.seed * 1000), ("xgal", "spread", cfg.seed * 1000 + 1)]
    for (_, chosen), record in zip(spy.calls, records, strict=False):
        assert record.selected == chosen


def test_a_test_pool_is_read_by_class_name_not_index(world, tmp_path):
    """The same classes in another order are mapped by name; other classes are refused."""
    _, pool, test, client, _ = world
    d = test.read(0, test.count, ("ids", "images", "rois", "labels"))
    names = list(test.class_names)
    for folder, order in (("reordered", names[::-1]), ("other", [*names[:-1], "glioma"])):
        labels = [order.index(names[i]) if names[i] in order else 0 for i in d["labels"]]
        with PoolWriter(
            tmp_path / folder, image_shape=test.image_shape, class_names=order, with_labels=True
        ) as w:
            w.add(d["ids"].tolist(), d["images"], d["rois"], labels)

    def loop(test_folder):
        return ActiveLearningLoop(
            _config(),
            pool,
            Pool(tmp_path / test_folder),
            client,
            OracleAnnotator(pool),
            tmp_path / f"{test_folder}-run",
        )

    assert loop("reordered").test[1].tolist() == [pool.class_names.index(names[i]) for i in d["labels"]]
    with pytest.raises(InvalidArgument, match=r"the test pool's classes \[.*'glioma'\] are not the pool's"):
        loop("other")


def test_config_has_one_seed_and_refuses_settings_it_does_not_know():
    cfg = _config(acquisition=AcquisitionConfig(strategy="random", seed=99), seed=4)
    assert cfg.acquisition.seed == 4 and cfg.round_acquisition(2).seed == 4002
    assert LoopConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InvalidArgument, match=r"settings xgal does not know: \['lam', 'strategy'\]"):
        LoopConfig.from_dict({**cfg.to_dict(), "strategy": "misalignment", "lam": 0.4})


def test_guidance_loss_lowers_misalignment_on_a_toy_case(world):
    _, pool, _, _, _ = world
    d = pool.read(0, 120, ("images", "labels", "rois"))
    x, y, roi = to_input(d["images"], 255.0), torch.from_numpy(d["labels"]), torch.from_numpy(d["rois"])
    # At 32 px the last stage's map is 4x4; the one before (8x8) can follow a lesion's outline.
    layer = "features.stage3.0"
    dice = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model("small_cnn", "linear", 3, in_channels=1)
        train_classifier(
            model, x, y, TrainConfig(epochs=12, alpha=alpha, seed=0), roi=roi, target_layer=layer
        )
        dice[alpha] = evaluate(model, layer, x, y, roi)["cam_dice"]
    assert dice[1.0] > dice[0.0] + 0.05, dice


def test_prototypical_episodic_training_runs(world):
    _, pool, _, _, _ = world
    d = pool.read(0, 60, ("images", "labels", "rois"))
    x, y, roi = to_input(d["images"], 255.0), torch.from_numpy(d["labels"]), torch.from_numpy(d["rois"])
    model = build_model("small_cnn", "prototypical", 3, in_channels=1)
    before = model.head.prototypes.clone()
    hist = train_classifier(
        model, x, y, TrainConfig(epochs=2, loss="proto", alpha=0.1, episodes=3), roi=roi, target_layer=LAYER
    )
    assert len(hist) == 2 and np.isfinite(hist[-1]["loss"]) and hist[-1]["guidance"] > 0
    assert not torch.equal(before, model.head.prototypes)  # set from the labelled embeddings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"loss": "focal"}, "loss must be"), ({"alpha": -1}, "alpha must be >= 0"), ({"epochs": 0}, "epochs")],
)
def test_bad_train_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_guidance_needs_rois():
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    with pytest.raises(ValueError, match="needs ROIs and a target layer"):
        train_classifier(
            model, torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long), TrainConfig(alpha=0.1)
        )


def test_authors_preset_matches_the_method():
    from xgal.loop.presets import preset

    cfg = preset("authors-brats")
    assert (cfg.arch, cfg.head, cfg.target_layer) == (
        "densenet121",
        "prototypical",
        "features.denseblock4.denselayer16.conv2",
    )
    assert (cfg.acquisition.lam, cfg.train.alpha, cfg.initial, cfg.per_round, cfg.rounds) == (
        0.3,
        0.1,
        150,
        120,
        6,
    )
    assert cfg.acquisition == AcquisitionConfig(lam=0.3, balance="oracle")
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.loss, cfg.train.shots, cfg.train.queries) == (
        1e-4,
        1e-5,
        "proto",
        3,
        3,
    )
    model = build_model(cfg.arch, cfg.head, 3, in_channels=3)
    assert model.head.proj.out_features == 512
    model.get_submodule(cfg.target_layer)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_train_cli_runs_and_resumes(world, tmp_path):
    from dataclasses import replace

    from xgal.loop.presets import preset

    root, pool, test, _, _ = world
    cmd = (
        "train", "--pool", pool.path, "--test-pool", test.path,
        "--initial", 12, "--per-round", 6, "--rounds", 1, "--epochs", 2, "--out", tmp_path / "run",
        "--strategy", "uncertainty", "--lambda", 0.5, "--lr", 0.002, "--batch-size", 16,
    )  # fmt: skip
    first = run_xgal(*cmd, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "round 0: 12 labelled" in first.stdout and "round 1: 18 labelled" in first.stdout
    again = run_xgal(*cmd, timeout=300)
    assert again.returncode == 0 and "round 0" not in again.stdout and "done: 18 labelled" in again.stdout
    # The finished run on another pool: refused, naming the run's pool, not "done".
    other = run_xgal(*[test.path if c == pool.path else c for c in cmd], timeout=300)
    assert other.returncode == 2 and "done" not in other.stdout, other.stdout
    assert f"holds a run on the pool {pool.path.resolve()}, not {test.path.resolve()}" in other.stderr
    # Options given replace the preset's; the others keep the preset's values.
    saved = LoopConfig.from_dict(json.loads((tmp_path / "run" / "state.json").read_text())["config"])
    demo = preset("demo")
    assert saved.acquisition == replace(demo.acquisition, strategy="uncertainty", lam=0.5)
    assert (saved.initial, saved.per_round, saved.train.epochs, saved.train.alpha) == (
        12,
        6,
        2,
        demo.train.alpha,
    )
    assert (saved.train.lr, saved.train.batch_size) == (0.002, 16)


def test_a_test_split_without_rois_has_no_dice_and_says_n_a(world):
    import warnings

    from xgal.cli.common import number

    _, _, test, _, _ = world
    t = test.read(0, test.count, ("images", "labels", "rois"))
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        metrics = evaluate(
            model,
            LAYER,
            to_input(t["images"], 255.0),
            torch.from_numpy(t["labels"]),
            torch.zeros_like(torch.from_numpy(t["rois"])),
        )
    assert np.isnan(metrics["cam_dice"]) and 0 <= metrics["accuracy"] <= 1
    assert (number(metrics["cam_dice"]), number(0.1234)) == ("n/a", "0.123")


def test_the_initial_set_can_be_the_users_list(world, tmp_path):
    _, pool, test, client, _ = world
    chosen = pool.ids()[[5, 17, 40, 99, 120, 200]].tolist()
    cfg = _config(initial_ids=chosen, rounds=0)
    assert cfg.initial == 6
    oracle = OracleAnnotator(pool)
    ActiveLearningLoop(cfg, pool, test, client, oracle, tmp_path / "run", pool_ref="pool").run()
    assert oracle.requested == chosen
    with pytest.raises(InvalidArgument, match="twice"):
        _config(initial_ids=[chosen[0], chosen[0]])
    from xgal.cli.train import _initial_ids

    (tmp_path / "none.txt").write_text("\n\n")
    with pytest.raises(InvalidArgument, match="lists no IDs"):
        _initial_ids(tmp_path / "none.txt")
    (tmp_path / "ids.txt").write_text("a\nb c\n")
    assert _initial_ids(tmp_path / "ids.txt") == ("a", "b c")  # one per line
    bad = _config(initial_ids=[*chosen[:2], "no-such-scan"], rounds=0)
    loop = ActiveLearningLoop(bad, pool, test, client, oracle, tmp_path / "bad", pool_ref="pool")
    with pytest.raises(InvalidArgument, match="initial IDs not in"):
        loop.run()
