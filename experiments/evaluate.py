"""The honest verdict on a trained model: the evaluation suite, its per-example worst case and its flags.

    python -m experiments.evaluate --checkpoint RUN [--against RUN2 ...] --eps 0.1 0.2 0.3 \\
        --preset quick|standard|ode|ode-quick --samples N --out DIR

``RUN`` is a run directory of ``experiments.train`` (or its ``model.pt``). Writes ``report.md`` (per attack
and eps, the worst case, the paper-protocol PGD-40 number, flags with a one-line verdict),
``results.json``/``results.csv`` (configuration, versions, timings), ``per_sample.csv`` (per sample: which
attack fooled it at each eps) and ``robustness.png``. Each (attack, eps) record is written atomically when
complete under ``DIR/records/`` and reused by a rerun with the same configuration. Under
``torchrun --nproc_per_node K`` the samples are sharded across processes (batch by batch) and gathered; the
result equals the single-process run. ``model_info.json`` is the RobustBench-style model card
(:mod:`experiments.model_card`).

Independent jobs (any scheduler, any machine) split the same evaluation with ``--shard K/N`` (K = 0 .. N-1,
each into its own ``--out``) and ``--merge DIR... --out DIR`` combines them after checking that every sample
was evaluated exactly once by one configuration and one model (:mod:`experiments.shards`); the merged files
equal the one-process run's. ``--budget`` is the budgeted mode for CPUs (:mod:`attacks.budget`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.cli import (
    Outputs,
    UsageError,
    add_data_arguments,
    budget,
    distinct,
    make_parser,
    positive_int,
    resolve_device,
    run,
    setup,
    shown_command,
)
from experiments.honest import PRESET_NAMES, EvaluationConfig, SuiteStore, evaluate, write_outputs
from experiments.model_card import model_card
from experiments.shards import merge_evaluation, parse_shard, read_shards, shard_config, write_shard
from storage.atomic import atomic_write_text
from storage.code_version import EVALUATION_CODE, CodeGuard, code_version
from storage.records import RecordStore, file_sha256

DEFAULT_EPS = {"mnist": [0.1, 0.2, 0.3, 0.4], "cifar10": [2 / 255, 4 / 255, 8 / 255, 16 / 255]}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m experiments.evaluate", __doc__)
    parser.add_argument(
        "--checkpoint", default=None,
        help="run directory (or model.pt) of the model to evaluate (required unless --merge)",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="RUN",
        help="another trained model to transfer attacks from (repeatable)",
    )
    parser.add_argument(
        "--eps",
        type=budget,
        nargs="+",
        default=None,
        help="budgets (default: 0.1 0.2 0.3 0.4 on MNIST, 2 4 8 16 /255 on CIFAR-10)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="quick",
        help="standard = AutoAttack (APGD-CE, APGD-T, FAB-T, Square-5000); quick = 50 iterations, "
        "3 targets, 1000 queries; ode/ode-quick add the solver-aware attacks",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="override the preset's APGD iterations"
    )
    parser.add_argument(
        "--target-classes",
        type=positive_int,
        default=None,
        help="override the preset's APGD-T target classes",
    )
    parser.add_argument(
        "--queries", type=positive_int, default=None, help="override the preset's Square queries"
    )
    parser.add_argument("--samples", type=positive_int, default=200, help="first N test images")
    parser.add_argument("--out", default="runs/evaluate", help="output directory")
    add_data_arguments(parser)
    parser.add_argument(
        "--dataset", default=None, help="dataset (default: the one the checkpoint was trained on)"
    )
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model")
    parser.add_argument("--batch-size", type=positive_int, default=250, help="samples per attack batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of every attack")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--shared-steps",
        action="store_true",
        help="evaluate ODE models with step control shared by the batch (default: per sample)",
    )
    parser.add_argument(
        "--reference-tol",
        type=float,
        default=1e-6,
        help="rtol = atol of the tight dopri5 surrogate (ode presets)",
    )
    parser.add_argument(
        "--fixed-steps", type=positive_int, default=20, help="steps of the RK4 surrogate (ode presets)"
    )
    parser.add_argument(
        "--convergence-steps",
        type=positive_int,
        nargs="+",
        default=[20, 100, 1000],
        help="PGD iteration counts of the convergence check",
    )
    parser.add_argument(
        "--convergence-samples", type=int, default=20, help="samples of the convergence check"
    )
    parser.add_argument(
        "--unit-test",
        action="store_true",
        help="instead of evaluating: the binarization test of the suite (Zimmermann et al. 2022) on each "
        "sample and eps; writes unit_test.json",
    )
    parser.add_argument("--force", action="store_true", help="recompute records even if they exist")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse records made by other code (named) instead of recomputing them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--shard", default=None, metavar="K/N",
        help="evaluate only shard K of N (K = 0 .. N-1; contiguous whole batches of the selected samples) "
        "and write its per-example records to --out; combine the N folders with --merge",
    )
    parser.add_argument(
        "--merge", nargs="+", default=None, metavar="DIR",
        help="combine the shard folders DIR... of one evaluation into --out (refuses gaps, duplicates, and "
        "shards of another configuration or model); the configuration comes from the shards",
    )
    parser.add_argument(
        "--no-checks", action="store_true",
        help="skip the checks over the whole set that need the model again (convergence, eps sanity, batch "
        "dependence, randomness); the report's own checks still run and the outputs say what was skipped",
    )
    parser.add_argument(
        "--budget", action="store_true",
        help="budgeted mode for CPUs: APGD-T on the 2 MALT-nearest targets, Square with a tenth of the "
        "queries",
    )
    return parser


def load_model(path: str, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    """The trained model and the dataset it was trained on."""
    from nets.training import MODEL_NAME, load_checkpoint, load_trained_model

    run_dir = Path(path)
    file = run_dir / MODEL_NAME if run_dir.is_dir() else run_dir
    if not file.is_file():
        raise UsageError(
            f"no trained model at {path!r} (expected a run directory with {MODEL_NAME}); "
            "train one with python -m experiments.train"
        )
    state = load_checkpoint(file)
    return load_trained_model(file, device=device), state.get("dataset")


def main(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.eps:
        distinct(args.eps, "--eps")
    setup(args)
    outputs = outputs if outputs is not None else Outputs()
    if args.merge:
        return merge(args, argv, outputs)
    if args.checkpoint is None:
        raise UsageError("--checkpoint RUN is required (or --merge DIR... to combine shards)")
    from nets.training import init_distributed, shutdown_distributed

    # under torchrun: join the group; on CUDA each process takes cuda:LOCAL_RANK
    context, device = init_distributed(resolve_device(args.device))
    finished = False
    try:
        result = _evaluate(args, argv, outputs, device, context.rank, context.world_size)
        finished = True
        return result
    finally:  # leave the group in order (a no-op in one process): at exit gloo's threads can abort it
        shutdown_distributed(synchronize=finished)


def _evaluate(
    args: argparse.Namespace, argv: Sequence[str], outputs: Outputs, device: torch.device, rank: int,
    world: int,
) -> int:
    """One evaluation (``--checkpoint``), or this process's part of it under ``torchrun``."""
    model, trained_on = load_model(args.checkpoint, device)
    dataset = args.dataset or trained_on
    if dataset is None:
        raise UsageError("the checkpoint does not say its dataset; pass --dataset mnist|cifar10")
    dataset = dataset.lower().replace("-", "")
    against = {}
    for path in args.against:
        source, source_data = load_model(path, device)
        if source_data and source_data.lower().replace("-", "") != dataset:
            raise UsageError(f"--against {path} was trained on {source_data}, not {dataset}")
        against[_source_label(path)] = source
    from nets.datasets import load_dataset

    test = load_dataset(
        dataset, "test", args.data_dir, download=args.download, verify=not args.no_verify, progress=False
    )
    n = min(args.samples, len(test.labels))
    x, y = test.tensors(0, n)
    config = EvaluationConfig(
        eps=tuple(args.eps or DEFAULT_EPS.get(dataset, [0.1])),
        preset=args.preset,
        norm=args.norm,
        samples=n,
        seed=args.seed,
        batch_size=args.batch_size,
        per_sample=not args.shared_steps,
        reference_tol=args.reference_tol,
        fixed_steps=args.fixed_steps,
        convergence_steps=tuple(args.convergence_steps),
        convergence_samples=args.convergence_samples,
        steps=args.steps,
        target_classes=args.target_classes,
        queries=args.queries,
        budget=args.budget,
    )
    shard = parse_shard(args.shard, n, args.batch_size) if args.shard else None
    if shard is not None:
        x, y = x[shard.start : shard.stop], y[shard.start : shard.stop]
    out = Path(args.out)
    if args.unit_test:
        return run_unit_test(args, argv, model, x, config, against, outputs, world)
    identity = {
        "config": config.to_dict(),
        "checkpoint": _file_digest(args.checkpoint),
        "against": sorted(_file_digest(p) for p in args.against),
        "dataset": dataset,
    }
    records = RecordStore(out / "records", force=args.force, code=code_version(EVALUATION_CODE),
                          guard=CodeGuard(reuse_stale=args.reuse_stale))
    stamp = identity if shard is None else {**identity, "shard": shard.to_json()}
    started = time.perf_counter()
    evaluation = evaluate(
        model,
        x,
        y,
        config,
        against=against,
        store=SuiteStore(records, stamp, ("suite",)),
        progress=not args.no_progress,
        rank=rank,
        world_size=world,
        first_batch=0 if shard is None else shard.first_batch,
        checks=shard is None and not args.no_checks,
    )
    if rank != 0:
        return 0
    label = Path(args.checkpoint).name
    if shard is not None:
        evaluation.seconds["wall"] = time.perf_counter() - started
        sources = {"checkpoint": str(args.checkpoint), "against": list(args.against)}
        made_by = {**identity, "code": code_version(EVALUATION_CODE)}  # shards of other code never merge
        outputs.add(write_shard(out, shard, evaluation, made_by, label, sources))
        print(f"shard {shard.label()} (samples {shard.start}-{shard.stop - 1}) in "
              f"{evaluation.seconds['wall']:.0f} s: {summary_line(evaluation)}")
        return 0
    for line in records.summary():
        print(line)
    command = shown_command("python -m experiments.evaluate", argv)
    extra = {
        "dataset": dataset,
        "checkpoint": str(args.checkpoint),
        "against": args.against,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "hardware": {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "processes": world,
            "machine": platform.machine(),
        },
        "wall_seconds": time.perf_counter() - started,
        **_skipped_checks(args),
    }
    for path in write_outputs({label: evaluation}, out, command, extra):
        outputs.add(path)
    outputs.add(_write_card(evaluation, label, args.checkpoint, dataset, out, command))
    print(summary_line(evaluation))
    return 0


