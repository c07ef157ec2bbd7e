"""meta_rl.rl.rollout: per-task params in one batched env, vector-env twin, advantages."""

import pytest
import torch
from meta_rl_envs import make_env
from meta_rl_envs.navigation import GoalTask
from meta_rl_envs.vector import VectorTaskEnv

from meta_rl.core import expand_params
from meta_rl.policies import make_mlp_policy
from meta_rl.rl.rollout import compute_advantages, sample_episodes

GOALS = [GoalTask((0.3, 0.0)), GoalTask((0.0, -0.4)), GoalTask((-0.2, 0.2))]


def policy_for(env, seed=0, **kw):
    return make_mlp_policy(
        env.single_observation_space,
        env.single_action_space,
        hidden=(16,),
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def steer(policy, directions):
    """Stacked params whose mean action is the constant ``directions[t]`` for task t."""
    base = policy.params(detach=True)
    T = len(directions)
    params = expand_params(base, T)
    params = {k: v.clone() for k, v in params.items()}
    params["net.2.weight"].zero_()
    params["net.2.bias"] = torch.tensor(directions, dtype=torch.float32)
    return params


def test_each_task_runs_its_own_params_in_one_batched_env():
    env = make_env("MetaRL/PointNav-v0", 3, 2, horizon=5)
    env.set_tasks(GOALS)
    policy = policy_for(env)
    params = steer(policy, [[0.1, 0.0], [0.0, -0.1], [-0.1, 0.1]])
    ep = sample_episodes(env, policy, params, None, deterministic=True)
    assert ep.obs.shape == (5, 6, 2) and ep.actions.shape == (5, 6, 2)
    # the observation of step 1 is the position after one move of the task's own policy
    pos = ep.obs[1].reshape(3, 2, 2)
    torch.testing.assert_close(pos[0], torch.tensor([[0.1, 0.0]] * 2))
    torch.testing.assert_close(pos[1], torch.tensor([[0.0, -0.1]] * 2))
    torch.testing.assert_close(pos[2], torch.tensor([[-0.1, 0.1]] * 2))
    # tasks 0 and 1 reach their goal after 3 / 4 moves and terminate; task 2 after 2 moves
    assert ep.terminated.sum(0).tolist() == [1, 1, 1, 1, 1, 1]
    assert ep.mask.sum(0).tolist() == [3, 3, 4, 4, 2, 2]
    assert (ep.rewards[ep.mask == 0] == 0).all()
    assert ep.num_steps() == 18
    by_task = ep.by_task(ep.obs)
    assert by_task.shape == (3, 10, 2)
    torch.testing.assert_close(by_task[2].reshape(5, 2, 2), ep.obs[:, 4:6])


def test_vector_env_twin_matches_the_batched_env():
    batched = make_env("MetaRL/PointNav-v0", 3, 2, horizon=20)
    vector = make_env("MetaRL/PointNav-v0", 3, 2, backend="vector", horizon=20)
    assert isinstance(vector, VectorTaskEnv)
    policy = policy_for(batched, init_log_std=-2.0)
    params = {
        k: v + 0.05 * torch.randn(3, *v.shape, generator=torch.Generator().manual_seed(1))
        for k, v in policy.params(detach=True).items()
    }
    out = []
    for env in (batched, vector):
        env.set_tasks(GOALS)
        out.append(sample_episodes(env, policy, params, torch.Generator().manual_seed(2), seed=0))
    a, b = out
    torch.testing.assert_close(a.obs, b.obs, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=0)
    assert torch.equal(a.mask, b.mask)
    vector.close()


def test_family_without_batched_version_runs_through_a_vector_env():
    env = make_env("MetaRL/Pendulum-v0", 2, 2, horizon=10)
    assert isinstance(env, VectorTaskEnv)
    tasks = env.sample_tasks(2, 0)
    env.set_tasks(tasks)
    assert [e.unwrapped.get_task() for e in env.rows.envs] == [tasks[0]] * 2 + [tasks[1]] * 2
    policy = policy_for(env)
    ep = sample_episodes(env, policy, expand_params(policy.params(), 2), torch.Generator())
    assert ep.obs.shape == (10, 4, 3) and ep.actions.shape == (10, 4, 1)
    assert ep.mask.all() and (ep.rewards < 0).all()
    env.close()


def test_same_seed_same_episodes_and_discrete_actions():
    env = make_env("MetaRL/CartPole-v0", 2, 3)
    env.set_tasks(env.sample_tasks(2, 0))
    policy = policy_for(env)
    params = expand_params(policy.params(), 2)
    a = sample_episodes(env, policy, params, torch.Generator().manual_seed(5), seed=1)
    b = sample_episodes(env, policy, params, torch.Generator().manual_seed(5), seed=1)
    c = sample_episodes(env, policy, params, torch.Generator().manual_seed(6), seed=1)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.actions[: c.horizon], c.actions[: a.horizon])
    assert a.actions.dtype == torch.long
    # a random CartPole policy falls within a few dozen steps: the loop stops early
    assert a.horizon < 500 and (a.mask[-1] == 0).all()
    torch.testing.assert_close(a.row_returns(), a.mask.sum(0))


def test_advantages_are_returns_to_go_without_baseline():
    env = make_env("MetaRL/PointNav-v0", 3, 2, horizon=6)
    env.set_tasks(GOALS)
    policy = policy_for(env)
    params = steer(policy, [[0.1, 0.0], [0.0, -0.1], [0.0, 0.0]])
    ep = sample_episodes(env, policy, params, None, deterministic=True)
    adv = compute_advantages(ep, gamma=0.9, lam=1.0, baseline="none", normalize=False)
    for r in range(6):
        rew = ep.rewards[:, r]
        for t in range(6):
            want = sum(0.9 ** (k - t) * rew[k] for k in range(t, 6)) * ep.mask[t, r]
            torch.testing.assert_close(adv[t, r], torch.as_tensor(want), atol=1e-5, rtol=0)


def test_normalized_advantages_per_task_and_linear_baseline():
    env = make_env("MetaRL/PointNav-v0", 3, 4, horizon=30)
    env.set_tasks(GOALS)
    policy = policy_for(env)
    ep = sample_episodes(env, policy, expand_params(policy.params(), 3), torch.Generator())
    raw = compute_advantages(ep, baseline="none", normalize=False)
    with_base = compute_advantages(ep, baseline="linear", normalize=False)
    # the fitted baseline explains part of the return: smaller advantages
    assert with_base.square().sum() < 0.5 * raw.square().sum()
    adv = ep.by_task(compute_advantages(ep))
    m = ep.by_task(ep.mask)
    for t in range(3):
        a = adv[t][m[t] > 0]
        assert abs(a.mean().item()) < 1e-4 and abs(a.std(correction=0).item() - 1.0) < 1e-3
    assert (adv[m == 0] == 0).all()
    with pytest.raises(ValueError, match="baseline='mean'"):
        compute_advantages(ep, baseline="mean")


def test_make_env_errors():
    with pytest.raises(ValueError, match="backend='threads'"):
        make_env("MetaRL/PointNav-v0", 2, 1, backend="threads")
    with pytest.raises(Exception, match="no batched version"):
        make_env("MetaRL/Pendulum-v0", 2, 1, backend="batched")
    env = make_env("MetaRL/Pendulum-v0", 2, 1)
    with pytest.raises(ValueError, match="set_tasks got 3 tasks"):
        env.set_tasks(env.sample_tasks(3, 0))
    env.close()
