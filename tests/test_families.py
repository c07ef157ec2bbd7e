"""Every registered family id honours the task protocol (envs/core.py).

The ids come from ``meta_rl_envs.FAMILIES``, so families added later are covered without edits.
A family whose pip extra (``FamilySpec.extra``) is not installed is skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from dataclasses import dataclass

import gymnasium as gym
import meta_rl_envs
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from meta_rl_envs import FAMILIES, Choice, Dirichlet, Normal, Task, TaskDistribution, TaskError
from meta_rl_envs.core import Uniform

TASKS_PER_SPLIT = 3
SPLIT_SAMPLE = 200
IDS = sorted(FAMILIES)
# check_env renders every declared render mode; Gymnasium's classic-control renderers need pygame,
# which meta-rl does not depend on. Render checks run only where pygame is installed.
SKIP_RENDER = importlib.util.find_spec("pygame") is None


def make(env_id: str) -> gym.Env:
    spec = FAMILIES[env_id]
    if spec.extra is not None and importlib.util.find_spec(spec.extra) is None:
        pytest.skip(f"{env_id} needs the '{spec.extra}' extra (pip install meta-rl[{spec.extra}])")
    return gym.make(env_id)


@pytest.fixture(params=IDS)
def env(request):
    e = make(request.param)
    yield e.unwrapped
    e.close()


def same(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def rollout(env, task, seed: int, steps: int = 15):
    """Observations and rewards of a seeded random-action rollout on ``task`` (with resets)."""
    obs, info = env.reset(seed=seed, options={"task": task})
    env.action_space.seed(seed)
    out = [np.asarray(obs).copy()]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out += [np.asarray(obs).copy(), float(reward), terminated, truncated]
        if terminated or truncated:
            obs, info = env.reset()
            out.append(np.asarray(obs).copy())
    return out


# ---------------------------------------------------------------------------------------------
def test_registry_covers_builtin_families():
    for env_id in ("MetaRL/PointNav-v0", "MetaRL/Bandit-v0", "MetaRL/TabularMDP-v0"):
        assert env_id in FAMILIES and env_id in gym.registry


def test_checker_and_task_echo_on_every_split(env):
    space = env.task_space
    for i, split in enumerate(space.splits):
        for task in env.sample_tasks(TASKS_PER_SPLIT, 100 + i, split):
            assert space.split_of(task) == split
            env.set_task(task)
            assert env.get_task() == task
            with warnings.catch_warnings():
                # The checker's advice (e.g. about render modes) is not a failure.
                warnings.simplefilter("ignore")
                check_env(env, skip_render_check=SKIP_RENDER)
            assert env.get_task() == task, "check_env's resets must keep the task"
            obs, info = env.reset(seed=1)
            assert info["task"] == task.to_dict()
            env.action_space.seed(0)
            *_, info = env.step(env.action_space.sample())
            assert info["task"] == task.to_dict()


def test_reset_option_switches_task(env):
    a, b = env.sample_tasks(2, 7)
    assert a != b
    _, info = env.reset(seed=0, options={"task": a})
    assert env.get_task() == a and info["task"] == a.to_dict()
    _, info = env.reset(options={"task": b.to_dict()})  # a dict works too
    assert env.get_task() == b and info["task"] == b.to_dict()
    _, info = env.reset(options={"task": a.to_json()})  # and a JSON string
    assert env.get_task() == a
    _, info = env.reset()  # no option: the task stays
    assert env.get_task() == a


def test_same_seed_same_tasks_and_trajectory(env):
    # 12 tasks: a two-task family (HalfCheetahDir) draws 6 balanced passes, 2^6 orders
    first, again, other = (env.sample_tasks(12, s) for s in (3, 3, 4))
    assert first == again and first != other
    one, two, three = (rollout(env, first[0], seed=s) for s in (11, 11, 12))
    assert len(one) == len(two) and all(same(x, y) for x, y in zip(one, two, strict=True))
    assert len(one) != len(three) or not all(same(x, y) for x, y in zip(one, three, strict=True))


def test_splits_are_disjoint(env):
    space = env.task_space
    seen: dict[str, set[str]] = {}
    for i, split in enumerate(space.splits):
        tasks = env.sample_tasks(SPLIT_SAMPLE, 1000 + i, split)
        assert len(tasks) == SPLIT_SAMPLE
        assert all(space.split_of(t) == split for t in tasks)
        seen[split] = {t.to_json() for t in tasks}
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not seen[a] & seen[b], f"splits {a} and {b} share a task"
    if not space.is_finite:
        assert len(seen["train"]) > SPLIT_SAMPLE // 2 and len(seen["test"]) > SPLIT_SAMPLE // 2


def test_task_json_round_trip(env):
    for task in env.sample_tasks(3, 5):
        text = task.to_json()
        back = env.task_space.task_cls.from_json(text)
        assert back == task and back.digest() == task.digest()
        assert env.task_space.validate(text) == task
        assert json.loads(text)["family"] == task.family


# ---------------------------------------------------------------------------------------------
# Bad input: clear TaskErrors naming the field, the value and what is allowed
# ---------------------------------------------------------------------------------------------
def test_unknown_id_lists_registered_ids():
    with pytest.raises(TaskError) as err:
        meta_rl_envs.check_id("MetaRL/Nope-v0")
    assert "MetaRL/Nope-v0" in str(err.value) and "MetaRL/PointNav-v0" in str(err.value)
    with pytest.raises(TaskError, match="MetaRL/Bandit-v0"):
        TaskDistribution("MetaRL/Nope-v0").make_env()
    with pytest.raises(TaskError, match="registered families"):
        meta_rl_envs.make_batched("MetaRL/Nope-v0", 2)


def _bad_value(p):
    """A value of parameter ``p`` that its check must refuse, and a fragment the message shows."""
    shape = p.shape or ()
    if isinstance(p, Uniform):
        bad = p.bounds[1] + 1.0
        return np.full(shape, bad), repr(bad)
    if isinstance(p, Choice):
        bad = max(p.values) + 1.0
        return np.full(shape, bad), repr(bad)
    if isinstance(p, Normal):
        return np.full(shape, np.inf), "inf"
    if isinstance(p, Dirichlet):
        return np.full(shape, 2.0), None  # rows summing to 2 * n
    raise AssertionError(f"no bad value known for {type(p).__name__}")


def test_out_of_range_parameter_is_refused(env):
    task = env.sample_tasks(1, 0)[0]
    env.set_task(task)
    for name, p in env.task_space.params.items():
        value, shown = _bad_value(p)
        flat = float(value) if not p.shape else tuple(float(x) for x in value.ravel())
        bad = dataclasses.replace(task, **{name: flat})
        with pytest.raises(TaskError) as err:
            env.set_task(bad)
        msg = str(err.value)
        assert repr(name) in msg
        if shown is not None:  # Uniform, Choice, Normal: the value and the allowed range
            assert shown in msg and "allowed" in msg
        else:  # Dirichlet: the row rule
            assert "row" in msg and "sum to 1" in msg
        assert env.get_task() == task, "a refused task must not replace the current one"
    # A parameter with the wrong number of values names the expected shape.
    name, p = next(iter(env.task_space.params.items()))
    wrong = (0.5,) * (p.size + 1)
    with pytest.raises(TaskError, match=f"'{name}'.*expects shape"):
        env.set_task(dataclasses.replace(task, **{name: wrong}))


@dataclass(frozen=True)
class AlienTask(Task):
    family = "Alien"
    x: float = 0.0


def test_wrong_family_task_is_refused(env):
    family = env.task_space.task_cls.family
    with pytest.raises(TaskError) as err:
        env.set_task(AlienTask())
    assert "Alien" in str(err.value) and family in str(err.value)
    data = env.sample_tasks(1, 0)[0].to_dict()
    data["family"] = "Alien"
    with pytest.raises(TaskError, match="Alien"):
        env.set_task(data)
    with pytest.raises(TaskError, match="unknown fields"):
        env.set_task({**env.get_task().to_dict(), "bogus": 1.0})


def test_malformed_json_and_unknown_split(env):
    with pytest.raises(TaskError, match="malformed task JSON"):
        env.set_task("{not json")
    with pytest.raises(TaskError) as err:
        env.sample_tasks(3, 0, "validation")
    assert "'validation'" in str(err.value) and "train" in str(err.value)
    if "ood" not in env.task_space.splits:
        with pytest.raises(TaskError, match="no ood split"):
            env.sample_tasks(3, 0, "ood")
    with pytest.raises(TaskError, match="rng is required"):
        env.sample_tasks(3, None)
