"""Split a pool into a training and a test pool by group (patient): slices of one patient look
alike, so a patient in both splits makes the test accuracy a memory test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.writer import PoolWriter

CHUNK = 2048


def split_by_group(
    pool: Pool,
    out_train: str | os.PathLike[str],
    out_test: str | os.PathLike[str],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Pool, Pool]:
    """Whole groups, drawn in a seeded order, go to the test pool until it holds at least
    `test_fraction` of the samples; the rest are the training pool. Sample order is kept."""
    if not pool.has_groups:
        raise InvalidArgument(
            f"{pool.path} records no patient per sample; import it with a patient column "
            "(xgal pool import volumes) to split it by patient"
        )
    if not 0.0 < test_fraction < 1.0:
        raise InvalidArgument(f"test fraction must be between 0 and 1, got {test_fraction}")
    groups = pool.groups()
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < 2:
        raise InvalidArgument(f"{pool.path} holds one patient ({names[0]}): nothing to split")
    order = np.random.default_rng(seed).permutation(len(names))
    taken = np.cumsum(counts[order])
    cut = int(np.searchsorted(taken, test_fraction * pool.count)) + 1
    test_groups = set(names[order[: min(cut, len(names) - 1)]].tolist())
    in_test = np.isin(groups, list(test_groups))
    where = f"split of {pool.path.name} by patient (seed {seed}, test fraction {test_fraction})"
    train = _copy(pool, np.flatnonzero(~in_test), out_train, f"{where}: training part")
    test = _copy(pool, np.flatnonzero(in_test), out_test, f"{where}: test part")
    return train, test


def _copy(pool: Pool, rows: np.ndarray, out: str | os.PathLike[str], description: str) -> Pool:
    keys = ["ids", "images", "rois"] + (["labels"] if pool.has_labels else []) + ["groups"]
    with PoolWriter(
        out,
        image_shape=pool.image_shape,
        pixel_dtype=pool.pixel_dtype,
        class_names=pool.class_names,
        with_labels=pool.has_labels,
        with_groups=True,
        description=description,
    ) as writer:
        for lo in range(0, len(rows), CHUNK):
            d = pool.take(rows[lo : lo + CHUNK], keys)
            writer.add(d["ids"], d["images"], d["rois"], d.get("labels"), groups=d["groups"])
    return Pool(Path(out))


def shared_groups(a: Pool, b: Pool) -> list[str]:
    """Groups (patients) found in both pools; none when either records no groups."""
    if not (a.has_groups and b.has_groups):
        return []
    return sorted(set(a.groups().tolist()) & set(b.groups().tolist()))
