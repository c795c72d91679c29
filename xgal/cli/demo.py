"""`xgal demo`: active learning on synthetic scans, strategies side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from xgal.cli.common import out


def demo(
    out_dir: Path = typer.Option(
        Path("xgal-demo"), "--out", help="Folder for pools, runs, results and plots."
    ),
    quick: bool = typer.Option(False, help="A smaller run: 3 arms, 30 + 3 x 30 labels (under 2 minutes)."),
    seeds: int = typer.Option(
        1, min=1, help="Repeat with this many seeds; from 2 on, report mean ± std of paired differences."
    ),
    seed: int = typer.Option(0, help="The first seed."),
    shortcut: bool = typer.Option(
        True,
        "--shortcut/--no-shortcut",
        help="--no-shortcut: the control, where the burned-in tag is independent of the class in the "
        "pool too, so nothing rewards looking outside the lesion.",
    ),
    initial_balance: str = typer.Option(
        "none",
        help="none: each arm's initial set drawn at random without the pool's labels; oracle: "
        "stratified by the true labels, as the authors did.",
    ),
    tag_fraction: float = typer.Option(0.7, help="The pool's regime: share of scans carrying the tag."),
    tag_agreement: float | None = typer.Option(
        None,
        help="The pool's regime: how often the tag names the true class in the pool (default 0.95; "
        "1/3 is --no-shortcut).",
    ),
    lesion_scale: float = typer.Option(1.0, help="The pool's regime: the lesions' radius, times 1 (0.25-3)."),
    budget: str = typer.Option(
        "",
        help="Labels as INITIAL+ROUNDSxPER, e.g. 30+3x30 (default: 60+5x60, --quick 30+3x30); pool "
        "and test split as --quick or not.",
    ),
    arms: str = typer.Option(
        "",
        help="Comma-separated arms to run instead of the default ones; all: random, uncertainty, "
        "xgal, xgal-learned, xgal-raw, xgal-rank, xgal-balanced, xgal-power, xgal-body, xgal-raw-body, "
        "xgal-alpha0, xgal-spread, xgal-typical, bald, xgal-bald, xgal-bald-typical.",
    ),
    roi_fraction: float = typer.Option(
        1.0,
        min=0.0,
        max=1.0,
        help="The ROI budget: the radiologist draws ROIs on this share of each request's scans (the "
        "first in rank order), in every arm; the guidance loss and the ROI head see only those.",
    ),
) -> None:
    """Active learning on synthetic scans: strategies side by side at equal budget.

    Random, uncertainty, xgal (the expert's pool ROIs) and xgal-learned (the ROIs a head learns
    from the ROIs drawn on labelled scans) through a local scorer; writes results.json,
    learning_curves.png and cam_overlays.png."""
    from xgal.core.errors import InvalidArgument
    from xgal.demo import pick_arms, run_demo
    from xgal.demo.arms import FULL, QUICK, Regime, parse_budget
    from xgal.demo.run import NUM_CLASSES

    chosen = pick_arms([a.strip() for a in arms.split(",") if a.strip()]) if arms else None
    if initial_balance not in ("none", "oracle"):
        raise InvalidArgument(f"--initial-balance must be none or oracle, got {initial_balance!r}")
    if tag_agreement is not None and not shortcut:
        raise InvalidArgument("--no-shortcut sets the tag's agreement to 1/3: give one or the other")
    if not (0 <= tag_fraction <= 1 and 0 <= (tag_agreement or 0) <= 1 and 0.25 <= lesion_scale <= 3):
        raise InvalidArgument("--tag-fraction and --tag-agreement take 0 to 1, --lesion-scale 0.25 to 3")
    agreement = tag_agreement if tag_agreement is not None else 0.95 if shortcut else 1 / NUM_CLASSES
    regime = Regime(tag_fraction, agreement, lesion_scale)
    run_demo(
        out_dir,
        quick=quick,
        seeds=seeds,
        first_seed=seed,
        arms=chosen,
        shortcut=shortcut,
        console=out,
        initial_balance=initial_balance,
        regime=regime,
        budget=parse_budget(budget, QUICK if quick else FULL) if budget else None,
        roi_fraction=roi_fraction,
    )


def regime_map(
    out_dir: Path = typer.Option(Path("xgal-map"), "--out", help="Folder for each point's demo and the map."),
    seed: int = typer.Option(100, help="The first seed (100-109: the development seeds)."),
    seeds: int = typer.Option(10, min=2, help="Seeds per point (a paired t-interval needs 2 or more)."),
    points: str = typer.Option(
        "",
        help="Comma-separated points (default: all): default, tag-on-10%, tag-on-30%, agreement-60%, "
        "agreement-80%, control, lesions-x0.6, lesions-x1.6, budget-15+3x15, budget-60+3x60.",
    ),
) -> None:
    """Where xgal's selection helps: the quick demo's arms at points of the pool's regime, one
    factor at a time, each xgal - uncertainty and xgal - random with paired 95% t-intervals.

    A point already run (its results.json there, with these seeds) is read, not run again.
    Writes map.json, map.md and map.png; about 10 minutes a point at 10 seeds on 2 cores."""
    from xgal.demo.regime_map import POINTS, pick_points, run_map

    chosen = pick_points([p.strip() for p in points.split(",") if p.strip()]) if points else POINTS
    run_map(out_dir, chosen, seed, seeds, console=out)
