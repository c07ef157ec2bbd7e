"""The torch-batched families equal their scalar envs step for step (envs/batched.py contract).

Both sides are fed the same noise: every scalar env's ``_noise`` is wrapped to log what it draws,
and the batched env's ``_rand`` is replaced by a feeder that hands each row the numbers its scalar
env drew (rows that do not reset get a filler for ``"reset"`` noise). A new batched family is
covered by adding one :class:`Case` to ``CASES``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import meta_rl_envs
import numpy as np
import pytest
import torch
from meta_rl_envs import TaskError, make_batched
from meta_rl_envs.bandits import BanditTask


def random_actions(rng: np.random.Generator, space: gym.Space, rows: int) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n, size=rows) + int(space.start)
    return rng.uniform(space.low, space.high, size=(rows, *space.shape)).astype(space.dtype)


def nav_actions(rng, space, rows, obs, row_tasks):
    """Even rows walk straight at the goal (episodes terminate), odd rows wander (truncate)."""
    goals = np.array([t.goal for t in row_tasks])
    greedy = np.clip(goals - np.asarray(obs, dtype=np.float64), space.low, space.high)
    out = random_actions(rng, space, rows)
    out[::2] = greedy[::2]
    return out.astype(np.float32)


def sparse_actions(rng, space, rows, obs, row_tasks):
    """Even rows walk straight at the goal (they reach the rewarded region), odd rows wander."""
    goals = np.array([[math.cos(t.angle), math.sin(t.angle)] for t in row_tasks])
    greedy = np.clip(goals - np.asarray(obs, dtype=np.float64), space.low, space.high)
    out = random_actions(rng, space, rows)
    out[::2] = greedy[::2]
    return out.astype(np.float32)


def grid_actions(size: int):
    """Even rows walk to the goal cell ``x * size + y`` and stay (+1 rewards), odd rows wander
    (and bump into the walls)."""

    def policy(rng, space, rows, obs, row_tasks):
        out = random_actions(rng, space, rows)
        for r in range(0, rows, 2):
            gx, gy = divmod(int(row_tasks[r].goal), size)
            x, y = (int(v) for v in obs[r])
            out[r] = 4 if gx > x else 3 if gx < x else 1 if gy > y else 2 if gy < y else 0
        return out

    return policy


@dataclass(frozen=True)
class Case:
    """One batched family under test: its id, constructor kwargs (shared by the scalar and the
    batched env), how many steps to run, and optionally a policy
    ``(rng, action_space, rows, obs, row_tasks) -> actions`` (default: uniform random)."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 30
    policy: Callable | None = None
    atol: float = 1e-5
    stochastic: bool = True  # different seeds give different transitions

    def __str__(self) -> str:
        return self.env_id + "".join(f"-{k}={v}" for k, v in self.kwargs.items())


CASES = [
    Case("MetaRL/PointNav-v0", {"horizon": 12}, steps=40, policy=nav_actions, stochastic=False),
    Case("MetaRL/Bandit-v0", {}, steps=12),
    Case("MetaRL/Bandit-v0", {"k": 3}, steps=6),
    Case("MetaRL/TabularMDP-v0", {}, steps=25),
    Case("MetaRL/TabularMDP-v0", {"num_states": 4, "num_actions": 2, "horizon": 3}, steps=20),
    Case("MetaRL/CartPole-v0", {"horizon": 30}, steps=70, atol=1e-4),
    Case("MetaRL/SparsePoint-v0", {"horizon": 12}, 40, policy=sparse_actions, stochastic=False),
    Case("MetaRL/GridNavi-v0", {}, steps=40, policy=grid_actions(5), stochastic=False),
    Case("MetaRL/GridNavi-v0", {"size": 3, "horizon": 4}, 20, grid_actions(3), stochastic=False),
]


BUILTIN = ["MetaRL/PointNav-v0", "MetaRL/Bandit-v0", "MetaRL/TabularMDP-v0"]


def _check_available(case: Case) -> None:
    spec = meta_rl_envs.FAMILIES.get(case.env_id)
    if spec is None or spec.batched is None:
        pytest.skip(f"{case.env_id} is not registered with a batched twin")


def _feeder(logs: list[deque], device: torch.device):
    """A ``_rand`` that replays, per row, the uniforms the scalar env of that row drew."""

    def take(log: deque, kind: str):
        for i, (k, values) in enumerate(log):
            if k == kind:
                del log[i]
                return values
        return None

    def _rand(kind: str, k: int) -> torch.Tensor:
        out = np.empty((len(logs), k))
        for r, log in enumerate(logs):
            values = take(log, kind)
            if values is None:
                assert kind == "reset", (
                    f"row {r}: batched drew {kind!r} noise its scalar env did not"
                )
                values = np.full(k, 0.5)  # a row that does not reset: any filler
            assert len(values) == k, (
                f"row {r}: batched drew {k} {kind!r} uniforms, scalar {len(values)}"
            )
            out[r] = values
        return torch.as_tensor(out, dtype=torch.float32, device=device)

    return _rand


