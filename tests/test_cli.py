"""The command line as a user runs it: real processes, real files, real scorers; CliRunner in
this process where a test needs to reach inside (a patched function, the parsed options)."""

import csv
import hashlib
import json
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
import typer
from helpers import run_xgal
from typer.testing import CliRunner

from xgal.cli import app
from xgal.cli.common import ACQUISITION_FIELDS, App, acquisition_options
from xgal.core.acquisition import AcquisitionConfig, Balance, MissingRoi, Normalise, Strategy, Uncertainty
from xgal.export import export_scoring_graph
from xgal.pool import checks
from xgal.pool.format import Pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.nets import build_model


def run(*args, check=True):
    proc = run_xgal(*args, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc, message):
    """Exit 2, and stderr is exactly one line: the message, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.fixture(scope="module")
def pool_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    run(
        "pool", "synth", root / "data" / "pool", "-n", 60, "--seed", 1, "--image-size", 32, "--shard-size", 25
    )
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    return root / "data" / "pool", root / "m.onnx"


def test_pool_info_and_verify(pool_and_model):
    pool, _ = pool_and_model
    info = run("pool", "info", pool).stdout
    assert "60 samples, uint8[1, 32, 32]" in info
    labels = Pool(pool).labels()
    counts = ", ".join(f"{n} {(labels == i).sum()}" for i, n in enumerate(Pool(pool).class_names))
    assert f"per class: {counts}" in info
    rois = Pool(pool).read(0, 60, ("rois",))["rois"]
    assert f"with an ROI: {int((rois.reshape(60, -1).max(1) > 0).sum())} of 60" in info
    assert "all checksums match" in run("pool", "verify", pool).stdout


def test_pool_info_counts_rois_from_the_manifest(pool_and_model, monkeypatch):
    """`pool info` takes the ROI count from the manifest: no mask is read."""
    from typer.testing import CliRunner

    def no_masks(*_args, **_kwargs):
        raise AssertionError("pool info read the masks")

    monkeypatch.setattr(Pool, "has_roi", no_masks)
    monkeypatch.setattr(checks, "rois_in", no_masks)
    res = CliRunner().invoke(app, ["pool", "info", str(pool_and_model[0])], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"with an ROI: {Pool(pool_and_model[0]).roi_count()} of 60" in res.output


def test_score_prints_table_and_writes_files(pool_and_model, tmp_path):
    pool, model = pool_and_model
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("scan-0000000\nscan-0000001\n")
    args = ["score", "--model", model, "--pool", pool, "--exclude", labelled]
    res = run(*args, "--top-k", 7, "--strategy", "xgal", "--out", tmp_path / "r.json", "--all")
    assert "rank" in res.stdout and "scored 60 images" in res.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["top"]) == 7 and len(doc["all"]) == 58
    assert {"scan-0000000", "scan-0000001"}.isdisjoint(r["id"] for r in doc["top"])
    scores = [r["score"] for r in doc["top"]]
    assert scores == sorted(scores, reverse=True)

    run(*args, "-k", 5, "--strategy", "uncertainty", "--entropy-over-log-k", "-o", tmp_path / "r.csv")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 5 and {"id", "score", "uncertainty", "misalignment", "p_class0"} <= set(rows[0])
    assert all(0 <= float(r["uncertainty"]) <= 1 for r in rows)  # entropy / ln 3
    # --all: every sample in pool order, each with its rank in the whole ranking.
    run(*args, "-k", 5, "-o", tmp_path / "all.csv", "--all")
    every = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert [r["id"] for r in every] == sorted(r["id"] for r in every)  # pool order
    by_rank = sorted(every, key=lambda r: int(r["rank"]))
    assert [int(r["rank"]) for r in by_rank] == list(range(1, 59))
    assert [float(r["score"]) for r in by_rank] == sorted((float(r["score"]) for r in every), reverse=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambda", "2"], "must be in [0, 1]"),
        (["--out", "ranking.txt"], "--out must end in .json or .csv"),
        (["--exclude", "no-such-file.txt"], "no-such-file.txt"),
    ],
)
def test_score_errors_are_one_line(pool_and_model, args, message):
    pool, model = pool_and_model
    one_line_error(run("score", "--model", model, "--pool", pool, *args, check=False), message)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--strategy", "best"], "'best' is not one of"), (["--top-k", "0"], "greater than or equal to 1")],
)
def test_option_values_are_checked_when_parsed(pool_and_model, args, message):
    pool, model = pool_and_model
    res = run("score", "--model", model, "--pool", pool, *args, check=False)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_score_not_a_pool_or_model(pool_and_model, tmp_path):
    pool, model = pool_and_model
    one_line_error(run("score", "--model", model, "--pool", tmp_path, check=False), "is not a pool")
    (tmp_path / "x.onnx").write_text("nope")
    res = run("score", "--model", tmp_path / "x.onnx", "--pool", pool, check=False)
    one_line_error(res, "not a loadable ONNX model")


def test_a_user_error_is_one_line_in_process(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "manifest.json").write_text('{"format": "xgal-pool/1"}')
    res = CliRunner().invoke(app, ["pool", "info", str(tmp_path / "half")])
    assert (
        res.exit_code == 2 and res.output.startswith("error: ") and "is incomplete or malformed" in res.output
    )
    res = CliRunner().invoke(app, ["pool", "info", str(tmp_path)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert res.output.strip().splitlines() == [
        f"error: {tmp_path} is not a pool: no manifest.json (unfinished or wrong folder)"
    ]


def test_an_unexpected_exception_is_not_a_user_error(pool_and_model, monkeypatch):
    """A bug (here an IndexError from deep inside) must surface with its traceback, not as a
    one-line message that reads like the user's mistake."""
    from xgal.pool.format import Pool

    def broken(self):
        raise IndexError("list index out of range")

    monkeypatch.setattr(Pool, "check", broken)
    res = CliRunner().invoke(app, ["pool", "info", str(pool_and_model[0])])
    assert isinstance(res.exception, IndexError) and res.exit_code == 1
    assert "error:" not in res.output


