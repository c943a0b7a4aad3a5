"""A small result table (list of flat rows) with atomic CSV / JSON export."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from storage.atomic import atomic_write_text

__all__ = ["ResultTable"]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class ResultTable:
    """Rows of ``{column: scalar}``; columns are the union of the rows' keys in first-seen order."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.rows]

    def where(self, **conditions: Any) -> ResultTable:
        return ResultTable(r for r in self.rows if all(r.get(k) == v for k, v in conditions.items()))

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self, path: str | os.PathLike[str] | None = None, *, digits: int | None = None) -> str:
        """CSV text (written atomically to ``path`` if given); ``digits``: round floats to that many
        decimals (e.g. 4 for accuracies, instead of float32 noise such as 0.6549999713897705)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        rows = self.rows if digits is None else [
            {k: round(v, digits) if isinstance(v, float) and math.isfinite(v) else v for k, v in row.items()}
            for row in self.rows]
        writer.writerows(rows)
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        rows = [{k: _json_safe(v) for k, v in row.items()} for row in self.rows]
        text = json.dumps(rows, indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def __str__(self) -> str:
        columns = self.columns
        cells = [[_format(row.get(c)) for c in columns] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
        return "\n".join(lines)


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
