"""The honest evaluations of a paper artefact as ``N`` independent shard jobs, then a merge
(:mod:`experiments.shards` underneath, as ``experiments.evaluate --shard K/N`` / ``--merge``).

``python -m experiments.paper ARTEFACT ... --shard K/N`` evaluates, for every honest evaluation the artefact
makes, shard ``K`` of its attacked images (whole batches; seeds from global batch indices, so its rows equal
the one-process run's) into ``OUT/evaluations/<key>/shards/K-of-N/`` (``shard.json``, resumable records). The
models must be trained already (``--train-only``); the artefact's other measurements and its report are left
to the merge. The same command without ``--shard`` then merges each evaluation's shards (refusing missing,
foreign or doubled ones), runs the checks that need the whole set, caches the summary and writes the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from experiments.cli import UsageError

if TYPE_CHECKING:
    from experiments.honest import Evaluation, EvaluationConfig
    from experiments.models import TrainedModel
    from experiments.paper.runtime import Context

#: an evaluation folder's subfolder of shards, one ``K-of-N`` folder each
SHARDS = "shards"


@dataclass(frozen=True)
class ShardJob:
    """Shard ``index`` of ``count`` (``--shard K/N``, K from 0)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> ShardJob:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None or not 0 <= int(match[1]) < int(match[2]):
            raise UsageError(f"--shard {text!r}: expected K/N with integers 0 <= K < N, e.g. --shard 0/4")
        return cls(int(match[1]), int(match[2]))

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder_name(self) -> str:
        return f"{self.index}-of-{self.count}"


def _code() -> dict[str, str]:
    from experiments.paper.runtime import PAPER_EVALUATION_CODE
    from storage.code_version import code_version

    return code_version(PAPER_EVALUATION_CODE)


def shard_evaluation(
    ctx: Context,
    entry: TrainedModel,
    against: Mapping[str, nn.Module],
    *,
    folder: Path,
    identity: Mapping[str, Any],
    config: EvaluationConfig,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Evaluation:
    """Shard ``ctx.shard`` of the honest evaluation cached at ``folder``: evaluated on its images, written as
    ``folder/shards/K-of-N/shard.json``; returns the shard's own :class:`Evaluation` (its images only)."""
    from experiments.honest import SuiteStore, evaluate
    from experiments.shards import parse_shard, write_shard
    from storage.records import RecordStore

    spec = parse_shard(ctx.shard.label, int(x.shape[0]), config.batch_size)
    out = folder / SHARDS / ctx.shard.folder_name
    stamp = {**identity, "shard": spec.to_json()}
    records = RecordStore(out / "records", code=_code(), guard=ctx.guard)
    evaluation = evaluate(
        entry.model,
        x[spec.start : spec.stop],
        y[spec.start : spec.stop],
        config,
        against=against,
        store=SuiteStore(records, stamp, ("suite",)),
        progress=ctx.progress,
        first_batch=spec.first_batch,
        checks=False,
        label=f"{entry.label} shard {spec.label()}",
    )
    made_by = {**identity, "checkpoint": entry.spec.key(), "code": _code()}
    # a finished shard stays as written: a rerun (another artefact asking for the same evaluation) resumes
    # every record, so it finds no adversarials for the whole-set checks
    if not _finished(out, made_by):
        write_shard(out, spec, evaluation, made_by, entry.label, {"model": str(entry.folder)})
    return evaluation


def _finished(folder: Path, made_by: Mapping[str, Any]) -> bool:
    """True when ``folder`` holds this shard's manifest, made by this code for this evaluation (e.g. an
    earlier artefact of the same command asked for the same evaluation)."""
    from experiments.shards import MANIFEST

    try:
        stored = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and stored.get("identity") == json.loads(json.dumps(made_by, default=str))


def merged_evaluation(
    model: nn.Module,
    against: Mapping[str, nn.Module],
    folder: Path,
    config: EvaluationConfig,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Evaluation:
    """The one-process :class:`Evaluation` from the shards under ``folder/shards`` (every one present, made
    by this code for this evaluation), with the checks that need the whole set run on ``(x, y)``."""
    from experiments.honest import run_evaluation_checks, solver_summary, suite_attacks
    from experiments.shards import merge_evaluation, read_shards

    folders = sorted(p for p in (folder / SHARDS).iterdir() if p.is_dir())
    try:
        shards = read_shards(folders)
    except UsageError as error:
        raise UsageError(f"{folder / SHARDS}: {str(error).removeprefix('--merge: ')}") from None
    if shards[0].manifest["identity"]["code"] != _code():
        raise UsageError(f"{folder / SHARDS}: the shards were made by other code than this run's; rerun them "
                         "(or delete that folder to evaluate in one job)")
    evaluation = merge_evaluation(shards, suite_attacks(model, config, dict(against)),
                                  solver_summary(model, config))
    if not torch.equal(evaluation.report.labels, y.cpu()):
        raise UsageError(f"{folder / SHARDS}: the shards' labels differ from this run's images")
    model.eval()
    run_evaluation_checks(model, x, y, evaluation)
    return evaluation
