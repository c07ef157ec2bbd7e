"""RL^2 trainer: trials, GAE across episode ends, determinism, resume, and learning tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from meta_rl_envs import references as R

from meta_rl.config import ConfigError
from meta_rl.rl.returns import gae
from meta_rl.rl.rl2 import (
    RL2Config,
    make_policy,
    make_trial_env,
    reference_returns,
    rollout,
    train,
)

TINY = dict(
    iterations=3,
    tasks_per_iteration=16,
    hidden_size=16,
    minibatches=2,
    update_epochs=2,
    eval_tasks=32,
    references=False,
    device="cpu",
    checkpoint_every=0,
    num_threads=1,
)

NAV = dict(env_id="MetaRL/PointNav-v0", env_kwargs={"horizon": 5}, episodes_per_trial=2)


def _same(a: dict, b: dict) -> bool:
    """Equal metrics apart from the wall-clock speed."""
    drop = {"env_steps_per_s"}
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="policy"):
        RL2Config(policy="lstm")
    with pytest.raises(ConfigError, match="minibatches = 64"):
        RL2Config(tasks_per_iteration=8, minibatches=64)
    with pytest.raises(ConfigError, match="memory_heads = 9"):
        RL2Config(policy="memory", memory_heads=9, memory_slots=8)
    with pytest.raises(ConfigError, match="separate_critic = True applies to policy 'gru' only"):
        RL2Config(policy="episodic", separate_critic=True)
    with pytest.raises(ConfigError, match="transition_keys = True .* policy = 'gru'"):
        RL2Config(transition_keys=True)
    with pytest.raises(ConfigError, match="controller = 'lstm' applies to policy 'memory' / 'ntm'"):
        RL2Config(policy="episodic", controller="lstm")


def test_rollout_runs_whole_trials_with_memory_across_episodes():
    config = RL2Config(env_id="MetaRL/TabularMDP-v0", episodes_per_trial=3, **TINY)
    env = make_trial_env(config, 4, 2, torch.device("cpu"))
    env.set_tasks(env.sample_tasks(4, 0))
    policy = make_policy(config, env, 0)
    trials = rollout(env, policy, torch.Generator().manual_seed(0))
    assert trials.obs.shape == (30, 8, 10 + 5 + 2)
    assert trials.trial_end[:-1].sum() == 0 and trials.trial_end[-1].all()
    assert trials.active.all()
    # The done flag marks the first observation of episodes 2 and 3, nothing else.
    assert trials.obs[:, :, -1].sum(0).tolist() == [2.0] * 8
    assert torch.all(trials.obs[[10, 20], :, -1] == 1)
    # GAE with the trial end as the only cut: the advantage at an episode's last step (t=9)
    # sees the rewards of the next episode.
    cut = trials.trial_end
    nxt = torch.cat([trials.values[1:], torch.zeros_like(trials.values[:1])])
    adv = gae(trials.rewards, trials.values, nxt, cut, cut, 1.0, 1.0)
    torch.testing.assert_close(adv[9] + trials.values[9], trials.rewards[9:].sum(0))


def test_same_seed_same_numbers_and_different_seed_differs():
    a = train(RL2Config(**TINY))
    b = train(RL2Config(**TINY))
    c = train(RL2Config(**{**TINY, "seed": 1}))
    assert _same(a, b)
    assert a["policy_loss"] != c["policy_loss"]


@pytest.mark.parametrize("policy", ["memory", "ntm"])
def test_memory_policy_trains_on_pointnav_box_actions(policy):
    config = RL2Config(
        **{**TINY, "iterations": 2},
        **NAV,
        policy=policy,
        memory_slots=4,
        memory_width=4,
    )
    final = train(config)
    assert final["env_steps"] == 2 * 16 * 10
    assert -2 * 5 * 1.5 < final["eval_return"] < 0  # a real trial of 2 episodes of 5 steps


def test_episodic_policy_with_action_reward_input_trains_on_tabular():
    config = RL2Config(
        **{**TINY, "iterations": 2},
        env_id="MetaRL/TabularMDP-v0",
        env_kwargs={"horizon": 4},
        episodes_per_trial=2,
        policy="episodic",
        memory_slots=8,
        memory_width=4,
        action_reward_input=True,
        transition_keys=True,
    )
    env = make_trial_env(config, 2, 1, torch.device("cpu"))
    assert make_policy(config, env, 0).action_reward == (10, 15, 15)  # [state, action, r, done]
    final = train(config)
    assert final["env_steps"] == 2 * 16 * 8
    assert -8 * 6 < final["eval_return"] < 8 * 6  # 8 steps of rewards N(mu, 1), mu ~ N(1, 1)
    with pytest.raises(ConfigError, match="action_reward_input=True needs a Discrete"):
        box = RL2Config(**TINY, env_id="MetaRL/PointNav-v0", action_reward_input=True)
        make_policy(box, make_trial_env(box, 2, 1, torch.device("cpu")), 0)


def test_episodic_memory_policy_learns_tabular_mdps():
    """The transition-keyed memory policy (preset rl2-memory-tabular, scaled down) on random
    tabular MDPs, n=10 episodes of 10 steps: after 154k env steps its 500-task test score is
    clearly above what a policy that has not learned scores (random actions: exactly 100; this
    policy after one iteration: 101.2 ± 1.8; after 12: about 115)."""
    config = RL2Config(
        **{
            **TINY,
            "iterations": 12,
            "tasks_per_iteration": 128,
            "minibatches": 8,
            "update_epochs": 4,
            "hidden_size": 32,
            "eval_tasks": 500,
        },
        env_id="MetaRL/TabularMDP-v0",
        episodes_per_trial=10,
        policy="episodic",
        memory_slots=100,
        memory_heads=4,
        memory_width=8,
        transition_keys=True,
        action_reward_input=True,
        time_feature=True,
        lr=0.003,
        reward_scale=0.05,
    )
    final = train(config)
    assert final["env_steps"] == 12 * 128 * 100
    assert final["eval_return"] - final["eval_ci95"] > R.tabular_random(10) + 8


@pytest.mark.parametrize("policy", ["gru", "ntm"])
def test_resume_continues_exactly(tmp_path, policy):
    from meta_rl.runs import Run

    config = RL2Config(**{**TINY, "iterations": 4, "checkpoint_every": 2}, policy=policy)
    with Run.create(tmp_path / "full", "rl2-bandits", config) as run:
        full = train(config, run)
    half = RL2Config(**{**TINY, "iterations": 2, "checkpoint_every": 2}, policy=policy)
    with Run.create(tmp_path / "half", "rl2-bandits", half) as run:
        train(half, run)
    with Run.resume(tmp_path / "half", ["iterations=4"]) as run:
        resumed = train(run.config, run)
    assert _same(resumed, full)


def test_eval_split_picks_the_evaluation_tasks_and_the_references():
    ood = RL2Config(
        **TINY,
        **NAV,
        eval_split="ood",
        eval_every=0,
    )
    env = make_trial_env(ood, 4, 1, torch.device("cpu"))
    goals = env.sample_tasks(4, 0, "ood")
    assert all(max(abs(g) for g in t.goal) > 0.5 for t in goals)  # outside the training square
    refs = {s: reference_returns(replace(ood, eval_split=s), 200, 0) for s in ("test", "ood")}
    # standing still costs more than twice as much when the goals lie further out
    assert refs["ood"]["zero"].mean < 2 * refs["test"]["zero"].mean
    final = train(replace(ood, references=True))  # references on the evaluation's tasks
    same = reference_returns(ood, ood.eval_tasks, ood.seed + 2)["zero"].mean
    assert final["ref_zero"] == pytest.approx(same)
    with pytest.raises(Exception, match="ood"):  # tabular MDPs have no ood split
        train(RL2Config(**TINY, env_id="MetaRL/TabularMDP-v0", eval_split="ood"))


def test_references_in_the_same_run():
    refs = reference_returns(RL2Config(episodes_per_trial=10), 200, 0)
    assert set(refs) == {"bayes_optimal", "thompson", "ucb1", "greedy", "random"}
    assert refs["bayes_optimal"].mean == pytest.approx(6.66, abs=0.01)
    tab = reference_returns(RL2Config(env_id="MetaRL/TabularMDP-v0", episodes_per_trial=2), 50, 0)
    assert tab["random"].mean == 20.0 and tab["oracle"].mean > tab["psrl"].mean


def test_gru_bandits_beat_thompson_sampling():
    """RL^2 on k=5 Bernoulli bandits, n=10 pulls: above Thompson sampling on 1000 test bandits
    (50k env steps; random pulls score 5.0, Thompson 5.84, Bayes-optimal 6.66)."""
    _assert_bandit_learner_beats_thompson(iterations=39)


def test_clipped_surrogate_values_and_vmap():
    from meta_rl.rl.ppo import clipped_surrogate

    logp_old = torch.zeros(4)
    logp_new = torch.log(torch.tensor([0.5, 1.0, 1.5, 1.5]))
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    # ratios 0.5, 1, 1.5, 1.5 with clip 0.2: min(r A, clip(r) A) = 0.5, 1, 1.2, -1.5
    loss = clipped_surrogate(logp_new, logp_old, adv, 0.2)
    assert loss.item() == pytest.approx(-(0.5 + 1.0 + 1.2 - 1.5) / 4)
    batched = torch.func.vmap(clipped_surrogate, in_dims=(0, 0, 0, None))(
        logp_new.expand(3, 4), logp_old.expand(3, 4), adv.expand(3, 4), 0.2
    )
    torch.testing.assert_close(batched, loss.expand(3))
    grad = torch.func.grad(lambda lp: clipped_surrogate(lp, logp_old, adv, 0.2))(logp_new)
    assert grad[2] == 0 and grad[0] != 0  # the clipped term passes no gradient


@pytest.mark.slow
def test_memory_policy_bandits_beat_thompson_sampling():
    """The memory-augmented policy learns the same n=10 bandit task (about 2-4 min on 2 cores)."""
    _assert_bandit_learner_beats_thompson(policy="memory", iterations=100)


@pytest.mark.slow
def test_ntm_policy_bandits_beat_thompson_sampling():
    """The NTM policy (preset rl2-ntm-bandits's settings) learns the same n=10 bandit task."""
    _assert_bandit_learner_beats_thompson(policy="ntm", iterations=100)


def test_ntm_policy_learns_bandits_beyond_random():
    """CI-size: 20 iterations of 128 bandits (25.6k env steps; preset rl2-ntm-bandits runs 100)
    lift the NTM policy's 500-task test score above random pulls (5.0 on average; the untrained
    policy is near-uniform)."""
    config = RL2Config(
        **{
            **TINY,
            "iterations": 20,
            "tasks_per_iteration": 128,
            "eval_tasks": 500,
            "hidden_size": 64,
            "minibatches": 4,
            "update_epochs": 4,
        },
        policy="ntm",
        lr=0.01,
    )
    final = train(config)
    assert final["eval_return"] - final["eval_ci95"] > 5.0


def _assert_bandit_learner_beats_thompson(**overrides) -> None:
    """Train on k=5, n=10 bandits (64 units, 128 tasks per iteration) and check the 1,000-task
    test score's lower 95% bound is above Thompson sampling's mean."""
    config = RL2Config(
        episodes_per_trial=10,
        hidden_size=64,
        tasks_per_iteration=128,
        lr=0.01,
        minibatches=4,
        eval_tasks=1000,
        references=False,
        device="cpu",
        checkpoint_every=0,
        num_threads=1,
        **overrides,
    )
    final = train(config)
    thompson = R.bandit_policy("thompson", 10, 5, num_bandits=20_000, seed=0)
    assert final["eval_return"] - final["eval_ci95"] > thompson.mean
