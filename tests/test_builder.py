"""The generic family builder: user families in a few lines, and clear errors for bad input."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.utils.env_checker import check_env
from meta_rl_envs import Choice, FamilySpec, Task, TaskError, Uniform, add_family
from meta_rl_envs.builder import make_family

AcrobotFamily = make_family(
    "Acrobot-v1",
    {"LINK_MASS_1": (0.5, 2.0), "LINK_LENGTH_1": [0.8, 1.0, 1.2]},
    ood={"LINK_MASS_1": [(2.0, 3.0)]},
)


def test_built_family_protocol_and_registration():
    add_family(FamilySpec("TestBuilder/Acrobot-v0", AcrobotFamily, "Acrobot, link 1 varies"))
    env = gym.make("TestBuilder/Acrobot-v0")
    fam = env.unwrapped
    assert isinstance(fam, AcrobotEnv)
    assert fam.task_space.splits == ("train", "test", "ood")
    assert fam.horizon == 500  # Acrobot-v1's registered time limit
    task_cls = AcrobotFamily.task_cls
    assert issubclass(task_cls, Task) and task_cls.family == "Acrobot"
    # The default task is the env's own constants (inside the space).
    assert fam.get_task() == task_cls(LINK_MASS_1=1.0, LINK_LENGTH_1=1.0)
    for split in fam.task_space.splits:
        for task in fam.sample_tasks(3, np.random.default_rng(1), split):
            if split == "ood":
                assert 2.0 <= task.LINK_MASS_1 <= 3.0
            else:
                assert 0.5 <= task.LINK_MASS_1 <= 2.0
            assert task.LINK_LENGTH_1 in (0.8, 1.0, 1.2)
            _, info = env.reset(seed=0, options={"task": task})
            assert info["task"] == task.to_dict()
            assert fam.LINK_MASS_1 == task.LINK_MASS_1  # written on the env
            _, _, _, _, info = env.step(env.action_space.sample())
            assert info["task"] == task.to_dict()
            check_env(fam, skip_render_check=True)
    # Tasks and envs pickle (the classes are bound at module level under their names).
    assert pickle.loads(pickle.dumps(fam.get_task())) == fam.get_task()
    assert type(pickle.loads(pickle.dumps(AcrobotFamily()))) is AcrobotFamily


def test_class_base_param_objects_and_own_horizon():
    fam_cls = make_family(
        AcrobotEnv,
        {"LINK_MASS_2": Uniform("LINK_MASS_2", (), 0.5, 1.5), "LINK_COM_POS_1": [0.4, 0.6]},
        horizon=7,
    )
    env = fam_cls()
    assert fam_cls.__name__ == "AcrobotFamily"
    assert isinstance(env.task_space.params["LINK_COM_POS_1"], Choice)
    assert env.task_space.splits == ("train", "test")
    env.reset(seed=3)
    steps = 0
    while True:
        steps += 1
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            break
    assert (steps, truncated) == (7, True)
    with pytest.raises(TaskError, match="no ood split"):
        env.sample_tasks(1, 0, "ood")


def test_set_task_changes_the_dynamics_and_validates():
    env = AcrobotFamily()
    light, heavy = (AcrobotFamily.task_cls(LINK_MASS_1=m, LINK_LENGTH_1=1.0) for m in (0.5, 2.0))
    trajectories = []
    for task in (light, heavy):
        obs, _ = env.reset(seed=0, options={"task": task})
        for _ in range(20):
            obs, *_ = env.step(2)
        trajectories.append(obs)
    assert not np.allclose(trajectories[0], trajectories[1], atol=1e-3)
    with pytest.raises(TaskError, match="LINK_MASS_1"):
        env.set_task({"LINK_MASS_1": 9.0, "LINK_LENGTH_1": 1.0})  # outside range and ood
    with pytest.raises(TaskError, match="LINK_LENGTH_1"):
        env.set_task({"LINK_MASS_1": 1.0, "LINK_LENGTH_1": 0.9})  # not one of the choices


@pytest.mark.parametrize(
    ("base", "params", "kwargs", "match"),
    [
        (
            "CartPol-v1",
            {"length": (0.1, 1.0)},
            {},
            r"unknown Gymnasium env id 'CartPol-v1'.*CartPole-v1",
        ),
        (42, {"length": (0.1, 1.0)}, {}, "neither a registered Gymnasium env id"),
        ("CartPole-v1", {"lenght": (0.1, 1.0)}, {}, r"no attribute 'lenght'.*length.*masspole"),
        ("CartPole-v1", {"kinematics_integrator": (0, 1)}, {}, "is not numeric"),
        ("CartPole-v1", {"length": (1.0, 0.1)}, {}, "low must be below high"),
        ("CartPole-v1", {"length": (0.1, float("nan"))}, {}, "two finite numbers"),
        ("CartPole-v1", {"length": (0.1, 0.5, 1.0)}, {}, "two finite numbers"),
        ("CartPole-v1", {"length": []}, {}, "non-empty list"),
        ("CartPole-v1", {"length": "long"}, {}, "must be a"),
        ("CartPole-v1", {}, {}, "non-empty mapping"),
        ("CartPole-v1", {"length": (0.1, 1.0)}, {"ood": {"masspole": [(1, 2)]}}, "not in params"),
        ("CartPole-v1", {"length": (0.1, 1.0)}, {"ood": {"length": [(0.5, 2.0)]}}, "outside"),
        ("CartPole-v1", {"length": [0.1, 1.0]}, {"ood": {"length": [(2, 3)]}}, "choices"),
        ("CartPole-v1", {"length": (0.1, 1.0)}, {"horizon": 0}, "horizon=0"),
        ("CartPole-v1", {"length": (0.1, 1.0)}, {"name": "not a name"}, "identifier"),
    ],
)
def test_bad_input_names_the_problem(base, params, kwargs, match):
    with pytest.raises(TaskError, match=match):
        make_family(base, params, **kwargs)


def test_the_readme_family_snippet_registers_its_id():
    """The docs' make_family snippet (docs/concepts/task-families.md, formerly in the README) ends
    with the one call that registers the family, so gym.make("MetaRL/Acrobot-v0") works right
    after it (it raised NameNotFound)."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "concepts" / "task-families.md"
    readme = page.read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (snippet,) = [b for b in blocks if "make_family(" in b and "Acrobot" in b]
    namespace: dict = {}
    exec(compile(snippet, str(page), "exec"), namespace)
    env = gym.make("MetaRL/Acrobot-v0")
    fam = env.unwrapped
    assert type(fam).__name__ == "AcrobotFamily" and fam.horizon == 500
    task = fam.sample_tasks(1, rng=0, split="ood")[0]
    _, info = env.reset(seed=0, options={"task": task})
    assert info["task"] == task.to_dict()
    env.close()
    from meta_rl_envs import check_id, make_env

    assert check_id("MetaRL/Acrobot-v0").entry_point is namespace["AcrobotFamily"]
    vec = make_env("MetaRL/Acrobot-v0", 2, 1)  # trainers find it too (the Gymnasium adapter)
    assert vec.horizon == 500
    vec.close()
