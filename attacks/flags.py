"""The result of a check: a named flag, whether it fired, a one-line verdict and the numbers behind it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Flag"]


@dataclass(frozen=True)
class Flag:
    """A named check: whether it fired, a one-line verdict, and the numbers behind it."""

    name: str
    fired: bool
    verdict: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
