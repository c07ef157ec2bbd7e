"""Outer (meta) objectives over a batch of tasks, with no Python loop over tasks.

The meta-params are expanded along a task axis (a view), adapted for all tasks at once by
:func:`~meta_rl.core.inner.inner_update`, and scored on each task's query data. The per-task
work is vectorised by the loss function's batched forward (:func:`~meta_rl.core.functional.
batched_call`: batched matrix products for linear chains, ``torch.func.vmap`` otherwise).
``loss_fn(params, data) -> [T]`` takes stacked params and a task batch ``data`` (a tensor or a
tuple / list / dict of tensors, each with leading axis T).

- MAML: :func:`maml_loss` (second order), FOMAML: ``first_order=True``.
- Meta-SGD: ``lr`` is a dict of learnable tensors (:func:`init_metasgd_lrs`).
- ANIL: ``adapt`` names the head; the body stays shared (unstacked) across tasks.
- Reptile: :func:`reptile_direction` and :func:`reptile_update_`.
- ``factored``: Linear weights of a batched linear chain adapted in
  low-rank form (see :class:`~meta_rl.core.functional.LowRankWeight`); same numbers, less work.
- :func:`maml_loss_vmapped` is the same objective for a loss written for ONE task,
  vectorised with ``torch.func.vmap`` (inner update in ``mode="func"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from meta_rl.core.functional import LowRankWeight, Params, dense, expand_params
from meta_rl.core.inner import LearningRate, LossFn, inner_update

__all__ = [
    "MetaLoss",
    "num_tasks",
    "maml_loss",
    "maml_loss_vmapped",
    "init_metasgd_lrs",
    "reptile_direction",
    "reptile_update_",
    "adaptation_scores",
]


class MetaLoss(NamedTuple):
    loss: Tensor
    """mean post-adaptation query loss (the scalar to backpropagate)"""
    task_losses: Tensor
    """[T] post-adaptation query loss of each task"""
    adapted: Params
    """the adapted (stacked) params"""


def num_tasks(data: Any) -> int:
    """The leading (task) axis of a tensor or of the first tensor of a tuple / list / dict."""
    if isinstance(data, Tensor):
        if data.dim() == 0:
            raise ValueError("task data must have a leading task axis; got a 0-dim tensor")
        return data.shape[0]
    if isinstance(data, Mapping):
        data = list(data.values())
    if isinstance(data, Sequence) and not isinstance(data, str) and len(data) > 0:
        return num_tasks(data[0])
    raise TypeError(f"cannot find the task axis of {type(data).__name__}; pass tensors")


def _check_task_losses(losses: Tensor, tasks: int) -> Tensor:
    if losses.shape != (tasks,):
        raise ValueError(
            f"loss_fn must return one loss per task, shape ({tasks},); got {tuple(losses.shape)}"
        )
    return losses


def maml_loss(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    support: Any,
    query: Any,
    lr: LearningRate,
    steps: int = 1,
    first_order: bool = False,
    adapt: Iterable[str] | None = None,
    factored: Iterable[str] = (),
) -> MetaLoss:
    """MAML / FOMAML / Meta-SGD / ANIL objective: mean query loss after ``steps`` inner steps
    on each task's support data. Backpropagate ``.loss`` to get the meta-gradient (it reaches
    ``params`` and, for Meta-SGD, the ``lr`` tensors). ``factored``: see ``inner_update``."""
    tasks = num_tasks(support)
    names = list(params) if adapt is None else list(adapt)
    fast = _task_copies(params, names, tasks, factored, lr)
    adapted = inner_update(
        loss_fn, fast, support, lr, steps, first_order, adapt=names, factored=factored
    )
    task_losses = _check_task_losses(loss_fn(adapted, query), tasks)
    return MetaLoss(task_losses.mean(), task_losses, adapted)


def _task_copies(
    params: Mapping[str, Tensor], names: list[str], tasks: int, factored: Iterable[str], lr: Any
) -> Params:
    """Adapted names get a task axis, except weights that will be adapted in factored form."""
    keep = set() if isinstance(lr, Mapping) else set(factored)
    stacked = expand_params({k: params[k] for k in names if k not in keep}, tasks)
    return {**params, **stacked}


def maml_loss_vmapped(
    task_loss_fn: LossFn,
    params: Mapping[str, Tensor],
    support: Any,
    query: Any,
    lr: LearningRate,
    steps: int = 1,
    first_order: bool = False,
    adapt: Iterable[str] | None = None,
) -> MetaLoss:
    """:func:`maml_loss` for a loss written for one task (``task_loss_fn(params, data_t) ->
    scalar``), vectorised over tasks with ``torch.func.vmap``."""
    names = list(params) if adapt is None else list(adapt)

    def one_task(sup: Any, qry: Any) -> tuple[Tensor, Params]:
        adapted = inner_update(
            task_loss_fn, params, sup, lr, steps, first_order, adapt=names, mode="func"
        )
        return task_loss_fn(adapted, qry), {k: adapted[k] for k in names}

    task_losses, adapted = torch.func.vmap(one_task, randomness="error")(support, query)
    return MetaLoss(task_losses.mean(), task_losses, {**params, **adapted})


METASGD_PREFIX = "inner_lr/"
"""checkpoint names of Meta-SGD's step sizes: ``inner_lr/<param name>`` (every trainer)"""


