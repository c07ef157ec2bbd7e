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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from meta_rl_envs import make_env
from torch import Tensor

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, ConfigError, Headline, bounds, choice
from meta_rl.core import Params, expand_params, init_metasgd_lrs, inner_update
from meta_rl.loop import TrainingDiverged
from meta_rl.policies import distributions as D
from meta_rl.policies.mlp import MLPPolicy, make_mlp_policy
from meta_rl.rl import trpo
from meta_rl.rl.maml_fast import PiecewiseFisher, SupportCurvature, WrittenOut
from meta_rl.rl.ppo import clipped_surrogate
from meta_rl.rl.rollout import Episodes, compute_advantages, sample_episodes, shard_env
from meta_rl.rl.trpo import trpo_step

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
    """auto: the torch-batched env when the family has one, else the family's Gymnasium envs
    (:class:`meta_rl_envs.vector.VectorTaskEnv`)"""
    env_workers: int = field(default=1, metadata=bounds(ge=1))
    """processes stepping the Gymnasium envs of a family without a torch twin (e.g. MuJoCo):
    2 on a 2-core machine; the same episodes for any count"""
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

    def headline(self) -> Headline:
        """Mean held-out return after ``eval_inner_steps`` inner steps."""
        return Headline(f"eval_return_{self.eval_inner_steps}", maximize=True)


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
        by_task = ep.by_task
        return cls(*map(by_task, (ep.obs, ep.actions, ep.logp, advantages, ep.mask)))

    def tasks(self, index: slice) -> TaskData:
        """The tasks ``index`` of the batch."""
        return TaskData(*(getattr(self, f.name)[index] for f in fields(self)))


