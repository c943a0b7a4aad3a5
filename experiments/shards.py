"""Exactly-once sharding of an evaluation: ``evaluate --shard K/N`` runs one contiguous range of the selected
samples and writes its per-example records; ``evaluate --merge DIR...`` checks that the shards cover every
sample exactly once, all made with one configuration and one model, and combines them.

Shard ``K`` of ``N`` (``K = 0 .. N-1``) takes the global batches ``[K·B // N, (K+1)·B // N)`` of the ``B``
batches of ``batch_size`` samples, i.e. samples ``[first·batch_size, min(stop·batch_size, n))``. Shard
boundaries fall on batch boundaries and every random stream is seeded from the *global* batch index
(:func:`attacks.suite.batch_seed`), so each shard computes exactly the rows the one-process run computes,
bit for bit, and the merged ``per_sample.csv`` equals the one-process file byte for byte. Unlike
``DistributedSampler`` (which pads the last shard with repeated samples), no sample is evaluated twice.

A shard's folder holds ``shard.json`` (written atomically once the shard is complete: its range, the
identity of the evaluation — configuration, weights' digest, transfer sources, dataset — and the per-sample
outcomes in global indices) and ``records/`` (its resumable (attack, eps) records).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attacks import AttackRecord, SuiteReport
from attacks.checks import report_flags
from attacks.suite import STAT_KEYS
from experiments.cli import UsageError
from experiments.honest import Evaluation, EvaluationConfig, pass_totals
from nets.training import atomic_torch_save
from storage.atomic import atomic_write_text

__all__ = ["MANIFEST", "Shard", "ShardSpec", "merge_evaluation", "parse_shard", "read_shards", "shard_config",
           "write_shard"]

MANIFEST = "shard.json"
ADVERSARIALS = "adversarials.pt"
FORMAT = "natural-robustness shard v1"
PASS_KEYS = ("forward_passes", "backward_passes")
MASKS = ("attacked", "fooled", "nonfinite")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0-based) and the samples it covers, ``[start, stop)``."""

    index: int
    count: int
    samples: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: need 0 <= K < N (K counts from 0)")
        batches = self.batches
        if self.count > batches:
            raise UsageError(
                f"--shard {self.index}/{self.count}: {self.samples} samples make only {batches} batch(es) of "
                f"{self.batch_size}, too few for {self.count} shards (shards hold whole batches); "
                f"use N <= {batches} or --batch-size <= {max(1, self.samples // self.count)}"
            )

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch_size)

    @property
    def first_batch(self) -> int:
        return self.index * self.batches // self.count

    @property
    def start(self) -> int:
        return self.first_batch * self.batch_size

    @property
    def stop(self) -> int:
        return min((self.index + 1) * self.batches // self.count * self.batch_size, self.samples)

    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count, "samples": self.samples,
                "batch_size": self.batch_size, "first_batch": self.first_batch, "start": self.start,
                "stop": self.stop}


