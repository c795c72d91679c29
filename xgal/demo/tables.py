"""The demo's console output: per-round tables, the final summary and the paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.table import Table

from xgal.demo.report import FIGURES, stat
from xgal.demo.seeds import roles_text
from xgal.loop import RoundRecord


def round_tables(seed: int, results: Mapping[str, Sequence[RoundRecord]]) -> list[Table]:
    """Test accuracy, then CAM-ROI Dice, per round and arm (one table each: they stay narrow)."""
    tables = []
    labelled = [r.labelled for r in max(results.values(), key=len)]
    metrics = [("accuracy", "test accuracy"), ("cam_dice", "CAM-ROI Dice")]
    if any(not math.isnan(r.roi_dice) for recs in results.values() for r in recs):
        metrics.append(("roi_dice", "learned ROI Dice (vs the expert's)"))
    for metric, name in metrics:
        table = Table(title=f"seed {seed}: {name} per round", title_justify="left")
        table.add_column("labelled", justify="right")
        for arm in results:
            table.add_column(arm, justify="right")
        for r, n in enumerate(labelled):
            cells = [_cell(getattr(recs[r], metric)) if r < len(recs) else "" for recs in results.values()]
            table.add_row(str(n), *cells)
        tables.append(table)
    return tables


def _cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"  # an arm without an ROI head: nothing measured


def _seeds_text(seeds: Sequence[int]) -> str:
    text = roles_text(seeds)
    return text if len(seeds) == 1 else f"mean ± std over {text}"


def arms_table(summary: Mapping) -> Table:
    labelled = {s["labelled"] for s in summary["arms"].values()}
    table = Table(
        title=f"each arm at {'/'.join(map(str, sorted(labelled)))} labels: final round and mean over "
        f"the learning curve (AUC); {_seeds_text(summary['seeds'])}",
        title_justify="left",
    )
    for col in ("arm", "accuracy", "acc. AUC", "CAM-ROI Dice", "Dice AUC"):
        table.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    for arm, s in summary["arms"].items():
        table.add_row(arm, *(stat(s[k]).text() for k in FIGURES))
    return table


_NAMES = {
    "final_accuracy": "accuracy",
    "auc_accuracy": "acc. AUC",
    "final_cam_dice": "Dice",
    "auc_cam_dice": "Dice AUC",
}


def differences_table(summary: Mapping) -> Table:
    """Paired per-seed differences, each with whether it stands out from the seed-to-seed noise
    (the per-seed values are in results.json)."""
    table = Table(
        title=f"paired differences a - b (per seed, then over seeds, with the paired 95% t-interval); "
        f"{_seeds_text(summary['seeds'])}",
        title_justify="left",
    )
    # Numbers never shrink (an 80-column log would cut them to "+0.0…"); words wrap instead.
    one_seed = len(summary["seeds"]) == 1
    widths = {"a - b": None, "figure": None, "mean": 6, "95% interval": 16, "verdict": None}
    for col, width in widths.items():
        if one_seed and col == "95% interval":
            continue
        number = width is not None
        table.add_column(
            col, justify="right" if number else "left", no_wrap=number or col == "a - b", min_width=width
        )
    for pair, d in summary["differences"].items():
        for i, key in enumerate(FIGURES):
            s = stat(d[key])
            cells = [pair if i == 0 else "", _NAMES[key], f"{s.mean:+.3f}"]
            cells += [] if one_seed else [s.interval_text()]
            table.add_row(*cells, s.verdict(), end_section=i == 3)
    return table
