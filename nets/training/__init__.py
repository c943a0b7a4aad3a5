"""One training loop for every model: seeded, checkpointed, resumable, data-parallel under ``torchrun``.

Per step the loop does exactly ``loss = loss_fn(model, x, y); loss.backward(); optimizer.step();
scheduler.step()`` (learning-rate schedules are stepped per iteration), with ``x`` float images in [0, 1]
[B, C, H, W] and ``y`` int64 labels. ``loss_fn`` defaults to cross-entropy; adversarial training (PGD-AT,
TRADES, YOPO) plugs in here. Under DistributedDataParallel ``model`` is the DDP wrapper: generate
adversarial examples on ``unwrap_model(model)`` and compute the final training loss through ``model`` so the
gradients are averaged across processes.

After every epoch the test set is evaluated (clean accuracy and cross-entropy) and rank 0 atomically writes
``checkpoint.pt`` (model, optimizer, scheduler, epoch, data-order generator and every process's RNG states;
loads with ``torch.load(..., weights_only=True)``) and ``results.json`` (per-epoch metrics) into ``out_dir``;
at the end it also writes ``model.pt`` (weights + how to rebuild the model).

Solver statistics protocol: any submodule may implement ``pop_solver_stats() -> Mapping[str, number]``
returning counters accumulated since its previous call (e.g. ``{"nfe": 1234, "steps": 56}``) and resetting
them. The loop calls it on the outermost such modules (it does not descend into a module that implements it)
at the start of each phase to discard, and at its end to record the key-wise sums, summed over processes,
as ``train_solver_stats`` / ``test_solver_stats`` of the epoch.

One job per module: :mod:`~nets.training.config` (the validated :class:`TrainConfig`, optimizer, schedule),
:mod:`~nets.training.state` (RNG states, atomic checkpoints), :mod:`~nets.training.distributed` (process
group), :mod:`~nets.training.loop` (:func:`train`), :mod:`~nets.training.metrics` (:func:`evaluate`),
:mod:`~nets.training.solver_stats` and :mod:`~nets.training.loading` (:func:`load_trained_model`).
"""

from nets.training.config import OPTIMIZERS, SCHEDULES, TrainConfig, build_optimizer, build_scheduler
from nets.training.distributed import (
    DistributedContext,
    distributed_context,
    init_distributed,
    shutdown_distributed,
    unwrap_model,
)
from nets.training.loading import load_trained_model
from nets.training.loop import (
    BatchInfo,
    LossFn,
    ResumeMismatchError,
    TrainResult,
    cross_entropy_loss,
    train,
)
from nets.training.metrics import evaluate
from nets.training.solver_stats import pop_solver_stats
from nets.training.state import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    MODEL_NAME,
    RESULTS_NAME,
    atomic_torch_save,
    atomic_write_json,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "MODEL_NAME",
    "OPTIMIZERS",
    "RESULTS_NAME",
    "ResumeMismatchError",
    "SCHEDULES",
    "BatchInfo",
    "DistributedContext",
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "atomic_torch_save",
    "atomic_write_json",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "cross_entropy_loss",
    "distributed_context",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "load_trained_model",
    "pop_solver_stats",
    "restore_rng_state",
    "seed_everything",
    "shutdown_distributed",
    "train",
    "unwrap_model",
]