def run_unit_test(args: argparse.Namespace, argv: Sequence[str], model: torch.nn.Module, x: torch.Tensor,
                  config: EvaluationConfig, against: dict, outputs: Outputs, world: int) -> int:
    """``--unit-test``: the binarization test of the configured suite, one line per eps."""
    from experiments.unit_test import summary_lines, unit_test, write_unit_test

    if world > 1:
        raise UsageError("--unit-test runs in one process; start it without torchrun")
    results = unit_test(model, x, config, against)
    command = shown_command("python -m experiments.evaluate", argv)
    extra = {"config": config.to_dict(), "checkpoint": str(args.checkpoint)}
    outputs.add(write_unit_test(results, Path(args.out), command, extra))
    for line in summary_lines(results):
        print(line)
    return 0


def merge(args: argparse.Namespace, argv: Sequence[str], outputs: Outputs) -> int:
    """``--merge DIR...``: the shards' records combined into the one-process outputs, plus the checks over the
    whole set (they need the model and the data: the checkpoint recorded in the shards, or --checkpoint)."""
    from experiments.honest import run_evaluation_checks, solver_summary, suite_attacks
    from nets.datasets import load_dataset

    shards = read_shards(args.merge)
    manifest = shards[0].manifest
    identity, sources = manifest["identity"], manifest["sources"]
    checkpoint = args.checkpoint or sources["checkpoint"]
    digest = _file_digest(checkpoint)
    if digest != identity["checkpoint"]:
        raise UsageError(f"--merge: the shards were made with another model (weights "
                         f"{identity['checkpoint']}) than {checkpoint} (weights {digest}); "
                         "pass --checkpoint with theirs")
    device = resolve_device(args.device)
    model, _ = load_model(checkpoint, device)
    against = {_source_label(path): load_model(path, device)[0] for path in sources["against"]}
    if sorted(_file_digest(p) for p in sources["against"]) != identity["against"]:
        raise UsageError("--merge: an --against model recorded in the shards has changed since they ran")
    started = time.perf_counter()
    config = shard_config(shards)
    attacks = suite_attacks(model, config, against)
    evaluation = merge_evaluation(shards, attacks, solver_summary(model, config))
    test = load_dataset(identity["dataset"], "test", args.data_dir, download=args.download,
                        verify=not args.no_verify, progress=False)
    n = config.samples
    x, y = test.tensors(0, n)
    if not torch.equal(y, evaluation.report.labels):
        raise UsageError(f"--merge: the labels in the shards differ from the first {n} of the "
                         f"{identity['dataset']} test set under --data-dir; merge with the data the shards "
                         "used")
    model.eval()
    if not args.no_checks:
        run_evaluation_checks(model, x, y, evaluation)
    command = shown_command("python -m experiments.evaluate", argv)
    out = Path(args.out)
    extra = {
        "dataset": identity["dataset"],
        "checkpoint": checkpoint,
        "against": sources["against"],
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "shards": [{"shard": s.spec.label(), "samples": [s.spec.start, s.spec.stop],
                    "seconds": s.manifest["seconds"], "folder": s.folder.name} for s in shards],
        "merge_seconds": time.perf_counter() - started,
        **_skipped_checks(args),
    }
    label = manifest["label"]
    for path in write_outputs({label: evaluation}, out, command, extra):
        outputs.add(path)
    outputs.add(_write_card(evaluation, label, checkpoint, identity["dataset"], out, command))
    print(f"merged {len(shards)} shards: {summary_line(evaluation)}")
    return 0


