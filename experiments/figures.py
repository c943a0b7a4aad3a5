"""The one way an experiment draws and writes a figure: matplotlib's file-only backend, and an atomic PNG."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

from storage.atomic import atomic_write

__all__ = ["pyplot", "save_figure"]

#: the resolution of every experiment figure
DPI = 110


def pyplot():
    """``matplotlib.pyplot`` on the ``Agg`` backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike[str], note: str | None = None) -> Path:
    """Write ``figure`` as a PNG at :data:`DPI` to ``path`` atomically (mode 0644, by
    :func:`storage.atomic.atomic_write`) and close it; ``note`` (e.g. what the figure was made from) is
    printed along its bottom edge."""
    plt = pyplot()
    if note:
        text = "\n".join(textwrap.wrap(note, 150))
        figure.subplots_adjust(bottom=0.2 + 0.03 * text.count("\n"))
        figure.text(0.01, 0.01, text, fontsize=6.5, ha="left", va="bottom", color="0.25")
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    data = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.write(data))
