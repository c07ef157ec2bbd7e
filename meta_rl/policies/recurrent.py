"""Recurrent actor-critic policies for RL^2: a GRU policy and a memory-augmented policy.

Both map a trial observation (``[obs, previous action, previous reward, previous done]``, see
``meta_rl_envs.wrappers``) and a carried state to an action head (``head_size(action_space)``
numbers, read by :mod:`meta_rl.policies.distributions`) and a value. The state persists across
episode ends inside a trial; the caller resets it between trials (``initial_state`` or
``reset_state``).

- :class:`GRUPolicy` (Duan et al. 2016): a GRU over the trial, linear policy and value heads.
- :class:`MemoryPolicy`: a recurrent controller reading and writing an external LRUA memory
  (:class:`meta_rl.core.memory.MemoryCore`, MANN-style), linear heads on ``[h_t, reads_t]``.
- :class:`NTMPolicy`: the same with a Neural Turing Machine memory
  (:class:`meta_rl.core.ntm.NTMCore`: content and location addressing, erase/add writes).
- :class:`EpisodicMemoryPolicy`: a GRU controller that appends one row per step to an external
  episodic memory and reads it by content (:func:`meta_rl.core.memory.episodic_read`); linear
  heads on ``[h_t, reads_t]``. A whole trial unrolls in one fused GRU call and one masked
  attention, so it trains about as fast as the GRU policy.

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
from typing import Any, NamedTuple

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meta_rl.core.memory import EpisodicState, MemoryCore, episodic_read, episodic_write
from meta_rl.core.ntm import NTMCore
from meta_rl.policies import distributions as D

__all__ = [
    "CorePolicy",
    "EpisodicMemoryPolicy",
    "EpisodicPolicyState",
    "GRUPolicy",
    "MemoryPolicy",
    "NTMPolicy",
    "RecurrentPolicy",
    "index_state",
    "map_state",
]


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

    def _set_action_reward(self, action_reward: tuple[int, int, int] | None) -> int:
        """Store the ``(action_start, action_end, reward_index)`` layout of the trial observation
        whose per-action reward products :meth:`_augment` appends; returns the input width."""
        self.action_reward = None
        if action_reward is None:
            return self.obs_size
        a0, a1, r = (int(v) for v in action_reward)
        if not (0 <= a0 < a1 <= self.obs_size and 0 <= r < self.obs_size):
            raise ValueError(
                f"action_reward={action_reward!r} must be (action_start, action_end, "
                f"reward_index) inside obs_size={self.obs_size}"
            )
        self.action_reward = (a0, a1, r)
        return self.obs_size + a1 - a0

    def _augment(self, obs: Tensor) -> Tensor:
        """``obs`` with ``previous action one-hot * previous reward`` appended (if configured)."""
        if self.action_reward is None:
            return obs
        a0, a1, r = self.action_reward
        return torch.cat([obs, obs[..., a0:a1] * obs[..., r : r + 1]], dim=-1)

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

    With ``separate_critic`` the value comes from a second GRU of the same size (its own
    ``h_t``), so the value loss does not shape the policy's features; the state is then the two
    hidden states side by side (``[B, 2 * hidden_size]``).

    ``action_reward=(action_start, action_end, reward_index)`` (discrete actions) appends the
    previous action's one-hot times the previous reward to the input: per-action rewards, a
    product the GRU otherwise has to learn to form with its gates.

    ``unroll`` without ``starts`` runs the whole sequence in one fused ``nn.GRU`` call."""

    def __init__(
        self,
        obs_size: int,
        action_space: gym.Space,
        hidden_size: int = 256,
        embed: int = 0,
        init_log_std: float = -0.5,
        separate_critic: bool = False,
        action_reward: tuple[int, int, int] | None = None,
    ) -> None:
        _check_positive("hidden_size", hidden_size)  # before a layer is built with it
        super().__init__(obs_size, action_space, hidden_size, init_log_std)
        self.hidden_size = hidden_size
        if not isinstance(embed, int) or embed < 0:
            raise ValueError(f"embed={embed!r} must be a non-negative integer (0: no embedding)")
        inputs = self._set_action_reward(action_reward)
        self.embed = nn.Sequential(nn.Linear(inputs, embed), nn.Tanh()) if embed else None
        self.gru = nn.GRU(embed or inputs, hidden_size)
        self.critic_gru = nn.GRU(inputs, hidden_size) if separate_critic else None
        self.state_size = hidden_size * (2 if separate_critic else 1)

    def initial_state(self, batch: int, device: str | torch.device | None = None) -> Tensor:
        device = self.value_head.weight.device if device is None else device
        return torch.zeros(batch, self.state_size, device=device)

    def _run(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Both cells over ``obs`` [T, B, D] from ``state``: (head, value, new state)."""
        h = self.hidden_size
        obs = self._augment(obs)
        x = obs if self.embed is None else self.embed(obs)
        out, last = self.gru(x, state[:, :h].unsqueeze(0).contiguous())
        if self.critic_gru is None:
            head, value = self._heads(out)
            return head, value, last[0]
        critic_out, critic_last = self.critic_gru(obs, state[:, h:].unsqueeze(0).contiguous())
        head = self.policy_head(out)
        value = self.value_head(critic_out).squeeze(-1)
        return head, value, torch.cat([last[0], critic_last[0]], dim=-1)

    def step(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self._check_obs(obs, 2)
        head, value, state = self._run(obs.unsqueeze(0), state)
        return head[0], value[0], state

    def unroll(
        self, obs: Tensor, state: Tensor, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        self._check_obs(obs, 3)
        if starts is None:
            return self._run(obs, state)
        heads, values = [], []
        for t in range(obs.shape[0]):
            state = self.reset_state(state, starts[t])
            head, value, state = self._run(obs[t : t + 1], state)
            heads.append(head[0])
            values.append(value[0])
        return torch.stack(heads), torch.stack(values), state


class CorePolicy(RecurrentPolicy):
    """A policy around a recurrent memory cell ``core`` (``initial_state(batch, device)``,
    ``core(x [B, D], state) -> (out, state)``, ``core.unroll(xs, state, starts)``, output size
    ``core.output_size``): linear policy and value heads on the cell's output."""

    core: nn.Module

    def __init__(
        self, obs_size: int, action_space: gym.Space, core: nn.Module, init_log_std: float
    ) -> None:
        super().__init__(obs_size, action_space, core.output_size, init_log_std)
        self.core = core

    def initial_state(self, batch: int, device: str | torch.device | None = None) -> Any:
        return self.core.initial_state(batch, device)

    def step(self, obs: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        self._check_obs(obs, 2)
        out, state = self.core(obs, state)
        head, value = self._heads(out)
        return head, value, state

    def unroll(
        self, obs: Tensor, state: Any, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Any]:
        self._check_obs(obs, 3)
        out, state = self.core.unroll(obs, state, starts)
        head, value = self._heads(out)
        return head, value, state


class MemoryPolicy(CorePolicy):
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
        super().__init__(obs_size, action_space, core, init_log_std)


class NTMPolicy(CorePolicy):
    """A policy with a Neural Turing Machine memory (:class:`~meta_rl.core.ntm.NTMCore`, Graves
    et al. 2014: content and location addressing, erase/add writes; a GRU or LSTM controller
    fed its last reads): linear policy and value heads on ``[h_t, reads_t]``.

    ``read_heads`` read heads and ``write_heads`` write heads on ``slots`` x ``width`` memory
    per row; the memory, the heads' weightings and the controller state are the policy state:
    they persist across the episodes of a trial and start from the learned initial state of
    the core at every trial.
    """

    def __init__(
        self,
        obs_size: int,
        action_space: gym.Space,
        hidden_size: int = 128,
        slots: int = 32,
        width: int = 16,
        read_heads: int = 1,
        write_heads: int = 1,
        controller: str = "gru",
        init_log_std: float = -0.5,
    ) -> None:
        core = NTMCore(
            obs_size,
            hidden_size,
            slots=slots,
            width=width,
            read_heads=read_heads,
            write_heads=write_heads,
            controller=controller,
        )
        super().__init__(obs_size, action_space, core, init_log_std)


class EpisodicPolicyState(NamedTuple):
    """State of :class:`EpisodicMemoryPolicy`: controller hidden ``h`` [B, hidden], the last
    (augmented) input ``x`` [B, inputs] and the episodic memory (``keys`` [B, heads, slots,
    width], ``values`` likewise, ``count`` [B])."""

    h: Tensor
    x: Tensor
    keys: Tensor
    values: Tensor
    count: Tensor


class EpisodicMemoryPolicy(RecurrentPolicy):
    """A GRU controller with an external episodic memory (in the spirit of Ritter et al. 2018,
    "Been There, Done That: Meta-Learning with Episodic Recall").

    Each step ``t`` the controller computes ``h_t = GRU(x_t, h_{t-1})``; from ``[h_t, x_t]`` a
    linear interface emits, per head, a key and a value, appended as one memory row, and a
    query; each head reads ``softmax(<q_t, k_s> / sqrt(width))``-weighted values over the rows
    written so far in the trial (this step's included). Policy and value are linear in
    ``[h_t, reads_t]``. The memory holds ``slots`` rows; a longer trial overwrites its oldest.

    With ``transition_keys`` a row's key comes from the previous step's ``[h_{t-1}, x_{t-1}]``
    (same interface weights) and its value from ``[h_t, x_t]``: a row then stores a transition
    (where the last action was taken -> its action, reward and outcome), and a query from the
    current step retrieves what happened in similar situations before.

    The controller does not see the reads, so ``unroll`` of a fresh state over at most
    ``slots`` steps (without ``starts``) runs in one fused ``nn.GRU`` call plus one causal
    attention; otherwise it steps."""

    def __init__(
        self,
        obs_size: int,
        action_space: gym.Space,
        hidden_size: int = 128,
        slots: int = 128,
        width: int = 16,
        heads: int = 2,
        init_log_std: float = -0.5,
        action_reward: tuple[int, int, int] | None = None,
        transition_keys: bool = False,
    ) -> None:
        for name, v in (("hidden_size", hidden_size), ("slots", slots), ("width", width)):
            _check_positive(name, v)
        _check_positive("heads", heads)
        super().__init__(obs_size, action_space, hidden_size + heads * width, init_log_std)
        self.hidden_size, self.slots, self.width, self.heads = hidden_size, slots, width, heads
        inputs = self._set_action_reward(action_reward)
        self.inputs, self.transition_keys = inputs, bool(transition_keys)
        self.gru = nn.GRU(inputs, hidden_size)
        self.interface = nn.Linear(hidden_size + inputs, 3 * heads * width)

    def initial_state(
        self, batch: int, device: str | torch.device | None = None
    ) -> EpisodicPolicyState:
        device = self.value_head.weight.device if device is None else device
        mem = torch.zeros(batch, self.heads, self.slots, self.width, device=device)
        return EpisodicPolicyState(
            torch.zeros(batch, self.hidden_size, device=device),
            torch.zeros(batch, self.inputs, device=device),
            mem,
            mem.clone(),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    def _interface(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values, queries ``[..., heads, width]`` from ``h`` and ``x`` ``[..., *]``."""
        out = self.interface(torch.cat([h, x], dim=-1))
        k, v, q = out.view(*out.shape[:-1], 3, self.heads, self.width).unbind(-3)
        return k, v, q

    def _output(self, h: Tensor, reads: Tensor) -> tuple[Tensor, Tensor]:
        return self._heads(torch.cat([h, reads.flatten(-2)], dim=-1))

    def step(
        self, obs: Tensor, state: EpisodicPolicyState
    ) -> tuple[Tensor, Tensor, EpisodicPolicyState]:
        self._check_obs(obs, 2)
        obs = self._augment(obs)
        _, h = self.gru(obs.unsqueeze(0), state.h.unsqueeze(0).contiguous())
        h = h[0]
        k, v, q = self._interface(h, obs)
        if self.transition_keys:
            k = self._interface(state.h, state.x)[0]
        mem = episodic_write(EpisodicState(state.keys, state.values, state.count), k, v)
        valid = (
            torch.arange(self.slots, device=obs.device) < mem.count.clamp(max=self.slots)[:, None]
        )
        reads = episodic_read(q.unsqueeze(2), mem.keys, mem.values, valid.unsqueeze(1))[:, :, 0]
        head, value = self._output(h, reads)
        return head, value, EpisodicPolicyState(h, obs, mem.keys, mem.values, mem.count)

    def unroll(
        self, obs: Tensor, state: EpisodicPolicyState, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, EpisodicPolicyState]:
        self._check_obs(obs, 3)
        steps, batch = obs.shape[:2]
        if starts is None and steps <= self.slots and not bool(state.count.any()):
            obs = self._augment(obs)
            out, h = self.gru(obs, state.h.unsqueeze(0).contiguous())  # [T, B, hidden]
            k, v, q = self._interface(out, obs)
            if self.transition_keys:
                prev_h = torch.cat([state.h.unsqueeze(0), out[:-1]])
                prev_x = torch.cat([state.x.unsqueeze(0), obs[:-1]])
                k = self._interface(prev_h, prev_x)[0]
            k, v, q = (t.permute(1, 2, 0, 3) for t in (k, v, q))  # [B, H, T, W]
            causal = torch.ones(steps, steps, dtype=torch.bool, device=obs.device).tril()
            reads = episodic_read(q, k, v, causal.expand(batch, steps, steps))
            head, value = self._output(out, reads.permute(2, 0, 1, 3))
            pad = (0, 0, 0, self.slots - steps)
            final = EpisodicPolicyState(
                h[0], obs[-1], F.pad(k, pad), F.pad(v, pad), torch.full_like(state.count, steps)
            )
            return head, value, final
        heads, values = [], []
        for t in range(steps):
            if starts is not None:
                state = self.reset_state(state, starts[t])
            head, value, state = self.step(obs[t], state)
            heads.append(head)
            values.append(value)
        return torch.stack(heads), torch.stack(values), state
