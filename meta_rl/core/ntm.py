"""Neural Turing Machine memory: content and location addressing (Graves et al. 2014).

A memory ``M`` of ``slots`` rows of ``width`` numbers per batch row, read and written through
soft weightings over the slots. Each head finds its weighting ``w_t`` in four steps from
parameters the controller emits (:class:`Addressing`) and the head's previous weighting:

1. **content**: ``w^c = softmax_s(beta * cosine(M(s), k))`` with key ``k`` and key strength
   ``beta > 0`` (:func:`meta_rl.core.memory.address`, the same content read as MANN's);
2. **interpolation**: ``w^g = g w^c + (1 - g) w_{t-1}`` with the gate ``g`` in ``[0, 1]``;
3. **shift**: a circular convolution with a 3-tap kernel ``s = (s_-1, s_0, s_+1)`` on the
   simplex: ``w~(i) = s_-1 w^g(i+1) + s_0 w^g(i) + s_+1 w^g(i-1)`` (indices mod ``slots``;
   ``s_+1`` moves the focus one slot forward);
4. **sharpening**: ``w(i) = w~(i)^gamma / sum_j w~(j)^gamma`` with ``gamma >= 1``.

A read head returns ``r = sum_s w(s) M(s)``; a write head erases then adds:
``M <- M * (1 - w e^T) + w a^T`` with the erase vector ``e`` in ``[0, 1]^width`` and the add
vector ``a`` (several write heads: the product of their erase factors, the sum of their adds).
Within one :func:`step` the read and write heads all address the memory of the previous step,
the reads are taken, then the write happens (the order of the reference PyTorch NTM,
loudinthecloud/pytorch-ntm).

:func:`addressing` turns raw controller outputs into :class:`Addressing` (``beta = softplus``,
``g = sigmoid``, ``s = softmax``, ``gamma = 1 + softplus``). Everything is functional and
batched over rows: an :class:`NTMState` goes in, a new one comes out. :class:`NTMCore` wraps a
controller (LSTM or GRU) and the heads into one recurrent cell (``x_t, state -> output, new
state``) with the same interface as :class:`meta_rl.core.memory.MemoryCore`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meta_rl.core.memory import _where_rows, unroll_cell
from meta_rl.core.memory import address as content_weights

__all__ = [
    "Addressing",
    "NTMCore",
    "NTMCoreState",
    "NTMState",
    "address",
    "addressing",
    "content_weights",
    "init_state",
    "interpolate",
    "read",
    "reset_rows",
    "sharpen",
    "shift",
    "step",
    "write",
]

_TINY = 1e-30
SHIFTS = 3
"""taps of the shift kernel: shifts -1, 0, +1"""
PARAMS_PER_HEAD = SHIFTS + 3
"""raw addressing numbers per head beside the key: beta, gate, 3 shift logits, gamma"""
INTERFACE_CLIP = 20.0
"""bound of the controller's interface outputs in a bounded :class:`NTMCore`"""


class NTMState(NamedTuple):
    """The memory of a batch; every tensor has the leading batch dimension ``B``.

    ``memory`` [B, slots, width]; ``read_weights`` [B, read_heads, slots] and ``write_weights``
    [B, write_heads, slots] (the heads' last weightings, the starting point of their next
    location-based addressing); ``reads`` [B, read_heads, width] (the last read vectors).
    """

    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    reads: Tensor

    def detach(self) -> NTMState:
        return NTMState(*(t.detach() for t in self))


class Addressing(NamedTuple):
    """The addressing parameters of ``H`` heads (already in their ranges, see
    :func:`addressing`): ``key`` [B, H, width], ``beta`` [B, H] (> 0), ``gate`` [B, H] (in
    [0, 1]), ``shift`` [B, H, 3] (weights of the shifts -1, 0, +1; sums to 1), ``gamma``
    [B, H] (>= 1)."""

    key: Tensor
    beta: Tensor
    gate: Tensor
    shift: Tensor
    gamma: Tensor


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def init_state(
    batch: int,
    slots: int = 128,
    width: int = 20,
    read_heads: int = 1,
    write_heads: int = 1,
    *,
    memory: Tensor | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fill: float = 1e-6,
) -> NTMState:
    """A fresh state: ``memory`` [slots, width] (or [batch, slots, width]) copied to every row,
    or the constant ``fill`` without it; zero weightings and reads."""
    for name, v in (
        ("batch", batch),
        ("slots", slots),
        ("width", width),
        ("read_heads", read_heads),
        ("write_heads", write_heads),
    ):
        _check_positive(name, v)
    if memory is None:
        mem = torch.full((batch, slots, width), fill, device=device, dtype=dtype)
    else:
        if tuple(memory.shape[-2:]) != (slots, width):
            raise ValueError(
                f"memory has shape {tuple(memory.shape)}; expected [slots={slots}, width={width}]"
            )
        mem = memory.to(device=device, dtype=dtype).expand(batch, slots, width)
    zeros = dict(device=device, dtype=dtype)
    return NTMState(
        mem,
        torch.zeros(batch, read_heads, slots, **zeros),
        torch.zeros(batch, write_heads, slots, **zeros),
        torch.zeros(batch, read_heads, width, **zeros),
    )


