"""Reading a pool: `Pool`. The folder layout is described in `xgal.pool.layout`; `PoolWriter`
(in `xgal.pool.writer`) writes one. Both are importable from here, as are the layout's names.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xgal.core.checksum import sha256_file
from xgal.core.samples import sample_problems
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
    roi_present,
)
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


_PAGE = mmap.PAGESIZE


def _release(arr: np.ndarray, lo: int, hi: int) -> None:
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


# np.load parses a .npy header with ast.literal_eval, and CPython 3.11's compiler is not safe to
# run from several threads at once ("SystemError: AST constructor recursion depth mismatch",
# seen when a scorer's request threads opened one pool's shards together): one header at a time.
_HEADER_LOCK = threading.Lock()


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
    """A pool opened read-only; arrays are memory-mapped, nothing is read until asked for."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        # Every file a pool reads must lie in its own folder, symlinks resolved: a manifest or
        # a link must not make a scorer read elsewhere (DESIGN: never outside the data root).
        try:
            self._root = self.path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, among others
            raise PoolFormatError(f"{self.path}: cannot be resolved ({exc})") from None
        if not manifest_path.is_file():
            raise PoolFormatError(f"{self.path} is not a pool: no {MANIFEST} (unfinished or wrong folder)")
        try:
            m = json.loads(manifest_path.read_text())
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
        if expected != self.count:
            raise PoolFormatError(
                f"{manifest_path}: shards hold {expected} samples, manifest says {self.count}"
            )
        self._maps: dict[tuple[int, str], np.ndarray] = {}

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
        inside(folder, self._root, f"{self.path.name}/{rel}")
        return folder

    def _array(self, shard: Shard, key: str) -> np.ndarray:
        cached = self._maps.get((shard.index, key))
        if cached is not None:
            return cached
        file = shard.path / f"{key}.npy"
        inside(file, self._root, f"{self.path.name}/{shard.path.name}/{key}.npy")
        if not file.is_file():
            raise PoolFormatError(f"{file} is missing")
        try:
            with _HEADER_LOCK:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # truncated, empty, pickled, not .npy
            raise PoolFormatError(f"{file} cannot be read as an array: {exc}") from None
        c, h, w = self.image_shape
        want = {
            "images": ((shard.count, c, h, w), np.dtype(self.pixel_dtype)),
            "rois": ((shard.count, h, w), np.dtype(np.uint8)),
            "labels": ((shard.count,), np.dtype(np.int64)),
        }
        if key in want and (arr.shape, arr.dtype) != want[key]:
            shape, dtype = want[key]
            raise PoolFormatError(
                f"{file}: {arr.dtype}{list(arr.shape)} does not match the manifest's {dtype}{list(shape)}"
            )
        if key in ("ids", "groups") and (arr.shape != (shard.count,) or arr.dtype.kind != "U"):
            raise PoolFormatError(
                f"{file}: {arr.dtype}{list(arr.shape)}, expected {shard.count} texts ({key})"
            )
        self._maps[(shard.index, key)] = arr
        return arr

    def check(self) -> None:
        """Open every array and compare shapes and dtypes with the manifest (cheap)."""
        for shard in self.shards:
            for key in self._keys():
                self._array(shard, key)

    def verify(self, start: int = 0, stop: int | None = None, *, samples: bool = True) -> None:
        """Everything `check` does, and for the shards that hold samples [start, stop) (all by
        default): every file's SHA-256 against the manifest, labels within the classes; over
        the whole pool: at least one sample, IDs non-empty and unique. These fail on the first
        problem, naming the file. With `samples`, then also every bad sample of those shards
        (`bad_samples`): the first is named and the rest counted. Reads those shards whole."""
        self.check()
        self.check_not_empty()
        self._check_ids()
        stop = self.count if stop is None else stop
        shards = [s for s in self.shards if s.stop > start and s.start < stop or s.count == 0]
        for shard in shards:
            self._verify_shard(shard)
        if samples:
            bad = [b for shard in shards for b in self._bad_in(shard)]
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
        return [b for s in self.shards if s.stop > start and s.start < stop for b in self._bad_in(s)]

    def bad_sample(self, index: int, sample_id: str, reason: str) -> BadSample:
        """Pool sample `index` as a bad sample: where it is and why it must not be scored."""
        shard = next(s for s in self.shards if s.start <= index < s.stop)
        return BadSample(f"{self.path.name}/{shard.path.name}", index, sample_id, reason)

    def _keys(self) -> list[str]:
        return [k for k in ARRAYS if k not in OPTIONAL or getattr(self, OPTIONAL[k])]

    def _check_ids(self) -> None:
        seen: dict[str, int] = {}
        for shard in self.shards:
            for i, sample_id in enumerate(self._array(shard, "ids").tolist()):
                where = shard.start + i
                if not sample_id.strip():
                    raise PoolFormatError(
                        f"{self.path.name}/{shard.path.name}: sample {where} has an empty ID"
                    )
                if sample_id in seen:
                    raise PoolFormatError(
                        f"{self.path.name}/{shard.path.name}: ID {sample_id[:80]!r} of sample {where} is "
                        f"also sample {seen[sample_id]}'s; IDs must be unique"
                    )
                seen[sample_id] = where

    def _verify_shard(self, shard: Shard) -> None:
        where = f"{self.path.name}/{shard.path.name}"
        for key in self._keys():
            digest = shard.checksums.get(key)
            if digest is None:
                raise PoolFormatError(f"{where}: the manifest has no checksum for {key}.npy")
            if sha256_file(shard.path / f"{key}.npy") != digest:
                raise PoolFormatError(f"{where}/{key}.npy: checksum mismatch (file changed or corrupt)")
        if shard.with_roi is not None and (have := self._rois_in(shard)) != shard.with_roi:
            raise PoolFormatError(
                f"{where}: the manifest counts {shard.with_roi} samples with an ROI, its rois.npy {have}"
            )
        if self.has_labels and self.class_names:
            labels = np.asarray(self._array(shard, "labels"))
            bad = np.flatnonzero((labels < 0) | (labels >= len(self.class_names)))
            if bad.size:
                raise PoolFormatError(
                    f"{where}: sample {shard.start + int(bad[0])} has label {int(labels[bad[0]])}, outside "
                    f"the {len(self.class_names)} classes"
                )

    def _bad_in(self, shard: Shard) -> list[BadSample]:
        rois, ids = self._array(shard, "rois"), self._array(shard, "ids")
        # Integer pixels are all valid; only float ones can hold NaN or Inf.
        images = self._array(shard, "images") if np.dtype(self.pixel_dtype).kind in "fc" else None
        out = []
        for lo in range(0, shard.count, 1024):
            hi = min(lo + 1024, shard.count)
            found = sample_problems(rois[lo:hi], None if images is None else np.asarray(images[lo:hi]))
            _release(rois, lo, hi)
            if images is not None:
                _release(images, lo, hi)
            for row, reason in found:
                out.append(self.bad_sample(shard.start + lo + row, str(ids[lo + row]), reason))
        return out

    def read(
        self, start: int, stop: int, keys: Sequence[str] = ("ids", "images", "rois")
    ) -> dict[str, np.ndarray]:
        """Copy samples [start, stop) out of the memory maps, across shard borders."""
        if not (0 <= start <= stop <= self.count):
            raise IndexError(f"range [{start}, {stop}) outside the pool of {self.count}")
        self._check_keys(keys)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for shard in self.shards:
            lo, hi = max(start, shard.start), min(stop, shard.stop)
            if lo >= hi:
                continue
            for key in keys:
                arr = self._array(shard, key)
                parts[key].append(np.array(arr[lo - shard.start : hi - shard.start]))
                _release(arr, lo - shard.start, hi - shard.start)
        return {k: (np.concatenate(v) if v else self._empty(k)) for k, v in parts.items()}

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
                for key in keys:
                    parts[key].append((sel, self._array(shard, key)[idx[sel] - shard.start]))
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
        return sum(s.with_roi if s.with_roi is not None else self._rois_in(s) for s in self.shards)

    def _rois_in(self, shard: Shard, chunk: int = 4096) -> int:
        """Samples of `shard` with an ROI (any pixel set), counted from its masks."""
        rois, n = self._array(shard, "rois"), 0
        for lo in range(0, shard.count, chunk):
            hi = min(lo + chunk, shard.count)
            n += int(roi_present(np.asarray(rois[lo:hi])).sum())
            _release(rois, lo, hi)
        return n

    def groups(self) -> np.ndarray:
        """Each sample's group (its patient): what a split must not cut through."""
        return self.read(0, self.count, ("groups",))["groups"]

    def labels(self) -> np.ndarray:
        return self.read(0, self.count, ("labels",))["labels"]
