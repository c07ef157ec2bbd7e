"""Classic-control families (built with the builder) and the torch-batched CartPole."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from meta_rl_envs import TaskError
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.classic import (
    CARTPOLE_OOD,
    CARTPOLE_RANGES,
    BatchedCartPole,
    CartPoleFamily,
    CartPoleTask,
    MountainCarContinuousFamily,
    PendulumFamily,
)

CLASSIC_IDS = ["MetaRL/CartPole-v0", "MetaRL/Pendulum-v0", "MetaRL/MountainCarContinuous-v0"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("env_id", CLASSIC_IDS)
def test_check_env_on_every_split(env_id):
    env = gym.make(env_id)
    fam = env.unwrapped
    assert fam.task_space.splits == ("train", "test", "ood")
    for split in fam.task_space.splits:
        tasks = fam.sample_tasks(4, np.random.default_rng(7), split)
        assert all(fam.task_space.split_of(t) == split for t in tasks)
        for task in tasks:
            _, info = env.reset(seed=1, options={"task": task})
            assert info["task"] == task.to_dict()
            _, _, _, _, info = env.step(env.action_space.sample())
            assert info["task"] == task.to_dict()
            check_env(fam, skip_render_check=True)


def test_cartpole_ranges_and_ood_lengths():
    env = CartPoleFamily()
    assert env.get_task() == CartPoleTask(length=0.5, masspole=0.1, masscart=1.0)
    lo, hi = CARTPOLE_RANGES["length"]
    train = env.sample_tasks(200, 0, "train")
    assert all(lo <= t.length <= hi for t in train)
    ood = env.sample_tasks(200, 0, "ood")
    assert all(t.length < lo or t.length > hi for t in ood)
    assert any(t.length < lo for t in ood) and any(t.length > hi for t in ood)
    (a, _), (_, b) = CARTPOLE_OOD["length"]
    assert all(a <= t.length <= b for t in ood)
    # Derived quantities follow the task.
    env.set_task(CartPoleTask(length=0.7, masspole=0.2, masscart=0.5))
    assert env.polemass_length == pytest.approx(0.14)
    assert env.total_mass == pytest.approx(0.7)


def _rollout(env, task, actions, seed=0):
    obs, _ = env.reset(seed=seed, options={"task": task})
    out = [obs]
    for a in actions:
        obs, _, terminated, truncated, _ = env.step(a)
        out.append(obs)
        if terminated or truncated:
            break
    return np.array(out)


@pytest.mark.parametrize(
    ("family", "field", "values", "action"),
    [
        (CartPoleFamily, "length", (0.3, 0.7), 1),
        (CartPoleFamily, "masscart", (0.5, 2.0), 1),
        (PendulumFamily, "g", (5.0, 15.0), np.array([0.5], np.float32)),
        (PendulumFamily, "m", (0.5, 2.0), np.array([1.5], np.float32)),
        (MountainCarContinuousFamily, "power", (0.001, 0.002), np.array([1.0], np.float32)),
    ],
)
def test_task_changes_the_dynamics(family, field, values, action):
    env = family()
    base = env.get_task()
    a, b = (dataclasses.replace(base, **{field: v}) for v in values)
    ta = _rollout(env, a, [action] * 8)
    tb = _rollout(env, b, [action] * 8)
    np.testing.assert_array_equal(ta[0], tb[0])  # same seed, same start
    assert np.abs(ta[-1] - tb[-1]).max() > 1e-4  # different physics, different end
    # Same task twice: same numbers.
    np.testing.assert_array_equal(ta, _rollout(env, a, [action] * 8))


def test_bad_tasks_name_the_field():
    env = CartPoleFamily()
    with pytest.raises(TaskError, match="length"):
        env.set_task({"length": 5.0, "masspole": 0.1, "masscart": 1.0})
    with pytest.raises(TaskError, match="masscart"):
        env.reset(options={"task": {"length": 0.5, "masspole": 0.1}})
    with pytest.raises(TaskError, match="Pendulum"):
        env.set_task(PendulumFamily().get_task())


def test_cartpole_reset_draws_through_noise():
    env = CartPoleFamily()
    env._noise = lambda kind, k: np.full(k, 0.75) if kind == "reset" else None
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, np.full(4, 0.025, np.float32), atol=1e-7)


# --------------------------------------------------------------------------------------------
# BatchedCartPole vs CartPoleFamily, step for step
# --------------------------------------------------------------------------------------------
def _record_rand(benv):
    draws = []
    original = benv._rand

    def recording(kind, k):
        u = original(kind, k)
        draws.append(u.clone())
        return u

    benv._rand = recording
    return draws


@pytest.mark.parametrize("fused", [True, False])
def test_batched_cartpole_matches_scalar_step_for_step(fused):
    num_tasks, per_task, horizon, steps = 3, 3, 25, 300
    benv = BatchedCartPole(num_tasks, per_task, horizon=horizon)
    space = benv.task_space
    tasks = space.sample(2, 0, "train") + space.sample(1, 0, "ood")
    benv.set_tasks(tasks)
    draws = _record_rand(benv)
    scalars = [CartPoleFamily(horizon=horizon) for _ in range(benv.num_envs)]
    pending = [None] * benv.num_envs
    for i, env in enumerate(scalars):
        env._noise = lambda kind, k, i=i: pending[i]

    def scalar_reset(i, noise):
        pending[i] = noise[i].double().numpy()
        obs, _ = scalars[i].reset(options={"task": benv.row_tasks()[i]})
        return obs

    obs, _ = benv.reset(seed=3)
    expect = np.array([scalar_reset(i, draws[-1]) for i in range(benv.num_envs)])
    np.testing.assert_allclose(obs.numpy(), expect, rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(0)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(steps):
        actions = rng.integers(0, 2, size=benv.num_envs)
        step = benv.step if fused else lambda a: BatchedEnv.step(benv, a)
        obs, reward, terminated, truncated, info = step(torch.as_tensor(actions))
        for i, env in enumerate(scalars):
            s_obs, s_rew, s_term, s_trunc, _ = env.step(int(actions[i]))
            np.testing.assert_allclose(info["final_obs"][i].numpy(), s_obs, rtol=1e-4, atol=1e-5)
            assert reward[i].item() == s_rew
            assert (bool(terminated[i]), bool(truncated[i])) == (s_term, s_trunc)
            if s_term or s_trunc:
                s_obs = scalar_reset(i, draws[-1])
            np.testing.assert_allclose(obs[i].numpy(), s_obs, rtol=1e-4, atol=1e-5)
        ends["terminated"] += int(terminated.sum())
        ends["truncated"] += int(truncated.sum())
    # The run covered both kinds of episode end, many times.
    assert ends["terminated"] > 20 and ends["truncated"] > 5, ends
    assert len(draws) == steps + 1  # one reset draw per step, for every row


def test_batched_cartpole_seeded_and_per_row_parameters():
    def run(seed):
        env = BatchedCartPole(2, 2)
        env.set_tasks(
            [
                CartPoleTask(length=0.25, masspole=0.1, masscart=1.0),
                CartPoleTask(length=0.75, masspole=0.1, masscart=1.0),
            ]
        )
        obs, _ = env.reset(seed=seed)
        first = obs.clone()
        env.state = torch.zeros_like(env.state) + 0.01  # same state on every row
        for _ in range(6):
            obs, _, terminated, truncated, _ = env.step(torch.ones(4, dtype=torch.long))
            assert not (terminated | truncated).any()
        return first, obs

    f1, o1 = run(5)
    f2, o2 = run(5)
    f3, _ = run(6)
    assert torch.equal(f1, f2) and torch.equal(o1, o2) and not torch.equal(f1, f3)
    assert torch.equal(o1[0], o1[1]) and torch.equal(o1[2], o1[3])  # same task, same path
    assert (o1[0] - o1[2]).abs().max() > 1e-3  # short pole and long pole part ways


def test_batched_cartpole_errors():
    env = BatchedCartPole(2)
    with pytest.raises(TaskError, match="set_tasks"):
        env.reset()
    with pytest.raises(TaskError, match="num_tasks=2"):
        env.set_tasks(env.sample_tasks(3, 0))
    with pytest.raises(TaskError, match="length"):
        env.set_tasks([CartPoleTask(length=9.0), CartPoleTask()])
    with pytest.raises(TaskError, match="horizon=0"):
        BatchedCartPole(2, horizon=0)


@pytest.mark.slow
def test_compiled_batched_cartpole_equals_eager():
    envs = [BatchedCartPole(4, 2, horizon=30, compile=c) for c in (False, True)]
    tasks = envs[0].sample_tasks(4, 0)
    outs = []
    for env in envs:
        env.set_tasks(tasks)
        env.reset(seed=0)
        gen = torch.Generator().manual_seed(0)
        trace = [env.step(torch.randint(0, 2, (8,), generator=gen))[:4] for _ in range(100)]
        outs.append(trace)
    assert envs[1].compile  # compiled, not fallen back
    for a, b in zip(*outs, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
