"""Figures 2 and 3 share one shape: robust accuracy vs ε under one attack, ResNet vs ODE-net, one panel per
dataset (ε = 0 is clean accuracy), with the honest evaluation's worst case drawn beside each curve."""

from __future__ import annotations

import time
from collections.abc import Callable
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
from experiments.paper.specs import Plan

DATASETS = ("mnist", "cifar10")
EPS = {"mnist": scales.MNIST_CURVE_EPS, "cifar10": scales.CIFAR_CURVE_EPS}
MODEL_NOTES = {
    "smoke": ("plumbing test on tiny data: numbers are meaningless",),
    "cpu": (
        "the models are Table 1's at cpu scale (shared cache): `mnist_resnet_small` / `resnet20` and "
        "`odenet_mnist_small` / `odenet_cifar_small`, 2–3 epochs on 20k–60k training images",
        "attacked: the first 100 test images",
    ),
    "paper": ("the models are Table 1's (ResNet50 read as CIFAR ResNet-50; Appendix A ODE-nets)",),
}


def plan(artefact: str, scale: str, params: dict[str, Any], notes: tuple[str, ...]) -> Plan:
    models = tuple(
        (f"{dataset} {label}", spec)
        for dataset in DATASETS
        for label, spec in scales.table1_models(scale, dataset).items()
    )
    return Plan(
        artefact,
        scale,
        models,
        scales.eps_grid(scale, EPS),
        scales.evaluation(scale),
        params=tuple(sorted(params.items())),
        verify_data=scale != "smoke",
        notes=MODEL_NOTES[scale] + notes,
    )


def run(
    ctx: Context,
    plan: Plan,
    attack_name: str,
    factory: Callable[[float], Any],
    title: str,
    paper_note: str,
    command: str = "",
) -> list[Path]:
    started = time.perf_counter()
    run_dir = RunDirectory(ctx.out, plan)
    spec, models = plan.evaluation, plan.model_map
    rows: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    failures: list[str] = []
    bar = ctx.bar(2 * len(DATASETS), f"{plan.artefact} models")
    for dataset in DATASETS:
        eps = plan.eps_map[dataset]
        data = ctx.test_tensors(dataset, spec.samples)
        resnet = ctx.trained(f"{dataset} resnet", models[f"{dataset} resnet"], spec.test_samples)
        odenet = ctx.trained(f"{dataset} odenet", models[f"{dataset} odenet"], spec.test_samples)
        for entry, against in ((resnet, {}), (odenet, {"resnet": resnet})):
            curve, seconds = protocol(
                run_dir, ctx, entry, {attack_name: (factory, plan.param_map)}, eps, data, spec.batch_size
            )
            timings[f"{entry.label} {attack_name}"] = seconds
            summary, seconds = honest(ctx, entry, eps, spec, data, against)
            timings[f"{entry.label} honest"] = seconds
            summaries[entry.label] = summary
            caps = constant_image_caps(entry, data, eps, spec.batch_size)
            for i, e in enumerate(eps):
                ours = curve[i]["clean_accuracy"] if e == 0 else curve[i]["robust_accuracy"]
                fired = ""
                if e > 0:
                    fired = with_sanity_flag(fired, entry.label, attack_name, e, ours, caps[i], failures)
                rows.append(
                    {
                        "dataset": dataset,
                        "model": entry.label.split()[1],
                        "architecture": entry.spec.name,
                        "attack": attack_name,
                        "eps": round(e, 6),
                        "eps_255": round(255 * e, 2),
                        "paper": None,
                        "ours": round(100 * ours, 2),
                        "worst_case": round(100 * summary["worst_case"][i], 2),
                        "protocol_pgd": round(100 * summary["protocol"][i], 2),
                        "cap": percent(caps[i]),
                        "flags_fired": fired,
                        "model_flags": " ".join(summary["fired"]) if i == 0 else "",
                        "images": int(data[1].shape[0]),
                    }
                )
            bar.update(1)
    bar.close()
    lines = header(plan, title, command) + [paper_note, ""]
    for dataset in DATASETS:
        lines += [f"## {dataset}", ""]
        table = [
            [
                r["model"],
                f"{r['eps']:g}" if dataset == "mnist" else f"{r['eps_255']:g}/255",
                "—",
                f"{r['ours']:.2f}",
                f"{r['protocol_pgd']:.2f}",
                f"{r['worst_case']:.2f}",
                "—" if r["cap"] is None else f"{r['cap']:.2f}",
                r["flags_fired"] or "—",
            ]
            for r in rows
            if r["dataset"] == dataset
        ]
        lines += markdown_table(
            [
                "model",
                "ε",
                "paper",
                f"ours ({attack_name})",
                "PGD-40 (paper protocol)",
                "worst case",
                "ε-sanity cap",
                "ε-sanity flag",
            ],
            table,
        )
        for model in ("resnet", "odenet"):
            fired = summaries[f"{dataset} {model}"]["fired"]
            lines.append(
                f"- {dataset} {model}: flags of its honest evaluation: "
                + (", ".join(f"`{name}` fired" for name in fired) if fired else "none fired")
            )
        lines.append("")
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
        command=command,
        figures={
            f"{plan.artefact}.png": lambda path: _figure(
                rows, attack_name, title, path, caption(plan, ctx.parameter_counts(models), spec.samples)
            )
        },
        eps_sanity_failures=failures,
    )


def _figure(rows: list[dict[str, Any]], attack_name: str, title: str, path: Path, note: str) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(DATASETS), figsize=(11, 4), squeeze=False)
    for axis, dataset in zip(axes[0], DATASETS):
        for model, colour in (("resnet", "tab:blue"), ("odenet", "tab:red")):
            points = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
            xs = [r["eps"] if dataset == "mnist" else r["eps_255"] for r in points]
            label = "ResNet" if model == "resnet" else "ODE-net"
            axis.plot(
                xs, [r["ours"] for r in points], marker="o", color=colour, label=f"{label} ({attack_name})"
            )
            axis.plot(
                xs,
                [r["worst_case"] for r in points],
                ls="--",
                marker="s",
                color=colour,
                alpha=0.6,
                label=f"{label} (suite worst case)",
            )
        axis.set(
            title="MNIST" if dataset == "mnist" else "CIFAR-10",
            xlabel="ε" if dataset == "mnist" else "ε (×1/255)",
            ylabel="accuracy (%)",
            ylim=(-2, 102),
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path, note)
