"""PEARL: the posterior, the batched update against a per-task loop, sampling on both env
backends, determinism, exact resume, and a learning test that needs the encoder and the KL."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from meta_rl_envs import make_env

from meta_rl.config import ConfigError
from meta_rl.policies.context import gaussian_kl, product_of_gaussians
from meta_rl.rl.pearl import (
    Noise,
    PEARLConfig,
    collect,
    draw,
    losses,
    make_env_for,
    make_nets,
    make_optimizer,
    train,
    update,
    update_per_task_loop,
)
from meta_rl.rl.replay import TaskBuffers

TINY = dict(
    device="cpu",
    num_threads=1,
    train_tasks=8,
    hidden=16,
    encoder_hidden=16,
    meta_batch=4,
    batch_size=16,
    context_batch=8,
    grad_steps=5,
    initial_steps=20,
    collect_tasks=2,
    prior_steps=20,
    posterior_steps=20,
    replay_size=200,
    iterations=3,
    eval_every=0,
    eval_tasks=3,
    checkpoint_every=0,
    critic_reward="dense_reward",
    env_kwargs={"horizon": 10},
)
TIMING = {"sample_s", "update_s"}


def _same(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in TIMING} == {
        k: v for k, v in b.items() if k not in TIMING
    }


# --------------------------------------------------------------------------------------------
# The posterior
# --------------------------------------------------------------------------------------------
def test_product_of_gaussians_is_the_normalised_product_of_the_factors():
    """The product's log-density differs from the sum of the factors' log-densities by a
    constant (checked at many points), so it is their normalised product."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    var = torch.rand(3, 7, 4, generator=g, dtype=torch.float64) + 0.05
    m, v = product_of_gaussians(mu, var)
    x = torch.randn(50, 3, 1, 4, generator=g, dtype=torch.float64)  # points [P, T, 1, L]

    def logpdf(x, mu, var):
        return -0.5 * ((x - mu) ** 2 / var + var.log() + math.log(2 * math.pi))

    diff = logpdf(x, mu, var).sum(-2) - logpdf(x[:, :, 0], m, v)  # [P, T, L]
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-9)
    # closed form of two factors: precision-weighted mean, variances in parallel
    m2, v2 = product_of_gaussians(mu[:, :2], var[:, :2])
    v_ref = var[:, 0] * var[:, 1] / (var[:, 0] + var[:, 1])
    assert torch.allclose(v2, v_ref) and torch.allclose(
        m2, (mu[:, 0] * var[:, 1] + mu[:, 1] * var[:, 0]) / (var[:, 0] + var[:, 1])
    )


def test_product_of_gaussians_mask_clamp_and_empty_context():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    var = torch.rand(2, 5, 3, generator=g, dtype=torch.float64) + 0.1
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
    m, v = product_of_gaussians(mu, var, mask)
    m_ref, v_ref = product_of_gaussians(mu[0, [0, 1, 3]], var[0, [0, 1, 3]])
    assert torch.allclose(m[0], m_ref) and torch.allclose(v[0], v_ref)
    assert torch.equal(m[1], torch.zeros(3, dtype=torch.float64))  # no transitions: the prior
    assert torch.equal(v[1], torch.ones(3, dtype=torch.float64))
    _, tiny = product_of_gaussians(mu[:, :1], torch.zeros_like(var[:, :1]))
    assert torch.allclose(tiny, torch.full_like(tiny, 1e-7))  # variances clamped from below
    kl = gaussian_kl(torch.zeros(4), torch.ones(4))
    assert kl.item() == 0.0 and gaussian_kl(torch.ones(4), torch.ones(4)).item() == 2.0


# --------------------------------------------------------------------------------------------
# The batched update
# --------------------------------------------------------------------------------------------
def _setup(dtype=torch.float64, **over):
    config = PEARLConfig(**{**TINY, "meta_batch": 6, "train_tasks": 8, **over})
    env = make_env_for(config, 2, "cpu")
    nets = make_nets(config, env, 0).to(dtype)
    buf = TaskBuffers(8, 100, 2, 2, "cpu")
    g = torch.Generator().manual_seed(3)
    buf.add(torch.arange(8), torch.randn(50, 8, buf.width, generator=g))
    buf.data = buf.data.to(dtype)
    buf.data[..., -1] = (buf.data[..., -1] > 1.0).to(dtype)  # some terminal steps
    return config, nets, buf, g


def test_batched_update_equals_a_per_task_loop_in_float64():
    config, nets, buf, g = _setup()
    other = copy.deepcopy(nets)
    opt, opt2 = make_optimizer(nets, config), make_optimizer(other, config)
    for _ in range(3):  # a few steps: Adam's state must agree too
        batch, context, noise = draw(buf, buf, config, torch.tensor([5, 0, 3, 7, 1, 2]), 2, g)
        update(nets, opt, config, batch, context, noise)
        update_per_task_loop(other, opt2, config, batch, context, noise)
        theirs = other.state_dict().values()
        for (name, a), b in zip(nets.state_dict().items(), theirs, strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-5), name
            assert a.dtype == torch.float64
    fresh = _setup()[1].encoder.parameters()
    assert all(not torch.equal(a, b) for a, b in zip(nets.encoder.parameters(), fresh, strict=True))


