"""A list CSV's column names checked against the ones an importer reads: a misspelt or
differently named column (`image,class`, `image,lable`) would otherwise be ignored and the pool
imported without labels. Columns that resemble none of the expected names stay accepted."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from xgal.core.errors import InvalidArgument

# Names people give the columns xgal reads: what each one most likely meant.
SYNONYMS = {
    "class": "label", "classes": "label", "class_name": "label", "category": "label",
    "diagnosis": "label", "target": "label", "labels": "label", "y": "label",
    "path": "image", "file": "image", "filename": "image", "file_name": "image", "img": "image",
    "images": "image", "image_path": "image",
    "name": "id", "sample": "id", "sample_id": "id", "ids": "id",
    "roi": "mask", "seg": "mask", "segmentation": "mask", "masks": "mask", "mask_path": "mask",
}  # fmt: skip


def check_columns(path: Path, header: Sequence[str], expected: Sequence[str]) -> None:
    """Refuse a CSV with a column that looks like an expected one (a near miss in spelling, or a
    usual other name) while that expected column is missing; naming both and the expected names."""
    have = set(header)  # the importers read columns by their exact names
    for column in header:
        if column in expected:
            continue
        name = column.strip().lower()  # `Label`, ` label`: the name, not the column read
        close = difflib.get_close_matches(name, expected, n=1, cutoff=0.75)
        meant = name if name in expected else SYNONYMS.get(name) or (close[0] if close else None)
        if meant is not None and meant in expected and meant not in have:
            raise InvalidArgument(
                f"{path}: column {column!r} looks like {meant!r}, which is missing; the columns read are "
                f"{', '.join(expected)} (others are ignored): rename it to {meant!r}"
            )