def parse_shard(text: str, samples: int, batch_size: int) -> ShardSpec:
    """``"K/N"`` -> :class:`ShardSpec` over ``samples`` samples in batches of ``batch_size``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UsageError(f"--shard {text!r}: expected K/N with integers 0 <= K < N, e.g. --shard 0/4")
    return ShardSpec(int(match[1]), int(match[2]), samples, batch_size)


def _shifted(indices: Sequence[int], offset: int) -> list[int]:
    return [int(i) + offset for i in indices]


def write_shard(
    folder: Path,
    spec: ShardSpec,
    evaluation: Evaluation,
    identity: Mapping[str, Any],
    label: str,
    sources: Mapping[str, Any],
) -> Path:
    """Write ``folder/shard.json``: the shard's range, ``identity`` and per-sample outcomes (global indices).
    ``sources``: where the model and transfer sources came from (what a merge loads to run the checks)."""
    report, offset = evaluation.report, spec.start
    payload = {
        "format": FORMAT,
        "shard": spec.to_json(),
        "identity": dict(identity),
        "label": label,
        "sources": dict(sources),
        "labels": report.labels.tolist(),
        "clean_correct": _shifted(report.clean_correct.nonzero().squeeze(1).tolist(), offset),
        "clean_nonfinite": report.clean_nonfinite,
        "attack_names": list(report.attack_names),
        "skipped": dict(report.skipped),
        "records": [
            {**stored, **{name: _shifted(stored[name], offset) for name in MASKS}}
            for stored in (record.to_json() for record in report.records)
        ],
        "protocol": {
            name: {repr(e): _shifted(mask.nonzero().squeeze(1).tolist(), offset)
                   for e, mask in values.items()}
            for name, values in evaluation.protocol_robust.items()
        },
        "seconds": evaluation.seconds,
    }
    # the first adversarials of each (attack, eps), what the whole-set batch-dependence check reads
    keep = evaluation.config.dependence_samples
    found = {f"{attack}@{eps!r}": (index[:keep] + offset, x_adv[:keep].clone())
             for (attack, eps), (index, x_adv) in report.adversarials.items()}
    atomic_torch_save(found, folder / ADVERSARIALS)
    return atomic_write_text(folder / MANIFEST, json.dumps(payload, indent=1) + "\n")


@dataclass(frozen=True)
class Shard:
    """One finished shard as read back: its folder, range and manifest."""

    folder: Path
    spec: ShardSpec
    manifest: dict[str, Any]


def _read(folder: Path) -> Shard:
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"--merge {folder}: no {MANIFEST} (not a finished shard; run evaluate --shard K/N "
                         f"--out {folder} to finish it)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"--merge {folder}: unreadable {MANIFEST} ({error}); rerun that shard") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"--merge {folder}: {MANIFEST} is not a shard manifest of this version; rerun that "
                         "shard")
    s = manifest["shard"]
    spec = ShardSpec(s["index"], s["count"], s["samples"], s["batch_size"])
    size = len(manifest["labels"])
    if (spec.start, spec.stop) != (s["start"], s["stop"]) or size != spec.stop - spec.start:
        raise UsageError(f"--merge {folder}: its range [{s['start']}, {s['stop']}) is not shard "
                         f"{spec.label()}'s; rerun that shard")
    return Shard(folder, spec, manifest)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {json.dumps(a)} vs {json.dumps(b)}"]


def read_shards(folders: Sequence[str | Path]) -> list[Shard]:
    """The shards in ``folders``, checked to be one evaluation covered exactly once, sorted by index.

    Refuses (:class:`UsageError`, naming the folders): a shard made with another model (weights' digest) or
    another configuration (anything else in the identity, or another shard count), the same shard twice, and
    missing shards (naming their sample ranges).
    """
    shards = [_read(Path(folder)) for folder in folders]
    if not shards:
        raise UsageError("--merge needs at least one shard folder")
    first = shards[0]
    for shard in shards[1:]:
        a, b = first.manifest["identity"], shard.manifest["identity"]
        if a.get("checkpoint") != b.get("checkpoint"):
            raise UsageError(f"--merge: {shard.folder} was made with another model than {first.folder} "
                             f"(weights {b.get('checkpoint')} vs {a.get('checkpoint')})")
        if a.get("code") != b.get("code"):
            code = "; ".join(_differences(a.get("code") or {}, b.get("code") or {})) or "unstamped"
            raise UsageError(f"--merge: {shard.folder} was made by other code than {first.folder} ({code}); "
                             "rerun the shards with one version")
        changed = _differences(a, b)
        if shard.spec.count != first.spec.count:
            changed.append(f"shard count: {first.spec.count} vs {shard.spec.count}")
        if changed:
            raise UsageError(f"--merge: {shard.folder} was made with another configuration than "
                             f"{first.folder} ({'; '.join(changed)})")
    seen: dict[int, Shard] = {}
    for shard in shards:
        if shard.spec.index in seen:
            other = seen[shard.spec.index].folder
            raise UsageError(f"--merge: shard {shard.spec.label()} given twice ({other} and {shard.folder}); "
                             "pass each shard once")
        seen[shard.spec.index] = shard
    missing = [ShardSpec(k, first.spec.count, first.spec.samples, first.spec.batch_size)
               for k in range(first.spec.count) if k not in seen]
    if missing:
        ranges = ", ".join(f"{m.label()} (samples {m.start}-{m.stop - 1})" for m in missing)
        raise UsageError(f"--merge: missing shard(s) {ranges}; run them with evaluate --shard K/N and merge "
                         "again")
    ordered = [seen[k] for k in sorted(seen)]
    keys = [(r["attack"], r["eps"]) for r in first.manifest["records"]]
    for shard in ordered:
        if [(r["attack"], r["eps"]) for r in shard.manifest["records"]] != keys:
            raise UsageError(f"--merge: {shard.folder} ran other (attack, eps) records than {first.folder}; "
                             "rerun it with the same code")
    return ordered


def _mask(indices: Sequence[int], n: int) -> Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out[list(indices)] = True
    return out


def _merged_stats(parts: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Per-sample means weighted by the samples each shard attacked; pass counts summed (left out if a shard
    lacks one)."""
    stats: dict[str, float] = {}
    for key in STAT_KEYS:
        present = [(count, s[key]) for count, s in parts if key in s and count > 0]
        if present:
            stats[key] = sum(count * value for count, value in present) / sum(count for count, _ in present)
    for key in PASS_KEYS:
        if all(key in s for _, s in parts):
            stats[key] = int(sum(s[key] for _, s in parts))
    return stats


def _merged_adversarials(
    shards: Sequence[Shard], keep: int
) -> dict[tuple[str, float], tuple[Tensor, Tensor]]:
    """Per (attack, eps), in record order, the first ``keep`` adversarials over the shards in sample order (as
    the one-process run holds them). A shard whose records were resumed rather than computed holds none for
    them, as a resumed one-process run does."""
    found = [torch.load(s.folder / ADVERSARIALS, weights_only=True) if (s.folder / ADVERSARIALS).is_file()
             else {} for s in shards]
    out = {}
    for entry in shards[0].manifest["records"]:
        key = f"{entry['attack']}@{float(entry['eps'])!r}"
        parts = [f[key] for f in found if key in f]
        if parts:
            out[(entry["attack"], float(entry["eps"]))] = (torch.cat([p[0] for p in parts])[:keep],
                                                           torch.cat([p[1] for p in parts])[:keep])
    return out


def shard_config(shards: Sequence[Shard]) -> EvaluationConfig:
    """The evaluation configuration the shards were made with."""
    stored = shards[0].manifest["identity"]["config"]
    return EvaluationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})


