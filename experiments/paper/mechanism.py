"""The paper's mechanism, tested: does long, adaptively stepped integration make an ODE-net robust, or only
harder to attack with gradients?

Models (MNIST; CIFAR-10 too at ``paper`` scale), all with the same stem and head and the same training:

* ODE-nets integrating to t1 ∈ T (MNIST {1, 10, 100}, 100 = Appendix A; CIFAR-10 {1, 10, 500}) with adaptive
  dopri5. Each f starts damped, its closing GroupNorm at γ = 1/t1 (the t1 = 1 model's displacement t1 · γ),
  and is trained freely from there: an undamped t1 = 100 net does not train in budget;
* the **base** model: the ODE-net with its ODE block removed (``odenet_stem_head``);
* the **fixed-step twin**: the longest-t1 network trained and deployed with RK4 at K fixed steps, K the
  adaptive model's median number of accepted steps per image (measured after it is trained), separating
  "long integration" from "adaptive step control".

Per model: clean accuracy, FGSM and PGD-40 under the paper's protocol, the honest evaluation's per-example
worst case (``ode-quick`` suite with transfer from the base model and from the ResNet, and the solver-aware
RK4 / tight-dopri5 / adjoint attacks), the input-gradient norms, forward and backward NFE per image, the
learned field gain and the flags; the deployed tolerance swept on the longest-t1 model without retraining;
the **ODE premium** per ε (worst case with the block minus without, paired, Newcombe 95% interval).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from experiments.figures import pyplot, save_figure
from experiments.models import ModelSpec, TrainedModel
from experiments.paper import flow, scales
from experiments.paper.measure import constant_image_caps, counted, honest, protocol, with_sanity_flag
from experiments.paper.premium import paired
from experiments.paper.report import (
    flags_section,
    header,
    markdown_table,
    pct,
    sanity_section,
    write,
)
from experiments.paper.runtime import Context, RunDirectory
from experiments.paper.specs import EvalSpec, Plan, Recipe, model

TITLE = "The paper's mechanism: integration time, adaptive steps, and what the ODE block adds"
#: integration times per dataset (the last one is Appendix A's)
T1 = {"mnist": (1.0, 10.0, 100.0), "cifar10": (1.0, 10.0, 500.0)}
EPS = {"mnist": (0.1, 0.3), "cifar10": (8 / 255, 16 / 255)}
TOLERANCES = (1e-1, 1e-3, 1e-5)
FIGURES = ("mechanism_robustness.png", "mechanism_gradients.png")
#: attacked test images at cpu scale: 200 gave the premium's paired 95% interval half widths up to ±5.6 points
#: (a 17.5-point premium with 35 discordant images); 300 keeps them at ±5 or narrower for such outcomes
#: (experiments.paper.premium)
CPU_SAMPLES = 300
SWEEP_SAMPLES = {"smoke": 4, "cpu": 50, "paper": 1000}
NOTES = {
    "smoke": ("plumbing test on tiny data: numbers are meaningless",),
    "cpu": (
        "MNIST only; `odenet_mnist_small` (7×7×32 state, f with 2 conv) instead of Appendix A's 4 conv × 128 "
        "channels; t1 ∈ {1, 10, 100} with dopri5 at rtol = atol = 1e-3",
        "training: every model Table 1's recipe (2 epochs on all 60k training images, Adam lr 3e-3 "
        "one-cycle, batch 128), f's closing GroupNorm initialised at γ = 1/t1; the t1 = 1 model and the "
        "ResNet (a transfer source only) are Table 1's models (same cache keys)",
        f"attacked: the first {CPU_SAMPLES} test images; the `ode-quick` suite's budgets cut to APGD 20 "
        "steps, APGD-T 1 target class, Square 200 queries, the tight-dopri5 surrogate at tol 1e-4, "
        "PGD 20/100 for the convergence flag (the paper's FGSM and PGD-40 unchanged); the tolerance sweep "
        "on the first 50",
    ),
    "paper": (
        "Appendix A's ODE-nets (MNIST 4 conv × 128, CIFAR-10 5 conv × 256) and training, at each t1, with "
        "f's closing GroupNorm initialised at γ = 1/t1; full test sets",
    ),
}


def _key(t1: float) -> str:
    return f"t1={t1:g}"


def _recipe(scale: str, dataset: str) -> Recipe:
    """Every model of a dataset trains the same way: smoke's token epoch; at cpu scale Table 1's ODE-net
    recipe (2 epochs on all 60k images, Adam 3e-3 one-cycle, batch 128: 98.7% clean at t1 = 1), so that the
    t1 = 1 model is Table 1's; Appendix A at paper."""
    if scale == "smoke":
        return scales.smoke_training()
    if scale == "cpu":
        return scales.cpu_odenet_training(dataset)
    return scales.appendix_a(dataset)


