"""Trust-region policy optimisation (Schulman et al. 2015) over a list of parameter tensors.

The step is problem-agnostic: it sees the objective only through the :class:`Objective`
interface, at the current values of the parameters it updates in place:

- ``local_model()``: the surrogate loss to *minimise*, its gradient (flat, ordered like the
  parameters) and ``fvp(v)``, the product of TRPO's metric (the Hessian of the mean KL between
  the sampling policy and the policy at the parameters, i.e. the Fisher) with a flat vector;
- ``loss_and_kl()``: the loss and that KL as plain values (no graph), for the line search.

How the objective forms them is its own business: :class:`KLObjective` differentiates a plain
``(loss, kl)`` function with autograd (the KL's Hessian by double backward,
:func:`hessian_fvp`); MAML-TRPO's outer objective (``meta_rl.rl.maml.OuterProblem`` and its
faster drop-ins in ``meta_rl.rl.maml_fast``) adapts on each task's support data first, so its
products go through the inner update. Data-parallel training wraps the objective in
:class:`Shared` (this rank's share, summed over the ranks).

1. ``loss, g, fvp = objective.local_model()``.
2. Conjugate gradient solves ``F x = -g`` in ``cg_iters`` products (``damping`` added).
3. Scale ``x`` to the KL boundary: ``step = sqrt(2 max_kl / x^T F x) * x`` (``F x = -g - r``
   from CG's residual ``r``: no extra product).
4. Backtracking line search: accept the first ``ratio^i * step`` that lowers the loss and keeps
   ``kl <= max_kl``; otherwise keep the old params.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "LocalModel",
    "Objective",
    "KLObjective",
    "Shared",
    "TRPOInfo",
    "conjugate_gradient",
    "trpo_step",
    "hessian_fvp",
    "gauss_newton_fvp",
    "flat_grad",
    "flat",
]


@dataclass
class LocalModel:
    """What a TRPO step needs of its objective at the current params: the loss (a scalar
    without graph), its gradient (flat, ordered like the params) and ``fvp(v) -> F v``, the
    metric's product with a flat vector (no damping: the step adds it)."""

    loss: Tensor
    grad: Tensor
    fvp: Callable[[Tensor], Tensor]


class Objective(Protocol):
    """A TRPO objective at the current values of the parameters the step updates."""

    def local_model(self) -> LocalModel:
        """Loss, gradient and Fisher-vector product (the second-order graph, if any, lives as
        long as the returned model)."""
        ...

    def loss_and_kl(self) -> tuple[Tensor, Tensor]:
        """The loss and the mean KL from the sampling policy, as cheap values (line search)."""
        ...


