"""Reference solvers (envs/references.py) against exact values and the papers' numbers.

Bands around a paper number allow its rounding (0.05) plus three standard errors of the
difference; the paper's own standard error is estimated from our spread and its sample size
(1000 bandits / MDPs in RL^2).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from meta_rl_envs import TaskError, make_batched
from meta_rl_envs import references as R
from meta_rl_envs.navigation import PointNavEnv, goal_space
from meta_rl_envs.tabular import mdp_space


def paper_band(est: R.Estimate, rounding: float = 0.05) -> float:
    paper_se = est.se * math.sqrt(est.num / R.PAPER_NUM_TASKS)
    return rounding + 3.0 * math.hypot(est.se, paper_se)


# ---------------------------------------------------------------------------------------------
# Bandits
# ---------------------------------------------------------------------------------------------
def brute_force_bayes(n: int, k: int) -> float:
    """Bayes-optimal value without the exchangeability reduction (small n, k only)."""

    @cache
    def value(counts: tuple[tuple[int, int], ...], left: int) -> float:
        if left == 0:
            return 0.0
        best = 0.0
        for i, (s, f) in enumerate(counts):
            p = (s + 1) / (s + f + 2)
            win = counts[:i] + ((s + 1, f),) + counts[i + 1 :]
            lose = counts[:i] + ((s, f + 1),) + counts[i + 1 :]
            best = max(best, p * (1 + value(win, left - 1)) + (1 - p) * value(lose, left - 1))
        return best

    return value(((0, 0),) * k, n)


def test_bayes_optimal_matches_the_design_number():
    assert round(R.bandit_bayes_optimal(10, 5), 2) == 6.66


def test_bayes_optimal_small_cases_are_exact():
    assert R.bandit_bayes_optimal(1, 5) == pytest.approx(0.5)
    assert R.bandit_bayes_optimal(7, 1) == pytest.approx(3.5)  # one arm: no choice
    assert R.bandit_bayes_optimal(2, 2) == pytest.approx(0.5 + 0.5 * 2 / 3 + 0.5 * 0.5)
    for n, k in ((5, 2), (6, 3), (4, 4)):
        assert R.bandit_bayes_optimal(n, k) == pytest.approx(brute_force_bayes(n, k), abs=1e-12)
    # Greedy: one arm is plain n/2; with two pulls and two arms it equals Bayes-optimal.
    assert R.bandit_greedy_exact(9, 1) == pytest.approx(4.5)
    assert R.bandit_greedy_exact(2, 2) == pytest.approx(R.bandit_bayes_optimal(2, 2))


@pytest.fixture(scope="module")
def bandit_n10():
    return {
        "bayes": R.bandit_bayes_optimal(10, 5),
        "thompson": R.bandit_policy("thompson", 10, 5, num_bandits=20_000, seed=0),
        "greedy": R.bandit_policy("greedy", 10, 5, num_bandits=20_000, seed=1),
        "ucb1": R.bandit_policy("ucb1", 10, 5, num_bandits=5_000, seed=2),
        "random": R.bandit_policy("random", 10, 5, num_bandits=5_000, seed=3),
    }


def test_thompson_near_the_paper_and_below_bayes(bandit_n10):
    ts = bandit_n10["thompson"]
    assert abs(ts.mean - R.PAPER["bandit"][(10, "thompson")]) < paper_band(ts)
    assert ts.mean + 3 * ts.se < bandit_n10["bayes"]


def test_classic_policies_rank_below_bayes_optimal(bandit_n10):
    bayes, greedy = bandit_n10["bayes"], R.bandit_greedy_exact(10, 5)
    assert R.bandit_random(10) < greedy < bayes - 0.02  # exact values: 5 < 6.626 < 6.660
    # The simulator agrees with the exact greedy value.
    assert abs(bandit_n10["greedy"].mean - greedy) < 3 * bandit_n10["greedy"].se
    for name in ("ucb1", "thompson"):
        est = bandit_n10[name]
        assert est.mean + 3 * est.se < greedy < bayes, name
        assert est.mean - 3 * est.se > R.bandit_random(10), name  # and all learn something
    rnd = bandit_n10["random"]
    assert abs(rnd.mean - R.bandit_random(10)) < 3 * rnd.se


def test_bandit_simulation_is_seeded():
    a = R.bandit_policy("thompson", 5, 3, num_bandits=200, seed=4)
    assert a == R.bandit_policy("thompson", 5, 3, num_bandits=200, seed=4)
    assert a != R.bandit_policy("thompson", 5, 3, num_bandits=200, seed=5)
    with pytest.raises(TaskError, match="'softmax'.*thompson"):
        R.bandit_policy("softmax", 5)
    with pytest.raises(TaskError, match="n=0"):
        R.bandit_bayes_optimal(0)


# ---------------------------------------------------------------------------------------------
# Tabular MDPs
# ---------------------------------------------------------------------------------------------
def test_q_values_match_a_plain_bellman_loop():
    mu, p = R.sample_mdps(3, 0, num_states=4, num_actions=3)
    q = R.tabular_q_values(mu, p, horizon=5)
    assert q.shape == (5, 3, 4, 3)
    for m in range(3):
        v = np.zeros(4)
        for t in range(4, -1, -1):
            qt = np.array([[mu[m, s, a] + p[m, s, a] @ v for a in range(3)] for s in range(4)])
            np.testing.assert_allclose(q[t, m], qt)
            v = qt.max(axis=1)
        np.testing.assert_allclose(R.tabular_optimal_value(mu[m], p[m], 5), v)


def test_random_policy_earns_ten_per_episode():
    """The exact 10n (E[mu] = 1 per step) agrees with random actions in the batched env."""
    assert R.tabular_random(10) == 100.0 and R.tabular_random(25) == 250.0
    env = make_batched("MetaRL/TabularMDP-v0", 2000)
    env.set_tasks(env.sample_tasks(2000, 0))
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    total = torch.zeros(env.num_envs)
    for _ in range(env.horizon):
        _, reward, *_ = env.step(torch.randint(0, 5, (env.num_envs,), generator=gen))
        total += reward
    se = total.std().item() / math.sqrt(env.num_envs)
    assert abs(total.mean().item() - R.tabular_random(1)) < 3 * se


@pytest.fixture(scope="module")
def psrl_n10():
    kw = dict(n=10, num_mdps=2000, seed=0)
    return {
        "bayes": R.tabular_psrl(**kw),  # PSRL with the family's true prior N(1, 1)
        "paper": R.tabular_psrl(**kw, reward_prior_mean=0.0),  # the RL^2 paper's setting
        "oracle": R.tabular_oracle(**kw),
        "greedy": R.tabular_greedy(**kw),
    }


def test_psrl_in_the_paper_setting_lands_on_the_paper_number(psrl_n10):
    est = psrl_n10["paper"]
    assert abs(est.mean - R.PAPER["tabular"][(10, "psrl")]) < paper_band(est)


def test_psrl_learns_and_stays_below_the_oracle(psrl_n10):
    for est in (psrl_n10["bayes"], psrl_n10["paper"]):
        assert est.mean - 10 * est.se > R.tabular_random(10)  # 100
        assert est.mean + 10 * est.se < psrl_n10["oracle"].mean
    # Same MDPs (same seed): the pessimistic prior mean 0 beats the true prior at n = 10.
    assert psrl_n10["paper"].mean - psrl_n10["bayes"].mean > 2 * psrl_n10["bayes"].se


def test_greedy_plans_in_the_posterior_mean_and_beats_psrl_at_n10(psrl_n10):
    # Certainty equivalence with the true prior explores through its optimistic unseen pairs;
    # at a 10-episode trial that beats posterior sampling (same MDPs: same seed).
    greedy, psrl = psrl_n10["greedy"], psrl_n10["bayes"]
    assert greedy.mean - psrl.mean > 10 * psrl.se
    assert greedy.mean + 10 * greedy.se < psrl_n10["oracle"].mean
    # No posterior draws: the same seed gives the same number, and prior mean 0 explores less.
    assert R.tabular_greedy(10, 200, 3).mean == R.tabular_greedy(10, 200, 3).mean
    assert R.tabular_greedy(10, 2000, 0, reward_prior_mean=0.0).mean < greedy.mean - 10 * greedy.se


def test_tabular_tasks_come_from_the_family_space():
    mu, p = R.sample_mdps(4, 9)
    tasks = mdp_space().sample(4, np.random.default_rng(9), "test")
    np.testing.assert_array_equal(mu[2].ravel(), tasks[2].reward_mean)
    np.testing.assert_array_equal(p[2].ravel(), tasks[2].transitions)


# ---------------------------------------------------------------------------------------------
# Navigation
# ---------------------------------------------------------------------------------------------
def test_navigation_references():
    zero = R.navigation_return("zero", num_goals=5000, seed=0)
    oracle = R.navigation_return("oracle", num_goals=5000, seed=0)
    assert abs(zero.mean - R.navigation_zero_action_exact()) < 3 * zero.se
    assert round(R.navigation_zero_action_exact(), 1) == R.PAPER["navigation"]["zero"]
    assert abs(oracle.mean - R.PAPER["navigation"]["oracle"]) < 0.05
    assert oracle.se < 0.01


@pytest.mark.parametrize("policy", R.NAV_POLICIES)
def test_navigation_simulation_equals_the_env(policy):
    goals = goal_space().sample(12, np.random.default_rng(3), "test")
    env = PointNavEnv()
    returns = []
    for task in goals:
        obs, _ = env.reset(options={"task": task})
        total, done = 0.0, False
        while not done:
            g = np.asarray(task.goal)
            action = np.zeros(2) if policy == "zero" else g - np.asarray(obs, dtype=np.float64)
            obs, reward, term, trunc, _ = env.step(action)
            total += reward
            done = term or trunc
        returns.append(total)
    est = R.navigation_return(policy, num_goals=12, seed=3)
    assert est.mean == pytest.approx(np.mean(returns), abs=1e-4)
