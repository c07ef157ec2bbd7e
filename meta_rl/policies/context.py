"""Task inference from context and a latent-conditioned SAC actor-critic (PEARL's networks).

All modules act on any number of leading axes, so a meta-batch of tasks runs as one call on
tensors shaped ``[tasks, batch, ...]`` (no loop over tasks):

- :class:`ContextEncoder`: an MLP on one transition ``(s, a, r)`` (or ``(s, a, r, s')``) giving a
  Gaussian factor ``(mu_i, var_i)`` over the latent task variable ``z``;
- :func:`product_of_gaussians`: the posterior ``q(z | c)`` over a context, the normalised
  product of its factors (``var = 1 / sum(1 / var_i)``, each ``var_i`` clamped from below);
- :func:`gaussian_kl`: ``KL(N(mu, var) || N(0, I))`` per task;
- :class:`TanhGaussianActor`: ``[s, z] -> tanh(N(mean, std))`` with the log-probability of the
  squashed sample;
- :class:`PEARLNets`: the encoder, two Q networks, V and its target, and the actor;
- :class:`Belief`: a Gaussian belief over z (prior or posterior) and acting with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "Belief",
    "ContextEncoder",
    "PEARLNets",
    "TanhGaussianActor",
    "gaussian_kl",
    "mlp",
    "product_of_gaussians",
]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
MIN_VAR = 1e-7


def mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``; the last layer starts near zero
    (uniform +-3e-3, as rlkit's)."""
    sizes = [n_in] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        mods += [nn.Linear(a, b), nn.ReLU()]
    last = nn.Linear(sizes[-1], n_out)
    with torch.no_grad():
        last.weight.uniform_(-3e-3, 3e-3)
        last.bias.uniform_(-3e-3, 3e-3)
    return nn.Sequential(*mods, last)


def product_of_gaussians(
    mu: Tensor, var: Tensor, mask: Tensor | None = None, min_var: float = MIN_VAR
) -> tuple[Tensor, Tensor]:
    """The product of the Gaussian factors ``mu, var: [..., C, L]`` over the context axis ``C``
    (``mask [..., C]``: 1 for factors that count), normalised: ``(mean [..., L], var [..., L])``.
    A row without any factor gets the prior ``N(0, I)``."""
    prec = 1.0 / var.clamp_min(min_var)
    if mask is not None:
        prec = prec * mask.unsqueeze(-1).to(prec.dtype)
    total = prec.sum(-2)
    empty = total <= 0
    post_var = 1.0 / torch.where(empty, torch.ones_like(total), total)
    post_mu = post_var * (mu * prec).sum(-2)
    return (
        torch.where(empty, torch.zeros_like(post_mu), post_mu),
        torch.where(empty, torch.ones_like(post_var), post_var),
    )


def gaussian_kl(mu: Tensor, var: Tensor) -> Tensor:
    """``KL(N(mu, diag var) || N(0, I))`` summed over the last axis."""
    return 0.5 * (var + mu.square() - 1.0 - var.log()).sum(-1)


