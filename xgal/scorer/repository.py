"""The model repository: `<root>/<name>/<version>/model.onnx` plus `meta.json`, as in Triton.

Published scoring graphs are validated (size, SHA-256, signature) before they are stored, so a
restarted replica serves exactly what was published. Loaded versions are cached engines; a
request keeps the engine it resolved, so publishing or unloading never disturbs it.

Several replicas may share one repository folder (DESIGN.md §6): a publish holds a file lock on
the folder, so the same bytes published to every replica at once become one version, and
different models get different version numbers. Readers need no lock: a version appears by one
atomic rename, complete.

A publish killed part way leaves at most a hidden temp folder (`<name>/.<version>.*.tmp`), never
a version; opening the repository removes such folders when no other process is publishing.
Publishing again after a publish whose answer was lost (the replica died after the rename) is
safe: the same bytes as the latest version return that version, no new one is made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from xgal.core.contract import ScoringGraphInfo
from xgal.core.errors import InvalidArgument
from xgal.scorer.engines.base import Engine
from xgal.scorer.engines.ort import OnnxRuntimeEngine

log = logging.getLogger("xgal.scorer")

# A name is one folder of the repository: letters, digits, '.', '_', '-', not starting with a
# dot (so never '.', '..' or a hidden temp folder), matched whole (no trailing newline).
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def valid_name(name: str) -> bool:
    return bool(name) and NAME_RE.fullmatch(name) is not None


LOCK_FILE = ".publish.lock"
LOCK_TIMEOUT_S = 120.0


class ModelNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class StoredModel:
    name: str
    version: int
    sha256: str
    path: Path
    info: ScoringGraphInfo


class ModelRepository:
    def __init__(
        self,
        root: str | os.PathLike[str],
        engine_factory: Callable[[Path | bytes], Engine] | None = None,
        *,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
    ) -> None:
        """`engine_factory` opens a model (a path, or the bytes of an upload being checked) the
        way this replica serves it: its providers, its threads."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._factory = engine_factory or (lambda p: OnnxRuntimeEngine(p))
        self._lock = threading.RLock()  # the loaded engines
        # Publishing has its own locks, so scoring and health never wait on another replica.
        self._publish_thread_lock = threading.Lock()
        self._publish_lock = FileLock(self.root / LOCK_FILE, timeout=lock_timeout_s)
        self._loaded: dict[tuple[str, int], Engine] = {}
        self.remove_stale_temp()

    # -- storage ---------------------------------------------------------------------------
    def remove_stale_temp(self) -> list[Path]:
        """Remove the temp folders of publishes that died before their rename (a replica killed
        mid-write), so that nothing half-written stays in the repository. Only when the publish
        lock is free at once: temp folders are made under that lock, so while this process holds
        it every one is a dead publisher's; while another process holds it, one may be that
        publisher's work in progress, and its next publish clears the stale ones anyway."""
        try:
            self._publish_lock.acquire(timeout=0)
        except (Timeout, OSError):  # held by another process, or a read-only repository
            return []
        try:
            stale = [p for p in self.root.glob("*/.*.tmp") if p.is_dir()]
            for p in stale:
                shutil.rmtree(p, ignore_errors=True)
                log.warning("removed %s, left by a publish that did not finish", p.relative_to(self.root))
            return stale
        finally:
            self._publish_lock.release()

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not valid_name(name) or not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "meta.json").is_file())

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def get(self, name: str, version: int = 0) -> StoredModel:
        """Version 0 = the latest."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} in the repository")
        v = versions[-1] if version == 0 else version
        if v not in versions:
            raise ModelNotFoundError(f"model {name!r} has no version {version} (has {versions})")
        d = self.root / name / str(v)
        meta = json.loads((d / "meta.json").read_text())
        info = ScoringGraphInfo.from_metadata(meta["metadata"], f"{name} version {v}")
        return StoredModel(name, v, meta["sha256"], d / "model.onnx", info)

    def publish(self, name: str, data: bytes, sha256: str) -> StoredModel:
        """Validate and store a scoring graph; publishing the same bytes again is a no-op."""
        if not valid_name(name):
            raise InvalidArgument(
                f"model name {name[:80]!r} must be 1-64 letters, digits, '.', '_' or '-', "
                "not starting with '.'"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise ValueError(f"SHA-256 mismatch: received {digest}, header says {sha256}")
        # Opens the graph as this replica would serve it (its providers included): rejects
        # anything that is not a scoring graph, or that cannot run here, with the reason.
        engine = self._factory(data)
        try:
            engine.self_check(f"model {name!r}")
            with self._publish_thread_lock, self._locked_folder():
                return self._store(name, data, digest, engine.info)
        finally:
            engine.close()

    def _store(self, name: str, data: bytes, digest: str, info: ScoringGraphInfo) -> StoredModel:
        """Under the publish locks: the same bytes as the latest version reuse it."""
        versions = self.versions(name)
        if versions:
            latest = self.get(name, versions[-1])
            if latest.sha256 == digest:
                # A retry (a client that never got the answer of a publish that was stored), or
                # the same round sent to replicas that share this folder: the version it made.
                log.info(
                    "%s version %d already holds these bytes (%s): no new version",
                    name,
                    latest.version,
                    digest[:12],
                )
                return latest
        version = (versions[-1] if versions else 0) + 1
        folder = self.root / name
        # Holding the lock, any temp folder here is a crashed publisher's.
        for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
        tmp = folder / f".{version}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "model.onnx").write_bytes(data)
        (tmp / "meta.json").write_text(json.dumps({"sha256": digest, "metadata": info.to_metadata()}))
        os.replace(tmp, folder / str(version))
        return self.get(name, version)

    @contextmanager
    def _locked_folder(self) -> Iterator[None]:
        try:
            self._publish_lock.acquire()
        except Timeout:
            raise TimeoutError(
                f"another process has held {self.root / LOCK_FILE} for {self._publish_lock.timeout:g} s; "
                "publish again later"
            ) from None
        try:
            yield
        finally:
            self._publish_lock.release()

    # -- loaded engines ----------------------------------------------------------------------
    def load(self, name: str, version: int = 0) -> tuple[StoredModel, Engine]:
        stored = self.get(name, version)
        key = (stored.name, stored.version)
        with self._lock:
            engine = self._loaded.get(key)
            if engine is None:
                engine = self._factory(stored.path)
                self._loaded[key] = engine
        return stored, engine

    def loaded(self, name: str, version: int = 0) -> tuple[StoredModel, Engine]:
        """The engine of a loaded version, without loading one."""
        stored = self.get(name, version)
        with self._lock:
            engine = self._loaded.get((stored.name, stored.version))
        if engine is None:
            raise ModelNotFoundError(f"model {name!r} version {stored.version} is not loaded (LoadModel it)")
        return stored, engine

    def unload(self, name: str, version: int = 0) -> None:
        stored = self.get(name, version)
        with self._lock:
            # In-flight requests hold their own reference; the session goes when they finish.
            if self._loaded.pop((stored.name, stored.version), None) is None:
                raise ModelNotFoundError(f"model {name!r} version {stored.version} is not loaded")

    def is_loaded(self, name: str, version: int) -> bool:
        with self._lock:
            return (name, version) in self._loaded

    def loaded_engines(self) -> list[Engine]:
        with self._lock:
            return list(self._loaded.values())

    def loaded_keys(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._loaded)

    def loaded_items(self) -> list[tuple[tuple[str, int], Engine]]:
        with self._lock:
            return sorted(self._loaded.items(), key=lambda item: item[0])

    def load_latest_all(self) -> tuple[list[StoredModel], list[tuple[str, str]]]:
        """At start-up: serve the latest version of every stored model again. A version that no
        longer loads (a corrupt file, a provider that cannot run it) is skipped, the next older
        one is served instead, and the problem is returned, so one bad model does not keep a
        replica from serving the others. Returns (served, [(name, problem)])."""
        served, problems = [], []
        for name in self.names():
            for version in reversed(self.versions(name)):
                try:
                    stored, engine = self.load(name, version)
                    engine.self_check(f"{name} version {version}")
                except Exception as exc:  # any failure of one stored model: skip it, say why
                    with self._lock:
                        self._loaded.pop((name, version), None)
                    problems.append((name, f"{name} version {version} was not loaded: {exc}"))
                    continue
                served.append(stored)
                break
        return served, problems
