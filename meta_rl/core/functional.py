"""Parameters as ``dict[str, Tensor]`` and the per-task (batched) forward of a module.

A *params* dict maps the names of ``module.named_parameters()`` to tensors. *Stacked* params
carry a leading task axis ``T`` (``[T, *shape]``); a dict may mix stacked entries (adapted per
task) with shared ones (module shape, e.g. ANIL's frozen body). :func:`batched_call` runs task
``t``'s parameters on task ``t``'s inputs for every task at once:

- a chain of ``nn.Linear`` and elementwise activations (an ``nn.Sequential``, or a module
  registered with :func:`register_linear_chain`) runs as batched matrix products over the
  stacked weights, with no ``vmap`` machinery on the hot path. Its weights may also be
  :class:`LowRankWeight` s: a shared weight plus the factors of the inner SGD steps (what
  ``inner_update(..., factored=...)`` produces), so per-task weight tensors are never built;
- any other module runs under ``torch.func.vmap(torch.func.functional_call)``.

Both paths are plain differentiable torch ops: inner-loop gradients and second-order
meta-gradients flow through them with ``torch.autograd``.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

logger = logging.getLogger(__name__)

Params = dict[str, Tensor]

__all__ = [
    "Params",
    "get_params",
    "put_params",
    "expand_params",
    "stack_params",
    "unstack_params",
    "task_index",
    "batched_call",
    "register_linear_chain",
    "linear_chain",
    "linear_chain_weights",
    "LowRankWeight",
    "dense",
    "record_linear_layers",
    "tune_cpu_allocator",
]

# elementwise modules the batched linear chain may contain (they act on the last axis only)
_ELEMENTWISE = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
)
# module type -> function returning (prefix of the parameter names, the nn.Sequential it runs)
_CHAINS: dict[type, Callable[[nn.Module], tuple[str, nn.Sequential]]] = {}


def get_params(
    module: nn.Module, names: Iterable[str] | None = None, detach: bool = False
) -> Params:
    """The module's parameters by name (all, or ``names``); ``detach=True`` gives new leaves."""
    own = dict(module.named_parameters())
    keys = list(own) if names is None else list(names)
    unknown = [k for k in keys if k not in own]
    if unknown:
        raise KeyError(f"names {unknown} are not parameters of the module; known: {list(own)}")
    return {k: (own[k].detach() if detach else own[k]) for k in keys}


@torch.no_grad()
def put_params(module: nn.Module, params: Mapping[str, Tensor]) -> None:
    """Copy ``params`` (module shapes) into the module's parameters in place."""
    own = dict(module.named_parameters())
    for k, v in params.items():
        if k not in own:
            raise KeyError(f"params[{k!r}] is not a parameter of the module; known: {list(own)}")
        if v.shape != own[k].shape:
            raise ValueError(f"params[{k!r}] has shape {tuple(v.shape)}, the module {own[k].shape}")
        own[k].copy_(v)


def expand_params(params: Mapping[str, Tensor], num_tasks: int) -> Params:
    """Every entry repeated along a new leading task axis (a view: no copy; gradients of the
    per-task copies sum into the original)."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks={num_tasks} must be >= 1")
    return {k: v.expand(num_tasks, *v.shape) for k, v in params.items()}


def stack_params(per_task: Sequence[Mapping[str, Tensor]]) -> Params:
    """A list of per-task dicts (same keys) as one stacked dict."""
    if not per_task:
        raise ValueError("stack_params needs at least one params dict")
    keys = list(per_task[0])
    for i, p in enumerate(per_task):
        if list(p) != keys:
            raise KeyError(f"per_task[{i}] has keys {list(p)}, per_task[0] has {keys}")
    return {k: torch.stack([p[k] for p in per_task]) for k in keys}


def unstack_params(params: Mapping[str, Tensor]) -> list[Params]:
    """A stacked dict as a list of per-task dicts."""
    sizes = {v.shape[0] for v in params.values()}
    if len(sizes) != 1:
        raise ValueError(f"stacked params disagree on the task axis: sizes {sorted(sizes)}")
    return [{k: v[t] for k, v in params.items()} for t in range(sizes.pop())]


def task_index(params: Mapping[str, Tensor], index: int | slice | Tensor) -> Params:
    """Task ``index`` (or a subset) of a stacked dict."""
    return {k: v[index] for k, v in params.items()}


def register_linear_chain(
    module_type: type, chain: Callable[[nn.Module], tuple[str, nn.Sequential]]
) -> None:
    """Declare that ``module_type.forward(x)`` is exactly ``chain(m)[1](x)`` (a Sequential of
    Linear + elementwise layers whose parameter names start with ``chain(m)[0]``), so
    :func:`batched_call` may run it as batched matrix products. Input checks of the module's own
    forward are replaced by the chain's shape check."""
    _CHAINS[module_type] = chain
    _INFO.clear()