def _logging_noise(env, log: deque):
    original = env._noise

    def _noise(kind: str, k: int) -> np.ndarray:
        values = original(kind, k)
        log.append((kind, np.array(values, dtype=np.float64)))
        return values

    return _noise


def _close(a, b, atol: float) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol)


def run_lockstep(case: Case, num_tasks: int = 3, envs_per_task: int = 2, seed: int = 0):
    """Run scalar and batched side by side; assert equality; return (#terminated, #truncated)."""
    batched = make_batched(case.env_id, num_tasks, envs_per_task, **case.kwargs)
    n = batched.num_envs
    tasks = batched.sample_tasks(num_tasks, seed)
    batched.set_tasks(tasks)
    row_tasks = batched.row_tasks()
    scalars = [gym.make(case.env_id, **case.kwargs).unwrapped for _ in range(n)]
    logs = [deque() for _ in range(n)]
    for env, log in zip(scalars, logs, strict=True):
        env._noise = _logging_noise(env, log)
    batched._rand = _feeder(logs, batched.device)

    obs_s = [
        env.reset(seed=seed + r, options={"task": row_tasks[r]})[0] for r, env in enumerate(scalars)
    ]
    obs_b, _ = batched.reset(seed=seed)
    assert _close(obs_b.cpu(), np.stack(obs_s), case.atol)

    rng = np.random.default_rng(seed)
    space = batched.single_action_space
    ends = np.zeros(2, dtype=int)
    for step in range(case.steps):
        if case.policy is None:
            actions = random_actions(rng, space, n)
        else:
            actions = case.policy(rng, space, n, np.stack(obs_s), row_tasks)
        final_s, reward_s, term_s, trunc_s, next_s = [], [], [], [], []
        for env, a in zip(scalars, actions, strict=True):
            o, r, term, trunc, info = env.step(a)
            final_s.append(o)
            reward_s.append(r)
            term_s.append(term)
            trunc_s.append(trunc)
            next_s.append(env.reset()[0] if term or trunc else o)
        obs_b, reward_b, term_b, trunc_b, info_b = batched.step(torch.as_tensor(actions))
        where = f"{case} step {step}"
        assert _close(info_b["final_obs"].cpu(), np.stack(final_s), case.atol), where
        assert _close(reward_b.cpu(), reward_s, case.atol), where
        assert term_b.cpu().tolist() == term_s, where
        assert trunc_b.cpu().tolist() == trunc_s, where
        assert _close(obs_b.cpu(), np.stack(next_s), case.atol), where
        done = term_b | trunc_b
        assert torch.equal(info_b["final_obs"][~done], obs_b[~done]), where
        obs_s = next_s
        ends += [sum(term_s), sum(trunc_s)]
    assert all(not log or all(k == "reset" for k, _ in log) for log in logs), "unused step noise"
    return ends


@pytest.mark.parametrize("case", CASES, ids=str)
def test_batched_equals_scalar_step_for_step(case):
    _check_available(case)
    terminated, truncated = run_lockstep(case)
    assert terminated + truncated > 0, "the run must cross episode ends (autoreset)"


