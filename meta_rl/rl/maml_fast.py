"""Faster forms of MAML-TRPO's outer objective: drop-ins for :class:`meta_rl.rl.maml.OuterProblem`
with the same interface (:class:`meta_rl.rl.trpo.Objective`) and the same numbers, one of which
``meta_rl.rl.maml.outer_objective`` picks once at setup (the equality tests are in
``tests/test_rl_maml.py``).

With a scalar inner step size, an inner step ``theta' = theta - lr grad L_s(theta)`` has the
Jacobian ``A = I - lr H_s`` (``H_s`` the support loss's Hessian, per task), which is symmetric.
So the meta-gradient is ``mean_tasks A_1 ... A_n u`` (``u`` the query loss's gradient at the
adapted params), and TRPO's metric, the KL's Hessian through the inner update, is
``F = J^T M J`` with ``J = J_q A_n ... A_1`` (``J_q``: the Jacobian of the query heads at the
adapted params, ``M``: the KL's Hessian in the heads): ``F v`` takes per inner step two support
Hessian-vector products plus a Jacobian-vector / vector-Jacobian pair on the few Fisher query
rows, where the plain Gauss-Newton form differentiates ``J^T w`` built through the inner
update, a third-order graph.

- :class:`PiecewiseFisher`: the plain autograd loss and gradient, ``F v`` piece by piece with
  autograd Hessian-vector products (:class:`AutogradCurvature`); any policy.
- :class:`WrittenOut`: loss, meta-gradient and ``F v`` with the support Hessians written out
  (:class:`SupportCurvature`: a Gaussian MLP policy of Linear and Tanh / ReLU layers and the
  likelihood-ratio inner loss), no autograd graph at all; the line search's plain values stay
  with autograd (measured as fast).

Nothing here imports :mod:`meta_rl.rl.maml`: a drop-in wraps the problem it is given and reads
its learner, episodes and sampling heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from meta_rl.policies import distributions as D
from meta_rl.policies.mlp import MLPPolicy
from meta_rl.rl.trpo import LocalModel, flat_grad

__all__ = [
    "SupportCurvature",
    "AutogradCurvature",
    "fisher_product",
    "PiecewiseFisher",
    "WrittenOut",
]

Curvature = Any
"""An inner step's curvature: ``names``, ``grads`` (the inner loss's gradient per task, by
name) and ``hvp(xs)`` (its Hessian times ``xs``, per task): :class:`AutogradCurvature` or
:class:`SupportCurvature`"""


class AutogradCurvature:
    """The inner loss's gradient at ``params`` (stacked per task) and, with ``hessian``, its
    Hessian-vector products by a backward through the retained graph of that gradient."""

    def __init__(
        self,
        loss_fn: Callable[[Mapping[str, Tensor], Any], Tensor],
        params: dict[str, Tensor],
        data: Any,
        hessian: bool = True,
    ) -> None:
        self.names = list(params)
        self.leaves = [params[n].requires_grad_(True) for n in self.names]
        loss = loss_fn(params, data).sum()
        grads = torch.autograd.grad(loss, self.leaves, create_graph=hessian)
        self.grads = dict(zip(self.names, grads, strict=True))

    def hvp(self, xs: list[Tensor]) -> list[Tensor]:
        """Per task, the inner loss's Hessian times ``xs`` (stacked like the params)."""
        grads = list(self.grads.values())
        return list(torch.autograd.grad(grads, self.leaves, grad_outputs=xs, retain_graph=True))


def _mlp_names(policy: MLPPolicy) -> tuple[list[str], list[str], list[str]] | None:
    """(weight names, bias names) of the Linear layers of ``policy.net`` in order and the names
    of the other parameters, as ``named_parameters`` spells them (``None``: a layer of
    ``net`` is not a registered submodule)."""
    names = {id(m): n for n, m in policy.named_modules()}
    linear = [names.get(id(m)) for m in policy.net if isinstance(m, torch.nn.Linear)]
    if any(n is None for n in linear):
        return None
    weights, biases = [f"{n}.weight" for n in linear], [f"{n}.bias" for n in linear]
    rest = [n for n, _ in policy.named_parameters() if n not in {*weights, *biases}]
    return weights, biases, rest


