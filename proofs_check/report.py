"""Figures (|e_n|/|ε| against n with the bound, log scale) and CSV rows of ``Verification`` results."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from proofs_check.verify import AdaptiveVerification, Verification
from storage.atomic import atomic_write, atomic_write_text

CSV_FIELDS = (
    "run",
    "label",
    "covered_by_theorem",
    "n",
    "t",
    "h",
    "lipschitz",
    "bound_median",
    "envelope",
    "growth_median",
    "growth_max",
    "tightness_median",
    "tightness_max",
    "rounding_slack_max",
    "violations",
)


def csv_rows(result: Verification, run: str = "") -> list[dict]:
    """One row per step n = 0..N: bound and measured growth aggregated over the samples."""
    rows = []
    for n in range(len(result.times)):
        growth, bound = result.growth[n], result.bound[n]
        with np.errstate(divide="ignore", invalid="ignore"):
            tight = growth / bound
        rows.append(
            {
                "run": run,
                "label": result.label,
                "covered_by_theorem": result.covered,
                "n": n,
                "t": result.times[n],
                "h": result.step_sizes[n - 1] if n else "",
                "lipschitz": "" if result.lipschitz is None else result.lipschitz,
                "bound_median": float(np.median(bound)),
                "envelope": "" if result.envelope is None else float(result.envelope[n]),
                "growth_median": float(np.median(growth)),
                "growth_max": float(growth.max()),
                "tightness_median": float(np.median(tight)),
                "tightness_max": float(np.max(tight)),
                "rounding_slack_max": float(result.slack[n].max()),
                "violations": int(result.violation_mask[n].sum()),
            }
        )
    return rows


def write_csv(results: Sequence[tuple[str, Verification]], path: str | os.PathLike[str]) -> Path:
    """Write the per-step rows of every (run name, result) to ``path`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for run, result in results:
        writer.writerows(csv_rows(result, run))
    return atomic_write_text(path, buffer.getvalue())


def write_json(obj: object, path: str | os.PathLike[str]) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- figures --------------------------------------------------------------------------------------------


def _axes_growth(ax, result: Verification, show_samples: bool = True) -> None:
    steps = np.arange(len(result.times))
    if show_samples:
        ax.plot(steps, result.growth, color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(
        steps, np.median(result.growth, axis=1), color="tab:blue", linewidth=2, label="measured |e_n|/|ε|"
    )
    ax.plot(steps, np.median(result.bound, axis=1), "k--", linewidth=1.5, label="bound Π(step factors)")
    if result.envelope is not None and np.isfinite(result.envelope).all():
        style = "-." if result.envelope_is_bound else ":"
        suffix = "" if result.envelope_is_bound else " (not implied)"
        ax.plot(steps, result.envelope, style, color="tab:gray", label=f"e^(K(t_n−t_0)){suffix}")
    bad = np.nonzero(result.violation_mask.any(axis=1))[0]
    if bad.size:
        ax.plot(bad, result.growth[bad].max(axis=1), "rx", markersize=8, label="VIOLATION")
    _log_y(ax)


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels; minor ticks are labelled only when no decade is in view."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    short = 0 < low and math.isfinite(high) and high < 10 * low
    ax.yaxis.set_minor_formatter(plain if short else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(True, which="major", alpha=0.3)


def _axes_tightness(ax, result: Verification) -> None:
    steps = np.arange(1, len(result.times))
    tight = result.tightness
    ax.plot(steps, tight, color="tab:orange", alpha=0.25, linewidth=0.8)
    ax.plot(steps, np.median(tight, axis=1), color="tab:orange", linewidth=2)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    _log_y(ax)
    ax.set_xlabel("step n")


def plot_runs(results: Sequence[Verification], path: str | os.PathLike[str], title: str) -> Path:
    """One column per result: growth with bound (top) and tightness measured/bound (bottom), log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(results)
    fig, axes = plt.subplots(2, columns, figsize=(4.1 * columns + 0.6, 5.6), squeeze=False, sharex="col")
    for column, result in enumerate(results):
        _axes_growth(axes[0, column], result)
        axes[0, column].set_title(_short_title(result), fontsize=8)
        _axes_tightness(axes[1, column], result)
    axes[0, 0].set_ylabel("|e_n| / |ε|")
    axes[1, 0].set_ylabel("measured / bound")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    violated = any(r.covered and r.violated for r in results)
    fig.suptitle(
        title + ("   — BOUND VIOLATED" if violated else ""), fontsize=10, color="red" if violated else "k"
    )
    fig.subplots_adjust(
        left=0.22 / columns + 0.03, right=0.98, top=0.84, bottom=0.09, wspace=0.28, hspace=0.12
    )
    return _save(fig, path)


def plot_adaptive(
    reference: AdaptiveVerification,
    sweep: Sequence[AdaptiveVerification],
    path: str | os.PathLike[str],
    title: str,
    sweep_title: str = "ε sweep",
) -> Path:
    """Adaptive runs: shared grid (theorem) and independent steps for ``reference``, and the final growth of
    both against |ε| (relative to |y0|) over ``sweep``, with the bound on the unperturbed steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    _axes_growth(axes[0], reference.shared_grid)
    for ax in axes[:2]:
        ax.set_xlabel("step n")
    axes[0].set_title(f"shared grid ({reference.unperturbed_steps} steps): theorem applies", fontsize=9)
    _axes_growth(axes[1], reference.independent)
    axes[1].set_title(
        f"own steps ({reference.unperturbed_steps} vs {reference.perturbed_steps}): not covered", fontsize=9
    )
    axes[0].set_ylabel("|e_n| / |ε|")
    axes[0].legend(fontsize=7, loc="upper left")
    ax = axes[2]
    if sweep:
        sizes = np.array([np.median(r.shared_grid.epsilon_norms) for r in sweep])
        order = np.argsort(sizes)
        for values, style, label in (
            ([r.shared_grid.growth[-1].max() for r in sweep], "o-", "shared grid (max over samples)"),
            ([r.independent.growth[-1].max() for r in sweep], "s-", "own steps (max over samples)"),
            ([np.median(r.shared_grid.bound[-1]) for r in sweep], "k--", "bound on the unperturbed steps"),
        ):
            ax.loglog(sizes[order], np.asarray(values)[order], style, label=label)
        ax.legend(fontsize=7)
    ax.set_xlabel("|ε|")
    ax.set_ylabel("final |e_N| / |ε|")
    ax.set_title(sweep_title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.075, right=0.99, top=0.83, bottom=0.14, wspace=0.3)
    return _save(fig, path)


def _short_title(result: Verification) -> str:
    summary = result.summary()
    return (
        f"{result.label}\nmeasured/bound: median {summary['tightness_median']:.2g}, "
        f"max {summary['tightness_max']:.2g}, final {summary['final_tightness_median']:.2g}"
    )


def _save(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` atomically as a 64-colour palette PNG (the plots use a handful; ~3.5× smaller)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=90, format="png")
    finally:
        plt.close(fig)
    buffer.seek(0)
    compressed = io.BytesIO()
    compress_png(buffer, target=compressed)
    data = compressed.getvalue()
    return atomic_write(path, lambda handle: handle.write(data))


