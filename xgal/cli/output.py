"""A ranking for people and files: the terminal table, JSON and CSV. The same for a ranking made
in this process (`xgal score`) and one made by running scorers (`xgal client score`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import ROW_ROI_SOURCES
from xgal.core.errors import InvalidArgument
from xgal.core.ranking import ScoreResult, rows
from xgal.core.spreadsheet import write_rows


def to_dict(result: ScoreResult, context: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        **context,
        "scored": result.scored,
        "excluded": result.excluded,
        "seconds": round(result.seconds, 4),
        "images_per_s": round(result.images_per_s, 2),
        "class_names": list(result.class_names),
        "top": rows(result.top, result.class_names),
        # Bad samples left out under --on-bad-sample skip: never scored, so in no row above.
        "skipped_count": len(result.skipped),
        "skipped": [{"id": s.id, "reason": s.reason} for s in result.skipped],
    }
    if result.all is not None:
        doc["all"] = rows(result.all, result.class_names, ranked=False)
    return doc


def check_path(path: str | os.PathLike[str] | None) -> None:
    """Refuse a file name `write` cannot handle (called before the scoring, not after it)."""
    if path is not None and Path(path).suffix.lower() not in (".json", ".csv"):
        raise InvalidArgument(f"--out must end in .json or .csv, got {Path(path).name}")


def write(result: ScoreResult, path: str | os.PathLike[str], context: dict[str, Any]) -> Path:
    """JSON (everything) or CSV (the ranked rows, or every row with --all) by the suffix."""
    check_path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(to_dict(result, context), indent=1))
        return path
    table = (
        rows(result.all, result.class_names, ranked=False)
        if result.all is not None
        else rows(result.top, result.class_names)
    )
    fields = [k for k in table[0] if k != "probs"] if table else ["id"]
    write_rows(
        path,
        fields + [f"p_{n}" for n in result.class_names],
        ([row[k] for k in fields] + [f"{p:.6g}" for p in row["probs"]] for row in table),
    )
    return path


def print_table(
    result: ScoreResult,
    title: str,
    console: Console | None = None,
    limit: int = 30,
    source: str = "",
    config: AcquisitionConfig | None = None,
) -> None:
    """The first `limit` ranked rows and a summary line; `source` (e.g. " with m v2") names
    what scored them; with the `config` that ranked them, a note when M could not decide."""
    console = console or Console()
    table = Table(title=title, title_justify="left")
    for col, just in (("rank", "right"), ("id", "left"), ("score", "right"), ("U", "right")):
        table.add_column(col, justify=just)
    table.add_column("M = 1 - Dice", justify="right")
    table.add_column("predicted", justify="left")
    table.add_column("p(pred)", justify="right")
    ranked = rows(result.top, result.class_names)
    for row in ranked[:limit]:
        notes = [
            n
            for n, on in (
                ("no ROI", row["roi"] == "none"),
                ("body", row["roi"] == "body"),
                ("learned ROI", row["roi"] == "learned"),
                ("flat CAM", row["flat_cam"]),
            )
            if on
        ]
        table.add_row(
            str(row["rank"]),
            row["id"],
            f"{row['score']:.4f}",
            f"{row['uncertainty']:.4f}",
            f"{row['misalignment']:.4f}" + (f" ({', '.join(notes)})" if notes else ""),
            row["pred_name"],
            f"{row['probs'][row['pred']]:.3f}",
        )
    console.print(table)
    if len(result.top) > limit:
        console.print(f"... {len(result.top) - limit} more in the output file")
    if ranked:
        # What M means for this selection: said, not left to the JSON.
        count = {k: sum(r["roi"] == k for r in ranked) for k in ROW_ROI_SOURCES}
        flat = sum(r["flat_cam"] for r in ranked)
        console.print(
            f"M of the {len(ranked)} selected measured against: {count['expert']} expert ROIs, "
            f"{count['body']} body masks, {count['learned']} learned ROIs, {count['none']} without ROI; "
            f"{flat} with a flat CAM"
        )
    console.print(
        f"scored {result.scored} images{source} in {result.seconds:.2f} s "
        f"({result.images_per_s:.1f} images/s); {result.excluded} excluded"
        + (f"; {len(result.skipped)} skipped (bad samples, not scored)" if result.skipped else "")
    )
    for s in result.skipped[:limit]:
        console.print(f"  skipped {s.id}: {s.reason}", markup=False, highlight=False)
    if len(result.skipped) > limit:
        console.print(f"  ... and {len(result.skipped) - limit} more skipped (all in the .json output)")
    note = result.misalignment_note(config) if config is not None else None
    if note:
        console.print(f"[yellow]note:[/] {note}")