class SupportCurvature:
    """The inner loss's gradient and exact Hessian-vector products, written out (no autograd
    graph): ``MetaLearner.inner_loss`` (the likelihood-ratio surrogate) of a Gaussian MLP
    policy whose ``net`` alternates Linear and Tanh / ReLU layers, with stacked per-task params
    (see :meth:`applies`; parameter names come from the policy's modules).

    ``hvp`` is Pearlmutter's R-operator: a forward pass of the tangents (``R z``, ``R h``)
    through the cached activations, then the tangent of the backward pass. Per hidden layer it
    needs the same matrix products as a double backward but about half the elementwise passes
    over the ``[T, N, hidden]`` activations (tested equal to autograd in float64)."""

    def __init__(
        self,
        policy: MLPPolicy,
        params: Mapping[str, Tensor],
        data: Any,
        hessian: bool = True,
    ) -> None:
        layers = list(policy.net)
        linear = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Linear)]
        self.tanh = [type(layers[i + 1]) is torch.nn.Tanh for i in linear[:-1]]
        names = _mlp_names(policy)
        assert names is not None and len(names[2]) == 1, "see SupportCurvature.applies"
        self.wn, self.bn, (self.sn,) = names
        p = {k: v.detach() for k, v in params.items()}
        self.w = [p[n] for n in self.wn]
        x = data.obs
        hs, ds, qs = [x], [], []
        one = torch.ones((), dtype=x.dtype, device=x.device)
        z = x
        for j, w in enumerate(self.w):
            z = torch.bmm(hs[-1], w.mT).add_(p[self.bn[j]].unsqueeze(1))
            if j < len(self.w) - 1:
                if self.tanh[j]:  # tanh z = 2 sigmoid(2 z) - 1 (CPU tanh is slow); 1 - tanh^2
                    h = torch.sigmoid_(z.mul_(2.0)).mul_(2.0).sub_(1.0)
                    ds.append(torch.addcmul(one, h, h, value=-1.0))
                else:
                    h = torch.relu(z)
                    ds.append((z > 0).to(z.dtype))
                hs.append(h)
        log_std = p[self.sn].unsqueeze(1)  # [T, 1, d]
        inv_sigma = torch.exp(-log_std)
        e = (data.actions - z) * inv_sigma
        logp = (
            -0.5 * e.square().sum(-1) - log_std.sum(-1) - 0.5 * e.shape[-1] * math.log(2 * math.pi)
        )
        c = data.advantages * data.mask / data.mask.sum(1, keepdim=True).clamp_min(1.0)
        beta = (-c * torch.exp(logp - data.logp)).unsqueeze(-1)  # d loss / d logp, [T, N, 1]
        delta = beta * e * inv_sigma  # d loss / d mean
        grads: dict[str, Tensor] = {self.sn: (beta * (e * e - 1.0)).sum(1)}
        deltas = [delta]
        for j in range(len(self.w) - 1, -1, -1):
            grads[self.wn[j]] = torch.bmm(delta.mT, hs[j])
            grads[self.bn[j]] = delta.sum(1)
            if j > 0:
                dh = torch.bmm(delta, self.w[j])
                delta = dh.mul_(ds[j - 1]) if not (hessian and self.tanh[j - 1]) else ds[j - 1] * dh
                deltas.insert(0, delta)
                qs.insert(0, 2.0 * hs[j] * dh if hessian and self.tanh[j - 1] else None)
        self.names = list(params)
        self.loss = beta.sum()  # the inner loss summed over tasks
        self.mean, self.log_std = z, log_std
        self.grads = {k: grads[k] for k in self.names}
        self.hs, self.ds, self.qs, self.deltas = hs, ds, qs, deltas
        self.e, self.inv_sigma, self.beta = e, inv_sigma, beta
        self.hessian = hessian

    def tasks(self, index: slice) -> SupportCurvature:
        """The same for the tasks ``index`` only (views of the cached tensors)."""
        out = object.__new__(SupportCurvature)
        out.__dict__.update(self.__dict__)
        for key in ("hs", "ds", "qs", "deltas"):
            setattr(out, key, [None if t is None else t[index] for t in getattr(self, key)])
        for key in ("w", "e", "inv_sigma", "beta", "mean", "log_std"):
            val = getattr(self, key)
            setattr(out, key, [t[index] for t in val] if isinstance(val, list) else val[index])
        out.grads = {k: g[index] for k, g in self.grads.items()}
        out.loss = out.beta.sum()
        return out

    @staticmethod
    def applies(policy: MLPPolicy) -> bool:
        """Whether ``policy`` has the structure this class differentiates by hand."""
        if not isinstance(policy, MLPPolicy) or not policy.continuous:
            return False
        cls = type(policy)
        if cls.head is not MLPPolicy.head or cls.log_prob is not MLPPolicy.log_prob:
            return False  # a subclass that changes the distribution's parameters
        layers = list(policy.net)
        if not layers or not isinstance(layers[-1], torch.nn.Linear):
            return False
        names = _mlp_names(policy)
        if names is None or len(names[2]) != 1:  # the Linear layers and one log-std vector
            return False
        kinds = [type(m) for m in layers]
        return (
            all(
                kinds[i] is torch.nn.Linear and kinds[i + 1] in (torch.nn.Tanh, torch.nn.ReLU)
                for i in range(0, len(kinds) - 1, 2)
            )
            and len(kinds) % 2 == 1
        )

    def hvp(self, xs: list[Tensor]) -> list[Tensor]:
        """Per task, the inner loss's Hessian times ``xs`` (stacked like the params)."""
        if not self.hessian:
            raise ValueError("this SupportCurvature was built with hessian=False")
        v = dict(zip(self.names, xs, strict=True))
        hs, ds, qs, deltas = self.hs, self.ds, self.qs, self.deltas
        rhs: list[Tensor | None] = [None]
        for j, w in enumerate(self.w):  # tangent forward
            rz = torch.bmm(hs[j], v[self.wn[j]].mT).add_(v[self.bn[j]].unsqueeze(1))
            if rhs[j] is not None:
                rz.baddbmm_(rhs[j], w.mT)
            if j < len(self.w) - 1:
                rhs.append(rz.mul_(ds[j]))
        e, inv_sigma, beta = self.e, self.inv_sigma, self.beta
        v_log = v[self.sn].unsqueeze(1)
        r_mean = rz * inv_sigma  # R mean / sigma
        r_beta = beta * (e * r_mean + (e * e - 1.0) * v_log).sum(-1, keepdim=True)
        out: dict[str, Tensor] = {
            self.sn: (r_beta * (e * e - 1.0) - 2.0 * beta * e * (r_mean + e * v_log)).sum(1)
        }
        r_delta = (r_beta * e - beta * (r_mean + 2.0 * e * v_log)) * inv_sigma
        for j in range(len(self.w) - 1, -1, -1):  # tangent backward
            delta = deltas[j]
            rw = torch.bmm(r_delta.mT, hs[j])
            if rhs[j] is not None:
                rw.baddbmm_(delta.mT, rhs[j])
            out[self.wn[j]] = rw
            out[self.bn[j]] = r_delta.sum(1)
            if j > 0:
                r_delta = torch.bmm(r_delta, self.w[j]).baddbmm_(delta, v[self.wn[j]])
                r_delta.mul_(ds[j - 1])
                if qs[j - 1] is not None:  # tanh'' = -2 tanh tanh'
                    r_delta.addcmul_(qs[j - 1], rhs[j], value=-1.0)
        return [out[k] for k in self.names]


