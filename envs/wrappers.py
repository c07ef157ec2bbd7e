"""RL^2 trials (Duan et al. 2016): ``n`` episodes of one task seen as one long episode.

A meta-learner with memory (a recurrent policy) adapts by remembering what happened earlier in
the trial. To make that possible the observation carries the previous step's action, reward and
a done flag, and the policy's memory persists across the episode ends inside a trial; it resets
only between trials.

The trial observation is the flat float32 vector::

    [obs (flattened), previous action, previous reward, previous done]

- previous action: one-hot for a ``Discrete`` action space, the raw action (as given, not
  clipped) for a 1-D ``Box``; zeros at the first step of a trial;
- previous reward: the reward of the previous step (0 at the first step of a trial);
- previous done: 1 when the previous step ended an episode, so this observation is the first of
  the trial's next episode (0 at the first step of a trial).

Two wrappers, one layout:

- :class:`TrialWrapper` (``gymnasium.Wrapper``) for any task family: one trial is one
  Gymnasium episode (SB3 and other single-env libraries see a trial as one episode). Each
  ``reset`` starts a trial on the task given in ``options={"task": ...}``, else on a task drawn
  from the family's task space (``split``) with the wrapper's seeded generator.
- :class:`BatchedTrialEnv` over any env of the batched contract
  (:class:`~meta_rl_envs.batched.BatchedTaskEnv`: a torch twin, or
  :class:`~meta_rl_envs.vector.VectorTaskEnv` for a family without one): one trial per row
  between two ``reset`` calls.
  Rows whose trial is over idle (reward 0, ``info["active"]`` false) until the next ``reset``;
  episodes may differ in length (a navigation episode ends early at the goal), so rows finish
  their trials at different steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedTaskEnv
from meta_rl_envs.core import Task, TaskError, as_generator

__all__ = ["BatchedTrialEnv", "TrialWrapper", "action_encoding_size", "trial_observation_space"]


def _check_episodes(episodes_per_trial: int) -> int:
    if (
        not isinstance(episodes_per_trial, (int, np.integer))
        or isinstance(episodes_per_trial, bool)
        or episodes_per_trial < 1
    ):
        raise TaskError(f"episodes_per_trial={episodes_per_trial!r} must be a positive integer")
    return int(episodes_per_trial)


def _check_spaces(obs_space: gym.Space, action_space: gym.Space) -> None:
    if not isinstance(obs_space, gym.spaces.Box):
        raise TaskError(
            f"observation space {obs_space!r} is not supported by the trial wrapper; allowed: "
            "gymnasium.spaces.Box"
        )
    if isinstance(action_space, gym.spaces.Discrete):
        return
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return
    raise TaskError(
        f"action space {action_space!r} is not supported by the trial wrapper; allowed: "
        "gymnasium.spaces.Discrete, 1-D gymnasium.spaces.Box"
    )


def action_encoding_size(action_space: gym.Space) -> int:
    """Numbers the previous action takes in a trial observation (one-hot size or Box size)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    return int(np.prod(action_space.shape))


def trial_observation_space(obs_space: gym.Space, action_space: gym.Space) -> gym.spaces.Box:
    """The Box of ``[obs, previous action, previous reward, previous done]``."""
    _check_spaces(obs_space, action_space)
    low = np.asarray(obs_space.low, np.float32).reshape(-1)
    high = np.asarray(obs_space.high, np.float32).reshape(-1)
    if isinstance(action_space, gym.spaces.Discrete):
        a_low = np.zeros(int(action_space.n), np.float32)
        a_high = np.ones(int(action_space.n), np.float32)
    else:  # the raw (unclipped) action a policy emitted
        a_low = np.full(action_space.shape, -np.inf, np.float32)
        a_high = np.full(action_space.shape, np.inf, np.float32)
    low = np.concatenate([low, a_low, np.array([-np.inf, 0.0], np.float32)])
    high = np.concatenate([high, a_high, np.array([np.inf, 1.0], np.float32)])
    return gym.spaces.Box(low, high, dtype=np.float32)


