"""MuJoCo locomotion families (envs/locomotion.py): env checks, what a task changes (numbers),
splits, and a one-iteration training run of MAML-TRPO, MAML-PPO and RL^2 on HalfCheetahVel.

Skipped when the ``mujoco`` extra is not installed (``pip install meta-rl[mujoco]``).
"""

from __future__ import annotations

import math
import warnings

import pytest

pytest.importorskip(
    "mujoco", reason="MuJoCo families need the 'mujoco' extra: pip install 'meta-rl[mujoco]'"
)

import gymnasium as gym  # noqa: E402
import meta_rl_envs  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from meta_rl_envs import TaskError  # noqa: E402
from meta_rl_envs.builder import make_family  # noqa: E402

IDS = [
    "MetaRL/HalfCheetahVel-v0",
    "MetaRL/HalfCheetahDir-v0",
    "MetaRL/AntDir-v0",
    "MetaRL/AntGoal-v0",
]


def rollout(env: gym.Env, task, steps: int, seed: int = 0):
    """Observations, rewards and infos of ``steps`` seeded random actions on ``task``."""
    obs, _ = env.reset(seed=seed, options={"task": task})
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    out = {"obs": [obs], "reward": [], "info": []}
    for _ in range(steps):
        action = rng.uniform(low, high).astype(env.action_space.dtype)
        obs, reward, terminated, truncated, info = env.step(action)
        out["obs"].append(obs)
        out["reward"].append(reward)
        out["info"].append(info)
        assert not terminated
    return {k: np.asarray(v) if k != "info" else v for k, v in out.items()}


@pytest.mark.parametrize("env_id", IDS)
def test_registered_checked_and_echoes_task(env_id):
    assert env_id in meta_rl_envs.FAMILIES and env_id in gym.registry
    env = gym.make(env_id)
    fam = env.unwrapped
    assert fam.horizon == 200
    for split in fam.task_space.splits:
        task = fam.sample_tasks(1, 3, split)[0]
        assert fam.task_space.split_of(task) == split
        fam.set_task(task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(fam, skip_render_check=True)
        _, info = env.reset(seed=0)
        assert info["task"] == task.to_dict()
        *_, info = env.step(env.action_space.sample())
        assert info["task"] == task.to_dict()
    env.close()


def test_a_missing_extra_is_named(monkeypatch):
    # What a base install (no mujoco) says when a MuJoCo family is asked for.
    monkeypatch.delitem(meta_rl_envs.FAMILIES, "MetaRL/AntGoal-v0")
    with pytest.raises(
        TaskError, match=r"needs the 'mujoco' extra.*pip install 'meta-rl\[mujoco\]'"
    ):
        meta_rl_envs.check_id("MetaRL/AntGoal-v0")


def test_episode_is_truncated_at_the_horizon():
    env = gym.make("MetaRL/HalfCheetahVel-v0", horizon=7)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]


# ---------------------------------------------------------------------------------------------
# What a task changes: the reward's task term, as documented; the dynamics stay v5's
# ---------------------------------------------------------------------------------------------
def test_halfcheetah_vel_reward_is_minus_velocity_error_minus_control_cost():
    fam = gym.make("MetaRL/HalfCheetahVel-v0").unwrapped
    slow, fast = fam.task_space.task_cls(target_velocity=0.5), fam.task_space.task_cls(2.0)
    a, b = rollout(fam, slow, 30), rollout(fam, fast, 30)
    np.testing.assert_array_equal(a["obs"], b["obs"])  # same dynamics: the task is the reward
    for run, target in ((a, 0.5), (b, 2.0)):
        v = np.array([i["x_velocity"] for i in run["info"]])
        ctrl = np.array([i["reward_ctrl"] for i in run["info"]])
        np.testing.assert_allclose(run["reward"], -np.abs(v - target) + ctrl, atol=1e-12)
        np.testing.assert_allclose(ctrl, [-0.05 * np.sum(np.square(x)) for x in _actions(30)])
    # Random actions move the cheetah slowly (mean |v| ~0.6 here): the faster target costs more.
    assert a["reward"].mean() > b["reward"].mean() + 1.0


def _actions(n: int, seed: int = 0, dim: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-1.0, 1.0, dim).astype(np.float32) for _ in range(n)])


def test_halfcheetah_dir_rewards_opposite_directions_oppositely():
    fam = gym.make("MetaRL/HalfCheetahDir-v0").unwrapped
    task_cls = fam.task_space.task_cls
    fwd, bwd = rollout(fam, task_cls(direction=1.0), 30), rollout(fam, task_cls(-1.0), 30)
    np.testing.assert_array_equal(fwd["obs"], bwd["obs"])
    f = np.array([i["reward_forward"] for i in fwd["info"]])
    b = np.array([i["reward_forward"] for i in bwd["info"]])
    v = np.array([i["x_velocity"] for i in fwd["info"]])
    np.testing.assert_allclose(f, v)
    np.testing.assert_allclose(b, -v)


