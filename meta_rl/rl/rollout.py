"""Sampling episodes for many tasks at once, each task with its own (adapted) policy params.

The env is any :class:`~meta_rl_envs.batched.BatchedTaskEnv` made by
:func:`meta_rl_envs.make_env`: a torch-batched family, or a Gymnasium vector env of the scalar
family with one sub-env per row (:class:`~meta_rl_envs.vector.VectorTaskEnv`, for families
without a batched version). Both have ``num_tasks x envs_per_task`` rows, row ``r`` running task
``r // envs_per_task``, and the same ``set_tasks`` / ``reset`` / ``step`` contract (same-step
autoreset, ``info["final_obs"]``).

:func:`sample_episodes` runs ONE episode per row (at most ``horizon`` steps): the policy's
forward for all tasks is one batched call with stacked per-task params, the env steps all rows
at once, and steps after a row's first episode ended are masked out. Data is time-major
``[H, N, ...]``; :meth:`Episodes.by_task` regroups it ``[T, H * E, ...]`` for per-task losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from meta_rl_envs.batched import BatchedTaskEnv
from torch import Tensor

from meta_rl.collectives import Shard
from meta_rl.policies import distributions as D
from meta_rl.policies.mlp import MLPPolicy
from meta_rl.rl.returns import discounted_returns, fit_linear_baseline, gae

__all__ = [
    "Episodes",
    "shard_env",
    "sample_episodes",
    "compute_advantages",
]


# --------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------
@dataclass
class Episodes:
    """One episode per row, time-major. Steps after a row's episode ended have ``mask`` 0."""

    obs: Tensor
    """[H, N, obs_dim] observation the action was taken in"""
    actions: Tensor
    """[H, N] (Discrete) or [H, N, act_dim] (Box) sampled actions (unclipped)"""
    logp: Tensor
    """[H, N] log-probability of the action under the sampling params"""
    rewards: Tensor
    """[H, N] rewards (0 where masked)"""
    terminated: Tensor
    """[H, N] the step ended the episode in a terminal state"""
    mask: Tensor
    """[H, N] 1.0 for steps of the row's episode, 0.0 after it ended"""
    num_tasks: int
    envs_per_task: int

    @property
    def horizon(self) -> int:
        return self.rewards.shape[0]

    def row_returns(self) -> Tensor:
        """[N] undiscounted return of each row's episode."""
        return self.rewards.sum(0)

    def task_returns(self) -> Tensor:
        """[T] mean undiscounted episode return of each task."""
        return self.row_returns().reshape(self.num_tasks, self.envs_per_task).mean(1)

    def num_steps(self) -> int:
        """Env steps that belong to episodes (masked steps are not counted)."""
        return int(self.mask.sum().item())

    def by_task(self, x: Tensor) -> Tensor:
        """``[H, N, ...]`` regrouped per task as ``[T, H * E, ...]``."""
        H, T, E = x.shape[0], self.num_tasks, self.envs_per_task
        rest = x.shape[2:]
        y = x.reshape(H, T, E, *rest).transpose(0, 1)
        return y.reshape(T, H * E, *rest)

    def to(self, device: torch.device | str) -> Episodes:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return Episodes(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in kw.items()})


def shard_env(env: BatchedTaskEnv, shard: Shard) -> BatchedTaskEnv:
    """Make ``env`` (``shard.size`` tasks) draw its per-row noise like rows ``shard`` of a
    ``shard.total``-task env: sets the ``row_window`` that the batched env (or the Gymnasium
    vector env) underneath any wrappers declares. Returns ``env``."""
    if shard.whole:
        return env
    inner = env
    while inner is not None:
        if any("row_window" in vars(c) for c in type(inner).__mro__):  # declared, not proxied
            inner.row_window = shard.window(inner.envs_per_task)
            return env
        inner = getattr(inner, "env", None)
    raise ValueError(
        f"env {type(env).__name__} has no batched env with a row_window underneath; sharding "
        "the meta-batch needs one (a meta_rl_envs BatchedEnv or meta_rl_envs.vector.VectorTaskEnv)"
    )


