"""The regime map's own logic over hand-made learning curves: a point already run is read, not
run again (an interrupted map goes on); its rows hold each pair's mean, paired t-interval and
verdict; the table and the picture are written."""

import json

import pytest

from xgal.demo import regime_map
from xgal.demo.arms import Regime
from xgal.demo.regime_map import Point, map_table, run_map
from xgal.demo.report import summarise
from xgal.loop import RoundRecord


def _curve(acc, dice):
    return [RoundRecord(round=0, labelled=30, accuracy=acc, macro_f1=acc, cam_dice=dice, train_loss=0.0)]


def _results(gain):
    """Seeds 100-102: xgal ahead of both by `gain` + a little per seed, in accuracy and Dice."""
    out = {}
    for i, s in enumerate((100, 101, 102)):
        base = 0.5 + 0.01 * i
        out[s] = {
            "random": _curve(base, base / 2),
            "uncertainty": _curve(base + 0.01, base / 2),
            "xgal": _curve(base + gain + 0.005 * i, base / 2 + gain),
        }
    return out


def test_points_already_run_are_read_and_mapped(tmp_path, monkeypatch):
    points = (Point("wins", Regime(), "30+3x30"), Point("level", Regime(lesion_scale=2), "30+3x30"))
    for point, gain in zip(points, (0.1, 0.0), strict=True):
        (tmp_path / point.name).mkdir()
        doc = {"seeds": [100, 101, 102], "regime": {"tag_fraction": 0.7}, "seconds": 600.0}
        doc["summary"] = summarise(_results(gain))
        (tmp_path / point.name / "results.json").write_text(json.dumps(doc))

    def never(*a, **k):
        raise AssertionError("a point already run was run again")

    monkeypatch.setattr("xgal.demo.run.run_demo", never)
    result = run_map(tmp_path, points, 100, 3)
    wins, level = result["points"]
    assert wins["xgal - uncertainty: final_cam_dice"]["verdict"] == "better"
    assert wins["xgal - random: final_accuracy"]["mean"] == pytest.approx(0.105)
    assert level["xgal - uncertainty: final_accuracy"]["verdict"] in ("worse", "inconclusive", "no loss")
    assert level["xgal - random: final_cam_dice"]["interval"] == pytest.approx([0.0, 0.0])
    assert (
        result["seeds_text"]
        == "development seeds 100-102 (n=3); claims come from held-out seeds 200-209 only"
    )
    table = (tmp_path / "map.md").read_text()
    assert table == map_table(result) and "| wins | +0.095 [" in table and "| 10 min |" in table
    assert (tmp_path / "map.png").stat().st_size > 10_000
    # A point run with other seeds is run again.
    with pytest.raises(AssertionError, match="run again"):
        run_map(tmp_path, points[:1], 200, 3)


def test_unknown_points_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown point"):
        regime_map.pick_points(["default", "tag-on-50%"])
    assert [p.name for p in regime_map.pick_points(["control", "default"])] == ["control", "default"]
