"""The demo's console output: per-round tables, the final summary and the paired differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

from xgal.demo.report import stat
from xgal.trainer.loop import RoundRecord


def round_table(seed: int, results: Mapping[str, Sequence[RoundRecord]]) -> Table:
    table = Table(title=f"seed {seed}: test accuracy / CAM-ROI Dice per round", title_justify="left")
    table.add_column("labelled", justify="right")
    for name in results:
        table.add_column(name, justify="right")
    n_rounds = max(len(v) for v in results.values())
    for r in range(n_rounds):
        row = [str(next(iter(results.values()))[r].labelled)]
        for recs in results.values():
            row.append(f"{recs[r].accuracy:.3f} / {recs[r].cam_dice:.3f}" if r < len(recs) else "")
        table.add_row(*row)
    return table


def _seeds_text(seeds: Sequence[int]) -> str:
    n = len(seeds)
    return f"seed {seeds[0]}" if n == 1 else f"mean ± std over {n} seeds ({', '.join(map(str, seeds))})"


def arms_table(summary: Mapping) -> Table:
    table = Table(
        title=f"each arm: final round and mean over the curve (AUC); {_seeds_text(summary['seeds'])}",
        title_justify="left",
    )
    for col in ("arm", "labelled", "accuracy", "accuracy AUC", "CAM-ROI Dice", "Dice AUC"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, s in summary["arms"].items():
        table.add_row(
            arm,
            str(s["labelled"]),
            *(
                stat(s[k]).text()
                for k in ("final_accuracy", "auc_accuracy", "final_cam_dice", "auc_cam_dice")
            ),
        )
    return table


def differences_table(summary: Mapping) -> Table:
    """Paired per-seed differences, with whether each stands out from the seed-to-seed noise."""
    table = Table(
        title=f"paired differences (a - b, per seed, then over seeds); {_seeds_text(summary['seeds'])}",
        title_justify="left",
    )
    for col in ("a - b", "accuracy", "verdict", "accuracy AUC", "CAM-ROI Dice", "verdict", "Dice AUC"):
        table.add_column(col, justify="left" if col in ("a - b", "verdict") else "right")
    for pair, d in summary["differences"].items():
        acc, acc_auc = stat(d["final_accuracy"]), stat(d["auc_accuracy"])
        dice, dice_auc = stat(d["final_cam_dice"]), stat(d["auc_cam_dice"])
        table.add_row(
            pair,
            acc.text(signed=True),
            acc.verdict(),
            acc_auc.text(signed=True),
            dice.text(signed=True),
            dice.verdict(),
            dice_auc.text(signed=True),
        )
    return table
