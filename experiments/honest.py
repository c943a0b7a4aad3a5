"""The honest robustness number for one model: the suite, the solver-aware attacks, the checks, the paper's
protocol number beside it, resumable per (attack, eps) record, and the report (markdown, CSV, JSON, PNG).

Used by ``python -m experiments.evaluate`` and by the main job. For a model with ODE blocks:

* the deployed model is evaluated with **per-sample step control** (``per_sample=True``), so a sample's
  prediction never depends on the other images in its batch; gradients then come from backprop through the
  per-sample solve (the deployed tolerance);
* preset ``"ode"`` adds the solver-aware attacks to ``"standard"`` (or ``"ode-quick"`` to ``"quick"``), all
  evaluated on the deployed model: APGD-CE crafted through a fixed-step RK4 surrogate and through a
  tight-tolerance dopri5 solve of the same weights (BPDA-style transfer), APGD-CE through adjoint gradients
  at the deployed tolerance, and transfer from each ``--against`` model (e.g. an independently trained
  ResNet).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attacks import APGD, AttackRecord, SuiteAttack, SuiteReport, preset, run_checks, run_suite, transfer
from attacks.base import model_device
from attacks.budget import budget_preset
from attacks.checks import batch_dependence, pgd_robust, report_flags
from attacks.passes import PassCounter
from attacks.suite import PRESETS, batch_seed
from attacks.table import ResultTable
from experiments.figures import pyplot, save_figure
from experiments.masking import SurrogateSolverAttack, ode_blocks, solver_override
from experiments.progress import WorkBar
from storage.atomic import atomic_write_text
from storage.records import RecordStore

__all__ = [
    "EvaluationConfig",
    "SuiteStore",
    "evaluate",
    "solver_aware_attacks",
    "PRESET_NAMES",
    "write_outputs",
    "markdown_report",
]

PRESET_NAMES = ("standard", "quick", "ode", "ode-quick")


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything that decides the numbers (and so the records' identity)."""

    eps: tuple[float, ...]
    preset: str = "quick"
    norm: str = "linf"
    samples: int = 200
    seed: int = 0
    batch_size: int = 250
    per_sample: bool = True
    reference_tol: float = 1e-6
    fixed_steps: int = 20
    protocol_steps: int = 40
    protocol_alpha: float = 0.01
    convergence_steps: tuple[int, ...] = (20, 100, 1000)
    convergence_samples: int = 20
    dependence_samples: int = 50
    steps: int | None = None
    target_classes: int | None = None
    queries: int | None = None
    budget: bool = False
    """Budgeted mode (:mod:`attacks.budget`): MALT-ordered targets and a reduced Square for CPU runs."""

    def __post_init__(self) -> None:
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {PRESET_NAMES}")
        if not self.eps or any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise ValueError(f"eps must be finite values >= 0, got {self.eps}")
        if self.samples < 1 or self.batch_size < 1:
            raise ValueError("samples and batch size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        # ``budget`` is left out when off, so records stored before it existed keep their identity
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
                if not (k == "budget" and not v)}


class SuiteStore:
    """A model's (attack, eps) suite records in the project's :class:`storage.records.RecordStore`, under
    keys ``prefix + (attack, eps)``, each stamped with ``identity`` (model, data, the whole evaluation
    configuration: in a cascade a record depends on every attack before it). Written atomically, so an
    interrupted run loses at most the record in progress; another configuration is recomputed."""

    def __init__(self, store: RecordStore, identity: Mapping[str, Any], prefix: tuple[Any, ...] = ()) -> None:
        self.store, self.identity, self.prefix = store, dict(identity), tuple(prefix)
        self.folder = store.directory

    def _config(self, attack: str) -> dict[str, Any]:
        return {**self.identity, "attack": attack}

    def load(
        self, names: Sequence[str], eps: Sequence[float], n: int
    ) -> dict[tuple[str, float], AttackRecord]:
        found = {}
        for name in names:
            for e in eps:
                stored = self.store.get(
                    (*self.prefix, name, e), self._config(name), parse=_record_reader(name, e, n)
                )
                if stored is not None:
                    found[(name, e)] = stored
        return found

    def save(self, record: AttackRecord) -> Path:
        return self.store.put(
            (*self.prefix, record.attack, record.eps), self._config(record.attack), record.to_json()
        )


