"""The belief picture of a VariBAD agent on a grid family (``meta-rl evaluate`` writes it as
``belief.png``): the decoded probability that each cell pays (is the goal) after every step of
one trial, one row per episode, beside the path walked so far.

:class:`BeliefStrip` is the typed value (a field of :class:`meta_rl.report.Report`, kept in
``report.json``); :func:`plot_belief` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BELIEF_FILE", "BeliefStrip", "plot_belief", "record_belief"]

BELIEF_FILE = "belief.png"


@dataclass(frozen=True)
class BeliefStrip:
    """One trial on one task: ``probs[t]`` the decoded hit probability of every cell after
    ``t`` steps (``t = 0``: the prior), ``start_cells[t]`` / ``end_cells[t]`` where step ``t``
    began and ended, its reward, and whether it began an episode. Cells index a grid of shape
    ``grid`` row-major (``x * ny + y``)."""

    grid: tuple[int, ...]
    probs: tuple[tuple[float, ...], ...]
    start_cells: tuple[int, ...]
    end_cells: tuple[int, ...]
    rewards: tuple[float, ...]
    episode_start: tuple[bool, ...]
    hit_threshold: float
    task: dict[str, Any]

    @classmethod
    def of(cls, belief: dict[str, Any], task: dict[str, Any]) -> BeliefStrip:
        """From arrays: ``probs`` ``[T + 1, cells]``, ``start_cells``, ``end_cells``,
        ``rewards``, ``episode_start`` ``[T]``, ``grid``, ``hit_threshold``."""
        return cls(
            tuple(int(g) for g in belief["grid"]),
            tuple(tuple(float(p) for p in row) for row in np.asarray(belief["probs"])),
            tuple(int(c) for c in belief["start_cells"]),
            tuple(int(c) for c in belief["end_cells"]),
            tuple(float(r) for r in belief["rewards"]),
            tuple(bool(b) for b in belief["episode_start"]),
            float(belief["hit_threshold"]),
            dict(task),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BeliefStrip:
        return cls.of({**d, "probs": np.asarray(d["probs"], dtype=float)}, d["task"])

    def episodes(self) -> list[range]:
        """The steps of each episode of the trial."""
        starts = [t for t, s in enumerate(self.episode_start) if s or t == 0]
        return [range(a, b) for a, b in zip(starts, [*starts[1:], len(self.rewards)], strict=True)]


def record_belief(agent: Any, task: Any, seed: int = 0, deterministic: bool = False) -> BeliefStrip:
    """One trial of a VariBAD agent (:class:`meta_rl.agent.VariBADAgent` with a "cells" reward
    decoder) on ``task`` from a fresh belief, decoded after every step."""
    import torch

    from meta_rl.rl.rl2 import rollout
    from meta_rl.rl.varibad import cell_belief

    env = agent.make_trial_env(1, agent.episodes_per_trial)
    env.set_tasks([task])
    env.env.reset(seed=seed)
    gen = torch.Generator(device=agent.device).manual_seed(seed)
    trials = rollout(env, agent.policy, gen, deterministic)
    d, model = agent.policy.obs_dim, agent.model
    arrays = {
        "probs": cell_belief(model, trials, agent.policy)[:, 0].cpu().numpy(),
        "start_cells": model.cells(trials.obs[:, 0, :d]).cpu().numpy(),
        "end_cells": model.cells(trials.next_obs[:, 0, :d]).cpu().numpy(),
        "rewards": trials.rewards[:, 0].cpu().numpy(),
        "episode_start": trials.obs[:, 0, -1].cpu().numpy() > 0,
        "grid": model.grid,
        "hit_threshold": float(model.hit_threshold),
    }
    return BeliefStrip.of(arrays, task.to_dict())


def plot_belief(strip: BeliefStrip, path: str | Path) -> Path:
    """Draw ``strip``: a row per episode, a panel per step (the belief when the episode began,
    then after each of its steps), the path of the episode so far in white, the current cell a
    white dot, cells that paid more than the hit threshold a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nx, ny = strip.grid[0], (strip.grid[1] if len(strip.grid) > 1 else 1)
    probs = np.asarray(strip.probs).reshape(len(strip.probs), nx, ny)
    episodes = strip.episodes()
    cols = max(len(e) for e in episodes) + 1
    fig, axes = plt.subplots(len(episodes), cols, figsize=(0.9 * cols, 1.0 * len(episodes) + 0.6),
                             dpi=100, squeeze=False)  # fmt: skip
    paid = {
        c for c, r in zip(strip.end_cells, strip.rewards, strict=True) if r > strip.hit_threshold
    }
    image = None
    for row, steps in enumerate(episodes):
        path_xy = [divmod(strip.start_cells[steps.start], ny)]
        for k in range(cols):
            ax = axes[row, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k > len(steps):
                ax.axis("off")
                continue
            t = steps.start + k  # belief after t steps of the trial
            if k > 0:
                path_xy.append(divmod(strip.end_cells[t - 1], ny))
            image = ax.imshow(probs[t].T, origin="lower", vmin=0, vmax=1, cmap="viridis")
            xs, ys = zip(*path_xy, strict=True)
            ax.plot(xs, ys, "-", color="white", lw=1)
            ax.plot(xs[-1], ys[-1], "o", color="white", ms=4)
            for c in paid:
                ax.plot(*divmod(c, ny), "*", color="red", ms=6)
            if row == 0:
                ax.set_title("prior" if k == 0 else f"t={k}", fontsize=7)
        axes[row, 0].set_ylabel(f"episode {row + 1}", fontsize=7)
    fig.suptitle(f"decoded P(cell pays) per step; task {strip.task}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, pad=0.01)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
