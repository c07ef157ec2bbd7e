"""PPO pieces: the clipped surrogate (pure, vmap-friendly) and the loss over a minibatch.

`clipped_surrogate` is shared with MAML-PPO (ProMP-style); it touches no module state, so it can
run under `torch.func.vmap` / `grad`. The rest of the file builds the full PPO loss (policy +
value + entropy) used by the RL^2 trainer (`meta_rl.rl.rl2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PPOLossInfo", "clipped_surrogate", "normalize_advantages", "ppo_loss", "value_loss"]


def clipped_surrogate(
    logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip: float
) -> Tensor:
    """PPO's clipped surrogate loss (to minimise), averaged over all elements.

    loss = -mean(min(r * A, clip(r, 1 - clip, 1 + clip) * A)), r = exp(logp_new - logp_old).
    `logp_old` and `advantages` are treated as constants (detached). Pure: safe under vmap/grad.
    """
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages.detach()
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
    return -torch.minimum(unclipped, clipped).mean()


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero-mean, unit-std advantages (over all elements)."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def value_loss(
    values: Tensor, values_old: Tensor, returns: Tensor, clip: float | None = None
) -> Tensor:
    """0.5 * mean squared error to the returns; with `clip`, PPO's clipped value loss."""
    if clip is None:
        return 0.5 * (values - returns.detach()).pow(2).mean()
    v_clipped = values_old.detach() + torch.clamp(values - values_old.detach(), -clip, clip)
    loss = torch.maximum((values - returns.detach()).pow(2), (v_clipped - returns.detach()).pow(2))
    return 0.5 * loss.mean()


@dataclass
class PPOLossInfo:
    """Diagnostics of one PPO loss evaluation (plain floats)."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float


def ppo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    values: Tensor,
    values_old: Tensor,
    returns: Tensor,
    entropy: Tensor,
    clip: float,
    vf_coef: float,
    ent_coef: float,
    vf_clip: float | None = None,
) -> tuple[Tensor, PPOLossInfo]:
    """Total PPO loss = surrogate + vf_coef * value loss - ent_coef * entropy, plus diagnostics."""
    pg = clipped_surrogate(logp_new, logp_old, advantages, clip)
    vl = value_loss(values, values_old, returns, vf_clip)
    ent = entropy.mean()
    loss = pg + vf_coef * vl - ent_coef * ent
    with torch.no_grad():
        log_ratio = logp_new - logp_old
        approx_kl = ((log_ratio.exp() - 1.0) - log_ratio).mean()
        clip_frac = ((log_ratio.exp() - 1.0).abs() > clip).float().mean()
    info = PPOLossInfo(
        policy_loss=float(pg.detach()),
        value_loss=float(vl.detach()),
        entropy=float(ent.detach()),
        approx_kl=float(approx_kl),
        clip_fraction=float(clip_frac),
    )
    return loss, info