def test_halfcheetah_dir_has_only_training_tasks():
    fam = gym.make("MetaRL/HalfCheetahDir-v0").unwrapped
    assert fam.task_space.splits == ("train",)
    assert {t.direction for t in fam.sample_tasks(20, 0)} == {-1.0, 1.0}
    with pytest.raises(TaskError, match="no test split.*split='train'"):
        fam.sample_tasks(2, 0, "test")


def test_ant_dir_rewards_velocity_along_the_angle():
    fam = gym.make("MetaRL/AntDir-v0").unwrapped
    task_cls = fam.task_space.task_cls
    east, north = rollout(fam, task_cls(angle=0.0), 20), rollout(fam, task_cls(math.pi / 2), 20)
    np.testing.assert_array_equal(east["obs"], north["obs"])
    vx = np.array([i["x_velocity"] for i in east["info"]])
    vy = np.array([i["y_velocity"] for i in east["info"]])
    np.testing.assert_allclose([i["reward_forward"] for i in east["info"]], vx, atol=1e-12)
    np.testing.assert_allclose([i["reward_forward"] for i in north["info"]], vy, atol=1e-12)
    # The rest of the reward is v5's: healthy + control + contact.
    rest = [i["reward_survive"] + i["reward_ctrl"] + i["reward_contact"] for i in east["info"]]
    np.testing.assert_allclose(east["reward"], vx + np.array(rest), atol=1e-12)


def test_ant_goal_rewards_minus_l1_distance_and_sees_the_torso_position():
    fam = gym.make("MetaRL/AntGoal-v0").unwrapped
    assert fam.observation_space.shape == (107,)  # v5's 105 + the torso's x, y
    task = fam.task_space.task_cls(goal_radius=2.0, goal_angle=math.pi)  # goal (-2, 0)
    run = rollout(fam, task, 20)
    np.testing.assert_allclose(fam.goal, [-2.0, 0.0], atol=1e-12)
    for obs, info in zip(run["obs"][1:], run["info"], strict=True):
        x, y = info["x_position"], info["y_position"]
        np.testing.assert_allclose(obs[:2], [x, y])
        assert info["reward_forward"] == pytest.approx(-(abs(x + 2.0) + abs(y)), abs=1e-12)
    # Starting at the origin (+- v5's reset noise of 0.1), the goal (-2, 0) is 2 away in L1.
    assert run["info"][0]["reward_forward"] == pytest.approx(-2.0, abs=0.3)


def test_ood_splits_lie_outside_the_training_range():
    vel = gym.make("MetaRL/HalfCheetahVel-v0").unwrapped
    train = [t.target_velocity for t in vel.sample_tasks(200, 0, "train")]
    ood = [t.target_velocity for t in vel.sample_tasks(200, 0, "ood")]
    assert 0.0 <= min(train) and max(train) <= 2.0 and 2.0 < min(ood) and max(ood) <= 3.0
    goal = gym.make("MetaRL/AntGoal-v0").unwrapped
    radii = np.array([t.goal_radius for t in goal.sample_tasks(4000, 0, "train")])
    assert radii.max() <= 3.0
    # Uniform over the disk's area: P(r <= 1.5) = (1.5 / 3)^2 = 0.25 (a uniform radius: 0.5).
    assert np.mean(radii <= 1.5) == pytest.approx(0.25, abs=0.03)
    ood = np.array([t.goal_radius for t in goal.sample_tasks(200, 0, "ood")])
    assert ood.min() > 3.0 and ood.max() <= 4.0
    assert "ood" not in gym.make("MetaRL/AntDir-v0").unwrapped.task_space.splits


def test_bad_task_values_are_refused_by_name():
    vel = gym.make("MetaRL/HalfCheetahVel-v0").unwrapped
    with pytest.raises(TaskError, match="'target_velocity'.*allowed"):
        vel.set_task({"family": "HalfCheetahVel", "target_velocity": 4.0})
    with pytest.raises(TaskError, match="'direction'.*allowed one of"):
        gym.make("MetaRL/HalfCheetahDir-v0").unwrapped.set_task({"direction": 0.5})


# ---------------------------------------------------------------------------------------------
# The builder reaches into MuJoCo model arrays: a task that changes the dynamics
# ---------------------------------------------------------------------------------------------
TorsoMassFamily = make_family(
    "HalfCheetah-v5",
    {"model.body_mass[1]": (3.0, 9.0)},  # body 1: the torso (v5 default 6.25 kg)
    name="TorsoMass",
    horizon=50,
)


