"""``python -m experiments.paper ARTEFACT --data-dir DIR --scale SCALE --out DIR`` (console script
``experiments-paper``). Every failure is one line on stderr and exit code 2; ``--debug`` shows the traceback.

All command-line plumbing of the package lives here, so it can adopt the project's shared conventions in one
place.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.paper.specs import SCALES

PROG = "python -m experiments.paper"
CHOICES = ("table1", "fig2", "fig3", "table2", "fig1", "mechanism", "all")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Reproduce one artefact of the paper (or all of them).")
    parser.add_argument("artefact", help=f"one of {', '.join(CHOICES)}")
    parser.add_argument("--data-dir", default=None, help="MNIST / CIFAR-10 files (default: $NR_DATA_DIR)")
    parser.add_argument("--scale", default="cpu", help=f"one of {', '.join(SCALES)} (default cpu)")
    parser.add_argument("--out", required=True, help="output directory (models/, evaluations/, <artefact>/)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    parser.add_argument("--download", action="store_true",
                        help="download missing dataset files into --data-dir (needs internet)")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse cached models and results made by other code (named on stderr and in "
                             "each report) instead of recomputing them")
    parser.add_argument("--plan", action="store_true",
                        help="print every model to train and every evaluation with estimated time and memory "
                             "(calibrated by timing a few steps here), then exit without running")
    parser.add_argument("--train-only", action="store_true",
                        help="train the artefact's models (data-parallel under torchrun) and stop")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="evaluate shard K of N (K from 0) of every honest evaluation of the artefact "
                             "and stop; once all N have run, the same command without --shard merges them "
                             "and writes the report (models must be trained: --train-only)")
    parser.add_argument("--processes", type=int, default=None,
                        help="with --plan: estimate for K data-parallel processes (torchrun "
                             "--nproc_per_node K; default: the processes this command runs in)")
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
    if getattr(args, "shard", None) is not None:
        from experiments.paper.sharding import ShardJob

        args.shard = ShardJob.parse(args.shard)
        if args.train_only:
            raise UsageError("--shard and --train-only are two steps: train first, then run the shards")
    if getattr(args, "processes", None) is not None and args.processes < 1:
        raise UsageError(f"--processes {args.processes}: need K >= 1")


def run(args: argparse.Namespace, command: str) -> list[Path]:
    """Run the artefact(s) named by ``args``; returns the files written. Under ``torchrun`` rank 0 runs them
    and the other ranks serve its training and evaluation jobs (:mod:`experiments.paper.distributed`)."""
    import torch

    from experiments.paper import ARTEFACTS
    from experiments.paper.distributed import join, launched_rank, leave

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = list(ARTEFACTS) if args.artefact == "all" else [args.artefact]
    plans = {name: ARTEFACTS[name].plan(args.scale) for name in names}
    rank, world_size = launched_rank()
    if getattr(args, "plan", False):
        from experiments.paper.estimate import print_plan

        if rank == 0:
            print_plan(plans, Path(args.out), torch.device(device), args.processes or world_size)
        return []
    _check_team(args, plans, world_size, device)
    team, device = join(device)
    finished = False
    try:
        written = _run_plans(args, command, plans, team, device)
        finished = True
    finally:
        leave(team, finished=finished)
    return written


def _check_team(args: argparse.Namespace, plans: dict, world_size: int, device: str) -> None:
    """Refuse, before any process joins, what K processes cannot run as one would."""
    from experiments.paper.distributed import per_process_batch

    if world_size == 1:
        return
    if getattr(args, "shard", None) is not None:
        raise UsageError("--shard jobs run one process each: start them without torchrun (or leave out "
                         "--shard and let torchrun share the evaluation's batches)")
    if ":" in device:
        raise UsageError(f"--device {device} under torchrun: pass --device cuda (each process takes "
                         "cuda:LOCAL_RANK) or cpu")
    for plan in plans.values():
        for label, spec in plan.models:
            try:
                per_process_batch(spec.train.batch_size, world_size, f"{plan.artefact} {label}'s batch")
            except ValueError as error:
                raise UsageError(str(error)) from None
            trained = (Path(args.out) / "models" / f"{spec.name}-{spec.key()}" / "model.pt").is_file()
            if spec.train.loss == "yopo" and not trained:
                raise UsageError(
                    f"{plan.artefact} {label} trains with YOPO, which does not run under "
                    "DistributedDataParallel (attacks.yopo): train it in one process first (the same "
                    "command without torchrun, with --train-only), then rerun under torchrun"
                )


def _run_plans(args: argparse.Namespace, command: str, plans: dict, team, device) -> list[Path]:
    from experiments.code_version import CodeGuard
    from experiments.paper import ARTEFACTS
    from experiments.paper.measure import honest_job
    from experiments.paper.report import previous_run, record_run, stamp_stale
    from experiments.paper.runtime import Context

    reuse_stale = getattr(args, "reuse_stale", False)
    ctx = Context(
        Path(args.out),
        args.data_dir,
        device,
        progress=not args.no_progress and team.is_leader,
        verify_data=all(p.verify_data for p in plans.values()),
        download=getattr(args, "download", False) and team.is_leader,
        guard=CodeGuard(reuse_stale=reuse_stale) if team.is_leader else CodeGuard(reuse_stale, log=_quiet),
        team=team,
        shard=getattr(args, "shard", None),
    )
    if not team.is_leader:
        team.serve({"train": ctx.train, "honest": lambda **job: honest_job(ctx, **job)})
        return []
    for dataset in sorted({d for plan in plans.values() for d in plan.eps_map}):
        ctx.dataset(dataset, "test")  # fail fast on missing or corrupt data, before any training
    if getattr(args, "train_only", False):
        for name, plan in plans.items():
            _train_models(ctx, ARTEFACTS[name], plan)
            print(f"{name}: its models are trained, under {Path(args.out) / 'models'}", flush=True)
        team.release()
        return []
    if ctx.shard is not None:
        return _run_shard(ctx, plans, command)
    written = []
    for name, plan in plans.items():
        started = time.perf_counter()
        before, previous = len(ctx.computed), previous_run(Path(args.out) / name)
        paths = ARTEFACTS[name].run(ctx, plan, command)
        stamp_stale(paths, ctx.guard.reused)
        record_run(paths, ctx.computed[before:], time.perf_counter() - started, previous, team.world_size)
        written += paths
        print(f"{name}: {paths[0]} ({time.perf_counter() - started:.0f} s)", flush=True)
    team.release()
    return written


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


def _quiet(line: str) -> None:
    """A helper's log: the leader names every stale entry once."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from experiments.cli import shown_command

    command = shown_command(PROG, argv)
    try:
        args = build_parser().parse_args(argv)
        _check(args)
        run(args, command)
        return 0
    except KeyboardInterrupt:
        from experiments.cli import end_progress_bars

        end_progress_bars()  # the line below starts a line of its own
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except Exception as error:  # noqa: BLE001 - the one-line contract
        if debug:
            raise
        from experiments.paper.distributed import launched_rank, peer_failed

        rank, world_size = launched_rank()
        if world_size > 1 and (peer_failed(error) or isinstance(error, UsageError) and rank != 0):
            return 2  # the failing peer says why (for a refused command: rank 0, as every rank refuses it)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        usage = isinstance(error, UsageError)
        hint = "" if usage else " (rerun with --debug for the traceback)"
        where = f" (rank {rank} of {world_size})" if world_size > 1 and not usage else ""
        print(f"{PROG}: error{where}: {message}{hint}", file=sys.stderr)
        return 2