def init_metasgd_lrs(
    params: Mapping[str, Tensor], value: float, names: Iterable[str] | None = None
) -> Params:
    """Meta-SGD's learnable per-parameter step sizes: a leaf tensor shaped like each param."""
    keys = list(params) if names is None else list(names)
    return {
        k: torch.full_like(params[k], value, memory_format=torch.contiguous_format)
        .detach()
        .requires_grad_(True)
        for k in keys
    }


def reptile_direction(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    data: Any,
    lr: LearningRate,
    steps: int,
    adapt: Iterable[str] | None = None,
    factored: Iterable[str] = (),
) -> Params:
    """Reptile's direction ``mean_t(adapted_t - params)`` after ``steps`` SGD steps per task
    (no graph is kept: Reptile is first order by construction)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1 for Reptile")
    tasks = num_tasks(data)
    names = list(params) if adapt is None else list(adapt)
    meta = {k: v.detach() for k, v in params.items()}
    fast = _task_copies(meta, names, tasks, factored, lr)
    adapted = inner_update(
        loss_fn, fast, data, lr, steps, first_order=True, adapt=names, factored=factored
    )
    out = {}
    for k in names:
        a = adapted[k]
        if isinstance(a, LowRankWeight):  # mean_t(W_t) without building every W_t
            base = a.base.detach()
            d = (base.mean(0) if base.dim() == 3 else base) - meta[k]
            for c, dz, h in a.terms:
                d = d - c * torch.einsum("tmo,tmi->oi", dz.detach(), h.detach()) / tasks
            out[k] = d
        else:
            out[k] = (a.detach() - meta[k]).mean(0)
    return out


@torch.no_grad()
def reptile_update_(
    params: Mapping[str, Tensor], direction: Mapping[str, Tensor], epsilon: float
) -> None:
    """In place: ``params[k] += epsilon * direction[k]``."""
    for k, d in direction.items():
        params[k].add_(d, alpha=epsilon)


def adaptation_scores(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    support: Any,
    query: Any,
    lr: LearningRate,
    steps: int,
    metric_fn: LossFn | None = None,
    adapt: Iterable[str] | None = None,
    factored: Iterable[str] = (),
) -> list[Tensor]:
    """Per-task query scores ``[T]`` after 0, 1, ..., ``steps`` inner steps on ``support`` (no
    meta-graph): the supervised few-shot measurement. The score is ``metric_fn(adapted, query)``
    if given, else the loss. (RL's counterpart, returns of fresh episodes after each inner step,
    is :func:`meta_rl.rl.maml.adaptation_curve`.)"""
    score = loss_fn if metric_fn is None else metric_fn
    tasks = num_tasks(support)
    names = list(params) if adapt is None else list(adapt)
    meta = {k: dense(v).detach() for k, v in params.items()}
    lrs = {k: v.detach() for k, v in lr.items()} if isinstance(lr, Mapping) else lr
    fast = _task_copies(meta, names, tasks, factored, lrs)
    curve = []
    for step in range(steps + 1):
        if step > 0:
            fast = inner_update(
                loss_fn, fast, support, lrs, 1, first_order=True, adapt=names, factored=factored
            )
            fast = {k: v.detach() for k, v in fast.items()}
        with torch.no_grad():
            curve.append(score(fast, query).detach())
    return curve
