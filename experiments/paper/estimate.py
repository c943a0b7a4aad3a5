"""``--plan``: every model an artefact trains and every evaluation it runs, with estimated time and memory on
this machine and on a GPU, printed before anything runs.

Basis (printed with the estimate):

* **Calibration.** Each distinct architecture (step size aside) is built untrained and timed on random inputs
  of its dataset's shape, at the largest batch up to :data:`MAX_CALIBRATION_BATCH` (and the run's batch)
  whose forward pass a probe at batch 2 predicts to take about :data:`TARGET_FORWARD_S`: one warm-up, then
  up to :data:`TIMED_STEPS` training steps with the model's own loss (an adversarial-training loss runs its
  attack), as many forward + input-gradient passes in eval mode (the unit of an attack) and forward passes.
  CPU time per image falls with the batch, so a small calibration batch overestimates. An ODE-net is timed
  with the solver work it does untrained; training changes its NFE (up or down), so its estimates are
  rougher than the others'.
* **Time here** = measured CPU seconds of this process per image × images: the process's CPU time is what
  other jobs' load does not change, and what a run takes on a quiet machine at one thread. Training: steps
  × batch × epochs, plus a forward pass over the per-epoch test images. Evaluation: a range. Its lower
  bound assumes the first attack of the cascade fools every image (APGD-CE, the protocol PGD, the
  convergence check and the artefact's own attacks still run); its upper bound that every image reaches
  every attack of the cascade (the suite attacks only what is still robust): per image and ε, APGD-CE
  ``steps``, APGD-T ``steps × targets``, Square ``queries`` forward passes (a third of a gradient pass
  each), the protocol PGD, for ODE models the three solver-aware APGDs and every transfer APGD, the
  convergence check once on its subset, and the artefact's own attacks (:data:`PROTOCOL_PASSES`).
* **Memory** = parameters × 4 bytes × (weights, gradients, optimiser state) + the tensors autograd saves
  for the backward pass (counted with ``torch.autograd.graph.saved_tensors_hooks`` at the calibration
  batch, scaled linearly to the run's batch). The same figure applies to a GPU (plus the CUDA context).
* **GPU time** = FLOPs counted by ``torch.utils.flop_counter`` on the same passes ÷ :data:`GPU_FLOPS`, an
  *assumed* sustained rate: uncalibrated, no GPU measured it. (An adversarial-training step, whose
  ``autograd.grad`` the counter cannot follow, is counted as gradient passes in proportion to its time.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.models import ModelSpec
from experiments.paper.specs import Plan

#: the largest calibration batch, the forward time it aims at, timed steps after one warm-up (at most
#: TIMED_BUDGET_S seconds of them per kind of pass)
MAX_CALIBRATION_BATCH = 32
TARGET_FORWARD_S = 0.5
TIMED_STEPS = 2
TIMED_BUDGET_S = 10.0
#: the assumed sustained FP32 rate of "a GPU" (about a third of an A100's 19.5 TFLOP/s FP32 peak, a quarter
#: of an H100's): an assumption, not a measurement
GPU_FLOPS = 7e12
#: training and test images of each dataset, and its image shape
DATASET_SIZES = {"mnist": (60_000, 10_000, (1, 28, 28)), "cifar10": (50_000, 10_000, (3, 32, 32))}
#: gradient passes per image and ε of each artefact's own (paper-protocol) attacks, from its parameters
PROTOCOL_PASSES: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "table1": lambda params: 1.0,  # FGSM
    "fig2": lambda params: float(params.get("steps", 10)),  # DI²-FGSM
    "fig3": lambda params: params.get("queries", 1000) / 3,  # Boundary: forward queries
    "table2": lambda params: float(params.get("pgd_steps", 20)),  # PGD-20
    "fig1": lambda params: 1.0,  # FGSM on the source
}


@dataclass(frozen=True)
class Calibration:
    """Measured on this machine for one architecture: seconds and FLOPs per image of a training step and of
    a forward + input-gradient pass, and the bytes autograd saves per image."""

    train_s: float
    grad_s: float
    forward_s: float
    train_flops: float
    grad_flops: float
    saved_bytes: float
    parameters: int
    batch: int


def _loss(spec: ModelSpec) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    return spec.loss.loss_fn(spec.train.seed)


def _inputs(spec: ModelSpec, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = DATASET_SIZES[spec.dataset][2]
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, *shape, generator=generator), torch.randint(0, 10, (batch,), generator=generator)


def _saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Bytes of the distinct tensors autograd saves for the backward pass of a cross-entropy loss on x."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta":
            key = (tensor.untyped_storage().data_ptr(), tensor.numel())
            seen[key] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(sum(seen.values()))


def calibration_batch(model: nn.Module, spec: ModelSpec) -> int:
    """The batch whose forward pass a probe at batch 2 predicts at about :data:`TARGET_FORWARD_S`, within
    2 … min(:data:`MAX_CALIBRATION_BATCH`, the run's batch)."""
    x, _ = _inputs(spec, 2)
    model.eval()
    started = time.process_time()
    with torch.no_grad():
        model(x)
    per_image = max((time.process_time() - started) / 2, 1e-6)
    limit = min(MAX_CALIBRATION_BATCH, spec.train.batch_size)
    return max(2, min(limit, int(TARGET_FORWARD_S / per_image)))


def calibrate(spec: ModelSpec) -> Calibration:
    """Time and count one architecture's passes (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = spec.build()
    batch = calibration_batch(model, spec)
    x, y = _inputs(spec, batch)
    loss_fn = _loss(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        optimizer.step()

    def grad_pass() -> None:
        model.eval()
        inputs = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(inputs), y).backward()
        model.zero_grad(set_to_none=True)

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def timed(step: Callable[[], None]) -> float:
        step()  # warm-up
        started, done = time.process_time(), 0
        while done < TIMED_STEPS and (done == 0 or time.process_time() - started < TIMED_BUDGET_S):
            step()
            done += 1
        return (time.process_time() - started) / (done * batch)

    def flops(step: Callable[[], None]) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return counter.get_total_flops() / batch

    model.train()
    saved = _saved_bytes(model, x, y) / batch
    train_s, grad_s = timed(train_step), timed(grad_pass)
    grad_flops = flops(grad_pass)
    try:
        train_flops = flops(train_step)
    except RuntimeError:  # the FLOP counter's hooks refuse the autograd.grad inside an adversarial loss
        train_flops = grad_flops * train_s / grad_s  # its passes, in proportion to their measured time
    return Calibration(
        train_s=train_s,
        grad_s=grad_s,
        forward_s=timed(forward),
        train_flops=train_flops,
        grad_flops=grad_flops,
        saved_bytes=saved,
        parameters=sum(p.numel() for p in model.parameters()),
        batch=batch,
    )


def _calibration_key(spec: ModelSpec) -> tuple:
    kwargs = tuple((k, v) for k, v in spec.kwargs if k != "step_size")  # h does not change the cost
    loss = spec.loss
    return (spec.name, spec.dataset, kwargs, loss.kind, loss.steps, loss.yopo_m, loss.yopo_n)


def _optimizer_copies(spec: ModelSpec) -> int:
    """Weights + gradients + optimiser state (Adam: 2 moments; SGD with momentum: 1)."""
    return 2 + (2 if spec.train.optimizer == "adam" else 1 if spec.train.momentum else 0)


def evaluation_passes(plan: Plan, is_ode: bool, transfers: int, eps_count: int) -> tuple[float, float]:
    """Gradient passes per attacked image and ε of the honest evaluation plus the artefact's own attacks:
    (lower bound: the cascade's first attack fools every image, upper bound: every image reaches every
    attack)."""
    from attacks.suite import PRESETS

    config = plan.evaluation.config((0.1,), ode=is_ode)
    base = PRESETS["quick" if config.preset in ("quick", "ode-quick") else "standard"]
    steps = config.steps or base["steps"]
    targets = config.target_classes or base["targets"]
    queries = config.queries or base["queries"]
    always = steps + unsharded_passes(plan, is_ode, eps_count)
    cascade = steps * targets + queries / 3 + transfers * steps
    if config.preset.startswith("ode") and is_ode:
        cascade += 3 * steps  # the surrogate-solver and adjoint-gradient APGDs
    return always, always + cascade


def unsharded_passes(plan: Plan, is_ode: bool, eps_count: int) -> float:
    """The part of :func:`evaluation_passes` that data-parallel processes do not share (each process, or
    rank 0 alone, runs it whole): the protocol PGD, the convergence check (once per evaluation, on its subset,
    spread here over the ε grid) and the artefact's own attacks."""
    spec = plan.evaluation
    config = spec.config((0.1,), ode=is_ode)
    own = PROTOCOL_PASSES.get(plan.artefact)
    checked = min(config.convergence_samples, spec.samples)
    return (config.protocol_steps + (own(plan.param_map) if own else 0.0)
            + sum(config.convergence_steps) * checked / (spec.samples * max(eps_count, 1)))


def parallel_time(seconds: float, unsharded_fraction: float, ways: int) -> float:
    """Wall time of work taking ``seconds`` in one process when all but ``unsharded_fraction`` of it is split
    evenly ``ways`` ways (Amdahl; communication and imbalance not counted)."""
    return seconds * (unsharded_fraction + (1 - unsharded_fraction) / ways)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.0f} KiB"