def merge_evaluation(
    shards: Sequence[Shard], attacks: Sequence[Any], solver: Mapping[str, Any]
) -> Evaluation:
    """The one-process :class:`Evaluation` from shards checked by :func:`read_shards`, with the flags that
    need only the report (the whole-set checks need the model:
    :func:`experiments.honest.run_evaluation_checks` replaces them)."""
    first = shards[0].manifest
    config = shard_config(shards)
    n = shards[0].spec.samples
    labels = torch.tensor([label for shard in shards for label in shard.manifest["labels"]], dtype=torch.long)
    clean_correct = _mask([i for s in shards for i in s.manifest["clean_correct"]], n)
    names = first["attack_names"]
    records = []
    for position, entry in enumerate(first["records"]):
        parts = [shard.manifest["records"][position] for shard in shards]
        merged = {
            **entry,
            **{name: [i for part in parts for i in part[name]] for name in MASKS},
            "seconds": sum(part["seconds"] for part in parts),
            "stats": _merged_stats([(len(part["attacked"]), part["stats"]) for part in parts]),
        }
        records.append(AttackRecord.from_json(merged, n))
    report = SuiteReport(list(config.eps), config.norm, labels, clean_correct, records, list(names),
                         clean_nonfinite=sum(s.manifest["clean_nonfinite"] for s in shards),
                         skipped=dict(first["skipped"]))
    report.adversarials = _merged_adversarials(shards, config.dependence_samples)
    report.flags = report_flags(report)  # the whole-set checks need the model: run_evaluation_checks
    robust = {
        name: {float(e): _mask([i for s in shards for i in s.manifest["protocol"][name][e]], n)
               for e in values}
        for name, values in first["protocol"].items()
    }
    protocol = {name: {e: float(mask.float().mean()) for e, mask in values.items()}
                for name, values in robust.items()}
    seconds: dict[str, float] = {}
    for shard in shards:
        for key, value in shard.manifest["seconds"].items():
            seconds[key] = seconds.get(key, 0.0) + value
    return Evaluation(config, report, protocol, seconds, list(attacks), dict(solver), robust,
                      pass_totals(report))
