"""The version of the code behind a cached result, so that a result from other code is never reused silently.

A version is, per source part (a package folder or one module file), the SHA-256 of the sorted
``(relative path, bytes)`` of its ``*.py`` files, read from the code this process imported (the folder above
``storage/``), once per process::

    code_version(MODEL_CODE)  ->  {"nets": "9c1d…", "stability": "3f2a…"}

A cache stores the version with its entry; :class:`CodeGuard` compares it with the running code's: an entry
from other code is recomputed and named ("recomputing X: made by other code (nets 9c1d… -> 77ab…)"), or,
with ``reuse_stale``, reused, named and listed so the report can say so.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EVALUATION_CODE",
    "MODEL_CODE",
    "ROOT",
    "STAMP_NAME",
    "CodeGuard",
    "code_version",
    "describe_change",
    "model_folder_is_current",
    "part_digest",
]

#: the folder holding the packages (the source this process imported)
ROOT = Path(__file__).resolve().parents[1]
#: what a trained model depends on (adversarially trained models add ``attacks``: their training loss)
MODEL_CODE: tuple[str, ...] = ("stability", "nets")
#: what an evaluation depends on: the model's code, the attacks and the evaluation modules
EVALUATION_CODE: tuple[str, ...] = MODEL_CODE + ("attacks", "experiments/honest.py", "experiments/masking.py")

CodeVersion = Mapping[str, str]


@functools.cache
def part_digest(root: Path, part: str) -> str:
    """SHA-256 (16 hex digits) of the ``*.py`` files of ``root/part`` (a folder, searched recursively, or one
    file), each as its path relative to ``root`` and its bytes; cached per process."""
    path = root / part
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise FileNotFoundError(f"no Python source at {path} to version")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_version(parts: Iterable[str], root: Path | None = None) -> dict[str, str]:
    """``{part: digest}`` of the running code (``root`` defaults to :data:`ROOT`), sorted by part."""
    base = ROOT if root is None else Path(root)
    return {part: part_digest(base, part) for part in sorted(set(parts))}


def describe_change(stored: Mapping[str, str] | None, current: Mapping[str, str]) -> str:
    """What differs between two versions, e.g. ``"attacks 1a2b3c4d -> 5e6f7a8b"`` (empty when equal)."""
    if not isinstance(stored, Mapping):
        return "no code version recorded (made before versioning)"
    changes = []
    for part in sorted(set(stored) | set(current)):
        old, new = stored.get(part), current.get(part)
        if old != new:
            changes.append(f"{part} {_short(old)} -> {_short(new)}")
    return ", ".join(changes)


def _short(digest: str | None) -> str:
    return str(digest)[:8] if digest else "absent"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class CodeGuard:
    """The policy for cache entries made by other code: recompute them (default), or with ``reuse_stale``
    reuse them; either way each is named through ``log`` and listed (``recomputed``, ``reused``)."""

    reuse_stale: bool = False
    log: Callable[[str], None] = _stderr
    recomputed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def current(self, what: str, stored: Mapping[str, str] | None, code: Mapping[str, str]) -> bool:
        """True when the entry ``what`` (made by ``stored`` code) may be used with the running ``code``."""
        change = describe_change(stored, code)
        if not change:
            return True
        if self.reuse_stale:
            self.reused.append(f"{what}: made by other code ({change})")
            self.log(f"reusing {what}: made by other code ({change}); --reuse-stale")
            return True
        self.recomputed.append(f"{what}: made by other code ({change})")
        self.log(f"recomputing {what}: made by other code ({change})")
        return False

    def stamp_lines(self) -> list[str]:
        """Report lines naming every reused stale entry (empty when there is none)."""
        if not self.reused:
            return []
        return [
            "**Stale results reused (--reuse-stale):** these entries were made by other code than this "
            "run's, so the numbers below may not be what today's code computes:",
            "",
            *[f"- {line}" for line in self.reused],
            "",
        ]


#: the file in a model folder that records the code version that trained it
STAMP_NAME = "code.json"
#: what a training run leaves in its folder (nets.training: weights, resumable checkpoint, history)
TRAINING_FILES = ("model.pt", "checkpoint.pt", "results.json")


def model_folder_is_current(folder: Path, code: Mapping[str, str], guard: CodeGuard, what: str) -> bool:
    """Make ``folder`` (a model cache entry) safe to train into or load from with the running ``code``.

    An entry holding training files from other code (another or no :data:`STAMP_NAME`) is named through
    ``guard``: its training files are deleted (the model is retrained from scratch, never resumed from a
    checkpoint of other code) and False is returned; with ``guard.reuse_stale`` it is kept and True returned.
    An empty entry is stamped with ``code``.
    """
    import json

    from storage.atomic import atomic_write_text

    folder = Path(folder)
    stamp = folder / STAMP_NAME
    present = [folder / name for name in TRAINING_FILES if (folder / name).is_file()]
    if present:
        try:
            stored = json.loads(stamp.read_text(encoding="utf-8")).get("code")
        except (OSError, ValueError, AttributeError):
            stored = None
        if guard.current(what, stored, code):
            return True
        for path in present:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps({"code": dict(code)}, indent=2, sort_keys=True) + "\n")
    return not present