# --------------------------------------------------------------------------------------------
# F v piece by piece through the inner steps
# --------------------------------------------------------------------------------------------
def fisher_product(
    problem: Any,
    curvature: Callable[[dict[str, Tensor], Any, bool], Curvature],
    steps: list[Curvature] | None = None,
    adapted: Mapping[str, Tensor] | None = None,
) -> Callable[[Tensor], Tensor]:
    """``v -> F v`` for ``problem`` (an ``OuterProblem`` with a scalar inner lr) at its
    learner's current params: ``A_1 ... A_n J_q^T M J_q A_n ... A_1 v`` over its Fisher tasks
    and rows, the same matrix as its ``fisher_gauss_newton``. ``fisher="first_order"`` (or
    FOMAML): ``A = I``.

    ``curvature(params, data, hessian)`` builds an inner step's curvature (e.g.
    :class:`AutogradCurvature`); ``steps`` / ``adapted``: the inner steps' curvatures (built
    with ``hessian=True``) and the adapted params of all tasks, when the caller has them."""
    learner, k = problem.learner, problem.fisher_tasks
    cfg, policy, theta, lr = learner.config, learner.policy, learner.theta, learner.lr
    if isinstance(lr, Mapping):
        raise ValueError("fisher_product needs a scalar inner lr (Meta-SGD: fisher_gauss_newton)")
    if k == 0:  # no Fisher task here (a data-parallel shard): adds nothing
        return torch.zeros_like
    tasks, rows = slice(0, k), problem.fisher_rows
    second = not (problem.first_order or cfg.fisher == "first_order")
    names = list(theta)
    if steps is not None and adapted is not None:
        steps = [c.tasks(tasks) for c in steps]
        params = {n: adapted[n][tasks].detach() for n in names}
    else:
        steps = []
        params = {n: v.detach().expand(k, *v.shape).clone() for n, v in theta.items()}
        with torch.enable_grad():
            for data in problem.supports:
                step = curvature(params, data.tasks(tasks), second)
                steps.append(step)
                params = {n: (params[n] - lr * step.grads[n]).detach() for n in names}
    if not second:  # FOMAML / first-order Fisher: A = I
        steps = []
    with torch.enable_grad():
        top = [params[n].requires_grad_(True) for n in names]
        q = problem.query.tasks(tasks)
        head, log_std = policy.head(params, q.obs[:, rows])
    mask = q.mask[:, rows]  # each row weighs as in the KL's masked mean over the k tasks
    outs, metric = D.kl_hessian(head, log_std, mask / mask.sum(1, keepdim=True).clamp_min(1.0) / k)
    ws = [torch.zeros_like(o, requires_grad=True) for o in outs]
    jt_w = torch.autograd.grad(outs, top, grad_outputs=ws, create_graph=True)
    sizes = [v.numel() for v in theta.values()]

    def apply_a(xs: list[Tensor], step: Curvature) -> list[Tensor]:
        return [x - lr * h for x, h in zip(xs, step.hvp(xs), strict=True)]

    def matvec(v: Tensor) -> Tensor:
        xs = [
            c.view(t.shape).expand(k, *t.shape)
            for c, t in zip(v.split(sizes), theta.values(), strict=True)
        ]
        for step in steps:  # A v
            xs = apply_a(xs, step)
        jv = torch.autograd.grad(jt_w, ws, grad_outputs=xs, retain_graph=True)  # J_q A v
        ys = torch.autograd.grad(outs, top, grad_outputs=metric(list(jv)), retain_graph=True)
        ys = list(ys)
        for step in reversed(steps):  # A^T J_q^T M J_q A v (A symmetric)
            ys = apply_a(ys, step)
        return torch.cat([y.sum(0).reshape(-1) for y in ys])

    return matvec


