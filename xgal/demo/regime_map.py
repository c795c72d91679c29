"""Where does misalignment-guided selection help? `xgal regime-map` runs the quick demo's arms
at points of the synthetic pool's regime (the tag's share and agreement, the lesions' size, the
label budget), one factor at a time around the default, and reports at each point xgal − uncertainty
and xgal − random in final accuracy and CAM–ROI Dice with their paired 95% t-intervals.

Each point is one `run_demo` into its own folder; a point whose results.json is there is read,
not run again, so an interrupted map goes on where it stopped. Writes map.json, map.md (the
table) and map.png (the intervals, point by point).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from xgal.demo.arms import QUICK, Regime, parse_budget, pick_arms
from xgal.demo.report import Stat, stat
from xgal.demo.seeds import roles_text

ARMS = ("random", "uncertainty", "xgal")
PAIRS = ("xgal - uncertainty", "xgal - random")
FIGURES = (("final_accuracy", "accuracy"), ("final_cam_dice", "Dice"))


@dataclass(frozen=True)
class Point:
    """One regime and budget; `name` is its folder."""

    name: str
    regime: Regime
    budget: str  # INITIAL+ROUNDSxPER


DEFAULT_BUDGET = "30+3x30"
# One factor at a time around the default (tag on 70%, naming the class 95% of the time,
# lesions x1, 30 + 3 x 30 labels), and the control.
POINTS = (
    Point("default", Regime(), DEFAULT_BUDGET),
    Point("tag-on-10%", Regime(tag_fraction=0.1), DEFAULT_BUDGET),
    Point("tag-on-30%", Regime(tag_fraction=0.3), DEFAULT_BUDGET),
    Point("agreement-60%", Regime(tag_agreement=0.6), DEFAULT_BUDGET),
    Point("agreement-80%", Regime(tag_agreement=0.8), DEFAULT_BUDGET),
    Point("control", Regime(tag_agreement=1 / 3), DEFAULT_BUDGET),
    Point("lesions-x0.6", Regime(lesion_scale=0.6), DEFAULT_BUDGET),
    Point("lesions-x1.6", Regime(lesion_scale=1.6), DEFAULT_BUDGET),
    Point("budget-15+3x15", Regime(), "15+3x15"),
    Point("budget-60+3x60", Regime(), "60+3x60"),
)


def pick_points(names: Sequence[str]) -> tuple[Point, ...]:
    from xgal.core.errors import InvalidArgument

    known = {p.name: p for p in POINTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgument(f"unknown point(s) {unknown}; choose from {list(known)}")
    return tuple(known[n] for n in names)


def run_map(
    out_dir: Path, points: Sequence[Point], first_seed: int, seeds: int, console: Console | None = None
) -> dict:
    """Run (or read) every point; write and return the map."""
    from xgal.demo.run import run_demo

    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    for i, point in enumerate(points):
        folder = out_dir / point.name
        done = folder / "results.json"
        want = list(range(first_seed, first_seed + seeds))
        if not (done.is_file() and json.loads(done.read_text())["seeds"] == want):
            console.rule(f"point {i + 1}/{len(points)}: {point.name}")
            run_demo(
                folder,
                seeds=seeds,
                first_seed=first_seed,
                arms=pick_arms(list(ARMS)),
                console=console,
                regime=point.regime,
                budget=parse_budget(point.budget, QUICK),
            )
        doc = json.loads(done.read_text())
        rows.append(_row(point, doc))
        console.print(f"{point.name}: {_line(rows[-1])} ({time.perf_counter() - t0:.0f} s so far)")
    result = {
        "seeds": list(range(first_seed, first_seed + seeds)),
        "seeds_text": roles_text(list(range(first_seed, first_seed + seeds))),
        "points": rows,
    }
    (out_dir / "map.json").write_text(json.dumps(result, indent=1))
    (out_dir / "map.md").write_text(map_table(result))
    plot_map(result, out_dir / "map.png")
    console.print(f"wrote {out_dir / 'map.json'}, {out_dir / 'map.md'}, {out_dir / 'map.png'}")
    return result


def _row(point: Point, doc: dict) -> dict:
    diffs = doc["summary"]["differences"]
    row: dict = {
        "point": point.name,
        "regime": doc["regime"],
        "budget": point.budget,
        "seconds": doc["seconds"],
    }
    for pair in PAIRS:
        for key, _ in FIGURES:
            s = stat(diffs[pair][key])
            row[f"{pair}: {key}"] = {
                "mean": s.mean,
                "interval": s.interval(),
                "verdict": s.verdict(),
                "n": s.n,
            }
    return row


def _cell(d: dict) -> str:
    lo_hi = d["interval"]
    interval = "" if lo_hi is None else f" [{lo_hi[0]:+.3f}, {lo_hi[1]:+.3f}]"
    return f"{d['mean']:+.3f}{interval} {d['verdict']}"


def _line(row: dict) -> str:
    return "; ".join(f"{k} {_cell(v)}" for k, v in row.items() if isinstance(v, dict) and "verdict" in v)


def map_table(result: dict) -> str:
    """The map as a Markdown table: a row per point, a column per pair and figure."""
    cols = [(f"{p}: {k}", f"{p}, {name}") for p in PAIRS for k, name in FIGURES]
    head = "| point | " + " | ".join(title for _, title in cols) + " | cost |"
    rule = "|" + " --- |" * (len(cols) + 2)
    lines = [f"{result['seeds_text']}; mean [95% t-interval] verdict", "", head, rule]
    for row in result["points"]:
        cells = " | ".join(_cell(row[key]) for key, _ in cols)
        lines.append(f"| {row['point']} | {cells} | {row['seconds'] / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def plot_map(result: dict, path: Path) -> None:
    """Each point's mean and 95% interval, one panel per pair and figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points = [r["point"] for r in result["points"]]
    fig, axes = plt.subplots(1, 4, figsize=(15, 0.45 * len(points) + 1.6), sharey=True)
    for ax, (pair, (key, name)) in zip(axes, [(p, f) for p in PAIRS for f in FIGURES], strict=True):
        for y, row in enumerate(result["points"]):
            d = row[f"{pair}: {key}"]
            lo, hi = d["interval"] or (d["mean"], d["mean"])
            colour = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:grey"
            ax.plot([lo, hi], [y, y], color=colour, lw=2)
            ax.plot(d["mean"], y, "o", color=colour)
        ax.axvline(0, color="black", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(f"{pair}\n{name}", fontsize=9)
    axes[0].set_yticks(range(len(points)), points)
    axes[0].invert_yaxis()
    fig.suptitle(f"paired 95% t-intervals; {result['seeds_text']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["POINTS", "Point", "Stat", "map_table", "pick_points", "plot_map", "run_map"]
