"""Recurrent actor-critic policies for RL^2: a GRU policy and a memory-augmented policy.

Both map a trial observation (``[obs, previous action, previous reward, previous done]``, see
``meta_rl_envs.wrappers``) and a carried state to an action head (``head_size(action_space)``
numbers, read by :mod:`meta_rl.policies.distributions`) and a value. The state persists across
episode ends inside a trial; the caller resets it between trials (``initial_state`` or
``reset_state``).

- :class:`GRUPolicy` (Duan et al. 2016): a GRU over the trial, linear policy and value heads.
- :class:`MemoryPolicy`: a recurrent controller reading and writing an external LRUA memory
  (:class:`meta_rl.core.memory.MemoryCore`, MANN-style), linear heads on ``[h_t, reads_t]``.

Common protocol (``state`` is a tensor or a NamedTuple of tensors, batch first):

- ``initial_state(batch, device) -> state``
- ``step(obs [B, D], state) -> (head [B, H], value [B], state)``
- ``unroll(obs [T, B, D], state, starts [T, B] | None) -> (head [T, B, H], value [T, B], state)``;
  rows with ``starts[t]`` true restart from the initial state before step ``t``.
- ``reset_state(state, mask [B]) -> state``; ``index_state(state, idx) -> state``.
- ``log_std``: the learned log standard deviations for a Box action space (``None`` for Discrete).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor, nn

from meta_rl.core.memory import CoreState, MemoryCore
from meta_rl.policies import distributions as D

__all__ = ["GRUPolicy", "MemoryPolicy", "RecurrentPolicy", "index_state", "map_state"]


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor of a (nested NamedTuple) state."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple):
        items = [map_state(fn, s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    raise TypeError(f"a policy state is a tensor or a NamedTuple of tensors, got {type(state)!r}")


def index_state(state: Any, idx: Tensor) -> Any:
    """The rows ``idx`` of a batch-first state."""
    return map_state(lambda t: t[idx], state)


def _where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


class RecurrentPolicy(nn.Module):
    """Shared parts: action space, heads, ``log_std``, state helpers, input checks."""

    def __init__(self, obs_size: int, action_space: gym.Space, features: int, init_log_std: float):
        super().__init__()
        self.obs_size = _check_positive("obs_size", obs_size)
        D.check_space(action_space)
        self.action_space = action_space
        self.policy_head = nn.Linear(features, D.head_size(action_space))
        self.value_head = nn.Linear(features, 1)
        with torch.no_grad():  # small initial logits/means: a near-uniform first policy
            self.policy_head.weight.mul_(0.01)
            self.policy_head.bias.zero_()
            self.value_head.bias.zero_()
        if isinstance(action_space, gym.spaces.Box):
            self.log_std: nn.Parameter | None = nn.Parameter(
                torch.full(action_space.shape, float(init_log_std))
            )
        else:
            self.log_std = None

    def _check_obs(self, obs: Tensor, dims: int) -> None:
        if obs.dim() != dims or obs.shape[-1] != self.obs_size:
            want = "[T, batch, " if dims == 3 else "[batch, "
            raise ValueError(
                f"obs has shape {tuple(obs.shape)}; expected {want}obs_size={self.obs_size}]"
            )

    def _heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy_head(features), self.value_head(features).squeeze(-1)

    def reset_state(self, state: Any, mask: Tensor) -> Any:
        """Rows where ``mask`` [B] is true go back to the initial state."""
        batch = mask.shape[0]
        fresh = self.initial_state(batch, mask.device)
        keep = ~mask.to(torch.bool)
        return _map2(lambda a, b: _where_rows(keep, a, b), state, fresh)

    def initial_state(self, batch: int, device: str | torch.device | None = None) -> Any:
        raise NotImplementedError

    def act(
        self,
        obs: Tensor,
        state: Any,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Any]:
        """One step: ``(action, log_prob, value, new_state)``; samples with ``generator``."""
        head, value, state = self.step(obs, state)
        if deterministic:
            action = D.mode(self.action_space, head)
        else:
            action = D.sample(self.action_space, head, self.log_std, generator)
        return action, D.log_prob(self.action_space, head, self.log_std, action), value, state

    def step(self, obs: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        raise NotImplementedError


def _map2(fn: Callable[[Tensor, Tensor], Tensor], a: Any, b: Any) -> Any:
    if isinstance(a, Tensor):
        return fn(a, b)
    items = [_map2(fn, x, y) for x, y in zip(a, b, strict=True)]
    return type(a)(*items) if hasattr(a, "_fields") else tuple(items)


class GRUPolicy(RecurrentPolicy):
    """RL^2's policy (Duan et al. 2016): ``h_t = GRU(x_t, h_{t-1})``; logits/means and value are
    linear in ``h_t``. With ``embed > 0`` the input first goes through ``tanh(Linear(x))``.

    ``unroll`` without ``starts`` runs the whole sequence in one fused ``nn.GRU`` call."""

    def __init__(
        self,
        obs_size: int,
        action_space: gym.Space,
        hidden_size: int = 256,
        embed: int = 0,
        init_log_std: float = -0.5,
    ) -> None:
        super().__init__(obs_size, action_space, hidden_size, init_log_std)
        self.hidden_size = _check_positive("hidden_size", hidden_size)
        if not isinstance(embed, int) or embed < 0:
            raise ValueError(f"embed={embed!r} must be a non-negative integer (0: no embedding)")
        self.embed = nn.Sequential(nn.Linear(obs_size, embed), nn.Tanh()) if embed else None
        self.gru = nn.GRU(embed or obs_size, hidden_size)

    def initial_state(self, batch: int, device: str | torch.device | None = None) -> Tensor:
        device = self.value_head.weight.device if device is None else device
        return torch.zeros(batch, self.hidden_size, device=device)

    def _input(self, obs: Tensor) -> Tensor:
        return obs if self.embed is None else self.embed(obs)

    def step(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self._check_obs(obs, 2)
        out, h = self.gru(self._input(obs).unsqueeze(0), state.unsqueeze(0))
        head, value = self._heads(out[0])
        return head, value, h[0]

    def unroll(
        self, obs: Tensor, state: Tensor, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        self._check_obs(obs, 3)
        x = self._input(obs)
        if starts is None:
            out, h = self.gru(x, state.unsqueeze(0))
            head, value = self._heads(out)
            return head, value, h[0]
        outs = []
        for t in range(obs.shape[0]):
            state = self.reset_state(state, starts[t])
            out, h = self.gru(x[t : t + 1], state.unsqueeze(0))
            state = h[0]
            outs.append(out[0])
        head, value = self._heads(torch.stack(outs))
        return head, value, state


class MemoryPolicy(RecurrentPolicy):
    """A memory-augmented policy: a recurrent controller (GRU or LSTM) with an external LRUA
    memory (:class:`~meta_rl.core.memory.MemoryCore`: content-based reads, least-recently-used
    writes, Santoro et al. 2016); linear policy and value heads on ``[h_t, reads_t]``.

    The memory (``slots`` x ``width`` per row, ``heads`` read/write heads) is part of the state, so
    it persists across the episodes of a trial and resets between trials like the hidden state.
    """

    def __init__(
        self,
        obs_size: int,
        action_space: gym.Space,
        hidden_size: int = 128,
        slots: int = 32,
        width: int = 16,
        heads: int = 2,
        controller: str = "gru",
        init_log_std: float = -0.5,
    ) -> None:
        core = MemoryCore(
            obs_size,
            hidden_size,
            slots=slots,
            width=width,
            heads=heads,
            controller=controller,
            separate_values=True,
            interface_sees_input=True,
        )
        super().__init__(obs_size, action_space, core.output_size, init_log_std)
        self.core = core

    def initial_state(self, batch: int, device: str | torch.device | None = None) -> CoreState:
        return self.core.initial_state(batch, device)

    def step(self, obs: Tensor, state: CoreState) -> tuple[Tensor, Tensor, CoreState]:
        self._check_obs(obs, 2)
        out, state = self.core(obs, state)
        head, value = self._heads(out)
        return head, value, state

    def unroll(
        self, obs: Tensor, state: CoreState, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, CoreState]:
        self._check_obs(obs, 3)
        out, state = self.core.unroll(obs, state, starts)
        head, value = self._heads(out)
        return head, value, state
