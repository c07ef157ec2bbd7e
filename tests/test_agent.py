"""meta_rl.load: agents rebuilt from config.json + safetensors, SB3's predict protocol,
adaptation through the training code's functions, TorchScript export, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import meta_rl
from meta_rl.agent import GradientAgent, MemoryAgent, SpaceMismatchError
from meta_rl.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from meta_rl.cli import main
from meta_rl.export import flatten_state
from meta_rl.runs import RunError

TINY_MAML = {
    "device": "cpu",
    "iterations": 2,
    "meta_batch": 4,
    "episodes_per_task": 4,
    "horizon": 20,
    "hidden": "[16,16]",
    "eval_tasks": 4,
    "eval_episodes": 2,
    "eval_every": 0,
    "checkpoint_every": 1,
}
TINY_RL2 = {
    "device": "cpu",
    "iterations": 2,
    "tasks_per_iteration": 8,
    "hidden_size": 16,
    "minibatches": 2,
    "update_epochs": 1,
    "eval_tasks": 8,
    "references": "false",
}


def train_cli(preset: str, out: Path, values: dict[str, object]) -> Path:
    sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    assert main(["-q", "train", preset, "--out", str(out), "--no-progress", *sets]) == 0
    return out


@pytest.fixture(scope="module")
def grad_run(tmp_path_factory) -> Path:
    return train_cli("smoke-pointnav", tmp_path_factory.mktemp("agent") / "maml", TINY_MAML)


@pytest.fixture(scope="module", params=["rl2-bandits", "rl2-ntm-bandits"])
def mem_run(tmp_path_factory, request) -> Path:
    """An RL^2 run with the GRU policy, and one with the NTM policy (memory in the state)."""
    return train_cli(request.param, tmp_path_factory.mktemp("agent") / "rl2", TINY_RL2)


def fresh_python(code: str, timeout: float = 120.0) -> str:
    """Run ``code`` in a new interpreter (one torch thread); return its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


