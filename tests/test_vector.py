"""The batched-env contract: one Protocol, one Gymnasium adapter with success tracking, one
make_env (issue 13), Gymnasium's vector-space convention and the compile message (issue 14)."""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from meta_rl_envs import make_batched, make_env, register_family
from meta_rl_envs.batched import BatchedEnv, BatchedTaskEnv
from meta_rl_envs.builder import make_family
from meta_rl_envs.core import TaskError
from meta_rl_envs.vector import VectorTaskEnv
from meta_rl_envs.wrappers import BatchedTrialEnv

META_RL = Path(__file__).resolve().parents[1] / "meta_rl"


def test_one_adapter_one_factory():
    """The adapters of the Gymnasium-only families live in meta_rl_envs, once."""
    text = "\n".join(p.read_text() for p in META_RL.rglob("*.py"))
    for name in ("class VectorTaskEnv", "class VectorAsBatched", "class SuccessVectorTaskEnv"):
        assert name not in text
    assert "\ndef make_env(" not in text and "def _make_task_env(" not in text


@pytest.mark.parametrize("env_id", ["MetaRL/PointNav-v0", "MetaRL/Pendulum-v0"])
def test_make_env_picks_the_twin_or_the_adapter_both_follow_the_protocol(env_id):
    env = make_env(env_id, 3, 2)
    assert isinstance(env, BatchedTaskEnv)
    has_twin = env_id == "MetaRL/PointNav-v0"
    assert isinstance(env, BatchedEnv if has_twin else VectorTaskEnv)
    env.set_tasks(env.sample_tasks(3, 0))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6, *env.single_observation_space.shape)
    assert env.task_success() is None  # neither family reports success
    trial = BatchedTrialEnv(env, 2)
    assert trial.observation_space.shape == (6, *trial.single_observation_space.shape)
    env.close()


def test_batched_envs_have_gymnasium_vector_spaces():
    """make_batched envs carry observation_space / action_space (the single spaces batched over
    the rows), as Gymnasium vector envs do."""
    env = make_batched("MetaRL/CartPole-v0", 4, 2)
    assert env.action_space == gym.vector.utils.batch_space(env.single_action_space, 8)
    assert env.observation_space.shape == (8, 4)
    assert env.action_space.shape == (8,)
    env.set_tasks(env.sample_tasks(4, 0))
    env.reset(seed=0)
    action = torch.as_tensor(env.action_space.sample())
    obs, *_ = env.step(action)
    assert env.observation_space.contains(obs.numpy())
    vec = make_env("MetaRL/Pendulum-v0", 2, 1)
    assert vec.action_space.shape == (2, 1) and vec.observation_space.shape == (2, 3)
    vec.close()


def test_the_first_compiled_step_says_it_is_compiling(monkeypatch, caplog):
    """compile=True: a message before the (long) first compile, not only after it."""
    from meta_rl_envs import classic

    seen = []

    def fake_compile(graph, args):
        seen.append("compiling (once)" in caplog.text)  # said before the compiler ran
        return graph

    monkeypatch.setattr(torch._inductor, "compile", fake_compile)
    caplog.set_level(logging.INFO, logger="meta_rl_envs")
    env = make_batched("MetaRL/CartPole-v0", 2, 1, compile=True)
    env.set_tasks(env.sample_tasks(2, 0))
    env.reset(seed=0)
    env.step(torch.zeros(2, dtype=torch.long))
    assert seen == [True] and env.compile
    env.step(torch.zeros(2, dtype=torch.long))
    assert caplog.text.count("compiling (once)") == 1
    assert classic.log.name == "meta_rl_envs.classic"


class GoalEnv(gym.Env):
    """A point that stays put; success while within 0.15 of (goal, goal)."""

    def __init__(self) -> None:
        self.goal = 0.3
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        success = bool(np.hypot(self.goal, self.goal) < 0.15)
        return np.zeros(2, np.float32), 0.0, False, False, {"success": success}


GoalFamily = make_family(GoalEnv, {"goal": (-0.5, 0.5)}, name="Goal", horizon=3)


