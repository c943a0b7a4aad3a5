"""The indicators of attack failure of Pintor et al. (NeurIPS 2022, "Indicators of Attack Failure: Debugging
and Improving Optimization of Adversarial Examples"), each a :class:`~attacks.checks.Flag`.

Each indicator names one way a robustness number can be wrong because the *attack* failed, with a test:

* ``unavailable-gradients``: the input gradient of the cross-entropy is identically zero or non-finite at
  more than ``tolerance`` of the (clean) samples (e.g. a non-differentiable preprocessing step);
* ``unstable-predictions``: the loss moves by more than ``relative_change`` of itself (or the prediction
  flips) under uniform noise of ``noise_fraction * eps`` for more than ``UNSTABLE_SHARE`` of the samples (a
  noisy forward pass, a shattered loss landscape; a smooth model's few samples on its decision boundary move
  that much by curvature alone: 2 of 50 on the main job's plainly trained ResNet);
* ``silent-success``: the attack queried a point inside the ball that the model misclassifies, yet returned
  a point that is not adversarial;
* ``incomplete-optimisation``: for the samples the attack failed on, the best loss so far still rose over the
  last ``window`` of its in-ball queries by more than ``relative_change`` of its total rise;
* ``transfer-failure``: adversarials crafted on a surrogate fool the surrogate but not the deployed model
  (more than half of them): the surrogate does not stand for the model;
* ``unconstrained-attack-failure``: at eps = inf (the ball covers the whole box: eps = 1 for L-inf,
  ``sqrt(d)`` for L2) the attack leaves more than ``tolerance`` of the samples correctly classified.

``silent-success`` and ``incomplete-optimisation`` read the attack's path: :class:`QueryTrace` wraps the
model and logs, for each queried row, the sample it belongs to (the nearest clean point; counted only when
inside that sample's ball), its cross-entropy and whether it is misclassified. They work for any attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .apgd import APGD
from .base import Attack, NonFiniteLogitsError, eval_mode, model_device, perturbation_size
from .flags import Flag
from .suite import SuiteAttack, _Transfer

__all__ = [
    "attack_failure_flags",
    "QueryTrace",
    "traced_attack",
    "unavailable_gradients",
    "unstable_predictions",
    "silent_success",
    "incomplete_optimisation",
    "transfer_failure",
    "unconstrained_attack_failure",
    "unconstrained_eps",
]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def unavailable_gradients(model: nn.Module, x: Tensor, y: Tensor, tolerance: float = 0.01) -> Flag:
    """Fires when ``grad_x CE(f(x), y)`` is identically zero or non-finite for more than ``tolerance``."""
    device = model_device(model)
    z = x.detach().to(device).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        loss = F.cross_entropy(model(z), y.to(device), reduction="sum")
        (gradient,) = torch.autograd.grad(loss, z, allow_unused=True)
    if gradient is None:
        gradient = torch.zeros_like(z)
    l1 = gradient.flatten(1).abs().sum(dim=1)
    zero, nonfinite = float((l1 == 0).float().mean()), float((~torch.isfinite(l1)).float().mean())
    numbers = {
        "samples": int(x.shape[0]),
        "zero_fraction": zero,
        "nonfinite_fraction": nonfinite,
        "median_gradient_l1": float(l1.nan_to_num(nan=math.inf).median()),
    }
    if zero + nonfinite > tolerance:
        return Flag(
            "unavailable-gradients",
            True,
            f"input gradients are zero for {_percent(zero)} and non-finite for {_percent(nonfinite)} of "
            "the samples: gradient-based attacks cannot move (use BPDA or a gradient-free attack)",
            numbers,
        )
    return Flag("unavailable-gradients", False, "input gradients are non-zero and finite", numbers)


#: share of samples whose loss may move by curvature alone before ``unstable-predictions`` fires: a noisy
#: forward pass moves most samples, a plainly trained ResNet's boundary samples a few percent
UNSTABLE_SHARE = 0.1


@torch.no_grad()
def unstable_predictions(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    *,
    draws: int = 8,
    noise_fraction: float = 0.1,
    relative_change: float = 0.1,
    tolerance: float = UNSTABLE_SHARE,
    seed: int = 0,
) -> Flag:
    """Fires when, under ``draws`` uniform perturbations of size ``noise_fraction * eps``, the cross-entropy
    moves by more than ``relative_change * (|L(x)| + 0.01)`` or the prediction flips, for more than
    ``tolerance`` of the samples."""
    device = model_device(model)
    x, y = x.detach().to(device), y.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    radius = noise_fraction * eps
    with eval_mode(model):
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        change = torch.zeros_like(loss)
        flipped = torch.zeros_like(loss, dtype=torch.bool)
        for _ in range(draws):
            u = 2 * torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype) - 1
            if norm == "l2":
                u = u / perturbation_size(u, "l2").view(-1, *([1] * (x.dim() - 1)))
            noisy = model((x + radius * u).clamp(0, 1))
            change = torch.maximum(change, (F.cross_entropy(noisy, y, reduction="none") - loss).abs())
            flipped |= noisy.argmax(1) != logits.argmax(1)
    relative = change / (loss.abs() + 0.01)
    unstable = (relative > relative_change) | flipped
    fraction = float(unstable.float().mean())
    numbers = {
        "samples": int(x.shape[0]),
        "radius": radius,
        "draws": draws,
        "unstable_fraction": fraction,
        "flipped_fraction": float(flipped.float().mean()),
        "median_relative_change": float(relative.median()),
    }
    if fraction > tolerance:
        return Flag(
            "unstable-predictions",
            True,
            f"noise of size {radius:.3g} moves the loss by more than {100 * relative_change:g}% (or flips "
            f"the prediction) for {_percent(fraction)} of the samples: the loss the attack follows is "
            "noisy (average over noise: EOT)",
            numbers,
        )
    return Flag(
        "unstable-predictions",
        False,
        f"the loss is stable under noise of size {radius:.3g} (median relative change "
        f"{float(relative.median()):.2g})",
        numbers,
    )


class QueryTrace(nn.Module):
    """The model, logging every query of an attack against the clean batch ``x`` (labels ``y``).

    For each queried row: ``owner`` (index of the nearest clean point in L2), ``inside`` (within ``eps`` of
    it in ``norm``, up to rounding), its cross-entropy against the owner's label and whether it is
    misclassified. Logged in call order, so per sample the log is the attack's path.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str) -> None:
        super().__init__()
        self.model, self.eps, self.norm = model, eps, norm
        self.register_buffer("clean", x.detach().flatten(1).clone(), persistent=False)
        self.register_buffer("labels", y.detach().clone(), persistent=False)
        self.log: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def forward(self, z: Tensor) -> Tensor:
        logits = self.model(z)
        with torch.no_grad():
            flat = z.detach().flatten(1)
            owner = torch.cdist(flat, self.clean).argmin(dim=1)
            distance = perturbation_size(flat - self.clean[owner], self.norm)
            inside = distance <= self.eps * (1 + 1e-5) + 1e-7
            detached = logits.detach()
            label = self.labels[owner]
            loss = F.cross_entropy(detached, label, reduction="none")
            wrong = (detached.argmax(1) != label) & torch.isfinite(detached).all(1)
            self.log.append((owner.cpu(), inside.cpu(), loss.cpu(), wrong.cpu()))
        return logits

    def paths(self) -> list[tuple[Tensor, Tensor]]:
        """Per sample: the in-ball queries' losses and misclassification flags, in call order."""
        if not self.log:
            return [(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) for _ in range(self.labels.shape[0])]
        owner, inside, loss, wrong = (torch.cat(parts) for parts in zip(*self.log))
        return [
            (loss[(owner == i) & inside], wrong[(owner == i) & inside]) for i in range(self.labels.shape[0])
        ]


