"""Writing an artefact: ``report.md`` (paper vs ours with the difference, the worst case, the flags),
``results.csv`` / ``results.json`` (plan, seeds, versions, hardware, timings, NFE), PNG figures — every file
written atomically (temporary file, then ``os.replace``)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from attacks.table import ResultTable
from experiments.paper.specs import Plan
from storage.atomic import atomic_write_text

OUTPUT_FILES = ("report.md", "results.csv", "results.json")


#: environment variables that pin the CPU kernels' instruction set (docs/reproducibility.md)
ISA_PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def environment() -> dict[str, Any]:
    """Versions and hardware of this run."""
    import numpy

    commit = _git("rev-parse", "HEAD") or None
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+uncommitted changes"
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "git_commit": commit,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        # the CPU kernels' instruction set: AVX2 and AVX-512 kernels round differently, so trained models
        # (and every number after them) are bitwise equal only between runs on the same one
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_pins": {name: os.environ[name] for name in ISA_PINS if name in os.environ},
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``model name`` in Linux's cpuinfo; else what ``platform`` knows): results are
    bitwise reproducible on the same kind of CPU only (docs/reproducibility.md)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(
            ["git", *arguments], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def pct(value: float | None) -> str:
    """A fraction as the percentage text of a markdown table ("—" when missing)."""
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def percent(fraction: float | None) -> float | None:
    """A fraction as the percentage of a CSV row, rounded to 2 decimals (None stays None)."""
    return None if fraction is None else round(100 * fraction, 2)


def diff(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return "—"
    return f"{100 * ours - paper:+.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def flags_section(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The honest evaluation's flags per model, fired first."""
    lines = ["## Flags of the honest evaluation", ""]
    for label, summary in summaries.items():
        fired = summary["fired"]
        lines.append(
            f"**{label}** ({summary['preset']} preset, {summary['samples']} images): "
            + (f"fired: {', '.join(f'`{n}`' for n in fired)}" if fired else "no flag fired")
        )
        lines += [
            f"- {'**FIRED**' if f['fired'] else 'ok'} `{f['name']}`: {f['verdict']}" for f in summary["flags"]
        ]
        lines.append("")
    return lines


def sanity_section(failures: Sequence[str]) -> list[str]:
    """The ε-sanity test applied to the paper attacks' own numbers (``measure.constant_image_caps``)."""
    lines = [
        "## ε-sanity of the paper attacks' numbers",
        "",
        "The cap at ε is the fraction of the attacked images that are classified correctly and that no "
        "constant gray image inside their ε-ball misclassifies (such a gray image is an adversarial at no "
        "cost); no robust accuracy can exceed it. A paper-attack number above it is an evaluation failure "
        "(flag `eps-sanity(<attack>)` in the tables), not robustness.",
        "",
    ]
    fired = [f"- **FIRED** {failure}" for failure in failures]
    lines += fired or ["- every paper-attack number is under its cap"]
    return lines + [""]


def header(plan: Plan, title: str, command: str) -> list[str]:
    lines = [f"# {title}", "", f"Scale `{plan.scale}`, plan key `{plan.key()}`.", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    if plan.notes:
        lines += ["How this run differs from the paper:", ""] + [f"- {note}" for note in plan.notes] + [""]
    return lines


def caption(plan: Plan, sizes: Mapping[str, int], images: int) -> str:
    """What a figure was made from: the scale, each architecture with its parameter count, the image count
    (so that a smoke figure never passes for a result)."""
    models = ", ".join(f"{name} ({count / 1e6:.2g}M params)" for name, count in sizes.items())
    warning = " — plumbing test, numbers meaningless" if plan.scale == "smoke" else ""
    return f"scale {plan.scale}{warning}; {images:,} attacked test images; models: {models}"


def write(
    folder: Path,
    plan: Plan,
    *,
    markdown: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    started: float,
    timings: Mapping[str, float],
    honest: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any]],
    figures: Mapping[str, Callable[[Path], Path]] = {},  # noqa: B006 - read only
    command: str = "",
    **extra: Any,
) -> list[Path]:
    """Write report.md, results.csv, results.json and each ``figures[name](path)`` PNG into ``folder``.

    results.json: the plan, the environment, ``wall_s`` (since ``started``, a ``time.perf_counter()``),
    ``timings_s``, the ``honest`` summaries, the ``models`` (spec and training record per label), ``extra``
    and the rows."""
    written = [atomic_write_text(folder / "report.md", "\n".join(markdown) + "\n")]
    ResultTable([dict(row) for row in rows]).to_csv(folder / "results.csv")
    written.append(folder / "results.csv")
    document = {
        "artefact": plan.artefact,
        "scale": plan.scale,
        "command": command,
        "plan_key": plan.key(),
        "plan": plan.to_dict(),
        "notes": list(plan.notes),
        "environment": environment(),
        "wall_s": time.perf_counter() - started,
        "timings_s": dict(timings),
        "honest": dict(honest),
        "models": dict(models),
        **extra,
        "rows": [dict(row) for row in rows],
    }
    written.append(
        atomic_write_text(folder / "results.json", json.dumps(document, indent=2, default=str) + "\n")
    )
    for name, draw in figures.items():
        written.append(draw(folder / name))
    return written