OBS = np.array([[0.0, 0.0], [0.3, -0.2], [-0.4, 0.1], [0.05, 0.45]], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Gradient agents
# --------------------------------------------------------------------------------------------
def test_load_gives_the_trained_policy_and_same_actions_in_a_fresh_process(grad_run):
    from meta_rl.checkpoint import load_checkpoint
    from meta_rl.rl.maml import build_setup
    from meta_rl.runs import load_config

    # The policy as the trainer builds and holds it (build_setup + the final weights).
    setup = build_setup(load_config(grad_run))
    ck = load_checkpoint(latest_checkpoint(grad_run / "checkpoints"))
    with torch.no_grad():
        for k, v in setup.learner.outer_params().items():
            v.copy_(ck.tensors[k])
        head, _ = setup.policy.head(setup.learner.theta, torch.as_tensor(OBS))
    trained = np.clip(head.numpy(), -0.1, 0.1)

    agent = meta_rl.load(grad_run)
    assert isinstance(agent, GradientAgent) and agent.checkpoint_step == 2
    actions, state = agent.predict(OBS, deterministic=True)
    assert state is None
    np.testing.assert_allclose(actions, trained, rtol=0, atol=1e-7)
    agent.seed(5)
    sampled, _ = agent.predict(OBS)
    assert not np.allclose(sampled, actions)

    out = fresh_python(
        f"""
        import json, numpy as np, meta_rl
        agent = meta_rl.load({str(grad_run)!r})
        obs = np.array({OBS.tolist()}, dtype=np.float32)
        det, _ = agent.predict(obs, deterministic=True)
        agent.seed(5)
        sam, _ = agent.predict(obs)
        print(json.dumps({{"det": det.tolist(), "sam": sam.tolist()}}))
        """
    )
    got = json.loads(out)
    np.testing.assert_array_equal(np.array(got["det"], np.float32), actions)
    np.testing.assert_array_equal(np.array(got["sam"], np.float32), sampled)


def test_adaptation_is_the_training_code_path(grad_run):
    from meta_rl.rl.maml import adaptation_curve, evaluate_adaptation

    agent = meta_rl.load(grad_run)
    env = agent.make_env(3, 2)
    tasks = env.sample_tasks(3, np.random.default_rng(1), "test")
    curve = adaptation_curve(agent.learner, env, tasks, 2, seed=7)
    assert curve.returns.shape == (3, 3) and curve.env_steps.shape == (3, 3)
    # the mean over tasks is exactly what training's evaluation logs for the same seed
    assert curve.returns.mean(1).tolist() == evaluate_adaptation(agent.learner, env, tasks, 2, 7)
    # the meta-params themselves are untouched by adapting
    before = {k: v.clone() for k, v in agent.params.items()}
    adapted = agent.adapt(tasks[0], budget=1, episodes=2)
    assert all(torch.equal(before[k], agent.params[k]) for k in before)
    assert any(not torch.equal(before[k], adapted.params[k]) for k in before)
    assert adapted.adapted_on == tasks[0] and len(adapted.adaptation_returns) == 2


def test_evaluate_policy_runs_a_loaded_and_an_adapted_agent(grad_run):
    from stable_baselines3.common.evaluation import evaluate_policy

    agent = meta_rl.load(grad_run).to("cpu")
    env = gym.make("MetaRL/PointNav-v0", horizon=20)
    task = env.unwrapped.sample_tasks(1, 3, "test")[0]
    env.unwrapped.set_task(task)
    adapted = agent.adapt(env, budget=1, episodes=2)  # from the env: its family and its task
    assert adapted.adapted_on == task
    for a in (agent, adapted):
        a.seed(0)
        returns, lengths = evaluate_policy(
            a, env, n_eval_episodes=3, return_episode_rewards=True, warn=False
        )
        assert len(returns) == 3 and all(n == 20 for n in lengths)
        # every step's reward is minus a distance no larger than |goal| + 20 steps of 0.1 * sqrt 2
        assert all(-20 * (0.72 + 2.9) < r < 0 for r in returns)
    mean1, _ = evaluate_policy(agent, env, 2, deterministic=True, warn=False)
    mean2, _ = evaluate_policy(agent, env, 2, deterministic=True, warn=False)
    assert mean1 == mean2


def test_export_loads_in_a_process_without_meta_rl_and_matches(grad_run, tmp_path):
    agent = meta_rl.load(grad_run)
    task = agent.make_env(1, 1).sample_tasks(1, np.random.default_rng(2), "test")[0]
    adapted = agent.adapt(task, budget=1, episodes=2)
    path = adapted.export(tmp_path / "policy.pt")
    det, _ = adapted.predict(OBS, deterministic=True)
    noise = np.random.default_rng(0).standard_normal(OBS.shape).astype(np.float32)
    from meta_rl.policies import distributions as D

    head, log_std = adapted.policy.head(adapted.params, torch.as_tensor(OBS))
    sam = D.sample_from_noise(adapted.action_space, head, log_std, torch.as_tensor(noise))
    sam = np.clip(sam.detach().numpy(), -0.1, 0.1)

    out = fresh_python(
        f"""
        import json, sys, torch
        m = torch.jit.load({str(path)!r})
        obs = torch.tensor({OBS.tolist()})
        noise = torch.tensor({noise.tolist()})
        det = m(obs, True)
        sam = m(obs, False, noise)
        assert not any(k.startswith("meta_rl") for k in sys.modules), "meta_rl was imported"
        print(json.dumps({{"det": det.tolist(), "sam": sam.tolist()}}))
        """
    )
    got = json.loads(out)
    np.testing.assert_allclose(np.array(got["det"]), det, atol=1e-6)
    np.testing.assert_allclose(np.array(got["sam"]), sam, atol=1e-6)
    unadapted, _ = agent.predict(OBS, deterministic=True)
    assert not np.allclose(unadapted, det)


def test_exported_policies_take_the_envs_numpy_observation_in_any_float_dtype(
    grad_run, mem_run, tmp_path
):
    """README: ``torch.jit.load("policy.pt")(torch.as_tensor(obs))`` with the env's own numpy
    observation; a float64 tensor gives the same actions as float32 (issue 14)."""
    agent = meta_rl.load(grad_run)
    policy = torch.jit.load(str(agent.export(tmp_path / "policy.pt")))
    env = gym.make("MetaRL/PointNav-v0")
    obs, _ = env.reset(seed=0)
    action = policy(torch.as_tensor(obs)).numpy()  # the README line
    assert action.shape == env.action_space.shape and env.action_space.contains(action)
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.int64):
        x = torch.as_tensor(OBS).to(dtype)
        assert policy(x).dtype == torch.float32
        assert (
            policy(x, False, torch.zeros(len(OBS), 2, dtype=torch.float64)).dtype == torch.float32
        )
    x64 = torch.as_tensor(OBS.astype(np.float64))
    assert torch.equal(policy(x64), policy(torch.as_tensor(OBS)))
    assert torch.equal(policy.head(x64), policy.head(torch.as_tensor(OBS)))

    memory = meta_rl.load(mem_run)
    rl2 = torch.jit.load(str(memory.export(tmp_path / "rl2.pt")))
    trial_obs = np.random.default_rng(0).random((3, memory.trial_observation_space.shape[0]))
    state = rl2.initial_state(3)
    a64, s64 = rl2(torch.as_tensor(trial_obs), state.double())  # numpy float64 as it comes
    a32, s32 = rl2(torch.as_tensor(trial_obs, dtype=torch.float32), state)
    assert torch.equal(a64, a32) and torch.equal(s64, s32) and s64.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Errors: one clear error naming the file or the mismatch
