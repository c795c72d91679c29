"""Split a pool into a training and a test pool: by group (patient) where the pool records one,
since slices of one patient look alike and a patient in both splits makes the test accuracy a
memory test; else by sample, at random and stratified by class where the pool has labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.id_map import IdMap, id_map_path
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
            "(xgal pool import volumes) to split it by patient, or split it by sample (--by sample) "
            "if each patient has one scan"
        )
    _check_fraction(test_fraction)
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
    _share_key(pool, train, test)
    return train, test


def split_by_sample(
    pool: Pool,
    out_train: str | os.PathLike[str],
    out_test: str | os.PathLike[str],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Pool, Pool]:
    """A seeded random `test_fraction` of the samples to the test pool, per class where the pool
    has labels (each class keeps its share in both parts), else of the whole pool. For pools
    whose samples are independent (one scan per patient); sample order is kept."""
    _check_fraction(test_fraction)
    if pool.count < 2:
        raise InvalidArgument(f"{pool.path} holds {pool.count} sample: nothing to split")
    rng = np.random.default_rng(seed)
    strata = pool.labels() if pool.has_labels else np.zeros(pool.count, dtype=np.int64)
    in_test = np.zeros(pool.count, dtype=bool)
    for c in np.unique(strata):
        rows = np.flatnonzero(strata == c)
        k = int(round(test_fraction * len(rows)))
        in_test[rng.permutation(rows)[: min(k, len(rows) - 1) if len(rows) > 1 else k]] = True
    if in_test.all() or not in_test.any():
        raise InvalidArgument(f"a test fraction of {test_fraction} leaves one part of {pool.path} empty")
    how = "stratified by class" if pool.has_labels else "at random"
    where = f"split of {pool.path.name} by sample, {how} (seed {seed}, test fraction {test_fraction})"
    train = _copy(pool, np.flatnonzero(~in_test), out_train, f"{where}: training part")
    test = _copy(pool, np.flatnonzero(in_test), out_test, f"{where}: test part")
    _share_key(pool, train, test)
    return train, test


def _share_key(pool: Pool, *parts: Pool) -> None:
    """Each part gets the pool's anonymisation key, with the map back of its own scans."""
    path = id_map_path(pool.path)
    if path.is_file():
        id_map = IdMap.read(path)
        for part in parts:
            id_map.restricted(part.ids().tolist()).write(part.path)


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise InvalidArgument(f"test fraction must be between 0 and 1, got {test_fraction}")


def _copy(pool: Pool, rows: np.ndarray, out: str | os.PathLike[str], description: str) -> Pool:
    keys = (
        ["ids", "images", "rois"]
        + (["labels"] if pool.has_labels else [])
        + (["groups"] if pool.has_groups else [])
    )
    with PoolWriter(
        out,
        image_shape=pool.image_shape,
        pixel_dtype=pool.pixel_dtype,
        class_names=pool.class_names,
        with_labels=pool.has_labels,
        with_groups=pool.has_groups,
        description=description,
    ) as writer:
        for lo in range(0, len(rows), CHUNK):
            d = pool.take(rows[lo : lo + CHUNK], keys)
            writer.add(d["ids"], d["images"], d["rois"], d.get("labels"), groups=d.get("groups"))
    return Pool(Path(out))


def shared_groups(a: Pool, b: Pool) -> list[str]:
    """Groups (patients) found in both pools; none when either records no groups."""
    if not (a.has_groups and b.has_groups):
        return []
    return sorted(set(a.groups().tolist()) & set(b.groups().tolist()))