def test_builder_path_writes_the_mujoco_model_and_changes_the_dynamics():
    env = TorsoMassFamily()
    task_cls = env.task_space.task_cls
    assert env.task_space.describe() == {"model_body_mass_1": "U[3, 9]"}
    assert env.get_task().model_body_mass_1 == pytest.approx(6.25, abs=0.01)  # the model's own
    light, heavy = rollout(env, task_cls(3.0), 40), rollout(env, task_cls(9.0), 40)
    assert env.model.body_mass[1] == 9.0  # written into the simulator's model
    x_light = light["info"][-1]["x_position"]
    x_heavy = heavy["info"][-1]["x_position"]
    assert np.abs(light["obs"] - heavy["obs"]).max() > 0.5  # same actions, other dynamics
    assert abs(x_light - x_heavy) > 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
    with pytest.raises(TaskError, match=r"no attribute 'model.body_mass\[99\]'.*IndexError"):
        make_family("HalfCheetah-v5", {"model.body_mass[99]": (1.0, 2.0)})
    with pytest.raises(TaskError, match="neither an attribute name nor a path"):
        make_family("HalfCheetah-v5", {"model.body_mass[-1]": (1.0, 2.0)})


# ---------------------------------------------------------------------------------------------
# One training iteration per algorithm (tiny sizes, horizon 10)
# ---------------------------------------------------------------------------------------------
TINY_MAML = [
    "meta_batch=2",
    "episodes_per_task=2",
    "iterations=1",
    "eval_tasks=2",
    "eval_episodes=1",
    "horizon=10",
    "hidden=[16]",
    "ppo_epochs=2",
]
TINY_RL2 = [
    "tasks_per_iteration=2",
    "iterations=1",
    "eval_tasks=2",
    "hidden_size=16",
    "minibatches=1",
    "update_epochs=2",
    'env_kwargs={"horizon": 10}',
]


def train_preset(name: str, overrides: list[str]) -> dict[str, float]:
    import torch

    from meta_rl.presets import get_preset

    torch.set_num_threads(1)
    preset = get_preset(name)
    return dict(preset.train(preset.make_config(overrides=overrides), None))


@pytest.mark.parametrize("name", ["maml-trpo-halfcheetah-vel", "maml-ppo-halfcheetah-vel"])
def test_maml_one_iteration_on_halfcheetah_vel(name):
    out = train_preset(name, TINY_MAML)
    # 2 tasks x 2 episodes x 10 steps, support + query (cheetah episodes never terminate)
    assert out["env_steps"] == 2 * 2 * 10 * 2
    assert all(math.isfinite(out[k]) for k in ("return_pre", "return_post", "eval_return_1"))
    assert 0.0 < out["kl"] < 1.0  # the outer step moved the policy, within the trust region
    # Per-step reward <= 0 (minus a velocity error and a cost): returns are negative.
    assert out["return_pre"] < 0 and out["eval_return_0"] < 0


def test_same_seed_same_training_numbers():
    first, again = (train_preset("maml-ppo-halfcheetah-vel", TINY_MAML) for _ in range(2))
    timing = {"steps_per_second"}
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in again.items() if k not in timing
    }


def test_rl2_one_iteration_on_halfcheetah_vel():
    out = train_preset("rl2-halfcheetah-vel", TINY_RL2)
    assert out["env_steps"] == 2 * 2 * 10  # 2 trials of 2 episodes of 10 steps
    assert math.isfinite(out["eval_return"]) and out["eval_return"] < 0
    assert out["approx_kl"] > 0  # the second PPO epoch saw the first one's update


# The other families: each algorithm once (MAML presets with the family swapped in).
OTHER = {
    "MetaRL/HalfCheetahDir-v0": ["eval_split=train"],  # two tasks, both training tasks
    "MetaRL/AntDir-v0": [],
    "MetaRL/AntGoal-v0": [],
}
TINIER = ["eval_tasks=1"]


@pytest.mark.parametrize("env_id", sorted(OTHER))
@pytest.mark.parametrize("name", ["maml-trpo-halfcheetah-vel", "maml-ppo-halfcheetah-vel"])
def test_maml_one_iteration_on_the_other_families(name, env_id):
    out = train_preset(name, [*TINY_MAML, *TINIER, f"env_id={env_id}", *OTHER[env_id]])
    assert 0 < out["env_steps"] <= 2 * 2 * 10 * 2  # Ant episodes may end early (unhealthy)
    assert math.isfinite(out["eval_return_1"]) and 0.0 < out["kl"] < 1.0


@pytest.mark.parametrize("env_id", sorted(OTHER))
def test_rl2_one_iteration_on_the_other_families(env_id):
    out = train_preset(
        "rl2-halfcheetah-vel", [*TINY_RL2, *TINIER, f"env_id={env_id}", *OTHER[env_id]]
    )
    assert 0 < out["env_steps"] <= 2 * 2 * 10 and math.isfinite(out["eval_return"])
