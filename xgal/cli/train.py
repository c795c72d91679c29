"""`xgal train`: the active-learning loop, against given scorers or one started here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xgal.cli.common import TLS_CA, TOKEN_FILE, acquisition_options, number, out


@acquisition_options(
    overrides=True,
    seed_help="Seed of the run: initial selection, weights, training, and the random strategy's "
    "draws (seed x 1000 + round).",
)
def train(
    pool: Path = typer.Option(..., help="Pool to select from (labels are read only through the annotator)."),
    test_pool: Path | None = typer.Option(
        None, help="Labelled test split for accuracy and CAM-ROI Dice (none: rounds are not evaluated)."
    ),
    out_dir: Path = typer.Option(Path("xgal-run"), "--out", help="Run folder; re-run to resume."),
    preset_name: str = typer.Option("demo", "--preset", help="demo | authors-brats | authors-vindr"),
    arch: str | None = typer.Option(None, help="small_cnn | resnet18 | densenet121"),
    head: str | None = typer.Option(None, help="linear | mlp | prototypical"),
    roi_head: str | None = typer.Option(
        None,
        help="none | shared | shared-detached | beside: a head that learns the ROIs drawn on labelled "
        "scans, so --roi learned can measure misalignment where the pool has none.",
    ),
    target_layer: str | None = typer.Option(None, help="Grad-CAM layer (module name)."),
    cam_method: str | None = typer.Option(
        None, help="The map the scoring graph ranks by: gradcam | gradcam++ | hirescam | layercam."
    ),
    alpha: float | None = typer.Option(None, help="Grad-CAM guidance loss weight (0 = off)."),
    initial: int | None = typer.Option(None, min=1, help="Initial labelled set size."),
    initial_ids: Path | None = typer.Option(
        None, help="File of the initial set's IDs, one per line (instead of a random --initial)."
    ),
    initial_balance: str | None = typer.Option(
        None,
        help="none: the initial set drawn at random, no label read (default); oracle: stratified by "
        "the pool's true labels, as the authors did (a simulation only).",
    ),
    per_round: int | None = typer.Option(None, min=1, help="Samples acquired per round."),
    rounds: int | None = typer.Option(None, min=0, help="Acquisition rounds."),
    epochs: int | None = typer.Option(None, help="Training epochs per round."),
    steps: int | None = typer.Option(None, min=0, help="Training steps per round (0 = use --epochs)."),
    lr: float | None = typer.Option(None, min=0.0, help="Learning rate."),
    batch_size: int | None = typer.Option(None, min=1, help="Training batch size."),
    cold_start: str | None = typer.Option(
        None, help="none | typical: the first selection as TypiClust representatives of the embedding."
    ),
    annotator: str | None = typer.Option(
        None,
        help="folder: each round's selection as files for a radiologist (default for a pool without "
        "labels); oracle: the pool's own labels (a simulation).",
    ),
    allow_shared_patients: bool = typer.Option(
        False, help="Accept a test pool that holds patients of the training pool."
    ),
    target: list[str] = typer.Option([], help="Scorer host:port (repeat); none = start one here."),
    pool_ref: str | None = typer.Option(None, help="The pool's path under the scorers' data root."),
    token_file: Path | None = TOKEN_FILE,
    tls_ca: Path | None = TLS_CA,
    *,
    acquisition: dict[str, Any],
) -> None:
    """Run the active-learning loop: train, export, publish, score, annotate, repeat.

    With the folder hand-off the run stops at each round's request and goes on when run again
    after `xgal annotations add`. Options not given keep the preset's values."""
    from dataclasses import replace

    from xgal.annotate.annotator import WAITING_EXIT, AwaitingAnnotations
    from xgal.annotate.folder import FolderAnnotator
    from xgal.annotate.oracle import OracleAnnotator
    from xgal.cli.client import connect
    from xgal.core.errors import InvalidArgument
    from xgal.loop import ActiveLearningLoop
    from xgal.loop.presets import preset
    from xgal.pool.format import Pool

    cfg = preset(preset_name)
    # --seed is the run's seed; the loop hands the acquisition its per-round seed.
    seed = acquisition.pop("seed", None)
    given = dict(
        arch=arch,
        head=head,
        roi_head=roi_head,
        target_layer=target_layer,
        cam_method=cam_method,
        initial=initial,
        per_round=per_round,
        rounds=rounds,
        seed=seed,
        cold_start=cold_start,
        initial_ids=_initial_ids(initial_ids),
        initial_balance=initial_balance,
    )
    overrides = {k: v for k, v in given.items() if v is not None}
    train_overrides = {
        k: v
        for k, v in dict(alpha=alpha, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size).items()
        if v is not None
    }
    cfg = replace(
        cfg,
        **overrides,
        acquisition=replace(cfg.acquisition, **acquisition),
        train=replace(cfg.train, **train_overrides),
    )
    data, test = Pool(pool), Pool(test_pool) if test_pool is not None else None
    if test is None:
        out.print("no --test-pool: the rounds report no accuracy or Dice (n/a)")
    else:
        from xgal.pool.split import shared_groups

        shared = shared_groups(data, test)
        if shared and not allow_shared_patients:
            raise InvalidArgument(
                f"{len(shared)} patients are in both the pool and the test pool (e.g. "
                f"{', '.join(shared[:3])}): their slices would make the test accuracy a memory test; "
                "split by patient (xgal pool split), or accept with --allow-shared-patients"
            )
    kind = annotator or ("oracle" if data.has_labels else "folder")
    if kind not in ("folder", "oracle"):
        raise InvalidArgument(f"--annotator must be folder or oracle, got {kind!r}")
    who = FolderAnnotator(out_dir) if kind == "folder" else OracleAnnotator(data)
    server = None
    if not target:
        from xgal.scorer.server import RunningServer, ServerConfig

        server = RunningServer(
            ServerConfig(data_root=data.path.parent, model_repo=out_dir / "models", port=0)
        )
        target = [server.address]
        out.print(f"started a local scorer on {server.address}")
    try:
        # The stage under way on a terminal (nothing in a log file); a killed run is resumed by
        # running the same command again.
        with connect(target, token_file, tls_ca) as client, out.status("starting") as status:
            loop = ActiveLearningLoop(
                cfg,
                data,
                test,
                client,
                who,
                out_dir,
                pool_ref=pool_ref or data.path.name,
                log=lambda r, _m: out.print(
                    f"round {r.round}: {r.labelled} labelled, accuracy {number(r.accuracy)}, macro-F1 "
                    f"{number(r.macro_f1)}, CAM-ROI Dice {number(r.cam_dice)}{_roi_dice(r)} "
                    f"({r.seconds:.1f} s)" + (f"\n  [yellow]note:[/] {r.note}" if r.note else "")
                ),
                on_stage=lambda r, stage: status.update(f"round {r}: {stage}"),
                on_trained=lambda r: out.print(
                    f"round {r.round} trained on {r.labelled} scans: accuracy {number(r.accuracy)}, "
                    f"macro-F1 {number(r.macro_f1)}, CAM-ROI Dice {number(r.cam_dice)}{_roi_dice(r)}"
                ),
            )
            try:
                records = loop.run()
            except AwaitingAnnotations as waiting:
                status.stop()
                out.print(str(waiting), markup=False)
                # Not an error and not done: a script tells the three apart by the exit code.
                raise typer.Exit(WAITING_EXIT) from None
    finally:
        if server is not None:
            server.stop(grace=5)
    out.print(f"done: {records[-1].labelled} labelled; state, annotations and model in {out_dir}")


def _roi_dice(record: Any) -> str:
    """ ", learned ROI Dice 0.812" for a run with an ROI head (NaN without one: nothing)."""
    import math

    return "" if math.isnan(record.roi_dice) else f", learned ROI Dice {number(record.roi_dice)}"


def _initial_ids(path: Path | None) -> tuple[str, ...] | None:
    """The IDs of --initial-ids, one per line; an empty file is refused, not taken as none."""
    if path is None:
        return None
    ids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not ids:
        from xgal.core.errors import InvalidArgument

        raise InvalidArgument(f"{path} lists no IDs (one per line)")
    return ids