def linear_chain(module: nn.Module) -> tuple[str, list[nn.Module]] | None:
    """(name prefix, layers) when ``module`` runs as a batched linear chain, else None."""
    if isinstance(module, nn.Sequential):
        prefix, seq = "", module
    elif type(module) in _CHAINS:
        prefix, seq = _CHAINS[type(module)](module)
    else:
        return None
    layers = list(seq)
    if not all(isinstance(m, (nn.Linear, *_ELEMENTWISE)) for m in layers):
        return None
    return prefix, layers


def linear_chain_weights(module: nn.Module) -> list[str]:
    """Names of the Linear weights :func:`batched_call` runs as a batched chain (these may be
    adapted in factored form: ``inner_update(..., factored=...)``); empty for other modules."""
    chain = linear_chain(module)
    if chain is None:
        return []
    prefix, layers = chain
    return [f"{prefix}{i}.weight" for i, m in enumerate(layers) if isinstance(m, nn.Linear)]


def _is_stacked(value: Tensor | LowRankWeight, shape: torch.Size, name: str) -> bool:
    if isinstance(value, LowRankWeight):
        if value.base.shape[-2:] != shape:
            raise ValueError(f"params[{name!r}] has shape {value.shape}; the module {tuple(shape)}")
        return value.stacked
    if value.shape == shape:
        return False
    if value.dim() == len(shape) + 1 and value.shape[1:] == shape:
        return True
    raise ValueError(
        f"params[{name!r}] has shape {tuple(value.shape)}; expected the module's {tuple(shape)} "
        f"or stacked [T, {', '.join(map(str, shape))}]"
    )