def _architecture(scale: str, dataset: str) -> tuple[str, dict[str, Any]]:
    """The ODE-net's registry name and its width arguments at ``scale``."""
    short = "mnist" if dataset == "mnist" else "cifar"
    if scale == "smoke":
        return f"odenet_{short}_small", {"channels": 2}
    if scale == "cpu":
        return f"odenet_{short}_small", {}
    return f"odenet_{short}_paper", {}


def _channels(name: str, arguments: dict[str, Any]) -> int:
    from nets.registry import get_model_factory

    return int(arguments.get("channels", get_model_factory(name).keywords["channels"]))


def odenet(scale: str, dataset: str, t1: float, **solver: Any) -> ModelSpec:
    """The ODE-net at ``t1`` (f damped to γ = 1/t1 at initialisation); ``solver``: e.g. the RK4 twin's
    ``method``/``step_size``. At t1 = 1 with the default solver it is Table 1's model (same key)."""
    name, arguments = _architecture(scale, dataset)
    default_t1 = 1.0 if name.endswith("_small") else (100.0 if dataset == "mnist" else 500.0)
    if t1 != default_t1:
        arguments = {**arguments, "t1": float(t1)}
    if t1 != 1.0:
        arguments["field_gain"] = 1.0 / t1
    return model(name, dataset, _recipe(scale, dataset), **arguments, **solver)


def base_model(scale: str, dataset: str) -> ModelSpec:
    """The ODE-net's stem and head without the ODE block, trained the same way."""
    name, arguments = _architecture(scale, dataset)
    return model("odenet_stem_head", dataset, _recipe(scale, dataset), channels=_channels(name, arguments))


def twin(scale: str, dataset: str, steps: int) -> ModelSpec:
    """The longest-t1 network trained and deployed with RK4 at ``steps`` fixed steps."""
    t1 = T1[dataset][-1]
    return odenet(scale, dataset, t1, method="rk4", step_size=t1 / steps)


def _datasets(scale: str) -> tuple[str, ...]:
    return ("mnist", "cifar10") if scale == "paper" else ("mnist",)


def _evaluation(scale: str) -> EvalSpec:
    if scale == "smoke":
        return scales.evaluation("smoke")
    if scale == "cpu":
        return EvalSpec(  # the quick suite cut to what a shared 2-core machine measured in an hour
            samples=CPU_SAMPLES,
            steps=20,
            target_classes=1,
            queries=200,
            convergence_steps=(20, 100),
            convergence_samples=10,
            dependence_samples=20,
            reference_tol=1e-4,
            test_samples=1000,
        )
    return scales.evaluation("paper")


def plan(scale: str) -> Plan:
    scales.check_scale(scale)
    models: list[tuple[str, ModelSpec]] = []
    for dataset in _datasets(scale):
        models += [(f"{dataset} {_key(t1)}", odenet(scale, dataset, t1)) for t1 in T1[dataset]]
        models += [
            (f"{dataset} base", base_model(scale, dataset)),
            (f"{dataset} resnet", scales.table1_models(scale, dataset)["resnet"]),
        ]
    params = {  # the same at every scale (the attack protocols and the rules that pick the models)
        "t1": {d: list(T1[d]) for d in T1},
        "tolerances": list(TOLERANCES),
        "twin": "rk4, steps = median accepted dopri5 steps of the longest-t1 model",
        "field_gain": "1/t1",
    }
    return Plan(
        "mechanism",
        scale,
        tuple(models),
        # every dataset's grid (at smoke its first ε); CIFAR-10 runs at paper scale only (``_datasets``)
        scales.eps_grid(scale, EPS, smoke_last=False),
        _evaluation(scale),
        params=tuple(sorted((k, str(v)) for k, v in params.items())),
        verify_data=scale != "smoke",
        notes=NOTES[scale],
    )


