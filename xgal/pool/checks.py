"""What `Pool.check` and `Pool.verify` check, remembered per state of the files they read.

A shard's headers (`CHECKED`), its checksums, ROI count and labels (`VERIFIED`) and a pool's
unique IDs (`UNIQUE_IDS`) are checked once per state of their files (`shards.file_state`: device,
inode, size, mtime, ctime) and of what the manifest expects of them, in the whole process: the
scorer's requests, in-process scoring (`score_pool(verify=True)`) and each Ray actor's blocks all
go through `Pool.verify`, so a shard is hashed once however many spans or requests read it, and
again as soon as one of its files or the manifest changes. A state younger than `RACY_NS` is not
remembered (a file written again within the file system's timestamp granularity could keep its
state, as git's "racily clean" index entries can). Each registry holds at most `REMEMBERED`
entries, the least recently used forgotten first (a forgotten shard is checked again).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from xgal.core.checksum import sha256_file
from xgal.core.errors import raise_if_out_of_files
from xgal.core.masks import roi_present
from xgal.core.samples import sample_problems
from xgal.pool.layout import PoolFormatError, Shard
from xgal.pool.shards import HASHES_AT_ONCE, FileState, file_state, release

if TYPE_CHECKING:
    from xgal.pool.format import BadSample, Pool

REMEMBERED = 16_384  # entries per registry (about 200 bytes each)
RACY_NS = 1_000_000_000  # a state is remembered once its files are this much older than the check

_HASHING = threading.BoundedSemaphore(HASHES_AT_ONCE)

State = tuple[tuple, tuple[FileState, ...]]  # (what the manifest expects, the files' states)


class Remembered:
    """Keys whose check passed, each with a digest of the state it passed in; an LRU."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._passed: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.runs = 0  # checks run (not found remembered), for tests and diagnostics
        # Two threads checking one key wait for each other, so the second finds it done.
        self._stripes = [threading.Lock() for _ in range(64)]

    def once(self, key: tuple, state: Callable[[], State | None], check: Callable[[], None]) -> None:
        """Run `check` unless it passed for `key` in the state `state()` says now (None: a file
        cannot be stat'ed, so always check: the check names it)."""
        before = state()
        if before is not None and self._known(key, before):
            return
        with self._stripes[hash(key) % len(self._stripes)]:
            if before is not None and self._known(key, before):
                return
            started = time.time_ns()
            with self._lock:
                self.runs += 1
            check()
            settled = before is not None and all(max(f[3], f[4]) <= started - RACY_NS for f in before[1])
            if settled and state() == before:  # unchanged while it was checked
                with self._lock:
                    self._passed[key] = _digest(before)
                    self._passed.move_to_end(key)
                    while len(self._passed) > self.size:
                        self._passed.popitem(last=False)

    def _known(self, key: tuple, state: State) -> bool:
        with self._lock:
            if self._passed.get(key) != _digest(state):
                return False
            self._passed.move_to_end(key)
            return True

    def __len__(self) -> int:
        return len(self._passed)


def _digest(state: State) -> bytes:
    return hashlib.blake2b(repr(state).encode(), digest_size=16).digest()


CHECKED = Remembered(REMEMBERED)
VERIFIED = Remembered(REMEMBERED)
UNIQUE_IDS = Remembered(REMEMBERED)


def _files(shard: Shard, names: Sequence[str]) -> tuple[FileState, ...] | None:
    states = tuple(file_state(shard.path / f"{name}.npy") for name in names)
    return None if None in states else states  # type: ignore[return-value]


def _shard_key(pool: Pool, shard: Shard) -> tuple:
    return pool.spec(shard).key


def check_headers(pool: Pool, shard: Shard) -> None:
    """Every array of `shard` opens, lies inside the pool and has the manifest's shape and dtype."""
    names = pool.array_names()

    def state() -> State | None:
        files = _files(shard, names)
        return None if files is None else ((tuple(names),), files)

    def check() -> None:
        with pool.arrays(shard) as array:
            for name in names:
                array(name)

    CHECKED.once(_shard_key(pool, shard), state, check)


