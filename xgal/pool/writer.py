"""Writing a pool batch by batch, resumably (the layout is in `xgal.pool.layout`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xgal.core.checksum import sha256_file
from xgal.core.errors import InvalidArgument
from xgal.core.masks import roi_present
from xgal.pool.layout import ARRAYS, FORMAT, MANIFEST, PARTIAL, PIXEL_DTYPES, PoolFormatError


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
        with_groups: bool = False,
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
            raise InvalidArgument(f"pixel_dtype must be one of {PIXEL_DTYPES}, got {pixel_dtype!r}")
        if len(image_shape) != 3:
            raise InvalidArgument(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        if shard_size < 1:
            raise InvalidArgument("shard_size must be at least 1")
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
        self.with_groups = with_groups
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
            "has_groups": self.with_groups,
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
        groups: Sequence[str] | np.ndarray | None = None,
        source: int | None = None,
    ) -> None:
        """Append samples. `groups`: each sample's group (its patient), in a pool made
        `with_groups`. `source` is the index of the source item (file, volume) they came from,
        in the importer's order; it makes the pool resumable."""
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
        if self.with_groups != (groups is not None):
            raise PoolFormatError("groups must be given for every batch or for none")
        if groups is not None:
            groups = np.asarray(groups, dtype=str)
            if groups.shape != (n,) or not all(groups):
                raise PoolFormatError(f"groups must be {n} non-empty names, got shape {list(groups.shape)}")
        _check_ids(ids_arr.tolist())
        new = set(ids_arr.tolist())
        if len(new) != n or new & self._seen_ids:
            raise PoolFormatError("sample IDs must be unique across the pool")
        self._seen_ids |= new
        self._pending["ids"].append(ids_arr)
        self._pending["images"].append(images)
        self._pending["rois"].append(rois.astype(np.uint8, copy=False))
        if labels is not None:
            self._pending["labels"].append(labels)
        if groups is not None:
            self._pending["groups"].append(groups)
        src = self._count + self._pending_n if source is None else source
        self._pending["source"].append(np.full(n, src, dtype=np.int64))
        self._pending_n += n
        while self._pending_n >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        index = len(self._shards)
        shard_dir = self.path / f"shard-{index:05d}"
        shard_dir.mkdir(exist_ok=True)
        checksums, with_roi = {}, 0
        sources = np.concatenate(self._pending["source"])
        self._pending["source"] = [sources[n:]] if len(sources) > n else []
        for key in ARRAYS:
            parts = self._pending[key]
            if not parts:
                continue
            joined = np.concatenate(parts)
            self._pending[key] = [joined[n:]] if len(joined) > n else []
            part = joined[:n]
            if key == "rois":
                with_roi = int(roi_present(part).sum())
            file = shard_dir / f"{key}.npy"
            np.save(file, np.ascontiguousarray(part), allow_pickle=False)
            checksums[key] = sha256_file(file)
        self._shards.append(
            {
                "index": index,
                "start": self._count,
                "stop": self._count + n,
                "path": shard_dir.name,
                "sha256": checksums,
                "with_roi": with_roi,
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
            "has_groups": self.with_groups,
            "description": self.description,
            "shards": self._shards,
        }
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.path / MANIFEST)
        (self.path / PARTIAL).unlink(missing_ok=True)
        self._closed = True
        return self.path


def _check_ids(ids: list[str]) -> None:
    """Refuse an empty ID, or one with whitespace around it: spreadsheets and `xgal annotations
    add` read IDs stripped, so such a scan could be asked about and never answered."""
    bad = [s for s in ids if not s or s != s.strip()]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        what = "is empty" if not bad[0] else "has spaces (or other whitespace) before or after it"
        raise InvalidArgument(
            f"sample ID {bad[0]!r}{more} {what}: answers are read with IDs stripped, so that scan "
            "could never be answered. Give every scan an ID without them (rename the file, or fix "
            "the ID in the CSV) and run the import again"
        )
