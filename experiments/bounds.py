"""``python -m experiments.bounds``: verify the stability bounds on a random residual network or a
``nets`` model.

Random network (default): F = conv → ReLU → conv on (C, S, S), seeded, rescaled to certified K = --lipschitz;
each --scheme runs --steps steps of every --h from y0 and y0 + ε. ``dopri5`` also runs adaptively on
[0, --t1] (shared grid vs independent steps, and an ε sweep). Model (--model NAME, random init, or
--checkpoint PATH, trained): its body's blocks are the steps, at each --h (``nets.schemes.set_step_size``);
a body with an adaptive ODE block is verified on that block's f instead.

Writes one figure per scheme/model, ``results.csv`` (one row per run and step) and ``summary.json``
(certificates, lower bounds, per-run summaries, the command) into --out. Exit status 1 if any bound covered
by the theorems is violated, 2 if the model cannot be certified.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch

import stability
from experiments import cli
from experiments.cli import Outputs, UsageExit, make_parser, setup
from proofs_check.lipschitz import lipschitz_upper
from proofs_check.lower_bounds import lipschitz_lower
from proofs_check.operator_norms import NotCertifiableError
from proofs_check.random_networks import random_conv_residual
from proofs_check.report import plot_adaptive, plot_runs, summary_table, write_csv, write_json
from proofs_check.verify import (
    SWITCH_CRITERIA,
    AdaptiveVerification,
    Verification,
    find_step_switch,
    fixed_grid,
    perturbation,
    solver_steps,
    verify_adaptive,
    verify_steps,
)
from storage.atomic import atomic_write_text

EXPLICIT_SCHEMES = ("euler", "heun", "rk4", "dopri5")
MAX_IMPLICIT_CONTRACTION = 0.99  # backward Euler with hK above this: a factor ≥ 100 per step, not shown
SWEEP_SIZES = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)  # relative to |y0|


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite numbers, got {text!r}")
    return values


def _schemes(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = (*EXPLICIT_SCHEMES, *(m for m in stability.methods.TABLEAUX if m not in EXPLICIT_SCHEMES),
             "backward_euler")
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown scheme(s) {unknown}; choose from {', '.join(known)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m experiments.bounds", __doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a nets registry name (random initialisation, seeded)")
    source.add_argument("--checkpoint", help="a trained run directory or model.pt (nets.training)")
    parser.add_argument(
        "--scheme",
        type=_schemes,
        default=[*EXPLICIT_SCHEMES, "backward_euler"],
        help="comma-separated schemes, random network only: any explicit method of stability (bosh3, tsit5, "
             "…) or backward_euler (default: euler,heun,rk4,dopri5,backward_euler)",
    )
    parser.add_argument("--h", type=_floats, default=[1.0, 0.1, 0.01],
                        help="comma-separated step sizes (default: 1,0.1,0.01)")
    parser.add_argument("--steps", type=int, default=20, help="steps per run (random network)")
    parser.add_argument("--samples", type=int, default=8, help="inputs per run")
    parser.add_argument("--epsilon", type=float, default=1e-3, help="|ε| relative to |y0| per sample")
    parser.add_argument("--direction", choices=("jacobian", "random"), default="jacobian",
                        help="direction of ε: the fastest-growing Jacobian direction, or random")
    parser.add_argument("--lipschitz", type=float, default=1.0, help="certified K of the random F")
    parser.add_argument("--channels", type=int, default=4, help="random network: channels C")
    parser.add_argument("--size", type=int, default=8, help="random network: spatial size S")
    parser.add_argument("--t1", type=float, default=5.0, help="adaptive dopri5 on [0, t1]")
    parser.add_argument("--rtol", type=float, default=1e-5, help="adaptive dopri5 (random network)")
    parser.add_argument("--atol", type=float, default=1e-8, help="adaptive dopri5 (random network)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (default: 28 for 1-channel models, 32 otherwise)")
    parser.add_argument("--norm-layers", choices=("refuse", "worst_case"), default="refuse",
                        help="GroupNorm/LayerNorm: refuse to certify, or accept their worst case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random network, inputs and ε")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", required=True, help="output directory")
    return parser


def main(argv: list[str] | None = None, outputs: Outputs | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup(args)
    for name in ("steps", "samples", "channels", "size"):
        if getattr(args, name) < 1:
            raise UsageExit(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if not (math.isfinite(args.epsilon) and args.epsilon > 0):
        raise UsageExit(f"--epsilon must be positive and finite, got {args.epsilon}")
    outputs = outputs if outputs is not None else Outputs()
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    command = " ".join(["python -m experiments.bounds", *(shlex.quote(a) for a in argv)])
    summary: dict = {"command": command}
    try:
        runs = (
            _run_model(args, out, summary, outputs)
            if (args.model or args.checkpoint)
            else _run_random(args, out, summary, outputs)
        )
    except NotCertifiableError as error:
        print(f"error: cannot certify a Lipschitz constant: {error}", file=sys.stderr)
        return 2
    summary["runs"] = {run: result.summary() for run, result in runs}
    outputs.add(write_csv(runs, out / "results.csv"))
    outputs.add(write_json(summary, out / "summary.json"))
    table = summary_table(runs)
    verdicts = verdict_lines(runs)
    print(table)
    violated = [(run, r) for run, r in runs if r.covered and r.violated]
    for run, result in violated:
        print(f"!!! BOUND VIOLATED in {run} ({result.label}): {result.violations(limit=3)}", file=sys.stderr)
    print("\n".join(verdicts))
    report = [
        "# Stability-bound verification (proofs_check)",
        "",
        "```text",
        table,
        "```",
        "",
        *[f"- {line}" for line in verdicts],
        "",
        "## Configuration",
        "",
        *[f"- {key}: {value}" for key, value in sorted(vars(args).items())],
        *[f"- {key}: {summary[key]:.6g}" for key in ("lipschitz_upper", "lipschitz_lower") if key in summary],
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Wall time: {time.perf_counter() - started:.0f} s with {torch.get_num_threads()} thread(s).",
        "",
    ]
    outputs.add(atomic_write_text(out / "report.md", "\n".join(report)))
    return 1 if violated else 0


def verdict_lines(runs: list[tuple[str, Verification]]) -> list[str]:
    """One line per kind of outcome: violations of covered bounds, and what uncovered runs mean."""
    covered = [(run, r) for run, r in runs if r.covered]
    violated = [run for run, r in covered if r.violated]
    lines = []
    if violated:
        lines.append(
            f"BOUND VIOLATED in {len(violated)} of {len(covered)} covered run(s): {', '.join(violated)}"
        )
    else:
        lines.append(f"no violation in the {len(covered)} run(s) covered by the theorems")
    uncovered = [(run, r) for run, r in runs if not r.covered]
    exceeded = [run for run, r in uncovered if r.violated]
    if uncovered:
        lines.append(
            f"{len(uncovered)} run(s) marked (not covered) compare two inputs solved with their own adaptive "
            f"steps, which no theorem bounds (the step selection is not Lipschitz); {len(exceeded)} of them "
            "exceed the bound of the unperturbed steps — a measurement, not a failed proof (exit status 0)"
        )
    return lines


def _run_random(args, out: Path, summary: dict, outputs: Outputs) -> list[tuple[str, Verification]]:
    dtype = torch.float64
    residual, shape = random_conv_residual(
        args.channels, args.size, lipschitz=args.lipschitz, seed=args.seed, dtype=dtype
    )
    residual = residual.to(args.device)
    generator = torch.Generator().manual_seed(args.seed + 1)
    y0 = torch.randn(args.samples, *shape, generator=generator, dtype=dtype).to(args.device)
    certificate = lipschitz_upper(residual, shape, seed=args.seed)
    k = certificate.upper
    lower = lipschitz_lower(residual, y0, seed=args.seed)
    summary["network"] = {"residual": repr(residual), "input_shape": shape}
    summary["lipschitz_upper"] = k
    summary["lipschitz_lower"] = lower.value
    summary["jacobian_norm"] = lower.jacobian_norm
    print(certificate.table())
    print(
        f"empirical lower bound K ≥ {lower.value:.6g} (Jacobian norm at the inputs {lower.jacobian_norm:.6g})"
    )

    def field(t, y):
        return residual(y)

    runs: list[tuple[str, Verification]] = []
    bar = _bar(args, len(args.scheme) * len(args.h), "bound verification (scheme x h)")
    for scheme in args.scheme:
        results = []
        for h in args.h:
            bar.update(1)
            if scheme == "backward_euler" and h * k > MAX_IMPLICIT_CONTRACTION:
                print(
                    f"skipping backward_euler at h={h:g}: its bound 1/(1 − hK) needs hK < 1 and is vacuous "
                    f"near 1 (hK = {h * k:.6g} > {MAX_IMPLICIT_CONTRACTION})"
                )
                continue
            steps = solver_steps(field, scheme, fixed_grid(0.0, h, args.steps), k)
            epsilon = perturbation(y0, args.epsilon, direction=args.direction, steps=steps, seed=args.seed)
            result = verify_steps(steps, y0, epsilon, label=f"{scheme} h={h:g}", lipschitz=k)
            results.append(result)
            runs.append((f"{scheme}_h{h:g}", result))
        if results:
            title = f"{scheme}: random F = conv-ReLU-conv on {shape}, K = {k:.3g}, ε along {args.direction}"
            outputs.add(plot_runs(results, out / f"{scheme}.png", title))
    bar.close()
    if "dopri5" in args.scheme:
        runs += _adaptive(field, y0, k, args, out, f"random F on {shape}, K = {k:.3g}", outputs)
    return runs


def _bar(args, total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=args.no_progress, leave=False, file=sys.stderr)


def _adaptive(
    field, y0, k: float, args, out: Path, what: str, outputs: Outputs
) -> list[tuple[str, Verification]]:
    """dopri5 with step control on [0, t1] at the chosen ε, then pairs of inputs |ε| apart straddling a
    point where the step selection switches (found by bisection): there the adaptive map jumps."""
    options = {"lipschitz": k, "t_span": (0.0, args.t1), "rtol": args.rtol, "atol": args.atol}
    probe = stability.solve(field, y0, [0.0, args.t1], rtol=args.rtol, atol=args.atol)
    grid = list(probe.stats.step_times) + [args.t1]
    steps = solver_steps(field, "dopri5", grid, k)
    unit = perturbation(y0, 1.0, direction=args.direction, steps=steps, seed=args.seed)
    bar = _bar(args, 2 + len(SWEEP_SIZES), "adaptive dopri5 (reference, switch search, ε sweep)")
    reference = verify_adaptive(field, y0, unit * args.epsilon, **options)
    bar.update(1)
    runs = [("dopri5_adaptive_shared", reference.shared_grid), ("dopri5_adaptive_own", reference.independent)]
    switch = None
    for criterion in SWITCH_CRITERIA:
        switch = find_step_switch(
            field, y0, unit, criterion=criterion, t_span=(0.0, args.t1), rtol=args.rtol, atol=args.atol
        )
        if switch is not None:
            break
    bar.update(1)
    sweep: list[AdaptiveVerification] = []
    if switch is None:
        print("no step-selection switch found along ε in [0, |y0|]; the ε sweep is skipped")
        sweep_title = "no step-selection switch found"
    else:
        middle = 0.5 * (switch.lower + switch.upper)
        what_changes = f"{switch.criterion} {switch.count_lower}→{switch.count_upper}"
        print(f"step selection switches at s ≈ {middle:.15g} (|ε| = s·|y0|): {what_changes}")
        for size in SWEEP_SIZES:
            start = y0 + (middle - size / 2) * unit
            sweep.append(verify_adaptive(field, start, unit * size, on_violation="ignore", **options))
            bar.update(1)
            runs.append((f"dopri5_switch_own_eps{size:g}", sweep[-1].independent))
        sweep_title = f"input pairs centred on a step switch ({what_changes})"
    title = f"dopri5 ODE block (rtol={args.rtol:g}, atol={args.atol:g}) on [0, {args.t1:g}]: {what}"
    bar.close()
    outputs.add(plot_adaptive(reference, sweep, out / "dopri5_adaptive.png", title, sweep_title))
    return runs


def _run_model(args, out: Path, summary: dict, outputs: Outputs) -> list[tuple[str, Verification]]:
    import nets
    from nets.odenet import ODEBlock
    from nets.schemes import set_step_size
    from nets.training import load_trained_model
    from proofs_check.networks import body_input, body_steps, flatten_blocks

    if args.checkpoint:
        model = load_trained_model(args.checkpoint, device=args.device)
        name = Path(args.checkpoint).stem if Path(args.checkpoint).is_file() else Path(args.checkpoint).name
    else:
        model = nets.build_model(args.model).to(args.device)
        name = args.model
    model = model.double().eval()
    size = args.image_size or (28 if model.in_channels == 1 else 32)
    generator = torch.Generator().manual_seed(args.seed + 1)
    images = torch.rand(args.samples, model.in_channels, size, size, generator=generator, dtype=torch.float64)
    y0 = body_input(model, images.to(args.device))
    summary["model"] = {"name": name, "checkpoint": args.checkpoint, "image_size": size}
    blocks = flatten_blocks(model.body)
    ode_index = next((i for i, (_, b) in enumerate(blocks) if isinstance(b, ODEBlock)), None)
    if ode_index is not None and blocks[ode_index][1].step_size is None:
        with torch.no_grad():
            for _, block in blocks[:ode_index]:
                y0 = block(y0)
        block = blocks[ode_index][1]
        certificate = lipschitz_upper(block.func, y0.shape[1:], norm_layers=args.norm_layers, seed=args.seed)
        lower = lipschitz_lower(lambda y: block.func(torch.zeros((), dtype=y.dtype), y), y0, seed=args.seed)
        summary.update(
            lipschitz_upper=certificate.upper,
            lipschitz_lower=lower.value,
            assumptions=certificate.assumptions,
        )
        print(certificate.table())
        print(f"empirical lower bound K ≥ {lower.value:.6g}")
        args.t1, args.rtol, args.atol = block.t1, block.rtol, block.atol
        return _adaptive(
            block.func, y0, certificate.upper, args, out, f"{name} (K = {certificate.upper:.3g})", outputs
        )
    runs: list[tuple[str, Verification]] = []
    results = []
    bar = _bar(args, len(args.h), "bound verification (h)")
    for h in args.h:
        bar.update(1)
        set_step_size(model, h)
        steps, kinds = body_steps(model.body, y0.shape[1:], norm_layers=args.norm_layers, seed=args.seed)
        epsilon = perturbation(y0, args.epsilon, direction=args.direction, steps=steps, seed=args.seed)
        result = verify_steps(steps, y0, epsilon, label=f"{name} h={h:g}")
        summary.setdefault("blocks", {})[f"h={h:g}"] = [
            {"block": kind, "factor": step.factor} for kind, step in zip(kinds, steps)
        ]
        results.append(result)
        runs.append((f"{name}_h{h:g}", result))
    origin = "trained checkpoint" if args.checkpoint else f"random init, seed {args.seed}"
    title = f"{name} ({origin}): body blocks as steps, bound Π(certified factors), ε along {args.direction}"
    bar.close()
    outputs.add(plot_runs(results, out / f"{name}.png", title))
    return runs


if __name__ == "__main__":
    sys.exit(cli.run(main))
