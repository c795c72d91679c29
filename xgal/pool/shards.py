"""A shard's arrays on disk: memory-mapped when a read needs them, checked against the manifest
as they are opened, and kept open in one process-wide LRU of bounded size.

Each memory map holds a file descriptor (CPython's mmap keeps a duplicate of the file's), so a
pool whose every array stayed mapped needed a descriptor per array of every shard: a pool of
300 shards ran a replica out of its 512 files. Here a read pins the one shard it reads
(`SHARD_MAPS.pinned`); at most `OPEN_SHARDS` shards are open in the whole process, the least
recently used one that no read pins closed (its maps, and so their descriptors, dropped) to make
room, and a read that finds every open shard pinned waits for one. Files are opened one at a
time (`OPENING`: a manifest, a header, the handle np.memmap maps through) and hashed at most
`HASHES_AT_ONCE` at a time (`checks`), so a process holds at most `POOL_FILES` descriptors of
pool files, whatever the pools' shard counts and however many requests read them at once (one
more for each read still using the old map of a file replaced under it). A thread reads one
shard at a time (never two pinned at once), so a wait always ends.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from xgal.core.errors import raise_if_out_of_files
from xgal.pool.layout import ARRAYS, PoolFormatError, inside

OPEN_SHARDS = 8  # shards whose arrays one process keeps mapped at most
HASHES_AT_ONCE = 4  # files one process hashes at once (`checks`)
# Descriptors of pool files one process holds at most: the maps, the file being opened, the
# files being hashed.
POOL_FILES = OPEN_SHARDS * len(ARRAYS) + 1 + HASHES_AT_ONCE

# One file opened at a time, which bounds the descriptors above; and a .npy header is parsed
# with ast.literal_eval, which CPython 3.11's compiler is not safe to run from several threads
# at once ("SystemError: AST constructor recursion depth mismatch", seen when a scorer's request
# threads opened one pool's shards together).
OPENING = threading.Lock()

_PAGE = mmap.PAGESIZE

FileState = tuple[int, int, int, int, int]


def file_state(path: Path) -> FileState | None:
    """What identifies a file's content without reading it (device, inode, size, mtime and
    ctime in ns: a write changes ctime, which no one can set back); None if it cannot be
    stat'ed (missing, a loop), which the opening that follows names."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def release(arr: np.ndarray, lo: int, hi: int) -> None:
    """Drop rows [lo, hi) of a memory-mapped array from this process's resident set.

    A pass over a pool touches every page of its files; without this the process's RSS would
    grow to the pool's size (the pages stay in the OS page cache either way, so a second pass
    is just as fast)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or arr.ndim == 0 or hi <= lo:
        return
    row = arr.strides[0]
    begin = getattr(arr, "offset", 0) + lo * row
    end = getattr(arr, "offset", 0) + hi * row
    begin_page = begin - begin % _PAGE
    # Only whole pages inside the range: a page shared with the next batch stays mapped.
    end_page = end - end % _PAGE
    if end_page > begin_page:
        mm.madvise(mmap.MADV_DONTNEED, begin_page, end_page - begin_page)


@dataclass(frozen=True)
class ShardSpec:
    """One shard as one pool's manifest describes it: where its files are and what they hold."""

    folder: Path  # the shard's folder under the pool's path, as the pool spells it (for messages)
    root: Path  # the pool's folder, resolved: every file read must lie inside it
    rel: str  # the folder relative to the pool (the manifest's path)
    shown: str  # "<pool>/<shard>", for messages
    count: int
    image_shape: tuple[int, int, int]
    pixel_dtype: str

    @property
    def key(self) -> tuple:
        return (str(self.root), self.rel, self.count, self.image_shape, self.pixel_dtype)


Header = tuple[np.dtype, tuple[int, ...], bool, int]  # dtype, shape, Fortran order, data offset