# -- the four addressing steps ------------------------------------------------------------


def interpolate(content: Tensor, previous: Tensor, gate: Tensor) -> Tensor:
    """``g w^c + (1 - g) w_{t-1}``: ``content``, ``previous`` [B, H, S], ``gate`` [B, H]."""
    return torch.lerp(previous, content, gate.unsqueeze(-1))


def shift(weights: Tensor, kernel: Tensor) -> Tensor:
    """Circular convolution of ``weights`` [B, H, S] with the 3-tap ``kernel`` [B, H, 3] of the
    shifts -1, 0, +1: ``out(i) = k_-1 w(i+1) + k_0 w(i) + k_+1 w(i-1)`` (indices mod S)."""
    if kernel.shape[-1] != SHIFTS or kernel.shape[:-1] != weights.shape[:-1]:
        raise ValueError(
            f"kernel has shape {tuple(kernel.shape)}; expected {(*weights.shape[:-1], SHIFTS)}"
        )
    # [..., S, 3]: w(i+1), w(i), w(i-1) beside each other, weighted by k_-1, k_0, k_+1
    taps = torch.stack([torch.roll(weights, -1, -1), weights, torch.roll(weights, 1, -1)], -1)
    return (taps @ kernel.unsqueeze(-1)).squeeze(-1)


def sharpen(weights: Tensor, gamma: Tensor) -> Tensor:
    """``w^gamma / sum w^gamma`` over slots: ``weights`` [B, H, S], ``gamma`` [B, H] (>= 1)."""
    # scaled by the peak first (the result is the same): then the sum is >= 1, and a large
    # gamma cannot underflow every weight to zero. The result does not depend on the scale, so
    # no gradient goes through the peak (a detached constant: no amax in the backward pass)
    peak = weights.detach().amax(-1, keepdim=True).clamp_min(_TINY)
    powered = (weights / peak).pow(gamma.unsqueeze(-1))
    return powered / powered.sum(-1, keepdim=True).clamp_min(_TINY)


def address(memory: Tensor, previous: Tensor, params: Addressing) -> Tensor:
    """The weightings [B, H, S] of ``H`` heads: content (:func:`content_weights`), then
    :func:`interpolate` with the ``previous`` weightings [B, H, S], :func:`shift`,
    :func:`sharpen`."""
    b, s, w = memory.shape
    if params.key.dim() != 3 or params.key.shape[0] != b or params.key.shape[2] != w:
        raise ValueError(
            f"key has shape {tuple(params.key.shape)}; expected [batch={b}, heads, width={w}]"
        )
    if previous.shape != (b, params.key.shape[1], s):
        raise ValueError(
            f"previous weights have shape {tuple(previous.shape)}; expected "
            f"{(b, params.key.shape[1], s)}"
        )
    content = content_weights(memory, params.key, params.beta)
    gated = interpolate(content, previous, params.gate)
    return sharpen(shift(gated, params.shift), params.gamma)


def addressing(raw: Tensor, width: int) -> Addressing:
    """Raw controller outputs [B, H, width + 6] -> :class:`Addressing`: the key as is,
    ``beta = softplus``, ``g = sigmoid``, ``s = softmax`` of 3 logits, ``gamma = 1 +
    softplus``."""
    if raw.shape[-1] != width + PARAMS_PER_HEAD:
        raise ValueError(
            f"raw addressing outputs have {raw.shape[-1]} numbers per head; expected "
            f"width + {PARAMS_PER_HEAD} = {width + PARAMS_PER_HEAD}"
        )
    # one split (one backward node) rather than a slice per parameter
    key, beta, gate, kernel, gamma = raw.split([width, 1, 1, SHIFTS, 1], dim=-1)
    return Addressing(
        key,
        F.softplus(beta.squeeze(-1)),
        torch.sigmoid(gate.squeeze(-1)),
        torch.softmax(kernel, -1),
        1 + F.softplus(gamma.squeeze(-1)),
    )


# -- reading, writing, one step ------------------------------------------------------------


def read(memory: Tensor, weights: Tensor) -> Tensor:
    """Read vectors [B, H, W] = ``sum_s w(s) M(s)`` for weightings [B, H, S]."""
    return weights @ memory


