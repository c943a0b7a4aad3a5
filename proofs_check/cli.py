"""``python -m proofs_check``: verify the stability bounds on a random residual network or a ``nets`` model.

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
import sys
from pathlib import Path

import torch

import stability
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
    known = (*EXPLICIT_SCHEMES, "backward_euler")
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown scheme(s) {unknown}; choose from {', '.join(known)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proofs_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a nets registry name (random initialisation, seeded)")
    source.add_argument("--checkpoint", help="a trained run directory or model.pt (nets.training)")
    parser.add_argument(
        "--scheme", type=_schemes, default=[*EXPLICIT_SCHEMES, "backward_euler"], help="random network only"
    )
    parser.add_argument("--h", type=_floats, default=[1.0, 0.1, 0.01], help="step sizes, e.g. 1,0.1,0.01")
    parser.add_argument("--steps", type=int, default=20, help="steps per run (random network)")
    parser.add_argument("--samples", type=int, default=8, help="inputs per run")
    parser.add_argument("--epsilon", type=float, default=1e-3, help="|ε| relative to |y0| per sample")
    parser.add_argument("--direction", choices=("jacobian", "random"), default="jacobian")
    parser.add_argument("--lipschitz", type=float, default=1.0, help="certified K of the random F")
    parser.add_argument("--channels", type=int, default=4, help="random network: channels C")
    parser.add_argument("--size", type=int, default=8, help="random network: spatial size S")
    parser.add_argument("--t1", type=float, default=5.0, help="adaptive dopri5 on [0, t1]")
    parser.add_argument("--rtol", type=float, default=1e-5, help="adaptive dopri5 (random network)")
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument("--image-size", type=int, default=None, help="model inputs (default 28 MNIST, 32)")
    parser.add_argument("--norm-layers", choices=("refuse", "worst_case"), default="refuse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="output directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "samples", "channels", "size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be ≥ 1")
    if not (math.isfinite(args.epsilon) and args.epsilon > 0):
        raise SystemExit("--epsilon must be positive and finite")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    summary: dict = {
        "command": " ".join(["python -m proofs_check", *(argv if argv is not None else sys.argv[1:])])
    }
    try:
        runs = (
            _run_model(args, out, summary)
            if (args.model or args.checkpoint)
            else _run_random(args, out, summary)
        )
    except NotCertifiableError as error:
        print(f"cannot certify a Lipschitz constant: {error}", file=sys.stderr)
        return 2
    summary["runs"] = {run: result.summary() for run, result in runs}
    write_csv(runs, out / "results.csv")
    write_json(summary, out / "summary.json")
    print(summary_table(runs))
    violated = [(run, r) for run, r in runs if r.covered and r.violated]
    for run, result in violated:
        print(f"!!! BOUND VIOLATED in {run} ({result.label}): {result.violations(limit=3)}", file=sys.stderr)
    print(f"wrote {out / 'results.csv'}, {out / 'summary.json'} and figures to {out}")
    return 1 if violated else 0


def _run_random(args, out: Path, summary: dict) -> list[tuple[str, Verification]]:
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
    for scheme in args.scheme:
        results = []
        for h in args.h:
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
            plot_runs(results, out / f"{scheme}.png", title)
    if "dopri5" in args.scheme:
        runs += _adaptive(field, y0, k, args, out, f"random F on {shape}, K = {k:.3g}")
    return runs


def _adaptive(field, y0, k: float, args, out: Path, what: str) -> list[tuple[str, Verification]]:
    """dopri5 with step control on [0, t1] at the chosen ε, then pairs of inputs |ε| apart straddling a
    point where the step selection switches (found by bisection): there the adaptive map jumps."""
    options = {"lipschitz": k, "t_span": (0.0, args.t1), "rtol": args.rtol, "atol": args.atol}
    probe = stability.solve(field, y0, [0.0, args.t1], rtol=args.rtol, atol=args.atol)
    grid = list(probe.stats.step_times) + [args.t1]
    steps = solver_steps(field, "dopri5", grid, k)
    unit = perturbation(y0, 1.0, direction=args.direction, steps=steps, seed=args.seed)
    reference = verify_adaptive(field, y0, unit * args.epsilon, **options)
    runs = [("dopri5_adaptive_shared", reference.shared_grid), ("dopri5_adaptive_own", reference.independent)]
    switch = None
    for criterion in SWITCH_CRITERIA:
        switch = find_step_switch(
            field, y0, unit, criterion=criterion, t_span=(0.0, args.t1), rtol=args.rtol, atol=args.atol
        )
        if switch is not None:
            break
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
            runs.append((f"dopri5_switch_own_eps{size:g}", sweep[-1].independent))
        sweep_title = f"input pairs centred on a step switch ({what_changes})"
    title = f"dopri5 ODE block (rtol={args.rtol:g}, atol={args.atol:g}) on [0, {args.t1:g}]: {what}"
    plot_adaptive(reference, sweep, out / "dopri5_adaptive.png", title, sweep_title)
    return runs


def _run_model(args, out: Path, summary: dict) -> list[tuple[str, Verification]]:
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
            block.func, y0, certificate.upper, args, out, f"{name} (K = {certificate.upper:.3g})"
        )
    runs: list[tuple[str, Verification]] = []
    results = []
    for h in args.h:
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
    plot_runs(results, out / f"{name}.png", title)
    return runs
