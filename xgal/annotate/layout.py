"""The files of a hand-off round, `OUT/round-N/` (N = 0 for the initial set, N = r + 1 for the
selection made by round r's model), and the file name each scan gets there."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

REQUEST, TEMPLATE, META, ANSWERS, HINTS = "request.csv", "labels.csv", "request.json", "answers.npz", "hints"
RANKING = "ranking.json"  # the scores of the round's selection, as the scorers returned them
SCANS = "scans"  # each scan at the pool's size: what masks are drawn on
PREFILL = "prefill_rois.npz"  # the model's predicted ROIs, offered where the pool has none
PREFILL_MASKS = "prefill"  # the same as mask PNGs, to edit and hand back (annotations add --masks)
ROI_CORRECTIONS = "roi_corrections.csv"  # per answered scan offered one: how far the answer moved it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # what a hint or scan file must start with to be shown
REQUEST_COLUMNS = (
    "rank", "id", "score", "uncertainty", "misalignment", "predicted", "probability", "chosen_by",
)  # fmt: skip


def round_folder(out: str | Path, n: int) -> Path:
    return Path(out) / f"round-{n}"


def round_number(folder: Path) -> int | None:
    """N of a folder named `round-N`; None for any other name (`round-old`, `round-<b>x`)."""
    m = re.fullmatch(r"round-([0-9]+)", folder.name)
    return int(m[1]) if m else None


def round_folders(out: str | Path, holding: str) -> list[Path]:
    """The run's round folders that hold the file `holding`, in round order; other folders whose
    names start with round- are not rounds and are left out."""
    found = [p for p in Path(out).glob("round-*") if round_number(p) is not None and (p / holding).is_file()]
    return sorted(found, key=lambda p: round_number(p) or 0)


NAME_MAX = 100  # characters of an ID kept in its file name (file systems allow about 255 bytes)


def file_name(sample_id: str) -> str:
    """A file name for an ID: the ID itself where it is safe (lowercase ASCII letters, digits,
    `-_.`, not starting with a dot, at most NAME_MAX long), else its safe characters, lowercased,
    cut, and a short hash of it: `a/b` and `a_b` never share a file, nor `A` and `a` on a file
    system that ignores case (macOS, Windows)."""
    safe = "".join(c.lower() if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in sample_id)[
        :NAME_MAX
    ]
    if safe == sample_id and not safe.startswith("."):
        return safe
    return f"{safe.lstrip('.')}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"