def test_lockstep_cases_cover_both_kinds_of_episode_end():
    """PointNav terminates (goal reached) and truncates; bandits terminate; MDPs truncate."""
    assert all(run_lockstep(CASES[0]) > 0)
    assert run_lockstep(CASES[1])[0] == 3 * 2 * CASES[1].steps
    assert run_lockstep(CASES[3])[1] == 3 * 2 * (CASES[3].steps // 10)


def test_lockstep_detects_a_wrong_dynamics():
    """The harness can fail: a batched bandit with one arm's probability changed is caught."""
    case = CASES[1]
    batched_cls = type(make_batched(case.env_id, 1))
    original = batched_cls._load_params

    def skewed(self, params):
        original(self, params)
        self.probs = self.probs.flip(-1)

    batched_cls._load_params = skewed
    try:
        with pytest.raises(AssertionError):
            run_lockstep(case)
    finally:
        batched_cls._load_params = original


# ---------------------------------------------------------------------------------------------
def test_rows_map_to_tasks_by_integer_division():
    k, num_tasks, per = 4, 3, 5
    env = make_batched("MetaRL/Bandit-v0", num_tasks, per, k=k)
    # Task i pays only on arm i, with certainty.
    tasks = [BanditTask(tuple(float(a == i) for a in range(k))) for i in range(num_tasks)]
    env.set_tasks(tasks)
    assert env.num_envs == num_tasks * per
    assert env.row_tasks() == [tasks[r // per] for r in range(env.num_envs)]
    env.reset(seed=0)
    for arm in range(k):
        _, reward, *_ = env.step(torch.full((env.num_envs,), arm))
        expected = [float(r // per == arm) for r in range(env.num_envs)]
        assert reward.tolist() == expected


@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_seed_same_rollout(case):
    _check_available(case)

    def rollout(seed: int):
        env = make_batched(case.env_id, 2, 3, **case.kwargs)
        env.set_tasks(env.sample_tasks(2, 0))
        out = [env.reset(seed=seed)[0]]
        rng = np.random.default_rng(0)
        for _ in range(case.steps):
            obs, reward, term, trunc, info = env.step(
                torch.as_tensor(random_actions(rng, env.single_action_space, env.num_envs))
            )
            out += [obs, reward, term, trunc, info["final_obs"]]
        return out

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    if case.stochastic:
        assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("env_id", BUILTIN)
def test_device_cpu_and_auto(env_id):
    for device in ("cpu", "auto"):
        env = make_batched(env_id, 2, 2, device=device)
        env.set_tasks(env.sample_tasks(2, 0))
        obs, _ = env.reset(seed=0)
        actions = random_actions(np.random.default_rng(0), env.single_action_space, env.num_envs)
        out = env.step(torch.as_tensor(actions, device=env.device))
        expected = "cuda" if (device == "auto" and torch.cuda.is_available()) else "cpu"
        assert env.device.type == expected
        assert all(t.device.type == expected for t in (obs, *out[:4], out[4]["final_obs"]))
        assert obs.shape == (4, *env.single_observation_space.shape)
    if not torch.cuda.is_available():
        with pytest.raises(TaskError, match="CUDA is not available"):
            make_batched(env_id, 1, device="cuda")


@pytest.mark.parametrize("env_id", BUILTIN)
def test_bad_sizes_raise(env_id):
    for kwargs, name in (
        ({"num_tasks": 0}, "num_tasks"),
        ({"num_tasks": 2.5}, "num_tasks"),
        ({"num_tasks": 2, "envs_per_task": 0}, "envs_per_task"),
    ):
        with pytest.raises(TaskError, match=name):
            make_batched(env_id, **kwargs)
    env = make_batched(env_id, 3, 2)
    with pytest.raises(TaskError, match="before reset"):
        env.reset()
    with pytest.raises(TaskError, match="got 2 tasks; this env has num_tasks=3"):
        env.set_tasks(env.sample_tasks(2, 0))


def test_bad_family_sizes_raise():
    with pytest.raises(TaskError, match="k=0"):
        make_batched("MetaRL/Bandit-v0", 1, k=0)
    with pytest.raises(TaskError, match="num_states=0"):
        make_batched("MetaRL/TabularMDP-v0", 1, num_states=0)
    with pytest.raises(TaskError, match="horizon=-1"):
        gym.make("MetaRL/TabularMDP-v0", horizon=-1)
    # A task of another size is refused with the expected shape named.
    small = make_batched("MetaRL/TabularMDP-v0", 1, num_states=3, num_actions=2)
    with pytest.raises(TaskError, match="reward_mean.*expects shape"):
        small.set_tasks(make_batched("MetaRL/TabularMDP-v0", 1).sample_tasks(1, 0))


def test_tabular_noise_has_the_right_distribution():
    """Box-Muller rewards are N(mu, 1) and inverse-CDF next states follow the transition row."""
    rows = 20_000
    env = make_batched("MetaRL/TabularMDP-v0", 1, rows, horizon=1)  # every step restarts at 0
    task = env.sample_tasks(1, 0)[0]
    env.set_tasks([task])
    env.reset(seed=0)
    _, reward, _, truncated, info = env.step(torch.zeros(rows, dtype=torch.long))
    assert truncated.all()
    mu = np.asarray(task.reward_mean).reshape(10, 5)[0, 0]
    p = np.asarray(task.transitions).reshape(10, 5, 10)[0, 0]
    assert abs(reward.mean().item() - mu) < 4 / math.sqrt(rows)
    assert abs(reward.std().item() - 1.0) < 0.03
    freq = np.bincount(info["final_obs"].argmax(-1).numpy(), minlength=10) / rows
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / rows) + 1e-9)


def test_bandit_pays_each_arm_with_its_probability():
    rows = 20_000
    env = make_batched("MetaRL/Bandit-v0", 1, rows)
    task = env.sample_tasks(1, 1)[0]
    env.set_tasks([task])
    env.reset(seed=0)
    for arm, p in enumerate(task.probs):
        _, reward, *_ = env.step(torch.full((rows,), arm))
        assert abs(reward.mean().item() - p) < 4 * math.sqrt(p * (1 - p) / rows) + 1e-9
