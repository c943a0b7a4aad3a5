"""The main job: natural robustness of a ResNet (explicit Euler steps, h = 1) against an ODE-Net (adaptive
Dormand–Prince), measured honestly.

    python -m experiments.robustness --data-dir DIR --out runs/robustness

1. Models. Each model is trained with its recipe (the training table of docs/experiments.md, held in
   experiments.robustness.RECIPES; change it with --resnet-train/--odenet-train KEY=VALUE or a --recipes
   JSON file) unless the model cache already holds it. The cache (--models, else $NR_MODELS_DIR, else
   OUT/models) keys a model by registry name + a hash of everything it was trained with, so any working
   directory reuses it and another recipe trains another model. --resnet-run/--odenet-run use a given run
   directory instead.
2. Attacks. The first --samples test images: the paper's FGSM and DI²-FGSM at every --eps (L∞, each
   standalone) and its decision-based Boundary Attack (one run, thresholded at the same L∞ budgets); then the
   evaluation suite (experiments.honest, --preset): APGD-CE, APGD-T and Square as a cascade, for ODE models
   (evaluated with per-sample step control) also APGD crafted through surrogate solvers (RK4, tight dopri5),
   through adjoint gradients and on the ResNet (transfer); the per-example worst case over all of them, the
   paper-protocol PGD-40 (alpha 0.01) number beside it, and the suite's flags with their verdicts. For
   models with ODE blocks the input-gradient agreement with a tight-tolerance solve is reported too.
3. Resume. Every (model, attack, eps) result is a record in OUT/records, written atomically when complete
   and stamped with its configuration (model weights, samples, eps, attack settings), a checksum of its
   content and the version of the code that made it (storage.code_version). A rerun reuses the records
   whose configuration and code are unchanged, recomputes the others (an edited or malformed record too),
   and says which; Ctrl-C keeps every complete record. --force recomputes everything. A cached model trained
   by other code (stability, nets) is retrained and named; --reuse-stale reuses such models and records
   instead, and the report lists them.
4. Output in OUT: results.csv (every row, 4 decimals), results.json, <model>.json per model, and
   report.md (the table, the verdicts, the configuration, the command, and the time each model's results
   took in the runs that computed them). Progress: a bar per phase in model passes, named after the attack
   running, with per-query progress inside the Boundary Attack and Square.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attacks import DI2FGSM, FGSM, Attack, BoundaryAttack, ResultTable, sweep
from attacks.evaluation import evaluate_attack
from attacks.progress import BatchProgress, passes_per_sample
from experiments.cli import (
    Outputs,
    UsageError,
    add_data_arguments,
    budget,
    distinct,
    make_parser,
    positive_int,
    resolve_device,
    run,
    setup,
    shown_command,
)
from experiments.honest import PRESET_NAMES, Evaluation, EvaluationConfig, SuiteStore, evaluate, result_rows
from experiments.masking import gradient_agreement, ode_blocks
from experiments.models import (
    MODELS_DIR_ENV,
    ModelSpec,
    TrainedModel,
    cache_folder,
    model_arg,
    models_dir,
    trained,
    training_info,
)
from experiments.progress import WorkBar
from nets.datasets import load_dataset
from nets.training import CHECKPOINT_NAME, MODEL_NAME, RESULTS_NAME, TrainConfig
from storage.atomic import atomic_write_text
from storage.code_version import (
    EVALUATION_CODE,
    CodeGuard,
    code_version,
)
from storage.records import RecordStore, config_hash, file_sha256

DEFAULT_EPS = {"mnist": [0.05, 0.1, 0.2, 0.3], "cifar10": [1 / 255, 2 / 255, 4 / 255, 8 / 255]}
DEFAULT_MODELS = {
    "mnist": {"resnet": "mnist_resnet_small", "odenet": "odenet_mnist_small"},
    "cifar10": {"resnet": "resnet20", "odenet": "odenet_cifar_small"},
}

# The training table's commands (docs/experiments.md, "Architectures as schemes and training"); --seed
# replaces seed.
RECIPES: dict[str, TrainConfig] = {
    "mnist_resnet_small": TrainConfig(epochs=2, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                                      nesterov=True, weight_decay=5e-4, schedule="onecycle"),
    "odenet_mnist_small": TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=3e-3,
                                      schedule="onecycle"),
    "resnet20": TrainConfig(epochs=12, batch_size=128, optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True,
                            weight_decay=5e-4, schedule="onecycle"),
}
FALLBACK_RECIPE = TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=1e-3, schedule="onecycle")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m experiments.robustness", __doc__)
    parser.add_argument("--dataset", choices=sorted(DEFAULT_EPS), default="mnist", help="dataset")
    add_data_arguments(parser)
    parser.add_argument("--out", default="runs/robustness", help="folder for the records and results")
    parser.add_argument("--models", "--runs", dest="models", default=None,
                        help=f"model cache folder (default: ${MODELS_DIR_ENV}, else OUT/models)")
    parser.add_argument("--resnet-model", default=None, help="registry name (default depends on --dataset)")
    parser.add_argument("--odenet-model", default=None, help="registry name (default depends on --dataset)")
    parser.add_argument("--resnet-run", default=None,
                        help="use this run directory for the ResNet instead of the model cache")
    parser.add_argument("--odenet-run", default=None,
                        help="use this run directory for the ODE-Net instead of the model cache")
    parser.add_argument("--resnet-arg", type=model_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="model keyword argument of the ResNet; repeatable")
    parser.add_argument("--odenet-arg", type=model_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="model keyword argument of the ODE-Net; repeatable")
    parser.add_argument("--resnet-train", type=model_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting of the ResNet's training recipe (a TrainConfig field, e.g. "
                             "lr=0.05); repeatable")
    parser.add_argument("--odenet-train", type=model_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting of the ODE-Net's training recipe; repeatable")
    parser.add_argument("--recipes", default=None, metavar="FILE",
                        help='JSON file {"registry name": {TrainConfig fields}} replacing recipes (the '
                             "flags above still apply on top)")
    parser.add_argument("--train-epochs", type=positive_int, default=None,
                        help="epochs when a model must be trained (default: the recipe's)")
    parser.add_argument("--train-limit", type=positive_int, default=None,
                        help="train on the first N images only")
    parser.add_argument("--eps", type=budget, nargs="+", default=None,
                        help="L-inf budgets (default: 0.05 0.1 0.2 0.3 for MNIST, 1/255 2/255 4/255 "
                             "8/255 for CIFAR-10)")
    parser.add_argument("--samples", type=positive_int, default=200, help="test images attacked")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="ode-quick",
                        help="evaluation-suite preset (experiments.evaluate); the ode presets add, for ODE "
                             "models, the solver-aware attacks and transfer from the ResNet")
    parser.add_argument("--suite-steps", type=positive_int, default=None,
                        help="override the preset's APGD iterations")
    parser.add_argument("--suite-targets", type=positive_int, default=None,
                        help="override the preset's APGD-T target classes")
    parser.add_argument("--suite-queries", type=positive_int, default=None,
                        help="override the preset's Square queries per image")
    parser.add_argument("--convergence-steps", type=positive_int, nargs="+", default=[20, 100, 1000],
                        help="PGD iteration counts of the suite's convergence check")
    parser.add_argument("--convergence-samples", type=int, default=20,
                        help="images of the suite's convergence check")
    parser.add_argument("--difgsm-steps", type=positive_int, default=10, help="DI²-FGSM steps")
    parser.add_argument("--boundary-samples", type=positive_int, default=50,
                        help="images for the Boundary Attack")
    parser.add_argument("--boundary-queries", type=positive_int, default=1000,
                        help="Boundary Attack queries per image (initialisation counted)")
    parser.add_argument("--diagnostic-samples", type=positive_int, default=100,
                        help="images for the gradient-agreement diagnostic")
    parser.add_argument("--reference-tol", type=float, default=1e-6,
                        help="rtol = atol of the accurate dopri5 solve (gradient reference, surrogate)")
    parser.add_argument("--fixed-steps", type=positive_int, default=20,
                        help="steps of the fixed-step RK4 surrogate")
    parser.add_argument("--batch-size", type=positive_int, default=250, help="attack batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training recipes and of the attacks")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:K or auto")
    parser.add_argument("--force", action="store_true", help="recompute every record, even unchanged ones")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse cached models and records made by other code (named, and listed in "
                             "report.md) instead of recomputing them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


#: what this job's records depend on: the evaluation code and this module (its own attack runners)
JOB_CODE = EVALUATION_CODE + ("experiments/robustness.py",)


# ------------------------------------------------------------------------------------------------ models


def recipe_for(name: str, args: argparse.Namespace, overrides: Sequence[tuple[str, Any]]) -> TrainConfig:
    """The training recipe of registry model ``name``: RECIPES (or --recipes), then --seed, --train-epochs
    and the KEY=VALUE ``overrides``; validated (an invalid setting is a UsageError naming it)."""
    recipes: Mapping[str, Any] = RECIPES
    if args.recipes:
        path = Path(args.recipes)
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"--recipes file {str(path)!r} does not exist") from None
        except ValueError as error:
            raise UsageError(f"--recipes file {str(path)!r} is not valid JSON: {error}") from None
        recipes = {**RECIPES, **loaded}
    base = recipes.get(name, FALLBACK_RECIPE)
    changes: dict[str, Any] = {"seed": args.seed}
    if args.train_epochs is not None:
        changes["epochs"] = args.train_epochs
    changes.update(dict(overrides))
    try:
        base = base if isinstance(base, TrainConfig) else FALLBACK_RECIPE.replace(**base)
        return base.replace(**changes)
    except (TypeError, ValueError) as error:
        raise UsageError(f"invalid training recipe for {name}: {error}") from None


@dataclass(frozen=True)
class ModelPlan:
    """One model of the job: its label, its specification and where it lives: the model cache's entry
    (``cached``) or a run directory given with --resnet-run/--odenet-run."""

    label: str
    spec: ModelSpec
    run_dir: Path
    cached: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def identity(self) -> dict[str, Any]:
        return self.spec.to_dict()


def plan_models(args: argparse.Namespace, out: Path) -> list[ModelPlan]:
    names = DEFAULT_MODELS[args.dataset]
    cache = models_dir(out, args.models)
    plans = []
    for label, name, extra, overrides, run_dir in (
        ("resnet", args.resnet_model or names["resnet"], args.resnet_arg, args.resnet_train, args.resnet_run),
        ("odenet", args.odenet_model or names["odenet"], args.odenet_arg, args.odenet_train, args.odenet_run),
    ):
        name = name.lower()
        from nets.registry import available_models

        if name not in available_models():
            raise UsageError(f"unknown model {name!r}; available: {', '.join(available_models())}")
        try:
            spec = ModelSpec.of(name, args.dataset, recipe_for(name, args, overrides),
                                limit_train=args.train_limit, **dict(extra))
        except ValueError as error:
            raise UsageError(f"invalid model {name}: {error}") from None
        directory = Path(run_dir) if run_dir else cache_folder(spec, cache)
        plans.append(ModelPlan(label, spec, directory, cached=not run_dir))
    return plans


def ensure_trained(plan: ModelPlan, args: argparse.Namespace, guard: CodeGuard | None = None
                   ) -> TrainedModel:
    """The trained model of ``plan`` (:func:`experiments.models.trained`: trained first, resumably, when its
    folder holds none; a cache entry trained by other ``stability``/``nets`` code is retrained from scratch
    and named, unless ``guard.reuse_stale``)."""

    def splits():
        return tuple(load_dataset(args.dataset, split, args.data_dir, verify=not args.no_verify,
                                  download=args.download, progress=not args.no_progress)
                     for split in ("train", "test"))

    return trained(plan.spec, plan.run_dir, splits, label=plan.label, device=resolve_device(args.device),
                   guard=guard, cached=plan.cached, progress=not args.no_progress)


# ----------------------------------------------------------------------------------------------- attacks
# Another attack suite plugs in here: attack_suite() lists the eps-bounded attacks of a model and
# attacks_at_eps() is everything run for one model at one eps (one resumable record per attack, through
# Session.store); evaluate_model() calls it once per eps, then the model-level units (Boundary, gradient
# agreement).


@dataclass(frozen=True)
class AttackSpec:
    """One eps-bounded attack of the suite: ``factory(eps)`` builds it; ``settings`` is everything its result
    depends on besides the model, the images and eps (stamped on its records); ``worst_case``: counted in
    the per-eps worst-case row."""

    name: str
    factory: Callable[[float], Attack]
    settings: Mapping[str, Any]
    worst_case: bool = True


def attack_suite(model: torch.nn.Module, args: argparse.Namespace) -> list[AttackSpec]:
    """The paper's eps-bounded attacks, each standalone on every image: FGSM and DI²-FGSM (the paper-protocol
    PGD-40 comes with the evaluation suite). Not in the worst case: the suite's worst case is the number."""
    seed = args.seed
    return [
        AttackSpec("FGSM", lambda e: FGSM(e, seed=seed), {"seed": seed}, worst_case=False),
        AttackSpec("DI2-FGSM", lambda e: DI2FGSM(e, steps=args.difgsm_steps, seed=seed),
                   {"steps": args.difgsm_steps, "seed": seed}, worst_case=False),
    ]