def compress_png(path, colours: int = 64, target=None) -> None:
    """Re-save a PNG (a path or a binary file) with a ``colours``-entry palette (median cut, no dithering),
    in place or into ``target``."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(
            colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    palette.save(path if target is None else target, format="PNG", optimize=True)


def summary_table(results: Sequence[tuple[str, Verification]]) -> str:
    """Plain-text table: run, label, steps, measured/bound median and max (over n ≥ 1 and samples) and at the
    last step (median), final growth (median), violations."""
    header = ("run", "label", "N", "tight med", "tight max", "tight end", "final growth", "viol")
    lines = ["{:<28} {:<40} {:>4} {:>9} {:>9} {:>9} {:>12} {:>5}".format(*header)]
    for run, result in results:
        s = result.summary()
        flag = "" if s["covered_by_theorem"] else " (not covered)"
        lines.append(
            f"{run[:28]:<28} {result.label[:40]:<40} {s['steps']:>4} {s['tightness_median']:>9.3g} "
            f"{s['tightness_max']:>9.3g} {s['final_tightness_median']:>9.3g} "
            f"{s['final_growth_median']:>12.4g} {s['violations']:>5}{flag}"
        )
    return "\n".join(lines)


__all__ = ["csv_rows", "plot_adaptive", "plot_runs", "summary_table", "write_csv", "write_json"]
