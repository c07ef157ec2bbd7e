"""Data-parallel meta-training over ``torch.distributed`` (launched by ``torchrun``).

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
  keeps its rows (:meth:`Shard.noise` for actions, ``row_window`` on batched envs, per-row
  reset seeds on Gymnasium vector envs), so row ``r`` sees exactly the numbers it would see in
  one process. The cost is drawing ``total`` instead of ``size`` rows of noise, negligible next
  to the policy's forward; the random stream of a single process is unchanged.
- **Objectives**: a shard's loss is its weighted share of the mean over tasks (``size / total``,
  :attr:`Shard.weight`); gradients, TRPO's Fisher-vector products and line-search values are
  summed over ranks (:meth:`Context.all_reduce`, :meth:`Context.all_reduce_grads`). Ranks then
  take identical decisions (CG stops, line-search acceptance, divergence checks).
- **Few-shot episodes** (ProtoNet, Siamese, MANN): whole episodes are the shard's rows (the
  Conv-4 normalises per episode under ``vmap``, so episodes never see each other); a ProtoNet /
  Siamese ``meta_batch`` of 1 splits the episode's images instead, with
  :class:`meta_rl.fewshot.models.SyncBatchNorm2d` and all-reduced embeddings; a MANN sequence
  is never split (``batch_size >= ranks``).
- **Early stops**: a rollout that stops when all episodes are over asks all ranks
  (:meth:`Context.any`), so every rank draws the same amount of noise.
- **Parameters** are broadcast from rank 0 at the start (and after a resume), the config is
  rank 0's (:meth:`Context.sync_config`), and only rank 0 has a run folder: it writes
  config, metrics, TensorBoard events, checkpoints, logs and the progress bar; other ranks get
  ``run=None`` and read a resumed checkpoint through rank 0 (:meth:`Context.load_last`).

Failures: collectives time out after ``META_RL_DIST_TIMEOUT`` seconds (default 300) and a rank
that dies makes ``torchrun``'s agent stop the others; see :func:`main`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["Shard", "Context", "DistributedError", "context", "init", "shutdown", "main"]

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

    def noise(self, generator: torch.Generator | None, rows_per_task: int = 1) -> Any:
        """``generator`` for an action sampler whose leading axis is this shard's tasks
        (``rows_per_task=1``, e.g. ``[T, E, ...]`` heads) or rows (``rows_per_task=E``, e.g.
        ``[T * E, ...]`` heads): the whole batch's noise is drawn and this shard's part kept."""
        if self.whole or generator is None:
            return generator
        from meta_rl.policies.distributions import RowWindow

        return RowWindow(generator, self.start * rows_per_task, self.total * rows_per_task)

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


def fisher_share(learner: Any, shard: Shard) -> tuple[Any, float]:
    """MAML-TRPO's Fisher uses the first ``fisher_tasks`` tasks of the meta-batch (0: all).
    Returns ``(learner, weight)``: a view of ``learner`` whose config makes this shard's outer
    problem use exactly its tasks among those (its first ones: shards are contiguous), and this
    shard's share of the Fisher's mean over them (0.0: none of them are this shard's)."""
    import copy
    import dataclasses

    cfg = learner.config
    k = cfg.fisher_tasks or shard.total
    mine = max(0, min(k, shard.stop) - shard.start)
    if shard.whole:
        return learner, 1.0
    view = copy.copy(learner)  # same parameters, another config
    # 0: all of this shard's tasks; a shard without any still builds a (discarded) 1-task Fisher
    local = 0 if mine == shard.size else max(mine, 1)
    view.config = dataclasses.replace(cfg, fisher_tasks=local)
    return view, mine / k


def share_objective(objective: Any, loss_weight: float, fisher_weight: float) -> Any:
    """A TRPO objective ``(params, second_order) -> (loss, kl)`` of one shard, scaled to its
    additive share of the global objective: the loss and the line-search KL (means over all
    tasks) by ``loss_weight``, the second-order KL (TRPO's metric, a mean over the Fisher's
    tasks) by ``fisher_weight``; ``None`` instead of a KL when the shard has no Fisher tasks."""
    import dataclasses

    from meta_rl.rl.trpo import GaussNewtonKL

    def scaled(loss: Any) -> Any:
        if isinstance(loss, Tensor):
            return loss * loss_weight
        # a loss with its own gradient (trpo.LossWithGrad)
        return dataclasses.replace(
            loss, value=loss.value * loss_weight, grad=loss.grad * loss_weight
        )

    def shared(params: Any, second_order: bool) -> tuple[Any, Any]:
        loss, kl = objective(params, second_order)
        loss = scaled(loss)
        if not second_order:
            return loss, kl * loss_weight
        if fisher_weight == 0.0:
            return loss, None
        if isinstance(kl, GaussNewtonKL):
            metric = kl.metric
            kl = GaussNewtonKL(
                kl.outputs, lambda vs: [fisher_weight * m for m in metric(vs)], kl.kl
            )
        elif hasattr(kl, "matvec"):  # a ready Fisher-vector product (trpo.FisherProduct)
            matvec = kl.matvec
            kl = dataclasses.replace(kl, matvec=lambda v: fisher_weight * matvec(v))
        else:
            kl = kl * fisher_weight
        return loss, kl

    return shared


def attach_shard(env: Any, shard: Shard) -> Any:
    """Make ``env`` (``shard.size`` tasks) draw its per-row noise like rows ``shard`` of a
    ``shard.total``-task env: sets ``env.shard`` (read by
    :func:`meta_rl.rl.rollout.sample_episodes`) and ``row_window`` on the batched env (or the
    Gymnasium vector env) underneath any wrappers. Returns ``env``."""
    if shard.whole:
        return env
    env.shard = shard
    inner = env
    while inner is not None:
        if any("row_window" in vars(c) for c in type(inner).__mro__):  # declared, not proxied
            per = inner.envs_per_task
            inner.row_window = (shard.start * per, shard.total * per)
            return env
        inner = getattr(inner, "env", None)
    raise DistributedError(
        f"env {type(env).__name__} has no batched env with a row_window underneath; sharding "
        "the meta-batch needs one (a meta_rl_envs BatchedEnv or meta_rl.rl.rollout.VectorTaskEnv)"
    )


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
        from meta_rl.rl.ppo import normalize_advantages

        if not self.enabled:
            return normalize_advantages(adv, eps), torch.ones((), device=adv.device)
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


# --------------------------------------------------------------------------------------------
# Entry point for `torchrun -m meta_rl ...`
# --------------------------------------------------------------------------------------------
# trainers that shard the meta-batch (the others would only repeat rank 0's work)
DATA_PARALLEL = frozenset(
    {
        "meta_rl.rl.maml:train",
        "meta_rl.rl.reptile:train",
        "meta_rl.rl.rl2:train",
        "meta_rl.fewshot.gradient:train",
        "meta_rl.fewshot.metric:train_protonet",  # splits the meta_batch of episodes
        "meta_rl.fewshot.metric:train_siamese",
        "meta_rl.fewshot.mann:train",  # splits the batch_size sequences
    }
)


def _trainer_path(preset: str | None) -> str | None:
    from meta_rl.presets import PRESETS

    return PRESETS[preset].trainer if preset in PRESETS else None


def _train_preset(argv: Sequence[str]) -> str | None:
    """Rank 0: the preset a ``train`` command line runs (``None``: not a train command, or one
    the CLI will reject with a message)."""
    from pathlib import Path

    from meta_rl.cli import _read_spec, build_parser
    from meta_rl.runs import CONFIG_FILE, read_run

    try:
        args, _ = build_parser().parse_known_args(list(argv))
        if args.command != "train":
            return None
        if args.spec:
            return _read_spec(args.spec)[0]
        if args.out and (Path(args.out) / CONFIG_FILE).exists():
            return read_run(args.out)["preset"]
    except (SystemExit, Exception):  # the CLI reports it on rank 0
        return None
    return None


def _follower(preset: str | None) -> int:
    """Rank > 0: train ``preset`` without a run folder. The config is rank 0's (synced by the
    trainer), so no file of rank 0's command line (YAML, run folder) has to exist here."""
    from meta_rl.cli import _user_error_types
    from meta_rl.presets import get_preset

    if preset is None:
        return 0
    p = get_preset(preset)
    try:
        p.load_trainer()(p.make_config(), None)
    except _user_error_types():  # the same error stops rank 0, which reports it
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meta_rl``: the CLI, joined to a process group when started by torchrun.

    Rank 0 runs the command as usual (it alone writes the run folder); ranks > 0 of ``train``
    run the same trainer without a run folder. Other commands run on rank 0 only. A failure in
    a collective (a peer died or hung past the timeout) ends this rank with status 1 and a
    message; torchrun's agent then stops the remaining ranks with SIGTERM, which ends each of
    them the same way (files are written atomically, so the last checkpoint is whole)."""
    from meta_rl.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not pending():
        return cli_main(argv)
    ctx = init()
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        preset = ctx.broadcast_object(_train_preset(argv) if ctx.is_main else None)
        trainer = _trainer_path(preset)
        if trainer is not None and trainer not in DATA_PARALLEL:
            if ctx.is_main:
                print(
                    f"meta-rl: error: preset {preset!r} (trainer {trainer}) has no data-parallel "
                    f"training; run it without torchrun. Data-parallel trainers: "
                    f"{', '.join(sorted(DATA_PARALLEL))}",
                    file=sys.stderr,
                )
            return 2
        if ctx.is_main:
            return cli_main(argv)
        logging.getLogger("meta_rl").setLevel(logging.WARNING)
        return _follower(preset)
    except (RuntimeError, OSError) as err:
        if isinstance(err, RankStopped):
            why = str(err)
        elif _is_comm_error(err):
            first = str(err).splitlines()[0] if str(err) else ""
            why = f"lost contact with the other ranks ({type(err).__name__}: {first})"
        else:
            raise
        print(
            f"meta-rl: error: rank {ctx.rank} of {ctx.world_size} {why}; the job stops. "
            "Continue from the last checkpoint with the same command and --resume.",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        shutdown()


class RankStopped(RuntimeError):
    """This rank was told to stop (SIGTERM: torchrun stops every rank once one has failed)."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise RankStopped(
        f"was stopped by {signal.Signals(signum).name} (torchrun stops every rank once one fails)"
    )


def _is_comm_error(err: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return any(s in text for s in ("gloo", "nccl", "connection reset", "timed out", "broken pipe"))
