"""`xgal annotations`: a radiologist's answers to the open round of a run (folder hand-off), and
`xgal report`: the run as one page."""

from __future__ import annotations

from pathlib import Path

import typer

from xgal.cli.common import App, out

app = App(help="Record a radiologist's answers to the round a run waits on.")


@app.command("add")
def annotations_add(
    run: Path = typer.Argument(..., help="The run folder (xgal train --out)."),
    labels: Path = typer.Option(..., help="CSV id,label: the round's labels.csv, filled in."),
    masks: Path | None = typer.Option(None, help="Folder of <id>.png ROI masks (the pool's size)."),
    boxes: Path | None = typer.Option(None, help="CSV of ROI boxes: id, x_min, y_min, x_max, y_max."),
    partial: bool = typer.Option(
        False, help="Close the round with the scans answered; the rest stay unlabelled (asked again later)."
    ),
) -> None:
    """Check the answers (IDs of the open round, each once, all answered, known classes, mask
    sizes) and record them; nothing is written unless all of them pass. Then run the same
    `xgal train` command again."""
    from xgal.annotate.answers import record_answers

    folder, n = record_answers(run, labels, masks=masks, boxes=boxes, partial=partial)
    say_recorded(folder, n)


def say_recorded(folder: Path, n: int) -> None:
    """What was recorded, and what the ROIs the model offered saved (their corrections file)."""
    from xgal.annotate.corrections import corrections_summary

    out.print(f"recorded {n} answers for {folder.name}; run the same xgal train command to go on")
    c = corrections_summary(folder)
    if c is not None:
        out.print(
            f"{c['scans']:.0f} scans had the model's ROI to correct: {c['changed']:.0f} pixels painted or "
            f"erased instead of {c['returned']:.0f} drawn from nothing, {c['saved']:.0f} saved "
            f"({folder.name}/roi_corrections.csv)"
        )


@app.command("map-back")
def annotations_map_back(
    run: Path = typer.Argument(..., help="The run folder (xgal train --out)."),
    ids: Path = typer.Option(
        ..., help="The pool's ID map, POOL.ids.json (written by an --anonymise import)."
    ),
    out_json: Path = typer.Option(
        ..., "--out", help="Where to write the mapped dataset.json (not in the run)."
    ),
) -> None:
    """A copy of the run's dataset.json whose entries also name each scan's source ID and image
    file before anonymisation (the radiologist never sees them)."""
    from xgal.annotate.datalist import map_back

    out.print(f"wrote {map_back(run, ids, out_json)}")


def report(run: Path = typer.Argument(..., help="The run folder (xgal train --out).")) -> None:
    """Write RUN/report.html: one self-contained page with the run's settings, its rounds, the
    learning curves and each hand-off round's scans with their Grad-CAM hints."""
    from xgal.annotate.datalist import ensure_current
    from xgal.annotate.report import write_report

    ensure_current(run)
    out.print(f"wrote {write_report(run)}")
