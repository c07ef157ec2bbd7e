"""The sinusoid regression family of the MAML paper (Finn et al. 2017).

A task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, inputs
``x ~ U[-5, 5]``; the learner is an MLP 1-40-40-1 trained on K points (the support set) and
scored by MSE on fresh points of the same task (the query set). Sampling is batched over a
meta-batch of tasks and draws only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SinusoidBatch", "SinusoidFamily"]


@dataclass(frozen=True)
class SinusoidBatch:
    """A meta-batch of sinusoid tasks: every tensor has leading task axis T."""

    xs: Tensor
    """support inputs [T, K, 1]"""
    ys: Tensor
    """support targets [T, K, 1]"""
    xq: Tensor
    """query inputs [T, Q, 1]"""
    yq: Tensor
    """query targets [T, Q, 1]"""
    amplitude: Tensor
    """[T]"""
    phase: Tensor
    """[T]"""

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        return self.xs, self.ys

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        return self.xq, self.yq


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name}={value!r} must be a finite (low, high) pair with low <= high")
    return lo, hi


@dataclass(frozen=True)
class SinusoidFamily:
    """The task distribution; ``sample`` draws a meta-batch of (support, query) sets."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for name in ("amplitude", "phase", "x_range"):
            object.__setattr__(self, name, _check_range(name, getattr(self, name)))

    def sample(
        self,
        num_tasks: int,
        k_shot: int,
        q_queries: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> SinusoidBatch:
        """``num_tasks`` tasks with ``k_shot`` support and ``q_queries`` query points each."""
        for name, v, low in (("num_tasks", num_tasks, 1), ("k_shot", k_shot, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r} must be an integer >= {low}")
        if not isinstance(q_queries, int) or isinstance(q_queries, bool) or q_queries < 0:
            raise ValueError(f"q_queries={q_queries!r} must be an integer >= 0")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

        def uniform(shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
            u = torch.rand(shape, generator=generator, dtype=torch.float64)
            return (bounds[0] + (bounds[1] - bounds[0]) * u).to(dtype)

        amp = uniform((num_tasks,), self.amplitude)
        phase = uniform((num_tasks,), self.phase)
        x = uniform((num_tasks, k_shot + q_queries, 1), self.x_range)
        y = amp[:, None, None] * torch.sin(x - phase[:, None, None])
        x, y, amp, phase = (t.to(device) for t in (x, y, amp, phase))
        return SinusoidBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:], amp, phase)

    def curve(self, batch: SinusoidBatch, x: Tensor) -> Tensor:
        """The true functions of ``batch``'s tasks at inputs ``x`` [T, M, 1]."""
        return batch.amplitude[:, None, None] * torch.sin(x - batch.phase[:, None, None])
