"""The command line as a user runs it: real processes, real files."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model

XGAL = [sys.executable, "-m", "xgal.cli"]


def run(*args, check=True):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([*XGAL, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def pool_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    run("pool", "synth", root / "pool", "--size", 60, "--seed", 1, "--image-size", 32, "--shard-size", 25)
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1)
    export_scoring_graph(model, "features.stage4.0", root / "m.onnx", image_shape=(1, 32, 32))
    return root / "pool", root / "m.onnx"


def test_pool_info_and_verify(pool_and_model):
    pool, _ = pool_and_model
    assert "60 samples, uint8[1, 32, 32]" in run("pool", "info", pool).stdout
    assert "all checksums match" in run("pool", "verify", pool).stdout


def test_score_prints_table_and_writes_files(pool_and_model, tmp_path):
    pool, model = pool_and_model
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("scan-0000000\nscan-0000001\n")
    res = run(
        "score",
        "--model",
        model,
        "--pool",
        pool,
        "--top-k",
        7,
        "--strategy",
        "xgal",
        "--exclude",
        labelled,
        "--out",
        tmp_path / "r.json",
        "--all",
    )
    assert "rank" in res.stdout and "scored 60 images" in res.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["top"]) == 7 and len(doc["all"]) == 58
    assert {"scan-0000000", "scan-0000001"}.isdisjoint(r["id"] for r in doc["top"])
    scores = [r["score"] for r in doc["top"]]
    assert scores == sorted(scores, reverse=True)

    run(
        "score",
        "--model",
        model,
        "--pool",
        pool,
        "-k",
        5,
        "--strategy",
        "uncertainty",
        "-o",
        tmp_path / "r.csv",
    )
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 5 and {"id", "score", "uncertainty", "misalignment", "p_class0"} <= set(rows[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "best"], "strategy must be one of"),
        (["--lambda", "2"], "must be in [0, 1]"),
        (["--top-k", "0"], "top-k must be at least 1"),
    ],
)
def test_score_errors_are_one_line(pool_and_model, args, message):
    pool, model = pool_and_model
    res = run("score", "--model", model, "--pool", pool, *args, check=False)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_score_not_a_pool_or_model(pool_and_model, tmp_path):
    pool, model = pool_and_model
    res = run("score", "--model", model, "--pool", tmp_path, check=False)
    assert res.returncode == 2 and "is not a pool" in res.stderr
    (tmp_path / "x.onnx").write_text("nope")
    res = run("score", "--model", tmp_path / "x.onnx", "--pool", pool, check=False)
    assert res.returncode == 2 and "not a loadable ONNX model" in res.stderr


def test_scorer_side_never_imports_torch(pool_and_model):
    """DESIGN.md: a scorer replica installs no PyTorch; scoring must not import it."""
    pool, model = pool_and_model
    code = (
        "import sys\n"
        "from xgal.pool.format import Pool\n"
        "from xgal.core.acquisition import AcquisitionConfig\n"
        "from xgal.scorer.engines import OnnxRuntimeEngine\n"
        "from xgal.scorer.pipeline import score_pool\n"
        "from xgal.scorer import report\n"
        "import xgal.cli\n"
        f"score_pool(OnnxRuntimeEngine({str(model)!r}), Pool({str(pool)!r}), AcquisitionConfig(), 3)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('xgal.trainer')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_demo_quick(tmp_path):
    """The README's main job, quick: three arms through a local scorer, results and plots."""
    res = run("demo", "--quick", "--out", tmp_path / "demo")
    assert "final round" in res.stdout and "xgal - uncertainty" in res.stdout
    doc = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(doc["summary"]["arms"]) == {"random", "uncertainty", "xgal"}
    for arm in ("random", "uncertainty", "xgal"):
        rounds = doc["rounds"]["0"][arm]
        assert [r["labelled"] for r in rounds] == [30, 60, 90, 120]
    for png in ("learning_curves.png", "cam_overlays.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_an_unknown_arm(tmp_path):
    res = run("demo", "--arms", "random,nope", "--out", tmp_path / "demo", check=False)
    assert res.returncode == 2
    assert "unknown arm(s) ['nope']" in res.stderr and "xgal-balanced" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "demo").exists()
