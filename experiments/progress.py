"""Progress bars of the command lines: what is running now, and the time left from the work left.

:class:`WorkBar` follows a suite run (:class:`attacks.progress.SuiteProgress`): its total is the work of
the records this run computes, in model passes; its description names the record running; its estimate of
the time left is the work left over the average rate so far (tqdm's ``smoothing=0``), so one slow record
does not swing it the way a per-record count did.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["WorkBar"]


class WorkBar:
    """A tqdm bar over model passes, named after the record running (``label: attack @ eps``)."""

    FORMAT = "{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"

    def __init__(self, label: str, *, enabled: bool = True, file: TextIO | None = None) -> None:
        self.label, self.enabled, self.file = label, enabled, file
        self.bar: Any = None

    def start(self, total: float) -> None:
        if not self.enabled or total <= 0:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=self.label, bar_format=self.FORMAT, smoothing=0,
                        dynamic_ncols=True, file=self.file or sys.stderr)

    def running(self, attack: str, eps: float | None) -> None:
        if self.bar is not None:
            at = "" if eps is None else f" @ ε={eps:g}"
            self.bar.set_description_str(f"{self.label}: {attack}{at}")

    def advance(self, work: float) -> None:
        if self.bar is not None and work > 0:
            self.bar.update(work)

    def skip(self, work: float) -> None:
        """Work planned but not done in this run (a record reused): out of the total, so that the rate, and
        with it the time left, comes from work actually done."""
        if self.bar is not None and work:  # negative: work back into the plan
            self.bar.total = max(self.bar.total - work, self.bar.n)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
