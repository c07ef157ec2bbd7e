"""External read/write memory in the style of memory-augmented neural networks (MANN).

Santoro et al. 2016, "Meta-Learning with Memory-Augmented Neural Networks": a memory matrix
``M`` of ``slots`` rows of ``width`` numbers per batch row, read by content and written by
*least recently used access* (LRUA).

- **Read** (per head ``i``): cosine similarity between the key ``k_i`` and every row of
  ``M``, scaled by a key strength ``beta_i > 0``, softmax over slots -> read weights
  ``w^r_i``; the read vector is ``r_i = sum_s w^r_i(s) M(s)``.
- **Write** (per head ``i``): ``w^w_i = sigmoid(alpha_i) w^r_i(t-1) + (1 - sigmoid(alpha_i))
  w^lu_i(t-1)``: a learned gate chooses between the slot the head read last step (update a
  memory) and a least-used slot (store something new). Before writing, the least-used slots
  are erased; then ``M(s) += sum_i w^w_i(s) a_i``.
- **Usage**: ``u_t = gamma u_{t-1} + sum_i w^r_i(t) + sum_i w^w_i(t)``; head ``i``'s
  least-used weight ``w^lu_i`` is the one-hot of the ``i``-th smallest usage (ties broken by
  slot index, so it is deterministic), so ``heads`` heads get ``heads`` distinct fresh slots.

Everything is functional: a :class:`MemoryState` goes in, a new one comes out, nothing is
mutated, so the state can be carried through time, detached, masked at episode starts and
batched on any device. :class:`MemoryCore` wraps an LSTM/GRU controller and the memory heads
into one recurrent cell (``x_t, state -> output, new state``) that the few-shot MANN and an
RL^2 memory policy both use.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CoreState",
    "EpisodicState",
    "MemoryCore",
    "MemoryState",
    "address",
    "episodic_read",
    "episodic_write",
    "init_state",
    "least_used",
    "read",
    "reset_rows",
    "step",
    "write",
    "write_weights",
]

_EPS = 1e-8


class MemoryState(NamedTuple):
    """The memory of a batch. All tensors share the leading batch dimension ``B``.

    ``memory`` [B, slots, width]; ``usage`` [B, slots]; ``read_weights`` [B, heads, slots]
    (the heads' last read weights); ``least_used`` [B, heads, slots] (one-hot per head, from
    the last usage).
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    least_used: Tensor

    @property
    def heads(self) -> int:
        """Number of read heads."""
        return self.read_weights.shape[1]

    def detach(self) -> MemoryState:
        """The state with every tensor detached (truncated backpropagation)."""
        return MemoryState(*(t.detach() for t in self))


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def least_used(usage: Tensor, heads: int) -> Tensor:
    """One-hot weights [B, heads, slots] of the ``heads`` least-used slots (head ``i`` gets the
    ``i``-th smallest usage; ties go to the lower slot index)."""
    slots = usage.shape[-1]
    if heads > slots:
        raise ValueError(f"heads={heads} must be <= slots={slots}")
    order = torch.sort(usage.detach(), dim=-1, stable=True).indices[..., :heads, None]
    one_hot = torch.zeros(*usage.shape[:-1], heads, slots, device=usage.device, dtype=usage.dtype)
    return one_hot.scatter_(-1, order, 1.0)


def init_state(
    batch: int,
    slots: int = 128,
    width: int = 40,
    heads: int = 1,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fill: float = 1e-6,
) -> MemoryState:
    """An empty memory: every slot holds the constant ``fill`` (so cosine similarity is defined),
    nothing used or read yet."""
    for name, v in (("batch", batch), ("slots", slots), ("width", width), ("heads", heads)):
        _check_positive(name, v)
    if heads > slots:
        raise ValueError(f"heads={heads} must be <= slots={slots}")
    memory = torch.full((batch, slots, width), fill, device=device, dtype=dtype)
    usage = torch.zeros(batch, slots, device=device, dtype=dtype)
    read_weights = torch.zeros(batch, heads, slots, device=device, dtype=dtype)
    return MemoryState(memory, usage, read_weights, least_used(usage, heads))


