"""Adversarial attacks and adversarial-training losses that work through any model returning logits.

Attacks are configured once and called on a batch, ``x_adv = attack(model, x, y)``, with inputs in [0, 1]
(see :mod:`attacks.base` for the contract).

* White-box, L-inf: :class:`FGSM`, :class:`PGD`, :class:`DI2FGSM` (input diversity, optional momentum);
  L-inf and L2: :class:`APGD` (CE or DLR loss), :class:`APGDT` (targeted DLR over the top-k classes),
  :class:`FABT` (targeted fast adaptive boundary over the top-k classes).
* Score-based black-box, L-inf and L2: :class:`Square` (per-sample query budget).
* Decision-based black-box, L2: :class:`BoundaryAttack` (per-sample query budget).
* The evaluation suite (:mod:`attacks.suite`, :mod:`attacks.checks`): :func:`run_suite` runs a preset
  (``"standard"``/``"quick"``) plus any attacks passed in as a cascade and reports the per-example worst
  case, with protocol attacks (kind ``"protocol"``) reported beside it; :func:`run_checks` adds the flags
  (gradient masking, convergence, eps sanity, batch dependence, the indicators of attack failure of
  :mod:`attacks.indicators` and :mod:`attacks.solver_indicators`);
  :mod:`attacks.binarization` is the binarization test (an attack unit test).
* Standalone attacks over data as report rows, a view over :func:`run_suite`: :func:`evaluate_attack`,
  :func:`sweep` (a :class:`ResultTable`, CSV/JSON).
* Adversarial-training losses ``loss_fn(model, x, y)`` for ``nets.training``: :class:`PGDAdversarialLoss`
  (Madry et al.), :class:`TRADESLoss` (Zhang et al. 2019b), :class:`YOPOLoss` (Zhang et al. 2019a; needs the
  first-layer protocol of :func:`split_first_layer`).
"""

from .apgd import APGD, APGDT
from .base import Attack, AttackResult, NonFiniteLogitsError, WrappedAttack, eval_mode
from .boundary import BoundaryAttack
from .checks import Flag, run_checks
from .diverse_input import DI2FGSM, InputDiversity
from .evaluation import evaluate_attack, sweep
from .fab import FABT
from .fgsm import FGSM
from .pgd import PGD
from .square import Square
from .suite import AttackRecord, SuiteAttack, SuiteReport, preset, run_suite, transfer
from .table import ResultTable
from .training_losses import LinearEpsWarmup, PGDAdversarialLoss, TRADESLoss, unwrap_model
from .yopo import YOPOLoss, split_first_layer

__all__ = [
    "APGD",
    "APGDT",
    "AttackRecord",
    "FABT",
    "Flag",
    "NonFiniteLogitsError",
    "Square",
    "SuiteAttack",
    "SuiteReport",
    "preset",
    "run_checks",
    "run_suite",
    "transfer",
    "DI2FGSM",
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "WrappedAttack",
    "BoundaryAttack",
    "InputDiversity",
    "LinearEpsWarmup",
    "PGDAdversarialLoss",
    "ResultTable",
    "TRADESLoss",
    "YOPOLoss",
    "eval_mode",
    "evaluate_attack",
    "split_first_layer",
    "sweep",
    "unwrap_model",
]
