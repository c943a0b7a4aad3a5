"""How true the evaluation's time left is: the suite bar's estimate at the start of each record against the
time the suite actually took from there, beside what a count of finished records would have said.

Run an evaluation with its progress on stderr, then read the log and the run's records::

    python -m experiments.evaluate --checkpoint RUN --data-dir DIR --eps 0.05 0.1 --preset quick \\
        --samples 100 --out OUT 2> progress.log
    python -m bench.progress_eta --log progress.log --records OUT/records

The bar's frames (``suite: NAME @ ε=EPS  P%|...| [elapsed<remaining]``) give, for each record, the
estimate shown when its name first appears with an estimate; the suite ends at the last frame. The
per-record count is ``elapsed / k x (records - k)`` after ``k`` records (the former bar's unit, without
tqdm's smoothing).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

FRAME = re.compile(r"suite: (.+?) @ ε=(\S+)\s+(\d+)%\|.*?\| \[([\d:]+)<([\d:?]+)\]")


def seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def frames(log: str) -> list[tuple[str, float, int, int | None]]:
    """(attack, eps, elapsed s, remaining s or None) per frame, in order."""
    found = []
    for line in log.replace("\r", "\n").splitlines():
        match = FRAME.search(line)
        if match:
            remaining = None if match.group(5) == "?" else seconds(match.group(5))
            found.append((match.group(1), float(match.group(2)), seconds(match.group(4)), remaining))
    return found


def table(log: str, records: Path) -> list[str]:
    shown = frames(log)
    if not shown:
        raise SystemExit("no suite progress frames in the log (was --no-progress given?)")
    order: list[tuple[str, float]] = []
    for attack, eps, _, _ in shown:
        if (attack, eps) not in order:
            order.append((attack, eps))
    stored = {}
    for path in records.glob("*.json"):
        record = json.loads(path.read_text())["record"]
        stored[(record["attack"], float(record["eps"]))] = record["seconds"]
    end = shown[-1][2]
    lines = [f"suite: {end} s wall; records' own seconds sum to {sum(stored.values()):.0f} s", "",
             "| record starts | elapsed | time left: the bar | finished-record count | actual |",
             "| --- | --- | --- | --- | --- |"]
    for k, key in enumerate(order):
        frame = next((f for f in shown if (f[0], f[1]) == key and f[3] is not None), None)
        if frame is None:
            continue
        count = "—" if k == 0 else f"{frame[2] / k * (len(order) - k):.0f} s"
        name = f"{key[0]} @ ε={key[1]:g}"
        lines.append(f"| {name} | {frame[2]} s | {frame[3]} s | {count} | {end - frame[2]} s |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", required=True, help="the evaluation's captured stderr")
    parser.add_argument("--records", required=True, help="the evaluation's OUT/records folder")
    args = parser.parse_args(argv)
    print("\n".join(table(Path(args.log).read_text(encoding="utf-8"), Path(args.records))))


if __name__ == "__main__":
    main()
