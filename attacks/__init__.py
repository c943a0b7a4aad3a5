"""Adversarial attacks and adversarial-training losses that work through any model returning logits.

Attacks are configured once and called on a batch, ``x_adv = attack(model, x, y)``, with inputs in [0, 1]
(see :mod:`attacks.base` for the contract).

* White-box, L-inf: :class:`FGSM`, :class:`PGD`, :class:`DI2FGSM` (input diversity, optional momentum).
* Decision-based black-box, L2: :class:`BoundaryAttack` (per-sample query budget).
* Evaluation: :func:`evaluate_attack`, :func:`sweep` (a :class:`ResultTable`, CSV/JSON),
  :func:`gradient_masking_warnings`.
* Adversarial-training losses ``loss_fn(model, x, y)`` for ``nets.training``: :class:`PGDAdversarialLoss`
  (Madry et al.), :class:`TRADESLoss` (Zhang et al. 2019b), :class:`YOPOLoss` (Zhang et al. 2019a; needs the
  first-layer protocol of :func:`split_first_layer`).
"""

from .base import Attack, eval_mode
from .boundary import BoundaryAttack
from .diverse_input import DI2FGSM, InputDiversity
from .evaluation import evaluate_attack, gradient_masking_warnings, iterate_batches, sweep
from .fgsm import FGSM
from .pgd import PGD
from .table import ResultTable
from .training_losses import LinearEpsWarmup, PGDAdversarialLoss, TRADESLoss, unwrap_model
from .yopo import YOPOLoss, split_first_layer

__all__ = [
    "DI2FGSM",
    "FGSM",
    "PGD",
    "Attack",
    "BoundaryAttack",
    "InputDiversity",
    "LinearEpsWarmup",
    "PGDAdversarialLoss",
    "ResultTable",
    "TRADESLoss",
    "YOPOLoss",
    "eval_mode",
    "evaluate_attack",
    "gradient_masking_warnings",
    "iterate_batches",
    "split_first_layer",
    "sweep",
    "unwrap_model",
]