def estimate_seconds(spec: ModelSpec, ctx: Context, batches: int = 2) -> float:
    """Training time of ``spec`` extrapolated from ``batches`` timed steps on random inputs of its batch size
    (the first, warm-up step not counted)."""
    import torch
    from torch.nn import functional as F

    channels, size = (1, 28) if spec.dataset == "mnist" else (3, 32)
    network = spec.build().to(ctx.device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=spec.train.lr)
    x = torch.rand(spec.train.batch_size, channels, size, size, device=ctx.device)
    y = torch.randint(0, 10, (spec.train.batch_size,), device=ctx.device)
    seconds = []
    for _ in range(batches + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(network(x), y).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    train_size = len(ctx.dataset(spec.dataset, "train"))
    if spec.limit_train is not None:
        train_size = min(train_size, spec.limit_train)
    per_epoch = math.ceil(train_size / spec.train.batch_size)
    return sum(seconds[1:]) / batches * per_epoch * spec.train.epochs


def _measure(
    ctx: Context,
    run_dir: RunDirectory,
    entry: TrainedModel,
    eps: tuple[float, ...],
    spec: EvalSpec,
    data,
    against: dict[str, TrainedModel],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Every per-model measurement (each a cached part of the run directory)."""
    from attacks import FGSM

    x, y = data
    fgsm, timings[f"{entry.label} FGSM"] = protocol(
        run_dir, ctx, entry, {"FGSM": (lambda e: FGSM(e), {"attack": "FGSM"})}, eps, data, spec.batch_size
    )
    summary, timings[f"{entry.label} honest"] = honest(ctx, entry, eps, spec, data, against)
    identity = {"model": entry.spec.key(), "samples": int(x.shape[0]), "batch_size": spec.batch_size}

    def flow_measures() -> dict[str, Any]:
        return {
            "gradient_norms": flow.gradient_norms(entry.model, x, y, spec.batch_size),
            "steps": flow.step_counts(entry.model, x, spec.batch_size),
            "backward_nfe": flow.backward_nfe(entry.model, x, y, spec.batch_size),
            "field_gain": flow.field_gain(entry.model),
        }

    name = f"flow {entry.label}"
    measures, timings[name] = run_dir.part(name, identity, counted(ctx, name, flow_measures), guard=ctx.guard)
    return {
        "label": entry.label,
        "fgsm": [row["robust_accuracy"] for row in fgsm],
        "honest": summary,
        **measures,
        "caps": constant_image_caps(entry, data, eps, spec.batch_size),
        "train_nfe": (entry.info.get("train_solver_stats_last_epoch") or {}),
        "test_accuracy": entry.info.get("final_test_accuracy"),
    }


def _sweep(ctx, run_dir, entry, eps, spec: EvalSpec, samples: int) -> tuple[list[dict[str, Any]], float]:
    """The deployed tolerance swept without retraining: clean accuracy, NFE, PGD-40 and gradient norms."""
    from experiments.honest import deployed, protocol_numbers
    from experiments.masking import solver_override

    x, y = ctx.test_tensors(entry.spec.dataset, samples)
    config = spec.config(eps, ode=True)
    identity = {
        "model": entry.spec.key(),
        "tolerances": list(TOLERANCES),
        "samples": int(x.shape[0]),
        "config": config.to_dict(),
    }

    def compute() -> list[dict[str, Any]]:
        from attacks.suite import predict

        rows = []
        for tol in TOLERANCES:
            with solver_override(entry.model, rtol=tol, atol=tol):
                with deployed(entry.model, True):
                    clean = float(
                        (predict(entry.model, x, spec.batch_size).argmax(1).cpu() == y.cpu()).float().mean()
                    )
                    pgd = protocol_numbers(entry.model, x, y, config)
                rows.append(
                    {
                        "tolerance": tol,
                        "clean": clean,
                        "pgd40": [pgd[e] for e in eps],
                        "steps": flow.step_counts(entry.model, x, spec.batch_size),
                        "gradient_norms": flow.gradient_norms(entry.model, x, y, spec.batch_size),
                    }
                )
        return rows

    name = f"tolerance sweep {entry.label}"
    return run_dir.part(name, identity, counted(ctx, name, compute), guard=ctx.guard)


def train_models(ctx: Context, plan: Plan) -> None:
    """Every model this artefact trains (``--train-only``): its plan's, and per dataset the RK4 twin of the
    longest-t1 model (whose step count picks the twin)."""
    for label, spec in plan.models:
        ctx.trained(label, spec, plan.evaluation.test_samples)
    run_dir = RunDirectory(ctx.out, plan)
    for dataset in _datasets(plan.scale):
        twin_model(ctx, plan, run_dir, dataset)


def twin_model(ctx: Context, plan: Plan, run_dir: RunDirectory, dataset: str):
    """The longest-t1 model (trained first) and its RK4 twin at the median of its accepted dopri5 steps
    over the test subset: (longest, (twin, {steps, from: the step statistics, spec}))."""
    spec = plan.evaluation
    label = f"{dataset} {_key(T1[dataset][-1])}"
    longest = ctx.trained(label, plan.model_map[label], spec.test_samples)
    x = ctx.test_tensors(dataset, spec.test_samples or spec.samples)[0]
    counts, _ = run_dir.part(
        f"twin steps {dataset}",
        {"model": longest.spec.key(), "n": int(x.shape[0])},
        counted(ctx, f"twin steps {dataset}", lambda: flow.step_counts(longest.model, x, spec.batch_size)),
        guard=ctx.guard,
    )
    steps = max(1, round(counts["steps_median"]))
    twin_spec = twin(plan.scale, dataset, steps)
    entry = ctx.trained(f"{dataset} rk4 twin", twin_spec, spec.test_samples)
    return longest, (entry, {"steps": steps, "from": counts, "spec": twin_spec.to_dict()})


def measure_model(
    ctx: Context,
    plan: Plan,
    run_dir: RunDirectory,
    trained: dict[str, TrainedModel],
    label: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Every measurement of the model ``label`` (transfer from the base model and the ResNet of its dataset);
    each is a cached part, so a second process measuring other models of the same run shares the work."""
    dataset = label.split()[0]
    base, resnet = trained[f"{dataset} base"], trained[f"{dataset} resnet"]
    entry = trained[label]
    against = {"resnet": resnet} if entry is base else {"base": base, "resnet": resnet}
    data = ctx.test_tensors(dataset, plan.evaluation.samples)
    return _measure(ctx, run_dir, entry, plan.eps_map[dataset], plan.evaluation, data, against, timings)


def _order(label: str) -> tuple[str, int, float]:
    """Report order per dataset: the ODE-nets by t1, the base model, the RK4 twin."""
    kind, t1 = _kind(label)
    return label.split()[0], ("adaptive", "base", "rk4").index(kind), t1 or 0.0


def run(ctx: Context, plan: Plan, command: str = "") -> list[Path]:
    started = time.perf_counter()
    run_dir = RunDirectory(ctx.out, plan)
    spec, models = plan.evaluation, plan.model_map
    if plan.scale == "paper":
        _print_estimates(ctx, plan)
    results: dict[str, dict[str, Any]] = {}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    twins: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    records: dict[str, dict[str, Any]] = {}
    for dataset in _datasets(plan.scale):
        longest, (twin_entry, twins[dataset]) = twin_model(ctx, plan, run_dir, dataset)
        trained = {longest.label: longest, twin_entry.label: twin_entry}
        for label in (f"{dataset} base", f"{dataset} resnet"):  # every measurement transfers from them
            trained[label] = ctx.trained(label, models[label], spec.test_samples)
        # the longest integration and its twin first (the slowest), then the others in the plan's order
        others = [label for label in models if label.startswith(f"{dataset} ") and label not in trained]
        for label in [longest.label, twin_entry.label, *others, f"{dataset} base"]:
            if label not in trained:
                trained[label] = ctx.trained(label, models[label], spec.test_samples)
            results[label] = measure_model(ctx, plan, run_dir, trained, label, timings)
            records[label] = {"spec": trained[label].spec.to_dict(), "training": trained[label].info}
        sweeps[dataset], timings[f"{dataset} tolerance sweep"] = _sweep(
            ctx, run_dir, longest, plan.eps_map[dataset], spec, SWEEP_SAMPLES[plan.scale]
        )
    results = {label: results[label] for label in sorted(results, key=_order)}
    failures: list[str] = []
    rows = _rows(plan, results, failures)
    markdown = header(plan, TITLE, command) + _report(plan, results, rows, sweeps, twins)
    markdown += sanity_section(failures)
    markdown += flags_section({label: r["honest"] for label, r in results.items()})
    return write(
        run_dir.folder,
        plan,
        markdown=markdown,
        rows=rows,
        started=started,
        timings=timings,
        honest={label: r["honest"] for label, r in results.items()},
        models=records,
        figures={
            FIGURES[0]: lambda path: _robustness_figure(plan, rows, path),
            FIGURES[1]: lambda path: _gradient_figure(plan, results, path),
        },
        command=command,
        measurements={label: {k: v for k, v in r.items() if k != "honest"} for label, r in results.items()},
        tolerance_sweep=sweeps,
        twin=twins,
        eps_sanity_failures=failures,
    )


def _print_estimates(ctx: Context, plan: Plan) -> None:
    total = 0.0
    for label, spec in plan.models:
        seconds = estimate_seconds(spec, ctx)
        total += seconds
        print(f"[mechanism] {label}: training estimate {seconds / 3600:.1f} h on {ctx.device}", flush=True)
    print(
        f"[mechanism] total training estimate {total / 3600:.1f} h (the RK4 twin: as its t1 model)",
        flush=True,
    )


def _kind(label: str) -> tuple[str, float | None]:
    """(``adaptive`` / ``rk4`` / ``base``, t1) of a model label."""
    name = label.split(" ", 1)[1]
    if name.startswith("t1="):
        return "adaptive", float(name[3:])
    if name == "rk4 twin":
        return "rk4", None
    return "base", None


def _rows(plan: Plan, results: dict[str, dict[str, Any]], failures: list[str]) -> list[dict[str, Any]]:
    """One row per (model, ε); paper-attack numbers above their ε-sanity cap are flagged into
    ``failures``."""
    rows = []
    for label, result in results.items():
        dataset = label.split()[0]
        eps = plan.eps_map[dataset]
        base = results[f"{dataset} base"]["honest"]
        summary = result["honest"]
        kind, t1 = _kind(label)
        if kind == "rk4":
            t1 = T1[dataset][-1]
        steps, grads = result["steps"] or {}, result["gradient_norms"]
        for i, e in enumerate(eps):
            row = {
                "dataset": dataset,
                "model": label.split(" ", 1)[1],
                "solver": kind,
                "t1": t1,
                "eps": round(e, 6),
                "clean": round(100 * summary["clean"], 2),
                "fgsm": round(100 * result["fgsm"][i], 2),
                "pgd40": round(100 * summary["protocol"][i], 2),
                "worst_case": round(100 * summary["worst_case"][i], 2),
                "premium": None,
                "premium_low": None,
                "premium_high": None,
                "grad_median": grads["median"],
                "grad_p10": grads["p10"],
                "grad_below_1e-8": grads["fraction_below"],
                "nfe_forward": steps.get("nfe_mean"),
                "nfe_backward_adjoint": (result["backward_nfe"] or {}).get("adjoint_per_sample"),
                "field_gain": result["field_gain"],
                "samples": summary["samples"],
                "cap": None if result["caps"][i] is None else round(100 * result["caps"][i], 2),
                "flags_fired": " ".join(summary["fired"]),
            }
            for attack, value in (
                ("FGSM", result["fgsm"][i]),
                (summary["protocol_name"], summary["protocol"][i]),
            ):
                row["flags_fired"] = with_sanity_flag(
                    row["flags_fired"], label, attack, e, value, result["caps"][i], failures
                )
            if kind != "base":
                row.update(_premium("premium", summary, base, i))
            shortest = results.get(f"{dataset} {_key(T1[dataset][0])}")
            row.update(dict.fromkeys(("long_premium", "long_premium_low", "long_premium_high")))
            if kind != "base" and shortest is not None and shortest is not result:
                row.update(_premium("long_premium", summary, shortest["honest"], i))
            rows.append(row)
    return rows


def _premium(name: str, summary: dict[str, Any], other: dict[str, Any], i: int) -> dict[str, float]:
    """The paired worst-case difference at the i-th ε (percentage points) and its 95% interval, as
    ``name``, ``name_low``, ``name_high``."""
    table = paired(
        [c == "1" for c in summary["worst_case_robust"][i]], [c == "1" for c in other["worst_case_robust"][i]]
    )
    low, high = table.interval()
    return {
        name: round(100 * table.difference, 2),
        f"{name}_low": round(100 * low, 2),
        f"{name}_high": round(100 * high, 2),
    }


def _interval(row: dict[str, Any], name: str) -> str:
    if row[name] is None:
        return "—"
    return f"{row[name]:+.2f} [{row[f'{name}_low']:+.2f}, {row[f'{name}_high']:+.2f}]"


def _number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _report(plan, results, rows, sweeps, twins) -> list[str]:
    lines = ["## Verdict", ""] + _verdict(plan, rows, results) + [""]
    lines += [
        "## Robust accuracy and the ODE premium",
        "",
        "Robust accuracy in % on the same attacked images: FGSM and PGD-40 under the paper's protocol, "
        "and the honest evaluation's per-example worst case (`ode-quick` suite: APGD-CE, APGD-T, Square, "
        "transfer from the base model and the ResNet, APGD through an RK4 surrogate, a tight dopri5 solve "
        "and adjoint gradients). Premium: worst case of the ODE-net minus worst case of the base model (the "
        "same stem and head without the ODE block), paired on the images, with Newcombe's 95% interval; "
        "beside it the same difference against the shortest integration (t1 = 1): what long integration "
        "adds.",
        "",
    ]
    table = [
        [
            r["dataset"],
            r["model"],
            f"{r['eps']:g}",
            f"{r['clean']:.2f}",
            f"{r['fgsm']:.2f}",
            f"{r['pgd40']:.2f}",
            f"{r['worst_case']:.2f}",
            _interval(r, "premium"),
            _interval(r, "long_premium"),
            r["flags_fired"] or "none",
        ]
        for r in rows
    ]
    lines += markdown_table(
        ["dataset", "model", "ε", "clean", "FGSM", "PGD-40", "worst case", "premium [95% CI]"]
        + ["vs t1 = 1 [95% CI]", "flags fired"],
        table,
    )
    widths = [(r["premium_high"] - r["premium_low"]) / 2 for r in rows if r["premium"] is not None]
    if widths:
        lines += [
            f"Attacked images: {rows[0]['samples']} per model (the same images for every model); the "
            f"premium's 95% intervals above have half widths from ±{min(widths):.1f} to ±{max(widths):.1f} "
            "points.",
            "",
        ]
    lines += ["## Gradients, NFE and the learned field", ""]
    table = []
    for label, r in results.items():
        steps, grads, back = r["steps"] or {}, r["gradient_norms"], r["backward_nfe"] or {}
        train = r["train_nfe"] or {}
        train_nfe = train.get("nfe", 0) / train["solves"] if train.get("solves") else None
        table.append(
            [
                label,
                pct(r["honest"]["clean"]),
                pct(r["test_accuracy"]),
                f"{grads['median']:.3g}",
                f"{grads['p10']:.3g}",
                f"{grads['fraction_below']:.3f}",
                _number(steps.get("steps_median")),
                _number(steps.get("nfe_mean")),
                _number(back.get("backprop_per_sample")),
                _number(back.get("adjoint_per_sample")),
                _number(train_nfe),
                _number(r["field_gain"], 3),
            ]
        )
    lines += markdown_table(
        [
            "model",
            "clean (attacked set)",
            "clean (test subset)",
            "‖∇ₓ‖₁ median",
            "‖∇ₓ‖₁ p10",
            "share < 1e-8",
            "steps median",
            "forward NFE",
            "backward NFE (backprop)",
            "backward NFE (adjoint)",
            "training NFE per batch",
            "field gain γ",
        ],
        table,
    )
    lines += [
        "Gradient norms: ‖∇ₓ CE‖₁ per attacked image on the deployed model (per-sample step control). "
        "NFE per image under per-sample control; backprop's backward pass differentiates each recorded "
        "evaluation once; the adjoint's count is its backward solve under shared step control. Training "
        "NFE: forward evaluations per batch in the last epoch. Field gain: mean |γ| of f's closing GroupNorm "
        "(initialised at 1/t1; t1 · γ is the scale of the flow's displacement).",
        "",
    ]
    for dataset, info in twins.items():
        counts = info["from"]
        lines.append(
            f"- {dataset} RK4 twin: {info['steps']} steps of {T1[dataset][-1] / info['steps']:g}, the median "
            f"accepted dopri5 steps of the t1 = {T1[dataset][-1]:g} model over {counts['samples']} test "
            f"images (10th–90th percentile {counts['steps_p10']:g}–{counts['steps_p90']:g})"
        )
    lines += ["", "## Deployed tolerance, swept without retraining", ""]
    for dataset, sweep in sweeps.items():
        eps = plan.eps_map[dataset]
        table = [
            [
                f"{row['tolerance']:g}",
                pct(row["clean"]),
                *(pct(v) for v in row["pgd40"]),
                _number(row["steps"]["steps_median"]),
                _number(row["steps"]["nfe_mean"]),
                f"{row['gradient_norms']['median']:.3g}",
                f"{row['gradient_norms']['fraction_below']:.3f}",
            ]
            for row in sweep
        ]
        lines += [
            f"{dataset}, t1 = {T1[dataset][-1]:g}, the first {sweep[0]['steps']['samples']} test images:",
            "",
        ]
        lines += markdown_table(
            [
                "rtol = atol",
                "clean",
                *(f"PGD-40 ε {e:g}" for e in eps),
                "steps median",
                "forward NFE",
                "‖∇ₓ‖₁ median",
                "share < 1e-8",
            ],
            table,
        )
    return lines


def _verdict(plan: Plan, rows: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> list[str]:
    """Three sentences read off the numbers per dataset: the longest-t1 model's premium under the worst case
    and under the paper's PGD-40; its gradients and the RK4 twin's premium; which of robust (long integration
    adds to the premium) / the ODE block's premium, which long integration leaves alone or lowers / harder to
    attack only / neither the intervals support."""
    sentences = []
    for dataset in _datasets(plan.scale):
        t1 = T1[dataset][-1]
        longest = [r for r in rows if r["dataset"] == dataset and r["model"] == _key(t1)]
        base = {r["eps"]: r for r in rows if r["dataset"] == dataset and r["model"] == "base"}
        if not longest:
            continue
        premium = "; ".join(
            f"{r['premium']:+.1f} [{r['premium_low']:+.1f}, {r['premium_high']:+.1f}] at ε {r['eps']:g}"
            for r in longest
        )
        pgd_gap = max(r["pgd40"] - base[r["eps"]]["pgd40"] for r in longest)
        against_short = "; ".join(
            f"{r['long_premium']:+.1f} [{r['long_premium_low']:+.1f}, {r['long_premium_high']:+.1f}] at ε "
            f"{r['eps']:g}"
            for r in longest
        )
        significant = [r for r in longest if r["premium_low"] > 0]
        sentences.append(
            f"{dataset}: the ODE block integrated to t1 = {t1:g} changes worst-case robust accuracy against "
            f"the base model by {premium} points (95% interval), and against the t1 = {T1[dataset][0]:g} "
            f"model by {against_short}; under the paper's PGD-40 alone its largest premium over the base "
            f"model is {pgd_gap:+.1f} points."
        )
        one = results.get(f"{dataset} {_key(T1[dataset][0])}")
        grads = results[f"{dataset} {_key(t1)}"]["gradient_norms"]
        ratio = (
            grads["median"] / one["gradient_norms"]["median"]
            if one and one["gradient_norms"]["median"]
            else None
        )
        twin = [r for r in rows if r["dataset"] == dataset and r["solver"] == "rk4"]
        sentences.append(
            f"Its median input-gradient norm is {grads['median']:.3g}"
            + (f" ({ratio:.3g}× the t1 = {T1[dataset][0]:g} model's)" if ratio else "")
            + f", {100 * grads['fraction_below']:.1f}% of the images below 1e-8"
            + (
                "; the fixed-step RK4 twin's worst-case premium is "
                + ", ".join(
                    f"{r['premium']:+.1f} [{r['premium_low']:+.1f}, {r['premium_high']:+.1f}]" for r in twin
                )
                + " at the same ε"
                if twin
                else ""
            )
            + "."
        )
        longer = [r for r in longest if r["long_premium_low"] is not None and r["long_premium_low"] > 0]
        shorter = [r for r in longest if r["long_premium_high"] is not None and r["long_premium_high"] < 0]
        if longer:
            sentences.append(
                f"Integrating to t1 = {t1:g} rather than {T1[dataset][0]:g} leaves a premium above zero at ε "
                + ", ".join(f"{r['eps']:g}" for r in longer)
                + " even under the worst case: there long integration makes the model more robust, not only "
                "harder to attack."
            )
        elif significant:
            above = (
                "The premium over the base model is above zero at ε "
                + ", ".join(f"{r['eps']:g}" for r in significant)
                + f" under the worst case, but the t1 = {T1[dataset][0]:g} model "
            )
            if shorter:
                sentences.append(
                    above
                    + f"has more of it: integrating to t1 = {t1:g} lowers the worst case at ε "
                    + ", ".join(f"{r['eps']:g}" for r in shorter)
                    + f" (the interval against t1 = {T1[dataset][0]:g} lies below zero). The premium is the "
                    "ODE block's, and the long, adaptively stepped integration that the paper credits takes "
                    "part of it away."
                )
            else:
                sentences.append(
                    above + "has it too and no interval separates the longer integration from it: it is the "
                    "ODE block's, not the long, adaptively stepped integration's that the paper credits."
                )
        elif pgd_gap > max(r["premium_high"] for r in longest):
            sentences.append(
                "The premium the paper's protocol shows is not there under the worst case: long integration "
                "makes the model harder to attack with gradients, not more robust."
            )
        else:
            sentences.append(
                "No worst-case interval separates the premium from zero: on this evidence long integration "
                "does not make the model more robust."
            )
        fired = sorted({flag for r in longest for flag in (r["flags_fired"] or "").split()})
        if fired and (significant or longer):
            sentences.append(
                f"Indicators of attack failure fired on the t1 = {t1:g} model ({', '.join(fired)}): its "
                "worst case is an upper bound that a stronger attack may lower."
            )
    return [" ".join(sentences)]


def _robustness_figure(plan: Plan, rows: list[dict[str, Any]], path: Path) -> Path:
    """Robust accuracy against t1, PGD-40 and worst case, one panel per ε (base: horizontal lines; the RK4
    twin: markers at the longest t1)."""
    plt = pyplot()
    panels = [(d, e) for d in _datasets(plan.scale) for e in plan.eps_map[d]]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for axis, (dataset, e) in zip(axes[0], panels):
        here = [r for r in rows if r["dataset"] == dataset and r["eps"] == round(e, 6)]
        adaptive = sorted((r for r in here if r["solver"] == "adaptive"), key=lambda r: r["t1"])
        ts = [r["t1"] for r in adaptive]
        for column, style, name in (
            ("pgd40", "o--", "PGD-40 (paper protocol)"),
            ("worst_case", "s-", "worst case"),
        ):
            line = axis.plot(ts, [r[column] for r in adaptive], style, label=f"ODE-net, {name}")[0]
            for r in here:
                if r["solver"] == "base":
                    axis.axhline(r[column], color=line.get_color(), linestyle=":", label=f"base, {name}")
                if r["solver"] == "rk4":
                    axis.plot(
                        [r["t1"]],
                        [r[column]],
                        "*",
                        markersize=12,
                        color=line.get_color(),
                        label=f"RK4 twin, {name}",
                    )
        axis.set_xscale("log")
        axis.set_xlabel("t1")
        axis.set_ylabel("robust accuracy (%)")
        axis.set_ylim(-2, 102)
        axis.set_title(f"{dataset}, ε = {e:g}")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def _gradient_figure(plan: Plan, results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Median ‖∇ₓ CE‖₁ against t1 with 10th–90th percentile bars (base: a line; RK4 twin: a star)."""
    plt = pyplot()
    datasets = _datasets(plan.scale)
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        points = sorted(
            (
                (_kind(label)[1], r["gradient_norms"])
                for label, r in results.items()
                if label.startswith(f"{dataset} ") and _kind(label)[0] == "adaptive"
            ),
            key=lambda p: p[0],
        )
        ts = [t for t, _ in points]
        medians = [max(g["median"], 1e-12) for _, g in points]
        low = [m - max(g["p10"], 1e-12) for m, (_, g) in zip(medians, points)]
        high = [max(g["p90"], 1e-12) - m for m, (_, g) in zip(medians, points)]
        axis.errorbar(ts, medians, yerr=[low, high], fmt="o-", capsize=3, label="ODE-net (dopri5)")
        base = results.get(f"{dataset} base")
        if base:
            axis.axhline(
                max(base["gradient_norms"]["median"], 1e-12),
                color="gray",
                linestyle=":",
                label="base (no ODE block)",
            )
        rk4 = results.get(f"{dataset} rk4 twin")
        if rk4:
            axis.plot(
                [T1[dataset][-1]],
                [max(rk4["gradient_norms"]["median"], 1e-12)],
                "*",
                markersize=12,
                label="RK4 twin",
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("t1")
        axis.set_ylabel("‖∇ₓ loss‖₁ (median, 10th–90th pct.)")
        axis.set_title(dataset)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)