# --------------------------------------------------------------------------------------------
def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


def _flip_a_byte(sidecar: Path) -> Path:
    tensors = sidecar.parent / json.loads(sidecar.read_text())["tensors_file"]
    blob = bytearray(tensors.read_bytes())
    blob[-5] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    return tensors


def test_corrupt_newest_checkpoint_falls_back_on_the_older_one(grad_run, tmp_path, caplog):
    run = copy_run(grad_run, tmp_path / "run")
    (older, _), (_, newest) = list_checkpoints(run / "checkpoints")[-2:]
    tensors = _flip_a_byte(newest)
    agent = meta_rl.load(run)
    assert agent.checkpoint_step == older
    warning = f"using checkpoint step_{older:08d}.json (step {older}): the newer {newest.name}"
    assert warning in caplog.text and f"{tensors.name}' is corrupt" in caplog.text
    for _, sidecar in list_checkpoints(run / "checkpoints"):
        if sidecar != newest:
            _flip_a_byte(sidecar)
    with pytest.raises(CheckpointError, match=f"{tensors.name}.*corrupt"):  # none usable
        meta_rl.load(run)


def test_load_a_checkpoint_file(grad_run):
    (first, sidecar), (last, _) = list_checkpoints(grad_run / "checkpoints")[-2:]
    agent = meta_rl.load(sidecar)  # the README: "a run folder or a checkpoint file"
    assert agent.checkpoint_step == first and agent.path == grad_run
    tensors = grad_run / "checkpoints" / json.loads(sidecar.read_text())["tensors_file"]
    assert meta_rl.load(tensors).checkpoint_step == first
    assert meta_rl.load(grad_run).checkpoint_step == last
    with pytest.raises(CheckpointError, match="neither a run folder nor a checkpoint file"):
        meta_rl.load(grad_run / "config.json")
    with pytest.raises(RunError, match="run folder 'nowhere' does not exist"):
        meta_rl.load("nowhere")


def test_load_refuses_non_finite_weights(grad_run, tmp_path):
    from tests.test_config import rewrite_tensors

    run = copy_run(grad_run, tmp_path / "run")
    for _, sidecar in list_checkpoints(run / "checkpoints"):
        rewrite_tensors(sidecar, lambda t: t["net.0.weight"].fill_(float("nan")))
    with pytest.raises(CheckpointError, match="non-finite weights.*'net.0.weight'"):
        meta_rl.load(run)


def test_a_few_shot_run_is_pointed_at_its_evaluation(tmp_path, capsys):
    from meta_rl.fewshot.metric import ProtoNetConfig
    from meta_rl.runs import Run

    Run.create(tmp_path / "fs", "protonet-glyphs", ProtoNetConfig(device="cpu")).close()
    with pytest.raises(RunError, match="supervised few-shot run.*final.json.*fewshot_results"):
        meta_rl.load(tmp_path / "fs")
    assert main(["evaluate", str(tmp_path / "fs")]) == 2
    err = capsys.readouterr().err
    assert "few-shot run" in err and "final.json" in err and len(err.splitlines()) == 1


def test_missing_config_newer_format_and_no_checkpoint(grad_run, tmp_path):
    run = copy_run(grad_run, tmp_path / "run")
    cfile = run / "config.json"
    data = json.loads(cfile.read_text())
    cfile.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(RunError, match="config.json.*format version 99.*upgrade meta-rl"):
        meta_rl.load(run)
    cfile.unlink()
    with pytest.raises(RunError, match="is not a run folder: it has no config.json"):
        meta_rl.load(run)
    cfile.write_text(json.dumps(data))
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match="no checkpoint in folder"):
        meta_rl.load(run)


