"""Trust-region policy optimisation (Schulman et al. 2015) over a dict of parameters.

The step is problem-agnostic: it sees the parameters only through ``objective(params, second_order)
-> (loss, kl)``, the surrogate loss to *minimise* and the mean KL between the sampling policy
and the policy at ``params`` (zero at the current params). For MAML-TRPO the objective adapts the
meta-params on each task's support data first, so the Fisher-vector products differentiate
through the inner update (second order; ``second_order=False`` asks for a cheap evaluation,
e.g. during the line search).

1. ``g = d loss / d params`` (or as the objective returns it: :class:`LossWithGrad`);
   Fisher-vector products ``F v = d/dparams (d kl/dparams . v)``, or,
   when the objective returns a :class:`GaussNewtonKL` instead of the KL, the equal
   Gauss-Newton form ``F v = J^T M J v`` (see there; one Jacobian-vector and one vector-Jacobian
   product per CG iteration instead of a double backward of the KL's gradient); or, when it
   returns a :class:`FisherProduct`, that product as given (e.g. computed piecewise through
   the inner update, see ``meta_rl.rl.maml.OuterProblem.fisher_product``).
2. Conjugate gradient solves ``F x = -g`` in ``cg_iters`` products (``damping`` added).
3. Scale ``x`` to the KL boundary: ``step = sqrt(2 max_kl / x^T F x) * x`` (``F x = -g - r``
   from CG's residual ``r``: no extra product).
4. Backtracking line search: accept the first ``ratio^i * step`` that lowers the loss and keeps
   ``kl <= max_kl``; otherwise keep the old params.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "TRPOInfo",
    "GaussNewtonKL",
    "FisherProduct",
    "LossWithGrad",
    "conjugate_gradient",
    "trpo_step",
    "loss_and_grad",
    "fisher_vector_product",
    "hessian_fvp",
    "gauss_newton_fvp",
    "flat",
    "unflat",
]


@dataclass
class GaussNewtonKL:
    """The KL's Hessian at the sampling params in Gauss-Newton form ``J^T M J``.

    At the sampling params the KL is at its minimum (zero, zero gradient w.r.t. the action
    distribution's parameters), so its Hessian w.r.t. the optimised params is exactly
    ``J^T M J``: ``J`` the Jacobian of the distribution parameters ``outputs`` (e.g. mean and
    log-std, with their graph to the params) and ``M`` the KL's Hessian in those parameters
    (the distribution's Fisher, scaled by how the KL averages samples). ``metric`` maps tangent
    vectors shaped like ``outputs`` to ``M`` times them. ``kl`` is the KL's value (a float)."""

    outputs: list[Tensor]
    metric: Callable[[list[Tensor]], list[Tensor]]
    kl: float = 0.0


@dataclass
class FisherProduct:
    """TRPO's metric as a ready product ``matvec(v) -> F v`` on flat vectors (ordered like the
    params passed to :func:`trpo_step`; no damping: the step adds it). ``kl`` is the KL's
    value (a float)."""

    matvec: Callable[[Tensor], Tensor]
    kl: float = 0.0


@dataclass
class LossWithGrad:
    """A second-order objective's loss whose gradient the objective computed itself: ``value``
    (a scalar without graph) and ``grad`` (flat, ordered like the params)."""

    value: Tensor
    grad: Tensor


Metric = "Tensor | GaussNewtonKL | FisherProduct"
Objective = Callable[[dict[str, Tensor], bool], tuple["Tensor | LossWithGrad", Metric]]


@dataclass
class TRPOInfo:
    """What one TRPO step did (plain floats)."""

    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float
    """fraction of the full step accepted (0.0: rejected, params unchanged)"""
    grad_norm: float


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vector[i : i + n].view_as(v)
        i += n
    return out


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


def _grads(out: Tensor, leaves: list[Tensor], **kw) -> Tensor:
    gs = torch.autograd.grad(out, leaves, allow_unused=True, **kw)
    return flat([torch.zeros_like(v) if g is None else g for v, g in zip(leaves, gs, strict=True)])


def hessian_fvp(kl: Tensor, leaves: list[Tensor], damping: float) -> Callable[[Tensor], Tensor]:
    """``v -> (d^2 kl / d leaves^2) v + damping v`` by double backward of the KL's gradient."""
    kl_grad = _grads(kl, leaves, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        return _grads(kl_grad.dot(v), leaves, retain_graph=True) + damping * v

    return fvp


def gauss_newton_fvp(
    gn: GaussNewtonKL, leaves: list[Tensor], damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> J^T M J v + damping v`` (see :class:`GaussNewtonKL`).

    ``J v`` by the double-vjp trick: ``u(w) = J^T w`` is built once (linear in a dummy ``w``),
    then ``J v = d(u(w) . v)/dw``, a backward through ``u``'s graph that touches only the
    linear (first-derivative) part; ``J^T (M J v)`` is a plain backward through ``outputs``."""
    outs = gn.outputs
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
        mjv = gn.metric(jv)
        return _grads_out(outs, leaves, mjv) + damping * v

    return fvp


def _grads_out(outs: list[Tensor], leaves: list[Tensor], grad_outputs: list[Tensor]) -> Tensor:
    gs = torch.autograd.grad(
        outs, leaves, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True
    )
    return flat([torch.zeros_like(v) if g is None else g for v, g in zip(leaves, gs, strict=True)])


def fisher_vector_product(
    metric: Tensor | GaussNewtonKL | FisherProduct, leaves: list[Tensor], damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> F v + damping v`` for any of the metric forms an objective may return."""
    if isinstance(metric, FisherProduct):
        matvec = metric.matvec
        return lambda v: matvec(v) + damping * v
    if isinstance(metric, GaussNewtonKL):
        return gauss_newton_fvp(metric, leaves, damping)
    return hessian_fvp(metric, leaves, damping)


def loss_and_grad(
    leaves: list[Tensor], objective: Objective, params: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor | GaussNewtonKL | FisherProduct]:
    """(loss, flat gradient, the metric) of the second-order objective at the current params."""
    loss, metric = objective(dict(params), True)
    if isinstance(loss, LossWithGrad):
        return loss.value.detach(), loss.grad, metric
    g = _grads(loss, leaves, retain_graph=isinstance(metric, Tensor))
    return loss.detach(), g, metric


def _natural_direction(
    leaves: list[Tensor],
    objective: Objective,
    params: Mapping[str, Tensor],
    damping: float,
    cg_iters: int,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, Tensor, Tensor, float]:
    """(loss, gradient, CG solution of F x = -g, 0.5 x^T F x) at the current params."""
    loss, g, metric = loss_and_grad(leaves, objective, params)
    if reduce is None:
        fvp = fisher_vector_product(metric, leaves, damping)
    else:  # data-parallel: sum the ranks' shares (see meta_rl.distributed)
        loss, g = reduce(loss), reduce(g)
        local = None if metric is None else fisher_vector_product(metric, leaves, 0.0)

        def fvp(v: Tensor) -> Tensor:  # a rank without Fisher tasks (metric None) adds 0
            return reduce(torch.zeros_like(v) if local is None else local(v)) + damping * v

    # F x = b - r (CG's residual recursion), so x^T F x needs no further product
    direction, residual = _conjugate_gradient(fvp, -g, cg_iters, 1e-10)
    shs = 0.5 * direction.dot(-g - residual).item()
    return loss.item(), g, direction.detach(), shs


def trpo_step(
    params: Mapping[str, Tensor],
    objective: Objective,
    max_kl: float = 0.01,
    damping: float = 1e-5,
    cg_iters: int = 10,
    ls_steps: int = 15,
    ls_ratio: float = 0.8,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> TRPOInfo:
    """One TRPO update of the leaf tensors ``params`` in place (see the module docstring).

    ``reduce`` (data-parallel training) sums a tensor over the ranks: ``objective`` then returns
    this rank's additive share of the loss and KL, and the gradient, the Fisher-vector products
    and the line search's loss and KL are summed, so every rank takes the same step."""
    if max_kl <= 0:
        raise ValueError(f"max_kl={max_kl} must be > 0")
    names = list(params)
    leaves = [params[k] for k in names]
    for k, v in params.items():
        if not v.requires_grad:
            raise ValueError(f"params[{k!r}] must require grad (a leaf the step updates)")

    # ---- natural gradient direction by conjugate gradient (second-order graph freed after) ---
    loss_before, g, direction, shs = _natural_direction(
        leaves, objective, params, damping, cg_iters, reduce
    )
    if not math.isfinite(shs) or shs <= 0:
        return TRPOInfo(loss_before, loss_before, 0.0, 0.0, g.norm().item())
    full_step = direction * math.sqrt(max_kl / shs)

    # ---- backtracking line search ------------------------------------------------------------
    old = flat([v.detach() for v in leaves]).clone()
    frac = 1.0
    for _ in range(ls_steps):
        trial = unflat(old + frac * full_step, params)
        with torch.no_grad():
            for k in names:
                params[k].copy_(trial[k])
        new_loss, new_kl = objective(dict(params), False)
        if reduce is not None:
            new_loss, new_kl = reduce(torch.stack([new_loss.detach(), new_kl.detach()]))
        new_loss_v, new_kl_v = new_loss.item(), new_kl.item()
        if math.isfinite(new_loss_v) and new_loss_v < loss_before and new_kl_v <= max_kl:
            return TRPOInfo(loss_before, new_loss_v, new_kl_v, frac, g.norm().item())
        frac *= ls_ratio
    with torch.no_grad():  # no acceptable step: restore
        for k, v in unflat(old, params).items():
            params[k].copy_(v)
    return TRPOInfo(loss_before, loss_before, 0.0, 0.0, g.norm().item())