def _record_reader(name: str, eps: float, n: int) -> Callable[[dict[str, Any]], AttackRecord]:
    """Reads a stored suite record of (``name``, ``eps``) on ``n`` images; raises ValueError when the body
    names another attack or ε (a malformed record, recomputed by the store)."""

    def read(body: dict[str, Any]) -> AttackRecord:
        record = AttackRecord.from_json(body, n)
        if record.attack != name or record.eps != float(eps):
            raise ValueError(f"the body holds {record.attack} at ε {record.eps:g}, not {name} at ε {eps:g}")
        return record

    return read


def solver_aware_attacks(
    model: nn.Module, config: EvaluationConfig, against: Mapping[str, nn.Module], steps: int
) -> list[SuiteAttack]:
    """The ``ode`` preset's additions: surrogate-solver, adjoint-gradient and transfer attacks."""
    seed, norm = config.seed, config.norm
    out: list[SuiteAttack] = []
    blocks = ode_blocks(model)
    if blocks:
        t1, tol = blocks[0].t1, config.reference_tol
        tight = {"method": "dopri5", "rtol": tol, "atol": tol, "step_size": None, "per_sample": False}
        fixed = {"method": "rk4", "step_size": t1 / config.fixed_steps, "per_sample": False}
        adjoint = {"per_sample": False, "gradient": "adjoint"}
        for name, options in (
            (f"APGD-CE via rk4 {config.fixed_steps} steps", fixed),
            (f"APGD-CE via dopri5 tol {tol:g}", tight),
            ("APGD-CE via adjoint gradients", adjoint),
        ):
            out.append(SuiteAttack(name, _surrogate(options, steps, norm, seed), kind="transfer"))
    for label, source in against.items():
        out.append(
            transfer(
                f"APGD-CE transfer from {label}", source, lambda e: APGD(e, steps=steps, norm=norm, seed=seed)
            )
        )
    return out


def _surrogate(
    options: dict[str, Any], steps: int, norm: str, seed: int
) -> Callable[[float], SurrogateSolverAttack]:
    return lambda e: SurrogateSolverAttack(APGD(e, steps=steps, norm=norm, seed=seed), **options)


def suite_attacks(
    model: nn.Module, config: EvaluationConfig, against: Mapping[str, nn.Module]
) -> list[SuiteAttack]:
    """The preset's attacks (budgets overridden by the configuration), then the solver-aware and transfer
    attacks."""
    base = "quick" if config.preset in ("quick", "ode-quick") else "standard"
    attacks = (budget_preset if config.budget else preset)(
        base,
        config.norm,
        config.seed,
        steps=config.steps,
        targets=config.target_classes,
        queries=config.queries,
    )
    steps = config.steps or PRESETS[base]["steps"]
    if config.preset.startswith("ode"):
        return attacks + solver_aware_attacks(model, config, against, steps)
    return attacks + [
        transfer(
            f"APGD-CE transfer from {label}",
            source,
            lambda e: APGD(e, steps=steps, norm=config.norm, seed=config.seed),
        )
        for label, source in against.items()
    ]


@contextlib.contextmanager
def deployed(model: nn.Module, per_sample: bool) -> Iterator[nn.Module]:
    """The model as evaluated: ODE blocks with per-sample step control when asked."""
    if per_sample and ode_blocks(model):
        with solver_override(model, per_sample=True):
            yield model
    else:
        yield model


@dataclass
class Evaluation:
    """A finished evaluation: the suite report (with flags), the protocol numbers and timings."""

    config: EvaluationConfig
    report: SuiteReport
    protocol: dict[str, dict[float, float]]
    seconds: dict[str, float]
    attacks: list[SuiteAttack]
    solver: dict[str, Any] = field(default_factory=dict)
    protocol_robust: dict[str, dict[float, Tensor]] = field(default_factory=dict, repr=False)
    """Per-sample robustness behind each protocol number (what a merge of shards averages)."""
    passes: dict[str, int | None] = field(default_factory=dict)
    """Per-sample forward and backward passes of the suite (:class:`attacks.passes.PassCounter`), summed
    over its records; None where a record does not know its count (under ``torchrun``)."""