def plan_lines(
    plans: Mapping[str, Plan],
    out: Path,
    calibrate_fn: Callable[[ModelSpec], Calibration] | None = None,
    processes: int = 1,
    models: str | Path | None = None,
) -> list[str]:
    """The --plan report of ``plans`` (artefact -> Plan), calibrating each distinct architecture once with
    ``calibrate_fn`` (default :func:`calibrate`), for ``processes`` data-parallel processes (torchrun's K:
    training split K ways at the same global batch, the suite's batches dealt to min(K, batches) processes,
    the rest of an evaluation unshared); ``models``: the model cache (default
    :func:`experiments.models.models_dir`'s)."""
    calibrate_fn = calibrate_fn or calibrate
    from experiments.models import cache_folder, models_dir
    from storage.code_version import describe_change

    calibrations: dict[tuple, Calibration] = {}
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines: list[str] = []
    totals = {"cpu": 0.0, "cpu_high": 0.0, "gpu": 0.0, "gpu_high": 0.0}
    trained: set[str] = set()
    for artefact, plan in plans.items():
        lines += [f"== {artefact} at scale {plan.scale}: {len(plan.models)} models, "
                  f"{plan.evaluation.samples} attacked images", ""]
        lines.append(f"  {'model':<16} {'architecture':<22} {'training':<34} {'here':>9} {'GPU*':>9} "
                     f"{'memory':>10}  calibration")
        model_rows, eval_rows = [], []
        for label, spec in plan.models:
            key = _calibration_key(spec)
            if key not in calibrations:
                calibrations[key] = calibrate_fn(spec)
            cal = calibrations[key]
            n_train, n_test, _ = DATASET_SIZES[spec.dataset]
            images = min(spec.limit_train or n_train, n_train)
            per_epoch_test = min(plan.evaluation.test_samples or n_test, n_test)
            epochs = spec.train.epochs
            here = epochs * (images * cal.train_s + per_epoch_test * cal.forward_s) / processes
            flops = epochs * (images * cal.train_flops + per_epoch_test * cal.grad_flops / 3)
            gpu = flops / GPU_FLOPS / processes
            memory = (cal.parameters * 4 * _optimizer_copies(spec)
                      + cal.saved_bytes * spec.train.batch_size / processes)
            folder = cache_folder(spec, models_dir(out, models))
            status = ""
            if (folder / "model.pt").is_file():
                try:
                    stored = json.loads((folder / "code.json").read_text()).get("code")
                except (OSError, ValueError, AttributeError):
                    stored = None
                status = " [cached]" if not describe_change(stored, spec.code()) else " [cached, stale]"
            shared = spec.key() in trained
            trained.add(spec.key())
            recipe = f"{epochs} ep × {images} img, batch {spec.train.batch_size}"
            if spec.loss.adversarial:
                recipe += f", {spec.loss.kind}"
            if not shared and "[cached]" not in status:
                for name, value in (("cpu", here), ("cpu_high", here), ("gpu", gpu), ("gpu_high", gpu)):
                    totals[name] += value
            note = " (shared, counted once)" if shared else status
            model_rows.append(f"  {label:<16} {spec.name:<22} {recipe:<34} {_duration(here):>9} "
                              f"{_duration(gpu):>9} {_size(memory):>10}  batch {cal.batch}: "
                              f"{1000 * cal.train_s:.1f} ms/img/step{note}")
        lines += model_rows + [""]
        transfers_by_label = _transfers(plan)
        lines.append(f"  {'evaluation':<16} {'preset':<22} {'images × ε × passes/image':<34} "
                     f"{'here':>19} {'GPU*':>19} {'memory':>10}")
        for label, spec in plan.models:
            if label in transfers_by_label.get("skip", ()):
                continue
            cal = calibrations[_calibration_key(spec)]
            is_ode = spec.name.startswith("odenet")
            grid = plan.eps_map.get(spec.dataset, ())
            low, high = evaluation_passes(plan, is_ode, transfers_by_label.get(label, 0), len(grid))
            work = plan.evaluation.samples * len(grid)
            unshared = unsharded_passes(plan, is_ode, len(grid))
            ways = min(processes, -(-plan.evaluation.samples // plan.evaluation.batch_size))
            here = [parallel_time(work * passes * cal.grad_s, unshared / passes, ways)
                    for passes in (low, high)]
            gpu = [parallel_time(work * passes * cal.grad_flops / GPU_FLOPS, unshared / passes, ways)
                   for passes in (low, high)]
            memory = cal.parameters * 4 * 2 + cal.saved_bytes * plan.evaluation.batch_size
            preset = plan.evaluation.ode_preset if is_ode else plan.evaluation.preset
            for bound, (cpu_s, gpu_s) in enumerate(zip(here, gpu)):
                totals[("cpu", "cpu_high")[bound]] += cpu_s
                totals[("gpu", "gpu_high")[bound]] += gpu_s
            shape = f"{plan.evaluation.samples} × {len(grid)} × {low:.0f}–{high:.0f}"
            eval_rows.append(f"  {label:<16} {preset:<22} {shape:<34} "
                             f"{_duration(here[0]) + ' – ' + _duration(here[1]):>19} "
                             f"{_duration(gpu[0]) + ' – ' + _duration(gpu[1]):>19} {_size(memory):>10}")
        lines += eval_rows + [""]
    threads = torch.get_num_threads()
    gpus = "one GPU*" if processes == 1 else f"{processes} GPUs*"
    here_what = "here" if processes == 1 else f"here × {processes} processes"
    lines += [
        "Total (models not yet cached, each once; evaluations between their bounds): "
        f"{here_what} {_duration(totals['cpu'])} – {_duration(totals['cpu_high'])}, on {gpus} "
        f"{_duration(totals['gpu'])} – {_duration(totals['gpu_high'])}.",
        "",
        *_processes_basis(processes),
        f"Basis: each distinct architecture built untrained and timed here in CPU seconds of this process "
        f"(what a quiet machine takes; {threads} torch thread(s), load average {load:.1f} at the start, "
        f"calibration {time.perf_counter() - started:.0f} s wall) on random "
        "inputs at the batch shown (up to 32; a smaller one overestimates): one warm-up, then up to "
        f"{TIMED_STEPS} training steps with its loss, {TIMED_STEPS} forward + input-gradient passes and "
        f"{TIMED_STEPS} forward passes; time scales linearly in images. ODE-nets are timed with the solver "
        "work they do untrained (training changes their NFE): their estimates are the roughest.",
        "Evaluations: from the first attack of the cascade fooling every image (APGD-CE, protocol PGD, "
        "convergence check and the artefact's own attacks still run) to every image reaching every attack "
        "(+ APGD-T, Square at a third of a pass per query, solver-aware and transfer APGDs).",
        "Memory: parameters × 4 B × (weights, gradients, optimiser state) + autograd's saved tensors per "
        "image (counted) × batch; the same on a GPU, plus its CUDA context.",
        f"GPU*: FLOPs counted by torch.utils.flop_counter on the same passes ÷ an assumed sustained "
        f"{GPU_FLOPS / 1e12:g} TFLOP/s FP32. UNCALIBRATED: no GPU measured it.",
    ]
    return lines


def _processes_basis(processes: int) -> list[str]:
    """How the figures above scale with K data-parallel processes (torchrun --nproc_per_node K)."""
    if processes == 1:
        return [
            "One process. Under torchrun --nproc_per_node K (each process with its own GPU, or its own CPU "
            "cores): training time ÷ K, the suite's share of an evaluation ÷ min(K, its batches); see --plan "
            "--processes K.",
            "",
        ]
    return [
        f"{processes} data-parallel processes (torchrun --nproc_per_node {processes}), each with its own GPU "
        "or CPU cores: training time ÷ K (the recipe's global batch split, B/K images per process: "
        "activation memory ÷ K per process, weights and optimiser state whole in each); evaluations: the "
        "suite's batches dealt to min(K, batches) processes (its time ÷ that), the protocol PGD, the "
        "convergence check and the artefact's own attacks unshared (whole in each process or on rank 0); "
        "evaluation memory per process unchanged. Gradient all-reduce, the per-record gathers and "
        "imbalance between processes are not counted: a lower bound on the wall time.",
        "",
    ]


def _transfers(plan: Plan) -> dict[str, Any]:
    """Per model label: the transfer sources its honest evaluation attacks from (as the artefacts pass
    ``against``); ``"skip"``: labels that are not evaluated (Figure 1's source)."""
    labels = [label for label, _ in plan.models]
    out: dict[str, Any] = {}
    if plan.artefact in ("table1", "fig2", "fig3"):
        out.update({label: 1 for label in labels if label.endswith("odenet")})
    elif plan.artefact == "table2":
        out["odenet"] = 1
    elif plan.artefact == "fig1":
        out.update({label: 1 for label in labels if label != "source"})
        out["skip"] = ("source",)
    return out


def print_plan(plans: Mapping[str, Plan], out: Path, device: torch.device, processes: int = 1,
               models: str | Path | None = None) -> None:
    """Print :func:`plan_lines` (``device`` is where the run would go, in ``processes`` data-parallel
    processes; the calibration runs on the CPU)."""
    where = f"would run on {device}" + (f" in {processes} processes" if processes > 1 else "")
    print(f"Plan ({where}); calibrating each architecture here first ...", flush=True)
    print("\n".join(plan_lines(plans, out, processes=processes, models=models)), flush=True)
