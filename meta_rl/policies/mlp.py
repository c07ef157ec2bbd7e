"""MLP policies that run with an explicit parameter dict (one per task, stacked).

``GaussianMLPPolicy`` (Box actions: the MLP gives the means, a learned state-independent
``log_std`` vector the spreads) and ``CategoricalMLPPolicy`` (Discrete actions: the MLP gives
the logits). Both are a ``nn.Sequential`` of ``Linear`` layers and an elementwise activation
under the attribute ``net``, so :func:`meta_rl.core.batched_call` runs task ``t``'s parameters
on task ``t``'s observations as batched matrix products (vmap semantics, no Python loop).

The functional API is :meth:`MLPPolicy.head`: ``head(params, obs) -> (head_out, log_std)``
with ``params`` a dict named like ``named_parameters()`` (entries stacked ``[T, ...]`` or shared)
and ``obs`` ``[T, N, obs_dim]`` (or ``[N, obs_dim]`` with unstacked params). Feed the result to
:mod:`meta_rl.policies.distributions`. ``forward(obs)`` gives a ``torch.distributions``
object built from the module's own parameters, for plain (non-meta) use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn

from meta_rl.core import Params, batched_call, get_params
from meta_rl.policies import distributions as D

__all__ = ["MLPPolicy", "GaussianMLPPolicy", "CategoricalMLPPolicy", "make_mlp_policy"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _obs_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0])
    if isinstance(space, gym.spaces.Discrete):
        raise ValueError(
            f"observation space {space!r}: one-hot encode Discrete observations first "
            "(MLP policies take a 1-D Box)"
        )
    raise ValueError(f"observation space {space!r} is not supported; an MLP policy takes a 1-D Box")


class MLPPolicy(nn.Module):
    """Base of the MLP policies: ``net`` maps observations to the distribution head."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (100, 100),
        activation: str = "tanh",
        init_log_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        D.check_space(action_space)
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is not allowed; choose from {list(_ACTIVATIONS)}"
            )
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden={tuple(hidden)} must hold positive layer widths")
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_dim = _obs_dim(observation_space)
        self.head_size = D.head_size(action_space)
        sizes = [self.obs_dim, *(int(h) for h in hidden), self.head_size]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # skip_init: no draw from the global RNG; weights come from `generator` below
            layer = torch.nn.utils.skip_init(nn.Linear, n_in, n_out)
            bound = math.sqrt(6.0 / (n_in + n_out))  # Glorot uniform
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                if i == len(sizes) - 2:
                    layer.weight.mul_(0.1)  # a small last layer: near-uniform initial actions
                layer.bias.zero_()
            layers.append(layer)
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.continuous = not isinstance(action_space, gym.spaces.Discrete)
        if self.continuous:
            self.log_std = nn.Parameter(torch.full((self.head_size,), float(init_log_std)))

    # -- functional API ------------------------------------------------------------------
    def params(self, detach: bool = False) -> Params:
        """The module's parameters by name (the meta-parameters)."""
        return get_params(self, detach=detach)

    def head(self, params: Mapping[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(head_out, log_std)`` of ``obs`` under ``params`` (see the module docstring).

        ``log_std`` broadcasts against ``head_out`` (``[T, 1, d]`` when stacked)."""
        single = obs.dim() == 2
        x = obs.unsqueeze(0) if single else obs
        net = {k[4:]: v for k, v in params.items() if k.startswith("net.")}
        out = batched_call(self.net, net, x)
        log_std = None
        if self.continuous:
            log_std = params["log_std"]
            if log_std.dim() == 2:  # stacked [T, d]
                log_std = log_std.unsqueeze(1)
        if single:
            out = out.squeeze(0)
            if log_std is not None and log_std.dim() == 3:
                log_std = log_std.squeeze(0)
        return out, log_std

    def log_prob(self, params: Mapping[str, Tensor], obs: Tensor, action: Tensor) -> Tensor:
        out, log_std = self.head(params, obs)
        return D.log_prob(self.action_space, out, log_std, action)

    def sample(
        self, params: Mapping[str, Tensor], obs: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        out, log_std = self.head(params, obs)
        return D.sample(self.action_space, out, log_std, generator)

    # -- module API ----------------------------------------------------------------------
    def forward(self, obs: Tensor) -> torch.distributions.Distribution:
        """The action distribution under the module's own parameters."""
        out = self.net(obs)
        if self.continuous:
            return torch.distributions.Independent(
                torch.distributions.Normal(out, self.log_std.exp().expand_as(out)), 1
            )
        return torch.distributions.Categorical(logits=out)


class GaussianMLPPolicy(MLPPolicy):
    """Diagonal Gaussian over a 1-D Box action space (MAML's locomotion / navigation policy)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, **kw) -> None:
        if not isinstance(action_space, gym.spaces.Box):
            raise ValueError(f"GaussianMLPPolicy needs a Box action space, got {action_space!r}")
        super().__init__(observation_space, action_space, **kw)


class CategoricalMLPPolicy(MLPPolicy):
    """Categorical over a Discrete action space."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, **kw) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(
                f"CategoricalMLPPolicy needs a Discrete action space, got {action_space!r}"
            )
        super().__init__(observation_space, action_space, **kw)


def make_mlp_policy(observation_space: gym.Space, action_space: gym.Space, **kw) -> MLPPolicy:
    """The Gaussian or categorical MLP policy that fits ``action_space``."""
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalMLPPolicy(observation_space, action_space, **kw)
    return GaussianMLPPolicy(observation_space, action_space, **kw)
