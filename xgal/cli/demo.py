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
    arms: str = typer.Option(
        "",
        help="Comma-separated arms to run instead of the default ones; all: random, uncertainty, "
        "xgal, xgal-raw, xgal-rank, xgal-balanced, xgal-power, xgal-body, xgal-raw-body, xgal-alpha0, "
        "xgal-spread, xgal-typical, bald, xgal-bald, xgal-bald-typical.",
    ),
) -> None:
    """Active learning on synthetic scans: strategies side by side at equal budget.

    Random, uncertainty and xgal arms through a local scorer; writes results.json,
    learning_curves.png and cam_overlays.png."""
    from xgal.demo import pick_arms, run_demo

    chosen = pick_arms([a.strip() for a in arms.split(",") if a.strip()]) if arms else None
    if initial_balance not in ("none", "oracle"):
        from xgal.core.errors import InvalidArgument

        raise InvalidArgument(f"--initial-balance must be none or oracle, got {initial_balance!r}")
    run_demo(
        out_dir,
        quick=quick,
        seeds=seeds,
        first_seed=seed,
        arms=chosen,
        shortcut=shortcut,
        console=out,
        initial_balance=initial_balance,
    )
