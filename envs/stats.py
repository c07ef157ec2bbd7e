"""A mean with its standard error: the one ``mean_ci95`` of meta-rl (numpy; tensors accepted).

The families' reference solvers (:mod:`meta_rl_envs.references`), the RL^2 and few-shot
evaluations and the adaptation report all summarise per-task (or per-episode) numbers with it,
so every "mean ± 95% CI" in meta-rl means the same thing: the normal approximation
``mean ± 1.96 * std(ddof=1) / sqrt(n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate", "mean_ci95"]


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error over ``num`` independent samples.

    ``exact``: the value is computed exactly (``se = 0``, ``num = 0``), not estimated.
    ``se`` is NaN for a single sample (and the mean too for none)."""

    mean: float
    se: float
    num: int
    exact: bool = False

    @property
    def ci95(self) -> float:
        """Half-width of the normal 95% confidence interval of the mean (``se`` itself when it
        is NaN, so results holding one compare equal across runs, as ``math.nan`` does)."""
        return 1.96 * self.se if not math.isnan(self.se) else self.se

    @classmethod
    def exact_value(cls, value: float) -> Estimate:
        """An exactly computed value (``se = 0``, ``exact = True``)."""
        return cls(float(value), 0.0, 0, exact=True)

    def scaled(self, factor: float) -> Estimate:
        """The estimate of ``factor`` times the quantity (e.g. a per-episode return times the
        episodes of a trial)."""
        return Estimate(self.mean * factor, self.se * abs(factor), self.num, self.exact)

    def to_dict(self) -> dict[str, float]:
        """``mean``, ``se``, ``ci95``, ``num`` (and ``exact``) as JSON-able values."""
        return {"mean": self.mean, "se": self.se, "ci95": self.ci95, "num": self.num}


def mean_ci95(values: Any) -> Estimate:
    """Mean, standard error and 95% confidence half-width (``.ci95``) of ``values`` (a sequence,
    numpy array or torch tensor of numbers, flattened)."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(x.mean()), se, n)
