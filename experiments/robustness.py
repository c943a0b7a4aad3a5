"""The main job: natural robustness of a ResNet (explicit Euler steps, h = 1) against an ODE-Net (adaptive
Dormand–Prince), measured honestly.

    python -m experiments.robustness --data-dir DIR --out runs/robustness

For each model: train it first if its run directory holds no ``model.pt`` (resumable, via
``experiments.train``), then attack the first ``--samples`` test images with FGSM, PGD and DI²-FGSM at every
``--eps`` (L∞) and with the decision-based Boundary Attack (thresholded at the same L∞ budgets, median L2
reported). For models with ODE blocks, gradient-masking diagnostics follow: agreement of input gradients with
a tight-tolerance solve, and PGD crafted through surrogate solvers (tight dopri5, fixed-step RK4) and
evaluated on the deployed model. Each model's record is written atomically when complete and reused on the
next run (``--force`` redoes it); ``results.csv``/``results.json`` hold every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attacks import DI2FGSM, FGSM, PGD, BoundaryAttack, ResultTable, gradient_masking_warnings, sweep
from attacks.table import atomic_write_text
from experiments import train as train_command
from experiments.masking import SurrogateSolverAttack, gradient_agreement, ode_blocks
from nets.datasets import load_dataset
from nets.training import load_trained_model

DEFAULT_EPS = {"mnist": [0.05, 0.1, 0.2, 0.3], "cifar10": [1 / 255, 2 / 255, 4 / 255, 8 / 255]}
DEFAULT_MODELS = {
    "mnist": {"resnet": "mnist_resnet_small", "odenet": "odenet_mnist_small"},
    "cifar10": {"resnet": "resnet20", "odenet": "odenet_cifar_small"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.robustness",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULT_EPS), default="mnist")
    parser.add_argument("--data-dir", default=None, help="data directory (default: $NR_DATA_DIR)")
    parser.add_argument("--out", default="runs/robustness")
    parser.add_argument("--runs", default="runs", help="where the trained models' run directories live")
    parser.add_argument("--resnet-model", default=None, help="registry name (default depends on --dataset)")
    parser.add_argument("--odenet-model", default=None, help="registry name (default depends on --dataset)")
    parser.add_argument("--resnet-run", default=None, help="run directory (default: RUNS/<registry name>)")
    parser.add_argument("--odenet-run", default=None, help="run directory (default: RUNS/<registry name>)")
    parser.add_argument("--resnet-arg", type=train_command._model_arg, action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--odenet-arg", type=train_command._model_arg, action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--train-epochs", type=int, default=2, help="epochs when a model must be trained")
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--eps", type=float, nargs="+", default=None, help="L-inf budgets")
    parser.add_argument("--samples", type=int, default=200, help="test images attacked")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--difgsm-steps", type=int, default=10)
    parser.add_argument("--boundary-samples", type=int, default=50)
    parser.add_argument("--boundary-queries", type=int, default=1000)
    parser.add_argument("--diagnostic-samples", type=int, default=100, help="images for gradient agreement")
    parser.add_argument("--reference-tol", type=float, default=1e-6,
                        help="rtol = atol of the accurate dopri5 solve (gradient reference, surrogate)")
    parser.add_argument("--fixed-steps", type=int, default=20, help="steps of the fixed-step RK4 surrogate")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force", action="store_true", help="recompute records that already exist")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def ensure_trained(label: str, name: str, run_dir: Path, args: argparse.Namespace,
                   extra: Sequence[tuple[str, Any]]) -> torch.nn.Module:
    """Load ``run_dir/model.pt``; train the model there first (resumable) when it is missing."""
    if not (run_dir / "model.pt").is_file():
        print(f"[{label}] no trained model in {run_dir}: training {name} for {args.train_epochs} epochs")
        argv = ["--model", name, "--dataset", args.dataset, "--epochs", str(args.train_epochs),
                "--optimizer", "adam", "--lr", "1e-3", "--schedule", "onecycle", "--out", str(run_dir),
                "--seed", str(args.seed), "--resume", "--device", args.device]
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        if args.train_limit:
            argv += ["--limit-train", str(args.train_limit)]
        if args.no_progress:
            argv += ["--no-progress"]
        for key, value in extra:
            argv += ["--model-arg", f"{key}={value!r}"]
        train_command.main(argv)
    return load_trained_model(run_dir, device=_device(args.device))


def evaluate_model(model: torch.nn.Module, label: str, x: torch.Tensor, y: torch.Tensor,
                   args: argparse.Namespace, eps: list[float]) -> dict[str, Any]:
    """All attacks and (for ODE models) the masking diagnostics for one model."""
    progress = not args.no_progress
    started = time.perf_counter()
    white_box = {
        "FGSM": lambda e: FGSM(e, seed=args.seed),
        "PGD": lambda e: PGD(e, steps=args.pgd_steps, seed=args.seed),
        "DI2-FGSM": lambda e: DI2FGSM(e, steps=args.difgsm_steps, seed=args.seed),
    }
    table = sweep(model, white_box, eps, (x, y), batch_size=args.batch_size, progress=progress)
    nb = min(args.boundary_samples, x.shape[0])
    boundary = sweep(model, {"Boundary": lambda e: BoundaryAttack(max_queries=args.boundary_queries,
                                                                  seed=args.seed)},
                     eps, (x[:nb], y[:nb]), batch_size=args.batch_size, progress=progress)
    rows = table.rows + boundary.rows
    record: dict[str, Any] = {"model": label, "rows": rows}
    blocks = ode_blocks(model)
    if blocks:
        t1, method = blocks[0].t1, blocks[0].method
        tol, steps = args.reference_tol, args.fixed_steps
        tight = {"method": "dopri5", "rtol": tol, "atol": tol, "step_size": None}
        fixed = {"method": "rk4", "step_size": t1 / steps}
        nd = min(args.diagnostic_samples, x.shape[0])
        adjoint = {"solver_options": {**blocks[0].solver_options, "gradient": "adjoint"}}
        record["gradient_agreement"] = gradient_agreement(
            model, x[:nd], y[:nd], tight, {f"rk4_{steps}_steps": fixed, "deployed_adjoint": adjoint})
        surrogates = {
            f"PGD via dopri5 tol {tol:g}": lambda e: SurrogateSolverAttack(
                PGD(e, steps=args.pgd_steps, seed=args.seed), **tight),
            f"PGD via rk4 {steps} steps": lambda e: SurrogateSolverAttack(
                PGD(e, steps=args.pgd_steps, seed=args.seed), **fixed),
        }
        transfer = sweep(model, surrogates, eps, (x, y), batch_size=args.batch_size, progress=progress)
        record["rows"] += [row for row in transfer.rows if row["attack"] != "worst-case"]
        record["deployed_solver"] = {"method": method, "rtol": blocks[0].rtol, "atol": blocks[0].atol,
                                     "step_size": blocks[0].step_size, "t1": t1}
    warnings = gradient_masking_warnings(ResultTable(record["rows"]))
    warnings += surrogate_warnings(record["rows"])
    record["warnings"] = warnings
    record["time_s"] = time.perf_counter() - started
    return record


def surrogate_warnings(rows: list[dict[str, Any]], tolerance: float = 0.01) -> list[str]:
    """A surrogate-solver transfer attack beating the direct PGD means the deployed solver masks gradients."""
    direct = {row["eps"]: row["robust_accuracy"] for row in rows if row["attack"] == "PGD"}
    found = []
    for row in rows:
        if str(row["attack"]).startswith("PGD via") and row["eps"] in direct:
            if row["robust_accuracy"] < direct[row["eps"]] - tolerance:
                found.append(f"eps={row['eps']:g}: {row['attack']} ({row['robust_accuracy']:.3f}) beats "
                             f"direct PGD ({direct[row['eps']]:.3f}): the deployed solver masks gradients")
    return found


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    eps = args.eps or DEFAULT_EPS[args.dataset]
    out = Path(args.out)
    names = DEFAULT_MODELS[args.dataset]
    models = {"resnet": (args.resnet_model or names["resnet"], args.resnet_arg, args.resnet_run),
              "odenet": (args.odenet_model or names["odenet"], args.odenet_arg, args.odenet_run)}
    test = load_dataset(args.dataset, "test", args.data_dir, progress=not args.no_progress)
    n = min(args.samples, len(test.labels))
    x = test.images[:n].float().div(255).to(_device(args.device))
    y = test.labels[:n].to(_device(args.device))
    records = {}
    for label, (name, extra, run_dir) in models.items():
        path = out / f"{label}.json"
        if path.is_file() and not args.force:
            records[label] = json.loads(path.read_text())
            print(f"[{label}] reusing {path} (use --force to recompute)")
            continue
        model = ensure_trained(label, name, Path(run_dir or Path(args.runs) / name), args, extra)
        record = evaluate_model(model, label, x, y, args, eps)
        record.update({"registry_name": name, "samples": n, "eps": eps, "dataset": args.dataset})
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        records[label] = record
    rows = [{"model": label, **row} for label, record in records.items() for row in record["rows"]]
    table = ResultTable(rows)
    table.to_csv(out / "results.csv")
    atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    print_summary(records, eps)
    return records


def print_summary(records: dict[str, Any], eps: list[float]) -> None:
    attacks = []
    for record in records.values():
        for row in record["rows"]:
            if row["attack"] not in attacks:
                attacks.append(row["attack"])
    print("\nrobust accuracy (L-inf eps; Boundary thresholded at the same eps)")
    header = ["model", "attack", "clean"] + [f"{e:g}" for e in eps]
    lines = [header]
    for label, record in records.items():
        for attack in attacks:
            by_eps = {row["eps"]: row for row in record["rows"] if row["attack"] == attack}
            if not by_eps:
                continue
            clean = next(iter(by_eps.values()))["clean_accuracy"]
            lines.append([label, attack, f"{clean:.3f}"] + [
                f"{by_eps[e]['robust_accuracy']:.3f}" if e in by_eps else "-" for e in eps])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
    for label, record in records.items():
        if "gradient_agreement" in record:
            print(f"\n[{label}] input-gradient agreement with an accurate dopri5 solve:")
            for name, stats in record["gradient_agreement"].items():
                print(f"  {name:14s} median cos {stats['median_cosine']:.4f}  "
                      f"min cos {stats['min_cosine']:.4f}  "
                      f"median rel. error {stats['median_relative_error']:.3g}")
        for warning in record["warnings"]:
            print(f"[{label}] WARNING {warning}")
        if not record["warnings"]:
            print(f"[{label}] no gradient-masking symptom found")


if __name__ == "__main__":
    main(sys.argv[1:])