def test_weights_that_do_not_fit_the_config(grad_run, tmp_path):
    run = copy_run(grad_run, tmp_path / "run")
    cfile = run / "config.json"
    data = json.loads(cfile.read_text())
    data["config"]["hidden"] = [8, 8]
    cfile.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"tensor 'net.0.weight' has shape \(16, 2\)"):
        meta_rl.load(run)


def test_mismatched_spaces_name_both(grad_run):
    agent = meta_rl.load(grad_run)
    with pytest.raises(SpaceMismatchError, match=r"action space Discrete\(2\).*policy: Box"):
        agent.adapt(gym.make("MetaRL/CartPole-v0"), budget=1)
    with pytest.raises(SpaceMismatchError, match=r"observation of shape \(3,\)"):
        agent.predict(np.zeros(3, np.float32))
    with pytest.raises(RunError, match="Task or a Gymnasium task-family env"):
        agent.adapt("MetaRL/PointNav-v0", budget=1)


# --------------------------------------------------------------------------------------------
# Memory agents (RL^2)
# --------------------------------------------------------------------------------------------
def test_memory_agent_keeps_its_memory_across_the_episodes_of_a_trial(mem_run):
    agent = meta_rl.load(mem_run)
    assert isinstance(agent, MemoryAgent) and agent.episodes_per_trial == 10
    env = agent.wrap_env(gym.make("MetaRL/Bandit-v0", k=5))
    obs, _ = env.reset(seed=3)
    state, start, seen, actions = None, np.array([True]), [], []
    done = False
    while not done:
        action, state = agent.predict(obs[None], state, start, deterministic=True)
        seen.append(obs)
        actions.append(int(action[0]))
        obs, _, term, trunc, info = env.step(int(action[0]))
        start, done = np.array([False]), term or trunc
    assert len(actions) == 10  # one trial = 10 one-pull episodes = one Gymnasium episode
    # the actions are those of the policy unrolled over the whole trial from one fresh memory
    x = torch.as_tensor(np.stack(seen))[:, None]
    head, _, _ = agent.policy.unroll(x, agent.policy.initial_state(1))
    assert head[:, 0].argmax(-1).tolist() == actions
    # a memory reset at every step (no memory across episodes) would act differently
    fresh, _, _ = agent.policy.unroll(x.transpose(0, 1), agent.policy.initial_state(10))
    assert not torch.allclose(fresh[0], head[:, 0])

    from stable_baselines3.common.evaluation import evaluate_policy

    returns, lengths = evaluate_policy(agent, env, 4, return_episode_rewards=True, warn=False)
    assert lengths == [10] * 4 and all(0 <= r <= 10 for r in returns)


def test_memory_warm_up_and_export_in_a_fresh_process(mem_run, tmp_path):
    agent = meta_rl.load(mem_run)
    task = gym.make("MetaRL/Bandit-v0", k=5).unwrapped.sample_tasks(1, 4, "test")[0]
    warm = agent.adapt(task, budget=3)
    assert warm.warm_steps == 3 and len(warm.adaptation_returns) == 3
    obs = np.random.default_rng(0).random((3, agent.trial_observation_space.shape[0]))
    obs = obs.astype(np.float32)
    warm_act, (mem, steps) = warm.predict(obs, deterministic=True)
    assert steps.tolist() == [4, 4, 4]
    _, (cold_mem, _) = agent.predict(obs, deterministic=True)
    flat = [torch.cat([t.flatten() for t in flatten_state(m)]) for m in (mem, cold_mem)]
    assert not torch.allclose(*flat)  # the warm-up memory is not a fresh one
    path = warm.export(tmp_path / "rl2.pt")
    out = fresh_python(
        f"""
        import json, sys, torch
        m = torch.jit.load({str(path)!r})
        raw = torch.tensor({obs.tolist()})
        first = raw.clone()  # the step after the warm-up sees its last action, reward, done
        first[:, -{warm.warm_tail.numel()}:] = torch.tensor({warm.warm_tail.tolist()})
        state = m.initial_state(3)
        a1, state = m(first, state, True)
        a2, state = m(raw, state, True)
        assert not any(k.startswith("meta_rl") for k in sys.modules)
        print(json.dumps({{"a1": a1.tolist(), "a2": a2.tolist()}}))
        """
    )
    got = json.loads(out)
    assert got["a1"] == warm_act.tolist()
    again, _ = warm.predict(obs, (mem, steps), np.zeros(3, bool), deterministic=True)
    assert got["a2"] == again.tolist()
