"""Bernoulli multi-armed bandits (Duan et al. 2016, RL^2 section 4.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.core import Task, TaskError, TaskFamily, TaskSpace, Uniform


@dataclass(frozen=True)
class BanditTask(Task):
    """The success probability of every arm."""

    family = "Bandit"
    probs: tuple[float, ...] = (0.5,) * 5


def bandit_space(k: int = 5) -> TaskSpace:
    """``k`` arm probabilities, each ``U[0, 1]``. Probabilities have no outside, so no ood split."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise TaskError(f"k={k!r} (number of arms) must be a positive integer")
    return TaskSpace(BanditTask, [Uniform("probs", (int(k),), 0.0, 1.0)])


def _check_k(k: int) -> int:
    bandit_space(k)  # validates k
    return int(k)


class BernoulliBanditEnv(TaskFamily, gym.Env):
    """A ``k``-armed Bernoulli bandit; every episode is a single pull.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `probs` | U[0, 1]^k | train/test by hash; no ood split |

    ## Dynamics (RL^2 settings)
    - Observation: a constant ``[0.0]`` (the bandit has no state; a meta-learner sees the
      previous action and reward through the RL^2 trial wrapper).
    - Action: an arm in ``Discrete(k)``.
    - Reward: 1 with probability ``probs[a]``, else 0 (one uniform ``u`` per step, reward
      ``u < probs[a]``).
    - Every episode terminates after its one pull; a trial of ``n`` pulls is ``n`` episodes on the
      same task.

    References (k=5, mean total reward of a trial): random ``n/2``; Bayes-optimal 6.66 for
    n=10 (see ``meta_rl_envs.references``).
    """

    metadata = {"render_modes": []}

    def __init__(self, k: int = 5):
        self.k = _check_k(k)
        self.task_space = bandit_space(self.k)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(self.k)
        self.set_task(BanditTask((0.5,) * self.k))

    def _on_task_set(self) -> None:
        self.probs = self.task.array("probs")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._take_task_option(options)
        return np.zeros(1, np.float32), self.task_info()

    def step(self, action):
        a = int(action)
        if not 0 <= a < self.k:
            raise ValueError(f"action={action!r} is not an arm; allowed 0..{self.k - 1}")
        u = self._noise("step", 1)
        reward = float(u[0] < self.probs[a])
        return np.zeros(1, np.float32), reward, True, False, self.task_info()


class BatchedBernoulliBandit(BatchedEnv):
    """``BernoulliBanditEnv`` for ``num_tasks x envs_per_task`` rows at once, on any device.

    ``step`` takes a ``(num_envs,)`` integer tensor of arms."""

    def __init__(self, num_tasks: int, envs_per_task: int = 1, device: str = "cpu", k: int = 5):
        super().__init__(num_tasks, envs_per_task, device)
        self.k = _check_k(k)
        self.horizon = 1
        self.task_space = bandit_space(self.k)
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.single_action_space = gym.spaces.Discrete(self.k)
        self._obs = torch.zeros(self.num_envs, 1, device=self.device)

    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        self.probs = params["probs"]

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        return self._obs.clone()

    def _step(self, action: torch.Tensor):
        u = self._rand("step", 1)[:, 0]
        p = self.probs.gather(1, action.long().reshape(-1, 1))[:, 0]
        reward = (u < p).to(torch.float32)
        terminated = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return self._obs.clone(), reward, terminated