def _masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """[T, M] -> [T]: the mean over each task's unmasked samples."""
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class MetaLearner:
    """The meta-parameters and the adaptation of stacked per-task params.

    ``theta`` are the policy's parameters (leaves of the module: updates land in the module);
    ``lrs`` Meta-SGD's learned per-parameter inner step sizes (``None``: the config's scalar
    ``inner_lr``). ``config`` is a :class:`MAMLConfig` or any config with its adaptation fields
    (``inner_lr``, ``gamma``, ``gae_lambda``, ``baseline``, ``normalize_advantages``,
    ``horizon``; e.g. :class:`meta_rl.rl.reptile.ReptileConfig`)."""

    def __init__(self, policy: MLPPolicy, config: Any) -> None:
        self.policy = policy
        self.config = config
        self.theta = policy.params()
        self.lrs: Params | None = None
        if getattr(config, "algorithm", None) == "metasgd":
            self.lrs = init_metasgd_lrs(self.theta, config.inner_lr)

    @property
    def lr(self) -> Params | float:
        """The inner step size: the learned per-parameter rates, else the config's scalar."""
        return self.lrs if self.lrs is not None else self.config.inner_lr

    def leaves(self) -> list[Tensor]:
        """What the outer step updates, in a fixed order: the policy params, then the rates."""
        return [*self.theta.values(), *(self.lrs.values() if self.lrs is not None else ())]

    def outer_params(self) -> dict[str, Tensor]:
        """:meth:`leaves` by name, as checkpoints hold them (the rates under ``inner_lr/``)."""
        out = dict(self.theta)
        if self.lrs is not None:
            out.update({LR_PREFIX + k: v for k, v in self.lrs.items()})
        return out

    def detached(self) -> tuple[Params, Params | float]:
        """``(theta, lr)`` without graph: for sampling and evaluation."""
        theta = {k: v.detach() for k, v in self.theta.items()}
        lr = self.lr
        return theta, ({k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr)

    def inner_loss(self, params: Params, data: TaskData) -> Tensor:
        """[T] likelihood-ratio policy-gradient surrogate of each task (to minimise)."""
        logp = self.policy.log_prob(params, data.obs, data.actions)
        ratio = torch.exp(logp - data.logp)
        return -_masked_task_mean(ratio * data.advantages, data.mask)

    def adapt(
        self,
        theta: Params,
        lr: Params | float,
        supports: list[TaskData],
        num_tasks: int,
        first_order: bool,
    ) -> Params:
        """Stacked per-task params after one inner step of size ``lr`` on each of ``supports``,
        from ``theta`` (differentiable w.r.t. both unless ``first_order``)."""
        params = expand_params(theta, num_tasks)
        for data in supports:
            params = inner_update(self.inner_loss, params, data, lr, 1, first_order=first_order)
        return params


class OuterProblem:
    """The outer objective of one meta-iteration at the learner's current params: re-adapt from
    them on the fixed support episodes, then score the adapted policies on the fixed query
    episodes (``sampled``: the adapted params the query episodes were sampled with). The plain
    autograd form of :class:`meta_rl.rl.trpo.Objective`; :func:`outer_objective` picks, once
    at setup, this or a faster drop-in of :mod:`meta_rl.rl.maml_fast` with the same numbers.

    TRPO's metric is the Hessian of the KL between the sampling and the re-adapted policies on
    the first ``fisher_tasks`` tasks (default: the config's, 0 meaning all; a data-parallel
    shard passes its own count, ``Shard.first``) and every ``fisher_subsample``-th query sample,
    through the inner update per the config's ``fisher`` and in the form ``fisher_product``."""

    def __init__(
        self,
        learner: MetaLearner,
        supports: list[TaskData],
        query: TaskData,
        sampled: Params,
        fisher_tasks: int | None = None,
    ) -> None:
        cfg = learner.config
        self.learner, self.supports, self.query = learner, supports, query
        self.first_order = cfg.algorithm == "fomaml"
        self.num_tasks = query.obs.shape[0]
        if fisher_tasks is None:
            fisher_tasks = min(cfg.fisher_tasks or self.num_tasks, self.num_tasks)
        self.fisher_tasks = fisher_tasks
        self.fisher_rows = slice(None, None, cfg.fisher_subsample)
        with torch.no_grad():  # the sampling (adapted) policies' heads, for the KL
            self.old_head, self.old_log_std = learner.policy.head(sampled, query.obs)

    # -- the objective -------------------------------------------------------------------
    def logp_and_kl(self, second_order: bool) -> tuple[Tensor, Tensor]:
        """Query log-probs [T, M] of the re-adapted policies and their mean KL from the sampling
        ones. ``second_order=False``: a cheap value (no meta-graph, e.g. for a line search)."""
        learner, policy, q = self.learner, self.learner.policy, self.query
        fo = self.first_order or not second_order
        adapted = learner.adapt(learner.theta, learner.lr, self.supports, self.num_tasks, fo)
        with torch.set_grad_enabled(second_order):
            head, log_std = policy.head(adapted, q.obs)
            logp = D.log_prob(policy.action_space, head, log_std, q.actions)
            kl = D.kl(policy.action_space, self.old_head, self.old_log_std, head, log_std)
            kl = _masked_task_mean(kl, q.mask).mean()
        return logp, kl

    def surrogate(self, second_order: bool) -> tuple[Tensor, Tensor]:
        """(the query surrogate loss to minimise, the mean KL), see :meth:`logp_and_kl`."""
        q = self.query
        logp, kl = self.logp_and_kl(second_order)
        with torch.set_grad_enabled(second_order):
            ratio = torch.exp(logp - q.logp)
            loss = -_masked_task_mean(ratio * q.advantages, q.mask).mean()
        return loss, kl

    def ppo_loss(self, clip: float) -> Tensor:
        """Mean over tasks of PPO's clipped surrogate of each task's adapted policy."""
        q = self.query
        logp, _ = self.logp_and_kl(True)
        per_task = torch.func.vmap(clipped_surrogate, in_dims=(0, 0, 0, None))(
            logp, q.logp, q.advantages * q.mask, clip
        )
        # clipped_surrogate averages over all M samples; rescale to the unmasked ones
        return (per_task * q.mask.shape[1] / q.mask.sum(1).clamp_min(1.0)).mean()

    # -- TRPO's metric -------------------------------------------------------------------
    def _fisher_heads(self) -> tuple[Tensor, ...]:
        """(head, log_std, old head, old log_std, mask) of the KL that is TRPO's metric."""
        cfg, learner, policy = self.learner.config, self.learner, self.learner.policy
        tasks, rows, k = slice(0, self.fisher_tasks), self.fisher_rows, self.fisher_tasks
        supports = [s.tasks(tasks) for s in self.supports]
        fo = self.first_order or cfg.fisher == "first_order"
        adapted = learner.adapt(learner.theta, learner.lr, supports, k, first_order=fo)
        q = self.query.tasks(tasks)
        head, log_std = policy.head(adapted, q.obs[:, rows])
        old_log_std = self.old_log_std[tasks] if self.old_log_std is not None else None
        return head, log_std, self.old_head[tasks, rows], old_log_std, q.mask[:, rows]

    def fisher_kl(self) -> Tensor:
        """The KL whose Hessian is TRPO's metric."""
        head, log_std, old_head, old_log_std, mask = self._fisher_heads()
        kl = D.kl(self.learner.policy.action_space, old_head, old_log_std, head, log_std)
        return _masked_task_mean(kl, mask).mean()

    def fisher_gauss_newton(self) -> tuple[list[Tensor], Callable[[list[Tensor]], list[Tensor]]]:
        """The Hessian of :meth:`fisher_kl` at the sampling params, exactly, as ``J^T M J``:
        ``(outputs, M)`` for :func:`meta_rl.rl.trpo.gauss_newton_fvp`, ``outputs`` the adapted
        policies' distribution parameters (with their graph to the params)."""
        head, log_std, _, _, mask = self._fisher_heads()
        weight = mask / mask.sum(1, keepdim=True).clamp_min(1.0) / mask.shape[0]  # as the KL's
        return D.kl_hessian(head, log_std, weight.detach())

    def local_model(self) -> trpo.LocalModel:
        """Loss, meta-gradient and Fisher-vector product at the learner's current params."""
        cfg, leaves = self.learner.config, self.learner.leaves()
        loss, kl = self.surrogate(True)
        gauss_newton = cfg.fisher_product == "gauss_newton"
        grad = trpo.flat_grad(
            loss, leaves, retain_graph=not gauss_newton
        )  # the KL shares its graph
        if self.fisher_tasks == 0:  # no Fisher task here (a data-parallel shard): adds nothing
            fvp: Callable[[Tensor], Tensor] = torch.zeros_like
        elif gauss_newton:
            fvp = trpo.gauss_newton_fvp(*self.fisher_gauss_newton(), leaves)
        else:
            subset = cfg.fisher_subsample > 1 or self.fisher_tasks < self.num_tasks
            if cfg.fisher == "first_order" or subset:
                kl = self.fisher_kl()
            fvp = trpo.hessian_fvp(kl, leaves)
        return trpo.LocalModel(loss.detach(), grad, fvp)

    def loss_and_kl(self) -> tuple[Tensor, Tensor]:
        """The surrogate loss and the mean KL without a meta-graph (TRPO's line search)."""
        return self.surrogate(False)


def outer_objective(learner: MetaLearner) -> Callable[[OuterProblem], trpo.Objective]:
    """How a meta-iteration's :class:`OuterProblem` becomes TRPO's objective, chosen once at
    setup: the problem itself (Meta-SGD's per-parameter rates, ``fisher_product="hessian"``),
    else a :mod:`meta_rl.rl.maml_fast` drop-in: everything written out where
    :class:`SupportCurvature` applies (and the inner loss is ours), else piecewise products."""
    if learner.config.fisher_product == "hessian" or learner.lrs is not None:
        return lambda problem: problem
    ours = type(learner).inner_loss is MetaLearner.inner_loss
    return WrittenOut if ours and SupportCurvature.applies(learner.policy) else PiecewiseFisher


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
    theta, lr = learner.detached()
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
    shard: collectives.Shard
    """this rank's tasks of each meta-batch (all of them in one process)"""

    def sample(self, params: Params, seed: int) -> Episodes:
        """One episode per row of the training env (this rank's tasks) with ``params``."""
        gen = self.action_gen
        return sample_episodes(self.env, self.policy, params, gen, seed=seed, shard=self.shard)

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
    training env holds this rank's shard of the meta-batch (see :mod:`meta_rl.collectives`)."""
    from meta_rl_envs.batched import resolve_device

    cfg.apply_num_threads()
    device = resolve_device(cfg.device)
    env_kw = {"horizon": cfg.horizon} if cfg.horizon else {}
    shard = collectives.context().shard(cfg.meta_batch)
    env_kw["workers"] = cfg.env_workers
    env = make_env(
        cfg.env_id, shard.size, cfg.episodes_per_task, str(device), cfg.env_backend, **env_kw
    )
    shard_env(env, shard)  # the env draws the whole batch's noise, keeps this shard's rows
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
    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    cfg = config = dist.sync_config(config)
    setup = build_setup(cfg)
    device, env, learner = setup.device, setup.env, setup.learner
    shard = setup.shard
    fisher_tasks, fisher_weight = shard.first(cfg.fisher_tasks)  # TRPO metric's tasks
    as_objective = outer_objective(learner)  # plain autograd or a faster drop-in, chosen once
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
            T = shard.size  # this rank's tasks

            # ---- 1. tasks --------------------------------------------------------------
            env.set_tasks(shard.take(env.sample_tasks(cfg.meta_batch, task_rng, "train")))
            env_seed = int(task_rng.integers(2**31 - 1))

            # ---- 2-3. support episodes and the inner loop (no meta-graph while sampling) -
            theta, lr = learner.detached()
            params = expand_params(theta, T)
            supports: list[TaskData] = []
            returns_pre = 0.0
            env_steps = 0
            for k in range(cfg.inner_steps):
                ep = setup.sample(params, env_seed + k)
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
            ep = setup.sample(params, env_seed + cfg.inner_steps)
            env_steps += ep.num_steps()
            returns_post = ep.task_returns().mean().item()
            adv = compute_advantages(
                ep, cfg.gamma, cfg.gae_lambda, cfg.baseline, cfg.normalize_advantages
            )
            query = TaskData.from_episodes(ep, adv)
            problem = OuterProblem(learner, supports, query, params, fisher_tasks)
            objective = as_objective(problem)
            if dist.enabled:  # this rank's share, summed over the ranks
                objective = trpo.Shared(objective, dist.all_reduce, shard.weight, fisher_weight)

            # ---- 5. outer update ----------------------------------------------------------
            if cfg.outer == "trpo":
                info = trpo_step(
                    learner.leaves(),
                    objective,
                    max_kl=cfg.max_kl,
                    damping=cfg.cg_damping,
                    cg_iters=cfg.cg_iters,
                    ls_steps=cfg.ls_steps,
                    ls_ratio=cfg.ls_ratio,
                )
                loss_v, kl_v = info.loss_after, info.kl
                extra = {"step_fraction": info.step_fraction, "grad_norm": info.grad_norm}
            else:
                assert optimizer is not None
                for _ in range(cfg.ppo_epochs):
                    loss = problem.ppo_loss(cfg.ppo_clip) * shard.weight  # our share
                    optimizer.zero_grad()
                    loss.backward()
                    dist.all_reduce_grads(learner.leaves())
                    optimizer.step()
                kl = problem.loss_and_kl()[1].detach() * shard.weight
                loss_v, kl_v = dist.all_reduce(torch.stack([loss.detach(), kl])).tolist()
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
            leaves = learner.leaves()
            loop.end_step(run, cfg, step, metrics, leaves, setup.evaluate, checkpoint, HINT)
    return loop.final(metrics, setup.evaluate)
