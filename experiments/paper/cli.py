"""Reproduce one artefact of the paper (or all of them).

    python -m experiments.paper ARTEFACT --data-dir DIR --scale SCALE --out OUT

(console script ``experiments-paper``). ARTEFACT is one of table1, fig2, fig3, table2, fig1, mechanism or
all; SCALE one of smoke (a plumbing test in minutes), cpu (default) or paper. Models come from the model
cache (--models, else $NR_MODELS_DIR, else OUT/models), which the main job shares: a model trained once
serves every command that asks for it. The conventions are those of every ``experiments`` command
(experiments.cli): one-line errors, exit status 2 for usage and data errors and 1 for other failures,
--debug for the traceback, Ctrl-C keeps what is complete (exit 130; rerun to resume), and the last line
lists the files written.

Many processes: under ``torchrun --nproc_per_node K`` rank 0 runs the artefact and the other ranks join its
trainings and honest-evaluation suites (experiments.paper.distributed); ``--shard K/N`` jobs evaluate one
shard of every honest evaluation each, and the same command without ``--shard`` merges them
(experiments.paper.sharding); ``--train-only`` trains the models first.
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

MODULE = "experiments.paper"
PROG = f"python -m {MODULE}"
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
    parser.add_argument("--processes", type=positive_int, default=None,
                        help="with --plan: estimate for K data-parallel processes (torchrun "
                             "--nproc_per_node K; default: the processes this command runs in)")
    parser.add_argument("--train-only", action="store_true",
                        help="train the artefact's models (data-parallel under torchrun) and stop")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="evaluate shard K of N (K from 0) of every honest evaluation of the artefact "
                             "and stop; once all N have run, the same command without --shard merges them "
                             "and writes the report (models must be trained: --train-only)")
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
    if args.shard is not None:
        from experiments.paper.sharding import ShardJob

        args.shard = ShardJob.parse(args.shard)
        if args.train_only:
            raise UsageError("--shard and --train-only are two steps: train first, then run the shards")


def run(args: argparse.Namespace, command: str, outputs: Outputs | None = None) -> list[Path]:
    """Run the artefact(s) named by ``args``; returns the files written (also added to ``outputs``). Under
    ``torchrun`` rank 0 runs them and the other ranks serve its training and evaluation jobs
    (:mod:`experiments.paper.distributed`)."""
    import torch

    from experiments.paper import ARTEFACTS
    from experiments.paper.distributed import join, launched_rank, leave

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = list(ARTEFACTS) if args.artefact == "all" else [args.artefact]
    plans = {name: ARTEFACTS[name].plan(args.scale) for name in names}
    rank, world_size = launched_rank()
    if args.plan:
        from experiments.paper.estimate import print_plan

        if rank == 0:
            print_plan(plans, Path(args.out), device, args.processes or world_size, args.models)
        return []
    _check_team(args, plans, world_size)
    team, device = join(device)
    finished = False
    try:
        written = _run_plans(args, command, plans, team, device, outputs)
        finished = True
    finally:
        leave(team, finished=finished)
    return written


def _check_team(args: argparse.Namespace, plans: dict, world_size: int) -> None:
    """Refuse, before any process joins, what K processes cannot run as one would."""
    from experiments.models import cache_folder, models_dir
    from experiments.paper.distributed import per_process_batch

    if world_size == 1:
        return
    if args.shard is not None:
        raise UsageError("--shard jobs run one process each: start them without torchrun (or leave out "
                         "--shard and let torchrun share the evaluation's batches)")
    if ":" in args.device:
        raise UsageError(f"--device {args.device} under torchrun: pass --device cuda (each process takes "
                         "cuda:LOCAL_RANK) or cpu")
    for plan in plans.values():
        for label, spec in plan.models:
            try:
                per_process_batch(spec.train.batch_size, world_size, f"{plan.artefact} {label}'s batch")
            except ValueError as error:
                raise UsageError(str(error)) from None
            trained = (cache_folder(spec, models_dir(args.out, args.models)) / "model.pt").is_file()
            if spec.loss.kind == "yopo" and not trained:
                raise UsageError(
                    f"{plan.artefact} {label} trains with YOPO, which does not run under "
                    "DistributedDataParallel (attacks.yopo): train it in one process first (the same "
                    "command without torchrun, with --train-only), then rerun under torchrun"
                )


def _run_plans(args: argparse.Namespace, command: str, plans: dict, team, device,
               outputs: Outputs | None) -> list[Path]:
    from experiments.paper import ARTEFACTS
    from experiments.paper.measure import honest_job
    from experiments.paper.report import previous_run, record_run, stamp_stale
    from experiments.paper.runtime import Context
    from storage.code_version import CodeGuard

    ctx = Context(
        Path(args.out),
        args.data_dir,
        device,
        progress=not args.no_progress and team.is_leader,
        verify_data=all(p.verify_data for p in plans.values()) and not args.no_verify,
        download=args.download and team.is_leader,
        guard=CodeGuard(reuse_stale=args.reuse_stale) if team.is_leader else CodeGuard(args.reuse_stale,
                                                                                        log=_quiet),
        models=Path(args.models) if args.models else None,
        team=team,
        shard=args.shard,
    )
    if not team.is_leader:
        team.serve({"train": ctx.train, "honest": lambda **job: honest_job(ctx, **job)})
        return []
    for dataset in sorted({d for plan in plans.values() for d in plan.eps_map}):
        ctx.dataset(dataset, "test")  # fail fast on missing or corrupt data, before any training
    if args.train_only:
        for name, plan in plans.items():
            _train_models(ctx, ARTEFACTS[name], plan)
            print(f"{name}: its models are trained, in {_models_dir(args)}", flush=True)
        team.release()
        return []
    if ctx.shard is not None:
        return _run_shard(ctx, plans, command)
    written = []
    for name, plan in plans.items():
        started = time.perf_counter()
        before, reused_before = len(ctx.computed), len(ctx.reused)
        previous = previous_run(Path(args.out) / name)
        paths = ARTEFACTS[name].run(ctx, plan, command)
        stamp_stale(paths, ctx.guard.reused)
        record_run(paths, ctx.computed[before:], time.perf_counter() - started, previous, team.world_size,
                   reused=ctx.reused[reused_before:])
        written += paths
        for path in paths:
            if outputs is not None:
                outputs.add(path)
        print(f"{name}: {paths[0]} ({time.perf_counter() - started:.0f} s)", flush=True)
    team.release()
    return written


def _models_dir(args: argparse.Namespace) -> Path:
    from experiments.models import models_dir

    return models_dir(args.out, args.models)


def _train_models(ctx, artefact, plan) -> None:
    """``--train-only``: the artefact's own ``train_models(ctx, plan)`` where it trains models its plan does
    not list, else every model of its plan."""
    if hasattr(artefact, "train_models"):
        artefact.train_models(ctx, plan)
        return
    for label, spec in plan.models:
        ctx.trained(label, spec, plan.evaluation.test_samples)


def _run_shard(ctx, plans: dict, command: str) -> list[Path]:
    """``--shard K/N``: each artefact runs with its honest evaluations cut to shard K (and its other
    measurements skipped) in a scratch run directory, deleted afterwards: what stays are the shards."""
    import dataclasses
    import shutil

    from experiments.paper import ARTEFACTS

    for name, plan in plans.items():
        started = time.perf_counter()
        scratch = dataclasses.replace(plan, artefact=f"{name}.shard-{ctx.shard.folder_name}")
        try:
            ARTEFACTS[name].run(ctx, scratch, command)
        finally:
            shutil.rmtree(ctx.out / scratch.artefact, ignore_errors=True)
        print(f"{name}: shard {ctx.shard.label} of its honest evaluations written under "
              f"{ctx.out / 'evaluations'}/*/shards/{ctx.shard.folder_name} "
              f"({time.perf_counter() - started:.0f} s); once every shard has run, merge them with the same "
              "command without --shard", flush=True)
    return []


def launcher() -> str:
    """How this command was started, as a report prints it: ``python -m experiments.paper``, or under torchrun
    ``torchrun --nproc_per_node K -m experiments.paper`` (K processes on one node make other numbers than one
    process where a model has BatchNorm or training rounds differently, so the report names K)."""
    from experiments.paper.distributed import launched_rank

    _, world_size = launched_rank()
    return PROG if world_size == 1 else f"torchrun --nproc_per_node {world_size} -m {MODULE}"


def _quiet(line: str) -> None:
    """A helper's log: the leader names every stale entry once."""


def command(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> list[Path]:
    """The command as a function (experiments.cli's convention): parse ``argv``, check it, run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        _check(args)
        return run(args, shown_command(launcher(), argv), outputs)
    except Exception as error:
        _one_rank_speaks(error)
        raise


def _one_rank_speaks(error: Exception) -> None:
    """Under torchrun, make a failure one line: a rank that lost its peer in a collective (the failing peer
    says why) and every rank but 0 refusing the same command exit 2 silently; another failure names its
    rank. torchrun then ends the other processes."""
    from experiments.paper.distributed import launched_rank, peer_failed

    rank, world_size = launched_rank()
    if world_size == 1:
        return
    if peer_failed(error) or (isinstance(error, UsageError) and rank != 0):
        raise SystemExit(2) from None
    if not isinstance(error, UsageError) and error.args and isinstance(error.args[0], str):
        error.args = (f"(rank {rank} of {world_size}) {error.args[0]}", *error.args[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: :func:`command` under experiments.cli's conventions; returns the exit status."""
    return run_command(command, argv)