def _check_keys(state: MemoryState, keys: Tensor, name: str = "keys") -> None:
    b, _, w = state.memory.shape
    if keys.dim() != 3 or keys.shape[0] != b or keys.shape[2] != w:
        raise ValueError(
            f"{name} has shape {tuple(keys.shape)}; expected [batch={b}, heads, width={w}]"
        )
    if keys.shape[1] != state.heads:
        raise ValueError(f"{name} has {keys.shape[1]} heads; the memory state has {state.heads}")


def address(memory: Tensor, keys: Tensor, strength: Tensor | float = 1.0) -> Tensor:
    """Content addressing: softmax over slots of ``strength * cosine(key, M(s))``.

    ``memory`` [B, S, W], ``keys`` [B, H, W], ``strength`` [B, H] (or a float) -> [B, H, S].
    """
    sim = keys @ memory.transpose(-1, -2)
    norm = keys.norm(dim=-1).unsqueeze(-1) * memory.norm(dim=-1).unsqueeze(-2)
    cos = sim / (norm + _EPS)
    if isinstance(strength, Tensor):
        strength = strength.unsqueeze(-1)
    return torch.softmax(strength * cos, dim=-1)


def read(state: MemoryState, keys: Tensor, strength: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Read by content. Returns read vectors [B, H, W] and read weights [B, H, S].

    Pure: the state is not changed; pass the weights to :func:`write` (or use :func:`step`)
    so usage accounting sees the read.
    """
    _check_keys(state, keys)
    weights = address(state.memory, keys, strength)
    return weights @ state.memory, weights


def write_weights(state: MemoryState, gate: Tensor) -> Tensor:
    """LRUA write weights [B, H, S] from a gate [B, H] of logits (``sigmoid(gate)`` = share of
    the previously read slot, the rest goes to the least-used slot)."""
    b, h = state.read_weights.shape[:2]
    if gate.shape != (b, h):
        raise ValueError(f"gate has shape {tuple(gate.shape)}; expected [batch={b}, heads={h}]")
    g = torch.sigmoid(gate).unsqueeze(-1)
    return g * state.read_weights + (1.0 - g) * state.least_used


def write(
    state: MemoryState,
    values: Tensor,
    gate: Tensor,
    read_weights: Tensor | None = None,
    gamma: float = 0.95,
) -> MemoryState:
    """LRUA write of ``values`` [B, H, W] with gate logits ``gate`` [B, H].

    The write uses the state's previous read weights and least-used slots; the least-used
    slots are erased first. ``read_weights`` [B, H, S] are this step's read weights (from
    :func:`read`); they enter the usage and become the state's read weights for the next
    write. Without them the previous read weights are kept and only writes count as use.
    """
    _check_keys(state, values, "values")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in [0, 1]")
    ww = write_weights(state, gate)
    erase = state.least_used.sum(dim=1).clamp(max=1.0).unsqueeze(-1)  # [B, S, 1]
    memory = torch.baddbmm(state.memory * (1.0 - erase), ww.transpose(1, 2), values)
    read = read_weights is not None
    if read_weights is None:
        read_weights = state.read_weights
    elif read_weights.shape != state.read_weights.shape:
        raise ValueError(
            f"read_weights has shape {tuple(read_weights.shape)}; expected "
            f"{tuple(state.read_weights.shape)}"
        )
    # usage only picks the least-used slots (a sort): no gradient flows through it, so it is
    # computed from detached weights (fewer backward nodes on the training path)
    usage = gamma * state.usage.detach() + ww.detach().sum(dim=1)
    if read:
        usage = usage + read_weights.detach().sum(dim=1)
    return MemoryState(memory, usage, read_weights, least_used(usage, state.heads))


def step(
    state: MemoryState,
    keys: Tensor,
    strength: Tensor | float,
    gate: Tensor,
    values: Tensor | None = None,
    gamma: float = 0.95,
) -> tuple[Tensor, MemoryState]:
    """One MANN memory step: read with ``keys`` from the current memory, then LRUA-write
    ``values`` (default: the keys, as in Santoro et al.). Returns read vectors [B, H, W] and
    the new state."""
    reads, weights = read(state, keys, strength)
    new_state = write(state, keys if values is None else values, gate, weights, gamma)
    return reads, new_state


def _where_rows(keep: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(keep.view(-1, *([1] * (a.dim() - 1))), a, b)


def reset_rows(state: MemoryState, reset: Tensor, fresh: MemoryState) -> MemoryState:
    """Rows where ``reset`` [B] (bool) is true take their values from ``fresh``."""
    keep = ~reset.to(torch.bool)
    return MemoryState(*(_where_rows(keep, a, b) for a, b in zip(state, fresh, strict=True)))


# -- a recurrent cell: controller + memory heads ------------------------------------------


class CoreState(NamedTuple):
    """State of :class:`MemoryCore`: controller hidden ``h`` [B, hidden], LSTM cell ``c``
    [B, hidden] (zeros of width 0 for a GRU), the last read vectors ``reads`` [B, heads*width]
    and the external ``memory``."""

    h: Tensor
    c: Tensor
    reads: Tensor
    memory: MemoryState

    def detach(self) -> CoreState:
        """The state with every tensor detached (truncated backpropagation)."""
        return CoreState(
            self.h.detach(), self.c.detach(), self.reads.detach(), self.memory.detach()
        )


class MemoryCore(nn.Module):
    """A recurrent cell with an external LRUA memory (MANN).

    Each step the controller (LSTM or GRU) sees ``[x_t, r_{t-1}]``; from its hidden state the
    heads emit a key (tanh), a key strength (softplus), a write gate and, with
    ``separate_values=True``, a write vector distinct from the key. The memory is read with
    the key and then written (:func:`step`). The output is ``[h_t, r_t]`` of size
    :attr:`output_size`; put any head (classifier, policy) on top.

    ``interface_sees_input=True`` feeds ``x_t`` to the heads beside ``h_t``;
    ``init_strength > 0`` initialises the key strength to ``1 + init_strength`` (sharp reads
    from the start). Both make the few-shot binding task learn much sooner in our runs.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 200,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        controller: str = "lstm",
        gamma: float = 0.95,
        separate_values: bool = False,
        interface_sees_input: bool = False,
        init_strength: float = 0.0,
    ) -> None:
        super().__init__()
        for name, v in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("slots", slots),
            ("width", width),
            ("heads", heads),
        ):
            _check_positive(name, v)
        if heads > slots:
            raise ValueError(f"heads={heads} must be <= slots={slots}")
        if controller not in ("lstm", "gru"):
            raise ValueError(f"controller={controller!r}; allowed: 'lstm', 'gru'")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma!r} must be in [0, 1]")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.slots, self.width, self.heads = slots, width, heads
        self.controller_kind, self.gamma, self.separate_values = controller, gamma, separate_values
        self.interface_sees_input = interface_sees_input
        cell = nn.LSTMCell if controller == "lstm" else nn.GRUCell
        self.controller = cell(input_size + heads * width, hidden_size)
        per_head = width + 2 + (width if separate_values else 0)
        iface_in = hidden_size + (input_size if interface_sees_input else 0)
        self.interface = nn.Linear(iface_in, heads * per_head)
        if init_strength > 0:  # start with sharp reads: 1 + softplus(bias) = 1 + init_strength
            with torch.no_grad():
                bias = self.interface.bias.view(heads, per_head)
                bias[:, width] = math.log(math.expm1(init_strength))

    @property
    def output_size(self) -> int:
        """Width of the core's output (controller output plus the read vectors)."""
        return self.hidden_size + self.heads * self.width

    def initial_state(
        self, batch: int, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> CoreState:
        """A fresh state for ``batch`` rows: zero controller state, the initial memory."""
        p = self.interface.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        h = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        c = torch.zeros(batch, self.hidden_size if self.controller_kind == "lstm" else 0)
        reads = torch.zeros(batch, self.heads * self.width, device=device, dtype=dtype)
        mem = init_state(batch, self.slots, self.width, self.heads, device=device, dtype=dtype)
        return CoreState(h, c.to(device=device, dtype=dtype), reads, mem)

    def forward(self, x: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        """One step: ``x`` [B, input_size] -> output [B, output_size], new state."""
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [batch, input_size={self.input_size}]"
            )
        inp = torch.cat([x, state.reads], dim=-1)
        if self.controller_kind == "lstm":
            h, c = self.controller(inp, (state.h, state.c))
        else:
            h, c = self.controller(inp, state.h), state.c
        b = x.shape[0]
        iface_in = torch.cat([h, x], dim=-1) if self.interface_sees_input else h
        iface = self.interface(iface_in).view(b, self.heads, -1)
        w = self.width
        sizes = [w, 1, 1, w] if self.separate_values else [w, 1, 1]
        parts = torch.split(iface, sizes, dim=-1)  # one backward node, not one per slice
        keys = torch.tanh(parts[0])
        strength = F.softplus(parts[1].squeeze(-1)) + 1.0
        gate = parts[2].squeeze(-1)
        values = torch.tanh(parts[3]) if self.separate_values else None
        reads, memory = step(state.memory, keys, strength, gate, values, self.gamma)
        reads = reads.reshape(b, -1)
        return torch.cat([h, reads], dim=-1), CoreState(h, c, reads, memory)

    def unroll(
        self, xs: Tensor, state: CoreState, episode_start: Tensor | None = None
    ) -> tuple[Tensor, CoreState]:
        """Run ``xs`` [T, B, input_size]; rows with ``episode_start`` [T, B] true restart from
        the initial state before that step. Returns outputs [T, B, output_size], final state."""
        return unroll_cell(self, xs, state, episode_start)

    def reset(self, state: CoreState, reset: Tensor, fresh: CoreState | None = None) -> CoreState:
        """Rows where ``reset`` [B] is true go back to the initial state."""
        if fresh is None:
            fresh = self.initial_state(state.h.shape[0], state.h.device, state.h.dtype)
        keep = ~reset.to(torch.bool)
        return CoreState(
            _where_rows(keep, state.h, fresh.h),
            _where_rows(keep, state.c, fresh.c),
            _where_rows(keep, state.reads, fresh.reads),
            reset_rows(state.memory, reset, fresh.memory),
        )


# -- an episodic (append) memory: one row written per step, read by content ------------------


class EpisodicState(NamedTuple):
    """An episodic memory of a batch: ``keys`` [B, heads, slots, width], ``values``
    [B, heads, slots, value_width] and ``count`` [B] (rows written so far; the next write goes
    to slot ``count % slots``, so a full memory overwrites its oldest row)."""

    keys: Tensor
    values: Tensor
    count: Tensor


def episodic_write(state: EpisodicState, keys: Tensor, values: Tensor) -> EpisodicState:
    """Append one row per batch row: ``keys`` [B, heads, width], ``values`` [B, heads, vw]."""
    b, h, slots = state.keys.shape[:3]
    kw, vw = state.keys.shape[3], state.values.shape[3]
    if keys.shape != (b, h, kw) or values.shape != (b, h, vw):
        raise ValueError(
            f"keys/values have shapes {tuple(keys.shape)}/{tuple(values.shape)}; expected "
            f"{(b, h, kw)}/{(b, h, vw)}"
        )
    slot = (state.count % slots).view(b, 1, 1, 1)
    return EpisodicState(
        state.keys.scatter(2, slot.expand(b, h, 1, kw), keys.unsqueeze(2)),
        state.values.scatter(2, slot.expand(b, h, 1, vw), values.unsqueeze(2)),
        state.count + 1,
    )


def episodic_read(queries: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> Tensor:
    """Content-based reads over the valid rows of an episodic memory.

    ``queries`` [B, H, T, W] (T reads per batch row and head), ``keys`` [B, H, S, W],
    ``values`` [B, H, S, V], ``valid`` [B, T, S] (bool: the rows read ``t`` may see; at least
    one per read). Each head reads ``softmax_s(<q, k_s> / sqrt(W))``-weighted values over the
    valid rows -> reads [B, H, T, V]."""
    scores = torch.matmul(queries, keys.transpose(-1, -2)) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), values)


def unroll_cell(cell: nn.Module, xs: Tensor, state: Any, episode_start: Tensor | None) -> tuple:
    """A memory cell (:class:`MemoryCore`, :class:`~meta_rl.core.ntm.NTMCore`: ``cell(x, state)
    -> (out, state)``, ``initial_state``, ``reset``) over ``xs`` [T, B, input_size]; rows with
    ``episode_start`` [T, B] true restart from the initial state before that step."""
    if xs.dim() != 3:
        raise ValueError(f"xs has shape {tuple(xs.shape)}; expected [T, batch, input_size]")
    fresh = None
    outs = []
    for t in range(xs.shape[0]):
        if episode_start is not None:
            if fresh is None:
                fresh = cell.initial_state(xs.shape[1], xs.device, xs.dtype)
            state = cell.reset(state, episode_start[t], fresh)
        out, state = cell(xs[t], state)
        outs.append(out)
    return torch.stack(outs), state
