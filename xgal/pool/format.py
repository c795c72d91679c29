"""A pool on disk: a folder of sharded, memory-mappable .npy arrays and a manifest.

    pool/
      manifest.json            count, image shape and dtype, class names, shards, checksums
      shard-00000/images.npy   [n, C, H, W] uint8 | uint16
      shard-00000/rois.npy     [n, H, W] uint8, 1 inside the expert region (all 0 = no ROI)
      shard-00000/ids.npy      [n] unicode sample IDs, unique across the pool
      shard-00000/labels.npy   [n] int64 class index (simulation pools only)

The manifest is written last, so a folder without one is an unfinished pool.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "xgal-pool/1"
MANIFEST = "manifest.json"
PARTIAL = "partial.json"  # written after every shard of an unfinished pool, for resuming
ARRAYS = ("images", "rois", "ids", "labels")
PIXEL_DTYPES = ("uint8", "uint16")


class PoolFormatError(ValueError):
    """The folder is not a valid pool, or its arrays disagree with the manifest."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int
    path: Path
    checksums: dict[str, str]

    @property
    def count(self) -> int:
        return self.stop - self.start


class PoolWriter:
    """Write a pool batch by batch; `close()` (or leaving the `with`) writes the manifest."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        image_shape: Sequence[int],
        pixel_dtype: str = "uint8",
        class_names: Sequence[str] = (),
        with_labels: bool = False,
        shard_size: int = 8192,
        overwrite: bool = False,
        resume: bool = False,
        description: str = "",
    ) -> None:
        """With `resume`, an unfinished pool at `path` (one with partial.json) is continued:
        its finished shards are kept and `resume_after` tells the importer which source item
        was the last one written completely."""
        self.path = Path(path)
        if pixel_dtype not in PIXEL_DTYPES:
            raise ValueError(f"pixel_dtype must be one of {PIXEL_DTYPES}, got {pixel_dtype!r}")
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        partial = self.path / PARTIAL
        resuming = resume and partial.is_file() and not overwrite
        if resume and (self.path / MANIFEST).is_file() and not overwrite:
            raise FileExistsError(f"{self.path} is already a finished pool")
        if not resuming and self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.path} exists and is not empty (use overwrite or resume)")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.pixel_dtype = pixel_dtype
        self.class_names = list(class_names)
        self.with_labels = with_labels
        self.shard_size = shard_size
        self.description = description
        self._pending: dict[str, list[np.ndarray]] = {k: [] for k in (*ARRAYS, "source")}
        self._pending_n = 0
        self._shards: list[dict[str, object]] = []
        self._count = 0
        self._seen_ids: set[str] = set()
        self._closed = False
        self.resume_after = -1  # index of the last source item whose rows are all in shards
        if resuming:
            self._reopen(json.loads(partial.read_text()))

    def _settings(self) -> dict[str, object]:
        return {
            "image_shape": list(self.image_shape),
            "pixel_dtype": self.pixel_dtype,
            "class_names": self.class_names,
            "has_labels": self.with_labels,
        }

    def _reopen(self, state: dict) -> None:
        mine = self._settings()
        theirs = {k: state[k] for k in mine}
        if theirs != mine:
            raise PoolFormatError(f"{self.path}: the unfinished pool was started with {theirs}, not {mine}")
        self._shards = state["shards"]
        self._count = int(state["count"])
        self.resume_after = int(state["resume_after"])
        for shard in self._shards:
            ids = np.load(self.path / str(shard["path"]) / "ids.npy", allow_pickle=False)
            self._seen_ids.update(ids.tolist())
        # Shard folders beyond the recorded ones are half-written leftovers.
        for extra in self.path.glob("shard-*"):
            if extra.name not in {s["path"] for s in self._shards}:
                shutil.rmtree(extra)

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()

    def add(
        self,
        ids: Sequence[str] | np.ndarray,
        images: np.ndarray,
        rois: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        source: int | None = None,
    ) -> None:
        """Append samples. `source` is the index of the source item (file, volume) they came
        from, in the importer's order; it makes the pool resumable."""
        ids_arr = np.asarray(ids, dtype=str)
        n = len(ids_arr)
        c, h, w = self.image_shape
        if images.shape != (n, c, h, w) or images.dtype != np.dtype(self.pixel_dtype):
            raise PoolFormatError(
                f"images are {images.dtype}{list(images.shape)}, expected "
                f"{self.pixel_dtype}[{n}, {c}, {h}, {w}]"
            )
        if rois.shape != (n, h, w):
            raise PoolFormatError(f"rois have shape {list(rois.shape)}, expected [{n}, {h}, {w}]")
        if rois.size and rois.max() > 1:
            raise PoolFormatError("rois must be 0/1 masks")
        if self.with_labels != (labels is not None):
            raise PoolFormatError("labels must be given for every batch or for none")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (n,):
                raise PoolFormatError(f"labels have shape {list(labels.shape)}, expected [{n}]")
            if (
                self.class_names
                and labels.size
                and (labels.min() < 0 or labels.max() >= len(self.class_names))
            ):
                raise PoolFormatError(f"labels must be in [0, {len(self.class_names)})")
        new = set(ids_arr.tolist())
        if len(new) != n or new & self._seen_ids:
            raise PoolFormatError("sample IDs must be unique across the pool")
        self._seen_ids |= new
        self._pending["ids"].append(ids_arr)
        self._pending["images"].append(images)
        self._pending["rois"].append(rois.astype(np.uint8, copy=False))
        if labels is not None:
            self._pending["labels"].append(labels)
        src = self._count + self._pending_n if source is None else source
        self._pending["source"].append(np.full(n, src, dtype=np.int64))
        self._pending_n += n
        while self._pending_n >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        index = len(self._shards)
        shard_dir = self.path / f"shard-{index:05d}"
        shard_dir.mkdir(exist_ok=True)
        checksums = {}
        sources = np.concatenate(self._pending["source"])
        self._pending["source"] = [sources[n:]] if len(sources) > n else []
        for key in ARRAYS:
            parts = self._pending[key]
            if not parts:
                continue
            joined = np.concatenate(parts)
            self._pending[key] = [joined[n:]] if len(joined) > n else []
            part = joined[:n]
            file = shard_dir / f"{key}.npy"
            np.save(file, np.ascontiguousarray(part), allow_pickle=False)
            checksums[key] = _sha256(file)
        self._shards.append(
            {
                "index": index,
                "start": self._count,
                "stop": self._count + n,
                "path": shard_dir.name,
                "sha256": checksums,
            }
        )
        self._count += n
        self._pending_n -= n
        # A source item whose rows straddle this shard and the pending ones is not finished.
        rest = sources[n:]
        self.resume_after = int(rest.min()) - 1 if rest.size else int(sources[n - 1])
        state = {
            **self._settings(),
            "count": self._count,
            "shards": self._shards,
            "resume_after": self.resume_after,
        }
        tmp = self.path / (PARTIAL + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path / PARTIAL)

    def close(self) -> Path:
        if self._closed:
            return self.path
        if self._pending_n:
            self._flush(self._pending_n)
        manifest = {
            "format": FORMAT,
            "count": self._count,
            "image_shape": list(self.image_shape),
            "pixel_dtype": self.pixel_dtype,
            "class_names": self.class_names,
            "has_labels": self.with_labels,
            "description": self.description,
            "shards": self._shards,
        }
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.path / MANIFEST)
        (self.path / PARTIAL).unlink(missing_ok=True)
        self._closed = True
        return self.path


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