def test_the_adapter_records_success_per_task():
    register_family("MetaRLTest/Goal-v0", GoalFamily)
    env = make_env("MetaRLTest/Goal-v0", 2, 2)
    assert isinstance(env, VectorTaskEnv) and isinstance(env, BatchedTaskEnv)
    near, far = (env.task_space.validate({"goal": g}) for g in (0.05, 0.45))
    env.set_tasks([near, far])
    env.reset(seed=0)
    _, _, _, _, info = env.step(torch.zeros(4, 2))
    assert info["success"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(env.task_success(), [1.0, 0.0])
    env.reset(seed=0)
    assert env.task_success() is None  # cleared by reset
    env.close()


def test_cli_rollout_runs_a_family_without_a_twin():
    from meta_rl.cli import random_rollout

    out = random_rollout("MetaRL/Pendulum-v0", 2, 1, 250, seed=0, device="cpu")
    assert len(out["tasks"]) == 2 and all(t["complete"] for t in out["tasks"])


def _episodes(env_id: str, workers: int, steps: int, envs_per_task: int = 2) -> list:
    env = VectorTaskEnv(env_id, 3, envs_per_task, workers=workers)
    env.set_tasks(env.sample_tasks(3, np.random.default_rng(0)))
    gen = torch.Generator().manual_seed(0)
    low = torch.as_tensor(env.single_action_space.low, dtype=torch.float32)
    high = torch.as_tensor(env.single_action_space.high, dtype=torch.float32)
    out = [env.reset(seed=3)[0]]
    for _ in range(steps):
        u = torch.rand((env.num_envs, *env.single_action_space.shape), generator=gen)
        obs, reward, terminated, truncated, info = env.step(low + (high - low) * u)
        out += [obs, reward, terminated, truncated, info["final_obs"], info.get("success")]
    out.append(env.task_success())
    env.close()
    return out


@pytest.mark.parametrize("workers", [2, 4])
def test_worker_processes_give_the_episodes_of_one_process(workers):
    """Sharding the rows over processes changes nothing a sampler sees (issue 15): same tasks,
    same per-row reset seeds, autoresets across episode ends (Pendulum's horizon is 200)."""
    one = _episodes("MetaRL/Pendulum-v0", 1, 420)
    many = _episodes("MetaRL/Pendulum-v0", workers, 420)
    assert len(one) == len(many)
    assert sum(bool(t.any()) for t in one[4::6]) == 2  # two time-limit ends crossed
    for a, b in zip(one, many, strict=True):
        assert (a is None and b is None) or np.array_equal(np.asarray(a), np.asarray(b))


def test_worker_processes_pass_on_success_per_task():
    register_family("MetaRLTest/Goal-v0", GoalFamily)  # registered here only: workers are forked
    env = VectorTaskEnv("MetaRLTest/Goal-v0", 2, 2, workers=2)
    near, far = (env.task_space.validate({"goal": g}) for g in (0.05, 0.45))
    env.set_tasks([near, far])
    env.reset(seed=0)
    _, _, _, _, info = env.step(torch.zeros(4, 2))
    assert info["success"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(env.task_success(), [1.0, 0.0])
    env.close()
    env.close()  # closing twice is harmless


class BrittleGoalEnv(GoalEnv):
    def step(self, action):
        if action[0] > 0:
            raise ValueError("pushed too hard")
        return super().step(action)


def test_a_failing_worker_names_its_rows():
    register_family(
        "MetaRLTest/BrittleGoal-v0", make_family(BrittleGoalEnv, {"goal": (0, 1)}, horizon=3)
    )
    env = VectorTaskEnv("MetaRLTest/BrittleGoal-v0", 2, 2, workers=2)
    env.set_tasks(env.sample_tasks(2, np.random.default_rng(0)))
    env.reset(seed=0)
    env.step(torch.zeros(4, 2))
    push = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.0, 0.0]])
    with pytest.raises(RuntimeError, match=r"env worker 1 \(rows 2-3\) failed: .*pushed too hard"):
        env.step(push)
    env.close()


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts_are_named(workers):
    with pytest.raises(TaskError, match="workers="):
        VectorTaskEnv("MetaRL/Pendulum-v0", 2, 1, workers=workers)


@pytest.mark.parametrize("preset_name", ["maml-trpo-pointnav", "rl2-bandits"])
def test_trainers_give_the_same_numbers_with_env_workers(preset_name, tmp_path):
    """``env_workers`` (issue 15) is a speed knob only: a tiny same-seed run on a family without
    a twin logs the same metrics with 1 and with 2 env processes."""
    from meta_rl.presets import get_preset
    from meta_rl.runs import Run, read_metrics

    tiny = {
        "maml-trpo-pointnav": dict(
            iterations=2,
            meta_batch=2,
            episodes_per_task=2,
            hidden=(8, 8),
            horizon=20,
            eval_tasks=2,
            eval_episodes=1,
            eval_every=2,
            checkpoint_every=0,
        ),
        "rl2-bandits": dict(
            iterations=1,
            tasks_per_iteration=4,
            hidden_size=8,
            episodes_per_trial=2,
            eval_every=1,
            eval_tasks=2,
            checkpoint_every=0,
            log_every=1,
            env_kwargs={},
        ),
    }[preset_name]
    logs = []
    for workers in (1, 2):
        preset = get_preset(preset_name)
        values = dict(tiny, env_id="MetaRL/Pendulum-v0", env_workers=workers, device="cpu")
        config = preset.make_config(values)
        out = tmp_path / f"w{workers}"
        with Run.create(out, preset_name, config, show_progress=False) as run:
            final = run.finish(preset.load_trainer()(run.config, run) or {})
        drop = {"time", "env_steps_per_s", "steps_per_second", "train/it_per_s", "train/seconds"}
        rows = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(out)]
        logs.append((rows, {k: v for k, v in final.items() if k not in drop}))
    assert logs[0][0] and logs[0] == logs[1]