def protocol_numbers(model: nn.Module, x: Tensor, y: Tensor, config: EvaluationConfig) -> dict[float, float]:
    """The paper's protocol: L-inf PGD, ``protocol_steps`` steps of ``protocol_alpha`` from a uniform random
    start, standalone on every sample (robust accuracy per eps)."""
    return {e: float(robust.float().mean()) for e, robust in protocol_robust(model, x, y, config).items()}


def protocol_robust(
    model: nn.Module, x: Tensor, y: Tensor, config: EvaluationConfig, first_batch: int = 0
) -> dict[float, Tensor]:
    """Per-sample robustness under the paper's protocol (:func:`protocol_numbers`); ``first_batch`` is the
    global index of ``x``'s first batch when ``x`` is a shard (seeds follow global batch indices)."""
    out = {}
    for e_index, e in enumerate(config.eps):
        out[e] = pgd_robust(
            model, x, y, e, config.protocol_steps,
            lambda b, start, e_index=e_index: batch_seed(config.seed, -2, e_index, first_batch + b),
            alpha=config.protocol_alpha if e > 0 else None, batch_size=config.batch_size,
        )
    return out


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: EvaluationConfig,
    *,
    against: Mapping[str, nn.Module] | None = None,
    store: SuiteStore | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    first_batch: int = 0,
    checks: bool = True,
    label: str = "suite",
) -> Evaluation:
    """Suite + checks + protocol numbers for ``model`` on ``(x, y)``.

    ``first_batch``: ``(x, y)`` is one shard of a larger set, starting at global batch ``first_batch``
    (:mod:`experiments.shards`); ``checks=False`` leaves the checks that need the whole set to
    :func:`run_evaluation_checks` (only the checks that read the report run). With ``progress`` a bar
    named ``label`` follows the suite in model passes, named after the record running, and a line
    announces each later phase.
    """
    against = dict(against or {})
    model.eval()
    for source in against.values():
        source.eval()
    attacks = suite_attacks(model, config, against)
    names = [a.name for a in attacks]
    completed = store.load(names, config.eps, x.shape[0]) if store is not None else {}
    if completed and progress and rank == 0:
        print(
            f"resuming: {len(completed)} of {len(names) * len(config.eps)} (attack, eps) records reused "
            f"from {store.folder}"
        )
    show = progress and rank == 0
    bar = WorkBar(label, enabled=show)
    seconds: dict[str, float] = {}
    counter = PassCounter(model, *against.values())
    # run_suite's first forward pass is the clean prediction of every sample: not part of any record
    last = [(x.shape[0], 0)]
    with deployed(model, config.per_sample), counter:
        started = time.perf_counter()

        def on_record(record: AttackRecord) -> None:
            forward, backward = counter.snapshot()
            if world_size == 1:  # under torchrun this process sees only its own batches' passes
                record.stats["forward_passes"] = forward - last[0][0]
                record.stats["backward_passes"] = backward - last[0][1]
            last[0] = (forward, backward)
            if store is not None:
                store.save(record)

        try:
            report = run_suite(
                model,
                x,
                y,
                config.eps,
                attacks,
                norm=config.norm,
                batch_size=config.batch_size,
                seed=config.seed,
                completed=completed,
                on_record=on_record,
                rank=rank,
                world_size=world_size,
                first_batch=first_batch,
                monitor=bar,
            )
        finally:
            bar.close()
        seconds["suite"] = time.perf_counter() - started
        _announce(show, f"{label}: paper-protocol PGD-{config.protocol_steps} on {x.shape[0]} images at "
                        f"{len(config.eps)} eps")
        started = time.perf_counter()
        name = f"PGD-{config.protocol_steps} (paper protocol)"
        robust = {name: protocol_robust(model, x, y, config, first_batch)}
        protocol = {name: {e: float(mask.float().mean()) for e, mask in robust[name].items()}}
        seconds["protocol"] = time.perf_counter() - started
    evaluation = Evaluation(config, report, protocol, seconds, attacks, solver_summary(model, config),
                            robust, pass_totals(report))
    if checks:
        steps = "/".join(str(k) for k in config.convergence_steps)
        n = x.shape[0]
        _announce(show, f"{label}: checks (PGD-{steps} on {min(config.convergence_samples, n)} images, "
                        f"ε-sanity, batch dependence and randomness on {min(config.dependence_samples, n)})")
        run_evaluation_checks(model, x, y, evaluation)
    else:
        report.flags = report_flags(report)
    return evaluation


