"""Collectives for data-parallel meta-training over ``torch.distributed`` (torchrun).

A leaf: this module imports torch and the standard library only, never ``meta_rl``. The launch
(``torchrun -m meta_rl ...``: rank 0 runs the command, the other ranks follow) is
:mod:`meta_rl.launch`; the trainers use what is here: a :class:`Context` (rank, world size,
all-reduces, broadcasts) and the :class:`Shard` of the meta-batch this rank holds, which they
pass on explicitly to whatever samples episodes (``sample_episodes(..., shard=shard)``, the
action noise, ``rl.rollout.shard_env`` for the env's own noise).

The meta-batch of tasks is split into contiguous shards, one per rank; every rank samples its
shard's episodes, computes its share of the outer objective, and the shares are summed with
all-reduces, so every rank takes the same step and keeps the same parameters. Nothing here
runs a process or a thread of its own: ``torchrun`` starts the processes (one per GPU or per
CPU slot, on one machine or several) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them. Without ``torchrun``,
:func:`context` is a single-process context whose collectives do nothing, so the trainers run
unchanged.

What is synchronised (and why N ranks give the same meta-update as one process):

- **Tasks**: every rank draws the whole meta-batch of tasks from the same seeded generator and
  keeps its shard (:meth:`Shard.take`); generators not tied to rows (tasks, env seeds, PPO
  minibatch permutations) stay identical on every rank.
- **Per-row noise** (env transitions, actions): a shard draws the *whole batch's* noise and
  keeps its rows (:meth:`Shard.window` gives the rows: ``policies.distributions.windowed`` for
  actions, ``row_window`` on batched envs, per-row reset seeds on Gymnasium vector envs), so
  row ``r`` sees exactly the numbers it would see in one process. The cost is drawing
  ``total`` instead of ``size`` rows of noise, negligible next to the policy's forward; the
  random stream of a single process is unchanged.
- **Objectives**: a shard's loss is its weighted share of the mean over tasks (``size / total``,
  :attr:`Shard.weight`); gradients, TRPO's Fisher-vector products and line-search values are
  summed over ranks (:meth:`Context.all_reduce`, :meth:`Context.all_reduce_grads`). Ranks then
  take identical decisions (CG stops, line-search acceptance, divergence checks).
- **Few-shot episodes** (ProtoNet, Siamese, MANN): whole episodes are the shard's rows (the
  Conv-4 normalises per episode under ``vmap``, so episodes never see each other); a ProtoNet /
  Siamese ``meta_batch`` of 1 splits the episode's images instead, with a synchronised
  BatchNorm and all-reduced embeddings; a MANN sequence is never split (``batch_size >= ranks``).
- **Early stops**: a rollout that stops when all episodes are over asks all ranks
  (:meth:`Shard.any`), so every rank draws the same amount of noise.
- **Parameters** are broadcast from rank 0 at the start (and after a resume), the config is
  rank 0's (:meth:`Context.sync_config`), and only rank 0 has a run folder: it writes
  config, metrics, TensorBoard events, checkpoints, logs and the progress bar; other ranks get
  ``run=None`` and read a resumed checkpoint through rank 0 (:meth:`Context.load_last`).

Failures: collectives time out after ``META_RL_DIST_TIMEOUT`` seconds (default 300) and a rank
that dies makes ``torchrun``'s agent stop the others; see :mod:`meta_rl.launch`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "Shard",
    "Context",
    "DistributedError",
    "context",
    "init",
    "shutdown",
    "launched",
    "pending",
]

TIMEOUT_ENV = "META_RL_DIST_TIMEOUT"


class DistributedError(RuntimeError):
    """A distributed job that cannot start or lost a rank. The message says what to do."""


# --------------------------------------------------------------------------------------------
# Shards: a contiguous slice of the meta-batch
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Tasks ``[start, stop)`` of a meta-batch of ``total`` tasks."""

    start: int
    stop: int
    total: int
    context: Context | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def weight(self) -> float:
        """This shard's share of a mean over the meta-batch's tasks."""
        return self.size / self.total

    @property
    def whole(self) -> bool:
        return self.size == self.total

    def take(self, batch: Any) -> Any:
        """This shard's tasks of a list, or of a (nested tuple / list / dict of) tensor(s) with a
        leading task axis (everything else is returned as is)."""
        if self.whole:
            return batch
        if isinstance(batch, Tensor):
            return batch[self.start : self.stop]
        if isinstance(batch, Mapping):
            return {k: self.take(v) for k, v in batch.items()}
        if isinstance(batch, tuple):
            items = [self.take(v) for v in batch]
            return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
        if isinstance(batch, list):
            if batch and isinstance(batch[0], (Tensor, tuple, list, Mapping)):
                return [self.take(v) for v in batch]
            return batch[self.start : self.stop]
        return batch

    def window(self, rows_per_task: int = 1) -> tuple[int, int] | None:
        """``(first_row, total_rows)`` of this shard's rows in the whole batch, for rows laid out
        task-major with ``rows_per_task`` rows per task (``None``: the shard is the whole batch).
        A sampler draws the noise of ``total_rows`` rows and keeps rows ``first_row, ...``."""
        if self.whole:
            return None
        return self.start * rows_per_task, self.total * rows_per_task

    def first(self, k: int) -> tuple[int, float]:
        """How many of the batch's first ``k`` tasks (0: all) are this shard's (its first ones:
        shards are contiguous; 0: none) and its share of a mean over those ``k`` tasks."""
        k = min(k or self.total, self.total)
        mine = max(0, min(k, self.stop) - self.start)
        return mine, mine / k

    def rows(self, global_rows: Tensor, rows_per_task: int = 1) -> Tensor:
        """The rows of ``global_rows`` (indices into the whole batch's ``total * rows_per_task``
        rows, kept in their order) that are this shard's, as indices into its own rows."""
        if self.whole:
            return global_rows
        lo, hi = self.start * rows_per_task, self.stop * rows_per_task
        mine = (global_rows >= lo) & (global_rows < hi)
        return global_rows[mine] - lo

    def any(self, flags: Tensor) -> bool:
        """True when any element of ``flags`` is true on any rank (one host sync)."""
        if self.context is None:
            return bool(flags.any())
        return self.context.any(flags)