def test_acquisition_options_are_the_same_on_every_command():
    """Declared once: score, client score and train offer the same flags with the enums' values."""
    flags = ["--strategy", "--lambda", "--uncertainty", "--entropy-over-log-k", "--no-entropy-over-log-k"]
    flags += ["--missing-roi", "--normalise", "--balance", "--seed"]
    choices = [
        "|".join(e.value for e in enum) for enum in (Strategy, Uncertainty, MissingRoi, Normalise, Balance)
    ]
    for path in (["score"], ["client", "score"], ["train"]):
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert res.exit_code == 0, res.output
        missing = [f for f in flags + choices if f not in res.output]
        assert not missing, (path, missing)


def _capture(overrides):
    seen = []
    probe = App()

    @probe.command()
    @acquisition_options(overrides=overrides)
    def go(top_k: int = typer.Option(20), *, acquisition) -> None:
        seen.append((top_k, acquisition))

    return probe, seen


def test_acquisition_options_give_a_config_or_only_what_was_given():
    assert ACQUISITION_FIELDS == tuple(f.name for f in fields(AcquisitionConfig))  # none left out
    probe, seen = _capture(overrides=False)
    res = CliRunner().invoke(probe, ["--strategy", "RANDOM", "--seed", "7", "--no-entropy-over-log-k"])
    assert res.exit_code == 0, res.output
    assert seen == [(20, AcquisitionConfig(strategy="random", seed=7))]
    res = CliRunner().invoke(probe, ["--lambda", "-0.5"])
    assert res.exit_code == 2 and res.output.startswith("error: lam (λ) must be in [0, 1]")

    probe, seen = _capture(overrides=True)
    assert CliRunner().invoke(probe, []).exit_code == 0
    assert CliRunner().invoke(probe, ["--lambda", "0.5", "--no-entropy-over-log-k"]).exit_code == 0
    assert seen == [(20, {}), (20, {"lam": 0.5, "entropy_over_log_k": False})]