class _Headers:
    """Parsed .npy headers by (file, state), an LRU of `size`: a shard opened again (a scan
    that came back to it, another request) is mapped without parsing or resolving anything."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._known: OrderedDict[tuple[str, FileState], Header] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, file: str, state: FileState | None) -> Header | None:
        with self._lock:
            header = self._known.get((file, state)) if state is not None else None
            if header is not None:
                self._known.move_to_end((file, state))
            return header

    def put(self, file: str, state: FileState | None, header: Header) -> None:
        if state is None:
            return
        with self._lock:
            self._known[(file, state)] = header
            while len(self._known) > self.size:
                self._known.popitem(last=False)


HEADERS = _Headers(16_384)  # about 300 bytes each


def npy_header(f: BinaryIO) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and Fortran order from the .npy header at `f`'s position (what np.load
    reads: the same limits, no pickles), so a size can be checked before anything is allocated.
    ValueError for anything else."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not read here")
    if dtype.hasobject:
        raise ValueError("it holds Python objects (pickles), which are never loaded")
    return dtype, shape, fortran


def _read_header(file: Path) -> Header:
    """The .npy header of `file`, and where its data starts."""
    with OPENING, open(file, "rb") as f:
        dtype, shape, fortran = npy_header(f)
        return dtype, shape, fortran, f.tell()


def _cannot_read(file: Path, exc: Exception) -> PoolFormatError:
    if isinstance(exc, OSError):
        raise_if_out_of_files(exc)
    return PoolFormatError(f"{file} cannot be read as an array: {exc}")


def open_array(spec: ShardSpec, name: str, state: FileState | None) -> np.ndarray:
    """`name`.npy of the shard, memory-mapped, its shape and dtype checked against the manifest.
    `state`: the file's, as stat'ed just before (its header is parsed once per state)."""
    file = spec.folder / f"{name}.npy"
    header = HEADERS.get(str(file), state)
    if header is None:
        inside(file, spec.root, f"{spec.shown}/{name}.npy")
        if not file.is_file():
            raise PoolFormatError(f"{file} is missing")
        try:
            header = _read_header(file)
        except (ValueError, OSError, EOFError) as exc:  # truncated, empty, pickled, not .npy
            raise _cannot_read(file, exc) from None
        HEADERS.put(str(file), state, header)
    dtype, shape, fortran, offset = header
    c, h, w = spec.image_shape
    n = spec.count
    want = {
        "images": ((n, c, h, w), np.dtype(spec.pixel_dtype)),
        "rois": ((n, h, w), np.dtype(np.uint8)),
        "labels": ((n,), np.dtype(np.int64)),
    }
    if name in want and (shape, dtype) != want[name]:
        shape_, dtype_ = want[name]
        raise PoolFormatError(
            f"{file}: {dtype}{list(shape)} does not match the manifest's {dtype_}{list(shape_)}"
        )
    if name in ("ids", "groups") and (shape != (n,) or dtype.kind != "U"):
        raise PoolFormatError(f"{file}: {dtype}{list(shape)}, expected {n} texts ({name})")
    try:
        with OPENING:  # np.memmap holds the file open while it maps it: one at a time
            return np.memmap(
                str(file),  # not a Path, which np.memmap resolves, symlink by symlink
                dtype=dtype,
                mode="r",
                offset=offset,
                shape=shape,
                order="F" if fortran else "C",
            )
    except (ValueError, OSError) as exc:  # shorter than its header says
        raise _cannot_read(file, exc) from None


class _OpenShard:
    """One shard's memory maps, each opened when first asked for and opened again when its file
    changed on disk (a map of a file cut short would crash the process when read)."""

    def __init__(self) -> None:
        self.maps: dict[str, tuple[FileState, np.ndarray]] = {}
        self.pins = 0
        self.lock = threading.Lock()

    def array(self, spec: ShardSpec, name: str) -> np.ndarray:
        state = file_state(spec.folder / f"{name}.npy")
        with self.lock:
            held = self.maps.pop(name, None)
            if held is not None and state is not None and held[0] == state:
                self.maps[name] = held
                return held[1]
            del held  # the old map, closed before the new one is opened
            arr = open_array(spec, name, state)
            if state is not None:
                self.maps[name] = (state, arr)
            return arr


class OpenShards:
    """The process's open shards: at most `limit`, least recently used closed first; a shard
    pinned by a read stays open until the read ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: OrderedDict[tuple, _OpenShard] = OrderedDict()
        self._changed = threading.Condition()
        self._local = threading.local()
        self.waiting = 0  # reads waiting for a place now

    @contextmanager
    def pinned(self, spec: ShardSpec) -> Iterator[Callable[[str], np.ndarray]]:
        """The shard's arrays by name, for the length of the `with` (views of them must not
        outlive it: a closed shard's maps are freed with their last reference)."""
        key = spec.key
        held = getattr(self._local, "held", None)
        if held is not None and held != key:
            raise RuntimeError("a thread reads one shard at a time: two pinned at once could wait for ever")
        with self._changed:
            while (shard := self._open.get(key)) is None:
                if len(self._open) < self.limit or self._close_one():
                    shard = self._open[key] = _OpenShard()
                    break
                self.waiting += 1
                try:
                    self._changed.wait()
                finally:
                    self.waiting -= 1
            shard.pins += 1
            self._open.move_to_end(key)
        self._local.held = key
        try:
            yield lambda name: shard.array(spec, name)
        finally:
            self._local.held = held
            with self._changed:
                shard.pins -= 1
                if shard.pins == 0:
                    self._changed.notify_all()

    def _close_one(self) -> bool:
        """Close the least recently used shard that no read pins; False if all are pinned."""
        for key, shard in self._open.items():
            if shard.pins == 0:
                del self._open[key]
                return True
        return False

    def close_idle(self) -> None:
        """Close every shard no read pins (their descriptors are released with their maps)."""
        with self._changed:
            while self._close_one():
                pass

    def counts(self) -> tuple[int, int]:
        """(shards open, shards pinned by a read now)."""
        with self._changed:
            return len(self._open), sum(1 for s in self._open.values() if s.pins)


SHARD_MAPS = OpenShards(OPEN_SHARDS)