def stamp_stale(paths: Sequence[Path], reused: Sequence[str]) -> None:
    """Stamp an artefact's report.md and results.json (among ``paths``) with the cache entries made by other
    code that this command reused (``--reuse-stale``); nothing when there are none."""
    if not reused:
        return
    from storage.code_version import CodeGuard

    lines = CodeGuard(reused=list(reused)).stamp_lines()
    for path in paths:
        if path.name == "report.md":
            title, _, rest = path.read_text(encoding="utf-8").partition("\n")
            atomic_write_text(path, "\n".join([title, "", *lines]) + "\n" + rest)
        elif path.name == "results.json":
            document = json.loads(path.read_text(encoding="utf-8"))
            document["stale_reused"] = list(reused)
            atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")


def previous_run(folder: Path) -> dict[str, Any] | None:
    """The ``run`` record of the results.json already in ``folder`` (None if there is none)."""
    try:
        run = json.loads((folder / "results.json").read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, dict) else None


def record_run(
    paths: Sequence[Path],
    computed: Sequence[str],
    seconds: float,
    previous: Mapping[str, Any] | None,
    processes: int = 1,
    reused: Sequence[str] = (),
) -> dict[str, Any]:
    """Record in an artefact's results.json and report.md (among ``paths``) the run that computed its
    numbers: this one when it computed anything (``computed``: what it did not take from the caches), else
    the ``previous`` run record (this one only re-rendered the files, and says so). Returns the record.
    ``processes``: how many data-parallel processes (torchrun) ran it; ``reused``: the trained models it
    took from the cache, whose training its wall time does not include (named in the report)."""
    env = environment()
    this = {
        "commit": env["git_commit"],
        "wall_s": round(seconds, 1),
        "torch_threads": env["torch_threads"],
        "cpu_count": env["cpu_count"],
        "cpu_model": env["cpu_model"],
        "cpu_capability": env["cpu_capability"],
        "processes": processes,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "computed": list(computed),
        "reused": [name for name in dict.fromkeys(reused) if name not in computed],
    }
    run = this if computed or previous is None else dict(previous)
    rendered = None if run is this else {k: this[k] for k in ("commit", "wall_s", "finished_utc")}
    line = (
        f"Computed by commit `{run['commit']}` in {run['wall_s']:.0f} s wall ({run['torch_threads']} torch "
        f"thread(s), {run['cpu_count']} cores"
        + (f" of {run['cpu_model']}, {run['cpu_capability']} kernels" if run.get("cpu_model") else "")
        + (f", {run['processes']} processes" if run.get("processes", 1) > 1 else "")
        + f"), finished {run['finished_utc']}"
    )
    if rendered is not None:
        line += (
            f"; this report was re-rendered from the cached results by commit `{rendered['commit']}` "
            f"({rendered['wall_s']:.0f} s)"
        )
    elif not computed:
        line += " (every result taken from the caches)"
    elif this["reused"]:
        line += f"; taken from the caches, so not in that time: {', '.join(this['reused'])}"
    for path in paths:
        if path.name == "results.json":
            document = json.loads(path.read_text(encoding="utf-8"))
            document["run"] = run
            document["rendered"] = rendered
            atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")
        elif path.name == "report.md":
            title, _, rest = path.read_text(encoding="utf-8").partition("\n")
            atomic_write_text(path, "\n".join([title, "", line + "."]) + "\n" + rest)
    return run
