"""Gradient-based meta-RL: MAML-TRPO, first-order MAML, Meta-SGD and ProMP-style MAML-PPO.

One training loop (cleanrl style) on a batch of tasks that all step together in one env:

1. sample ``meta_batch`` tasks; the env runs ``episodes_per_task`` rows per task;
2. *support* episodes with the meta-params ``theta`` (the same for every task), advantages by
   GAE over the MAML paper's linear feature baseline refit per task;
3. inner loop: ``inner_steps`` policy-gradient steps per task through
   :func:`meta_rl.core.inner_update` on stacked per-task params (fresh support episodes after
   each step, sampled with that step's adapted params);
4. *query* episodes with the adapted params (each task its own) and their advantages;
5. outer update of ``theta`` (and, for Meta-SGD, the per-parameter inner step sizes) on the
   query surrogate of the adapted policies, re-running the inner loop so the meta-gradient flows
   through it: TRPO (conjugate gradient + KL constraint + line search) or PPO's clipped
   objective for ``ppo_epochs`` Adam steps (ProMP-style; no KL penalty term).

The inner objective is the likelihood-ratio surrogate ``-mean(exp(logp - logp_sampling) * A)``:
at the sampling params its gradient is the vanilla policy gradient, and its Hessian carries the
score-product term the plain ``-mean(logp * A)`` drops (ProMP's "LVC" estimator).

Evaluation adapts on held-out tasks (``eval_split``) and reports the mean episode return before
adaptation (``eval_return_0``) and after each inner step (``eval_return_1``, ...).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from meta_rl_envs import make_env
from torch import Tensor

from meta_rl import distributed, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, ConfigError, bounds, choice
from meta_rl.core import Params, expand_params, init_metasgd_lrs, inner_update
from meta_rl.loop import TrainingDiverged
from meta_rl.policies import distributions as D
from meta_rl.policies.mlp import MLPPolicy, make_mlp_policy
from meta_rl.rl.ppo import clipped_surrogate
from meta_rl.rl.rollout import Episodes, compute_advantages, sample_episodes
from meta_rl.rl.trpo import FisherProduct, GaussNewtonKL, LossWithGrad, trpo_step

log = logging.getLogger(__name__)

__all__ = [
    "MAMLConfig",
    "TrainingDiverged",
    "TaskData",
    "MetaLearner",
    "train",
    "AdaptationCurve",
    "adaptation_curve",
    "evaluate_adaptation",
]

LR_PREFIX = "inner_lr/"


@dataclass
class MetaPGConfig(BaseConfig):
    """What every meta-policy-gradient trainer shares (MAML family, Reptile): the task family,
    the meta-batch, the inner policy-gradient step, the policy, advantages and evaluation."""

    iterations: int = field(default=50, metadata=bounds(ge=1))
    """meta-training iterations (outer updates)"""
    checkpoint_every: int = field(default=25, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    eval_every: int = field(default=25, metadata=bounds(ge=0))
    """evaluate adaptation on held-out tasks every this many iterations (0: only at the end)"""
    env_id: str = "MetaRL/PointNav-v0"
    """registered task family id"""
    env_backend: Literal["auto", "batched", "vector"] = field(
        default="auto", metadata=choice("auto", "batched", "vector")
    )
    """auto: the torch-batched env when the family has one, else a Gymnasium SyncVectorEnv"""
    horizon: int = field(default=0, metadata=bounds(ge=0))
    """episode length cap (0: the family's own horizon)"""
    meta_batch: int = field(default=40, metadata=bounds(ge=1))
    """tasks per meta-iteration"""
    episodes_per_task: int = field(default=20, metadata=bounds(ge=1))
    """episodes per task per inner step (MAML: also for the query batch)"""
    inner_steps: int = field(default=1, metadata=bounds(ge=1))
    """policy-gradient steps of the inner loop (each on fresh episodes)"""
    inner_lr: float = field(default=0.1, metadata=bounds(gt=0))
    """inner step size (Meta-SGD: the initial value of every learned step size)"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the MLP policy"""
    activation: Literal["tanh", "relu"] = field(default="tanh", metadata=choice("tanh", "relu"))
    """hidden activation"""
    init_log_std: float = 0.0
    """initial log standard deviation (Box actions)"""
    gamma: float = field(default=0.99, metadata=bounds(ge=0, le=1))
    """discount"""
    gae_lambda: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    """GAE lambda (1.0: Monte-Carlo returns minus the baseline, as in the MAML paper)"""
    baseline: Literal["linear", "none"] = field(default="linear", metadata=choice("linear", "none"))
    """value baseline: the linear feature baseline refit per task, or none"""
    normalize_advantages: bool = True
    """zero-mean, unit-std advantages within each task"""
    eval_tasks: int = field(default=40, metadata=bounds(ge=1))
    """held-out tasks used by evaluation (fixed by the seed)"""
    eval_episodes: int = field(default=20, metadata=bounds(ge=1))
    """episodes per held-out task per adaptation step"""
    eval_split: Literal["train", "test", "ood"] = field(
        default="test", metadata=choice("train", "test", "ood")
    )
    """task split evaluation samples from"""
    eval_inner_steps: int = field(default=1, metadata=bounds(ge=1))
    """inner steps evaluated (returns after 0..eval_inner_steps steps are logged)"""

    def check(self) -> None:
        if not self.hidden:
            raise ConfigError("hidden=() is not allowed; give at least one layer width")


@dataclass
class MAMLConfig(MetaPGConfig):
    """MAML-family meta-RL on a task family (defaults: the MAML paper's 2D navigation)."""

    algorithm: Literal["maml", "fomaml", "metasgd"] = field(
        default="maml", metadata=choice("maml", "fomaml", "metasgd")
    )
    """maml (second order), fomaml (first order) or metasgd (learned per-parameter inner lrs)"""
    outer: Literal["trpo", "ppo"] = field(default="trpo", metadata=choice("trpo", "ppo"))
    """outer optimiser: trpo (MAML-TRPO) or ppo (clipped objective, ProMP-style)"""
    max_kl: float = field(default=0.01, metadata=bounds(gt=0))
    """TRPO: KL trust region of the adapted policies"""
    cg_iters: int = field(default=10, metadata=bounds(ge=1))
    """TRPO: conjugate-gradient iterations"""
    cg_damping: float = field(default=1e-5, metadata=bounds(ge=0))
    """TRPO: damping added to the Fisher-vector products"""
    fisher: Literal["first_order", "full"] = field(
        default="full", metadata=choice("first_order", "full")
    )
    """TRPO: KL metric through the inner update ("full") or with its gradients held constant"""
    fisher_product: Literal["gauss_newton", "hessian"] = field(
        default="gauss_newton", metadata=choice("gauss_newton", "hessian")
    )
    """TRPO: Fisher-vector products as J^T M J (scalar inner lr: A J_q^T M J_q A, two support
    Hessian-vector products per inner step; Meta-SGD: one jvp + one vjp through the inner
    update) or by double backward of the KL's gradient (the same matrix, slower)"""
    fisher_subsample: int = field(default=4, metadata=bounds(ge=1))
    """TRPO: Fisher-vector products use every this-many-th query sample"""
    fisher_tasks: int = field(default=10, metadata=bounds(ge=0))
    """TRPO: Fisher-vector products use the first this-many tasks of the batch (0: all)"""
    ls_steps: int = field(default=15, metadata=bounds(ge=1))
    """TRPO: line-search trials"""
    ls_ratio: float = field(default=0.8, metadata=bounds(gt=0, lt=1))
    """TRPO: step shrink factor per line-search trial"""
    ppo_epochs: int = field(default=5, metadata=bounds(ge=1))
    """PPO: Adam steps on the clipped objective per meta-iteration"""
    ppo_clip: float = field(default=0.2, metadata=bounds(gt=0))
    """PPO: clip range of the likelihood ratio"""
    ppo_lr: float = field(default=1e-3, metadata=bounds(gt=0))
    """PPO: Adam learning rate of the meta-params"""
    abort_kl: float = field(default=1.0, metadata=bounds(gt=0))
    """stop the run when the KL between sampling and updated adapted policies exceeds this"""

    def check(self) -> None:
        super().check()
        if self.algorithm == "metasgd" and self.outer not in ("trpo", "ppo"):
            raise ConfigError(f"outer={self.outer!r} is not allowed with algorithm='metasgd'")


# --------------------------------------------------------------------------------------------
# Per-task data and losses
# --------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """Episodes regrouped per task, ``[T, M, ...]`` with ``M = H * E`` samples per task."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    """log-probabilities under the sampling params (constants)"""
    advantages: Tensor
    mask: Tensor

    @classmethod
    def from_episodes(cls, ep: Episodes, advantages: Tensor) -> TaskData:
        return cls(
            ep.by_task(ep.obs),
            ep.by_task(ep.actions),
            ep.by_task(ep.logp),
            ep.by_task(advantages),
            ep.by_task(ep.mask),
        )

    def tasks(self, index: slice) -> TaskData:
        """The tasks ``index`` of the batch."""
        return TaskData(
            self.obs[index],
            self.actions[index],
            self.logp[index],
            self.advantages[index],
            self.mask[index],
        )


def _masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """[T, M] -> [T]: the mean over each task's unmasked samples."""
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class MetaLearner:
    """The meta-parameters (policy, Meta-SGD step sizes) and the adaptation of stacked params.

    ``config`` is a :class:`MAMLConfig` or any config with its adaptation fields (``inner_lr``,
    ``gamma``, ``gae_lambda``, ``baseline``, ``normalize_advantages``, ``horizon``; e.g.
    :class:`meta_rl.rl.reptile.ReptileConfig`)."""

    def __init__(self, policy: MLPPolicy, config: Any) -> None:
        self.policy = policy
        self.config = config
        self.theta = policy.params()  # leaves of the module: updates land in the module
        self.lrs: Params | None = None
        if getattr(config, "algorithm", None) == "metasgd":
            self.lrs = init_metasgd_lrs(self.theta, config.inner_lr)

    def outer_params(self) -> Params:
        """Everything the outer loop updates: the policy params and any learned step sizes."""
        out = dict(self.theta)
        if self.lrs is not None:
            out.update({LR_PREFIX + k: v for k, v in self.lrs.items()})
        return out

    def split(self, outer: Mapping[str, Tensor]) -> tuple[Params, Any]:
        theta = {k: v for k, v in outer.items() if not k.startswith(LR_PREFIX)}
        lrs = {k[len(LR_PREFIX) :]: v for k, v in outer.items() if k.startswith(LR_PREFIX)}
        return theta, (lrs if lrs else self.config.inner_lr)

    def inner_loss(self, params: Params, data: TaskData) -> Tensor:
        """[T] likelihood-ratio policy-gradient surrogate of each task (to minimise)."""
        logp = self.policy.log_prob(params, data.obs, data.actions)
        ratio = torch.exp(logp - data.logp)
        return -_masked_task_mean(ratio * data.advantages, data.mask)

    def adapt(
        self,
        outer: Mapping[str, Tensor],
        supports: list[TaskData],
        num_tasks: int,
        first_order: bool,
    ) -> Params:
        """Stacked per-task params after one inner step on each of ``supports``."""
        theta, lr = self.split(outer)
        params = expand_params(theta, num_tasks)
        for data in supports:
            params = inner_update(self.inner_loss, params, data, lr, 1, first_order=first_order)
        return params


class SupportCurvature:
    """The inner loss's gradient and exact Hessian-vector products, written out (no autograd
    graph): :meth:`MetaLearner.inner_loss` (the likelihood-ratio surrogate) of a Gaussian MLP
    policy whose ``net`` alternates Linear and Tanh / ReLU layers, with stacked per-task params.

    ``hvp`` is Pearlmutter's R-operator: a forward pass of the tangents (``R z``, ``R h``)
    through the cached activations, then the tangent of the backward pass. Per hidden layer it
    needs the same matrix products as a double backward but about half the elementwise passes
    over the ``[T, N, hidden]`` activations (tested equal to autograd in float64)."""

    def __init__(
        self,
        policy: MLPPolicy,
        params: Mapping[str, Tensor],
        data: TaskData,
        hessian: bool = True,
    ) -> None:
        layers = list(policy.net)
        self.linear = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Linear)]
        self.tanh = [type(layers[i + 1]) is torch.nn.Tanh for i in self.linear[:-1]]
        p = {k: v.detach() for k, v in params.items()}
        self.w = [p[f"net.{i}.weight"] for i in self.linear]
        x = data.obs
        hs, ds, qs = [x], [], []
        one = torch.ones((), dtype=x.dtype, device=x.device)
        z = x
        for j, w in enumerate(self.w):
            z = torch.bmm(hs[-1], w.mT).add_(p[f"net.{self.linear[j]}.bias"].unsqueeze(1))
            if j < len(self.w) - 1:
                if self.tanh[j]:  # tanh z = 2 sigmoid(2 z) - 1 (CPU tanh is slow); 1 - tanh^2
                    h = torch.sigmoid_(z.mul_(2.0)).mul_(2.0).sub_(1.0)
                    ds.append(torch.addcmul(one, h, h, value=-1.0))
                else:
                    h = torch.relu(z)
                    ds.append((z > 0).to(z.dtype))
                hs.append(h)
        log_std = p["log_std"].unsqueeze(1)  # [T, 1, d]
        inv_sigma = torch.exp(-log_std)
        e = (data.actions - z) * inv_sigma
        logp = (
            -0.5 * e.square().sum(-1) - log_std.sum(-1) - 0.5 * e.shape[-1] * math.log(2 * math.pi)
        )
        c = data.advantages * data.mask / data.mask.sum(1, keepdim=True).clamp_min(1.0)
        beta = (-c * torch.exp(logp - data.logp)).unsqueeze(-1)  # d loss / d logp, [T, N, 1]
        delta = beta * e * inv_sigma  # d loss / d mean
        grads: dict[str, Tensor] = {"log_std": (beta * (e * e - 1.0)).sum(1)}
        deltas = [delta]
        for j in range(len(self.w) - 1, -1, -1):
            i = self.linear[j]
            grads[f"net.{i}.weight"] = torch.bmm(delta.mT, hs[j])
            grads[f"net.{i}.bias"] = delta.sum(1)
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
        if set(n for n, _ in policy.named_parameters()) - {"log_std"} != {
            f"net.{i}.{k}"
            for i, m in enumerate(layers)
            if isinstance(m, torch.nn.Linear)
            for k in ("weight", "bias")
        }:
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
            i = self.linear[j]
            rz = torch.bmm(hs[j], v[f"net.{i}.weight"].mT).add_(v[f"net.{i}.bias"].unsqueeze(1))
            if rhs[j] is not None:
                rz.baddbmm_(rhs[j], w.mT)
            if j < len(self.w) - 1:
                rhs.append(rz.mul_(ds[j]))
        e, inv_sigma, beta = self.e, self.inv_sigma, self.beta
        v_log = v["log_std"].unsqueeze(1)
        r_mean = rz * inv_sigma  # R mean / sigma
        r_beta = beta * (e * r_mean + (e * e - 1.0) * v_log).sum(-1, keepdim=True)
        out: dict[str, Tensor] = {
            "log_std": (r_beta * (e * e - 1.0) - 2.0 * beta * e * (r_mean + e * v_log)).sum(1)
        }
        r_delta = (r_beta * e - beta * (r_mean + 2.0 * e * v_log)) * inv_sigma
        for j in range(len(self.w) - 1, -1, -1):  # tangent backward
            i = self.linear[j]
            delta = deltas[j]
            rw = torch.bmm(r_delta.mT, hs[j])
            if rhs[j] is not None:
                rw.baddbmm_(delta.mT, rhs[j])
            out[f"net.{i}.weight"] = rw
            out[f"net.{i}.bias"] = r_delta.sum(1)
            if j > 0:
                r_delta = torch.bmm(r_delta, self.w[j]).baddbmm_(delta, v[f"net.{i}.weight"])
                r_delta.mul_(ds[j - 1])
                if qs[j - 1] is not None:  # tanh'' = -2 tanh tanh'
                    r_delta.addcmul_(qs[j - 1], rhs[j], value=-1.0)
        return [out[k] for k in self.names]


