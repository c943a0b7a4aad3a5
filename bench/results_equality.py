"""Behaviour kept: the main job's and two paper artefacts' results.csv from two versions of the code.

    python -m bench.results_equality --before REV [--after REV] --data-dir $NR_DATA_DIR --out DIR

Each version (a git revision, extracted with ``git archive``; without ``--after`` the working tree) runs in
its own folder, in a fresh process per command: the main job (``experiments.robustness``) on the first 24
MNIST test images at eps 0.02, 0.05 and 0.1 with tiny attack budgets, once in one batch (batch size 250)
and once in batches of 10, and ``experiments.paper table1`` and ``fig2`` at ``--scale smoke``. Both versions
share one model cache (models are keyed by their training, not by the evaluation code). Then every row of
each results.csv is compared, every column but the timings (``seconds``, pass counts); the differences are
printed per row and the exit status is 1 when there are any.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ["--train-epochs", "1", "--train-limit", "6000", "--samples", "24", "--eps", "0.02", "0.05", "0.1",
            "--suite-steps", "3", "--suite-targets", "1", "--suite-queries", "20", "--convergence-steps", "1",
            "2", "--convergence-samples", "4", "--difgsm-steps", "3", "--boundary-samples", "12",
            "--boundary-queries", "40", "--diagnostic-samples", "4", "--reference-tol", "1e-3",
            "--fixed-steps", "4", "--device", "cpu", "--no-progress"]
RESULTS = ["main_b250/results.csv", "main_b10/results.csv", "paper/table1/results.csv",
           "paper/fig2/results.csv"]
TIMINGS = ("seconds", "forward_passes", "backward_passes")


def extract(revision: str | None, folder: Path) -> Path:
    """The code of ``revision`` (None: the working tree's tracked and untracked files) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if revision is None:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name in files:
                if (ROOT / name).is_file():
                    archive.add(ROOT / name, arcname=name)
        buffer.seek(0)
    else:
        buffer = io.BytesIO(subprocess.run(["git", "archive", revision], cwd=ROOT, check=True,
                                           capture_output=True).stdout)
    with tarfile.open(fileobj=buffer) as archive:
        archive.extractall(folder, filter="data")
    return folder


def run_version(code: Path, out: Path, data_dir: str, models: Path) -> None:
    """The four commands of the module docstring, run from ``code`` (so it imports that version)."""
    data = ["--data-dir", data_dir]
    for batch in (250, 10):
        _run(code, ["experiments.robustness", *data, "--models", str(models), *MAIN_JOB, "--batch-size",
                    str(batch), "--out", str(out / f"main_b{batch}")])
    for artefact in ("table1", "fig2"):
        _run(code, ["experiments.paper", artefact, "--scale", "smoke", *data, "--out", str(out / "paper"),
                    "--no-progress", "--threads", "1"])


def _run(code: Path, arguments: list[str]) -> None:
    print("$ python -m " + " ".join(arguments), flush=True)
    subprocess.run([sys.executable, "-m", *arguments], cwd=code, check=True)


def compare(before: Path, after: Path) -> int:
    """Print the differing cells of every results.csv; return how many rows differ."""
    different = 0
    for name in RESULTS:
        rows = [list(csv.DictReader(open(side / name, newline=""))) for side in (before, after)]
        columns = [[c for c in (r[0] if r else {}) if c not in TIMINGS] for r in rows]
        lines = [] if columns[0] == columns[1] else [f"columns {columns[0]} vs {columns[1]}"]
        if len(rows[0]) != len(rows[1]):
            lines.append(f"{len(rows[0])} rows vs {len(rows[1])}")
        for old, new in zip(*rows):
            cells = {c: (old.get(c), new.get(c)) for c in columns[0] if old.get(c) != new.get(c)}
            if cells:
                lines.append(f"{old.get('model')} / {old.get('attack')} / eps {old.get('eps')}: {cells}")
        print(f"{name}: {len(rows[0])} rows, {len(columns[0])} columns: "
              + ("equal" if not lines else f"{len(lines)} differences"))
        for line in lines:
            print("    " + line)
        different += len(lines)
    return different


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the reference")
    parser.add_argument("--after", default=None, help="git revision to compare (default: the working tree)")
    parser.add_argument("--data-dir", required=True, help="MNIST files")
    parser.add_argument("--out", required=True, help="folder for both versions' code, runs and models")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    for label, revision in (("before", args.before), ("after", args.after)):
        code = extract(revision, out / f"code_{label}")
        run_version(code, out / label, args.data_dir, out / "models")
    return 1 if compare(out / "before", out / "after") else 0


if __name__ == "__main__":
    sys.exit(main())
