"""The paper artefacts under ``torchrun --nproc_per_node K -m experiments.paper ...``: a leader and helpers.

Rank 0 (the leader) runs the artefact exactly as one process would: it plans, reads and writes every cache
and report, and runs every measurement that is not sharded. The other ranks (helpers) write nothing and run no
artefact code: they wait for the leader's jobs and join the two collective computations,

* ``train``: data-parallel training of one model (``nets.training.train`` under DDP, the global batch of the
  recipe split evenly, ``B / K`` images per process), and
* ``honest``: the honest evaluation's suite, its batches dealt round-robin to the ranks
  (``attacks.suite.run_suite``'s ``rank`` / ``world_size``; per-sample masks OR-ed across them),

then ``stop``. Jobs travel as pickled objects over a gloo group whose timeout (:data:`WAIT`) outlasts the
leader's longest unsharded measurement; a failure on any rank exits that rank with one line and code 2, and
torchrun ends the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from nets.training import DistributedContext

#: how long a helper waits for the leader's next job (the leader may spend hours on unsharded measurements)
WAIT = timedelta(days=7)
STOP = "stop"


def launched_rank() -> tuple[int, int]:
    """(rank, world size) that torchrun gave this process in its environment; (0, 1) without torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def peer_failed(error: BaseException) -> bool:
    """True when ``error`` is this process losing a peer in a collective (the peer crashed and says why
    itself; torchrun then ends every process), not a failure of its own."""
    import torch.distributed as dist

    text = str(error)
    return isinstance(error, dist.DistError) or any(
        sign in text for sign in ("closed by peer", "reset by peer", "remote worker crashing")
    )


def per_process_batch(global_batch: int, world_size: int, what: str = "the batch") -> int:
    """``global_batch / world_size``: the per-process batch that keeps a recipe's global batch under DDP
    (``nets.training``'s ``batch_size`` is per process). Raises ``ValueError`` when it does not divide."""
    if global_batch % world_size:
        divisors = [k for k in range(1, global_batch + 1) if global_batch % k == 0 and k <= 64]
        raise ValueError(
            f"{what} of {global_batch} images cannot be split evenly over {world_size} processes (the global "
            f"batch must stay the recipe's): run with --nproc_per_node one of {divisors}"
        )
    return global_batch // world_size


@dataclass
class Team:
    """This process's place among the torchrun processes; a single process is a team of one whose jobs are
    no-ops."""

    context: DistributedContext = field(default_factory=DistributedContext)
    _channel: Any = None

    @property
    def rank(self) -> int:
        return self.context.rank

    @property
    def world_size(self) -> int:
        return self.context.world_size

    @property
    def is_leader(self) -> bool:
        return self.context.rank == 0

    @property
    def enabled(self) -> bool:
        return self.context.world_size > 1

    def summon(self, kind: str, **payload: Any) -> None:
        """Leader: start job ``kind`` on every helper (they join its collectives); a no-op in one process."""
        if self.enabled:
            self._send((kind, payload))

    def serve(self, handlers: Mapping[str, Callable[..., Any]]) -> None:
        """Helper: run the leader's jobs (``handlers[kind](**payload)``) until it says stop."""
        while True:
            kind, payload = self._receive()
            if kind == STOP:
                return
            if kind not in handlers:
                raise RuntimeError(f"the leader sent an unknown job {kind!r} (ranks run different code?)")
            handlers[kind](**payload)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process (``[obj]`` in one process)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self._channel)
        return gathered

    def release(self) -> None:
        """Leader: tell the helpers that the run is over."""
        if self.enabled:
            self._send((STOP, {}))

    def _send(self, job: tuple[str, dict[str, Any]]) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([job], src=0, group=self._channel)

    def _receive(self) -> tuple[str, dict[str, Any]]:
        import torch.distributed as dist

        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self._channel)
        return box[0]


def join(device: str | torch.device) -> tuple[Team, torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU; ``cuda:LOCAL_RANK`` per process) and open the
    job channel; without torchrun, the team of one and ``device`` unchanged."""
    from nets.training import init_distributed

    context, device = init_distributed(device)
    team = Team(context)
    if team.enabled:
        import torch.distributed as dist

        team._channel = dist.new_group(backend="gloo", timeout=WAIT)
    return team, device


def leave(team: Team, *, finished: bool) -> None:
    """Leave the process group (waiting for the others only after a finished run: a failing rank's peers
    may never arrive)."""
    from nets.training import shutdown_distributed

    if team.enabled:
        team._channel = None
        shutdown_distributed(synchronize=finished)
