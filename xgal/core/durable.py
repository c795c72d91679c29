"""Files that survive a kill or a power cut: written aside, fsync'd, renamed (torch-free, so the
commands that only record answers start fast); files written once; locks a dead process drops.

A run folder may hold a symlink someone planted (`report.html -> ~/.bashrc`): the file aside is
created new (O_EXCL, O_NOFOLLOW: never through a link), and the rename replaces a link at the
final name instead of writing through it."""

from __future__ import annotations

import fcntl
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.unlink(missing_ok=True)  # a temp file a killed writer left, or a link planted there
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a kill or power cut leaves the old or the new file; the
    new one has `mode` from its creation (0o600: never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(tmp, data, mode)
    os.replace(tmp, path)
    # The rename itself is only durable once the folder's entry is.
    fsync_dir(path.parent)


def write_once(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, whole or not at all, and never over an existing file: written
    aside under this process's own name, fsync'd, then hard-linked into place, which fails with
    FileExistsError when `path` exists, whoever made it and whenever (a rename would replace it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_synced(tmp, data)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextmanager
def held(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` for the `with` (True), or, without `wait`,
    yield False at once when another process holds it. The kernel drops the lock when its
    holder dies, so a killed command leaves none behind; the file stays (removing it would let
    a second holder in through a new file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            mine = True
        except BlockingIOError:
            mine = False
        yield mine
    finally:
        os.close(fd)  # closing releases the lock


def npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()