# --------------------------------------------------------------------------------------------
# The drop-ins
# --------------------------------------------------------------------------------------------
class PiecewiseFisher:
    """``problem`` with its Fisher-vector products piece by piece (:func:`fisher_product`, with
    autograd Hessian-vector products of the support loss): scalar inner lr, any policy."""

    def __init__(self, problem: Any) -> None:
        self.problem = problem

    def local_model(self) -> LocalModel:
        problem = self.problem
        learner = problem.learner
        loss, _ = problem.surrogate(True)
        fvp = fisher_product(
            problem, lambda p, d, h: AutogradCurvature(learner.inner_loss, p, d, h)
        )
        return LocalModel(loss.detach(), flat_grad(loss, learner.leaves()), fvp)

    def loss_and_kl(self) -> tuple[Tensor, Tensor]:
        return self.problem.loss_and_kl()


class WrittenOut:
    """``problem``'s loss, meta-gradient and Fisher-vector products with the inner steps and the
    support Hessians written out (:class:`SupportCurvature`; scalar inner lr, the
    likelihood-ratio inner loss, a policy :meth:`SupportCurvature.applies` to).

    The meta-gradient is ``mean_tasks A_1 ... A_n u`` with ``u`` the query loss's gradient at
    the adapted params and ``A = I - lr H_s`` each inner step's (symmetric) Jacobian: one
    support Hessian-vector product per inner step, no graph. The line search's values are the
    problem's own."""

    def __init__(self, problem: Any) -> None:
        self.problem = problem

    def local_model(self) -> LocalModel:
        problem = self.problem
        learner, q, n = problem.learner, problem.query, problem.num_tasks
        policy, theta, lr = learner.policy, learner.theta, learner.lr
        params = {k: v.detach().expand(n, *v.shape).clone() for k, v in theta.items()}
        hessian = not problem.first_order
        steps = []
        for data in problem.supports:
            step = SupportCurvature(policy, params, data, hessian)
            steps.append(step)
            params = {
                k: v - lr * g for (k, v), g in zip(params.items(), step.grads.values(), strict=True)
            }
        top = SupportCurvature(policy, params, q, hessian=False)
        ys = [g / n for g in top.grads.values()]  # the query loss is the mean over tasks
        if hessian:
            for step in reversed(steps):
                ys = [y - lr * h for y, h in zip(ys, step.hvp(ys), strict=True)]
        grad = torch.cat([y.sum(0).reshape(-1) for y in ys])

        def curvature(p: dict[str, Tensor], d: Any, h: bool) -> SupportCurvature:
            return SupportCurvature(policy, p, d, h)

        if learner.config.fisher == "full" and hessian:  # the Fisher's steps are these ones
            fvp = fisher_product(problem, curvature, steps, params)
        else:
            fvp = fisher_product(problem, curvature)
        return LocalModel(top.loss / n, grad, fvp)

    def loss_and_kl(self) -> tuple[Tensor, Tensor]:
        return self.problem.loss_and_kl()