def test_encoder_learns_from_the_q_loss_and_the_kl_only():
    config, nets, buf, g = _setup()
    batch, context, noise = draw(buf, buf, config, torch.arange(4), 2, g)
    _, kl_part, parts = losses(nets, config, batch, context, noise)
    enc = list(nets.encoder.parameters())
    for name in ("vf_loss", "policy_loss"):
        grads = torch.autograd.grad(parts[name], enc, retain_graph=True, allow_unused=True)
        assert all(gr is None or not gr.any() for gr in grads), name
    for loss in (parts["qf_loss"], kl_part):
        grads = torch.autograd.grad(loss, enc, retain_graph=True, allow_unused=True)
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)
    # the Q networks' params are held fixed inside the V target and the actor loss
    q = list(nets.q1.parameters())
    grads = torch.autograd.grad(parts["policy_loss"] + parts["vf_loss"], q, allow_unused=True)
    assert all(gr is None or not gr.any() for gr in grads)


def test_noise_fixes_the_update():
    config, nets, buf, g = _setup()
    batch, context, noise = draw(buf, buf, config, torch.arange(3), 2, g)
    a = losses(nets, config, batch, context, noise)[0]
    b = losses(nets, config, batch, context, Noise(noise.z_eps, noise.act_eps))[0]
    assert a.item() == b.item()


# --------------------------------------------------------------------------------------------
# Sampling: torch twin and Gymnasium envs give the same transitions
# --------------------------------------------------------------------------------------------
def test_collect_on_the_twin_equals_collect_on_gymnasium_envs():
    config = PEARLConfig(**{**TINY, "critic_reward": "reward"})  # VectorTaskEnv: no info entries
    out = {}
    for backend in ("batched", "vector"):
        env = make_env("MetaRL/SparsePoint-v0", 3, 1, backend=backend, horizon=10)
        env.set_tasks(env.sample_tasks(3, 0, "train"))
        nets = make_nets(config, env, 0)
        g = torch.Generator().manual_seed(0)
        z = torch.zeros(3, config.latent_size), torch.ones(3, config.latent_size)
        out[backend] = collect(env, nets, config, 25, *z, g, seed=0)
    rows_b, rets_b = out["batched"]
    rows_v, rets_v = out["vector"]
    assert rows_b.shape == (25, 3, 2 * 2 + 2 + 3)
    assert torch.allclose(rows_b, rows_v, atol=1e-5) and torch.allclose(rets_b, rets_v)
    assert len(rets_b) == 6  # two whole episodes of 10 steps per row


def test_sparse_point_info_matches_on_both_backends():
    env = gym.make("MetaRL/SparsePoint-v0")
    twin = make_env("MetaRL/SparsePoint-v0", 1, 1)
    task = env.unwrapped.sample_tasks(1, 5, "test")[0]
    env.reset(seed=0, options={"task": task})
    twin.set_tasks([task])
    twin.reset(seed=0)
    goal = np.array([math.cos(task.angle), math.sin(task.angle)])
    hits = 0
    for _ in range(20):
        a = np.clip(goal - env.unwrapped.pos, -0.1, 0.1).astype(np.float32)
        _, r, _, _, info = env.step(a)
        _, rb, _, _, ib = twin.step(torch.as_tensor(a)[None])
        assert r == pytest.approx(float(rb[0]), abs=1e-5)
        assert info["dense_reward"] == pytest.approx(float(ib["dense_reward"][0]), abs=1e-5)
        assert info["success"] == bool(ib["success"][0])
        hits += info["success"]
    assert hits > 5 and twin.task_success()[0] == 1.0


# --------------------------------------------------------------------------------------------
# Training: config checks, determinism, resume, Gymnasium-only families
# --------------------------------------------------------------------------------------------
def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="meta_batch = 9"):
        PEARLConfig(train_tasks=8, meta_batch=9)
    with pytest.raises(ConfigError, match="replay_size"):
        PEARLConfig(replay_size=10, prior_steps=20)
    with pytest.raises(ConfigError, match="critic_reward = 'nope'"):
        train(PEARLConfig(**{**TINY, "critic_reward": "nope"}))
    with pytest.raises(ConfigError, match="Box"):
        train(PEARLConfig(**{**TINY, "env_id": "MetaRL/Bandit-v0", "env_kwargs": {}}))


def test_same_seed_same_numbers():
    a = train(PEARLConfig(**TINY))
    b = train(PEARLConfig(**TINY))
    assert _same(a, b)
    assert set(a) >= {"qf_loss", "kl_loss", "eval_return_ep1", "eval_return_ep3", "eval_success"}


def test_resume_continues_exactly(tmp_path):
    from meta_rl.runs import Run

    config = PEARLConfig(**{**TINY, "iterations": 4, "checkpoint_every": 2})
    with Run.create(tmp_path / "full", "pearl-sparse-point", config) as run:
        full = train(config, run)
    half = PEARLConfig(**{**TINY, "iterations": 2, "checkpoint_every": 2})
    with Run.create(tmp_path / "half", "pearl-sparse-point", half) as run:
        train(half, run)
    with Run.resume(tmp_path / "half", ["iterations=4"]) as run:
        resumed = train(run.config, run)
    assert _same(resumed, full)