def pass_totals(report: SuiteReport) -> dict[str, int | None]:
    """Forward and backward passes summed over the report's records (None if a record lacks its count)."""
    totals: dict[str, int | None] = {}
    for key in ("forward_passes", "backward_passes"):
        values = [record.stats.get(key) for record in report.records]
        totals[key] = None if any(v is None for v in values) else int(sum(values))
    return totals


def run_evaluation_checks(model: nn.Module, x: Tensor, y: Tensor, evaluation: Evaluation) -> None:
    """The checks over the whole evaluated set (:func:`attacks.run_checks` on the deployed model, then what
    per-sample step control avoided); sets ``evaluation.report.flags``."""
    config, report = evaluation.config, evaluation.report
    with deployed(model, config.per_sample):
        started = time.perf_counter()
        run_checks(
            model,
            x,
            y,
            report,
            protocol=evaluation.protocol,
            convergence_steps=config.convergence_steps,
            convergence_samples=config.convergence_samples,
            dependence_samples=config.dependence_samples,
            batch_size=config.batch_size,
            seed=config.seed,
            attacks=evaluation.attacks,
        )
        evaluation.seconds["checks"] = time.perf_counter() - started
    if config.per_sample and ode_blocks(model):
        _shared_control_dependence(model, x, report, config)


def _shared_control_dependence(
    model: nn.Module, x: Tensor, report: SuiteReport, config: EvaluationConfig
) -> None:
    """What per-sample control avoided: batch dependence of the same inputs under the deployed shared step
    control, added to the ``batch-dependence`` flag's numbers (the flag judges the evaluated model)."""
    device = model_device(model)
    inputs = {"clean": x[: config.dependence_samples].to(device)}
    adversarial = [xa for (_, xa) in report.adversarials.values()]
    if adversarial:
        inputs["adversarial"] = torch.cat(adversarial)[: config.dependence_samples].to(device)
    with solver_override(model, per_sample=False):
        numbers = {name: batch_dependence(model, value, config.batch_size) for name, value in inputs.items()}
    for flag in report.flags:
        if flag.name == "batch-dependence":
            flag.numbers["shared_step_control"] = numbers


def solver_summary(model: nn.Module, config: EvaluationConfig) -> dict[str, Any]:
    blocks = ode_blocks(model)
    if not blocks:
        return {}
    block = blocks[0]
    return {
        "method": block.method,
        "rtol": block.rtol,
        "atol": block.atol,
        "step_size": block.step_size,
        "t1": block.t1,
        "evaluated_with_per_sample_control": config.per_sample,
    }


def _announce(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stderr, flush=True)


# -- outputs -------------------------------------------------------------------------------------------------
def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def result_rows(evaluation: Evaluation, model_label: str = "model") -> list[dict[str, Any]]:
    rows = [
        {"model": model_label, **{k: _round(v) for k, v in row.items()}} for row in evaluation.report.rows()
    ]
    for name, values in evaluation.protocol.items():
        for e, value in values.items():
            rows.append(
                {
                    "model": model_label,
                    "attack": name,
                    "kind": "protocol",
                    "eps": e,
                    "norm": evaluation.config.norm,
                    "samples": evaluation.report.samples,
                "clean_accuracy": _round(float(evaluation.report.clean_correct.float().mean())),
                    "robust_accuracy": _round(value),
                }
            )
    return rows


