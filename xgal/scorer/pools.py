"""A replica's pools: names under its data root opened as `Pool`s, and checked before a request
reads them, with messages that say where in the pool, never where on the server's disks.

What a request costs in open files and checksums is the pool reader's: a shard's arrays are
mapped only while a span of it is read, in a process-wide set of at most `OPEN_SHARDS` open
shards (`xgal.pool.shards`), and what `verify` checks is remembered per state of the files, in
one place for every path that scores (`xgal.pool.checks`). A replica out of file descriptors
says so (`OutOfFiles`, RESOURCE_EXHAUSTED), never blaming the pool.
"""

from __future__ import annotations

from pathlib import Path

from xgal.pool.format import Pool, PoolAccessError, PoolFormatError


class Pools:
    """The pools under `data_root` (resolved), as requests name them."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root

    def open(self, rel: str) -> Pool:
        """The pool at `rel` under the data root, its arrays' headers checked (cheap: no pixels
        are read, and once per state of the files)."""
        if not rel:
            raise ValueError("no pool given")
        shown = rel if len(rel) <= 80 else rel[:77] + "..."
        try:
            path = (self.data_root / rel).resolve()
            found = path.exists()
        except OSError as exc:  # a name too long for the file system, a NUL byte, a loop
            raise ValueError(f"pool {shown!r} cannot be opened: {exc.strerror or exc}") from None
        if path != self.data_root and self.data_root not in path.parents:
            raise PoolAccessError(f"pool {shown!r} is outside the scorer's data root")
        if not found:
            raise FileNotFoundError(f"no pool {shown!r} under the scorer's data root")
        try:
            pool = Pool(path)
            pool.check()
        except (PoolFormatError, PoolAccessError) as exc:
            # Say where in the pool, not where on the server's disks.
            raise type(exc)(str(exc).replace(str(path), rel).replace(str(self.data_root), "")) from None
        return pool

    def verify(self, pool: Pool, start: int, stop: int) -> None:
        """What `xgal pool verify` checks of the shards a request reads (checksums, unique IDs,
        labels, not empty), once per state of their files (`Pool.verify`): a shard changed on
        disk is checked again, an unchanged one costs a few stat calls. Bad samples (ROI values,
        NaN pixels) are left to the pipeline, which fails or skips them as the request's
        on_bad_sample says."""
        try:
            pool.verify(start, stop, samples=False)
        except PoolFormatError as exc:
            raise PoolFormatError(str(exc).replace(str(self.data_root), "")) from None
