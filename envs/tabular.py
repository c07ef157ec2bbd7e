"""Random tabular MDPs (Duan et al. 2016, RL^2 section 4.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.core import Dirichlet, Normal, Task, TaskError, TaskFamily, TaskSpace

REWARD_PRIOR_MEAN = 1.0  # mu(s, a) ~ N(1, 1)
REWARD_PRIOR_STD = 1.0
REWARD_NOISE_STD = 1.0  # r ~ N(mu(s, a), 1)
TRANSITION_ALPHA = 1.0  # P(.|s, a) ~ Dirichlet(1)
INITIAL_STATE = 0


@dataclass(frozen=True)
class TabularMDPTask(Task):
    """Mean rewards ``reward_mean[s, a]`` and transition rows ``transitions[s, a, s']``, both
    flattened row-major."""

    family = "TabularMDP"
    reward_mean: tuple[float, ...] = ()
    transitions: tuple[float, ...] = ()


def _check_sizes(num_states: int, num_actions: int, horizon: int) -> tuple[int, int, int]:
    for name, v in (("num_states", num_states), ("num_actions", num_actions), ("horizon", horizon)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise TaskError(f"{name}={v!r} must be a positive integer")
    return int(num_states), int(num_actions), int(horizon)


def mdp_space(num_states: int = 10, num_actions: int = 5) -> TaskSpace:
    """RL^2's prior: ``mu ~ N(1, 1)`` per (s, a), transition rows ``~ Dirichlet(1)``."""
    s, a, _ = _check_sizes(num_states, num_actions, 1)
    return TaskSpace(
        TabularMDPTask,
        [
            Normal("reward_mean", (s, a), REWARD_PRIOR_MEAN, REWARD_PRIOR_STD),
            Dirichlet("transitions", (s, a, s), TRANSITION_ALPHA),
        ],
    )


def uniform_mdp(num_states: int, num_actions: int) -> TabularMDPTask:
    """A placeholder task: prior-mean rewards, uniform transitions."""
    s, a = num_states, num_actions
    return TabularMDPTask((REWARD_PRIOR_MEAN,) * (s * a), (1.0 / s,) * (s * a * s))


def gaussian(u1, u2):
    """Box-Muller: a standard normal from two uniforms in [0, 1) (numpy or torch)."""
    if isinstance(u1, torch.Tensor):
        return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


class TabularMDPEnv(TaskFamily, gym.Env):
    """A random finite MDP with Gaussian rewards.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `reward_mean` | N(1, 1) per (s, a), shape (S, A) | train/test by hash; no ood split |
    | `transitions` | Dirichlet(1) per row P(.\\|s, a), shape (S, A, S) | as above |

    ## Dynamics (RL^2 settings: S=10, A=5, T=10)
    - Every episode starts in state 0 (as in the RL^2 authors' random tabular MDP env, which resets
      the state to 0 at each episode start); observation = one-hot state (float32, shape (S,)).
    - Action ``a`` in ``Discrete(A)``; reward ``mu(s, a) + z`` with ``z ~ N(0, 1)``; next state
      drawn from ``transitions[s, a]``.
    - Never terminates; truncated after ``horizon`` steps. A trial of ``n`` episodes on the same
      task is built by the RL^2 trial wrapper.
    - Noise: three uniforms per step (two for the Box-Muller reward noise, one for the
      inverse-CDF next state), none at reset.

    References (mean total reward of a trial): random ``10 n``; PSRL 138.1 / 408.8 for
    n = 10 / 25 in the RL^2 paper, whose PSRL used a reward prior mean of 0 rather than the true 1
    (see ``meta_rl_envs.references.tabular_psrl``).
    """

    metadata = {"render_modes": []}

    def __init__(self, num_states: int = 10, num_actions: int = 5, horizon: int = 10):
        self.num_states, self.num_actions, self.horizon = _check_sizes(
            num_states, num_actions, horizon
        )
        self.task_space = mdp_space(self.num_states, self.num_actions)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.num_states,), np.float32)
        self.action_space = gym.spaces.Discrete(self.num_actions)
        self.set_task(uniform_mdp(self.num_states, self.num_actions))
        self.state = INITIAL_STATE
        self.t = 0

    def _on_task_set(self) -> None:
        s, a = self.num_states, self.num_actions
        self.reward_mean = self.task.array("reward_mean").reshape(s, a)
        self.cdf = np.cumsum(self.task.array("transitions").reshape(s, a, s), axis=-1)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_states, np.float32)
        obs[self.state] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._take_task_option(options)
        self.state = INITIAL_STATE
        self.t = 0
        return self._obs(), self.task_info()

    def step(self, action):
        a = int(action)
        if not 0 <= a < self.num_actions:
            raise ValueError(
                f"action={action!r} is not an action; allowed 0..{self.num_actions - 1}"
            )
        u = self._noise("step", 3)
        reward = float(self.reward_mean[self.state, a] + REWARD_NOISE_STD * gaussian(u[0], u[1]))
        nxt = int(np.searchsorted(self.cdf[self.state, a], u[2], side="right"))
        self.state = min(nxt, self.num_states - 1)  # guards a last cdf entry rounded below 1
        self.t += 1
        truncated = self.t >= self.horizon
        return self._obs(), reward, False, truncated, self.task_info()


class BatchedTabularMDP(BatchedEnv):
    """``TabularMDPEnv`` for ``num_tasks x envs_per_task`` rows at once, on any device.

    ``step`` takes a ``(num_envs,)`` integer tensor of actions."""

    def __init__(
        self,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        num_states: int = 10,
        num_actions: int = 5,
        horizon: int = 10,
    ):
        super().__init__(num_tasks, envs_per_task, device)
        self.num_states, self.num_actions, self.horizon = _check_sizes(
            num_states, num_actions, horizon
        )
        self.task_space = mdp_space(self.num_states, self.num_actions)
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (self.num_states,), np.float32)
        self.single_action_space = gym.spaces.Discrete(self.num_actions)
        self.state = torch.full(
            (self.num_envs,), INITIAL_STATE, dtype=torch.long, device=self.device
        )
        self._rows = torch.arange(self.num_envs, device=self.device)

    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        n, s, a = self.num_envs, self.num_states, self.num_actions
        self.reward_mean = params["reward_mean"].reshape(n, s, a)
        self.cdf = params["transitions"].reshape(n, s, a, s).cumsum(-1)

    def _obs(self) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.state, self.num_states).to(torch.float32)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.state = torch.where(mask, torch.full_like(self.state, INITIAL_STATE), self.state)
        return self._obs()

    def _step(self, action: torch.Tensor):
        action = action.long().reshape(-1)
        u = self._rand("step", 3)
        mean = self.reward_mean[self._rows, self.state, action]
        reward = mean + REWARD_NOISE_STD * gaussian(u[:, 0], u[:, 1])
        cdf = self.cdf[self._rows, self.state, action]  # (num_envs, S)
        nxt = torch.searchsorted(cdf, u[:, 2:3].to(cdf.dtype).contiguous(), right=True)[:, 0]
        self.state = nxt.clamp(max=self.num_states - 1)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self._obs(), reward, terminated