def test_client_score_writes_like_score_and_never_imports_the_scorer(pool_and_model, tmp_path):
    pool, model = pool_and_model
    server = RunningServer(ServerConfig(data_root=pool.parent, model_repo=tmp_path / "repo", port=0))
    try:
        run("client", "publish", model, "--name", "m", "--target", server.address)
        probe = tmp_path / "modules.json"
        code = (
            "import json, sys\nfrom xgal.cli import main\n"
            f"sys.argv = ['xgal', 'client', 'score', '--pool', 'pool', '--model', 'm', '--target', "
            f"{server.address!r}, '-k', '6', '--strategy', 'random', '--seed', '3', '--all', "
            f"'--out', {str(tmp_path / 'c.csv')!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('xgal.scorer', 'xgal.train', "
            "'xgal.export', 'xgal.loop', 'torch', 'onnxruntime')))\n"
            f"open({str(probe)!r}, 'w').write(json.dumps([code, bad]))\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
        assert json.loads(probe.read_text()) == [0, []]
        rows = list(csv.DictReader(open(tmp_path / "c.csv")))
        assert len(rows) == 60 and "p_class2" in rows[0]  # --all: every sample

        res = run(
            "client",
            "score",
            "--pool",
            "pool",
            "--model",
            "m",
            "--target",
            server.address,
            "-k",
            6,
            "--strategy",
            "random",
            "--seed",
            3,
            "-o",
            tmp_path / "c.json",
        )
        assert "scored 60 images with m v1" in res.stdout
        local = run(
            "score",
            "--model",
            model,
            "--pool",
            pool,
            "-k",
            6,
            "--strategy",
            "random",
            "--seed",
            3,
            "-o",
            tmp_path / "l.json",
        )
        assert "scored 60 images" in local.stdout
        remote, here = (json.loads((tmp_path / f).read_text()) for f in ("c.json", "l.json"))
        assert [r["id"] for r in remote["top"]] == [r["id"] for r in here["top"]]  # the seed reached it
        assert remote["config"]["seed"] == "3" and remote["version"] == 1
    finally:
        server.stop(grace=1)


def test_model_quantize_fp16_info_and_score(pool_and_model, tmp_path):
    from xgal.cli.model import QuantFormat
    from xgal.scorer.precision.int8 import QUANT_FORMATS

    assert [f.value for f in QuantFormat] == list(QUANT_FORMATS)
    pool, model = pool_and_model
    int8, fp16 = tmp_path / "int8.onnx", tmp_path / "fp16.onnx"
    res = run("model", "quantize", model, int8, "--calibration", pool, "--samples", 16, "--format", "qdq")
    assert f"wrote {int8}: INT8 (qdq)" in res.stdout
    assert f"wrote {fp16}: FP16" in run("model", "fp16", model, fp16).stdout
    docs = {}
    for path, precision in ((model, "fp32"), (int8, "int8"), (fp16, "fp16")):
        doc = docs[precision] = json.loads(run("model", "info", path, "--json").stdout)
        assert doc["precision"] == precision and doc["class_names"] == ["class0", "class1", "class2"]
        assert doc["input_shape"] == [1, 32, 32] and doc["pixel_dtype"] == "uint8"
        assert len(doc["graph_sha256"]) == 64 and doc["graph_sha256_matches"] is True
        assert doc["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len({d["graph_sha256"] for d in docs.values()}) == 3  # each records its own graph
    text = run("model", "info", int8).stdout
    assert "precision      int8" in text and f"graph SHA-256  {docs['int8']['graph_sha256']}" in text
    assert "(matches the graph)" in text and "target layer   features.stage4.0" in text
    for path in (int8, fp16):
        out = tmp_path / f"{path.stem}.json"
        run("score", "--model", path, "--pool", pool, "-k", 5, "-o", out)
        assert len(json.loads(out.read_text())["top"]) == 5
    one_line_error(run("model", "fp16", int8, tmp_path / "x.onnx", check=False), "is already int8")


def test_model_info_refuses_what_is_not_a_scoring_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    (tmp_path / "x.onnx").write_text("nope")
    one_line_error(run("model", "info", tmp_path / "x.onnx", check=False), "is not an ONNX model")
    one_line_error(run("model", "info", tmp_path / "none.onnx", check=False), "model file not found")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    one_line_error(run("model", "info", tmp_path / "plain.onnx", check=False), "is not an xgal scoring graph")


def test_score_never_imports_torch(pool_and_model, tmp_path):
    """DESIGN.md: a scorer replica installs no PyTorch; `xgal score` must not import it."""
    pool, model = pool_and_model
    probe = tmp_path / "modules.json"
    code = (
        "import json, sys\nfrom xgal.cli import main\n"
        f"sys.argv = ['xgal', 'score', '--model', {str(model)!r}, '--pool', {str(pool)!r}, '-k', '3', "
        f"'-o', {str(tmp_path / 'r.csv')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'xgal.train', "
        "'xgal.export', 'xgal.loop')))\n"
        f"open({str(probe)!r}, 'w').write(json.dumps([code, bad]))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert json.loads(probe.read_text()) == [0, []]
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 3


def test_demo_quick(tmp_path):
    """The README's main job, quick: three arms through a local scorer, results and plots."""
    res = run("demo", "--quick", "--out", tmp_path / "demo")
    assert "final round" in res.stdout and "xgal - uncertainty" in res.stdout
    doc = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(doc["summary"]["arms"]) == {"random", "uncertainty", "xgal"}
    # Which initial set it used, said and recorded: drawn without the pool's labels by default.
    assert "initial set: drawn at random, no label read" in res.stdout and doc["initial_balance"] == "none"
    # Which seeds are which: seed 0 was spent choosing; claims rest on held-out seeds only.
    assert doc["seed_roles"] == {"0": "spent"} and "spent seed 0 (n=1)" in res.stdout
    assert "claims come from held-out seeds 200-209 only" in doc["seeds_text"]
    assert doc["regime"] == {"tag_fraction": 0.7, "tag_agreement": 0.95, "lesion_scale": 1.0}
    for arm in ("random", "uncertainty", "xgal"):
        rounds = doc["rounds"]["0"][arm]
        assert [r["labelled"] for r in rounds] == [30, 60, 90, 120]
    for png in ("learning_curves.png", "cam_overlays.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_an_unknown_arm(tmp_path):
    res = run("demo", "--arms", "random,nope", "--out", tmp_path / "demo", check=False)
    one_line_error(res, "unknown arm(s) ['nope']")
    assert "xgal-balanced" in res.stderr and "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "demo").exists()