def markdown_report(evaluations: Mapping[str, Evaluation], command: str = "") -> str:
    """Tables per model (per attack and eps, cascade; worst case; protocol number), flags, configuration."""
    lines = ["# Robustness evaluation", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    for label, ev in evaluations.items():
        report, eps = ev.report, ev.config.eps
        clean = float(report.clean_correct.float().mean())
        lines += [
            f"## {label}",
            "",
            f"{report.samples} samples, clean accuracy {clean:.4f}, norm {report.norm}, preset "
            f"`{ev.config.preset}`" + (f", ODE solver {ev.solver}" if ev.solver else ""),
            "",
            "Robust accuracy after each attack of the cascade (each attack runs on the samples still "
            "robust), the per-example worst case, and the paper's protocol number (standalone):",
            "",
        ]
        header = "| attack | kind | " + " | ".join(f"ε={e:g}" for e in eps) + " |"
        lines += [header, "|" + " --- |" * (2 + len(eps))]
        for name in report.attack_names:
            kind = report.record(name, eps[0]).kind
            lines.append(
                f"| {name} | {kind} | "
                + " | ".join(f"{report.robust_accuracy(name, e):.4f}" for e in eps)
                + " |"
            )
        lines.append(
            "| **worst case** | all | "
            + " | ".join(f"**{report.worst_case_accuracy(e):.4f}**" for e in eps)
            + " |"
        )
        for name, values in ev.protocol.items():
            lines.append(f"| {name} | protocol | " + " | ".join(f"{values[e]:.4f}" for e in eps) + " |")
        lines += ["", "Flags:", ""]
        for flag in report.flags:
            lines.append(f"- {'**FIRED**' if flag.fired else 'ok'} `{flag.name}`: {flag.verdict}")
            if flag.numbers:
                lines.append(f"  - evidence: `{json.dumps(flag.numbers, default=str)}`")
        lines += [f"- skipped `{name}`: {why}" for name, why in report.skipped.items()]
        lines += ["", "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in ev.seconds.items()), ""]
    first = next(iter(evaluations.values()), None)
    if first is not None:
        lines += [
            "## Configuration",
            "",
            "```json",
            json.dumps(first.config.to_dict(), indent=2),
            "```",
            "",
            "Attacks: " + "; ".join(f"`{a.name}` = {report_config(first, a.name)}" for a in first.attacks
                                    if a.name in first.report.attack_names),
            "",
        ]
    return "\n".join(lines)


def report_config(evaluation: Evaluation, name: str) -> str:
    return evaluation.report.record(name, evaluation.config.eps[0]).config


def plot(evaluations: Mapping[str, Evaluation], path: Path) -> Path:
    """Robust accuracy vs eps per attack (cascade), the worst case and the protocol number, one panel per
    model; written atomically."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(evaluations), figsize=(5.5 * len(evaluations), 4), squeeze=False)
    for axis, (label, ev) in zip(axes[0], evaluations.items()):
        eps = sorted(ev.config.eps)
        for name in ev.report.attack_names:
            axis.plot(eps, [ev.report.robust_accuracy(name, e) for e in eps], marker="o", lw=1, label=name)
        axis.plot(
            eps,
            [ev.report.worst_case_accuracy(e) for e in eps],
            color="black",
            lw=2.5,
            marker="s",
            label="worst case",
        )
        for name, values in ev.protocol.items():
            axis.plot(eps, [values[e] for e in eps], ls="--", color="gray", marker="^", label=name)
        axis.set(title=label, xlabel=f"ε ({ev.config.norm})", ylabel="robust accuracy", ylim=(-0.02, 1.02))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def write_outputs(
    evaluations: Mapping[str, Evaluation],
    out: Path,
    command: str = "",
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``report.md``, ``results.json``, ``results.csv``, ``per_sample.csv``, ``robustness.png``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out / "report.md", markdown_report(evaluations, command))]
    rows = [row for label, ev in evaluations.items() for row in result_rows(ev, label)]
    written.append(out / "results.csv")
    ResultTable(rows).to_csv(written[-1])
    samples = [{"model": label, **row} for label, ev in evaluations.items() for row in ev.report.per_sample()]
    written.append(out / "per_sample.csv")
    ResultTable(samples).to_csv(written[-1])
    payload = {
        "command": command,
        **(extra or {}),
        "models": {
            label: {
                "config": ev.config.to_dict(),
                "solver": ev.solver,
                "seconds": ev.seconds,
                "rows": result_rows(ev, label),
                "flags": [f.to_json() for f in ev.report.flags],
                "attacks": {a.name: report_config(ev, a.name) for a in ev.attacks
                            if a.name in ev.report.attack_names},
                **({"skipped_attacks": ev.report.skipped} if ev.report.skipped else {}),
            }
            for label, ev in evaluations.items()
        },
    }
    written.append(atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str) + "\n"))
    written.append(plot(evaluations, out / "robustness.png"))
    for path in written:
        path.chmod(0o644)
    return written
