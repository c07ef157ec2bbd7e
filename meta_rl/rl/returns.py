"""Returns, advantages and the linear feature baseline, batched over rows.

All tensors are time-major: ``[T, N, ...]`` for ``T`` steps of ``N`` rows (rows of one task are
contiguous: row ``r`` belongs to task ``r // envs_per_task``). Flags are booleans or 0/1 floats:

- ``terminated[t]``: the episode reached a terminal state at step ``t`` (no bootstrap from it).
- ``dones[t]``: the recursion is cut after step ``t`` (an episode or, for RL^2, a trial ended;
  a truncated step is done but not terminated, so it bootstraps from ``next_values[t]``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _f(x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


def discounted_returns(
    rewards: Tensor, dones: Tensor, gamma: float, bootstrap: Tensor | None = None
) -> Tensor:
    """``G_t = r_t + gamma * (1 - done_t) * G_{t+1}``, with ``G_T = bootstrap`` (default 0)."""
    keep = 1.0 - _f(dones, rewards)
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0]) if bootstrap is None else bootstrap.to(rewards)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * keep[t] * running
        out[t] = running
    return out


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> Tensor:
    """Generalized advantage estimation (Schulman et al. 2016).

    ``values[t] = V(s_t)``; ``next_values[t] = V(s_{t+1})`` of the true next state (the final
    observation where an episode ended). Returns the advantages; add ``values`` for the
    lambda-returns."""
    delta = rewards + gamma * (1.0 - _f(terminated, rewards)) * next_values - values
    carry = gamma * lam * (1.0 - _f(dones, rewards))
    adv = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = delta[t] + carry[t] * running
        adv[t] = running
    return adv


def linear_features(obs: Tensor, timestep: Tensor, horizon: float = 100.0) -> Tensor:
    """The MAML paper's baseline features: ``[o, o^2, s, s^2, s^3, 1]`` with ``s = t / horizon``
    and the observation clipped to [-10, 10]."""
    o = obs.clamp(-10.0, 10.0)
    s = (timestep.to(obs.dtype) / horizon).unsqueeze(-1)
    return torch.cat([o, o * o, s, s * s, s**3, torch.ones_like(s)], dim=-1)


def fit_linear_baseline(
    obs: Tensor,
    returns: Tensor,
    timestep: Tensor,
    num_tasks: int,
    mask: Tensor | None = None,
    reg: float = 1e-5,
    horizon: float = 100.0,
) -> Tensor:
    """Fit one ridge regression of ``returns`` on :func:`linear_features` per task (over all of
    that task's rows and steps where ``mask`` is set) and return its predictions ``[T, N]``.

    The ridge term grows tenfold (up to five times) while a task's solve is not finite, as in the
    MAML paper's implementation."""
    T, N = returns.shape
    if N % num_tasks:
        raise ValueError(f"{N} rows do not split evenly over num_tasks={num_tasks}")
    x = linear_features(obs.to(returns.dtype), timestep, horizon)  # [T, N, F]
    F = x.shape[-1]
    w = torch.ones_like(returns) if mask is None else _f(mask, returns)
    # [B, T * E, F] per task
    xb = x.reshape(T, num_tasks, -1, F).permute(1, 0, 2, 3).reshape(num_tasks, -1, F)
    yb = returns.reshape(T, num_tasks, -1).permute(1, 0, 2).reshape(num_tasks, -1)
    wb = w.reshape(T, num_tasks, -1).permute(1, 0, 2).reshape(num_tasks, -1)
    xtw = (xb * wb.unsqueeze(-1)).transpose(1, 2)  # [B, F, M]
    gram = xtw @ xb
    rhs = (xtw @ yb.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(F, dtype=gram.dtype, device=gram.device)

    def solve(reg: float) -> tuple[Tensor, Tensor]:  # (coef, which tasks' solves failed)
        coef, info = torch.linalg.solve_ex(gram + reg * eye, rhs)
        return coef, (info != 0) | ~torch.isfinite(coef).all(-1)

    coef, bad = solve(reg)
    for _ in range(5):  # rarely taken: a singular or blown-up solve (e.g. constant features)
        if not bad.any():
            break
        reg = max(reg, 1e-6) * 10.0
        retry, still_bad = solve(reg)
        coef = torch.where(bad.unsqueeze(-1), retry, coef)
        bad = bad & still_bad
    coef = torch.where(bad.unsqueeze(-1), torch.zeros_like(coef), coef)  # give up: no baseline
    pred = (xb @ coef.unsqueeze(-1)).squeeze(-1)  # [B, T * E]
    return pred.reshape(num_tasks, T, -1).permute(1, 0, 2).reshape(T, N)