@dataclass
class TRPOInfo:
    """What one TRPO step did (plain floats)."""

    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float
    """fraction of the full step accepted (0.0: rejected, params unchanged)"""
    grad_norm: float


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` given as ``matvec``."""
    return _conjugate_gradient(matvec, b, iters, tol)[0]


def _conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float
) -> tuple[Tensor, Tensor]:
    """(x, r): the CG solution and its residual ``r = b - A x`` (kept by the recursion)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr.item() < tol:
            break
        ap = matvec(p)
        alpha = rr / (p.dot(ap) + 1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, r


def flat_grad(out: Tensor, leaves: Sequence[Tensor], **kw) -> Tensor:
    """``d out / d leaves`` as one flat vector (zeros for leaves ``out`` does not use)."""
    gs = torch.autograd.grad(out, list(leaves), allow_unused=True, **kw)
    return flat([torch.zeros_like(v) if g is None else g for v, g in zip(leaves, gs, strict=True)])


def hessian_fvp(kl: Tensor, leaves: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``v -> (d^2 kl / d leaves^2) v`` by double backward of the KL's gradient."""
    kl_grad = flat_grad(kl, leaves, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        return flat_grad(kl_grad.dot(v), leaves, retain_graph=True)

    return fvp


def gauss_newton_fvp(
    outputs: Sequence[Tensor],
    metric: Callable[[list[Tensor]], list[Tensor]],
    leaves: Sequence[Tensor],
) -> Callable[[Tensor], Tensor]:
    """``v -> J^T M J v``: the KL's Hessian at the sampling params in Gauss-Newton form.

    At the sampling params the KL is at its minimum (zero, zero gradient w.r.t. the action
    distribution's parameters), so its Hessian w.r.t. the optimised params is exactly
    ``J^T M J``: ``J`` the Jacobian of the distribution parameters ``outputs`` (e.g. mean and
    log-std, with their graph to ``leaves``) and ``M`` the KL's Hessian in those parameters
    (the distribution's Fisher, scaled by how the KL averages samples); ``metric`` maps tangent
    vectors shaped like ``outputs`` to ``M`` times them.

    ``J v`` by the double-vjp trick: ``u(w) = J^T w`` is built once (linear in a dummy ``w``),
    then ``J v = d(u(w) . v)/dw``, a backward through ``u``'s graph that touches only the
    linear (first-derivative) part; ``J^T (M J v)`` is a plain backward through ``outputs``."""
    outs, leaves = list(outputs), list(leaves)
    ws = [torch.zeros_like(o, requires_grad=True) for o in outs]
    jt_w = torch.autograd.grad(outs, leaves, grad_outputs=ws, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(jt_w) if g is not None]
    sizes = [v.numel() for v in leaves]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def fvp(v: Tensor) -> Tensor:
        vs = [v[starts[i] : starts[i] + sizes[i]].view_as(leaves[i]) for i in live]
        jv = torch.autograd.grad(
            [jt_w[i] for i in live], ws, grad_outputs=vs, retain_graph=True, allow_unused=True
        )
        jv = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, jv, strict=True)]
        gs = torch.autograd.grad(
            outs, leaves, grad_outputs=metric(jv), retain_graph=True, allow_unused=True
        )
        return flat(
            [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, gs, strict=True)]
        )

    return fvp


class KLObjective:
    """The plain TRPO objective of a function ``fn(second_order) -> (loss, kl)`` evaluated at
    the current values of ``leaves`` (``second_order=False``: cheap values, e.g. without a
    graph): gradient by autograd, the metric by double backward of the KL (:func:`hessian_fvp`)."""

    def __init__(
        self, fn: Callable[[bool], tuple[Tensor, Tensor]], leaves: Sequence[Tensor]
    ) -> None:
        self.fn, self.leaves = fn, list(leaves)

    def local_model(self) -> LocalModel:
        loss, kl = self.fn(True)
        grad = flat_grad(loss, self.leaves, retain_graph=True)  # the KL may share its graph
        return LocalModel(loss.detach(), grad, hessian_fvp(kl, self.leaves))

    def loss_and_kl(self) -> tuple[Tensor, Tensor]:
        return self.fn(False)


@dataclass
class Shared:
    """Data-parallel: one rank's ``local`` objective is its additive share of the global one,
    and ``reduce`` sums a tensor over the ranks (``Context.all_reduce``). The loss, its gradient
    and the line-search KL (means over the meta-batch's tasks) weigh ``loss_weight`` (this
    rank's share of the tasks), the Fisher-vector products (a mean over the Fisher's tasks)
    ``fisher_weight`` (its share of those; 0: it holds none, and adds nothing); the sums are
    the same on every rank, so every rank takes the same step."""

    local: Objective
    reduce: Callable[[Tensor], Tensor]
    loss_weight: float
    fisher_weight: float

    def local_model(self) -> LocalModel:
        model, reduce = self.local.local_model(), self.reduce
        w, fw = self.loss_weight, self.fisher_weight

        def fvp(v: Tensor) -> Tensor:
            return reduce(model.fvp(v) * fw if fw else torch.zeros_like(v))

        return LocalModel(reduce(model.loss * w), reduce(model.grad * w), fvp)

    def loss_and_kl(self) -> tuple[Tensor, Tensor]:
        loss, kl = self.local.loss_and_kl()
        both = self.reduce(torch.stack([loss.detach(), kl.detach()]) * self.loss_weight)
        return both[0], both[1]


def trpo_step(
    params: Sequence[Tensor],
    objective: Objective,
    max_kl: float = 0.01,
    damping: float = 1e-5,
    cg_iters: int = 10,
    ls_steps: int = 15,
    ls_ratio: float = 0.8,
) -> TRPOInfo:
    """One TRPO update of the leaf tensors ``params`` in place (see the module docstring);
    ``objective`` is evaluated at their current values."""
    if max_kl <= 0:
        raise ValueError(f"max_kl={max_kl} must be > 0")
    leaves = list(params)
    for i, v in enumerate(leaves):
        if not v.requires_grad:
            raise ValueError(f"params[{i}] must require grad (a leaf the step updates)")

    # ---- natural gradient direction by conjugate gradient (second-order graph freed after) ---
    loss_before, g, direction, shs = _natural_direction(objective, damping, cg_iters)
    if not math.isfinite(shs) or shs <= 0:
        return TRPOInfo(loss_before, loss_before, 0.0, 0.0, g.norm().item())
    full_step = direction * math.sqrt(max_kl / shs)

    # ---- backtracking line search ------------------------------------------------------------
    old = flat([v.detach() for v in leaves]).clone()
    frac = 1.0
    for _ in range(ls_steps):
        _assign(leaves, old + frac * full_step)
        new_loss, new_kl = objective.loss_and_kl()
        new_loss_v, new_kl_v = new_loss.item(), new_kl.item()
        if math.isfinite(new_loss_v) and new_loss_v < loss_before and new_kl_v <= max_kl:
            return TRPOInfo(loss_before, new_loss_v, new_kl_v, frac, g.norm().item())
        frac *= ls_ratio
    _assign(leaves, old)  # no acceptable step: restore
    return TRPOInfo(loss_before, loss_before, 0.0, 0.0, g.norm().item())


def _natural_direction(
    objective: Objective, damping: float, cg_iters: int
) -> tuple[float, Tensor, Tensor, float]:
    """(loss, gradient, CG solution of F x = -g, 0.5 x^T F x) at the current params."""
    model = objective.local_model()
    g, fvp = model.grad, model.fvp

    def damped(v: Tensor) -> Tensor:
        return fvp(v) + damping * v

    # F x = b - r (CG's residual recursion), so x^T F x needs no further product
    direction, residual = _conjugate_gradient(damped, -g, cg_iters, 1e-10)
    shs = 0.5 * direction.dot(-g - residual).item()
    return model.loss.item(), g, direction.detach(), shs


def _assign(leaves: list[Tensor], vector: Tensor) -> None:
    with torch.no_grad():
        i = 0
        for v in leaves:
            n = v.numel()
            v.copy_(vector[i : i + n].view_as(v))
            i += n
