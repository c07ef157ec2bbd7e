"""Sparse-reward point robot (Rakelly et al. 2019, PEARL section 6.3; rlkit's SparsePointEnv).

A point starts at the origin and must find a goal on the upper half of the unit circle; the
reward is non-zero only within ``goal_radius`` (0.2) of the goal, so a policy that does not
know the goal has to explore to find it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.core import Task, TaskFamily, TaskSpace, Uniform

__all__ = ["SparseGoalTask", "SparsePointEnv", "BatchedSparsePoint", "sparse_goal_space"]


@dataclass(frozen=True)
class SparseGoalTask(Task):
    """A goal at ``angle`` (radians) on the circle of the family's radius."""

    family = "SparsePoint"
    angle: float = 0.5 * math.pi


def sparse_goal_space() -> TaskSpace:
    # train/test: angles on the upper half circle [0, pi] (PEARL's goals); ood: the arcs just
    # beyond both ends, [-pi/4, 0) and (pi, 5pi/4].
    return TaskSpace(
        SparseGoalTask,
        [
            Uniform(
                "angle", (), 0.0, math.pi, ood=((-0.25 * math.pi, 0.0), (math.pi, 1.25 * math.pi))
            )
        ],
    )


def goal_of(angle: np.ndarray | float, radius: float) -> np.ndarray:
    """``(..., 2)`` goal positions of angles."""
    a = np.asarray(angle, dtype=np.float64)
    return radius * np.stack([np.cos(a), np.sin(a)], axis=-1)


def sparse_reward(dist: Any, goal_radius: float) -> Any:
    """PEARL's sparse reward of a distance: ``1 - dist`` within ``goal_radius``, else 0 (numpy or
    torch)."""
    inside = dist <= goal_radius
    if isinstance(dist, torch.Tensor):
        return torch.where(inside, 1.0 - dist, torch.zeros_like(dist))
    return np.where(inside, 1.0 - dist, 0.0)


class SparsePointEnv(TaskFamily, gym.Env):
    """A point in the plane looks for a goal it only feels when close to it.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `angle` | U[0, pi]; goal = r (cos, sin) | train/test by hash; ood: [-pi/4, 0), (pi, 5pi/4] |

    ## Dynamics (PEARL's sparse point robot)
    - Start at the origin; observation = position (2 floats).
    - Action = displacement, clipped to [-0.1, 0.1]^2.
    - Reward = ``1 - d`` when the distance ``d`` to the goal after the move is at most
      ``goal_radius`` (0.2), else 0. ``info["dense_reward"]`` is ``-d`` (PEARL trains its critic
      on it and shows the encoder only the sparse reward); ``info["success"]``: ``d <= 0.2``.
    - Never terminates; truncated at ``horizon`` (20) steps.

    Standing still scores 0; walking straight to the goal about 13.4 (T = 20, radius 1).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        horizon: int = 20,
        max_step: float = 0.1,
        goal_radius: float = 0.2,
        radius: float = 1.0,
    ):
        self.horizon = int(horizon)
        self.max_step = float(max_step)
        self.goal_radius = float(goal_radius)
        self.radius = float(radius)
        self.task_space = sparse_goal_space()
        bound = self.horizon * self.max_step
        self.observation_space = gym.spaces.Box(-bound, bound, (2,), np.float32)
        self.action_space = gym.spaces.Box(-self.max_step, self.max_step, (2,), np.float32)
        self.set_task(SparseGoalTask())
        self.pos = np.zeros(2)
        self.t = 0

    def _on_task_set(self) -> None:
        self.goal_xy = goal_of(self.task.angle, self.radius)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._take_task_option(options)
        self.pos = np.zeros(2)
        self.t = 0
        return self.pos.astype(np.float32), self.task_info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -self.max_step, self.max_step)
        self.pos = self.pos + action
        dist = float(np.sqrt(((self.pos - self.goal_xy) ** 2).sum()))
        reward = float(sparse_reward(dist, self.goal_radius))
        self.t += 1
        truncated = self.t >= self.horizon
        info = {**self.task_info(), "dense_reward": -dist, "success": dist <= self.goal_radius}
        return self.pos.astype(np.float32), reward, False, truncated, info


class BatchedSparsePoint(BatchedEnv):
    """``SparsePointEnv`` for ``num_tasks x envs_per_task`` rows at once, on any device. Its
    step ``info`` also holds ``dense_reward`` and ``success`` (``[N]`` each), and
    :meth:`task_success` the success rate of each task's first episode since ``reset``."""

    def __init__(
        self,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        horizon: int = 20,
        max_step: float = 0.1,
        goal_radius: float = 0.2,
        radius: float = 1.0,
    ):
        super().__init__(num_tasks, envs_per_task, device)
        self.horizon = int(horizon)
        self.max_step = float(max_step)
        self.goal_radius = float(goal_radius)
        self.radius = float(radius)
        self.task_space = sparse_goal_space()
        bound = self.horizon * self.max_step
        self.single_observation_space = gym.spaces.Box(-bound, bound, (2,), np.float32)
        self.single_action_space = gym.spaces.Box(-self.max_step, self.max_step, (2,), np.float32)
        self.pos = torch.zeros(self.num_envs, 2, device=self.device)
        self._clear_success()

    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        angle = params["angle"]
        self.goal = self.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.pos = torch.where(mask.unsqueeze(-1), torch.zeros_like(self.pos), self.pos)
        return self.pos

    def _step(self, action: torch.Tensor):
        self.pos = self.pos + action.clamp(-self.max_step, self.max_step)
        dist = torch.linalg.vector_norm(self.pos - self.goal, dim=-1)
        self._dist = dist
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self.pos, sparse_reward(dist, self.goal_radius), terminated

    def reset(self, seed: int | None = None):
        out = super().reset(seed)
        self._clear_success()
        return out

    def step(self, action: torch.Tensor):
        obs, reward, terminated, truncated, info = super().step(action)
        success = self._dist <= self.goal_radius
        self._success |= success & self._alive
        self._alive &= ~(terminated | truncated)
        info.update(dense_reward=-self._dist, success=success)
        return obs, reward, terminated, truncated, info

    def _clear_success(self) -> None:
        self._success = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._alive = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    def task_success(self) -> np.ndarray:
        rows = self._success.float().reshape(self.num_tasks, self.envs_per_task)
        return rows.mean(1).cpu().numpy()
