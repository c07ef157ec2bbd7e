"""Meta-World families (envs/metaworld_tasks.py): Meta-World's own train/test splits (and the
guard against the 3.1.1 ``ML1-train`` defect), env checks, what a task changes, success rate,
and a one-iteration training run of MAML-TRPO, MAML-PPO and RL^2 on ML1 reach.

Skipped when the ``metaworld`` extra is not installed (``pip install meta-rl[metaworld]``).
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from importlib.metadata import version

import pytest

pytest.importorskip(
    "metaworld",
    reason="Meta-World families need the 'metaworld' extra: pip install 'meta-rl[metaworld]'",
)

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from meta_rl_envs import TaskError  # noqa: E402
from meta_rl_envs.metaworld_tasks import ENV_NAMES, MetaWorldTask, success_rate  # noqa: E402
from metaworld.policies import SawyerReachV3Policy  # noqa: E402

REACH = "MetaRL/ML1-reach-v0"


@pytest.fixture(scope="module")
def reach():
    env = gym.make(REACH, horizon=100)
    yield env
    env.close()


def goals(mw_tasks) -> set[tuple[float, ...]]:
    return {tuple(pickle.loads(t.data)["rand_vec"].tolist()) for t in mw_tasks}


# ---------------------------------------------------------------------------------------------
# Splits: Meta-World's own lists, and they really differ
# ---------------------------------------------------------------------------------------------
def test_ml1_splits_are_metaworlds_lists_and_share_no_goal(reach):
    space = reach.unwrapped.task_space
    train = {t.rand_vec for t in space.tasks.train}
    test = {t.rand_vec for t in space.tasks.test}
    bench = metaworld.ML1("reach-v3", seed=0)
    assert train == goals(bench.train_tasks) and test == goals(bench.test_tasks)
    assert len(train) == len(test) == 50 and not train & test
    # What sample_tasks hands out comes from the right list, and the two never meet.
    handed = {s: reach.unwrapped.sample_tasks(120, 1, s) for s in ("train", "test")}
    assert {t.rand_vec for t in handed["train"]} == train  # 120 draws cycle through all 50
    assert {t.rand_vec for t in handed["test"]} == test
    assert all(space.split_of(t) == s for s, ts in handed.items() for t in ts)
    # Goals differ, not only as sets: the nearest test goal is a real distance away.
    a, b = np.array(sorted(train)), np.array(sorted(test))
    assert np.linalg.norm(a[:, None] - b[None], axis=-1).min() > 1e-4


def test_task_lists_round_trip_through_the_disk_cache(reach, tmp_path, monkeypatch):
    from meta_rl_envs import metaworld_tasks as M

    built = reach.unwrapped.task_space.tasks  # this process's lists
    monkeypatch.setenv("META_RL_CACHE", str(tmp_path))
    path = tmp_path / f"metaworld-{version('metaworld')}" / "ML1-reach-v3-seed0.json"
    M.benchmark_tasks.cache_clear()
    try:
        M._store_cached(path, built.train, built.test)
        loaded = M.benchmark_tasks("ML1", "reach-v3", 0)  # read back from the file
        assert loaded == built and loaded is not built
        path.write_text("{not json")  # a broken cache file is rebuilt (and rewritten), not trusted
        M.benchmark_tasks.cache_clear()
        assert M.benchmark_tasks("ML1", "reach-v3", 0) == built
        assert len(json.loads(path.read_text())["test"]) == 50
    finally:
        M.benchmark_tasks.cache_clear()


@pytest.mark.skipif(version("metaworld") != "3.1.1", reason="checks metaworld 3.1.1's defect")
def test_upstream_ml1_train_id_builds_the_test_split(reach):
    """The defect the family guards against: in metaworld 3.1.1 ``Meta-World/ML1-train`` hands
    out ML1's *test* goals (if this starts failing, upstream fixed it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = gym.make_vec("Meta-World/ML1-train", env_name="reach-v3", seed=0, meta_batch_size=1)
    handed = goals(vec.envs[0].get_wrapper_attr("tasks"))
    vec.close()
    ours = reach.unwrapped.task_space.tasks  # == metaworld.ML1("reach-v3", seed=0)'s lists
    assert handed == {t.rand_vec for t in ours.test}
    assert not handed & {t.rand_vec for t in ours.train}


