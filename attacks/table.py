"""A small result table (list of flat rows) with atomic CSV / JSON export."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["ResultTable", "atomic_write", "atomic_write_text"]


def _file_mode() -> int:
    """Mode of a newly created regular file under the current umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """The project's one atomic writer: ``write(handle)`` fills a temporary binary file in the same folder,
    which is flushed, fsynced, given the mode a plain ``open`` would give (0644 under umask 022, not
    ``mkstemp``'s 0600) and moved onto ``path`` with ``os.replace``. An interrupted write (an exception,
    Ctrl-C) leaves the previous ``path`` untouched and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically with :func:`atomic_write`."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda file: file.write(data))


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
