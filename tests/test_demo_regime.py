"""The demo's pool regime and budget (what the regime map sweeps): the lesions' size, the tag's
share and agreement reach the pool, each regime has its own data folder and description, a
budget is INITIAL+ROUNDSxPER, and contradictory options are refused by name."""

import numpy as np
import pytest
from helpers import run_xgal

from xgal.core.errors import InvalidArgument
from xgal.demo.arms import FULL, QUICK, Regime, parse_budget
from xgal.demo.run import NUM_CLASSES, _pool
from xgal.pool.synth import synth_pool


def test_lesion_scale_grows_the_rois_and_is_in_the_description(tmp_path):
    small = synth_pool(tmp_path / "a", 60, seed=3, lesion_scale=0.5)
    large = synth_pool(tmp_path / "b", 60, seed=3, lesion_scale=2.0)
    area = {p: p.read(0, 60, ("rois",))["rois"].sum(axis=(1, 2)).mean() for p in (small, large)}
    assert area[large] > 6 * area[small]  # radius x4: area about x16, less what leaves the body
    assert (
        "lesion_scale=0.5" in small.description
        and "lesion_scale" not in synth_pool(tmp_path / "c", 10, seed=3).description
    )


def test_each_regime_has_its_own_pool_and_folder(tmp_path):
    default, control = Regime(), Regime(tag_agreement=1 / NUM_CLASSES)
    sparse = Regime(tag_fraction=0.1, tag_agreement=0.95, lesion_scale=2)
    assert default.folder(5, True, 3) == "seed5" and control.folder(5, False, 3) == "seed5-no-shortcut"
    assert sparse.folder(5, True, 3) == "seed5-f0.1-a0.95-l2"
    assert "no shortcut" in control.describe(3) and "10% of scans" in sparse.describe(3)
    first = _pool(tmp_path / "p", 40, 1, "train", default)
    again = _pool(tmp_path / "p", 40, 1, "train", default)  # reused as it is
    assert (
        again.path == first.path
        and (first.path / "manifest.json").stat().st_mtime_ns
        == (again.path / "manifest.json").stat().st_mtime_ns
    )
    other = _pool(tmp_path / "p", 40, 1, "train", sparse)  # another regime: made anew
    assert "marker_fraction=0.1" in other.description and "lesion_scale=2" in other.description


def test_budgets_parse_and_refuse_what_cannot_run():
    assert parse_budget("30+3x30", QUICK) == QUICK
    b = parse_budget("20+4x15", FULL)
    assert (b.initial, b.rounds, b.per_round, b.pool, b.epochs) == (20, 4, 15, FULL.pool, FULL.epochs)
    for bad in ("30+3", "a+3x30", "0+3x30", "300+3x100"):
        with pytest.raises(InvalidArgument, match="--budget"):
            parse_budget(bad, QUICK)


def test_contradictory_demo_options_are_refused_by_name(tmp_path):
    res = run_xgal("demo", "--quick", "--no-shortcut", "--tag-agreement", "0.9", "--out", tmp_path / "d")
    assert res.returncode == 2 and "--no-shortcut sets the tag's agreement" in res.stderr + res.stdout
    res = run_xgal("demo", "--quick", "--lesion-scale", "9", "--out", tmp_path / "d")
    assert res.returncode == 2 and "--lesion-scale 0.25 to 3" in res.stderr + res.stdout
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    assert np.isclose(1 / NUM_CLASSES, Regime(tag_agreement=1 / 3).tag_agreement)