class ContextEncoder(nn.Module):
    """Transitions ``[..., C, D]`` -> Gaussian factors ``(mu, var)``, each ``[..., C, L]``."""

    def __init__(self, n_in: int, latent: int, hidden: int = 200, layers: int = 3) -> None:
        super().__init__()
        self.latent = latent
        self.net = mlp(n_in, hidden, layers, 2 * latent)

    def forward(self, context: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(context)
        return out[..., : self.latent], F.softplus(out[..., self.latent :])

    def posterior(self, context: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q(z | context)``: the product of the transitions' factors (see the module)."""
        mu, var = self(context)
        return product_of_gaussians(mu, var, mask)


class TanhGaussianActor(nn.Module):
    """``x -> a = tanh(u)``, ``u ~ N(mean(x), std(x))``; actions in ``[-1, 1]^A``."""

    def __init__(self, n_in: int, n_act: int, hidden: int, layers: int = 3) -> None:
        super().__init__()
        self.trunk = mlp(n_in, hidden, layers - 1, hidden)
        self.trunk.append(nn.ReLU())
        self.mean = mlp(hidden, hidden, 0, n_act)
        self.log_std = mlp(hidden, hidden, 0, n_act)

    def forward(
        self, x: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(action, log_prob, mean, log_std)``; ``noise`` (standard normals shaped like the
        action) gives a reparameterised sample, ``None`` the mode ``tanh(mean)``."""
        h = self.trunk(x)
        mean = self.mean(h)
        log_std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
        u = mean if noise is None else mean + log_std.exp() * noise
        action = torch.tanh(u)
        gauss = -0.5 * ((u - mean) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)
        logp = (gauss - torch.log(1.0 - action.square() + 1e-6)).sum(-1)
        return action, logp, mean, log_std


class PEARLNets(nn.Module):
    """PEARL's networks: context encoder, Q1, Q2, V, target V, actor (shared by all tasks)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        latent: int,
        hidden: int,
        encoder_hidden: int,
        use_next_obs: bool,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.latent = obs_dim, act_dim, latent
        self.context_dim = obs_dim + act_dim + 1 + (obs_dim if use_next_obs else 0)
        self.encoder = ContextEncoder(self.context_dim, latent, encoder_hidden)
        self.q1 = mlp(obs_dim + act_dim + latent, hidden, 3, 1)
        self.q2 = mlp(obs_dim + act_dim + latent, hidden, 3, 1)
        self.v = mlp(obs_dim + latent, hidden, 3, 1)
        self.v_target = mlp(obs_dim + latent, hidden, 3, 1)
        self.v_target.load_state_dict(self.v.state_dict())
        self.v_target.requires_grad_(False)
        self.actor = TanhGaussianActor(obs_dim + latent, act_dim, hidden)

    def act(self, obs: Tensor, z: Tensor, noise: Tensor | None = None) -> Tensor:
        """Actions in ``[-1, 1]`` for ``obs [..., O]`` and ``z [..., L]`` (mode if no noise)."""
        return self.actor(torch.cat([obs, z], -1), noise)[0]


@dataclass
class Belief:
    """A Gaussian belief over z and the env's action bounds: what a PEARL agent acts with."""

    mean: Tensor
    var: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def prior(cls, latent: int, space: gym.spaces.Box) -> Belief:
        low = torch.as_tensor(space.low, dtype=torch.float32)
        high = torch.as_tensor(space.high, dtype=torch.float32)
        return cls(torch.zeros(latent), torch.ones(latent), low, high)

    def posterior(self, mean: Tensor, var: Tensor) -> Belief:
        return replace(self, mean=mean.detach().clone(), var=var.detach().clone())

    def to(self, device: torch.device | str) -> Belief:
        return Belief(*(t.to(device) for t in (self.mean, self.var, self.low, self.high)))

    @torch.no_grad()
    def act(
        self,
        nets: PEARLNets,
        obs: Tensor,
        z: Any,
        episode_start: Any,
        generator: torch.Generator,
        deterministic: bool,
    ) -> tuple[Tensor, Tensor]:
        """Actions (in the env's bounds) for ``obs [B, O]`` and each row's z: ``z`` (a ``[B, L]``
        array) kept, drawn from the belief where it is None or ``episode_start`` is true."""
        B, dev = obs.shape[0], obs.device
        eps = torch.randn((B, self.mean.numel()), generator=generator, device=dev)
        fresh = self.mean + self.var.sqrt() * eps
        if z is None:
            z = fresh
        else:
            z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=dev)
            if episode_start is not None:
                starts = torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(B))
                z = torch.where(starts.to(dev)[:, None], fresh, z)
        noise = None
        if not deterministic:
            noise = torch.randn((B, self.low.numel()), generator=generator, device=dev)
        a = nets.act(obs.float(), z, noise)
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low), z
