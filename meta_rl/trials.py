"""One trial of a memory (RL^2) agent on every row of a batched trial env, recording the return
of each inner episode (:func:`trial_episode_returns`; used by :class:`meta_rl.agent.MemoryAgent`
and ``meta-rl evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from meta_rl_envs.wrappers import BatchedTrialEnv
from torch import Tensor

__all__ = ["TrialResult", "trial_episode_returns"]


@dataclass
class TrialResult:
    returns: Tensor
    """[episodes, N] return of each inner episode of each row's trial"""
    lengths: Tensor
    """[episodes, N] env steps of each inner episode"""
    state: Any
    """the policy state after the trial"""
    last_action: Tensor
    last_reward: Tensor
    steps: Tensor
    """[N] steps each row took"""
    success: Tensor | None = None
    """[episodes, N] whether the env reported ``info["success"]`` during each inner episode
    (``None``: the env reports no success)"""


@torch.no_grad()
def trial_episode_returns(
    policy: Any,
    env: BatchedTrialEnv,
    generator: torch.Generator | None,
    deterministic: bool = False,
    time_feature: bool = False,
    time_scale: int | None = None,
    state: Any = None,
    start_step: int = 0,
) -> TrialResult:
    """One trial on every row of a :class:`~meta_rl_envs.wrappers.BatchedTrialEnv` (tasks set),
    from ``state`` (default: a fresh one), recording the return of every inner episode.

    ``time_feature`` appends ``t / time_scale`` to the observation as RL^2 training does
    (``time_scale``: the trained trial length, default the env's ``max_trial_length``)."""
    obs, _ = env.reset()
    n, episodes = env.num_envs, env.episodes_per_trial
    if state is None:
        state = policy.initial_state(n, env.device)
    scale = float(time_scale or env.max_trial_length)
    returns = torch.zeros(episodes, n, device=env.device)
    lengths = torch.zeros(episodes, n, device=env.device)
    index = torch.zeros(n, dtype=torch.long, device=env.device)
    steps = torch.zeros(n, dtype=torch.long, device=env.device)
    rows = torch.arange(n, device=env.device)
    action = reward = success = None
    for t in range(env.max_trial_length):
        x = obs
        if time_feature:
            x = torch.cat([obs, torch.full_like(obs[:, :1], (start_step + t) / scale)], dim=-1)
        action, _, _, state_new = policy.act(x, state, generator, deterministic)
        obs, reward, _, _, info = env.step(action)
        active = info["active"]
        # rows past their trial keep their state (they idle until the next reset)
        state = _select_state(active, state_new, state)
        ep = index.clamp(max=episodes - 1)
        returns[ep, rows] += reward * active
        lengths[ep, rows] += active.float()
        if "success" in info:
            if success is None:
                success = torch.zeros(episodes, n, dtype=torch.bool, device=env.device)
            success[ep, rows] |= info["success"] & active
        steps += active.long()
        index = index + info["episode_done"].long()
        if not bool(info["active"].any()) and t % 16 == 15:
            break
    return TrialResult(returns, lengths, state, action, reward, steps, success)


def _select_state(mask: Tensor, new: Any, old: Any) -> Any:
    if isinstance(new, Tensor):
        return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)
    items = [_select_state(mask, a, b) for a, b in zip(new, old, strict=True)]
    return type(new)(*items) if hasattr(new, "_fields") else tuple(items)