def test_gymnasium_only_family_trains():
    config = PEARLConfig(
        **{**TINY, "env_id": "MetaRL/Pendulum-v0", "env_kwargs": {}, "critic_reward": "reward"}
    )
    final = train(config)
    assert math.isfinite(final["eval_return"]) and final["env_steps"] > 0


# --------------------------------------------------------------------------------------------
# The agent: load, adapt, predict, export, evaluate
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pearl_run(tmp_path_factory):
    from meta_rl.runs import Run

    path = tmp_path_factory.mktemp("pearl") / "run"
    config = PEARLConfig(**{**TINY, "iterations": 2})
    with Run.create(path, "pearl-sparse-point", config) as run:
        train(config, run)
    return path


def test_load_adapt_predict_and_sb3_evaluate(pearl_run):
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    import meta_rl

    agent = meta_rl.load(pearl_run)
    assert agent.kind == "context" and agent.env_id == "MetaRL/SparsePoint-v0"
    env = gym.make("MetaRL/SparsePoint-v0", horizon=10)
    task = env.unwrapped.sample_tasks(1, 3, "test")[0]
    env.unwrapped.set_task(task)
    adapted = agent.adapt(env, budget=2, seed=1)
    assert adapted.adapted_on == task and len(adapted.adaptation_returns) == 2
    assert not torch.equal(adapted.belief.var, agent.belief.var)  # a posterior, not the prior
    assert torch.equal(agent.belief.var, torch.ones(agent.config.latent_size))  # unchanged
    again = agent.adapt(task, budget=2, seed=1)
    assert torch.equal(again.belief.mean, adapted.belief.mean)  # seeded
    obs, _ = env.reset(seed=0)
    a, z = adapted.predict(obs)
    assert env.action_space.contains(a) and z.shape == (1, agent.config.latent_size)
    a2, z2 = adapted.predict(np.stack([obs, obs]), z.repeat(2, 0), episode_start=[False, True])
    assert np.array_equal(z2[0], z[0]) and not np.array_equal(z2[1], z[0])
    mean, _ = evaluate_policy(adapted, Monitor(env), n_eval_episodes=2)
    assert math.isfinite(mean)


def test_export_runs_without_meta_rl(pearl_run, tmp_path):
    import meta_rl

    agent = meta_rl.load(pearl_run).adapt(
        meta_rl.load(pearl_run).make_env(1).sample_tasks(1, 0, "test")[0], budget=1
    )
    path = agent.export(tmp_path / "pearl.pt")
    module = torch.jit.load(str(path))
    obs = np.zeros((3, 2), dtype=np.float64)
    z = np.tile(agent.belief.mean.numpy(), (3, 1))
    ours, _ = agent.predict(obs.astype(np.float32), z, deterministic=True)
    theirs = module(torch.as_tensor(obs)).numpy()
    assert np.allclose(ours, theirs, atol=1e-6)
    ctx = torch.randn(2, 7, agent.policy.context_dim)
    m, v = module.posterior(ctx)
    m_ref, v_ref = agent.policy.encoder.posterior(ctx)
    assert torch.allclose(m, m_ref, atol=1e-6) and torch.allclose(v, v_ref, atol=1e-6)


def test_evaluate_reports_returns_after_each_exploration_episode(pearl_run):
    from meta_rl.evaluate import evaluate_run, markdown_table

    report = evaluate_run(pearl_run, tasks=4, budget=3, baselines=("none", "reference"))
    assert report.agent == "context" and report.budget.unit == "episodes"
    curve = report.adapted
    assert [p.budget for p in curve.points] == [1, 2, 3]
    assert all(p.success_per_task is not None for p in curve.points)
    assert [p.env_steps for p in curve.points] == [0.0, 10.0, 20.0]
    refs = {r.name: r for r in report.references}
    assert refs["oracle"].per_episode > 2 and refs["zero"].per_episode == 0.0  # T = 10
    assert "z from the prior" in markdown_table(report)


# --------------------------------------------------------------------------------------------
# Data-parallel: 2 ranks (gloo) take the single-process update
# --------------------------------------------------------------------------------------------
DIST = {**TINY, "meta_batch": 5, "iterations": 2, "log_every": 1}


def _pearl_worker(rank: int, world: int, port: int, root: str) -> None:
    from meta_rl import collectives
    from tests.test_distributed import _join, _train

    _join(rank, world, port)
    try:
        _train("pearl-sparse-point", DIST, Path(root) / "dist" if rank == 0 else None)
    finally:
        collectives.shutdown()


def test_two_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    from tests.test_distributed import _assert_same_runs, _free_port, _train

    torch.set_num_threads(1)
    _train("pearl-sparse-point", DIST, tmp_path / "single")
    mp.spawn(_pearl_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    _assert_same_runs(tmp_path / "single", tmp_path / "dist", tol=1e-4)