class Pool:
    """A pool opened read-only; arrays are memory-mapped, nothing is read until asked for."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise PoolFormatError(f"{self.path} is not a pool: no {MANIFEST} (unfinished or wrong folder)")
        try:
            m = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise PoolFormatError(f"{manifest_path} is not valid JSON: {exc}") from None
        if m.get("format") != FORMAT:
            raise PoolFormatError(f"{manifest_path}: format {m.get('format')!r}, expected {FORMAT!r}")
        self.count = int(m["count"])
        self.image_shape: tuple[int, int, int] = tuple(int(v) for v in m["image_shape"])  # type: ignore[assignment]
        self.pixel_dtype: str = m["pixel_dtype"]
        self.class_names: list[str] = list(m.get("class_names", []))
        self.has_labels = bool(m.get("has_labels", False))
        self.description: str = m.get("description", "")
        self.shards = [
            Shard(int(s["index"]), int(s["start"]), int(s["stop"]), self.path / s["path"], dict(s["sha256"]))
            for s in m["shards"]
        ]
        expected = 0
        for s in self.shards:
            if s.start != expected or s.stop < s.start:
                raise PoolFormatError(
                    f"{manifest_path}: shard {s.index} covers [{s.start}, {s.stop}), "
                    f"expected it to start at {expected}"
                )
            expected = s.stop
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

    def _array(self, shard: Shard, key: str) -> np.ndarray:
        cached = self._maps.get((shard.index, key))
        if cached is not None:
            return cached
        file = shard.path / f"{key}.npy"
        if not file.is_file():
            raise PoolFormatError(f"{file} is missing")
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
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
        if key == "ids" and arr.shape != (shard.count,):
            raise PoolFormatError(f"{file}: {arr.shape[0]} IDs for {shard.count} samples")
        self._maps[(shard.index, key)] = arr
        return arr

    def check(self) -> None:
        """Open every array and compare shapes and dtypes with the manifest (cheap)."""
        for shard in self.shards:
            for key in ARRAYS:
                if key != "labels" or self.has_labels:
                    self._array(shard, key)

    def verify(self) -> None:
        """Recompute every file's SHA-256 (reads the whole pool)."""
        self.check()
        for shard in self.shards:
            for key, digest in shard.checksums.items():
                if _sha256(shard.path / f"{key}.npy") != digest:
                    raise PoolFormatError(
                        f"{shard.path / key}.npy: checksum mismatch (file changed or corrupt)"
                    )

    def read(
        self, start: int, stop: int, keys: Sequence[str] = ("ids", "images", "rois")
    ) -> dict[str, np.ndarray]:
        """Copy samples [start, stop) out of the memory maps, across shard borders."""
        if not (0 <= start <= stop <= self.count):
            raise IndexError(f"range [{start}, {stop}) outside the pool of {self.count}")
        if "labels" in keys and not self.has_labels:
            raise PoolFormatError(f"{self.path} has no labels (not a simulation pool)")
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
        if "labels" in keys and not self.has_labels:
            raise PoolFormatError(f"{self.path} has no labels (not a simulation pool)")
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

    def _empty(self, key: str) -> np.ndarray:
        c, h, w = self.image_shape
        return {
            "ids": np.zeros(0, dtype=str),
            "images": np.zeros((0, c, h, w), dtype=self.pixel_dtype),
            "rois": np.zeros((0, h, w), dtype=np.uint8),
            "labels": np.zeros(0, dtype=np.int64),
        }[key]

    def ids(self) -> np.ndarray:
        return self.read(0, self.count, ("ids",))["ids"]

    def labels(self) -> np.ndarray:
        return self.read(0, self.count, ("labels",))["labels"]
