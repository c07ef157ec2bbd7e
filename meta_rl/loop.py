"""The training-loop skeleton every trainer calls: resume, the divergence guard, the tail of an
iteration (evaluate, log, checkpoint, progress) and the end of training.

Plain functions, called explicitly from each trainer's loop (cleanrl style: the update stays one
top-to-bottom block in the trainer's file; its bookkeeping is one call here)::

    ck = loop.resume(run, dist, device, expected=model_tensors, state_keys=("optimizer", ...))
    ...restore from ck...
    with loop.progress(run, config, start, key="return"):
        for it in range(start, config.iterations):
            step = it + 1
            ...one update; metrics = {...}...
            loop.end_step(run, config, step, metrics, params, evaluation, checkpoint, HINT)
    return loop.final(metrics, evaluation)

Conventions, the same for every trainer:

- ``eval_every``, ``log_every`` and ``checkpoint_every`` count iterations; each is also due at the
  last iteration (so a run always ends evaluated, logged and checkpointed); 0 turns off the
  periodic one, never the last.
- Divergence: a non-finite loss (any metric named ``*loss``) or parameter stops training
  *before* anything of that iteration is evaluated, logged or saved, so the newest checkpoint is
  the last good one. The message says which checkpoint is kept, or that none was written yet.
- Without a run (``run=None``, e.g. tests or notebooks) nothing is written; metrics go to the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from meta_rl.checkpoint import Checkpoint, CheckpointError, list_checkpoints
from meta_rl.runs import RunError, due

log = logging.getLogger(__name__)

__all__ = ["TrainingDiverged", "resume", "progress", "guard", "end_step", "final"]

Metrics = dict[str, float]
Saved = tuple[Mapping[str, Tensor], Mapping[str, Any]]
"""what a checkpoint holds: model tensors, trainer state (optimizer, RNG states...)"""


class TrainingDiverged(RunError):
    """Training met a non-finite loss or parameter (or another trainer-specific blow-up, e.g.
    MAML's KL) and stopped; the run's newest checkpoint is the last good one."""


# --------------------------------------------------------------------------------------------
# Start: resume from the run's newest checkpoint
# --------------------------------------------------------------------------------------------
def resume(
    run: Any,
    dist: Any,
    device: str | torch.device,
    expected: Mapping[str, Tensor],
    state_keys: Iterable[str] = (),
) -> Checkpoint | None:
    """The run's newest checkpoint (every data-parallel rank receives rank 0's), checked against
    what this trainer will restore: the tensor names and shapes of ``expected`` and the trainer
    state entries ``state_keys``. ``None`` for a fresh run or without a run."""
    ck = dist.load_last(run, device)
    if ck is not None:
        check_checkpoint(ck, expected, state_keys)
    return ck


def check_checkpoint(
    ck: Checkpoint, expected: Mapping[str, Tensor], state_keys: Iterable[str] = ()
) -> None:
    """Raise :class:`CheckpointError` (naming the file and what differs) unless ``ck`` holds
    exactly the tensors of ``expected`` (same names and shapes) and the state ``state_keys``."""
    where = ck.path.name if ck.path is not None else "the checkpoint"
    names, want = set(ck.tensors), set(expected)
    if names != want:
        missing, extra = sorted(want - names), sorted(names - want)
        parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else [])
        raise CheckpointError(
            f"{where} does not fit this model: tensors {'; '.join(parts)}. It was written by "
            "another model or config"
        )
    for k, t in expected.items():
        if tuple(ck.tensors[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{where} does not fit this model: tensor {k!r} has shape "
                f"{tuple(ck.tensors[k].shape)}, the model's is {tuple(t.shape)}"
            )
    absent = [k for k in state_keys if k not in (ck.state or {})]
    if absent:
        raise CheckpointError(f"{where} lacks the trainer state {absent}: it cannot be resumed")


# --------------------------------------------------------------------------------------------
# The progress bar over iterations
# --------------------------------------------------------------------------------------------
@contextmanager
def progress(run: Any, config: Any, start: int, key: str) -> Iterator[None]:
    """A progress bar over ``config.iterations`` (from ``start``) showing metric ``key``, closed
    on the way out; nothing without a run."""
    bar = run.progress(config.iterations, start, key) if run is not None else None
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------------------------
# The divergence guard
# --------------------------------------------------------------------------------------------
def diverged(step: int, run: Any, what: str, hint: str) -> TrainingDiverged:
    """The error that stops training at ``step``: ``what`` happened; says which checkpoint of
    the run is kept (or that none was written yet) and ``hint`` (what to change)."""
    kept = list_checkpoints(run.checkpoint_dir) if run is not None else []
    if run is None:
        where = "nothing was saved (no run folder)"
    elif kept:
        where = f"the last good checkpoint (step {kept[-1][0]}) is kept in {run.checkpoint_dir}"
    else:
        where = "no checkpoint had been written yet"
    return TrainingDiverged(f"iteration {step}: {what}; training stopped, {where}. {hint}")


def guard(
    step: int, run: Any, loss: float | Mapping[str, float], params: Iterable[Tensor], hint: str
) -> None:
    """Raise :class:`TrainingDiverged` if ``loss`` (a value, or named values) or any of
    ``params`` is NaN/inf."""
    losses = loss if isinstance(loss, Mapping) else {"loss": loss}
    bad = {k: v for k, v in losses.items() if not math.isfinite(float(v))}
    if bad:
        detail = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise diverged(step, run, f"the loss became NaN/inf ({detail})", hint)
    for p in params:
        if not bool(torch.isfinite(p.detach()).all()):
            raise diverged(step, run, "the parameters became NaN/inf", hint)


# --------------------------------------------------------------------------------------------
# The tail of one iteration, and the end
# --------------------------------------------------------------------------------------------
def end_step(
    run: Any,
    config: Any,
    step: int,
    metrics: Metrics,
    params: Iterable[Tensor],
    evaluate: Callable[[], Mapping[str, float]],
    checkpoint: Callable[[], Saved],
    hint: str,
) -> None:
    """After the update of iteration ``step``: the divergence guard on ``params`` and on every
    metric named ``*loss`` (``hint`` says what to change), then, when due, ``evaluate()`` into
    ``metrics``, the metrics row, and the checkpoint of what ``checkpoint()`` returns."""
    guard(step, run, {k: v for k, v in metrics.items() if k.endswith("loss")}, params, hint)
    last = config.iterations
    if due(step, config.eval_every, last):
        metrics.update(evaluate())
    if due(step, config.log_every, last):
        if run is not None:
            run.log(step, metrics)
        else:
            log.info("iteration %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if run is not None and due(step, config.checkpoint_every, last):
        tensors, state = checkpoint()
        run.save(step, tensors, state)


def final(metrics: Metrics, evaluate: Callable[[], Mapping[str, float]]) -> Metrics:
    """The metrics training ends with: the last iteration's (evaluated, see :func:`end_step`),
    or a fresh evaluation when no iteration ran (a run resumed at its last step)."""
    return dict(metrics) if metrics else dict(evaluate())
