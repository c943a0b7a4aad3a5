"""The whole test suite on every core: ``python -m tests.run [-j N] [pytest options]``.

pytest runs one test at a time and our tests use one torch thread (``conftest.py``), so on a 2-core machine
half of it idles. This splits the test files into ``N`` groups of about equal expected time (longest first,
each file to the group with the least so far: the LPT rule, within 4/3 of the best split) and runs one
``pytest`` process per group, each with its own ``--basetemp`` and no cache, in parallel. Each group's
output is printed whole when it ends, then one line for the run. The exit status is the first non-zero one
of the groups: 0 when every group passed (a group that ``-k``/``-m`` leaves without a test is not a
failure). Paths among the arguments (files, folders or pytest node ids ``FILE::test``) choose the tests;
the default is every ``tests/**/test_*.py``. ``python -m pytest -q`` runs the same tests one after another.

Expected times are the per-file seconds measured with ``--durations=0`` in a run of this suite (the
files that take longest; ``SECONDS``); any other file counts ``PER_TEST`` seconds per test function.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: measured seconds per file (the slowest files; the rest are estimated from their test count)
SECONDS = {
    "stability/test_stiff_solvers.py": 60.7,
    "experiments/test_experiments_paper.py": 59.2,
    "experiments/test_experiments_shards.py": 42.2,
    "experiments/test_experiments_robustness.py": 39.6,
    "experiments/test_experiments_paper_ddp.py": 35.5,
    "stability/test_events.py": 28.3,
    "experiments/test_experiments_evaluate.py": 22.3,
    "proofs_check/test_proofs_verify.py": 18.4,
    "stability/test_solver_methods.py": 18.3,
    "nets/test_ddp.py": 16.6,
    "stability/test_solver_nfe_suite.py": 16.4,
    "attacks/test_attacks_suite.py": 16.2,
    "stability/test_solver_autograd.py": 12.7,
    "attacks/test_attacks_binarization.py": 12.4,
    "attacks/test_attacks_apgd_square.py": 10.0,
    "test_run.py": 9.4,
    "stability/test_solver_compile.py": 9.4,
    "experiments/test_experiments_wrapped_attacks.py": 7.9,
    "stability/test_per_sample_gradients.py": 7.5,
    "experiments/test_experiments_bounds.py": 7.4,
    "stability/test_backward_euler.py": 7.0,
    "stability/test_adjoint.py": 6.2,
    "stability/test_step_control_options.py": 5.6,
    "stability/test_failure_status.py": 5.4,
    "stability/test_checkpointing.py": 5.1,
    "attacks/test_attacks_solver_indicators.py": 4.1,
    "stability/test_solver_defects.py": 4.0,
    "attacks/test_attacks_indicators.py": 3.8,
    "stability/test_per_sample.py": 3.3,
    "attacks/test_attacks_training.py": 2.8,
    "stability/test_stiff_methods.py": 2.8,
    "nets/test_nets_models.py": 2.5,
    "stability/test_solver_convergence.py": 2.3,
    "proofs_check/test_proofs_lipschitz.py": 2.2,
    "attacks/test_attacks_fab.py": 2.1,
    "proofs_check/test_proofs_networks.py": 1.9,
    "experiments/test_experiments_mechanism.py": 1.9,
    "proofs_check/test_proofs_pooling.py": 1.8,
    "experiments/test_experiments_unit_test.py": 1.3,
    "attacks/test_attacks_boundary.py": 1.3,
}
PER_TEST = 0.25
#: pytest's exit status when it collected no test
NO_TESTS = 5
_TEST_FUNCTION = re.compile(r"^\s*(?:async\s+)?def test_", re.M)


def expected_seconds(path: Path) -> float:
    """The measured time of a test file, else ``PER_TEST`` per test function in it (at least one); a node id
    (``FILE::test``) counts as its file."""
    path = Path(str(path).split("::")[0]).resolve()
    key = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else None
    if key in SECONDS:
        return SECONDS[key]
    return PER_TEST * max(1, len(_TEST_FUNCTION.findall(path.read_text(encoding="utf-8"))))


def split(
    files: list[Path], groups: int, seconds: Callable[[Path], float] = expected_seconds
) -> list[list[Path]]:
    """``files`` in ``groups`` groups of about equal expected time (``seconds``; longest first, each to the
    lightest group); empty groups are dropped."""
    if groups < 1:
        raise ValueError(f"need at least one group, got {groups}")
    loads = [0.0] * groups
    parts: list[list[Path]] = [[] for _ in range(groups)]
    for file in sorted(files, key=lambda f: (-seconds(f), f.as_posix())):
        lightest = loads.index(min(loads))
        parts[lightest].append(file)
        loads[lightest] += seconds(file)
    return [sorted(part) for part in parts if part]


def is_selection(arg: str) -> bool:
    """Whether a command-line argument chooses tests: an existing file or folder, or a node id in one."""
    return not arg.startswith("-") and Path(arg.split("::")[0]).exists()


def test_files(selections: list[str]) -> list[Path]:
    """What ``selections`` choose, each once and absolute: the ``test_*.py`` files of a folder, a file, or a
    node id (``FILE::test``) as given, its file made absolute."""
    found = set()
    for arg in selections:
        path, _, node = arg.partition("::")
        base = Path(path).resolve()
        if node:
            found.add(Path(f"{base}::{node}"))
        else:
            found |= {f.resolve() for f in ([base] if base.is_file() else base.rglob("test_*.py"))}
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.run", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="pytest processes (default: 2, or 1 on a 1-core machine)")
    args, pytest_args = parser.parse_known_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    chosen = [arg for arg in pytest_args if is_selection(arg)]
    pytest_args = [arg for arg in pytest_args if arg not in chosen]
    files = test_files(chosen or [str(TESTS)])
    if not files:
        parser.error(f"no test_*.py files in {', '.join(chosen)}")
    groups = split(files, args.jobs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tests-run-") as scratch:
        running = []
        for k, group in enumerate(groups):
            log = open(Path(scratch) / f"group-{k}.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                       f"--basetemp={scratch}/tmp-{k}", *pytest_args, *(str(f) for f in group)]
            running.append((k, group, log, subprocess.Popen(command, cwd=ROOT, stdout=log,
                                                            stderr=subprocess.STDOUT)))
        codes = []
        for k, group, log, process in running:
            codes.append(process.wait())
            log.seek(0)
            print(f"== group {k + 1}/{len(groups)}: {len(group)} files, exit status {codes[-1]}", flush=True)
            sys.stdout.write(log.read())
            log.close()
    if all(code == NO_TESTS for code in codes):
        failed = codes[:1]
    else:  # a group whose files the selection (-k, -m) empties has nothing to run: not a failure
        failed = [code for code in codes if code not in (0, NO_TESTS)]
    print(f"== {len(groups)} pytest processes in {time.perf_counter() - started:.0f} s: "
          + ("all passed" if not failed else f"{len(failed)} failed"), flush=True)
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