def test_ml10_splits_are_disjoint_envs():
    env = gym.make("MetaRL/ML10-v0", horizon=20)
    tasks = env.unwrapped.task_space.tasks
    train_envs = {ENV_NAMES[int(t.env)] for t in tasks.train}
    test_envs = {ENV_NAMES[int(t.env)] for t in tasks.test}
    assert train_envs == set(metaworld.env_dict.ML10_V3["train"])
    assert len(train_envs) == 10 and len(test_envs) == 5 and not train_envs & test_envs
    assert len(tasks.train) == 500 and len(tasks.test) == 250
    # A held-out env runs through the same family env (observation and action spaces shared).
    task = env.unwrapped.sample_tasks(1, 0, "test")[0]
    _, info = env.reset(seed=0, options={"task": task})
    assert info["task"]["env"] == task.env and task.env_name in test_envs
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and "success" in info and not terminated
    env.close()


def test_any_ml1_env_is_registered_on_demand():
    from meta_rl_envs import FAMILIES, check_id

    env_id = "MetaRL/ML1-door-open-v0"
    assert env_id not in FAMILIES  # registered up front: reach, push, pick-place
    try:
        spec = check_id(env_id)  # what make_env / VectorTaskEnv call first
        assert spec.kwargs == {"benchmark": "ML1", "env_name": "door-open-v3"}
        assert env_id in FAMILIES and env_id in gym.registry
    finally:
        FAMILIES.pop(env_id, None)
        gym.registry.pop(env_id, None)
    with pytest.raises(TaskError, match="'nope-v3' is not a Meta-World v3 env.*'reach-v3'"):
        check_id("MetaRL/ML1-nope-v0")