# --------------------------------------------------------------------------------------------
# The context
# --------------------------------------------------------------------------------------------
class Context:
    """Rank, world size and the collectives the trainers use (no-ops with one process)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Context(rank={self.rank}, world_size={self.world_size})"

    # -- sharding ------------------------------------------------------------------------
    def shard(self, total: int) -> Shard:
        """This rank's contiguous share of ``total`` tasks (the first ``total % world`` ranks
        get one more). Every rank needs at least one task."""
        if total < self.world_size:
            raise DistributedError(
                f"a meta-batch of {total} tasks cannot be split over {self.world_size} ranks; "
                f"use at least {self.world_size} tasks (meta_batch / tasks_per_iteration / "
                "meta_batch_size) or fewer processes (--nproc-per-node)"
            )
        base, extra = divmod(total, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        stop = start + base + (1 if self.rank < extra else 0)
        return Shard(start, stop, total, self if self.enabled else None)

    # -- collectives (all are no-ops in one process) -------------------------------------
    def _sum_(self, t: Tensor) -> Tensor:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over ranks (a new tensor; ``t`` itself with one process)."""
        if not self.enabled:
            return t
        return self._sum_(t.detach().clone())

    def all_reduce_grads(self, params: Iterable[Tensor]) -> None:
        """Sum the ``.grad`` of ``params`` over ranks in place (one all-reduce): each rank's
        loss must be its share of the global objective. A grad missing on a rank counts as
        zero; one missing on every rank stays ``None`` (optimizers skip it, as in one process)."""
        if not self.enabled:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        device = params[0].device
        flags = torch.tensor([p.grad is not None for p in params], device=device)
        parts = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        buf = self._sum_(torch.cat([*(g.reshape(-1) for g in parts), flags.to(parts[0].dtype)]))
        present = (buf[-len(params) :] > 0).tolist()
        i = 0
        for p, g, keep in zip(params, parts, present, strict=True):
            n = p.numel()
            if keep:
                p.grad = g.copy_(buf[i : i + n].view_as(g))
            i += n

    def any(self, flags: Tensor) -> bool:
        """True when any element of ``flags`` is true on any rank."""
        local = flags.any().to(torch.float32).reshape(1)
        return bool(self.all_reduce(local).item() > 0) if self.enabled else bool(local.item())

    def weighted_sum(self, values: Mapping[str, float], weight: float) -> dict[str, float]:
        """``sum over ranks of weight * value`` per key (one all-reduce): with ``weight`` the
        shard's share, the global mean of per-task means; with 1.0, a total (e.g. env steps)."""
        if not self.enabled:
            return dict(values)
        keys = list(values)
        # a rank with no share (weight 0) adds 0, even where its local value is NaN
        t = torch.tensor([float(values[k]) * weight if weight else 0.0 for k in keys])
        t = t.to(torch.float64)
        out = self._sum_(t).tolist()
        return dict(zip(keys, out, strict=True))

    def normalize_advantages(self, adv: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
        """``(adv - mean) / (std + eps)`` with the mean and (unbiased) std of the elements on all
        ranks, and this rank's share ``n_local / n_total`` of them (a 0-dim tensor)."""
        if not self.enabled:  # as meta_rl.rl.ppo.normalize_advantages
            return (adv - adv.mean()) / (adv.std() + eps), torch.ones((), device=adv.device)
        # one all-reduce of (count, sum, sum of squares), accumulated in float64
        a = adv.detach().to(torch.float64)
        n = torch.tensor(float(adv.numel()), dtype=torch.float64, device=adv.device)
        count, total, squares = self._sum_(torch.stack([n, a.sum(), a.square().sum()]))
        mean = total / count.clamp_min(1.0)
        var = (squares - count * mean * mean).clamp_min(0.0) / (count - 1.0).clamp_min(1.0)
        mean, std = mean.to(adv.dtype), var.sqrt().to(adv.dtype)
        return (adv - mean) / (std + eps), (n / count.clamp_min(1.0)).to(adv.dtype)

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values (in place)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled through the process group; internal use)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_config(self, config: Any) -> Any:
        """Rank 0's config on every rank (the others start from their preset's defaults)."""
        if not self.enabled:
            return config
        theirs = self.broadcast_object(config.to_dict())
        return config if self.is_main else type(config).from_dict(theirs)

    def load_last(self, run: Any, device: str | torch.device = "cpu") -> Any:
        """The run's newest checkpoint (rank 0 reads it; the others receive it)."""
        ck = run.load_last("cpu") if run is not None else None
        if self.enabled:
            ck = self.broadcast_object(ck)
        if ck is not None:
            ck.tensors = {k: v.to(device) for k, v in ck.tensors.items()}
            ck.state = _to_device(ck.state, device)
        return ck

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def _to_device(state: Any, device: str | torch.device) -> Any:
    if isinstance(state, Tensor):
        # RNG states (uint8 byte tensors) stay on the CPU, where set_rng_state wants them
        return state if state.dtype == torch.uint8 else state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_device(v, device) for v in state]
    if isinstance(state, tuple):
        return tuple(_to_device(v, device) for v in state)
    return state


