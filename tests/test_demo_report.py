"""The demo's conclusions from hand-made learning curves: AUC, spreads only where there are
several seeds, paired per-seed differences judged by their 95% t-interval, and which seeds
may carry a claim."""

import math

import pytest

from xgal.demo.report import Stat, curve_auc, stat, summarise
from xgal.demo.seeds import roles_text, seed_role
from xgal.loop import RoundRecord


def _curve(accs, dices, start=60, step=60):
    return [
        RoundRecord(round=i, labelled=start + i * step, accuracy=a, macro_f1=a, cam_dice=d, train_loss=0.0)
        for i, (a, d) in enumerate(zip(accs, dices, strict=True))
    ]


def test_curve_auc_is_the_trapezoid_mean_over_labelled_count():
    # 60 -> 120 -> 240 labels: segments of 60 and 120 labels, mean heights 0.55 and 0.75.
    recs = _curve([0.5, 0.6, 0.9], [0, 0, 0])
    recs[2].labelled = 240
    assert curve_auc(recs, "accuracy") == pytest.approx((0.55 * 60 + 0.75 * 120) / 180)
    assert curve_auc(recs[:1], "accuracy") == 0.5


def test_one_seed_has_no_spread_and_says_so():
    s = Stat.of([0.04])
    assert s.std is None and s.text(signed=True) == "+0.040" and s.interval() is None
    assert "one seed" in s.verdict()


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ([0.05, 0.06, 0.04], "better"),
        ([-0.05, -0.06, -0.04], "worse"),
        ([0.05, -0.04, 0.01], "inconclusive"),
        ([0.0, 0.01, -0.005, 0.004, 0.002], "no loss"),
        # 2 std from 0 was "better" before; with 3 seeds the t-interval asks for about 2.5 std.
        ([0.02, 0.03, 0.01], "no loss"),
    ],
)
def test_a_paired_difference_is_judged_by_its_t_interval(values, verdict):
    s = Stat.of(values)
    n, mean = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    assert s.std == pytest.approx(sd)
    t = {3: 4.302652729911275, 5: 2.7764451051977987}[n]  # Student's t, 0.975, n - 1 df (tables)
    assert s.interval() == pytest.approx((mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n)))
    assert s.verdict() == verdict


def test_seed_roles_say_which_seeds_may_carry_a_claim():
    assert [seed_role(s) for s in (100, 109, 200, 209, 3, 15, 16, 150)] == [
        "development", "development", "held-out", "held-out", "spent", "spent", "other", "other"
    ]  # fmt: skip
    assert roles_text(list(range(200, 210))) == "held-out seeds 200-209 (n=10)"
    assert roles_text([100, 101, 200]) == (
        "development seeds 100-101 (n=2); held-out seed 200 (n=1); "
        "claims come from held-out seeds 200-209 only"
    )


def test_summary_pairs_arms_seed_by_seed():
    results = {
        0: {"random": _curve([0.5, 0.6], [0.2, 0.2]), "xgal": _curve([0.5, 0.7], [0.2, 0.4])},
        1: {"random": _curve([0.6, 0.8], [0.3, 0.3]), "xgal": _curve([0.6, 0.85], [0.3, 0.5])},
    }
    out = summarise(results)
    assert out["seeds"] == [0, 1] and set(out["arms"]) == {"random", "xgal"}
    d = stat(out["differences"]["xgal - random"]["final_accuracy"])
    # Per seed +0.10 and +0.05: paired, not the difference of two means with their own spreads.
    assert d.per_seed == pytest.approx((0.10, 0.05)) and d.std == pytest.approx(0.0353553, abs=1e-6)
    auc = stat(out["differences"]["xgal - random"]["auc_cam_dice"])
    assert auc.per_seed == pytest.approx((0.1, 0.1))
    assert stat(out["arms"]["random"]["final_accuracy"]).mean == pytest.approx(0.7)
    assert "xgal - uncertainty" not in out["differences"]  # only pairs whose arms both ran


def test_the_no_shortcut_control_draws_the_tag_independently_of_the_class(tmp_path):
    from xgal.demo.arms import Regime
    from xgal.demo.run import _pool

    control = _pool(tmp_path / "p", 12, 0, "train", Regime(tag_agreement=1 / 3))
    assert "marker_agreement=0.3333333333333333" in control.description  # 1/K: independent
    # The same folder asked for with the shortcut is made again, not reused.
    again = _pool(tmp_path / "p", 12, 0, "train", Regime())
    assert "marker_agreement=0.95" in again.description


def test_the_report_fits_an_80_column_log_and_says_its_verdicts():
    import io

    from rich.console import Console

    from xgal.demo.tables import arms_table, differences_table, round_tables

    results = {
        s: {
            a: _curve([0.5, 0.6 + 0.01 * s + (0.05 if a == "xgal" else 0)], [0.2, 0.3])
            for a in ("random", "uncertainty", "xgal", "xgal-rank", "xgal-power")
        }
        for s in (0, 1, 2)
    }
    buf = io.StringIO()
    console = Console(file=buf, width=80)
    for table in [
        *round_tables(0, results[0]),
        arms_table(summarise(results)),
        differences_table(summarise(results)),
    ]:
        console.print(table)
    text = buf.getvalue()
    assert "xgal - random" in text and "xgal - uncertainty" in text  # pair names not wrapped
    assert "…" not in text  # no number cut short
    # One seed: no interval column, the numbers whole in 80 columns.
    one = io.StringIO()
    Console(file=one, width=80).print(differences_table(summarise({0: results[0]})))
    assert "…" not in one.getvalue() and "+0.050" in one.getvalue() and "95% interval" not in one.getvalue()
    assert "better" in text and "± " in text
