"""Action distributions of a Gymnasium action space as pure tensor functions.

A policy network emits a *head* ``head_out`` of ``head_size(space)`` numbers per observation;
these functions turn it into actions, log-probabilities, entropies and KLs. They take any
number of leading batch axes, hold no state and draw no random numbers of their own (the noise
comes in explicitly or from a given ``torch.Generator``), so they run unchanged under
``torch.func.vmap`` / ``torch.func.grad`` and on stacked per-task outputs ``[T, N, head]``.

Spaces:

- ``gymnasium.spaces.Discrete(n)``: ``head_out`` holds ``n`` logits; actions are int64 of shape
  ``[...]`` in ``[start, start + n)``; ``log_std`` is ignored (pass ``None``).
- ``gymnasium.spaces.Box`` of shape ``(d,)``: a diagonal Gaussian; ``head_out`` holds the ``d``
  means, ``log_std`` (broadcastable to ``head_out``, e.g. a learned ``[d]`` parameter) the log
  standard deviations; actions are float of shape ``[..., d]``, *not* clipped to the bounds (the
  env clips; the log-probability is that of the unclipped sample, as in TRPO/PPO practice).

Functions (``space`` is the single-env action space):

- ``head_size(space) -> int``: outputs the network needs for this space.
- ``noise(space, batch_shape, generator, device) -> Tensor``: the random numbers one
  ``sample`` consumes (uniforms for Discrete, standard normals for Box).
- ``sample_from_noise(space, head_out, log_std, noise) -> action``: deterministic given the noise
  (Gumbel-max for Discrete, ``mean + std * eps`` for Box); use it inside ``vmap``.
- ``sample(space, head_out, log_std, generator) -> action``: ``noise`` then ``sample_from_noise``.
- ``log_prob(space, head_out, log_std, action) -> [...]``.
- ``entropy(space, head_out, log_std) -> [...]``.
- ``kl(space, head_p, log_std_p, head_q, log_std_q) -> [...]``: ``KL(p || q)``.
- ``mode(space, head_out) -> action``: the most likely action (argmax / mean).
- ``check_space(space)``: raises ``ValueError`` naming the space when it is not supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import torch
from torch import Tensor

__all__ = [
    "check_space",
    "head_size",
    "RowWindow",
    "windowed",
    "noise",
    "sample_from_noise",
    "sample",
    "log_prob",
    "entropy",
    "kl",
    "kl_hessian",
    "mode",
]

_LOG_2PI = math.log(2.0 * math.pi)
_TINY = 1e-20


def check_space(space: gym.Space) -> None:
    """Raise ``ValueError`` unless ``space`` is a ``Discrete`` or a 1-D ``Box``."""
    if isinstance(space, gym.spaces.Discrete):
        return
    if isinstance(space, gym.spaces.Box):
        if len(space.shape) != 1:
            raise ValueError(
                f"action space Box with shape {space.shape} is not supported; a Box action space "
                "must be 1-D (shape (d,))"
            )
        return
    raise ValueError(
        f"action space {space!r} is not supported; allowed: gymnasium.spaces.Discrete, 1-D "
        "gymnasium.spaces.Box"
    )


def _discrete(space: gym.Space) -> bool:
    check_space(space)
    return isinstance(space, gym.spaces.Discrete)


def head_size(space: gym.Space) -> int:
    """Number of network outputs for ``space``: ``n`` logits or ``d`` Gaussian means."""
    return int(space.n) if _discrete(space) else int(space.shape[0])


class RowWindow(NamedTuple):
    """Use in place of a generator: :func:`noise` draws the noise of ``total`` rows (leading
    axis) from ``generator`` and keeps rows ``[start, start + batch_shape[0])``, i.e. exactly
    what those rows get in a ``total``-row draw (data-parallel shards, see meta_rl.collectives)."""

    generator: torch.Generator | None
    start: int
    total: int


def windowed(
    generator: torch.Generator | None, window: tuple[int, int] | None
) -> torch.Generator | RowWindow | None:
    """``generator`` for the rows ``window = (first_row, total_rows)`` of a bigger batch (e.g.
    ``Shard.window()`` of a data-parallel shard): a :class:`RowWindow`, or ``generator`` itself
    when ``window`` is ``None`` (the whole batch) or there is no generator."""
    if window is None or generator is None:
        return generator
    return RowWindow(generator, *window)


def noise(
    space: gym.Space,
    batch_shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | RowWindow | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """The random numbers one :func:`sample` of ``batch_shape`` actions consumes."""
    if isinstance(generator, RowWindow):
        n = batch_shape[0]
        if generator.start + n > generator.total:
            raise ValueError(f"rows [{generator.start}, {generator.start + n}) exceed {generator}")
        full = noise(space, (generator.total, *batch_shape[1:]), generator.generator, device)
        return full[generator.start : generator.start + n]
    size = (*batch_shape, head_size(space))
    if _discrete(space):
        return torch.rand(size, generator=generator, device=device)
    return torch.randn(size, generator=generator, device=device)


def sample_from_noise(
    space: gym.Space, head_out: Tensor, log_std: Tensor | None, eps: Tensor
) -> Tensor:
    """An action from ``head_out`` and explicit noise ``eps`` (shaped like ``head_out``)."""
    if _discrete(space):
        gumbel = -torch.log(-torch.log(eps.clamp(_TINY, 1.0 - 1e-7)))
        return torch.argmax(head_out + gumbel, dim=-1) + int(space.start)
    if log_std is None:
        raise ValueError("a Box action space needs log_std (got None)")
    return head_out + torch.exp(log_std) * eps


def sample(
    space: gym.Space,
    head_out: Tensor,
    log_std: Tensor | None,
    generator: torch.Generator | RowWindow | None = None,
) -> Tensor:
    """An action per row of ``head_out`` drawn with ``generator``."""
    eps = noise(space, head_out.shape[:-1], generator, head_out.device)
    return sample_from_noise(space, head_out, log_std, eps.to(head_out.dtype))


def log_prob(space: gym.Space, head_out: Tensor, log_std: Tensor | None, action: Tensor) -> Tensor:
    """Log-probability (density for Box) of ``action``; shape ``head_out.shape[:-1]``."""
    if _discrete(space):
        logp = torch.log_softmax(head_out, dim=-1)
        idx = (action.long() - int(space.start)).unsqueeze(-1)
        return torch.gather(logp, -1, idx).squeeze(-1)
    if log_std is None:
        raise ValueError("a Box action space needs log_std (got None)")
    z = (action - head_out) * torch.exp(-log_std)
    per_dim = -0.5 * z.square() - log_std - 0.5 * _LOG_2PI
    return per_dim.sum(-1)


def entropy(space: gym.Space, head_out: Tensor, log_std: Tensor | None) -> Tensor:
    """Entropy of the distribution of each row; shape ``head_out.shape[:-1]``."""
    if _discrete(space):
        logp = torch.log_softmax(head_out, dim=-1)
        return -(logp.exp() * logp).sum(-1)
    if log_std is None:
        raise ValueError("a Box action space needs log_std (got None)")
    per_dim = (log_std + 0.5 * (1.0 + _LOG_2PI)).expand_as(head_out)
    return per_dim.sum(-1)


def kl(
    space: gym.Space,
    head_p: Tensor,
    log_std_p: Tensor | None,
    head_q: Tensor,
    log_std_q: Tensor | None,
) -> Tensor:
    """``KL(p || q)`` per row for two heads of the same space; shape ``head_p.shape[:-1]``."""
    if _discrete(space):
        lp = torch.log_softmax(head_p, dim=-1)
        lq = torch.log_softmax(head_q, dim=-1)
        return (lp.exp() * (lp - lq)).sum(-1)
    if log_std_p is None or log_std_q is None:
        raise ValueError("a Box action space needs log_std_p and log_std_q (got None)")
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = (head_p - head_q).square() * torch.exp(-2.0 * log_std_q)
    per_dim = 0.5 * (var_ratio + mean_term - 1.0) - (log_std_p - log_std_q)
    return per_dim.expand_as(head_p).sum(-1)


def kl_hessian(
    head: Tensor, log_std: Tensor | None, weight: Tensor
) -> tuple[list[Tensor], Callable[[list[Tensor]], list[Tensor]]]:
    """The Hessian ``M`` of ``sum_rows weight * KL(sampling || current)`` in the distribution
    parameters, at current = sampling (where the KL's gradient is zero, so ``M`` is all of it,
    the distribution's Fisher): ``(outputs, v -> M v)`` with ``outputs`` the parameters
    (``[head]`` for logits, ``[head, log_std]`` for a Gaussian) and ``v`` shaped like them.
    Per row ``diag(p) - p p^T`` for the logits, ``diag(1 / sigma^2)`` for the mean and ``2`` for
    each log-std entry; ``weight`` [tasks, rows] (without graph) broadcasts over ``head``'s
    leading axes; a per-task log-std ``[tasks, 1, d]`` sums its rows' weights, a shared one all."""
    if log_std is None:  # categorical logits
        probs = torch.softmax(head.detach(), dim=-1)
        w = weight.unsqueeze(-1)

        def categorical(vs: list[Tensor]) -> list[Tensor]:
            (v,) = vs
            pv = probs * v
            return [w * (pv - probs * pv.sum(-1, keepdim=True))]

        return [head], categorical
    w_mean = weight.unsqueeze(-1) * torch.exp(-2.0 * log_std.detach())
    if log_std.dim() == 3:  # per task [k, 1, d]: summed over the rows it broadcasts to
        w_log = 2.0 * weight.sum(1).view(head.shape[0], 1, 1)
    else:  # shared [d]
        w_log = 2.0 * weight.sum()

    def gaussian(vs: list[Tensor]) -> list[Tensor]:
        return [w_mean * vs[0], w_log * vs[1]]

    return [head, log_std], gaussian


def mode(space: gym.Space, head_out: Tensor) -> Tensor:
    """The most likely action of each row (argmax logit, or the Gaussian mean)."""
    if _discrete(space):
        return torch.argmax(head_out, dim=-1) + int(space.start)
    return head_out
