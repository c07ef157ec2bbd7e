"""Sampling episodes for many tasks at once, each task with its own (adapted) policy params.

The env is either a torch-batched family (:func:`meta_rl_envs.make_batched`) or a Gymnasium
vector env of the scalar family with one sub-env per row (:class:`VectorTaskEnv`, for families
without a batched version). Both have ``num_tasks x envs_per_task`` rows, row ``r`` running task
``r // envs_per_task``, and the same ``set_tasks`` / ``reset`` / ``step`` contract (same-step
autoreset, ``info["final_obs"]``); :func:`make_env` picks one.

:func:`sample_episodes` runs ONE episode per row (at most ``horizon`` steps): the policy's
forward for all tasks is one batched call with stacked per-task params, the env steps all rows
at once, and steps after a row's first episode ended are masked out. Data is time-major
``[H, N, ...]``; :meth:`Episodes.by_task` regroups it ``[T, H * E, ...]`` for per-task losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from meta_rl.collectives import Shard
from meta_rl.policies import distributions as D
from meta_rl.policies.mlp import MLPPolicy
from meta_rl.rl.returns import discounted_returns, fit_linear_baseline, gae

__all__ = [
    "Episodes",
    "VectorTaskEnv",
    "make_env",
    "shard_env",
    "sample_episodes",
    "compute_advantages",
]


# --------------------------------------------------------------------------------------------
# Gymnasium vector env with one task per row (for families without a batched version)
# --------------------------------------------------------------------------------------------
class VectorTaskEnv:
    """A ``gymnasium.vector.SyncVectorEnv`` of ``num_tasks * envs_per_task`` scalar family envs
    behind the batched-env contract (torch tensors in and out, same-step autoreset)."""

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        **env_kwargs: Any,
    ) -> None:
        from meta_rl_envs.batched import resolve_device

        for name, v in (("num_tasks", num_tasks), ("envs_per_task", envs_per_task)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        self.num_tasks = int(num_tasks)
        self.envs_per_task = int(envs_per_task)
        self.num_envs = self.num_tasks * self.envs_per_task
        self.device = resolve_device(device)
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(env_id, **env_kwargs) for _ in range(self.num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        first = self.envs.envs[0]
        self.family = first.unwrapped
        if not hasattr(self.family, "set_task"):
            raise ValueError(f"env {env_id!r} is not a task family (no set_task)")
        self.task_space = self.family.task_space
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space
        horizon = getattr(self.family, "horizon", None) or (
            first.spec and first.spec.max_episode_steps
        )
        if not horizon:
            raise ValueError(f"env {env_id!r} has no horizon (family.horizon or a TimeLimit)")
        self.horizon = int(horizon)
        self.tasks: list[Any] = []
        self._seed_rng = np.random.default_rng(0)

    def sample_tasks(self, n: int, rng: Any, split: str = "train") -> list[Any]:
        return self.task_space.sample(n, rng, split)

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        if len(tasks) != self.num_tasks:
            raise ValueError(
                f"set_tasks got {len(tasks)} tasks; this env has num_tasks={self.num_tasks}"
            )
        self.tasks = [self.task_space.validate(t) for t in tasks]
        for i, env in enumerate(self.envs.envs):
            env.unwrapped.set_task(self.tasks[i // self.envs_per_task])

    row_window: tuple[int, int] | None = None
    """``(first_row, total_rows)`` of a data-parallel shard: row ``i`` is reset with seed
    ``seed + first_row + i``, as in the whole ``total_rows``-row env"""

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        if not self.tasks:
            raise ValueError("call set_tasks(tasks) before reset()")
        if seed is not None and self.row_window is not None:
            seed = [seed + self.row_window[0] + i for i in range(self.num_envs)]
        obs, info = self.envs.reset(seed=seed)
        return self._tensor(obs), info

    def _tensor(self, x: np.ndarray) -> Tensor:
        t = torch.as_tensor(np.asarray(x), device=self.device)
        return t.float() if t.is_floating_point() else t

    def step(self, action: Tensor):
        """Batched-env step; ``info`` holds ``final_obs`` and, when the envs report one,
        ``success`` (``[N]`` bool: ``info["success"]`` was true at this step)."""
        obs, reward, terminated, truncated, info = self.envs.step(action.cpu().numpy())
        final = np.array(obs, copy=True)
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = info["final_obs"][i]
        out = {"final_obs": self._tensor(final)}
        success = info_success(info)
        if success is not None:
            out["success"] = torch.as_tensor(success, device=self.device)
        return (
            self._tensor(obs),
            self._tensor(reward).float(),
            torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device),
            out,
        )

    def close(self) -> None:
        self.envs.close()


def info_success(info: dict[str, Any]) -> np.ndarray | None:
    """Per-row ``info["success"]`` of a Gymnasium vector env's step as a bool array (a row
    whose env did not report it counts as False), including the ``final_info`` of rows reset in
    the same step; ``None`` when no row reported it."""
    hit, seen = None, False
    for part in (info, info.get("final_info")):
        if not isinstance(part, dict) or "success" not in part:
            continue
        values = np.asarray(part["success"], dtype=np.float64) > 0
        values &= np.asarray(part.get("_success", np.ones_like(values)), dtype=bool)
        hit, seen = (values if hit is None else hit | values), True
    return hit if seen else None


def make_env(
    env_id: str,
    num_tasks: int,
    envs_per_task: int = 1,
    device: str = "cpu",
    backend: str = "auto",
    **env_kwargs: Any,
):
    """A ``num_tasks x envs_per_task`` env: ``backend`` "batched" (torch), "vector" (Gymnasium
    ``SyncVectorEnv`` of the scalar family) or "auto" (batched when the family has one)."""
    from meta_rl_envs.registry import FAMILIES, check_id, make_batched

    if backend not in ("auto", "batched", "vector"):
        raise ValueError(
            f"backend={backend!r} is not allowed; choose 'auto', 'batched' or 'vector'"
        )
    check_id(env_id)
    has_batched = env_id in FAMILIES and FAMILIES[env_id].batched is not None
    if backend == "batched" or (backend == "auto" and has_batched):
        return make_batched(env_id, num_tasks, envs_per_task, device=device, **env_kwargs)
    return VectorTaskEnv(env_id, num_tasks, envs_per_task, device=device, **env_kwargs)


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


def shard_env(env: Any, shard: Shard) -> Any:
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
        "the meta-batch needs one (a meta_rl_envs BatchedEnv or meta_rl.rl.rollout.VectorTaskEnv)"
    )


@torch.no_grad()
def sample_episodes(
    env: Any,
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
