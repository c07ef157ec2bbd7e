"""TorchScript export of an agent's act function (``Agent.export``): a file that plain
``torch.jit.load`` runs without meta_rl, on observations of any real dtype (the env's numpy
observation through ``torch.as_tensor``; computed in float32).

- gradient agents: :class:`ExportedMLP`, ``policy(obs, deterministic=True, noise=None)``;
- memory agents: :class:`ExportedRecurrent`, ``policy(trial_obs, state, deterministic, noise)
  -> (action, state)`` with ``policy.initial_state(batch)`` (the warm memory after ``adapt``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ExportedMLP",
    "ExportedRecurrent",
    "flatten_state",
    "script_mlp",
    "script_recurrent",
    "unflatten_state",
]


def flatten_state(state: Any) -> list[Tensor]:
    """The tensors of a (nested, named-tuple) policy state, in order."""
    if isinstance(state, Tensor):
        return [state]
    return [t for s in state for t in flatten_state(s)]


def unflatten_state(template: Any, flat: list[Tensor]) -> Any:
    """``flat`` put back into the nesting of ``template`` (the inverse of flatten_state)."""
    it = iter(flat)

    def build(t: Any) -> Any:
        if isinstance(t, Tensor):
            return next(it)
        items = [build(s) for s in t]
        return type(t)(*items) if hasattr(t, "_fields") else tuple(items)

    return build(template)


def script_mlp(agent: Any) -> torch.jit.ScriptModule:
    """A gradient agent's (adapted) MLP policy as TorchScript."""
    return torch.jit.script(ExportedMLP(agent))


def script_recurrent(agent: Any) -> torch.jit.ScriptModule:
    """A memory agent's recurrent policy (and its warm memory) as TorchScript."""
    core = RecurrentCore(agent)
    example = (
        torch.zeros(2, agent.trial_observation_space.shape[0]),
        core.initial_state(2),
    )
    with warnings.catch_warnings():  # the trace fixes Python-side shape checks: intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(core.cpu(), example, check_trace=False)
    return torch.jit.script(ExportedRecurrent(agent, traced, core.initial_state(1)))


class ExportedMLP(nn.Module):
    """TorchScript act function of an MLP policy with fixed (adapted) params."""

    def __init__(self, agent: Any) -> None:
        super().__init__()
        params = {k: v.detach().cpu().clone() for k, v in agent.params.items()}
        net = copy.deepcopy(agent.policy.net).cpu()
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(params["net." + name])
        self.net = net.requires_grad_(False)
        space = agent.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.start = int(space.start) if self.discrete else 0
        dim = int(space.n) if self.discrete else int(space.shape[0])
        zeros = torch.zeros(dim)
        self.register_buffer("log_std", params["log_std"] if not self.discrete else zeros)
        if self.discrete:
            self.register_buffer("low", zeros)
            self.register_buffer("high", zeros)
        else:
            self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))

    @torch.jit.export
    def head(self, obs: Tensor) -> Tensor:
        """The action distribution's head (mean or logits) for ``obs``."""
        return self.net(obs.to(self.log_std.dtype))

    def forward(
        self,
        obs: Tensor,
        deterministic: bool = True,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Actions for ``obs`` [..., obs_dim] (a tensor of any real dtype, e.g.
        ``torch.as_tensor(env_obs)`` of a numpy observation; computed in float32): the mode, or a
        sample with ``noise`` (standard normals for Box, uniforms for Discrete; drawn with torch's
        default generator if None). Box actions are clipped to the action space bounds."""
        out = self.head(obs)
        if noise is not None:
            noise = noise.to(out.dtype)
        if self.discrete:
            if deterministic:
                return torch.argmax(out, dim=-1) + self.start
            if noise is None:
                noise = torch.rand_like(out)
            gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
            return torch.argmax(out + gumbel, dim=-1) + self.start
        if not deterministic:
            if noise is None:
                noise = torch.randn_like(out)
            out = out + torch.exp(self.log_std) * noise
        return torch.max(torch.min(out, self.high), self.low)


class RecurrentCore(nn.Module):
    """``(trial obs [B, D], packed state [B, S]) -> (head [B, H], packed state)``; the packed
    state is the policy's state tensors flattened per row, then the trial step count."""

    def __init__(self, agent: Any) -> None:
        super().__init__()
        self.policy = copy.deepcopy(agent.policy).cpu().requires_grad_(False)
        self.template = self.policy.initial_state(1, "cpu")
        self.shapes = [tuple(t.shape[1:]) for t in flatten_state(self.template)]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.time_feature = bool(agent.config.time_feature)
        self.scale = float(agent.max_trial_length)
        warm = agent._fresh_state(1) if agent.warm_state is not None else self.template
        flat = [t.detach().cpu().reshape(1, -1) for t in flatten_state(warm)]
        steps = torch.full((1, 1), float(agent.warm_steps))
        self.register_buffer("init", torch.cat([*flat, steps], dim=-1))

    def initial_state(self, batch: int) -> Tensor:
        return self.init.expand(batch, -1).clone()

    def forward(self, obs: Tensor, packed: Tensor) -> tuple[Tensor, Tensor]:
        parts, i = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            if size == 0:  # an empty state entry (e.g. no LSTM cell for a GRU controller)
                parts.append(packed.new_zeros((packed.shape[0], *shape)))
            else:
                parts.append(packed[:, i : i + size].reshape(-1, *shape))
            i += size
        steps = packed[:, i : i + 1]
        state = unflatten_state(self.template, parts)
        if self.time_feature:
            obs = torch.cat([obs, steps / self.scale], dim=-1)
        head, _, state = self.policy.step(obs, state)
        flat = [t.flatten(1) for t in flatten_state(state)]
        return head, torch.cat([*flat, steps + 1.0], dim=-1)


class ExportedRecurrent(nn.Module):
    """TorchScript act function of a recurrent RL^2 policy: ``forward(trial_obs, state,
    deterministic, noise) -> (action, state)``; ``initial_state(batch)`` is the (warm) memory."""

    def __init__(self, agent: Any, core: Any, init: Tensor) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("init", init.detach().cpu())
        space = agent.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.start = int(space.start) if self.discrete else 0
        log_std = agent.policy.log_std
        self.register_buffer(
            "log_std",
            log_std.detach().cpu().clone() if log_std is not None else torch.zeros(1),
        )

    @torch.jit.export
    def initial_state(self, batch: int) -> Tensor:
        """A fresh memory for ``batch`` rows (one packed tensor)."""
        return self.init.expand(batch, -1).clone()

    def forward(
        self,
        obs: Tensor,
        state: Tensor,
        deterministic: bool = True,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(action, next packed state)`` for a trial observation and the packed state."""
        dtype = self.init.dtype  # the env's numpy observation may come as float64
        head, state = self.core(obs.to(dtype), state.to(dtype))
        if noise is not None:
            noise = noise.to(dtype)
        if self.discrete:
            if deterministic:
                return torch.argmax(head, dim=-1) + self.start, state
            if noise is None:
                noise = torch.rand_like(head)
            gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
            return torch.argmax(head + gumbel, dim=-1) + self.start, state
        if deterministic:
            return head, state
        if noise is None:
            noise = torch.randn_like(head)
        return head + torch.exp(self.log_std) * noise, state
