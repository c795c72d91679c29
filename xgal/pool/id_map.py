"""Anonymised IDs: what a radiologist sees instead of names that come from files.

IDs taken from file names can name the class (`yes/y12.jpg` -> `y12`) or the patient, and the
radiologist sees every ID (the request, the hints, Label Studio, the report). An import with
`--anonymise` gives each scan `scan-` + 16 hex digits of HMAC-SHA256(key, its source ID): stable
for a source under one key, meaningless without it. The key and the map back to the source files
sit in one file beside the pool, `<pool>.ids.json` (mode 600; outside the pool's folder, so a pool
shared with scorers or annotators does not carry it). Splits made from the pool share the key;
`xgal annotations map-back` reads it to put the source files back into a run's dataset export.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

from xgal.core.durable import atomic_write
from xgal.core.errors import InvalidArgument

PREFIX = "scan-"


def id_map_path(pool: str | os.PathLike[str]) -> Path:
    """The file beside the pool folder that holds its key and map: `<pool>.ids.json`."""
    p = Path(pool)
    return p.with_name(p.name + ".ids.json")


class IdMap:
    """The key and the anonymised ID -> source map of one pool (and the splits made from it)."""

    def __init__(self, key: bytes, sources: dict[str, dict[str, str]] | None = None) -> None:
        self.key, self.sources = key, dict(sources or {})

    @classmethod
    def for_pool(cls, pool: str | os.PathLike[str]) -> IdMap:
        """The pool's map when its file exists (a resumed import keeps its key), else a new key."""
        path = id_map_path(pool)
        return cls.read(path) if path.is_file() else cls(secrets.token_bytes(32))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> IdMap:
        try:
            doc = json.loads(Path(path).read_text())
            return cls(bytes.fromhex(doc["key"]), doc["ids"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"{path} is not an xgal ID map ({exc})") from None

    def anonymise(self, source_id: str, image: str = "") -> str:
        """The anonymised ID of `source_id` (recorded with its `image` path)."""
        digest = hmac.new(self.key, source_id.encode(), hashlib.sha256).hexdigest()[:16]
        new = PREFIX + digest
        self.sources[new] = {"id": source_id, "image": image}
        return new

    def restricted(self, ids: list[str]) -> IdMap:
        """The same key, with the map of `ids` only (a split's part)."""
        return IdMap(self.key, {i: self.sources[i] for i in ids if i in self.sources})

    def write(self, pool: str | os.PathLike[str]) -> Path:
        """Write beside `pool`, readable by its owner only."""
        path = id_map_path(pool)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path, json.dumps({"key": self.key.hex(), "ids": self.sources}, indent=1).encode(), mode=0o600
        )
        return path


def revealing(ids: list[str], labels: list[str]) -> str | None:
    """Why the IDs give the class away, or None: an ID containing its class's name, or a prefix
    of letters before the first digit that tells the classes apart (`y12` yes, `n7` no)."""
    names = {n for n in labels if n}
    if len(names) < 2:
        return None
    named = [i for i, c in zip(ids, labels, strict=True) if len(c) >= 2 and c.lower() in i.lower()]
    if named:
        return f"{len(named)} IDs contain their class's name (e.g. {named[0]!r})"
    prefixes: dict[str, set[str]] = {}
    for i, c in zip(ids, labels, strict=True):
        prefixes.setdefault(re.match(r"[^\d]*", i).group(0).lower(), set()).add(c)  # type: ignore[union-attr]
    if len(prefixes) >= 2 and all(len(c) == 1 for c in prefixes.values()):
        tells = ", ".join(f"{p!r}: {next(iter(c))}" for p, c in sorted(prefixes.items())[:4])
        return f"the letters before each ID's number tell its class ({tells})"
    return None
