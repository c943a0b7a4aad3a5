"""Reproduce one artefact of the paper (or all of them).

    python -m experiments.paper ARTEFACT --data-dir DIR --scale SCALE --out OUT

(console script ``experiments-paper``). ARTEFACT is one of table1, fig2, fig3, table2, fig1, mechanism or
all; SCALE one of smoke (a plumbing test in minutes), cpu (default) or paper. Models come from the model
cache (--models, else $NR_MODELS_DIR, else OUT/models), which the main job shares: a model trained once
serves every command that asks for it. The conventions are those of every ``experiments`` command
(experiments.cli): one-line errors, exit status 2 for usage and data errors and 1 for other failures,
--debug for the traceback, Ctrl-C keeps what is complete (exit 130; rerun to resume), and the last line
lists the files written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.cli import (
    Outputs,
    UsageError,
    add_data_arguments,
    make_parser,
    positive_int,
    resolve_device,
    shown_command,
)
from experiments.cli import run as run_command
from experiments.paper.specs import SCALES

PROG = "python -m experiments.paper"
CHOICES = ("table1", "fig2", "fig3", "table2", "fig1", "mechanism", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__, threads=False)
    parser.add_argument("artefact", help=f"one of {', '.join(CHOICES)}")
    add_data_arguments(parser)
    parser.add_argument("--scale", default="cpu", help=f"one of {', '.join(SCALES)}")
    parser.add_argument("--out", required=True, help="output directory (models/, evaluations/, <artefact>/)")
    parser.add_argument("--models", default=None,
                        help="model cache folder (default: $NR_MODELS_DIR, else OUT/models)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's own)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse cached models and results made by other code (named on stderr and in "
                             "each report) instead of recomputing them")
    parser.add_argument("--plan", action="store_true",
                        help="print every model to train and every evaluation with estimated time and memory "
                             "(calibrated by timing a few steps here), then exit without running")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.artefact not in CHOICES:
        raise UsageError(f"unknown artefact {args.artefact!r}: choose one of {', '.join(CHOICES)}")
    if args.scale not in SCALES:
        raise UsageError(f"unknown scale {args.scale!r}: choose one of {', '.join(SCALES)}")
    data_dir = args.data_dir or os.environ.get("NR_DATA_DIR")
    if not data_dir:
        raise UsageError(
            "no data directory: pass --data-dir DIR (holding MNIST and CIFAR-10) or set NR_DATA_DIR"
        )
    if not Path(data_dir).is_dir() and not args.download:
        raise UsageError(
            f"data directory {data_dir!r} does not exist: pass --data-dir DIR holding the MNIST "
            "*-ubyte.gz files and CIFAR-10's cifar-10-batches-py/, or add --download"
        )
    args.data_dir = data_dir


def run(args: argparse.Namespace, command: str, outputs: Outputs | None = None) -> list[Path]:
    """Run the artefact(s) named by ``args``; returns the files written (also added to ``outputs``)."""
    import torch

    from experiments.paper import ARTEFACTS
    from experiments.paper.report import previous_run, record_run, stamp_stale
    from experiments.paper.runtime import Context
    from storage.code_version import CodeGuard

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = list(ARTEFACTS) if args.artefact == "all" else [args.artefact]
    plans = {name: ARTEFACTS[name].plan(args.scale) for name in names}
    if args.plan:
        from experiments.paper.estimate import print_plan

        print_plan(plans, Path(args.out), device, args.models)
        return []
    ctx = Context(
        Path(args.out),
        args.data_dir,
        device,
        progress=not args.no_progress,
        verify_data=all(p.verify_data for p in plans.values()) and not args.no_verify,
        download=args.download,
        guard=CodeGuard(reuse_stale=args.reuse_stale),
        models=Path(args.models) if args.models else None,
    )
    for dataset in sorted({d for plan in plans.values() for d in plan.eps_map}):
        ctx.dataset(dataset, "test")  # fail fast on missing or corrupt data, before any training
    written = []
    for name, plan in plans.items():
        started = time.perf_counter()
        before, previous = len(ctx.computed), previous_run(Path(args.out) / name)
        paths = ARTEFACTS[name].run(ctx, plan, command)
        stamp_stale(paths, ctx.guard.reused)
        record_run(paths, ctx.computed[before:], time.perf_counter() - started, previous)
        written += paths
        for path in paths:
            if outputs is not None:
                outputs.add(path)
        print(f"{name}: {paths[0]} ({time.perf_counter() - started:.0f} s)", flush=True)
    return written


def command(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> list[Path]:
    """The command as a function (experiments.cli's convention): parse ``argv``, check it, run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _check(args)
    return run(args, shown_command(PROG, argv), outputs)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: :func:`command` under experiments.cli's conventions; returns the exit status."""
    return run_command(command, argv)
