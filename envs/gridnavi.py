"""GridNavi (Zintgraf et al. 2020, VariBAD section 5.1): find a hidden goal cell on a small grid.

The agent starts in the corner ``(0, 0)`` of a ``size x size`` grid (5 x 5) and has ``horizon``
(15) steps per episode; the goal is one of the cells other than the start and its three
neighbours ``(0, 1), (1, 0), (1, 1)`` (21 cells on the 5 x 5 grid), uniform. Reward: ``+1`` on
every step that ends on the goal, ``-0.1`` on every other step. A trial is 4 episodes of the same
goal (VariBAD's setting; :class:`meta_rl_envs.wrappers.BatchedTrialEnv` with
``episodes_per_trial=4``), so the agent can search in the first episode and walk straight to the
goal in the others.

Splits: the 21 goals are all training goals (the paper trains and tests on the same 21), so the
task space is a :class:`~meta_rl_envs.core.TrainOnlySpace`: ``train`` only, balanced draws (each
goal ``n // 21`` or ``n // 21 + 1`` times, whole passes in a fresh random order). "Held-out
tasks" on GridNavi are fresh trials of freshly drawn goals (evaluate with ``split="train"``).

References (:func:`gridnavi_references`, on the family's spec): the known-goal oracle, posterior
sampling, random actions, and the Bayes-optimal return under the uniform goal prior, exact by a
search over (position, cells ruled out) (:func:`bayes_optimal_return`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.core import Choice, Task, TaskError, TaskFamily, TrainOnlySpace, as_generator

__all__ = [
    "ACTIONS",
    "BatchedGridNavi",
    "GridGoalTask",
    "GridNaviEnv",
    "bayes_optimal_return",
    "goal_cells",
    "gridnavi_references",
    "gridnavi_space",
]

GOAL_REWARD = 1.0
STEP_REWARD = -0.1
ACTIONS = ("stay", "up", "down", "left", "right")
MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]])
"""(dx, dy) of each action: 0 stay, 1 up (y + 1), 2 down (y - 1), 3 left (x - 1), 4 right"""


def _check_sizes(size: int, horizon: int) -> tuple[int, int]:
    if not isinstance(size, (int, np.integer)) or size < 3:
        raise TaskError(f"size={size!r} must be an integer >= 3 (a goal must lie outside 2 x 2)")
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise TaskError(f"horizon={horizon!r} must be a positive integer")
    return int(size), int(horizon)


def goal_cells(size: int = 5) -> list[tuple[int, int]]:
    """The possible goals ``(x, y)``: every cell but ``(0, 0)`` and its neighbours."""
    return [(x, y) for x in range(size) for y in range(size) if x > 1 or y > 1]


@dataclass(frozen=True)
class GridGoalTask(Task):
    """The goal cell, as its index ``x * size + y`` (a float, like every task field)."""

    family = "GridNavi"
    goal: float = 24.0


def gridnavi_space(size: int = 5) -> TrainOnlySpace:
    """The goal cells, uniform; every goal is a training goal (no test split)."""
    size, _ = _check_sizes(size, 1)
    cells = tuple(float(x * size + y) for x, y in goal_cells(size))
    return TrainOnlySpace(GridGoalTask, [Choice("goal", (), cells)])


class GridNaviEnv(TaskFamily, gym.Env):
    """Walk a grid to a hidden goal cell (VariBAD's GridNavi).

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `goal` | uniform: the 21 cells but (0,0), (0,1), (1,0), (1,1); index x*5+y | train only |

    ## Dynamics (VariBAD settings: 5 x 5, 15 steps)
    - Start at ``(0, 0)``; observation = ``(x, y)`` as float32.
    - Actions ``Discrete(5)``: 0 stay, 1 up (y + 1), 2 down (y - 1), 3 left (x - 1), 4 right
      (x + 1); moves off the grid leave the agent in place.
    - Reward after the move: +1 on the goal, -0.1 elsewhere. The episode never terminates (the
      agent stays on the goal to collect +1 per step); truncated after ``horizon`` steps.
    - Deterministic: no noise.

    References (5 x 5, 15 steps): the known-goal oracle about 11.2 per episode; Bayes-optimal
    first episode exactly 4.0 (see :func:`bayes_optimal_return`).
    """

    metadata = {"render_modes": []}

    def __init__(self, size: int = 5, horizon: int = 15):
        self.size, self.horizon = _check_sizes(size, horizon)
        self.task_space = gridnavi_space(self.size)
        self.observation_space = gym.spaces.Box(0.0, self.size - 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self.set_task(GridGoalTask(float(self.size**2 - 1)))
        self.pos = np.zeros(2, dtype=np.int64)
        self.t = 0

    def _on_task_set(self) -> None:
        g = int(self.task.goal)
        self.goal_xy = np.array([g // self.size, g % self.size])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._take_task_option(options)
        self.pos = np.zeros(2, dtype=np.int64)
        self.t = 0
        return self.pos.astype(np.float32), self.task_info()

    def step(self, action):
        a = int(action)
        if not 0 <= a < len(ACTIONS):
            raise ValueError(f"action={action!r} is not an action; allowed 0..{len(ACTIONS) - 1}")
        self.pos = np.clip(self.pos + MOVES[a], 0, self.size - 1)
        reward = GOAL_REWARD if bool((self.pos == self.goal_xy).all()) else STEP_REWARD
        self.t += 1
        truncated = self.t >= self.horizon
        return self.pos.astype(np.float32), reward, False, truncated, self.task_info()


class BatchedGridNavi(BatchedEnv):
    """``GridNaviEnv`` for ``num_tasks x envs_per_task`` rows at once, on any device.

    ``step`` takes a ``(num_envs,)`` integer tensor of actions."""

    def __init__(
        self,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        size: int = 5,
        horizon: int = 15,
    ):
        super().__init__(num_tasks, envs_per_task, device)
        self.size, self.horizon = _check_sizes(size, horizon)
        self.task_space = gridnavi_space(self.size)
        self.single_observation_space = gym.spaces.Box(0.0, self.size - 1.0, (2,), np.float32)
        self.single_action_space = gym.spaces.Discrete(len(ACTIONS))
        self.pos = torch.zeros(self.num_envs, 2, dtype=torch.long, device=self.device)
        self.moves = torch.as_tensor(MOVES, dtype=torch.long, device=self.device)

    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        g = params["goal"].round().long()
        self.goal = torch.stack([g // self.size, g % self.size], dim=-1)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.pos = torch.where(mask.unsqueeze(-1), torch.zeros_like(self.pos), self.pos)
        return self.pos.to(torch.float32)

    def _step(self, action: torch.Tensor):
        self.pos = (self.pos + self.moves[action.long().reshape(-1)]).clamp(0, self.size - 1)
        hit = (self.pos == self.goal).all(dim=-1)
        reward = torch.where(hit, GOAL_REWARD, STEP_REWARD).to(torch.float32)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self.pos.to(torch.float32), reward, terminated


# ============================================================================================
# References
# ============================================================================================
def found_return(t: np.ndarray | int, horizon: int) -> np.ndarray:
    """Return of an episode whose step ``t`` (1-based) first ends on the goal, staying there
    after: ``t - 1`` steps of -0.1, then ``horizon - t + 1`` steps of +1."""
    t = np.asarray(t, dtype=np.float64)
    return STEP_REWARD * (t - 1) + GOAL_REWARD * (horizon - t + 1)


def oracle_return(goal_xy: np.ndarray, horizon: int) -> np.ndarray:
    """The known-goal oracle's episode return: walk the Manhattan distance, then stay."""
    d = np.abs(np.asarray(goal_xy)).sum(-1)
    return np.where(d <= horizon, found_return(np.maximum(d, 1), horizon), STEP_REWARD * horizon)


BAYES_MAX_STATES = 400_000
"""the exact search gives up (returns None) when a step holds more (position, ruled-out) states"""


def bayes_optimal_return(
    episodes: int = 1, size: int = 5, horizon: int = 15, max_states: int = BAYES_MAX_STATES
) -> float | None:
    """The Bayes-optimal expected total reward of a trial of ``episodes`` episodes under the
    uniform prior over the goal cells, exactly; ``None`` when the search outgrows ``max_states``.

    The only thing a step reveals is whether the agent stands on the goal, and once it does the
    best play is known (stay; walk straight there in later episodes). So a policy is an open-loop
    path until the goal is found, and the expected return is the no-find return plus, for every
    goal cell, the gain of the step that first visits it (``1 / |goals|`` times the return when
    found there, minus the return when never found). A forward search over the states
    (position, set of goal cells visited) keeps the best gain of each state per step; the
    best final gain is the optimum. On 5 x 5 with 15 steps one episode gives exactly 4.0: a
    snake visits a new goal cell at every step from step 2 on, which no path can beat."""
    size, horizon = _check_sizes(size, horizon)
    cells = goal_cells(size)
    g = len(cells)
    bit = np.full(size * size, -1, dtype=np.int64)
    for i, (x, y) in enumerate(cells):
        bit[x * size + y] = i
    miss = STEP_REWARD * horizon
    oracle = oracle_return(np.array(cells), horizon)
    xs, ys = np.divmod(np.arange(size * size), size)
    nxt = np.stack(  # the cell each move leads to (staying never helps before the goal is found)
        [
            np.clip(xs + dx, 0, size - 1) * size + np.clip(ys + dy, 0, size - 1)
            for dx, dy in MOVES[1:]
        ]
    )
    ncell = size * size
    keys = np.zeros(1, dtype=np.int64)  # mask * ncell + position
    gains = np.zeros(1)
    for e in range(episodes):
        later = (episodes - 1 - e) * (oracle - miss)  # [g] gain of the later episodes
        keys = (keys // ncell) * ncell  # every episode starts at (0, 0)
        keys, gains = _best(keys, gains)
        for t in range(1, horizon + 1):
            mask, pos = np.divmod(keys, ncell)
            step_gain = found_return(t, horizon) - miss + later  # [g]
            new_keys, new_gains = [], []
            for to in nxt[:, pos]:
                b = bit[to]
                new = (b >= 0) & (((mask >> np.maximum(b, 0)) & 1) == 0)
                m2 = np.where(new, mask | (1 << np.maximum(b, 0)), mask)
                new_keys.append(m2 * ncell + to)
                new_gains.append(gains + np.where(new, step_gain[np.maximum(b, 0)], 0.0))
            keys, gains = _best(np.concatenate(new_keys), np.concatenate(new_gains))
            if len(keys) > max_states:
                return None
    return float(episodes * miss + gains.max() / g)


def _best(keys: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``keys`` with the largest gain of each."""
    order = np.lexsort((-gains, keys))
    keys, gains = keys[order], gains[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], gains[first]


def _goals_xy(tasks: list[GridGoalTask], size: int) -> np.ndarray:
    g = np.array([int(t.goal) for t in tasks])
    return np.stack([g // size, g % size], axis=-1)


def simulate(
    policy: str,
    goals_xy: np.ndarray,
    episodes: int,
    size: int,
    horizon: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Total reward of a trial of ``episodes`` episodes on each goal ``[M, 2]``, for:

    - ``"posterior_sampling"``: at every episode start draw a goal uniformly from the cells not
      yet ruled out, walk to it along a shortest path (a random move among those that shorten
      it), stay there; a step onto the true goal reveals it (stay, and walk straight to it in
      later episodes);
    - ``"posterior_sampling_resample"``: the same, drawing again as soon as the drawn cell is
      reached and ruled out (within the episode);
    - ``"random"``: uniform random actions."""
    cells = np.array(goal_cells(size))
    m = len(goals_xy)
    possible = np.ones((m, len(cells)), dtype=bool)
    known = np.zeros(m, dtype=bool)
    total = np.zeros(m)

    def draw() -> np.ndarray:
        w = possible / possible.sum(1, keepdims=True)
        u = rng.random((m, 1))
        return cells[np.minimum((w.cumsum(1) < u).sum(1), len(cells) - 1)]

    for _ in range(episodes):
        pos = np.zeros((m, 2), dtype=np.int64)
        target = np.where(known[:, None], goals_xy, draw())
        for _ in range(horizon):
            if policy == "random":
                move = MOVES[rng.integers(len(MOVES), size=m)]
            else:
                if policy == "posterior_sampling_resample":
                    redo = (pos == target).all(-1) & ~known
                    target = np.where(redo[:, None], draw(), target)
                diff = target - pos
                pick_x = rng.random(m) < np.abs(diff[:, 0]) / np.maximum(np.abs(diff).sum(1), 1)
                move = np.where(pick_x[:, None], [1, 0], [0, 1]) * np.sign(diff)
            pos = np.clip(pos + move, 0, size - 1)
            hit = (pos == goals_xy).all(-1)
            total += np.where(hit, GOAL_REWARD, STEP_REWARD)
            seen = (cells[None] == pos[:, None]).all(-1)  # [m, goals]
            possible &= ~seen | hit[:, None]
            known |= hit
            target = np.where(hit[:, None], goals_xy, target)
    return total


SIMULATED = ("posterior_sampling", "posterior_sampling_resample", "random")


def gridnavi_references(
    episodes: int, num_tasks: int, seed: int, split: str = "train", size: int = 5,
    horizon: int = 15, **_: Any,
):  # fmt: skip
    """GridNavi, a trial of ``episodes`` episodes: the known-goal oracle (exact per goal, averaged
    over the ``num_tasks`` goals ``seed`` draws), posterior sampling (two variants) and random
    actions (simulated on those goals), and the Bayes-optimal value under the uniform prior
    (exact; skipped with the reason when the search is too large)."""
    from meta_rl_envs.references import References
    from meta_rl_envs.stats import Estimate, mean_ci95

    size, horizon = _check_sizes(size, horizon)
    tasks = gridnavi_space(size).sample(num_tasks, as_generator(seed), split)
    goals = _goals_xy(tasks, size)
    refs = References(episodes)
    refs.values["oracle"] = mean_ci95(episodes * oracle_return(goals, horizon))
    rng = np.random.default_rng(seed)
    for name in SIMULATED:
        refs.values[name] = mean_ci95(simulate(name, goals, episodes, size, horizon, rng))
    first = bayes_optimal_return(1, size, horizon)
    value = bayes_optimal_return(episodes, size, horizon) if episodes > 1 else first
    if value is not None:
        refs.values["bayes_optimal"] = Estimate.exact_value(value)
        return refs
    refs.skipped["bayes_optimal"] = (
        f"the exact search over {episodes} episodes grows past {BAYES_MAX_STATES:,} states; "
        "bayes_optimal_upper_bound is reported instead"
    )
    if first is not None:  # no later episode can beat the oracle: an upper bound, not the value
        prior_oracle = float(oracle_return(np.array(goal_cells(size)), horizon).mean())
        refs.values["bayes_optimal_upper_bound"] = Estimate.exact_value(
            first + (episodes - 1) * prior_oracle
        )
    return refs