# ============================================================================================
# Gymnasium: one trial = one episode
# ============================================================================================
class TrialWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A trial of ``episodes_per_trial`` episodes of one task as one Gymnasium episode.

    ``env`` is a task family (``set_task``/``task_space``, e.g. ``gym.make("MetaRL/Bandit-v0")``).
    Inside a trial an inner episode end does not end the wrapper's episode: the inner env is
    reset on the same task and the next observation has its done flag set. The last inner
    episode's ``terminated`` / ``truncated`` end the trial. ``info`` carries ``"trial_episode"``
    (index of the inner episode the observation belongs to), ``"episode_done"`` (this step ended
    an inner episode) and, where it did, ``"final_obs"`` (that episode's last inner observation).
    """

    def __init__(self, env: gym.Env, episodes_per_trial: int, split: str = "train") -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, episodes_per_trial=episodes_per_trial, split=split
        )
        gym.Wrapper.__init__(self, env)
        self.episodes_per_trial = _check_episodes(episodes_per_trial)
        self.split = split
        base = env.unwrapped
        if not hasattr(base, "task_space") or not hasattr(base, "set_task"):
            raise TaskError(
                f"env {base!r} is not a task family (it needs task_space and set_task); build one "
                "with meta_rl_envs.builder or a TaskFamily class"
            )
        _check_spaces(env.observation_space, env.action_space)
        self.observation_space = trial_observation_space(env.observation_space, env.action_space)
        self._discrete = isinstance(env.action_space, gym.spaces.Discrete)
        self._act_size = action_encoding_size(env.action_space)
        self._task_rng = np.random.default_rng()
        self._episode = 0
        self._task: Task | None = None

    def _encode(self, obs, action, reward: float, done: bool) -> np.ndarray:
        prev = np.zeros(self._act_size, np.float32)
        if action is not None:
            if self._discrete:
                prev[int(action) - int(self.env.action_space.start)] = 1.0
            else:
                prev[:] = np.asarray(action, np.float32).reshape(-1)
        tail = np.array([reward, float(done)], np.float32)
        return np.concatenate([np.asarray(obs, np.float32).reshape(-1), prev, tail])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a new trial: the first episode, previous action / reward / done zeroed."""
        if seed is not None:
            self._task_rng = np.random.default_rng(seed)
        options = dict(options or {})
        task = options.pop("task", None)
        if task is None:
            task = self.env.unwrapped.task_space.sample(1, self._task_rng, self.split)[0]
        self._task = task
        self._episode = 0
        obs, info = self.env.reset(seed=seed, options={**options, "task": task})
        info = {**info, "trial_episode": 0, "episode_done": False}
        return self._encode(obs, None, 0.0, False), info

    def step(self, action):
        """Step the inner env; an inner episode's end starts the next one inside the trial, the
        trial ends after its last episode."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        episode_done = bool(terminated or truncated)
        info["episode_done"] = episode_done
        trial_over = False
        if episode_done:
            self._episode += 1
            info["final_obs"] = obs
            if self._episode >= self.episodes_per_trial:
                trial_over = True
            else:
                obs, _ = self.env.reset(options={"task": self._task})
        info["trial_episode"] = min(self._episode, self.episodes_per_trial - 1)
        trial_obs = self._encode(obs, action, float(reward), episode_done)
        if trial_over:
            return trial_obs, float(reward), bool(terminated), bool(truncated), info
        return trial_obs, float(reward), False, False, info


# ============================================================================================
# Torch-batched: one trial per row between resets
# ============================================================================================
class BatchedTrialEnv:
    """Trials of ``episodes_per_trial`` episodes on every row of a batched family.

    ``reset()`` starts one trial per row (on the tasks of the last ``set_tasks``); ``step``
    returns ``(obs, reward, terminated, truncated, info)`` where ``terminated`` / ``truncated``
    mark the end of a row's *trial* (the last inner episode's flags). ``info`` holds:

    - ``"episode_done"`` [N] bool: this step ended an inner episode of an active row;
    - ``"active"`` [N] bool: the row was inside its trial at this step (its reward counts);
    - ``"trial_episode"`` [N] long: index of the inner episode the returned observation belongs to;
    - ``"final_obs"`` [N, D]: the trial observation of the finished inner episode's last state
      (equal to ``obs`` where no episode ended).

    After a row's trial ended it idles: reward 0, ``active`` false, observation frozen.
    ``max_trial_length`` = ``episodes_per_trial * horizon`` bounds a trial's steps.
    """

    def __init__(self, env: BatchedTaskEnv, episodes_per_trial: int) -> None:
        if not isinstance(env, BatchedTaskEnv):
            raise TaskError(
                f"env={env!r} has no batched-env contract (make one with meta_rl_envs.make_env: "
                "a torch twin, or a VectorTaskEnv for a family without one); use TrialWrapper "
                "for a single Gymnasium env"
            )
        self.env = env
        self.episodes_per_trial = _check_episodes(episodes_per_trial)
        _check_spaces(env.single_observation_space, env.single_action_space)
        self.single_action_space = env.single_action_space
        self.single_observation_space = trial_observation_space(
            env.single_observation_space, env.single_action_space
        )
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, env.num_envs
        )
        self.action_space = env.action_space
        self.num_envs, self.num_tasks = env.num_envs, env.num_tasks
        self.envs_per_task, self.device = env.envs_per_task, env.device
        self.horizon = env.horizon
        self.max_trial_length = self.episodes_per_trial * env.horizon
        self._discrete = isinstance(env.single_action_space, gym.spaces.Discrete)
        self._act_size = action_encoding_size(env.single_action_space)
        n = self.num_envs
        self.episode = torch.zeros(n, dtype=torch.long, device=self.device)
        self.active = torch.ones(n, dtype=torch.bool, device=self.device)
        self._obs = torch.zeros(n, self.single_observation_space.shape[0], device=self.device)

    # -- tasks ---------------------------------------------------------------------------
    @property
    def task_space(self):
        """The inner family's task space."""
        return self.env.task_space

    @property
    def tasks(self) -> list[Task]:
        """The tasks of the rows."""
        return self.env.tasks

    def sample_tasks(self, n: int, rng, split: str = "train") -> list[Task]:
        """``n`` seeded tasks of ``split`` from the inner family."""
        return self.env.sample_tasks(n, as_generator(rng), split)

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """Set the inner env's tasks (one per row)."""
        self.env.set_tasks(tasks)

    # -- stepping ------------------------------------------------------------------------
    def _encode(self, obs, action, reward, done) -> torch.Tensor:
        n = self.num_envs
        obs = obs.reshape(n, -1).to(torch.float32)
        if action is None:
            prev = torch.zeros(n, self._act_size, device=self.device)
        elif self._discrete:
            start = int(self.single_action_space.start)
            prev = torch.nn.functional.one_hot(action.long().reshape(n) - start, self._act_size)
            prev = prev.to(torch.float32)
        else:
            prev = action.reshape(n, -1).to(torch.float32)
        return torch.cat([obs, prev, reward.reshape(n, 1), done.reshape(n, 1).float()], dim=-1)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Start a trial on every row; returns the first trial observation ``[N, D]``."""
        obs, info = self.env.reset(seed=seed)
        zero = torch.zeros(self.num_envs, device=self.device)
        self.episode.zero_()
        self.active.fill_(True)
        self._obs = self._encode(obs, None, zero, zero)
        info = {**info, "trial_episode": self.episode.clone(), "active": self.active.clone()}
        return self._obs, info

    def step(self, action: torch.Tensor):
        """Step every row's trial: ``(obs, reward, terminated, truncated, info)``; ``info`` says
        which rows are still in their trial and whose inner episode ended."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        active = self.active
        episode_done = (terminated | truncated) & active
        reward = torch.where(active, reward.to(torch.float32), torch.zeros_like(reward))
        self.episode = self.episode + episode_done.long()
        trial_over = episode_done & (self.episode >= self.episodes_per_trial)
        new_obs = self._encode(obs, action, reward, episode_done.float())
        final_obs = self._encode(info["final_obs"], action, reward, episode_done.float())
        # Rows past their trial keep their last observation.
        keep = ~active
        new_obs = torch.where(keep.unsqueeze(-1), self._obs, new_obs)
        final_obs = torch.where(keep.unsqueeze(-1), self._obs, final_obs)
        self._obs = new_obs
        self.active = active & ~trial_over
        out_info = {
            "episode_done": episode_done,
            "active": active,
            "trial_episode": self.episode.clamp(max=self.episodes_per_trial - 1),
            "final_obs": final_obs,
        }
        if "success" in info:  # families that report it (e.g. Meta-World through VectorTaskEnv)
            out_info["success"] = info["success"] & active
        return new_obs, reward, trial_over & terminated, trial_over & ~terminated, out_info