_CONTEXT = Context()


def context() -> Context:
    """The current context: set by :func:`init`, else a single-process one."""
    return _CONTEXT


def launched() -> bool:
    """True when this process was started by ``torchrun`` (or with its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def pending() -> bool:
    """True in a process torchrun started as one of several ranks that has not joined the
    process group yet (the ``meta-rl`` script can then hand over to :func:`main`)."""
    import torch.distributed as dist

    return launched() and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized()


def init(timeout_s: float | None = None) -> Context:
    """Join the process group described by torchrun's environment variables.

    Backends: gloo for CPU tensors, NCCL for CUDA tensors when CUDA is available (each rank then
    uses ``cuda:LOCAL_RANK``, so ``device="cuda"`` / ``"auto"`` means the rank's own GPU).
    Collectives give up after ``timeout_s`` (default ``$META_RL_DIST_TIMEOUT`` or 300 s)."""
    global _CONTEXT
    import torch.distributed as dist

    if not launched():
        _CONTEXT = Context()
        return _CONTEXT
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, "300"))
    backend = "gloo"
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPUs; "
                "use --nproc-per-node <= the GPU count"
            )
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=_dt.timedelta(seconds=timeout_s),
        )
    _CONTEXT = Context(rank, world, local)
    log.debug("rank %d of %d (local %d), backend %s", rank, world, local, backend)
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    global _CONTEXT
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = Context()