@torch.no_grad()
def sample_episodes(
    env: BatchedTaskEnv,
    policy: MLPPolicy,
    params: Mapping[str, Tensor],
    generator: torch.Generator | None,
    seed: int | None = None,
    horizon: int | None = None,
    deterministic: bool = False,
    shard: Shard | None = None,
) -> Episodes:
    """One episode per row of ``env`` (tasks already set) with ``params`` (stacked ``[T, ...]``
    per task, or shared). ``seed`` reseeds the env's reset; ``generator`` draws the actions.
    ``shard``: ``env`` holds this data-parallel shard's tasks of the meta-batch (set up with
    :func:`shard_env`); the actions then use the whole batch's noise, and the early stop asks
    every rank."""
    T, E = env.num_tasks, env.envs_per_task
    H = int(horizon if horizon is not None else env.horizon)
    space = policy.action_space
    params = {k: v.detach() for k, v in params.items()}
    obs, _ = env.reset(seed=seed)
    if shard is not None:
        generator = D.windowed(generator, shard.window())
    alive = torch.ones(env.num_envs, dtype=torch.bool, device=obs.device)
    rec: dict[str, list[Tensor]] = {k: [] for k in ("obs", "act", "logp", "rew", "term", "mask")}
    for t in range(H):
        x = obs.reshape(T, E, -1).to(torch.float32)
        head_out, log_std = policy.head(params, x)
        if deterministic:
            action = D.mode(space, head_out)
        else:
            action = D.sample(space, head_out, log_std, generator)
        logp = D.log_prob(space, head_out, log_std, action)
        action = action.reshape(env.num_envs, *action.shape[2:])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rec["obs"].append(x.reshape(env.num_envs, -1))
        rec["act"].append(action)
        rec["logp"].append(logp.reshape(env.num_envs))
        rec["mask"].append(alive)
        rec["rew"].append(reward.to(torch.float32) * alive)
        rec["term"].append(terminated & alive)
        alive = alive & ~(terminated | truncated)
        obs = next_obs
        # every 16 steps (one host sync): stop once every row's episode is over
        if (t + 1) % 16 == 0 and not (shard.any(alive) if shard else bool(alive.any())):
            break
    return Episodes(
        obs=torch.stack(rec["obs"]),
        actions=torch.stack(rec["act"]),
        logp=torch.stack(rec["logp"]),
        rewards=torch.stack(rec["rew"]),
        terminated=torch.stack(rec["term"]),
        mask=torch.stack(rec["mask"]).to(torch.float32),
        num_tasks=T,
        envs_per_task=E,
    )


# --------------------------------------------------------------------------------------------
# Advantages: GAE over the MAML paper's linear feature baseline, refit per task
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def compute_advantages(
    episodes: Episodes,
    gamma: float = 0.99,
    lam: float = 1.0,
    baseline: str = "linear",
    normalize: bool = True,
    baseline_horizon: float | None = None,
) -> Tensor:
    """[H, N] advantages (0 where masked). ``baseline``: "linear" (ridge regression of the
    discounted returns on ``[o, o^2, t, t^2, t^3, 1]``, fitted per task on this batch) or "none".
    ``normalize`` makes them zero-mean, unit-std within each task."""
    if baseline not in ("linear", "none"):
        raise ValueError(f"baseline={baseline!r} is not allowed; choose 'linear' or 'none'")
    mask, rewards = episodes.mask, episodes.rewards
    H = episodes.horizon
    zeros = torch.zeros_like(mask)
    if baseline == "linear":
        returns = discounted_returns(rewards, zeros, gamma)
        steps = torch.arange(H, device=mask.device).unsqueeze(1).expand_as(mask)
        values = fit_linear_baseline(
            episodes.obs,
            returns,
            steps,
            episodes.num_tasks,
            mask=mask,
            horizon=float(baseline_horizon or H),
        )
        values = values * mask
    else:
        values = zeros
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    adv = gae(rewards, values, next_values, episodes.terminated, zeros, gamma, lam) * mask
    if normalize:
        a = episodes.by_task(adv)
        m = episodes.by_task(mask)
        count = m.sum(1, keepdim=True).clamp_min(1.0)
        mean = a.sum(1, keepdim=True) / count
        var = ((a - mean).square() * m).sum(1, keepdim=True) / count
        a = (a - mean) / (var.sqrt() + 1e-8) * m
        T, E = episodes.num_tasks, episodes.envs_per_task
        adv = a.reshape(T, H, E).transpose(0, 1).reshape(H, T * E)
    return adv
