"""2D point navigation (Finn et al. 2017, MAML section 5.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.core import Task, TaskFamily, TaskSpace, Uniform


@dataclass(frozen=True)
class GoalTask(Task):
    """A goal position ``(x, y)``."""

    family = "PointNav"
    goal: tuple[float, float] = (0.0, 0.0)


def goal_space(radius: float = 0.5) -> TaskSpace:
    # The ood split holds goals beyond the training square: each coordinate in
    # [-2r, -r) or (r, 2r].
    return TaskSpace(
        GoalTask,
        [
            Uniform(
                "goal", (2,), -radius, radius, ood=((-2 * radius, -radius), (radius, 2 * radius))
            )
        ],
    )


class PointNavEnv(TaskFamily, gym.Env):
    """A point in the plane moves toward a hidden goal.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `goal` | U[-0.5, 0.5]^2 | train/test by hash; ood: each coordinate in 0.5 < abs <= 1.0 |

    ## Dynamics (MAML settings)
    - Start at the origin; observation = position (2 floats).
    - Action = displacement, clipped to [-0.1, 0.1]^2.
    - Reward = minus the Euclidean distance to the goal after the move.
    - Terminates when both coordinates are within 0.01 of the goal; truncated at ``horizon``
      (100) steps.

    A policy that never moves scores about -38.3; one that walks straight to the goal about -0.5.
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 100, max_step: float = 0.1, goal_radius: float = 0.5):
        self.horizon = int(horizon)
        self.max_step = float(max_step)
        self.task_space = goal_space(goal_radius)
        bound = self.horizon * self.max_step  # the farthest a point can walk
        self.observation_space = gym.spaces.Box(-bound, bound, (2,), np.float32)
        self.action_space = gym.spaces.Box(-self.max_step, self.max_step, (2,), np.float32)
        self.set_task(GoalTask((0.0, 0.0)))
        self.pos = np.zeros(2)
        self.t = 0

    def _on_task_set(self) -> None:
        self.goal_xy = self.task.array("goal")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._take_task_option(options)
        self.pos = np.zeros(2)
        self.t = 0
        return self.pos.astype(np.float32), self.task_info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -self.max_step, self.max_step)
        self.pos = self.pos + action
        delta = self.pos - self.goal_xy
        reward = -float(np.sqrt((delta**2).sum()))
        self.t += 1
        terminated = bool(np.all(np.abs(delta) < 0.01))
        truncated = self.t >= self.horizon and not terminated
        return self.pos.astype(np.float32), reward, terminated, truncated, self.task_info()


class BatchedPointNav(BatchedEnv):
    """``PointNavEnv`` for ``num_tasks x envs_per_task`` rows at once, on any device."""

    def __init__(
        self,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        horizon: int = 100,
        max_step: float = 0.1,
        goal_radius: float = 0.5,
    ):
        super().__init__(num_tasks, envs_per_task, device)
        self.horizon = int(horizon)
        self.max_step = float(max_step)
        self.task_space = goal_space(goal_radius)
        bound = self.horizon * self.max_step
        self.single_observation_space = gym.spaces.Box(-bound, bound, (2,), np.float32)
        self.single_action_space = gym.spaces.Box(-self.max_step, self.max_step, (2,), np.float32)
        self.pos = torch.zeros(self.num_envs, 2, device=self.device)

    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        self.goal = params["goal"]

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.pos = torch.where(mask.unsqueeze(-1), torch.zeros_like(self.pos), self.pos)
        return self.pos

    def _step(self, action: torch.Tensor):
        self.pos = self.pos + action.clamp(-self.max_step, self.max_step)
        delta = self.pos - self.goal
        reward = -torch.linalg.vector_norm(delta, dim=-1)
        terminated = (delta.abs() < 0.01).all(dim=-1)
        return self.pos, reward, terminated