class OuterProblem:
    """The outer objective of one meta-iteration: re-adapt from given outer params on the fixed
    support episodes, then score the adapted policies on the fixed query episodes."""

    def __init__(
        self, learner: MetaLearner, supports: list[TaskData], query: TaskData, sampled: Params
    ) -> None:
        self.learner, self.supports, self.query = learner, supports, query
        self.first_order = learner.config.algorithm == "fomaml"
        self.num_tasks = query.obs.shape[0]
        with torch.no_grad():  # the sampling (adapted) policies' heads, for the KL
            self.old_head, self.old_log_std = learner.policy.head(sampled, query.obs)

    def _fisher_heads(self, outer: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """(head, log_std, old head, old log_std, mask) of the KL that is TRPO's metric: the
        first ``fisher_tasks`` tasks (a random subset: tasks are i.i.d.) and every
        ``fisher_subsample``-th query sample, adapted through the inner update (``fisher="full"``)
        or with the inner gradients held constant (``fisher="first_order"``)."""
        cfg, policy = self.learner.config, self.learner.policy
        k = min(cfg.fisher_tasks or self.num_tasks, self.num_tasks)
        tasks, rows = slice(0, k), slice(None, None, cfg.fisher_subsample)
        supports = [s.tasks(tasks) for s in self.supports]
        fo = self.first_order or cfg.fisher == "first_order"
        adapted = self.learner.adapt(outer, supports, k, first_order=fo)
        q = self.query.tasks(tasks)
        head, log_std = policy.head(adapted, q.obs[:, rows])
        old_log_std = self.old_log_std[tasks] if self.old_log_std is not None else None
        return head, log_std, self.old_head[tasks, rows], old_log_std, q.mask[:, rows]

    def fisher_kl(self, outer: Mapping[str, Tensor]) -> Tensor:
        """The KL whose Hessian is TRPO's metric (see :meth:`_fisher_heads`)."""
        head, log_std, old_head, old_log_std, mask = self._fisher_heads(outer)
        kl = D.kl(self.learner.policy.action_space, old_head, old_log_std, head, log_std)
        return _masked_task_mean(kl, mask).mean()

    def fisher_gauss_newton(self, outer: Mapping[str, Tensor]) -> GaussNewtonKL:
        """The Hessian of :meth:`fisher_kl` at the sampling params, exactly, as ``J^T M J``:
        ``J`` the Jacobian of the adapted policies' distribution parameters w.r.t. ``outer``,
        ``M`` the KL's Hessian in those parameters (see :meth:`_fisher_metric`)."""
        head, log_std, _, _, mask = self._fisher_heads(outer)
        return self._fisher_metric(head, log_std, mask)

    @staticmethod
    def _fisher_metric(
        head: Tensor, log_std: Tensor | None, mask: Tensor, num_tasks: int = 0
    ) -> GaussNewtonKL:
        """``outputs`` (the distribution parameters) and ``M``, the KL's Hessian in them at the
        sampling params (zero KL gradient there, so no other term): per sample
        ``diag(1 / sigma^2)`` for the mean and ``2`` for each log-std entry (Gaussian),
        ``diag(p) - p p^T`` for the logits (categorical), times the sample's weight in the
        masked task mean and the mean over ``num_tasks`` (default: ``head.shape[0]``) tasks."""
        k = head.shape[0]
        weight = mask / mask.sum(1, keepdim=True).clamp_min(1.0) / (num_tasks or k)  # [k, rows]
        weight = weight.detach()
        if log_std is None:  # categorical logits
            probs = torch.softmax(head.detach(), dim=-1)
            w = weight.unsqueeze(-1)

            def metric(vs: list[Tensor]) -> list[Tensor]:
                (v,) = vs
                pv = probs * v
                return [w * (pv - probs * pv.sum(-1, keepdim=True))]

            return GaussNewtonKL([head], metric)
        w_mean = weight.unsqueeze(-1) * torch.exp(-2.0 * log_std.detach())
        if log_std.dim() == 3:  # per task [k, 1, d]: summed over the rows it broadcasts to
            w_log = 2.0 * weight.sum(1).view(k, 1, 1)
        else:  # shared [d]
            w_log = 2.0 * weight.sum()

        def metric(vs: list[Tensor]) -> list[Tensor]:
            return [w_mean * vs[0], w_log * vs[1]]

        return GaussNewtonKL([head, log_std], metric)

    def fisher_product(
        self,
        outer: Mapping[str, Tensor],
        curvature: list[SupportCurvature] | None = None,
        adapted: Params | None = None,
    ) -> FisherProduct:
        """:meth:`fisher_gauss_newton`'s matrix ``J^T M J``, applied piece by piece (scalar
        inner lr only).

        An inner step ``theta' = theta - lr grad L_s(theta)`` has the Jacobian
        ``A = I - lr H_s`` (``H_s`` the support loss's Hessian, per task), which is symmetric.
        So ``J = J_q A_n ... A_1`` (``J_q``: the Jacobian of the query heads at the adapted
        params) and ``F v = sum_tasks A_1 ... A_n J_q^T M J_q A_n ... A_1 v``: per inner step
        two support Hessian-vector products (written out by :class:`SupportCurvature` where it
        applies, else one backward each through the retained graph of that step's gradient)
        plus a Jacobian-vector / vector-Jacobian pair on the few Fisher query rows. The
        Gauss-Newton form instead differentiates ``J^T w`` built through the inner update, a
        third-order graph. ``fisher="first_order"`` (or FOMAML): ``A = I``.

        ``curvature`` / ``adapted``: the inner steps' :class:`SupportCurvature` (built with
        ``hessian=True``) and the adapted params of all tasks at ``outer``, when the caller
        already has them (see :meth:`trpo_objective`)."""
        cfg, policy, learner = self.learner.config, self.learner.policy, self.learner
        theta, lr = learner.split(outer)
        if isinstance(lr, Mapping):
            raise ValueError(
                "fisher_product needs a scalar inner lr (Meta-SGD: fisher_gauss_newton)"
            )
        k = min(cfg.fisher_tasks or self.num_tasks, self.num_tasks)
        tasks, rows = slice(0, k), slice(None, None, cfg.fisher_subsample)
        second = not (self.first_order or cfg.fisher == "first_order")
        names = list(theta)
        steps: list[Any] = []  # per inner step: a SupportCurvature or (leaves, gradient graph)
        if curvature is not None and adapted is not None:
            steps = [c.tasks(tasks) for c in curvature]
            params = {n: adapted[n][tasks].detach() for n in names}
        else:
            params = {n: v.detach().expand(k, *v.shape).clone() for n, v in theta.items()}
            analytic = self.analytic
            with torch.enable_grad():
                for data in self.supports:
                    if analytic:
                        step = SupportCurvature(policy, params, data.tasks(tasks), second)
                        grads = list(step.grads.values())
                        steps.append(step)
                    else:
                        leaves = [params[n].requires_grad_(True) for n in names]
                        loss = learner.inner_loss(params, data.tasks(tasks)).sum()
                        grads = torch.autograd.grad(loss, leaves, create_graph=second)
                        steps.append((leaves, list(grads)))
                    params = {
                        n: (params[n] - lr * g).detach() for n, g in zip(names, grads, strict=True)
                    }
        if not second:  # FOMAML / first-order Fisher: A = I
            steps = []
        with torch.enable_grad():
            top = [params[n].requires_grad_(True) for n in names]
            q = self.query.tasks(tasks)
            head, log_std = policy.head(params, q.obs[:, rows])
        gn = self._fisher_metric(head, log_std, q.mask[:, rows], k)
        outs = gn.outputs
        ws = [torch.zeros_like(o, requires_grad=True) for o in outs]
        jt_w = torch.autograd.grad(outs, top, grad_outputs=ws, create_graph=True)
        sizes = [v.numel() for v in theta.values()]

        def apply_a(xs: list[Tensor], step: Any) -> list[Tensor]:
            if isinstance(step, SupportCurvature):
                hx = step.hvp(xs)
            else:
                leaves, grads = step
                hx = torch.autograd.grad(grads, leaves, grad_outputs=xs, retain_graph=True)
            return [x - lr * h for x, h in zip(xs, hx, strict=True)]

        def matvec(v: Tensor) -> Tensor:
            xs = [
                c.view(t.shape).expand(k, *t.shape)
                for c, t in zip(v.split(sizes), theta.values(), strict=True)
            ]
            for step in steps:  # A v
                xs = apply_a(xs, step)
            jv = torch.autograd.grad(jt_w, ws, grad_outputs=xs, retain_graph=True)  # J_q A v
            ys = torch.autograd.grad(outs, top, grad_outputs=gn.metric(list(jv)), retain_graph=True)
            ys = list(ys)
            for step in reversed(steps):  # A^T J_q^T M J_q A v (A symmetric)
                ys = apply_a(ys, step)
            return torch.cat([y.sum(0).reshape(-1) for y in ys])

        return FisherProduct(matvec)

    @property
    def analytic(self) -> bool:
        """Whether :meth:`trpo_objective` uses :class:`SupportCurvature` (a Gaussian tanh/ReLU
        MLP policy, a scalar inner lr and :meth:`MetaLearner.inner_loss`)."""
        learner = self.learner
        return (
            learner.lrs is None
            and type(learner).inner_loss is MetaLearner.inner_loss
            and SupportCurvature.applies(learner.policy)
        )

    def _analytic_objective(
        self, outer: Mapping[str, Tensor]
    ) -> tuple[LossWithGrad, FisherProduct]:
        """:meth:`trpo_objective` (second order) with the inner steps, the meta-gradient and the
        Fisher's support Hessians written out (:class:`SupportCurvature`; the same numbers; the
        line search's plain values stay with autograd, measured as fast).

        The meta-gradient is ``mean_tasks A_1 ... A_n u`` with ``u`` the query loss's
        gradient at the adapted params and ``A = I - lr H_s`` each inner step's (symmetric)
        Jacobian: one support Hessian-vector product per inner step, no graph."""
        cfg, policy, q = self.learner.config, self.learner.policy, self.query
        theta, lr = self.learner.split(outer)
        n = self.num_tasks
        params = {k: v.detach().expand(n, *v.shape).clone() for k, v in theta.items()}
        hessian = not self.first_order
        steps = []
        for data in self.supports:
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
        kl = D.kl(policy.action_space, self.old_head, self.old_log_std, top.mean, top.log_std)
        if cfg.fisher == "full" and not self.first_order:
            metric = self.fisher_product(outer, steps, params)
        else:
            metric = self.fisher_product(outer)
        metric.kl = _masked_task_mean(kl, q.mask).mean().item()
        return LossWithGrad(top.loss / n, grad), metric

    def logp_and_kl(self, outer: Mapping[str, Tensor], second_order: bool) -> tuple[Tensor, Tensor]:
        """Query log-probs [T, M] of the re-adapted policies and their mean KL from the sampling
        ones. ``second_order=False``: a cheap value (no meta-graph, e.g. for a line search)."""
        policy, q = self.learner.policy, self.query
        fo = self.first_order or not second_order
        adapted = self.learner.adapt(outer, self.supports, self.num_tasks, first_order=fo)
        with torch.set_grad_enabled(second_order):
            head, log_std = policy.head(adapted, q.obs)
            logp = D.log_prob(policy.action_space, head, log_std, q.actions)
            kl = D.kl(policy.action_space, self.old_head, self.old_log_std, head, log_std)
            kl = _masked_task_mean(kl, q.mask).mean()
        return logp, kl

    def trpo_objective(
        self, outer: Mapping[str, Tensor], second_order: bool
    ) -> tuple[Tensor | LossWithGrad, Tensor | GaussNewtonKL | FisherProduct]:
        """(surrogate loss to minimise, mean KL) for :func:`trpo_step`.

        With ``second_order`` the KL returned is the one whose Hessian TRPO uses as its metric
        (:meth:`fisher_kl`): ``fisher="full"`` differentiates it through the (second-order)
        inner update, as the MAML paper's implementation does; ``fisher="first_order"`` holds
        the inner gradients constant (cheaper, but blind to how a step changes the adaptation:
        on PointNav it lets the pre-update policy drift until the line search stalls).
        With ``fisher_product="gauss_newton"`` that metric comes as the equal
        :class:`GaussNewtonKL` (:meth:`fisher_gauss_newton`, Meta-SGD) or
        :class:`FisherProduct` (:meth:`fisher_product`, scalar inner lr) instead of the KL; for
        a Gaussian tanh/ReLU MLP with a scalar inner lr the whole objective is written out
        (:meth:`_analytic_objective`: the loss comes with its gradient, :class:`LossWithGrad`)."""
        cfg, q = self.learner.config, self.query
        if second_order and cfg.fisher_product == "gauss_newton" and self.analytic:
            return self._analytic_objective(outer)
        logp, kl = self.logp_and_kl(outer, second_order)
        with torch.set_grad_enabled(second_order):
            ratio = torch.exp(logp - q.logp)
            loss = -_masked_task_mean(ratio * q.advantages, q.mask).mean()
        if second_order and cfg.fisher_product == "gauss_newton":
            gn = self.fisher_gauss_newton(outer) if self.learner.lrs else self.fisher_product(outer)
            gn.kl = kl.item()
            return loss, gn
        subset = cfg.fisher_subsample > 1 or 0 < cfg.fisher_tasks < self.num_tasks
        if second_order and (cfg.fisher == "first_order" or subset):
            kl = self.fisher_kl(outer)
        return loss, kl

    def ppo_loss(self, outer: Mapping[str, Tensor], clip: float) -> Tensor:
        """Mean over tasks of PPO's clipped surrogate of each task's adapted policy."""
        q = self.query
        logp, _ = self.logp_and_kl(outer, True)
        per_task = torch.func.vmap(clipped_surrogate, in_dims=(0, 0, 0, None))(
            logp, q.logp, q.advantages * q.mask, clip
        )
        # clipped_surrogate averages over all M samples; rescale to the unmasked ones
        return (per_task * q.mask.shape[1] / q.mask.sum(1).clamp_min(1.0)).mean()


HINT = "Lower the step size (max_kl / ppo_lr / inner_lr) or change the seed."


# --------------------------------------------------------------------------------------------
# Evaluation: return before and after each inner step on held-out tasks
# --------------------------------------------------------------------------------------------
@dataclass
class AdaptationCurve:
    """Per-task results of adapting from the meta-params for ``k = 0..steps`` inner steps."""

    returns: Tensor
    """[steps + 1, T] mean episode return of each task with the params after k steps"""
    env_steps: Tensor
    """[steps + 1, T] env steps of the episodes sampled at step k (the support of step k + 1)"""
    params: dict[str, Tensor]
    """stacked ``[T, ...]`` params after ``steps`` steps"""
    episodes: list[Episodes]
    """the episodes sampled at each k"""


def adaptation_curve(
    learner: MetaLearner,
    env: Any,
    tasks: list[Any],
    steps: int,
    seed: int,
    after_sampling: Callable[[int, Episodes, Params], None] | None = None,
) -> AdaptationCurve:
    """Adapt the meta-params on every task of ``tasks`` (all at once in ``env``) and record each
    task's return before and after each inner step (each step adapts on episodes sampled with
    the previous step's params). Episodes of step ``k`` are sampled with the env reset seeded
    ``seed + k`` and actions from ``torch.Generator().manual_seed(seed)``; each inner step is the
    training's first-order policy-gradient step on those episodes. ``after_sampling(k, episodes,
    params)`` is called after the episodes of each step are sampled. Deterministic given ``seed``.
    """
    cfg = learner.config
    env.set_tasks(tasks)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    outer = {k: v.detach() for k, v in learner.outer_params().items()}
    theta, lr = learner.split(outer)
    params = expand_params(theta, env.num_tasks)
    returns, steps_used, episodes = [], [], []
    for k in range(steps + 1):
        ep = sample_episodes(
            env, learner.policy, params, gen, seed=seed + k, horizon=cfg.horizon or None
        )
        episodes.append(ep)
        if after_sampling is not None:
            after_sampling(k, ep, params)
        returns.append(ep.task_returns())
        steps_used.append(ep.by_task(ep.mask).sum(1))
        if k < steps:
            adv = compute_advantages(
                ep, cfg.gamma, cfg.gae_lambda, cfg.baseline, cfg.normalize_advantages
            )
            data = TaskData.from_episodes(ep, adv)
            params = inner_update(learner.inner_loss, params, data, lr, 1, first_order=True)
            params = {n: v.detach() for n, v in params.items()}
    return AdaptationCurve(torch.stack(returns), torch.stack(steps_used), params, episodes)


def evaluate_adaptation(
    learner: MetaLearner,
    env: Any,
    tasks: list[Any],
    steps: int,
    seed: int,
) -> list[float]:
    """Mean episode return over ``tasks`` after 0, 1, ..., ``steps`` inner steps
    (:func:`adaptation_curve` averaged over tasks)."""
    return adaptation_curve(learner, env, tasks, steps, seed).returns.mean(1).tolist()


# --------------------------------------------------------------------------------------------
# Setup shared by the meta-policy-gradient trainers (MAML family, Reptile)
# --------------------------------------------------------------------------------------------
@dataclass
class MetaPGSetup:
    """Envs, held-out tasks, policy and generators built from a :class:`MetaPGConfig`."""

    config: MetaPGConfig
    device: torch.device
    env: Any
    eval_env: Any
    eval_tasks: list[Any]
    policy: Any
    learner: MetaLearner
    task_rng: np.random.Generator
    action_gen: torch.Generator
    shard: distributed.Shard
    """this rank's tasks of each meta-batch (all of them in one process)"""

    def evaluate(self) -> dict[str, float]:
        """Mean return on the held-out tasks after 0..eval_inner_steps inner steps."""
        cfg = self.config
        curve = evaluate_adaptation(
            self.learner, self.eval_env, self.eval_tasks, cfg.eval_inner_steps, cfg.seed + 3
        )
        return {f"eval_return_{k}": v for k, v in enumerate(curve)}


def build_setup(cfg: MetaPGConfig) -> MetaPGSetup:
    """Seeds: tasks from ``seed``, actions from ``seed``, initial weights from ``seed + 1``,
    held-out tasks from ``seed + 2``, evaluation episodes from ``seed + 3``. Under torchrun the
    training env holds this rank's shard of the meta-batch (see :mod:`meta_rl.distributed`)."""
    from meta_rl_envs.batched import resolve_device

    cfg.apply_num_threads()
    device = resolve_device(cfg.device)
    env_kw = {"horizon": cfg.horizon} if cfg.horizon else {}
    shard = distributed.context().shard(cfg.meta_batch)
    env = make_env(
        cfg.env_id, shard.size, cfg.episodes_per_task, str(device), cfg.env_backend, **env_kw
    )
    distributed.attach_shard(env, shard)
    eval_env = make_env(
        cfg.env_id, cfg.eval_tasks, cfg.eval_episodes, str(device), cfg.env_backend, **env_kw
    )
    policy = make_mlp_policy(
        env.single_observation_space,
        env.single_action_space,
        hidden=cfg.hidden,
        activation=cfg.activation,
        init_log_std=cfg.init_log_std,
        generator=torch.Generator().manual_seed(cfg.seed + 1),
    ).to(device)
    return MetaPGSetup(
        config=cfg,
        device=device,
        env=env,
        eval_env=eval_env,
        eval_tasks=eval_env.sample_tasks(cfg.eval_tasks, cfg.seed + 2, cfg.eval_split),
        policy=policy,
        learner=MetaLearner(policy, cfg),
        task_rng=np.random.default_rng(cfg.seed),
        action_gen=torch.Generator(device=device).manual_seed(cfg.seed),
        shard=shard,
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train(config: MAMLConfig, run: Any = None) -> dict[str, float]:
    """Meta-train per ``config``; ``run`` (a :class:`meta_rl.runs.Run`, or None) gets metrics
    and checkpoints. Returns the final metrics."""
    dist = distributed.context()  # data-parallel ranks (one process: no-ops)
    cfg = config = dist.sync_config(config)
    setup = build_setup(cfg)
    device, env, policy, learner = setup.device, setup.env, setup.policy, setup.learner
    shard = setup.shard
    fisher_learner, fisher_weight = distributed.fisher_share(learner, shard)
    task_rng, action_gen = setup.task_rng, setup.action_gen
    optimizer = (
        torch.optim.Adam(list(learner.outer_params().values()), lr=cfg.ppo_lr)
        if cfg.outer == "ppo"
        else None
    )

    def checkpoint() -> loop.Saved:
        state: dict[str, Any] = {
            "task_rng": rng_state(task_rng),
            "action_rng": rng_state(action_gen),
            "env_steps_total": total_steps,
        }
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        return {k: v.detach() for k, v in learner.outer_params().items()}, state

    # ---- resume ------------------------------------------------------------------------
    start, total_steps = 0, 0.0
    state_keys = ("task_rng", "action_rng") + (("optimizer",) if optimizer is not None else ())
    ck = loop.resume(run, dist, device, learner.outer_params(), state_keys)
    if ck is not None:
        with torch.no_grad():
            for k, v in learner.outer_params().items():
                v.copy_(ck.tensors[k])
        set_rng_state(task_rng, ck.state["task_rng"])
        set_rng_state(action_gen, ck.state["action_rng"])
        if optimizer is not None:
            optimizer.load_state_dict(ck.state["optimizer"])
        start = ck.step
        total_steps = float(ck.state.get("env_steps_total", 0.0))
    elif run is not None:  # the meta-untrained policy, for reference
        run.log(0, setup.evaluate())
    dist.broadcast_(learner.outer_params().values())

    metrics: dict[str, float] = {}
    with loop.progress(run, cfg, start, "return_post"):
        for it in range(start, cfg.iterations):
            step = it + 1
            t0 = time.perf_counter()
            outer = learner.outer_params()
            T = shard.size  # this rank's tasks

            # ---- 1. tasks --------------------------------------------------------------
            env.set_tasks(shard.take(env.sample_tasks(cfg.meta_batch, task_rng, "train")))
            env_seed = int(task_rng.integers(2**31 - 1))

            # ---- 2-3. support episodes and the inner loop (no meta-graph while sampling) -
            theta, lr = learner.split({k: v.detach() for k, v in outer.items()})
            params = expand_params(theta, T)
            supports: list[TaskData] = []
            returns_pre = 0.0
            env_steps = 0
            for k in range(cfg.inner_steps):
                ep = sample_episodes(env, policy, params, action_gen, seed=env_seed + k)
                env_steps += ep.num_steps()
                if k == 0:
                    returns_pre = ep.task_returns().mean().item()
                adv = compute_advantages(
                    ep, cfg.gamma, cfg.gae_lambda, cfg.baseline, cfg.normalize_advantages
                )
                supports.append(TaskData.from_episodes(ep, adv))
                params = inner_update(
                    learner.inner_loss, params, supports[-1], lr, 1, first_order=True
                )
                params = {n: v.detach() for n, v in params.items()}

            # ---- 4. query episodes with the adapted params ------------------------------
            ep = sample_episodes(env, policy, params, action_gen, seed=env_seed + cfg.inner_steps)
            env_steps += ep.num_steps()
            returns_post = ep.task_returns().mean().item()
            adv = compute_advantages(
                ep, cfg.gamma, cfg.gae_lambda, cfg.baseline, cfg.normalize_advantages
            )
            query = TaskData.from_episodes(ep, adv)
            problem = OuterProblem(fisher_learner, supports, query, params)
            objective = distributed.share_objective(
                problem.trpo_objective, shard.weight, fisher_weight
            )

            # ---- 5. outer update ----------------------------------------------------------
            if cfg.outer == "trpo":
                info = trpo_step(
                    outer,
                    objective,
                    max_kl=cfg.max_kl,
                    damping=cfg.cg_damping,
                    cg_iters=cfg.cg_iters,
                    ls_steps=cfg.ls_steps,
                    ls_ratio=cfg.ls_ratio,
                    reduce=dist.all_reduce if dist.enabled else None,
                )
                loss_v, kl_v = info.loss_after, info.kl
                extra = {"step_fraction": info.step_fraction, "grad_norm": info.grad_norm}
            else:
                assert optimizer is not None
                for _ in range(cfg.ppo_epochs):
                    loss = problem.ppo_loss(outer, cfg.ppo_clip) * shard.weight  # our share
                    optimizer.zero_grad()
                    loss.backward()
                    dist.all_reduce_grads(outer.values())
                    optimizer.step()
                _, kl = objective(outer, False)
                loss_v, kl_v = dist.all_reduce(torch.stack([loss.detach(), kl.detach()])).tolist()
                extra = {}
            if not (kl_v <= cfg.abort_kl):  # a NaN KL too; non-finite losses: loop.end_step
                what = f"the KL exploded (kl={kl_v:.4g} > abort_kl={cfg.abort_kl})"
                raise loop.diverged(step, run, what, HINT)

            # ---- metrics, then evaluation / log / checkpoint when due ---------------------
            if dist.enabled:  # means over all tasks, steps of all ranks
                w = shard.weight
                g = dist.weighted_sum({"pre": returns_pre * w, "post": returns_post * w}, 1.0)
                returns_pre, returns_post = g["pre"], g["post"]
                env_steps = int(dist.weighted_sum({"n": env_steps}, 1.0)["n"])
            seconds = time.perf_counter() - t0
            total_steps += env_steps
            metrics = {
                "return_pre": returns_pre,
                "return_post": returns_post,
                "loss": loss_v,
                "kl": kl_v,
                "env_steps": float(env_steps),
                "env_steps_total": total_steps,
                "steps_per_second": env_steps / seconds,
                **extra,
            }
            if "log_std" in learner.theta:
                metrics["log_std_mean"] = learner.theta["log_std"].mean().item()
            if learner.lrs is not None:
                metrics["inner_lr_mean"] = float(
                    torch.cat([v.detach().reshape(-1) for v in learner.lrs.values()]).mean()
                )
            loop.end_step(run, cfg, step, metrics, outer.values(), setup.evaluate, checkpoint, HINT)
    return loop.final(metrics, setup.evaluate)