# ---------------------------------------------------------------------------------------------
# The env: checker, task echo, bad input
# ---------------------------------------------------------------------------------------------
def test_checker_passes_on_train_and_test_goals(reach):
    fam = reach.unwrapped
    for split in ("train", "test"):
        task = fam.sample_tasks(1, 2, split)[0]
        fam.set_task(task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the hidden goal's zero-width bounds
            check_env(fam, skip_render_check=True)
        obs, info = reach.reset(seed=0)
        assert info["task"] == task.to_dict()
        assert np.all(obs[-3:] == 0.0)  # the goal is hidden (Meta-World's ML setting)
    with pytest.raises(TaskError, match="no ood split"):
        fam.sample_tasks(1, 0, "ood")


def test_bad_goals_and_envs_are_refused(reach):
    fam = reach.unwrapped
    task = fam.sample_tasks(1, 0)[0]
    fam.set_task(task)
    with pytest.raises(TaskError, match="'rand_vec'.*out of range for reach-v3.*allowed"):
        fam.set_task(MetaWorldTask(task.env, (9.0,) * 6))
    with pytest.raises(TaskError, match="'rand_vec' has 3 values; reach-v3 expects shape"):
        fam.set_task(MetaWorldTask(task.env, task.rand_vec[:3]))
    push = float(ENV_NAMES.index("push-v3"))
    with pytest.raises(TaskError, match="'env'.*allowed one of"):
        fam.set_task(MetaWorldTask(push, task.rand_vec))
    with pytest.raises(TaskError, match="horizon=600"):
        gym.make(REACH, horizon=600)
    assert fam.get_task() == task  # a refused task does not replace the current one


# ---------------------------------------------------------------------------------------------
# What a task changes, and success rate
# ---------------------------------------------------------------------------------------------
def scripted(goal: np.ndarray):
    """Meta-World's scripted reach policy, told the (hidden) goal."""
    policy = SawyerReachV3Policy()
    return lambda obs: policy.get_action(np.concatenate([obs[:36], goal])).astype(np.float32)


def test_the_goal_decides_reward_and_success(reach):
    fam = reach.unwrapped
    tasks = fam.sample_tasks(50, 0, "test")
    goal = [np.asarray(t.rand_vec[3:]) for t in tasks]
    # Two test goals far apart (reach succeeds within 5 cm of the goal).
    i, j = max(
        ((i, j) for i in range(len(tasks)) for j in range(i)),
        key=lambda ij: np.linalg.norm(goal[ij[0]] - goal[ij[1]]),
    )
    assert np.linalg.norm(goal[i] - goal[j]) > 0.15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scripted policy's "constants may be too high"
        own = success_rate(reach, [tasks[i]], scripted(goal[i]))
        other = success_rate(reach, [tasks[j]], scripted(goal[i]))  # walks to the wrong goal
    assert own["success_rate"] == 1.0 and other["success_rate"] == 0.0
    # Meta-World's v2 reach reward is at most 10 per step and highest at the goal.
    assert own["mean_return"] > other["mean_return"] + 100.0
    idle = success_rate(reach, tasks[:3], lambda obs: np.zeros(4, np.float32))
    assert idle["success_rate"] == 0.0 and idle["episodes"] == 3.0


# ---------------------------------------------------------------------------------------------
# One training iteration per algorithm (tiny sizes, horizon 10), then success rate
# ---------------------------------------------------------------------------------------------
TINY_MAML = [
    "meta_batch=2",
    "episodes_per_task=1",
    "iterations=1",
    "eval_tasks=1",
    "eval_episodes=1",
    "horizon=10",
    "hidden=[16]",
    "ppo_epochs=2",
]
TINY_RL2 = [
    "tasks_per_iteration=2",
    "episodes_per_trial=2",
    "iterations=1",
    "eval_tasks=1",
    "hidden_size=16",
    "minibatches=1",
    "update_epochs=2",
    'env_kwargs={"horizon": 10}',
]


def train_preset(name: str, overrides: list[str]):
    import torch

    from meta_rl.presets import get_preset

    torch.set_num_threads(1)
    preset = get_preset(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the passive checker on the hidden goal's bounds
        return dict(preset.train(preset.make_config(overrides=overrides), None))


@pytest.mark.parametrize("name", ["maml-trpo-ml1-reach", "maml-ppo-ml1-reach"])
def test_maml_one_iteration_on_ml1_reach(name):
    out = train_preset(name, TINY_MAML)
    assert out["env_steps"] == 2 * 1 * 10 * 2  # Meta-World episodes never terminate
    assert all(math.isfinite(out[k]) for k in ("return_pre", "return_post", "eval_return_1"))
    assert 0.0 < out["kl"] < 1.0
    assert 0.0 < out["return_pre"] < 10.0 * 10  # v2 rewards lie in [0, 10] per step


@pytest.mark.parametrize("name", ["maml-trpo-ml1-reach", "maml-ppo-ml1-reach"])
def test_maml_one_iteration_on_ml10(name):
    out = train_preset(name, [*TINY_MAML, "env_id=MetaRL/ML10-v0", "horizon=5"])
    assert out["env_steps"] == 2 * 1 * 5 * 2
    assert math.isfinite(out["eval_return_1"]) and 0.0 < out["kl"] < 1.0


def test_rl2_one_iteration_on_ml10():
    out = train_preset("rl2-ml1-reach", [*TINY_RL2, "env_id=MetaRL/ML10-v0"])
    assert out["env_steps"] == 2 * 2 * 10 and math.isfinite(out["eval_return"])


def test_rl2_one_iteration_on_ml1_reach():
    out = train_preset("rl2-ml1-reach", TINY_RL2)
    assert out["env_steps"] == 2 * 2 * 10
    assert 0.0 < out["eval_return"] < 10.0 * 20 and out["approx_kl"] > 0


def test_evaluation_reports_success_rate_on_test_goals(tmp_path):
    """``meta_rl.evaluate`` on a MAML run (one meta-iteration) on ML1 reach reports Meta-World's
    success rate at every adaptation step, per task (a barely trained policy reaches no goal; the
    scripted policy above shows the same measurement reads 1.0 when the goal is reached)."""
    from meta_rl.evaluate import evaluate_run
    from meta_rl.presets import get_preset
    from meta_rl.runs import Run

    preset = get_preset("maml-trpo-ml1-reach")
    config = preset.make_config(overrides=[*TINY_MAML, "checkpoint_every=1", "eval_every=0"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Run.create(tmp_path / "run", preset.name, config) as run:
            preset.train(run.config, run)
        report = evaluate_run(
            tmp_path / "run", split="test", tasks=2, budget=1, baselines=("none",), episodes=1
        )
    points = report.adapted.points
    assert len(points) == 2  # after 0 and 1 inner steps
    for point in points:
        assert len(point.success_per_task) == 2
        assert point.success_rate == np.mean(point.success_per_task)
        assert set(point.success_per_task) <= {0.0, 1.0}
