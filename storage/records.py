"""A resumable store of result records: one JSON file per key, each stamped with the configuration that
produced it.

    store = RecordStore(out / "records")
    record = store.get(key, config)           # None unless stored *and* made with an equal configuration
    if record is None:
        record = compute()
        store.put(key, config, record)        # atomic: an interrupted run never leaves half a record

``key`` is a tuple of plain values (e.g. ``("odenet", "PGD", 0.1)``); ``config`` is a JSON-serialisable
mapping of everything the result depends on (eps, samples, attack settings, the model's identity). A stored
record whose configuration differs is *stale*: :meth:`RecordStore.get` returns None for it, so the caller
recomputes it and :meth:`RecordStore.put` replaces it, and :meth:`RecordStore.summary` says which settings
changed. Nothing is reused silently: :meth:`RecordStore.summary` reports what was resumed and what was
recomputed.

Each record also carries a SHA-256 of its content and, when the store is given one, the version of the code
that made it (:mod:`storage.code_version`). A record edited after it was written (checksum mismatch), one
whose body its reader cannot parse (``get(..., parse=...)`` raised), one that is unreadable, or one made by
other code is recomputed, and the file and the reason are named (``--reuse-stale``: a record from other code
is reused and named instead).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from storage.atomic import atomic_write_text
from storage.code_version import CodeGuard, describe_change

__all__ = ["RecordStore", "config_hash", "content_sha256", "file_sha256"]

T = TypeVar("T")
#: what a reader raises on a malformed record body (a missing field, an index out of range, a wrong type)
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)

FORMAT = "natural-robustness record v1"


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def config_hash(config: Any) -> str:
    """SHA-256 (16 hex digits) of a configuration (a JSON-serialisable mapping or list; other values as
    their text, non-finite floats as theirs) as sorted JSON: the project's one key of a cached result."""
    text = json.dumps(_canonical(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def content_sha256(record: Any) -> str:
    """SHA-256 (16 hex digits) of a record's content as sorted JSON (after a JSON round trip, so the stored
    and the reread record hash alike)."""
    text = json.dumps(json.loads(json.dumps(record, default=_json_default)), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes: the identity of a model's weights in a configuration."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _slug(part: Any) -> str:
    text = f"{part:g}" if isinstance(part, float) else str(part)
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_") or "_"


class RecordStore:
    """Records under ``directory``, one ``<key parts joined by __>.json`` file per key.

    ``code``: the version of the code that makes the records (:func:`storage.code_version.code_version`;
    None: not checked); ``guard`` decides what happens to a record from other code (recompute, or reuse with
    ``reuse_stale``) and names it.
    """

    def __init__(self, directory: str | Path, *, force: bool = False, code: Mapping[str, str] | None = None,
                 guard: CodeGuard | None = None) -> None:
        self.directory = Path(directory)
        self.force = force
        self.code = dict(code) if code is not None else None
        self.guard = guard if guard is not None else CodeGuard()
        self.resumed: list[tuple[Any, ...]] = []
        self.computed: list[tuple[Any, ...]] = []
        self.stale: dict[tuple[Any, ...], list[str]] = {}
        self.written: list[Path] = []

    def path(self, key: Sequence[Any]) -> Path:
        return self.directory / ("__".join(_slug(part) for part in key) + ".json")

    def _read(self, key: tuple[Any, ...], label: str | None) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return self._reject(key, f"unreadable ({type(error).__name__})", label)
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            return self._reject(key, "not a record of this format", label)
        return stored

    def _reject(self, key: tuple[Any, ...], why: str, label: str | None = None) -> None:
        """Mark the stored record of ``key`` for recomputation, naming it, its file and ``why``."""
        self.stale[key] = [f"{why}: {self.path(key)}"]
        self.guard.log(f"recomputing {label or 'record ' + _describe(key)}: {why} ({self.path(key)})")
        return None

    def get(self, key: Sequence[Any], config: Mapping[str, Any],
            parse: Callable[[dict[str, Any]], T] | None = None,
            label: str | None = None) -> dict[str, Any] | T | None:
        """The stored record for ``key`` if it was made with ``config`` (and ``force`` is off), else None.

        ``parse(record)`` (if given) reads the body; its result is returned, and a body it cannot read
        (:data:`MALFORMED`) is recomputed and named. So is a record whose content checksum does not match
        (edited after it was written) and one made by other code than ``code`` (unless ``reuse_stale``).
        ``label`` names the record in those lines (default: ``record <key>``).
        """
        key = tuple(key)
        stored = self._read(key, label)
        if stored is None:
            return None
        if self.force:
            self.stale[key] = ["--force"]
            return None
        if stored.get("config_hash") != config_hash(config):
            self.stale[key] = _differences(stored.get("config", {}), _canonical(config))
            return None
        record = stored.get("record")
        if stored.get("record_sha256") != content_sha256(record):
            return self._reject(key, "content checksum mismatch (edited after it was written)", label)
        if self.code is not None:
            what = f"{label or 'record ' + _describe(key)} ({self.path(key)})"
            if not self.guard.current(what, stored.get("code"), self.code):
                self.stale[key] = [f"made by other code ({describe_change(stored.get('code'), self.code)})"]
                return None
        if parse is not None:
            try:
                record = parse(record)
            except MALFORMED as error:
                return self._reject(key, f"malformed record ({type(error).__name__}: {error})", label)
        self.resumed.append(key)
        return record

    def put(self, key: Sequence[Any], config: Mapping[str, Any], record: Mapping[str, Any]) -> Path:
        """Store ``record`` for ``key`` made with ``config`` (atomically, replacing any older one)."""
        key = tuple(key)
        payload = {"format": FORMAT, "key": list(_canonical(key)), "config": _canonical(config),
                   "config_hash": config_hash(config), "code": self.code,
                   "record_sha256": content_sha256(record), "record": record}
        path = atomic_write_text(self.path(key), json.dumps(payload, indent=2, default=_json_default) + "\n")
        self.computed.append(key)
        self.written.append(path)
        return path

    def summary(self, first: Any = None) -> list[str]:
        """Lines saying what was resumed and what was recomputed because its configuration changed (only
        keys starting with ``first`` if given)."""
        def chosen(key: tuple[Any, ...]) -> bool:
            return first is None or key[:1] == (first,)

        lines = []
        resumed = [k for k in self.resumed if chosen(k)]
        if resumed:
            lines.append(f"resumed {len(resumed)} complete record(s) from {self.directory}: "
                         + ", ".join(_describe(k) for k in resumed))
        stale = {k: v for k, v in self.stale.items() if k in self.computed and chosen(k)}
        if stale:
            changes = list(dict.fromkeys(change for v in stale.values() for change in v))
            lines.append(f"recomputed {len(stale)} record(s) whose configuration, content or code changed "
                         f"({'; '.join(changes)}): " + ", ".join(_describe(k) for k in stale))
        return lines


def _describe(key: Sequence[Any]) -> str:
    return " ".join(f"{part:g}" if isinstance(part, float) else str(part) for part in key)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    found = _changed(old, new, "")
    return found or ["configuration"]


def _changed(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    found = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += _changed(a, b, f"{prefix}{name}.")
        elif a != b:
            found.append(f"{prefix}{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return found


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
