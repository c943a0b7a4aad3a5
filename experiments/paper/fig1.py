"""Figure 1: CIFAR-10 ResNets whose residual blocks are Euler steps y + h·f(y) with h = 10^0 … 10^-10,
accuracy on clean images and on FGSM images (ε = 0.1, 0.3, 0.5) crafted on a separate ResNet with three
residual blocks (transfer): four curves against h on a log axis.

The source ResNet is the CIFAR ResNet-8 (one block per stage, three residual blocks), h = 1, trained with
its own seed (1) so it is independent of the 11 targets. Beside each transfer number the report carries the
honest evaluation of each target (white-box suite + the same transfer, per-example worst case, flags).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from experiments.figures import pyplot, save_figure
from experiments.paper import scales
from experiments.paper.measure import constant_image_caps, honest, protocol, with_sanity_flag
from experiments.paper.report import (
    caption,
    flags_section,
    header,
    markdown_table,
    percent,
    sanity_section,
    write,
)
from experiments.paper.runtime import Context, RunDirectory
from experiments.paper.specs import Plan, model

TITLE = "Figure 1: accuracy vs ResNet step size h (CIFAR-10, FGSM transferred from a 3-block ResNet)"
EPS = (0.1, 0.3, 0.5)
PAPER_STEPS = tuple(10.0**-k for k in range(11))
PAPER_NOTE = (
    "The paper gives Figure 1 as curves only, with no numbers in its text, so the paper column is "
    "empty: compare the shapes with the paper's figure (its claim: smaller h does not make the ResNet "
    "robust to the transferred FGSM images)."
)
NOTES = {
    "smoke": ("plumbing test on tiny data, h ∈ {1, 1e-5, 1e-10}: numbers are meaningless",),
    "cpu": (
        "targets: CIFAR ResNet-20 (3 blocks per stage) instead of ResNet-56, all 11 step sizes",
        "training: Adam + one-cycle (lr 3e-3), batch 128, 3 epochs on the first 10k training images "
        "(crop + flip) instead of He et al.'s 164 epochs of SGD on 50k",
        "source: CIFAR ResNet-8 (three residual blocks), same recipe, seed 1",
        "attacked: the first 100 test images; FGSM exactly as the paper",
    ),
    "paper": (
        "He et al. 2016's recipe for the ResNet-56 targets and the ResNet-8 source (the paper names the "
        "hyper-parameters, not the source's recipe)",
    ),
}


def plan(scale: str) -> Plan:
    scales.check_scale(scale)
    if scale == "smoke":
        steps = (1.0, 1e-5, 1e-10)
        tiny = {"width": 2, "blocks_per_stage": 1, "in_channels": 3}
        targets = [
            model("mnist_resnet_small", "cifar10", scales.smoke_training(), step_size=h, **tiny)
            for h in steps
        ]
        source = model("mnist_resnet_small", "cifar10", scales.smoke_training(seed=1), **tiny)
    elif scale == "cpu":
        recipe = scales.cpu_training(3, 10_000, lr=3e-3, augment=True)
        targets = [model("resnet20", "cifar10", recipe, step_size=h) for h in PAPER_STEPS]
        source = model("resnet8", "cifar10", scales.cpu_training(3, 10_000, lr=3e-3, augment=True, seed=1))
        steps = PAPER_STEPS
    else:
        targets = [
            model("resnet56", "cifar10", scales.he_et_al(augment=True), step_size=h) for h in PAPER_STEPS
        ]
        source = model("resnet8", "cifar10", scales.he_et_al(augment=True, seed=1))
        steps = PAPER_STEPS
    models = (("source", source),) + tuple((f"h={h:g}", spec) for h, spec in zip(steps, targets))
    return Plan(
        "fig1",
        scale,
        models,
        (("cifar10", EPS),),
        scales.evaluation(scale),
        params=(("attack", "FGSM transfer"), ("step_sizes", tuple(steps))),
        verify_data=scale != "smoke",
        notes=NOTES[scale],
    )


def run(ctx: Context, plan: Plan, command: str = "") -> list[Path]:
    from attacks import FGSM, transfer

    started = time.perf_counter()
    run_dir = RunDirectory(ctx.out, plan)
    spec, models = plan.evaluation, plan.model_map
    eps = plan.eps_map["cifar10"]
    data = ctx.test_tensors("cifar10", spec.samples)
    source = ctx.trained("source", models["source"], spec.test_samples)
    fgsm = transfer("FGSM transfer", source.model, lambda e: FGSM(e))
    rows: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    failures: list[str] = []
    targets = [(label, s) for label, s in plan.models if label != "source"]
    bar = ctx.bar(len(targets), "fig1 step sizes")
    for label, target_spec in targets:
        entry = ctx.trained(label, target_spec, spec.test_samples)
        curve, seconds = protocol(
            run_dir,
            ctx,
            entry,
            {"FGSM transfer": (fgsm.factory, {"source": source.spec.key()})},
            eps,
            data,
            spec.batch_size,
        )
        timings[f"{label} FGSM transfer"] = seconds
        summary, seconds = honest(ctx, entry, eps, spec, data, {"source": source})
        timings[f"{label} honest"] = seconds
        summaries[label] = summary
        caps = constant_image_caps(entry, data, eps, spec.batch_size)
        h = dict(target_spec.kwargs)["step_size"]
        base = {
            "h": h,
            "architecture": target_spec.name,
            "paper": None,
            "flags_fired": "",
            "cap": None,
            "images": int(data[1].shape[0]),
        }
        rows.append(
            {
                **base,
                "curve": "clean",
                "eps": 0.0,
                "ours": round(100 * curve[0]["clean_accuracy"], 2),
                "worst_case": None,
                "model_flags": " ".join(summary["fired"]),
            }
        )
        for i, e in enumerate(eps):
            ours = curve[i]["robust_accuracy"]
            fired = with_sanity_flag(base["flags_fired"], label, "FGSM transfer", e, ours, caps[i], failures)
            rows.append(
                {
                    **base,
                    "curve": f"FGSM ε={e:g}",
                    "eps": e,
                    "ours": round(100 * ours, 2),
                    "worst_case": round(100 * summary["worst_case"][i], 2),
                    "cap": percent(caps[i]),
                    "flags_fired": fired,
                    "model_flags": "",
                }
            )
        bar.update(1)
    bar.close()
    lines = header(plan, TITLE, command) + [
        PAPER_NOTE,
        "",
        "Accuracy in % (FGSM crafted on the source, evaluated on the target; "
        "worst case: the honest evaluation of the target at that ε).",
        "",
    ]
    table = [
        [
            f"{r['h']:g}",
            r["curve"],
            "—",
            f"{r['ours']:.2f}",
            "—" if r["worst_case"] is None else f"{r['worst_case']:.2f}",
            "—" if r["cap"] is None else f"{r['cap']:.2f}",
            r["flags_fired"] or "—",
            r["model_flags"] if r["curve"] == "clean" else "",
        ]
        for r in rows
    ]
    columns = ["h", "curve", "paper", "ours", "worst case", "ε-sanity cap", "ε-sanity flag", "model's flags"]
    lines += markdown_table(columns, table)
    source_summary = ctx.trained("source", models["source"]).info
    lines += [
        f"Source `{source.spec.name}`: final test accuracy during training "
        f"{source_summary.get('final_test_accuracy')}.",
        "",
    ]
    lines += sanity_section(failures) + flags_section(summaries)
    return write(
        run_dir.folder,
        plan,
        markdown=lines,
        rows=rows,
        started=started,
        timings=timings,
        honest=summaries,
        models=ctx.model_records(models),
        eps_sanity_failures=failures,
        command=command,
        figures={
            "fig1.png": lambda path: _figure(
                rows, path, caption(plan, ctx.parameter_counts(models), spec.samples)
            )
        },
    )


def _figure(rows: list[dict[str, Any]], path: Path, note: str) -> Path:
    """The four curves against h (clean and FGSM transferred at each ε), each FGSM curve with the target's
    honest worst case at that ε dashed beside it in the same colour."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    for index, curve in enumerate(dict.fromkeys(r["curve"] for r in rows)):
        colour = f"C{index}"
        chosen = sorted((r for r in rows if r["curve"] == curve), key=lambda r: r["h"])
        hs = [r["h"] for r in chosen]
        axis.plot(hs, [r["ours"] for r in chosen], marker="o", color=colour, label=curve)
        if all(r["worst_case"] is not None for r in chosen):
            axis.plot(hs, [r["worst_case"] for r in chosen], ls="--", marker="s", color=colour, alpha=0.6,
                      label=f"{curve.replace('FGSM', 'suite worst case')} (white-box + transfer)")
    axis.set_xscale("log")
    axis.set(
        xlabel="step size h", ylabel="accuracy (%)", ylim=(-2, 102), title="CIFAR-10 ResNet, FGSM transfer"
    )
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path, note)