def traced_attack(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, eps: float, norm: str = "linf"
) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """Run ``attack`` through a :class:`QueryTrace`. Returns ``(x_adv, fooled, paths)``: ``fooled`` verified
    on the model (misclassified, inside the ball and the box)."""
    device = model_device(model)
    x, y = x.detach().to(device), y.to(device)
    trace = QueryTrace(model, x, y, eps, norm).to(device)
    with eval_mode(model):
        x_adv = attack(trace, x, y)
        with torch.no_grad():
            logits = model(x_adv)
    inside = perturbation_size(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7
    in_box = (x_adv.flatten(1) >= 0).all(1) & (x_adv.flatten(1) <= 1).all(1)
    fooled = (logits.argmax(1) != y) & inside & in_box
    return x_adv, fooled.cpu(), trace.paths()


def silent_success(fooled: Tensor, paths: list[tuple[Tensor, Tensor]], name: str = "the attack") -> Flag:
    """Fires when a sample's path holds an in-ball misclassified point but its returned point is not one."""
    found = torch.tensor([bool(wrong.any()) for _, wrong in paths], dtype=torch.bool)
    silent = found & ~fooled
    numbers = {
        "samples": len(paths),
        "found_on_path": int(found.sum()),
        "returned_adversarial": int(fooled.sum()),
        "silent": int(silent.sum()),
        "silent_indices": silent.nonzero().squeeze(1)[:20].tolist(),
    }
    if bool(silent.any()):
        return Flag(
            "silent-success",
            True,
            f"{name} passed through an adversarial point inside the ball for {int(silent.sum())} samples "
            "but returned a non-adversarial one: keep the best point of the path",
            numbers,
        )
    return Flag("silent-success", False, f"{name} returned every adversarial it found", numbers)


def incomplete_optimisation(
    fooled: Tensor,
    paths: list[tuple[Tensor, Tensor]],
    name: str = "the attack",
    *,
    window: float = 0.1,
    relative_change: float = 0.05,
    tolerance: float = 0.01,
) -> Flag:
    """Fires when, on more than ``tolerance`` of the failed samples, the best cross-entropy so far rose over
    the last ``window`` of the path by more than ``relative_change`` of its rise over the whole path."""
    still_rising, failed = 0, 0
    tail_gains: list[float] = []
    for sample_fooled, (loss, _) in zip(fooled.tolist(), paths):
        if sample_fooled or loss.numel() < 2:
            continue
        failed += 1
        best = torch.cummax(loss.double(), dim=0).values
        last = max(1, math.ceil(window * loss.numel()))
        total = float(best[-1] - best[0])
        tail = float(best[-1] - best[-1 - last]) if last < loss.numel() else total
        gain = tail / total if total > 0 else 0.0
        tail_gains.append(gain)
        still_rising += gain > relative_change
    fraction = still_rising / failed if failed else 0.0
    numbers = {
        "failed_samples": failed,
        "still_rising": still_rising,
        "fraction": fraction,
        "median_tail_gain": float(torch.tensor(tail_gains).median()) if tail_gains else 0.0,
        "window": window,
    }
    if failed and fraction > tolerance:
        return Flag(
            "incomplete-optimisation",
            True,
            f"{name} stopped while the loss was still rising: on {still_rising} of {failed} failed "
            f"samples the last {100 * window:g}% of the path gave more than {100 * relative_change:g}% of "
            "the total gain (run more iterations)",
            numbers,
        )
    return Flag(
        "incomplete-optimisation",
        False,
        f"{name} converged: the loss had stopped rising on the failed samples"
        if failed
        else f"not tested: {name} fooled every sample",
        numbers,
    )


def transfer_failure(
    model: nn.Module,
    source: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    name: str = "transfer",
    threshold: float = 0.5,
) -> Flag:
    """Fires when more than ``threshold`` of the adversarials that fool ``source`` (crafted on it by
    ``attack``) do not fool the deployed ``model``."""
    device = model_device(model)
    x, y = x.detach().to(device), y.to(device)
    with eval_mode(source), eval_mode(model):
        x_adv = attack(source, x, y)
        with torch.no_grad():
            on_source = source(x_adv).argmax(1) != y
            on_model = model(x_adv).argmax(1) != y
    inside = perturbation_size(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7
    on_source, on_model = (on_source & inside).cpu(), (on_model & inside).cpu()
    crafted = int(on_source.sum())
    failed = int((on_source & ~on_model).sum())
    rate = failed / crafted if crafted else 0.0
    numbers = {
        "samples": int(x.shape[0]),
        "fool_source": crafted,
        "fool_both": crafted - failed,
        "failure_rate": rate,
    }
    if crafted and rate > threshold:
        return Flag(
            "transfer-failure",
            True,
            f"{name}: {failed} of {crafted} adversarials that fool the surrogate do not fool the model: the "
            "surrogate does not stand for it, so its number says nothing",
            numbers,
        )
    if not crafted:
        return Flag(
            "transfer-failure", False, f"not tested: {name} fooled no sample on its surrogate", numbers
        )
    return Flag(
        "transfer-failure",
        False,
        f"{name}: {_percent(1 - rate)} of the surrogate's adversarials transfer",
        numbers,
    )


def unconstrained_eps(x: Tensor, norm: str) -> float:
    """The radius at which the ball contains the whole box [0, 1]^d: 1 (L-inf) or sqrt(d) (L2)."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


def unconstrained_attack_failure(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    factory: Callable[[float], Attack],
    norm: str = "linf",
    name: str = "the attack",
    tolerance: float = 0.01,
) -> Flag:
    """Fires when ``factory(eps = inf)`` leaves more than ``tolerance`` of the correctly classified samples
    correctly classified (with the whole box allowed, every point must fall)."""
    device = model_device(model)
    x, y = x.detach().to(device), y.to(device)
    eps = unconstrained_eps(x, norm)
    with eval_mode(model), torch.no_grad():
        correct = model(x).argmax(1) == y
    if not bool(correct.any()):
        return Flag("unconstrained-attack-failure", False, "not tested: no correctly classified sample")
    x_adv = factory(eps)(model, x[correct], y[correct])
    with eval_mode(model), torch.no_grad():
        survived = model(x_adv).argmax(1) == y[correct]
    fraction = float(survived.float().mean())
    numbers: dict[str, Any] = {
        "eps": eps,
        "attacked": int(correct.sum()),
        "survived": int(survived.sum()),
        "survived_fraction": fraction,
    }
    if fraction > tolerance:
        return Flag(
            "unconstrained-attack-failure",
            True,
            f"at eps = inf {name} leaves {_percent(fraction)} of the samples correctly classified: the "
            "attack, not the model, is failing",
            numbers,
        )
    return Flag("unconstrained-attack-failure", False, f"at eps = inf {name} fools every sample", numbers)


def attack_failure_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    attacks: Sequence[SuiteAttack] | None,
    *,
    norm: str = "linf",
    tolerance: float = 0.01,
    seed: int = 0,
) -> list[Flag]:
    """The six indicators on ``(x, y)`` (correctly classified samples) at ``eps``: the probe attack is the
    first white-box attack of ``attacks`` (APGD-CE with 100 iterations when none), reseeded with ``seed``;
    every transfer attack of ``attacks`` crafted on another model is checked for transfer failure."""
    entries = list(attacks or [])
    white = next((entry for entry in entries if entry.kind == "white-box"), None)
    factory = white.factory if white is not None else (lambda e: APGD(e, steps=100, norm=norm))
    name = white.name if white is not None else "APGD-CE-100"
    probe = factory(eps)
    probe.reseed(seed)
    try:
        _, fooled, paths = traced_attack(model, probe, x, y, eps, norm)
        path_flags = [
            silent_success(fooled, paths, name),
            incomplete_optimisation(fooled, paths, name, tolerance=tolerance),
        ]
    except NonFiniteLogitsError:
        path_flags = [_nonfinite("silent-success"), _nonfinite("incomplete-optimisation")]
    flags = [
        _guarded("unavailable-gradients", lambda: unavailable_gradients(model, x, y, tolerance)),
        _guarded(
            "unstable-predictions",
            lambda: unstable_predictions(model, x, y, eps, norm, seed=seed),
        ),
        *path_flags,
        _guarded("transfer-failure", lambda: _transfer_flags(model, x, y, eps, entries, norm, seed)),
        _guarded(
            "unconstrained-attack-failure",
            lambda: unconstrained_attack_failure(model, x, y, factory, norm, name, tolerance),
        ),
    ]
    for flag in flags:
        flag.numbers.setdefault("eps", eps)
    return flags


def _nonfinite(name: str) -> Flag:
    return Flag(name, False, "not tested: the model returned NaN/inf logits (see nonfinite-logits)")


def _guarded(name: str, indicator: Callable[[], Flag]) -> Flag:
    """The indicator's flag, or "not tested" when the model breaks (NaN/inf logits) under it."""
    try:
        return indicator()
    except NonFiniteLogitsError:
        return _nonfinite(name)


def _transfer_flags(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, entries: Sequence[SuiteAttack], norm: str, seed: int
) -> Flag:
    """``transfer-failure`` over the transfer attacks crafted on another model (fired if any fires)."""
    results = {}
    for entry in entries:
        attack = entry.factory(eps) if entry.kind == "transfer" else None
        if not isinstance(attack, _Transfer):
            continue
        attack.inner.reseed(seed)
        results[entry.name] = transfer_failure(
            model, attack.source, attack.inner, x, y, eps, norm, entry.name
        )
    if not results:
        return Flag(
            "transfer-failure", False, "not tested: the suite has no transfer attack from another model"
        )
    fired = [flag for flag in results.values() if flag.fired]
    numbers = {label: flag.numbers for label, flag in results.items()}
    if fired:
        return Flag("transfer-failure", True, "; ".join(flag.verdict for flag in fired), numbers)
    return Flag("transfer-failure", False, "; ".join(flag.verdict for flag in results.values()), numbers)
