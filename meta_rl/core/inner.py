"""The inner (adaptation) update: differentiable SGD steps on a params dict.

``loss_fn(params, data) -> Tensor`` is any loss: a regression or classification loss, or a
policy-gradient surrogate. With stacked params (leading task axis) it returns one loss per task
``[T]``; the update differentiates their sum, which gives every task its own gradient because
tasks share no parameters. With a single task's params it returns a scalar.

- ``lr`` is a float (MAML), or a dict of tensors shaped like the adapted params (Meta-SGD's
  learned per-parameter step sizes; gradients reach them through the update).
- ``first_order=True`` treats the inner gradients as constants (FOMAML): the Hessian terms of
  the meta-gradient vanish and nothing else changes.
- ``mode="autograd"`` (default, fastest) uses ``torch.autograd.grad`` and builds a graph for
  the outer backward; ``mode="func"`` uses ``torch.func.grad`` so the update runs inside
  ``torch.func.vmap`` / ``torch.func.grad`` transforms (one task's params per call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from meta_rl.core.functional import LowRankWeight, Params, dense, record_linear_layers

__all__ = ["LossFn", "LearningRate", "inner_update", "sgd_step"]

LossFn = Callable[[Params, Any], Tensor]
LearningRate = float | Tensor | Mapping[str, Tensor]


def _lr_for(lr: LearningRate, name: str) -> float | Tensor:
    if isinstance(lr, Mapping):
        if name not in lr:
            raise KeyError(f"lr has no entry for adapted parameter {name!r}; it has {list(lr)}")
        return lr[name]
    return lr


def sgd_step(params: Params, grads: Mapping[str, Tensor], lr: LearningRate) -> Params:
    """``params[k] - lr[k] * grads[k]`` for the keys of ``grads``; other entries unchanged."""
    out = dict(params)
    for k, g in grads.items():
        step = _lr_for(lr, k)
        if isinstance(step, Tensor):
            out[k] = torch.addcmul(params[k], step, g, value=-1.0)
        else:
            out[k] = torch.add(params[k], g, alpha=-step)
    return out


def _check(steps: int, mode: str) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps={steps!r} must be an integer >= 0")
    if mode not in ("autograd", "func"):
        raise ValueError(f"mode={mode!r} is not allowed; choose 'autograd' or 'func'")


def _total(loss: Tensor) -> Tensor:
    return loss if loss.dim() == 0 else loss.sum()


def inner_update(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    data: Any,
    lr: LearningRate,
    steps: int = 1,
    first_order: bool = False,
    adapt: Iterable[str] | None = None,
    mode: Literal["autograd", "func"] = "autograd",
    factored: Iterable[str] = (),
) -> Params:
    """``steps`` SGD steps on ``loss_fn(params, data)``, differentiable w.r.t. ``params`` and
    ``lr`` (unless ``first_order``). Only the names in ``adapt`` (default: all) change.

    ``factored`` names Linear weights that ``loss_fn`` uses only through
    :func:`~meta_rl.core.functional.batched_call` (see ``linear_chain_weights``): with a scalar
    ``lr`` their steps are kept as :class:`~meta_rl.core.functional.LowRankWeight` (same
    numbers, no per-task weight tensors; they need no task axis). Ignored in ``mode="func"``
    and for per-parameter (Meta-SGD) lrs."""
    _check(steps, mode)
    names = list(params) if adapt is None else list(adapt)
    unknown = [k for k in names if k not in params]
    if unknown:
        raise KeyError(f"adapt names {unknown} are not in params; known: {list(params)}")
    params = dict(params)
    factored = list(factored)
    unknown = [k for k in factored if k not in params]
    if unknown:
        raise KeyError(f"factored names {unknown} are not in params; known: {list(params)}")
    low_rank = [k for k in factored if k in names]
    if low_rank and mode == "autograd" and not isinstance(lr, Mapping):
        return _factored_update(loss_fn, params, data, lr, steps, first_order, names, low_rank)
    params = {k: dense(v) for k, v in params.items()}
    if mode == "func":
        for _ in range(steps):
            rest = {k: v for k, v in params.items() if k not in names}

            def total(sub: Params, rest: Params = rest) -> Tensor:
                return _total(loss_fn({**rest, **sub}, data))

            grads = torch.func.grad(total)({k: params[k] for k in names})
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            params = sgd_step(params, grads, lr)
        return params

    with torch.enable_grad():
        for _ in range(steps):
            for k in names:  # a parameter without a graph (evaluation) becomes a fresh leaf
                if not params[k].requires_grad:
                    params[k] = params[k].detach().requires_grad_(True)
            loss = _total(loss_fn(params, data))
            grads = torch.autograd.grad(
                loss, [params[k] for k in names], create_graph=not first_order
            )
            params = sgd_step(params, dict(zip(names, grads, strict=True)), lr)
    return params


def _factored_update(
    loss_fn: LossFn,
    params: Params,
    data: Any,
    lr: float | Tensor,
    steps: int,
    first_order: bool,
    names: list[str],
    low_rank: list[str],
) -> Params:
    """SGD steps where the Linear weights in ``low_rank`` move by ``-lr * dz^T h`` (kept
    factored) and the other adapted params by ``-lr * grad`` (dense)."""
    plain = [k for k in names if k not in low_rank]  # biases too: they stay dense
    for k in low_rank:
        w = params[k]
        if not isinstance(w, LowRankWeight):
            w = LowRankWeight(w)
        if not w.base.requires_grad and not any(d.requires_grad for _, d, _ in w.terms):
            w = LowRankWeight(w.base.detach().requires_grad_(True), w.terms)  # evaluation
        params[k] = w
    with torch.enable_grad():
        for _ in range(steps):
            for k in plain:
                if not params[k].requires_grad:
                    params[k] = params[k].detach().requires_grad_(True)
            with record_linear_layers() as tape:
                loss = _total(loss_fn(params, data))
            uses = [(key, h, z) for key, h, z in tape if key in low_rank]
            missing = sorted(set(low_rank) - {key for key, _, _ in uses})
            if missing:
                raise ValueError(
                    f"factored weights {missing} were not used by loss_fn through batched_call"
                )
            if not loss.requires_grad:
                raise ValueError("loss_fn's loss does not depend on the adapted params")
            inputs = [z for _, _, z in uses] + [params[k] for k in plain]
            grads = torch.autograd.grad(loss, inputs, create_graph=not first_order)
            new_terms: dict[str, list] = {k: [] for k in low_rank}
            for (key, h, _), dz in zip(uses, grads, strict=False):
                if first_order:
                    h = h.detach()
                new_terms[key].append((lr, dz, h))
            dense_grads = dict(zip(plain, grads[len(uses) :], strict=True))
            params = sgd_step(params, dense_grads, lr)
            for k in low_rank:
                w = params[k]
                params[k] = LowRankWeight(w.base, [*w.terms, *new_terms[k]]).compact()
    return params
