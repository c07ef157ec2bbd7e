"""RL^2 trial wrappers: observation layout, episode/trial boundaries, batched vs Gymnasium."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from meta_rl_envs import make_batched
from meta_rl_envs.bandits import BanditTask
from meta_rl_envs.core import TaskError
from meta_rl_envs.wrappers import BatchedTrialEnv, TrialWrapper


def test_gym_bandit_trial_layout_and_boundaries():
    env = TrialWrapper(gym.make("MetaRL/Bandit-v0"), episodes_per_trial=3)
    task = BanditTask((1.0, 0.0, 0.0, 0.0, 0.0))
    obs, info = env.reset(seed=0, options={"task": task})
    assert env.observation_space.shape == (1 + 5 + 2,)
    np.testing.assert_array_equal(obs, np.zeros(8, np.float32))
    assert info["trial_episode"] == 0
    # Pull arm 0 (always pays) then arm 3 (never pays); every pull ends an inner episode.
    obs, r, term, trunc, info = env.step(0)
    np.testing.assert_array_equal(obs, [0, 1, 0, 0, 0, 0, 1, 1])
    assert (r, term, trunc, info["episode_done"], info["trial_episode"]) == (
        1.0,
        False,
        False,
        True,
        1,
    )
    obs, r, term, trunc, _ = env.step(3)
    np.testing.assert_array_equal(obs, [0, 0, 0, 0, 1, 0, 0, 1])
    assert (r, term, trunc) == (0.0, False, False)
    obs, r, term, trunc, info = env.step(0)  # third episode ends the trial
    assert (r, term, trunc, info["trial_episode"]) == (1.0, True, False, 2)
    assert env.get_wrapper_attr("task") == task  # the inner env kept the trial's task


def test_gym_trial_samples_seeded_tasks_and_passes_checker():
    env = TrialWrapper(gym.make("MetaRL/Bandit-v0"), episodes_per_trial=2, split="test")
    env.reset(seed=5)
    a = env.env.unwrapped.get_task()
    env.reset(seed=5)
    assert env.env.unwrapped.get_task() == a
    env.reset()
    assert env.env.unwrapped.get_task() != a  # a new trial draws a new task
    check_env(TrialWrapper(gym.make("MetaRL/TabularMDP-v0"), 2), skip_render_check=True)
    check_env(TrialWrapper(gym.make("MetaRL/PointNav-v0"), 2), skip_render_check=True)


def test_gym_tabular_trial_resets_inner_episodes_on_same_task():
    env = TrialWrapper(gym.make("MetaRL/TabularMDP-v0"), episodes_per_trial=2)
    obs, _ = env.reset(seed=1)
    task = env.env.unwrapped.get_task()
    steps, dones = 0, []
    while True:
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        steps += 1
        dones.append(obs[-1])
        if term or trunc:
            break
    assert steps == 20 and trunc and not term
    assert dones[9] == 1.0 and sum(dones) == 2.0  # done flag after each inner episode
    np.testing.assert_array_equal(obs[:10], info["final_obs"])  # last state of episode 2
    assert env.env.unwrapped.get_task() == task


def test_bad_arguments_are_named():
    with pytest.raises(TaskError, match="episodes_per_trial=0"):
        TrialWrapper(gym.make("MetaRL/Bandit-v0"), 0)
    with pytest.raises(TaskError, match="not a task family"):
        TrialWrapper(gym.make("CartPole-v1"), 2)
    with pytest.raises(TaskError, match="has no batched-env contract"):
        BatchedTrialEnv(gym.make("MetaRL/Bandit-v0"), 2)


def _batched(env_id, n, episodes, **kw):
    env = BatchedTrialEnv(make_batched(env_id, n, 1, "cpu", **kw), episodes)
    env.set_tasks(env.sample_tasks(n, 0, "test"))
    return env


def test_batched_bandit_matches_gym_wrapper_layout():
    env = _batched("MetaRL/Bandit-v0", 3, 4)
    assert env.max_trial_length == 4
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 8) and torch.all(obs == 0) and info["active"].all()
    action = torch.tensor([0, 2, 4])
    obs, reward, term, trunc, info = env.step(action)
    assert torch.equal(obs[:, 1:6], torch.nn.functional.one_hot(action, 5).float())
    assert torch.equal(obs[:, 6], reward) and torch.all(obs[:, 7] == 1)
    assert info["episode_done"].all() and not (term | trunc).any()
    for _ in range(3):
        obs, reward, term, trunc, info = env.step(action)
    assert term.all() and not trunc.any() and info["active"].all()
    # Past the trial end rows idle: zero reward, inactive, frozen observation.
    idle_obs, reward, term, trunc, info = env.step(action)
    assert torch.all(reward == 0) and not info["active"].any() and torch.equal(idle_obs, obs)


def test_batched_pointnav_rows_end_trials_at_different_steps():
    env = BatchedTrialEnv(make_batched("MetaRL/PointNav-v0", 2, 1, "cpu", horizon=5), 2)
    from meta_rl_envs.navigation import GoalTask

    env.set_tasks([GoalTask((0.05, 0.0)), GoalTask((0.45, 0.45))])
    obs, _ = env.reset(seed=0)
    toward = torch.tensor([[0.05, 0.0], [0.1, 0.1]])
    ends, actives, rewards = [], [], []
    for _ in range(env.max_trial_length):
        obs, reward, term, trunc, info = env.step(toward)
        ends.append(term | trunc)
        actives.append(info["active"])
        rewards.append(reward)
    ends, actives = torch.stack(ends), torch.stack(actives)
    # Row 0 reaches its goal in one step per episode: trial over after 2 steps (terminated).
    assert ends[:, 0].nonzero().flatten().tolist() == [1]
    assert actives[:, 0].tolist() == [True, True] + [False] * 8
    # Row 1 never reaches (0.45, 0.45) in 5 steps: 2 truncated episodes, 10 steps.
    assert ends[:, 1].nonzero().flatten().tolist() == [9]
    assert actives[:, 1].all()
    assert torch.stack(rewards)[2:, 0].abs().sum() == 0