def write(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """Erase then add: ``M * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T``; ``weights`` [B, H, S],
    ``erase`` (in [0, 1]) and ``add`` [B, H, W]."""
    b, h = weights.shape[:2]
    w = memory.shape[-1]
    if erase.shape != (b, h, w) or add.shape != (b, h, w):
        raise ValueError(
            f"erase/add have shapes {tuple(erase.shape)}/{tuple(add.shape)}; expected {(b, h, w)}"
        )
    per_slot = weights.transpose(1, 2)  # [B, S, H]
    if h == 1:
        keep = 1.0 - per_slot @ erase
    else:
        keep = (1.0 - weights.unsqueeze(-1) * erase.unsqueeze(-2)).prod(dim=1)
    return torch.baddbmm(memory * keep, per_slot, add)


def step(state: NTMState, heads: Addressing, erase: Tensor, add: Tensor) -> NTMState:
    """One memory step. ``heads`` holds the addressing of the read heads, then of the write
    heads (``R + Hw`` heads, the state's counts); all address the current memory from their
    previous weightings, the read vectors are taken, then the write heads erase (``erase``
    [B, Hw, W], in [0, 1]) and add (``add`` [B, Hw, W])."""
    r = state.read_weights.shape[1]
    previous = torch.cat([state.read_weights, state.write_weights], dim=1)
    weights = address(state.memory, previous, heads)
    wr, ww = weights.split([r, weights.shape[1] - r], dim=1)
    return NTMState(write(state.memory, ww, erase, add), wr, ww, read(state.memory, wr))


def reset_rows(state: NTMState, reset: Tensor, fresh: NTMState) -> NTMState:
    """Rows where ``reset`` [B] (bool) is true take their values from ``fresh``."""
    keep = ~reset.to(torch.bool)
    return NTMState(*(_where_rows(keep, a, b) for a, b in zip(state, fresh, strict=True)))


# -- a recurrent cell: controller + NTM heads -----------------------------------------------


class NTMCoreState(NamedTuple):
    """State of :class:`NTMCore`: controller hidden ``h`` [B, hidden], LSTM cell ``c``
    [B, hidden] (width 0 for a GRU) and the ``memory`` (its ``reads`` feed the controller)."""

    h: Tensor
    c: Tensor
    memory: NTMState

    def detach(self) -> NTMCoreState:
        return NTMCoreState(self.h.detach(), self.c.detach(), self.memory.detach())


class NTMCore(nn.Module):
    """A recurrent cell with an NTM memory.

    Each step the controller (LSTM or GRU) sees ``[x_t, r_{t-1}]``; from its hidden state a
    linear interface emits every head's addressing parameters (:func:`addressing`) and, for
    the write heads, the erase (sigmoid) and add vectors; then :func:`step`. The output is
    ``[h_t, r_t]`` of size :attr:`output_size`; put any head on top.

    Initialisation follows the reference PyTorch NTM (loudinthecloud/pytorch-ntm): controller
    weights uniform in ``+-5 / sqrt(in + out)`` with zero biases, the interface Xavier-uniform
    (gain 1.4), learned initial controller state and read vectors. The initial weightings are
    learned too (a softmax of learned logits). Two choices of Collier & Beel (2018,
    "Implementing Neural Turing Machines"), who made NTM training reliable, are the defaults:

    - ``memory_init="constant"``: every slot starts at 1e-6 (``"random"``: a fixed draw
      uniform in ``+-1 / sqrt(slots + width)`` as the reference; build the module under
      :func:`meta_rl.fewshot.models.seeded` for a seed-determined draw);
    - ``bounded=True``: the interface outputs are clipped to +-20 and the keys and add vectors
      pass through tanh (``False``: as they come, as the reference).

    On the copy task (:mod:`meta_rl.fewshot.ntm_copy`) the reference choices learned about as
    fast in our runs but then fell back to chance for thousands of sequences; with these
    defaults the failures that remain are short bursts.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 100,
        slots: int = 128,
        width: int = 20,
        read_heads: int = 1,
        write_heads: int = 1,
        controller: str = "lstm",
        memory_init: str = "constant",
        bounded: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("slots", slots),
            ("width", width),
            ("read_heads", read_heads),
            ("write_heads", write_heads),
        ):
            _check_positive(name, v)
        if controller not in ("lstm", "gru"):
            raise ValueError(f"controller={controller!r}; allowed: 'lstm', 'gru'")
        if memory_init not in ("constant", "random"):
            raise ValueError(f"memory_init={memory_init!r}; allowed: 'constant', 'random'")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.slots, self.width = slots, width
        self.read_heads, self.write_heads = read_heads, write_heads
        self.controller_kind, self.memory_init, self.bounded = controller, memory_init, bounded
        cell = nn.LSTMCell if controller == "lstm" else nn.GRUCell
        self.controller = cell(input_size + read_heads * width, hidden_size)
        # every head's addressing numbers (read heads first), then the write heads' erase, add
        heads = read_heads + write_heads
        n_out = heads * (width + PARAMS_PER_HEAD) + write_heads * 2 * width
        self.interface = nn.Linear(hidden_size, n_out)
        self.h0 = nn.Parameter(torch.zeros(hidden_size))
        if controller == "lstm":
            self.c0 = nn.Parameter(torch.zeros(hidden_size))
        else:
            self.register_parameter("c0", None)
        self.reads0 = nn.Parameter(torch.zeros(read_heads, width))
        self.weights0 = nn.Parameter(torch.zeros(heads, slots))
        """logits of the initial weightings (read heads first)"""
        self.register_buffer("memory0", torch.zeros(slots, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 5.0 / math.sqrt(self.controller.input_size + self.hidden_size)
        for name, p in self.controller.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -bound, bound)
        nn.init.xavier_uniform_(self.interface.weight, gain=1.4)
        nn.init.normal_(self.interface.bias, std=0.01)
        nn.init.normal_(self.h0, std=0.05)
        if self.c0 is not None:
            nn.init.normal_(self.c0, std=0.05)
        nn.init.normal_(self.reads0, std=0.01)
        nn.init.normal_(self.weights0, std=0.01)
        if self.memory_init == "random":
            stdev = 1.0 / math.sqrt(self.slots + self.width)
            nn.init.uniform_(self.memory0, -stdev, stdev)
        else:
            nn.init.constant_(self.memory0, 1e-6)

    @property
    def output_size(self) -> int:
        return self.hidden_size + self.read_heads * self.width

    def initial_state(
        self, batch: int, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NTMCoreState:
        """The learned initial controller state, reads and weightings and the initial memory
        (differentiable in the learned parts)."""
        p = self.interface.weight
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        mem = init_state(
            batch,
            self.slots,
            self.width,
            self.read_heads,
            self.write_heads,
            memory=self.memory0,
            device=device,
            dtype=dtype,
        )
        reads = self.reads0.to(device=device, dtype=dtype).expand(batch, -1, -1)
        weights = torch.softmax(self.weights0, -1).to(device=device, dtype=dtype)
        weights = weights.expand(batch, -1, -1)
        h = self.h0.to(device=device, dtype=dtype).expand(batch, -1)
        if self.c0 is None:
            c = torch.zeros(batch, 0, device=device, dtype=dtype)
        else:
            c = self.c0.to(device=device, dtype=dtype).expand(batch, -1)
        r = self.read_heads
        return NTMCoreState(h, c, NTMState(mem.memory, weights[:, :r], weights[:, r:], reads))

    def forward(self, x: Tensor, state: NTMCoreState) -> tuple[Tensor, NTMCoreState]:
        """One step: ``x`` [B, input_size] -> output [B, output_size], new state."""
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [batch, input_size={self.input_size}]"
            )
        b, w = x.shape[0], self.width
        inp = torch.cat([x, state.memory.reads.reshape(b, -1)], dim=-1)
        if self.controller_kind == "lstm":
            h, c = self.controller(inp, (state.h, state.c))
        else:
            h, c = self.controller(inp, state.h), state.c
        iface = self.interface(h)
        if self.bounded:
            iface = iface.clamp(-INTERFACE_CLIP, INTERFACE_CLIP)
        heads = self.read_heads + self.write_heads
        n_address = heads * (w + PARAMS_PER_HEAD)
        raw, erase_add = iface.split([n_address, iface.shape[1] - n_address], dim=1)
        params = addressing(raw.view(b, heads, -1), w)
        erase, add = erase_add.view(b, self.write_heads, 2 * w).split([w, w], dim=-1)
        erase = torch.sigmoid(erase)
        if self.bounded:
            params, add = params._replace(key=torch.tanh(params.key)), torch.tanh(add)
        memory = step(state.memory, params, erase, add)
        out = torch.cat([h, memory.reads.reshape(b, -1)], dim=-1)
        return out, NTMCoreState(h, c, memory)

    def unroll(
        self, xs: Tensor, state: NTMCoreState, episode_start: Tensor | None = None
    ) -> tuple[Tensor, NTMCoreState]:
        """Run ``xs`` [T, B, input_size]; rows with ``episode_start`` [T, B] true restart from
        the initial state before that step. Returns outputs [T, B, output_size], final state."""
        return unroll_cell(self, xs, state, episode_start)

    def reset(
        self, state: NTMCoreState, reset: Tensor, fresh: NTMCoreState | None = None
    ) -> NTMCoreState:
        """Rows where ``reset`` [B] is true go back to the initial state."""
        if fresh is None:
            fresh = self.initial_state(state.h.shape[0], state.h.device, state.h.dtype)
        keep = ~reset.to(torch.bool)
        return NTMCoreState(
            _where_rows(keep, state.h, fresh.h),
            _where_rows(keep, state.c, fresh.c),
            reset_rows(state.memory, reset, fresh.memory),
        )
