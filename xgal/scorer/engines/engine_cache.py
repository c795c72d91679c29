"""The on-disk cache of built GPU engines (TensorRT plans), keyed by what makes a plan valid.

A TensorRT plan is only valid for the model it was built from, the GPU model and compute
capability it was built on, its precision and the exact library version that built it; loading a
plan built under anything else fails at best and misbehaves at worst. Building one takes seconds
to minutes, so replicas keep them in one folder per key:

    <root>/<key>/engine.plan   the blob (the native TensorRT engine)
    <root>/<key>/engine.json   its sidecar: sha256 and size of the blob, the key and its inputs

ONNX Runtime's TensorRT execution provider manages its own files; it is given `folder(key)`.

A blob is trusted only when its sidecar says so: `store` writes the blob first and the sidecar
last, each through a temporary file and `os.replace`, so a crash at any point leaves either no
sidecar or one that does not match the blob, and `load` deletes such an entry and reports a miss.
No torch and no tensorrt here: the scorer imports this without either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = "xgal-engine-cache/1"
BLOB = "engine.plan"
SIDECAR = "engine.json"
NVIDIA_SMI_TIMEOUT_S = 5.0
# The fields `cache_key` hashes; a sidecar that carries all of them must hash back to its key.
KEY_FIELDS = ("model_sha256", "gpu", "precision", "versions")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_root(model: str | os.PathLike[str] | bytes) -> Path:
    """Where built engines go when no folder is given: `.engines` beside a model file (in a
    model repository on a shared volume, replicas on the same kind of GPU share them; the key
    keeps other GPUs apart), the user's cache folder for a model given as bytes."""
    if not isinstance(model, bytes):
        return Path(model).parent / ".engines"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xgal" / "engines"


def gpu_identity(device_id: int = 0) -> str | None:
    """What a cached engine is valid for, e.g. "NVIDIA H200, compute 9.0, driver 580.159.04";
    None when nvidia-smi is absent, fails or does not list `device_id`.

    `device_id` is nvidia-smi's index (PCI bus order), which is CUDA's order only when
    CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES is unset."""
    cmd = ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # absent, not executable, or hung
        return None
    if done.returncode != 0:
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if not 0 <= device_id < len(lines):
        return None
    # A GPU's name could hold a comma; the last two fields cannot.
    parts = [p.strip() for p in lines[device_id].rsplit(",", 2)]
    if len(parts) != 3 or not all(parts):
        return None
    name, compute, driver = parts
    return f"{name}, compute {compute}, driver {driver}"


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def key_inputs(
    model_sha256: str, *, gpu: str, precision: str, versions: Mapping[str, str]
) -> dict[str, object]:
    """The inputs of `cache_key` as a JSON-ready dict (what a sidecar records)."""
    return {
        "model_sha256": str(model_sha256),
        "gpu": str(gpu),
        "precision": str(precision),
        "versions": {str(k): str(v) for k, v in versions.items()},
    }


def cache_key(model_sha256: str, *, gpu: str, precision: str, versions: Mapping[str, str]) -> str:
    """A folder-safe key that changes when any input changes: the first 12 characters of the
    model's hash (so a person can tell entries apart) and a digest of all inputs."""
    if not model_sha256:
        raise ValueError("model_sha256 is empty")
    if not gpu:
        raise ValueError("gpu is empty; a plan is only valid for the GPU that built it")
    if not precision:
        raise ValueError("precision is empty")
    inputs = key_inputs(model_sha256, gpu=gpu, precision=precision, versions=versions)
    digest = hashlib.sha256(_canonical(inputs).encode()).hexdigest()[:24]
    prefix = re.sub(r"[^A-Za-z0-9]", "", model_sha256)[:12] or "model"
    return f"{prefix}-{digest}"


class EngineCache:
    """One folder per key under `root`; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _entry(self, key: str) -> Path:
        # A key names a folder under root; refuse anything that could name another place.
        if not isinstance(key, str) or not _SAFE_KEY.match(key) or ".." in key:
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key

    def folder(self, key: str) -> Path:
        """The entry's folder, created (ONNX Runtime's TensorRT provider writes its files here)."""
        path = self._entry(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def load(self, key: str) -> bytes | None:
        """The blob stored under `key`, or None: on a miss, and on an entry that cannot be
        trusted (no sidecar, a garbled one, a blob whose size, hash or key differs), which is
        deleted and logged so that the caller rebuilds it."""
        path = self._entry(key)
        blob_path, side_path = path / BLOB, path / SIDECAR
        if not blob_path.exists() and not side_path.exists():
            return None
        problem = None
        blob = None
        try:
            side = json.loads(side_path.read_text(encoding="utf-8"))
            blob = blob_path.read_bytes()
        except FileNotFoundError as exc:
            problem = f"{Path(exc.filename).name} is missing"
        except (OSError, ValueError) as exc:
            problem = f"unreadable entry: {exc}"
        else:
            problem = _mismatch(key, side, blob)
        if problem is None and blob is not None:
            return blob
        log.warning("engine cache entry %s discarded (%s); it will be rebuilt", path, problem)
        self.discard(key)
        return None

    def store(self, key: str, blob: bytes, meta: Mapping[str, object]) -> Path:
        """Store `blob` under `key` with `meta` (the key's inputs, see `key_inputs`, and anything
        else worth recording); returns the blob's path."""
        path = self.folder(key)
        data = bytes(blob)
        sidecar = {
            "format": FORMAT,
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "meta": dict(meta),
        }
        text = json.dumps(sidecar, sort_keys=True, indent=1)  # fails before anything is written
        # An old sidecar must not vouch for the new blob while it is being replaced.
        (path / SIDECAR).unlink(missing_ok=True)
        _write_atomic(path / BLOB, data)
        _write_atomic(path / SIDECAR, text.encode("utf-8"))
        return path / BLOB

    def discard(self, key: str) -> None:
        """Delete the entry's blob and sidecar (e.g. a plan the runtime refuses to deserialize);
        the folder goes too once nothing else is in it."""
        path = self._entry(key)
        (path / SIDECAR).unlink(missing_ok=True)
        (path / BLOB).unlink(missing_ok=True)
        for stale in path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError:  # absent, or holds files of ONNX Runtime's provider
            pass


def _mismatch(key: str, side: object, blob: bytes) -> str | None:
    """Why the sidecar does not vouch for this blob under this key, or None when it does."""
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        return "sidecar is not an engine-cache record"
    if side.get("key") != key:
        return f"sidecar is for key {side.get('key')!r}"
    if side.get("size") != len(blob):
        return f"blob is {len(blob)} bytes, the sidecar says {side.get('size')}"
    if side.get("sha256") != hashlib.sha256(blob).hexdigest():
        return "blob's sha256 differs from the sidecar's"
    meta = side.get("meta")
    if isinstance(meta, dict) and all(k in meta for k in KEY_FIELDS):
        try:
            again = cache_key(
                str(meta["model_sha256"]),
                gpu=str(meta["gpu"]),
                precision=str(meta["precision"]),
                versions=dict(meta["versions"]),  # type: ignore[call-overload]
            )
        except (TypeError, ValueError):
            return "sidecar's key inputs are malformed"
        if again != key:
            return "sidecar's key inputs hash to another key"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