class LowRankWeight:
    """Per-task weights of a Linear layer kept in factored form (no [T, out, in] tensor):
    ``W_t = base(_t) - sum_j scale_j * D_j[t]^T @ H_j[t]``, with ``D_j`` [T, M, out] the loss
    gradient w.r.t. the layer's outputs and ``H_j`` [T, M, in] its inputs on M examples.

    This is exactly what an SGD step on a linear layer adds (the gradient of a weight is a sum
    of outer products), so the inner update can keep it factored and :func:`batched_call`
    applies it as ``h @ base^T - scale * (h @ H^T) @ D``: with few examples per task (M << in,
    out) this is much less work and memory than materialising per-task weights. Produced by
    :func:`meta_rl.core.inner.inner_update` for the names passed as ``factored``; only
    :func:`batched_call` consumes it (anything else fails loudly; use :meth:`dense`).
    """

    __slots__ = ("base", "terms")

    def __init__(
        self, base: Tensor, terms: Sequence[tuple[float | Tensor, Tensor, Tensor]] = ()
    ) -> None:
        if base.dim() not in (2, 3):
            raise ValueError(
                f"LowRankWeight base must be [out, in] or [T, out, in], got {base.shape}"
            )
        self.base = base
        self.terms = tuple(terms)

    @property
    def stacked(self) -> bool:
        """True when the factors carry a leading task dimension."""
        return bool(self.terms) or self.base.dim() == 3

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the full weight the factors stand for."""
        if self.terms:
            return (self.terms[0][1].shape[0], *self.base.shape[-2:])
        return tuple(self.base.shape)

    def detach(self) -> LowRankWeight:
        """The same weight with detached factors."""
        return LowRankWeight(
            self.base.detach(),
            [
                (c.detach() if isinstance(c, Tensor) else c, d.detach(), h.detach())
                for c, d, h in self.terms
            ],
        )

    def compact(self) -> LowRankWeight:
        """Itself, or its dense form once several steps' factors cost more to apply than a
        dense weight (summed rank x (in + out) >= in x out): keeps many-step inner loops (Reptile)
        linear in the number of steps. A single step stays factored (measured faster)."""
        out_f, in_f = self.base.shape[-2:]
        rank = sum(d.shape[1] for _, d, _ in self.terms)
        if len(self.terms) >= 2 and rank * (in_f + out_f) >= in_f * out_f:
            return LowRankWeight(self.dense())
        return self

    def dense(self) -> Tensor:
        """The per-task weights as one [T, out, in] tensor (or the base when there are none)."""
        w = self.base
        for c, d, h in self.terms:
            w = w - c * torch.bmm(d.transpose(1, 2), h)
        return w

    def apply(self, h: Tensor, bias: Tensor | None = None) -> Tensor:
        """``h [T, M, in] -> [T, M, out]``, plus ``bias`` ([out] or per task [T, out])."""
        base = self.base
        if base.dim() == 2 and (bias is None or bias.dim() == 1):
            z = torch.nn.functional.linear(h, base, bias)  # one GEMM over all tasks' rows
        else:
            if base.dim() == 2:
                z = torch.nn.functional.linear(h, base)
            else:  # weight as left operand: its gradient comes out in its own layout
                z = torch.bmm(base, h.transpose(1, 2)).transpose(1, 2)
            if bias is not None:
                z = z + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
        for c, d, hs in self.terms:
            hh = torch.bmm(h, hs.transpose(1, 2))  # [T, M, M_support]
            if isinstance(c, Tensor):
                z = z - c * torch.bmm(hh, d)
            else:
                z = torch.baddbmm(z, hh, d, alpha=-c)
        return z


def dense(value: Tensor | LowRankWeight) -> Tensor:
    """A params entry as a plain tensor."""
    return value.dense() if isinstance(value, LowRankWeight) else value


_TAPE: ContextVar[list | None] = ContextVar("meta_rl_linear_tape", default=None)


@contextmanager
def record_linear_layers() -> Iterator[list[tuple[str, Tensor, Tensor]]]:
    """Within the block, :func:`batched_call` appends ``(weight name, input h [T, M, in],
    output z [T, M, out])`` for every Linear layer it runs as a batched chain."""
    tape: list[tuple[str, Tensor, Tensor]] = []
    token = _TAPE.set(tape)
    try:
        yield tape
    finally:
        _TAPE.reset(token)


def _tanh_folds(layers: list[nn.Module]) -> list[bool]:
    """For each layer: True where a Linear is followed by a Tanh and then by a Linear or the
    end of the chain, so the pair may run as a sigmoid with affine maps folded into the weights
    (see :func:`_chain_forward`)."""
    folds = []
    for i, layer in enumerate(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        after = layers[i + 2] if i + 2 < len(layers) else None
        folds.append(
            isinstance(layer, nn.Linear)
            and type(nxt) is nn.Tanh
            and (after is None or isinstance(after, nn.Linear))
        )
    return folds


def _chain_forward(
    prefix: str, layers: list[nn.Module], params: Mapping[str, Tensor], x: Tensor
) -> Tensor:
    """x [T, N, in] through the chain with per-task (stacked / factored) or shared parameters.

    A plain stacked weight is used as the left operand (``W @ h^T``) so that its gradient
    ``dz^T @ h`` comes out contiguous in the weight's own [T, out, in] layout; the inner step,
    the meta-backward and the gradient accumulation then never mix transposed and contiguous
    weight-sized tensors (a slow path).

    ``Linear -> Tanh`` runs as ``u = sigmoid(2 z)`` with ``tanh(z) = 2 u - 1`` (an identity):
    the factors 2 and the shift -1 are folded into the (small) weights and biases of this and
    the next Linear layer, so the large activations see one sigmoid instead of a tanh (CPU
    tanh and its derivatives cost about as much as the layer's matrix product; sigmoid is
    memory-bound). Not used for factored weights or while :func:`record_linear_layers`
    records (those need the layers' true inputs and outputs)."""
    if x.dim() != 3:
        raise ValueError(f"input has shape {tuple(x.shape)}; a linear chain takes [T, N, features]")
    tape = _TAPE.get()
    fold = tape is None and not any(isinstance(v, LowRankWeight) for v in params.values())
    folds = _tanh_folds(layers) if fold else [False] * len(layers)
    h = x
    from_tanh = False  # h holds u with the true input 2 u - 1
    skip = False
    for i, layer in enumerate(layers):
        if skip:  # the Tanh folded into the Linear before it
            skip = False
            continue
        if not isinstance(layer, nn.Linear):
            h = layer(h)  # elementwise
            continue
        key = f"{prefix}{i}.weight"
        w, b = params[key], params.get(f"{prefix}{i}.bias")
        if h.shape[-1] != layer.in_features:
            raise ValueError(
                f"input to layer {prefix}{i} has shape {tuple(h.shape)}; last dimension must be "
                f"{layer.in_features}"
            )
        if from_tanh or folds[i]:  # W (2u - 1) + b = 2 W u + (b - W 1); times 2 before a sigmoid
            out_scale = 2.0 if folds[i] else 1.0
            if from_tanh:
                shift = -w.sum(-1)
                b = shift if b is None else b + shift
                w = w * (2.0 * out_scale)
            else:
                w = w * out_scale
            b = None if b is None else b * out_scale
        bias = None if b is None else (b.unsqueeze(1) if b.dim() == 2 else b)
        if isinstance(w, LowRankWeight):
            z = w.apply(h, b)
        elif w.dim() == 3:
            if b is not None and b.dim() == 2:
                z = torch.baddbmm(b.unsqueeze(-1), w, h.transpose(1, 2)).transpose(1, 2)
            else:
                z = torch.bmm(w, h.transpose(1, 2)).transpose(1, 2)
                z = z if bias is None else z + bias
        else:
            z = torch.nn.functional.linear(h, w)
            z = z if bias is None else z + bias
        if tape is not None:
            tape.append((key, h, z))
        h = z
        from_tanh = folds[i]
        if folds[i]:
            h = torch.sigmoid(z)
            skip = True
    if from_tanh:  # the chain ends with the Tanh
        h = 2.0 * h - 1.0
    return h


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_info(module: nn.Module) -> tuple[dict[str, torch.Size], Any]:
    """Parameter shapes and linear chain of a module, cached per module (the structure of a
    module is assumed fixed once it has been called; values may change freely)."""
    hit = _INFO.get(module)
    if hit is None:
        hit = ({k: v.shape for k, v in module.named_parameters()}, linear_chain(module))
        _INFO[module] = hit
    return hit


def batched_call(module: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``module`` applied with task ``t``'s parameters to ``x[t]`` for every task.

    ``params`` holds every parameter of the module, each either stacked ``[T, *shape]`` or
    shared (module shape); ``x`` is ``[T, ...]``. Returns ``[T, ...]``.
    """
    shapes, chain = _module_info(module)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise KeyError(f"params do not match the module: missing {missing}, unknown {extra}")
    stacked = {k: _is_stacked(params[k], shapes[k], k) for k in shapes}
    for k, s in stacked.items():
        if s and params[k].shape[0] != x.shape[0]:
            raise ValueError(
                f"params[{k!r}] has {params[k].shape[0]} tasks but the input has {x.shape[0]}"
            )
    if chain is not None:
        return _chain_forward(chain[0], chain[1], params, x)
    params = {k: dense(v) for k, v in params.items()}
    per_task = {k: v for k, v in params.items() if stacked[k]}
    shared = {k: v for k, v in params.items() if not stacked[k]}

    def one(p: Params, xt: Tensor) -> Tensor:
        return functional_call(module, (p, shared), (xt,))

    return vmap(one, in_dims=(0, 0), randomness="error")(per_task, x)


_TUNED = False


def tune_cpu_allocator(keep_bytes: int = 256 << 20) -> bool:
    """Let glibc keep freed blocks up to ``keep_bytes`` instead of returning them to the OS.

    Meta-gradients on a CPU allocate and free the same megabyte-sized tensors every iteration;
    with glibc's defaults each one comes from a fresh ``mmap`` and pays for page faults (about
    700 per MAML iteration at meta-batch 200, half of its time). Process-wide and idempotent;
    returns False (and does nothing) where glibc's ``mallopt`` is unavailable.
    """
    global _TUNED
    if _TUNED:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = (
            libc.mallopt(m_mmap_threshold, min(keep_bytes, 32 << 20))
            and libc.mallopt(m_trim_threshold, keep_bytes)
            and libc.mallopt(m_top_pad, 64 << 20)
        )
    except (OSError, AttributeError):
        return False
    _TUNED = bool(ok)
    logger.debug("tune_cpu_allocator: mallopt %s", "applied" if ok else "refused")
    return _TUNED