def verify_shard(pool: Pool, shard: Shard) -> None:
    """Every file's SHA-256 against the manifest, the manifest's ROI count, labels within the
    classes (headers are `check_headers`')."""
    names = pool.array_names()
    where = f"{pool.path.name}/{shard.path.name}"
    classes = len(pool.class_names) if pool.has_labels else 0

    def state() -> State | None:
        files = _files(shard, names)
        expect = (tuple(names), tuple(sorted(shard.checksums.items())), shard.with_roi, classes)
        return None if files is None else (expect, files)

    def check() -> None:
        for name in names:
            digest = shard.checksums.get(name)
            if digest is None:
                raise PoolFormatError(f"{where}: the manifest has no checksum for {name}.npy")
            try:
                with _HASHING:
                    found = sha256_file(shard.path / f"{name}.npy")
            except OSError as exc:
                raise_if_out_of_files(exc)
                raise PoolFormatError(f"{where}/{name}.npy cannot be read: {exc.strerror or exc}") from None
            if found != digest:
                raise PoolFormatError(f"{where}/{name}.npy: checksum mismatch (file changed or corrupt)")
        if shard.with_roi is not None and (have := rois_in(pool, shard)) != shard.with_roi:
            raise PoolFormatError(
                f"{where}: the manifest counts {shard.with_roi} samples with an ROI, its rois.npy {have}"
            )
        if classes:
            with pool.arrays(shard) as array:
                labels = np.array(array("labels"))
            bad = np.flatnonzero((labels < 0) | (labels >= classes))
            if bad.size:
                raise PoolFormatError(
                    f"{where}: sample {shard.start + int(bad[0])} has label {int(labels[bad[0]])}, "
                    f"outside the {classes} classes"
                )

    VERIFIED.once(_shard_key(pool, shard), state, check)


def check_ids(pool: Pool) -> None:
    """Over the whole pool: IDs non-empty and unique (read once per state of the IDs' files)."""

    def state() -> State | None:
        files = [_files(s, ("ids",)) for s in pool.shards]
        if any(f is None for f in files):
            return None
        layout = tuple((s.path.name, s.start, s.stop) for s in pool.shards)
        return (layout, tuple(f[0] for f in files))  # type: ignore[index]

    def check() -> None:
        seen: dict[str, int] = {}
        for shard in pool.shards:
            with pool.arrays(shard) as array:
                ids = array("ids").tolist()
            shown = f"{pool.path.name}/{shard.path.name}"
            for index, sample_id in enumerate(ids, start=shard.start):
                if not sample_id.strip():
                    raise PoolFormatError(f"{shown}: sample {index} has an empty ID")
                if sample_id in seen:
                    raise PoolFormatError(
                        f"{shown}: ID {sample_id[:80]!r} of sample {index} is also sample "
                        f"{seen[sample_id]}'s; IDs must be unique"
                    )
                seen[sample_id] = index

    UNIQUE_IDS.once((str(pool.root),), state, check)


def bad_in(pool: Pool, shard: Shard) -> list[BadSample]:
    """The samples of `shard` that must not be scored (`sample_problems`), in order."""
    float_pixels = np.dtype(pool.pixel_dtype).kind in "fc"  # integer pixels are all valid
    out = []
    with pool.arrays(shard) as array:
        rois, ids = array("rois"), array("ids")
        images = array("images") if float_pixels else None
        for lo in range(0, shard.count, 1024):
            hi = min(lo + 1024, shard.count)
            found = sample_problems(rois[lo:hi], None if images is None else np.asarray(images[lo:hi]))
            release(rois, lo, hi)
            if images is not None:
                release(images, lo, hi)
            for row, reason in found:
                out.append(pool.bad_sample(shard.start + lo + row, str(ids[lo + row]), reason))
    return out


def rois_in(pool: Pool, shard: Shard, chunk: int = 4096) -> int:
    """Samples of `shard` with an ROI (any pixel set), counted from its masks."""
    n = 0
    with pool.arrays(shard) as array:
        rois = array("rois")
        for lo in range(0, shard.count, chunk):
            hi = min(lo + chunk, shard.count)
            n += int(roi_present(np.asarray(rois[lo:hi])).sum())
            release(rois, lo, hi)
    return n
