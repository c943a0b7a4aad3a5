"""Behaviour kept: tiny end-to-end runs whose numbers and trained weights must not change across a refactor.

Run it on two checkouts (each from its own root, so that each imports its own code), then compare::

    OMP_NUM_THREADS=1 python -m bench.equality run --out OUT_BEFORE     # in the old checkout
    OMP_NUM_THREADS=1 python -m bench.equality run --out OUT_AFTER      # in the new one
    python -m bench.equality compare OUT_BEFORE/summary.json OUT_AFTER/summary.json

``run`` writes tiny random MNIST and CIFAR-10 files (tests/nets/test_data.py), then runs the main job
(``experiments.robustness``, two 2-channel models, one epoch on 32 images, every attack at 2 ε on 4 images),
the training table's ResNet command (``experiments.train``) and paper artefacts at smoke scale
(``--artefacts``, default all six), and writes ``summary.json``: every CSV row without its time columns
(names ending in ``_s`` or holding ``second``) and a SHA-256 per tensor of every trained model.
``compare`` says per part EQUAL or DIFFER and exits 1 when anything differs. About 6 minutes on one core.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from pathlib import Path

ARTEFACTS = ("table1", "fig2", "fig3", "table2", "fig1", "mechanism")


def _rows(path: Path) -> list[dict[str, str]]:
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [{k: v for k, v in row.items() if not _timing(k)} for row in rows]


def _timing(name: str) -> bool:
    return name.endswith("_s") or "second" in name


def _tensors(path: Path) -> dict[str, str]:
    import torch

    state = torch.load(path, weights_only=False, map_location="cpu")
    weights = state.get("model", state)
    return {name: hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, tensor in weights.items() if torch.is_tensor(tensor)}


def run(out: Path, artefacts: list[str]) -> Path:
    import torch

    from experiments import cli, robustness
    from experiments import train as train_command
    from experiments.paper import cli as paper_cli
    from tests.nets.test_data import make_cifar, write_cifar_dir, write_mnist

    torch.set_num_threads(1)
    for name, n_train, n_test in (("data", 64, 16), ("paper_data", 8, 6)):
        write_mnist(out / name, n_train=n_train, n_test=n_test)
        write_cifar_dir(out / name, make_cifar(n_per_batch=4))
    main_job = ["--data-dir", str(out / "data"), "--no-verify", "--out", str(out / "main"),
                "--train-epochs", "1", "--train-limit", "32", "--samples", "4", "--eps", "0.1", "0.3",
                "--suite-steps", "2", "--suite-targets", "1", "--suite-queries", "3",
                "--convergence-steps", "1", "2", "--convergence-samples", "2", "--difgsm-steps", "2",
                "--boundary-samples", "2", "--boundary-queries", "12", "--diagnostic-samples", "2",
                "--reference-tol", "1e-3", "--fixed-steps", "2", "--resnet-arg", "width=2",
                "--odenet-arg", "channels=2", "--batch-size", "8", "--no-progress", "--device", "cpu",
                "--threads", "1"]
    if cli.run(robustness.main, main_job) != 0:
        raise SystemExit("the main job failed")
    summary: dict[str, object] = {
        "main_results_csv": _rows(out / "main" / "results.csv"),
        "main_models": {p.parent.name.rsplit("-", 1)[0]: _tensors(p)
                        for p in sorted((out / "main").rglob("model.pt"))},
    }
    readme_training = ["--model", "mnist_resnet_small", "--dataset", "mnist", "--epochs", "1", "--batch-size",
                       "128", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--nesterov",
                       "--weight-decay", "5e-4", "--schedule", "onecycle", "--seed", "0", "--limit-train",
                       "32", "--model-arg", "width=2", "--device", "cpu", "--no-progress", "--no-verify"]
    train_command.main([*readme_training, "--data-dir", str(out / "data"), "--out", str(out / "train")])
    summary["train_model"] = _tensors(out / "train" / "model.pt")
    for artefact in artefacts:
        argv = [artefact, "--data-dir", str(out / "paper_data"), "--scale", "smoke", "--out",
                str(out / "paper"), "--no-progress", "--threads", "1"]
        if paper_cli.main(argv) != 0:
            raise SystemExit(f"the paper artefact {artefact} failed")
        csvs = sorted((out / "paper" / artefact).glob("*.csv"))
        summary[f"paper_{artefact}"] = {p.name: _rows(p) for p in csvs}
    # paper models by their weights alone: a refactor may rename a cache entry, never change what it holds
    summary["paper_models"] = sorted(json.dumps(_tensors(p), sort_keys=True)
                                     for p in (out / "paper").rglob("model.pt"))
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return path


def compare(before: Path, after: Path) -> bool:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    equal = True
    for part in sorted(set(a) | set(b)):
        same = a.get(part) == b.get(part)
        equal &= same
        print(f"{'EQUAL ' if same else 'DIFFER'} {part}")
    print("ALL EQUAL" if equal else "SOME DIFFER")
    return equal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.equality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the tiny jobs and write OUT/summary.json")
    runner.add_argument("--out", required=True,
                        help="an empty folder for the data, the runs and summary.json")
    runner.add_argument("--artefacts", nargs="*", default=list(ARTEFACTS), choices=ARTEFACTS,
                        help="paper artefacts to run at smoke scale")
    comparer = commands.add_parser("compare", help="compare two summary.json files")
    comparer.add_argument("before")
    comparer.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(f"wrote {run(Path(args.out), args.artefacts)}")
        return 0
    return 0 if compare(Path(args.before), Path(args.after)) else 1


if __name__ == "__main__":
    sys.exit(main())