def _surrogates(block, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    tol = args.reference_tol
    tight = {"method": "dopri5", "rtol": tol, "atol": tol, "step_size": None}
    fixed = {"method": "rk4", "step_size": block.t1 / args.fixed_steps}
    return tight, fixed


class _Observed(Attack):
    """Runs ``inner`` unchanged, reports each batch (inputs, labels, adversarials) to ``on_batch`` and its
    work in model passes to the session's bar (from inside the attack: per query for the Boundary Attack)."""

    def __init__(self, inner: Attack, on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None],
                 session: Session):
        super().__init__(targeted=inner.targeted, seed=inner.seed)
        self.inner, self.on_batch, self.session = inner, on_batch, session
        self.minimizes = inner.minimizes
        self.eps = getattr(inner, "eps", None)

    def _attack(self, model, x, y):
        work = x.shape[0] * passes_per_sample(self.inner)
        batch = BatchProgress(self.session.advance, work, self.session.skip)
        self.inner.on_progress = batch
        x_adv = self.inner(model, x, y)
        batch.finish()
        self.last_stats = self.inner.last_stats
        self.on_batch(x, y, x_adv)
        return x_adv


@dataclass
class Session:
    """What the evaluation of one model shares: its label and identity, the data, the record store, the
    progress bar and the options."""

    label: str
    model_identity: Mapping[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    store: RecordStore
    args: argparse.Namespace
    bar: Any = None
    outputs: Outputs | None = None

    def config(self, what: str, eps: float | Sequence[float] | None, settings: Mapping[str, Any],
               samples: int) -> dict[str, Any]:
        return {"dataset": self.args.dataset, "model": dict(self.model_identity), "samples": samples,
                "what": what, "eps": eps, "settings": dict(settings), "batch_size": self.args.batch_size}

    def advance(self, work: float) -> None:
        """``work`` more model passes done (the bar's unit)."""
        if self.bar is not None:
            self.bar.advance(work)

    def skip(self, work: float) -> None:
        """``work`` planned model passes that will not be done (a record reused, an attack done early)."""
        if self.bar is not None:
            self.bar.skip(work)

    def put(self, key: tuple, config: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        path = self.store.put(key, config, record)
        if self.outputs is not None:
            self.outputs.add(path)


def run_attack(model: torch.nn.Module, attack: Attack, name: str, eps: float, session: Session) -> dict:
    """One attack at one eps on the session's images: its report row and which images stayed robust."""
    adversarials: list[torch.Tensor] = []

    def on_batch(x, y, x_adv):
        adversarials.append(x_adv)

    observed = _Observed(attack, on_batch, session)
    row = evaluate_attack(model, observed, (session.x, session.y), eps=eps, name=name,
                          batch_size=session.args.batch_size)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        clean = torch.cat([model(x).argmax(1) for x in session.x.split(session.args.batch_size)])
        adversarial = torch.cat([model(x).argmax(1) for x in adversarials])
        model.train(was_training)
    robust = (clean == session.y) & (adversarial == session.y)
    return {"row": row, "robust": "".join("1" if r else "0" for r in robust.tolist())}


def attacks_at_eps(model: torch.nn.Module, eps: float, specs: Sequence[AttackSpec],
                   session: Session) -> list[dict[str, Any]]:
    """Every attack of ``specs`` on one model at one eps (each result a resumable record), then the per-eps
    worst case over the specs marked ``worst_case``: a sample counts robust only if it survives all of
    them. Returns the report rows."""
    n = session.x.shape[0]
    rows, masks = [], []
    for spec in specs:
        key = (session.label, spec.name, eps)
        config = session.config(spec.name, eps, spec.settings, n)
        record = session.store.get(key, config, parse=_attack_record_reader(n))
        attack = spec.factory(eps)
        if session.bar is not None:
            session.bar.running(spec.name, eps)
        if record is None:
            record = run_attack(model, attack, spec.name, eps, session)
            session.put(key, config, record)
        else:
            session.skip(n * passes_per_sample(attack))
        rows.append(record["row"])
        if spec.worst_case:
            masks.append(record["robust"])
    if len(masks) > 1:
        robust = [all(mask[i] == "1" for mask in masks) for i in range(n)]
        rows.append({"attack": "worst-case", "eps": eps, "norm": "linf", "samples": n,
                     "clean_accuracy": rows[0]["clean_accuracy"], "robust_accuracy": sum(robust) / n})
    return rows


def _attack_record_reader(n: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Checks a stored ``run_attack`` record on ``n`` images (a row, and a 0/1 robustness string of length n);
    a malformed one raises (the store recomputes and names it)."""

    def read(body: dict[str, Any]) -> dict[str, Any]:
        row, robust = body["row"], body["robust"]
        if not isinstance(row, dict) or not {"attack", "eps", "robust_accuracy"} <= set(row):
            raise ValueError("its row lacks attack, eps or robust_accuracy")
        if not isinstance(robust, str) or len(robust) != n or set(robust) - {"0", "1"}:
            raise ValueError(f"its robustness mask is not {n} characters of 0/1")
        return body

    return read


def _rows_reader(body: dict[str, Any]) -> dict[str, Any]:
    """Checks a stored Boundary record: a list of rows with attack, eps and robust_accuracy."""
    if not all(isinstance(r, dict) and {"attack", "eps", "robust_accuracy"} <= set(r) for r in body["rows"]):
        raise ValueError("a row lacks attack, eps or robust_accuracy")
    return body


def boundary_rows(model: torch.nn.Module, eps: list[float], session: Session) -> list[dict[str, Any]]:
    """The Boundary Attack: one run on the first --boundary-samples images, thresholded at every eps."""
    args = session.args
    nb = min(args.boundary_samples, session.x.shape[0])
    key = (session.label, "Boundary")
    config = session.config("Boundary", eps, {"queries": args.boundary_queries, "seed": args.seed}, nb)
    record = session.store.get(key, config, parse=_rows_reader)
    if record is None:
        if session.bar is not None:
            session.bar.running(f"Boundary ({nb} images, thresholded at every ε)", None)
        attack = _Observed(BoundaryAttack(max_queries=args.boundary_queries, seed=args.seed),
                           lambda x, y, x_adv: None, session)
        table = sweep(model, {"Boundary": lambda e: attack}, eps, (session.x[:nb], session.y[:nb]),
                      batch_size=args.batch_size, progress=False)
        record = {"rows": table.rows}
        session.put(key, config, record)
    else:
        session.skip(nb * args.boundary_queries)
    return record["rows"]


def agreement_record(model: torch.nn.Module, session: Session) -> dict[str, Any]:
    """Input-gradient agreement of the deployed solver (and of RK4 and adjoint gradients) with a tight
    dopri5 solve, on the first --diagnostic-samples images."""
    args = session.args
    block = ode_blocks(model)[0]
    tight, fixed = _surrogates(block, args)
    nd = min(args.diagnostic_samples, session.x.shape[0])
    others = {f"rk4_{args.fixed_steps}_steps": fixed,
              "deployed_adjoint": {"solver_options": {**block.solver_options, "gradient": "adjoint"}}}
    key = (session.label, "gradient agreement")
    config = session.config("gradient agreement", None, {"reference": tight, "others": others}, nd)
    record = session.store.get(key, config, parse=_agreement_reader)
    if session.bar is not None:
        session.bar.running("input gradients against a tight dopri5 solve", None)
    if record is None:
        record = gradient_agreement(model, session.x[:nd], session.y[:nd], tight, others,
                                    on_progress=session.advance)
        session.put(key, config, record)
    else:
        session.skip(4 * nd)
    return record


def _agreement_reader(body: dict[str, Any]) -> dict[str, Any]:
    """Checks a stored gradient-agreement record: per gradient, its cosine and relative-error statistics."""
    for stats in body.values():
        float(stats["median_cosine"]), float(stats["min_cosine"]), float(stats["median_relative_error"])
    return body


def suite_evaluation(model: torch.nn.Module, session: Session, eps: list[float],
                     against: Mapping[str, torch.nn.Module]) -> Evaluation:
    """The evaluation suite on the session's images (experiments.honest): the preset's attacks (plus, for ODE
    models, the solver-aware ones and transfer from ``against``), the per-example worst case, the flags and
    the paper-protocol PGD-40 number; one resumable record per (attack, eps)."""
    args = session.args
    config = EvaluationConfig(eps=tuple(eps), preset=args.preset, samples=int(session.x.shape[0]),
                              seed=args.seed, batch_size=args.batch_size, reference_tol=args.reference_tol,
                              fixed_steps=args.fixed_steps, convergence_steps=tuple(args.convergence_steps),
                              convergence_samples=args.convergence_samples, steps=args.suite_steps,
                              target_classes=args.suite_targets, queries=args.suite_queries)
    identity = {"dataset": args.dataset, "model": dict(session.model_identity), "config": config.to_dict(),
                "against": {label: _weights_digest(m) for label, m in against.items()}}
    suite_store = SuiteStore(session.store, identity, (session.label, "suite"))
    evaluation = evaluate(model, session.x.cpu(), session.y.cpu(), config, against=against, store=suite_store,
                          progress=not args.no_progress, label=f"[{session.label}] suite")
    if session.outputs is not None:
        for key in session.store.computed:
            if key[:2] == (session.label, "suite"):
                session.outputs.add(session.store.path(key))
    return evaluation


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def evaluate_model(model: torch.nn.Module, plan: ModelPlan, x: torch.Tensor, y: torch.Tensor,
                   args: argparse.Namespace, eps: list[float], store: RecordStore,
                   outputs: Outputs | None = None,
                   against: Mapping[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """All attacks and (for ODE models) the masking diagnostics for one model, resuming from ``store``."""
    started = time.perf_counter()
    identity = {**plan.identity, "weights_sha256": file_sha256(plan.run_dir / MODEL_NAME)}
    session = Session(plan.label, identity, x, y, store, args, outputs=outputs)
    specs = attack_suite(model, args)
    n, nb = x.shape[0], min(args.boundary_samples, x.shape[0])
    show = not args.no_progress
    session.bar = WorkBar(f"[{plan.label}] paper attacks", enabled=show)
    session.bar.start(n * sum(passes_per_sample(s.factory(e)) for s in specs for e in eps)
                      + nb * passes_per_sample(BoundaryAttack(max_queries=args.boundary_queries)))
    try:
        by_eps = [attacks_at_eps(model, e, specs, session) for e in eps]
        boundary = boundary_rows(model, eps, session)
    finally:
        session.bar.close()
    record: dict[str, Any] = {"model": plan.label, "rows": _ordered(by_eps, boundary, specs)}
    blocks = ode_blocks(model)
    if blocks:
        nd = min(args.diagnostic_samples, n)
        session.bar = WorkBar(f"[{plan.label}] gradient agreement", enabled=show)
        session.bar.start(4 * nd)  # input-gradient passes (one unit per image)
        try:
            record["gradient_agreement"] = agreement_record(model, session)
        finally:
            session.bar.close()
        b = blocks[0]
        record["deployed_solver"] = {"method": b.method, "rtol": b.rtol, "atol": b.atol,
                                     "step_size": b.step_size, "t1": b.t1}
    evaluation = suite_evaluation(model, session, eps, dict(against or {}) if blocks else {})
    record["rows"] += [{k: v for k, v in row.items() if k != "model"} for row in result_rows(evaluation)]
    record["flags"] = [flag.to_json() for flag in evaluation.report.flags]
    record["suite_seconds"] = evaluation.seconds
    record["warnings"] = [f"{flag.name}: {flag.verdict}" for flag in evaluation.report.flags if flag.fired]
    record["warnings"] += [f"skipped {name}: {why}" for name, why in evaluation.report.skipped.items()]
    record["time_s"] = time.perf_counter() - started
    return record


def _ordered(by_eps: list[list[dict]], boundary: list[dict], specs: Sequence[AttackSpec]) -> list[dict]:
    """Rows grouped by attack (direct attacks, worst case, Boundary, surrogate transfers), eps ascending."""
    names = [s.name for s in specs if s.worst_case] + ["worst-case"]
    rows = [row for name in names for group in by_eps for row in group if row["attack"] == name]
    rows += boundary
    rows += [row for s in specs if not s.worst_case for group in by_eps for row in group
             if row["attack"] == s.name]
    return rows


# ----------------------------------------------------------------------------------------------- the job


def main(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup(args)
    outputs = outputs if outputs is not None else Outputs()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    eps = distinct([float(e) for e in (args.eps or DEFAULT_EPS[args.dataset])], "--eps")
    if any(not (0 <= e <= 1) for e in eps):
        raise UsageError(f"--eps values must lie in [0, 1] (images are in [0, 1]), got {eps}")
    out = Path(args.out)
    plans = plan_models(args, out)
    test = load_dataset(args.dataset, "test", args.data_dir, verify=not args.no_verify,
                        download=args.download, progress=not args.no_progress)
    n = min(args.samples, len(test.labels))
    x, y = test.tensors(0, n, resolve_device(args.device))
    guard = CodeGuard(reuse_stale=args.reuse_stale)
    code = code_version(JOB_CODE)
    store = RecordStore(out / "records", force=args.force, code=code, guard=guard)
    records: dict[str, Any] = {}
    models: dict[str, Any] = {}
    loaded: dict[str, torch.nn.Module] = {}
    reused_summaries: list[str] = []
    for plan in plans:
        path = out / f"{plan.label}.json"
        weights = plan.run_dir / MODEL_NAME
        summary_config = {"plan": plan.identity, "dataset": args.dataset, "samples": n, "eps": eps,
                          "settings": _settings(args), "run_dir": str(plan.run_dir)}
        entry = ensure_trained(plan, args, guard)
        model = entry.model
        if entry.computed:
            for name in (CHECKPOINT_NAME, RESULTS_NAME, MODEL_NAME):
                outputs.add(plan.run_dir / name)
        summary_config["weights_sha256"] = file_sha256(weights)
        reused = _reuse_summary(path, summary_config, args.force, code, guard)
        if reused is not None:
            records[plan.label] = reused
            reused_summaries.append(plan.label)
            loaded[plan.label] = model  # (loaded: a transfer source)
            print(f"[{plan.label}] reusing the complete {path} (same configuration; --force recomputes)")
        else:
            against = {label: m for label, m in loaded.items() if not ode_blocks(m)}
            record = evaluate_model(model, plan, x, y, args, eps, store, outputs, against)
            loaded[plan.label] = model
            for line in store.summary(plan.label):
                print(f"[{plan.label}] {line}", flush=True)
            record.update({"registry_name": plan.name, "samples": n, "eps": eps, "dataset": args.dataset,
                           "config_hash": config_hash(summary_config), "code": code})
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
            outputs.add(path)
            records[plan.label] = record
        models[plan.label] = {"name": plan.name, "run_dir": str(plan.run_dir),
                              "recipe": plan.spec.train.to_dict(), "kwargs": plan.spec.arguments,
                              "test_accuracy": training_info(plan.run_dir).get("final_test_accuracy")}
    rows = [{"model": label, **row} for label, record in records.items() for row in record["rows"]]
    ResultTable(rows).to_csv(out / "results.csv", digits=4)
    atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    table = summary_lines(records, eps)
    print("\n" + "\n".join(table))
    command = shown_command("python -m experiments.robustness", argv)
    this_run = {"wall_s": time.perf_counter() - started, "computed": len(store.computed),
                "reused": len(store.resumed), "summaries_reused": reused_summaries}
    report = report_markdown(records, eps, table, models, args, n, command, this_run,
                             stale=guard.stamp_lines())
    atomic_write_text(out / "report.md", report)
    for name in ("results.csv", "results.json", "report.md"):
        outputs.add(out / name)
    return records


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in ("preset", "suite_steps", "suite_targets", "suite_queries",
                                                "convergence_steps", "convergence_samples",
                                                "difgsm_steps", "boundary_samples",
                                                "boundary_queries", "diagnostic_samples", "reference_tol",
                                                "fixed_steps", "batch_size", "seed")}


def _reuse_summary(path: Path, config: Mapping[str, Any], force: bool, code: Mapping[str, str],
                   guard: CodeGuard) -> dict[str, Any] | None:
    """The model's complete summary at ``path`` if made with ``config`` by the running ``code`` (or by other
    code under --reuse-stale, named), else None."""
    if force or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if not isinstance(stored, dict) or stored.get("config_hash") != config_hash(config):
        return None
    return stored if guard.current(f"summary {path}", stored.get("code"), code) else None


def summary_lines(records: Mapping[str, Any], eps: list[float]) -> list[str]:
    """The robust-accuracy table and the verdict lines, as printed and as written to report.md."""
    attacks: list[str] = []
    for record in records.values():
        for row in record["rows"]:
            if row["attack"] not in attacks:
                attacks.append(row["attack"])
    lines = ["robust accuracy (L-inf eps; Boundary thresholded at the same eps)"]
    header = ["model", "attack", "clean"] + [f"{e:g}" for e in eps]
    cells = [header]
    for label, record in records.items():
        for attack in attacks:
            by_eps = {row["eps"]: row for row in record["rows"] if row["attack"] == attack}
            if not by_eps:
                continue
            clean = next(iter(by_eps.values()))["clean_accuracy"]
            cells.append([label, attack, f"{clean:.3f}"] + [
                f"{by_eps[e]['robust_accuracy']:.3f}" if e in by_eps else "-" for e in eps])
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
    for label, record in records.items():
        if "gradient_agreement" in record:
            lines.append(f"[{label}] input-gradient agreement with an accurate dopri5 solve:")
            for name, stats in record["gradient_agreement"].items():
                lines.append(f"  {name:18s} median cos {stats['median_cosine']:.4f}  "
                             f"min cos {stats['min_cosine']:.4f}  "
                             f"median rel. error {stats['median_relative_error']:.3g}")
        for warning in record["warnings"]:
            lines.append(f"[{label}] WARNING {warning}")
        if not record["warnings"]:
            lines.append(f"[{label}] no gradient-masking symptom found")
    return lines


def print_summary(records: Mapping[str, Any], eps: list[float]) -> None:
    print("\n".join(summary_lines(records, eps)))


def compute_seconds(record: Mapping[str, Any]) -> float:
    """Seconds a model's results took in the runs that computed them: every row's own time (the Boundary
    Attack's one run, repeated on its per-eps rows, once) and the suite's protocol and check phases."""
    total, boundary_seen = 0.0, False
    for row in record["rows"]:
        seconds = row.get("seconds")
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            continue
        if row["attack"] == "Boundary":
            if boundary_seen:
                continue
            boundary_seen = True
        total += seconds
    phases = record.get("suite_seconds", {})
    return total + sum(float(phases.get(name, 0.0)) for name in ("protocol", "checks"))


def report_markdown(records: Mapping[str, Any], eps: list[float], table: list[str], models: Mapping[str, Any],
                    args: argparse.Namespace, samples: int, command: str, this_run: Mapping[str, Any],
                    stale: Sequence[str] = ()) -> str:
    """report.md: the table and verdicts as printed, the models, the configuration, the command, and the
    time of the runs that computed the results beside this run's own (a rerun that reuses every record
    takes seconds; the results' time stays what it was); ``stale`` (``CodeGuard.stamp_lines``) names
    results reused from other code."""
    lines = ["# Robustness report", "", *stale, "```text", *table, "```", "", "## Models", ""]
    lines += ["| label | registry name | test accuracy | run directory | training recipe |",
              "| --- | --- | --- | --- | --- |"]
    for label, info in models.items():
        accuracy = "-" if info["test_accuracy"] is None else f"{100 * info['test_accuracy']:.2f}%"
        recipe = ", ".join(f"{k}={v}" for k, v in info["recipe"].items())
        lines.append(f"| {label} | `{info['name']}` | {accuracy} | `{info['run_dir']}` | {recipe} |")
    settings = {"dataset": args.dataset, "samples": samples, "eps": eps, **_settings(args)}
    lines += ["", "## Configuration", "", *[f"- {key}: {value}" for key, value in settings.items()]]
    lines += ["", "## Command", "", "```bash", command, "```", "", "## Time", ""]
    lines += ["Attack time of the results, each record timed in the run that computed it (training not "
              "included): " + ", ".join(f"{label} {compute_seconds(r):.0f} s" for label, r in records.items())
              + "."]
    reused = this_run.get("summaries_reused") or []
    whole = f", and reused the complete results of {', '.join(reused)}" if reused else ""
    lines += [f"This run: {this_run['wall_s']:.0f} s wall; it computed {this_run['computed']} records and "
              f"reused {this_run['reused']}{whole}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run(main))
