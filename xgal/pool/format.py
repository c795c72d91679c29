"""Reading a pool: `Pool`. The folder layout is described in `xgal.pool.layout`; `PoolWriter`
(in `xgal.pool.writer`) writes one. Both are importable from here, as are the layout's names.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xgal.core.errors import raise_if_out_of_files
from xgal.core.masks import roi_present
from xgal.pool import checks
from xgal.pool.layout import (
    ARRAYS,
    FORMAT,
    MANIFEST,
    OPTIONAL,
    PARTIAL,
    PIXEL_DTYPES,
    PoolAccessError,
    PoolFormatError,
    Shard,
    inside,
)
from xgal.pool.shards import OPENING, SHARD_MAPS, ShardSpec, release
from xgal.pool.writer import PoolWriter

__all__ = [
    "ARRAYS",
    "FORMAT",
    "BadSample",
    "MANIFEST",
    "PARTIAL",
    "PIXEL_DTYPES",
    "Pool",
    "PoolAccessError",
    "PoolFormatError",
    "PoolWriter",
    "Shard",
]


@dataclass(frozen=True)
class BadSample:
    """A sample that must not be scored: where it is (pool/shard), its pool index and ID, why."""

    where: str
    index: int
    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: sample {self.index} (ID {self.id[:80]!r}): {self.reason}"


class Pool:
    """A pool opened read-only; nothing is read until asked for. A shard's arrays are
    memory-mapped while a read needs them, in the process's bounded set of open shards
    (`xgal.pool.shards`); checks are remembered per state of the files (`xgal.pool.checks`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        # Every file a pool reads must lie in its own folder, symlinks resolved: a manifest or
        # a link must not make a scorer read elsewhere (DESIGN: never outside the data root).
        try:
            self.root = self.path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, among others
            raise PoolFormatError(f"{self.path}: cannot be resolved ({exc})") from None
        if not manifest_path.is_file():
            raise PoolFormatError(f"{self.path} is not a pool: no {MANIFEST} (unfinished or wrong folder)")
        try:
            with OPENING:
                text = manifest_path.read_bytes()
        except OSError as exc:
            raise_if_out_of_files(exc)
            raise PoolFormatError(f"{manifest_path} cannot be read: {exc.strerror or exc}") from None
        try:
            m = json.loads(text.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PoolFormatError(f"{manifest_path} is not valid JSON: {exc}") from None
        if not isinstance(m, dict):
            raise PoolFormatError(f"{manifest_path} holds a {type(m).__name__}, not a manifest object")
        if m.get("format") != FORMAT:
            raise PoolFormatError(f"{manifest_path}: format {m.get('format')!r}, expected {FORMAT!r}")
        try:
            self.count = int(m["count"])
            self.image_shape: tuple[int, int, int] = tuple(int(v) for v in m["image_shape"])  # type: ignore[assignment]
            self.pixel_dtype: str = m["pixel_dtype"]
            self.class_names: list[str] = list(m.get("class_names", []))
            self.has_labels = bool(m.get("has_labels", False))
            self.has_groups = bool(m.get("has_groups", False))
            self.description: str = m.get("description", "")
            self.shards = [
                Shard(
                    int(s["index"]),
                    int(s["start"]),
                    int(s["stop"]),
                    self._shard_folder(str(s["path"])),
                    dict(s["sha256"]),
                    s.get("with_roi"),
                )
                for s in m["shards"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise PoolFormatError(f"{manifest_path} is incomplete or malformed: {exc!r}") from None
        if self.pixel_dtype not in PIXEL_DTYPES or len(self.image_shape) != 3:
            raise PoolFormatError(
                f"{manifest_path}: images {self.pixel_dtype}{list(self.image_shape)} are not "
                f"one of {PIXEL_DTYPES} with shape (C, H, W)"
            )
        expected = 0
        for s in self.shards:
            if s.start != expected or s.stop < s.start:
                raise PoolFormatError(
                    f"{manifest_path}: shard {s.index} covers [{s.start}, {s.stop}), "
                    f"expected it to start at {expected}"
                )
            expected = s.stop
            if s.with_roi is not None and (type(s.with_roi) is not int or not 0 <= s.with_roi <= s.count):
                raise PoolFormatError(
                    f"{manifest_path}: shard {s.index} counts {s.with_roi!r} samples with an ROI, "
                    f"not a number from 0 to its {s.count}"
                )
        self._starts = [s.start for s in self.shards]
        if expected != self.count:
            raise PoolFormatError(
                f"{manifest_path}: shards hold {expected} samples, manifest says {self.count}"
            )

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        shape = f"{self.pixel_dtype}{list(self.image_shape)}"
        return f"Pool({str(self.path)!r}, count={self.count}, images={shape})"

    def _shard_folder(self, rel: str) -> Path:
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise PoolAccessError(
                f"{self.path.name}: a shard path in the manifest is absolute or climbs with '..', "
                "so it leads outside the pool's folder; refused"
            )
        folder = self.path / rel
        inside(folder, self.root, f"{self.path.name}/{rel}")
        return folder

    def spec(self, shard: Shard) -> ShardSpec:
        """What this pool's manifest says of `shard`'s files."""
        return ShardSpec(
            shard.path,
            self.root,
            str(shard.path.relative_to(self.path)),
            f"{self.path.name}/{shard.path.name}",
            shard.count,
            self.image_shape,
            self.pixel_dtype,
        )

    def arrays(self, shard: Shard) -> AbstractContextManager[Callable[[str], np.ndarray]]:
        """`shard`'s arrays by name (memory-mapped, checked against the manifest) for the length
        of a `with`, which holds the shard open (`shards.SHARD_MAPS`). Copy what you keep:
        a view must not outlive the `with`. One shard at a time per thread."""
        return SHARD_MAPS.pinned(self.spec(shard))

    def check(self) -> None:
        """Open every array and compare shapes and dtypes with the manifest (cheap; once per
        state of the files)."""
        for shard in self.shards:
            checks.check_headers(self, shard)

    def verify(self, start: int = 0, stop: int | None = None, *, samples: bool = True) -> None:
        """Everything `check` does, and for the shards that hold samples [start, stop) (all by
        default): every file's SHA-256 against the manifest, labels within the classes; over
        the whole pool: at least one sample, IDs non-empty and unique. These fail on the first
        problem, naming the file. With `samples`, then also every bad sample of those shards
        (`bad_samples`): the first is named and the rest counted. Reads those shards whole, the
        first time: what passed is remembered per state of the files (`xgal.pool.checks`), bad
        samples excepted."""
        self.check()
        self.check_not_empty()
        checks.check_ids(self)
        stop = self.count if stop is None else stop
        shards = [s for s in self.shards if s.stop > start and s.start < stop or s.count == 0]
        for shard in shards:
            checks.verify_shard(self, shard)
        if samples:
            bad = [b for shard in shards for b in checks.bad_in(self, shard)]
            if bad:
                more = f"; and {len(bad) - 1} more bad samples" if len(bad) > 1 else ""
                raise PoolFormatError(f"{bad[0]}{more} (`xgal pool verify` lists them all)")

    def check_not_empty(self) -> None:
        if self.count == 0:
            # A folder with a manifest and no samples is what an import that matched nothing
            # leaves; ranking it would return an empty selection as if that were an answer.
            raise PoolFormatError(f"{self.path.name}: the pool holds no samples (nothing to score)")

    def bad_samples(self, start: int = 0, stop: int | None = None) -> list[BadSample]:
        """Every sample of the shards holding [start, stop) that must not be scored (see
        `xgal.core.samples.sample_problems`), in pool order. Reads their ROIs (and float pixels)."""
        stop = self.count if stop is None else stop
        return [b for s in self.shards if s.stop > start and s.start < stop for b in checks.bad_in(self, s)]

    def bad_sample(self, index: int, sample_id: str, reason: str) -> BadSample:
        """Pool sample `index` as a bad sample: where it is and why it must not be scored."""
        shard = next(s for s in self.shards if s.start <= index < s.stop)
        return BadSample(f"{self.path.name}/{shard.path.name}", index, sample_id, reason)

    def array_names(self) -> list[str]:
        """The arrays each shard of this pool holds."""
        return [k for k in ARRAYS if k not in OPTIONAL or getattr(self, OPTIONAL[k])]

    def read(
        self, start: int, stop: int, keys: Sequence[str] = ("ids", "images", "rois")
    ) -> dict[str, np.ndarray]:
        """Copy samples [start, stop) out of the memory maps, across shard borders."""
        if not (0 <= start <= stop <= self.count):
            raise IndexError(f"range [{start}, {stop}) outside the pool of {self.count}")
        self._check_keys(keys)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        first = bisect.bisect_right(self._starts, start) - 1  # the shard holding `start`
        for shard in self.shards[max(first, 0) :]:
            lo, hi = max(start, shard.start), min(stop, shard.stop)
            if shard.start >= stop:
                break
            if lo >= hi:
                continue
            with self.arrays(shard) as array:
                for key in keys:
                    parts[key].append(_copy_rows(array(key), lo - shard.start, hi - shard.start))
        return {k: _joined(v) if v else self._empty(k) for k, v in parts.items()}

    def take(
        self, indices: Sequence[int] | np.ndarray, keys: Sequence[str] = ("ids", "images", "rois")
    ) -> dict[str, np.ndarray]:
        """Copy the samples at pool `indices` (any order) out of the memory maps."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"indices outside the pool of {self.count}")
        self._check_keys(keys)
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in keys}
        for shard in self.shards:
            sel = np.flatnonzero((idx >= shard.start) & (idx < shard.stop))
            if sel.size:
                with self.arrays(shard) as array:
                    for key in keys:
                        parts[key].append((sel, array(key)[idx[sel] - shard.start]))  # a copy
        out = {}
        for key, found in parts.items():
            if not found:
                out[key] = self._empty(key)
                continue
            # Shards may store IDs as strings of different widths: the widest one must fit.
            dtype = np.result_type(*(part.dtype for _, part in found))
            arr = np.empty((idx.size, *found[0][1].shape[1:]), dtype=dtype)
            for sel, part in found:
                arr[sel] = part
            out[key] = arr
        return out

    def _check_keys(self, keys: Sequence[str]) -> None:
        if "labels" in keys and not self.has_labels:
            raise PoolFormatError(f"{self.path} has no labels (not a simulation pool)")
        if "groups" in keys and not self.has_groups:
            raise PoolFormatError(f"{self.path} records no group (patient) per sample")

    def _empty(self, key: str) -> np.ndarray:
        c, h, w = self.image_shape
        return {
            "ids": np.zeros(0, dtype=str),
            "images": np.zeros((0, c, h, w), dtype=self.pixel_dtype),
            "rois": np.zeros((0, h, w), dtype=np.uint8),
            "labels": np.zeros(0, dtype=np.int64),
            "groups": np.zeros(0, dtype=str),
        }[key]

    def ids(self) -> np.ndarray:
        return self.read(0, self.count, ("ids",))["ids"]

    def has_roi(self, chunk: int = 4096) -> np.ndarray:
        """[N] bool: which samples have an ROI (any pixel set), read a chunk at a time."""
        out = np.zeros(self.count, dtype=bool)
        for lo in range(0, self.count, chunk):
            rois = self.read(lo, min(lo + chunk, self.count), ("rois",))["rois"]
            out[lo : lo + len(rois)] = roi_present(rois)
        return out

    def roi_count(self) -> int:
        """How many samples have an ROI: the writer's count for each shard where the manifest
        has one (`verify` checks them against the masks), else counted from its masks."""
        return sum(s.with_roi if s.with_roi is not None else checks.rois_in(self, s) for s in self.shards)

    def groups(self) -> np.ndarray:
        """Each sample's group (its patient): what a split must not cut through."""
        return self.read(0, self.count, ("groups",))["groups"]

    def labels(self) -> np.ndarray:
        return self.read(0, self.count, ("labels",))["labels"]


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """Parts of one array as one: a lone part as it is (np.concatenate would copy it again)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _copy_rows(arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a memory-mapped array, copied, and dropped from the resident set."""
    out = np.array(arr[lo:hi])
    release(arr, lo, hi)
    return out