def _skipped_checks(args: argparse.Namespace) -> dict[str, str]:
    if not args.no_checks:
        return {}
    return {"checks": "whole-set checks skipped (--no-checks): only the report's own flags"}


def _source_label(path: str) -> str:
    """How a transfer source is named in the attack list: its run directory's name."""
    return Path(path).name if Path(path).is_dir() else Path(path).parent.name


def _write_card(evaluation: Any, label: str, checkpoint: str, dataset: str, out: Path, command: str) -> Path:
    from nets.training import MODEL_NAME, load_checkpoint

    file = Path(checkpoint) / MODEL_NAME if Path(checkpoint).is_dir() else Path(checkpoint)
    architecture = (load_checkpoint(file).get("model_spec") or {}).get("name")
    card = model_card(evaluation, label, architecture=architecture, dataset=dataset,
                      extra={"checkpoint_sha256": _file_digest(checkpoint), "command": command})
    path = atomic_write_text(out / "model_info.json", json.dumps(card, indent=2) + "\n")
    path.chmod(0o644)
    return path


def summary_line(evaluation: Any) -> str:
    report = evaluation.report
    worst = ", ".join(f"{e:g}: {report.worst_case_accuracy(e):.4f}" for e in evaluation.config.eps)
    fired = [f.name for f in report.flags if f.fired]
    return f"worst-case robust accuracy {worst}; flags fired: {', '.join(fired) if fired else 'none'}"


def _file_digest(path: str) -> str:
    """The weights' digest of a run directory or ``model.pt`` (the path itself when there is no file)."""
    from nets.training import MODEL_NAME

    file = Path(path) / MODEL_NAME if Path(path).is_dir() else Path(path)
    return file_sha256(file) if file.is_file() else str(path)


if __name__ == "__main__":
    sys.exit(run(main))
