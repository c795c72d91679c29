"""A pool on disk: a folder of sharded, memory-mappable .npy arrays and a manifest.

    pool/
      manifest.json            count, image shape and dtype, class names, shards (checksums,
                               how many samples have an ROI)
      shard-00000/images.npy   [n, C, H, W] uint8 | uint16
      shard-00000/rois.npy     [n, H, W] uint8, 1 inside the expert region (all 0 = no ROI)
      shard-00000/ids.npy      [n] unicode sample IDs, unique across the pool
      shard-00000/labels.npy   [n] int64 class index (labelled pools only)
      shard-00000/groups.npy   [n] unicode group of each sample, e.g. its patient (when known)

The manifest is written last, so a folder without one is an unfinished pool.

This module holds the names and checks that the reader (`format.Pool`) and the writer
(`writer.PoolWriter`) share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xgal.core.errors import InvalidArgument, UserError

FORMAT = "xgal-pool/1"
MANIFEST = "manifest.json"
PARTIAL = "partial.json"  # written after every shard of an unfinished pool, for resuming
ARRAYS = ("images", "rois", "ids", "labels", "groups")
OPTIONAL = {"labels": "has_labels", "groups": "has_groups"}  # array -> the manifest's flag
PIXEL_DTYPES = ("uint8", "uint16")


class PoolAccessError(UserError, PermissionError):
    """A pool would read a file outside its own folder (a shard path with '..', an absolute
    path, or a symlink leading out): refused, whatever the file holds."""


class PoolFormatError(InvalidArgument):
    """The folder is not a valid pool, or its arrays disagree with the manifest (a ValueError
    too, as `InvalidArgument` is)."""


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int
    path: Path
    checksums: dict[str, str]
    # Samples with an ROI, counted by the writer so that `pool info` need not read every mask;
    # None in pools written before it was recorded.
    with_roi: int | None = None

    @property
    def count(self) -> int:
        return self.stop - self.start


def inside(path: Path, root: Path, what: str) -> Path:
    """`path` with every symlink resolved, if that lies inside `root` (already resolved)."""
    try:
        real = path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a symlink loop, among others
        raise PoolFormatError(f"{what}: cannot be resolved ({exc})") from None
    if real != root and root not in real.parents:
        raise PoolAccessError(f"{what} leads outside the pool's folder; refused")
    return real
