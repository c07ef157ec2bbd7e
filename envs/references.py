"""Reference solvers for the yardstick families (DESIGN.md section 5), in numpy.

Every number here is either exact or a seeded Monte Carlo estimate over tasks drawn through the
family's own :class:`~meta_rl_envs.core.TaskSpace`, so it sits on the same distribution a
meta-learner is trained and evaluated on.

- Bernoulli bandits (RL^2, k arms, ``p_i ~ U[0, 1]``, a trial of ``n`` pulls):
  :func:`bandit_bayes_optimal` and :func:`bandit_greedy_exact` (exact DP), :func:`bandit_policy`
  (Thompson sampling, UCB1, greedy, random; simulated), :func:`bandit_random` (exact ``n / 2``).
- Random tabular MDPs (RL^2, 10 states, 5 actions, T = 10, a trial of ``n`` episodes):
  :func:`tabular_random` (exact ``n * T``), :func:`tabular_psrl` (posterior sampling),
  :func:`tabular_oracle` (the optimal policy of the true MDP), :func:`tabular_q_values`
  (finite-horizon dynamic programming).
- 2D navigation (MAML): :func:`navigation_return` of the zero-action policy (about -38.3) and of
  the straight-to-goal oracle (about -0.5); :func:`navigation_zero_action_exact`.

Monte Carlo estimates average the *expected* reward of each chosen action (``p_a`` for a bandit
arm, ``mu(s, a)`` for an MDP step) instead of the sampled reward: the mean is the same (the
learner still observes and updates on sampled rewards), the standard error is smaller.

Each family with references names one function here on its
:class:`~meta_rl_envs.registry.FamilySpec` (``references``): :func:`bandit_references`,
:func:`tabular_references`, :func:`navigation_references`. It returns the :class:`References`
of a trial of ``episodes`` episodes on the tasks ``task_space.sample(num_tasks, seed, split)``;
RL^2's final metrics and ``meta-rl evaluate`` both read them through
:meth:`FamilySpec.compute_references <meta_rl_envs.registry.FamilySpec.compute_references>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from meta_rl_envs.bandits import bandit_space
from meta_rl_envs.core import TaskError, as_generator, stack_tasks
from meta_rl_envs.navigation import goal_space
from meta_rl_envs.sparse_point import goal_of, sparse_goal_space, sparse_reward
from meta_rl_envs.stats import Estimate, mean_ci95
from meta_rl_envs.tabular import (
    INITIAL_STATE,
    REWARD_NOISE_STD,
    REWARD_PRIOR_MEAN,
    REWARD_PRIOR_STD,
    TRANSITION_ALPHA,
    mdp_space,
)

# Numbers reported by the papers (RL^2 Tables 1 and 2, k = 5 arms; MAML 2D navigation).
PAPER = {
    "bandit": {
        (10, "gittins"): 6.6,
        (100, "gittins"): 78.3,
        (10, "thompson"): 5.7,
        (100, "thompson"): 74.7,
        (10, "rl2"): 6.7,
        (100, "rl2"): 78.7,
    },
    "tabular": {(10, "psrl"): 138.1, (25, "psrl"): 408.8, (10, "rl2"): 156.2, (25, "rl2"): 445.7},
    "navigation": {"zero": -38.3, "oracle": -0.5},
}
PAPER_NUM_TASKS = 1000  # the RL^2 tables average over 1000 bandits / MDPs


def _estimate(per_task: np.ndarray) -> Estimate:
    return mean_ci95(per_task)


@dataclass(frozen=True)
class References:
    """A family's reference solvers on one set of tasks: ``values`` maps a solver's name to the
    mean total reward of a trial of ``episodes`` episodes (``Estimate.exact`` for exact values);
    ``skipped`` maps a solver that could not be computed here to the reason."""

    episodes: int
    values: dict[str, Estimate] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _positive(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise TaskError(f"{name}={value!r} must be a positive integer")
    return int(value)


# ============================================================================================
# Bernoulli bandits
# ============================================================================================
def sample_bandits(num: int, k: int, rng, split: str = "test") -> np.ndarray:
    """``(num, k)`` arm probabilities drawn through the bandit family's task space."""
    return stack_tasks(bandit_space(k).sample(num, as_generator(rng), split))["probs"]


def bandit_random(n: int) -> float:
    """Expected total reward of uniformly random pulls: ``n * E[p] = n / 2``."""
    return _positive("n", n) / 2.0


def bandit_bayes_optimal(n: int, k: int = 5) -> float:
    """Exact Bayes-optimal expected total reward of ``n`` pulls of a ``k``-armed Bernoulli bandit
    with independent ``Beta(1, 1)`` (= ``U[0, 1]``) priors, by dynamic programming.

    The posterior is the (success, failure) count of every arm. Arms are exchangeable, so a belief
    state is the *multiset* of arm counts, stored as a sorted row of arm codes; states are built
    level by level (total pulls ``t``) and valued backwards with numpy. For k = 5 the number of
    states grows quickly: n = 10 has ~2e3 states (milliseconds), n = 20 ~2e5 (under a second),
    n = 25 ~1.4e6 (~5 s, ~0.7 GB at peak), n = 30 becomes slow and memory-hungry.
    """
    return _belief_dp(n, k, greedy=False)


def bandit_greedy_exact(n: int, k: int = 5) -> float:
    """Exact expected total reward of the greedy policy (highest posterior mean, ties broken
    uniformly), by the same dynamic programming as :func:`bandit_bayes_optimal`."""
    return _belief_dp(n, k, greedy=True)


def _belief_dp(n: int, k: int, greedy: bool) -> float:
    n, k = _positive("n", n), _positive("k", k)
    # Arm code of (s, f) with m = s + f pulls: m (m + 1) / 2 + s. Codes < (n + 1)(n + 2) / 2.
    num_codes = (n + 1) * (n + 2) // 2
    m_of = np.concatenate([np.full(m + 1, m) for m in range(n + 1)])
    s_of = np.concatenate([np.arange(m + 1) for m in range(n + 1)])
    p_win = (s_of + 1.0) / (m_of + 2.0)  # posterior mean of an arm
    win = np.where(m_of < n, (m_of + 1) * (m_of + 2) // 2 + s_of + 1, 0)
    lose = np.where(m_of < n, (m_of + 1) * (m_of + 2) // 2 + s_of, 0)
    if num_codes**k >= 2**63:
        raise TaskError(f"n={n}, k={k} is too large for the exact bandit DP")
    weights = num_codes ** np.arange(k - 1, -1, -1, dtype=np.int64)

    def keys(states: np.ndarray) -> np.ndarray:
        return states @ weights

    def child(states: np.ndarray, j: int, to: np.ndarray) -> np.ndarray:
        out = states.copy()
        out[:, j] = to[states[:, j]]
        out.sort(axis=1)
        return out

    # Forward: the reachable belief states after t pulls, as sorted unique rows.
    levels = [np.zeros((1, k), dtype=np.int64)]
    for _ in range(n):
        cur = levels[-1]
        kids = np.concatenate([child(cur, j, to) for j in range(k) for to in (win, lose)])
        _, first = np.unique(keys(kids), return_index=True)  # sorted by key
        levels.append(kids[first])
    # Backward: Q_j = p_j (1 + V(win_j)) + (1 - p_j) V(lose_j); V = max_j Q_j (Bayes-optimal)
    # or the mean of Q_j over the arms of highest posterior mean (greedy).
    value = np.zeros(len(levels[n]))
    for t in range(n - 1, -1, -1):
        cur, nxt_keys = levels[t], keys(levels[t + 1])
        p = p_win[cur]  # (states, k)
        q = np.empty(cur.shape)
        for j in range(k):
            v_win = value[np.searchsorted(nxt_keys, keys(child(cur, j, win)))]
            v_lose = value[np.searchsorted(nxt_keys, keys(child(cur, j, lose)))]
            q[:, j] = p[:, j] * (1.0 + v_win) + (1.0 - p[:, j]) * v_lose
        if greedy:
            tied = p >= p.max(axis=1, keepdims=True) - 1e-12
            value = (q * tied).sum(axis=1) / tied.sum(axis=1)
        else:
            value = q.max(axis=1)
    return float(value[0])


BANDIT_POLICIES = ("thompson", "ucb1", "greedy", "random")


def bandit_policy(
    policy: str,
    n: int,
    k: int = 5,
    num_bandits: int = 10_000,
    seed: int = 0,
    split: str = "test",
) -> Estimate:
    """Mean total reward (and its standard error) of a classic bandit policy over ``n`` pulls,
    simulated on ``num_bandits`` bandits at once.

    - ``thompson``: sample each arm's ``Beta(1 + s, 1 + f)`` posterior, pull the best sample.
    - ``ucb1``: pull every arm once, then the arm maximising ``mean + sqrt(2 ln t / pulls)``.
    - ``greedy``: the arm with the highest posterior mean ``(s + 1) / (pulls + 2)``.
    - ``random``: a uniformly random arm.
    Ties are broken uniformly at random.
    """
    if policy not in BANDIT_POLICIES:
        raise TaskError(
            f"policy={policy!r} is not a bandit policy; choose one of {BANDIT_POLICIES}"
        )
    n, k, num_bandits = _positive("n", n), _positive("k", k), _positive("num_bandits", num_bandits)
    rng = np.random.default_rng(seed)
    probs = sample_bandits(num_bandits, k, rng, split)
    rows = np.arange(num_bandits)
    succ = np.zeros((num_bandits, k))
    pulls = np.zeros((num_bandits, k))
    total = np.zeros(num_bandits)
    for t in range(n):
        jitter = 1e-9 * rng.random((num_bandits, k))  # random tie-breaking, below any real gap
        if policy == "thompson":
            score = rng.beta(1.0 + succ, 1.0 + pulls - succ)
        elif policy == "ucb1":
            if t < k:
                score = (np.arange(k) == t).astype(float) * np.ones((num_bandits, 1))
            else:
                score = succ / pulls + np.sqrt(2.0 * math.log(t) / pulls) + jitter
        elif policy == "greedy":
            score = (succ + 1.0) / (pulls + 2.0) + jitter
        else:
            score = jitter
        arm = score.argmax(axis=1)
        p = probs[rows, arm]
        reward = rng.random(num_bandits) < p
        total += p
        succ[rows, arm] += reward
        pulls[rows, arm] += 1.0
    return _estimate(total)


# ============================================================================================
# Random tabular MDPs
# ============================================================================================
def sample_mdps(
    num: int, rng, num_states: int = 10, num_actions: int = 5, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` MDPs drawn through the tabular family's task space: mean rewards ``(num, S, A)``
    and transitions ``(num, S, A, S)``."""
    stacked = stack_tasks(mdp_space(num_states, num_actions).sample(num, as_generator(rng), split))
    s, a = num_states, num_actions
    return stacked["reward_mean"].reshape(num, s, a), stacked["transitions"].reshape(num, s, a, s)


def tabular_q_values(reward_mean: np.ndarray, transitions: np.ndarray, horizon: int) -> np.ndarray:
    """Finite-horizon optimal action values ``Q[t, ..., s, a]`` (``t`` steps done, ``horizon - t``
    to go) of MDPs with mean rewards ``(..., S, A)`` and transitions ``(..., S, A, S)``."""
    horizon = _positive("horizon", horizon)
    v = np.zeros(reward_mean.shape[:-1])
    qs = []
    for _ in range(horizon):
        q = reward_mean + np.einsum("...sat,...t->...sa", transitions, v)
        qs.append(q)
        v = q.max(axis=-1)
    return np.stack(qs[::-1])


def tabular_optimal_value(reward_mean: np.ndarray, transitions: np.ndarray, horizon: int):
    """Optimal expected return of one episode from every start state: ``(..., S)``."""
    return tabular_q_values(reward_mean, transitions, horizon)[0].max(axis=-1)


def tabular_random(n: int, horizon: int = 10) -> float:
    """Expected total reward of uniformly random actions: ``n * T * E[mu] = 10 n`` (RL^2)."""
    return _positive("n", n) * _positive("horizon", horizon) * REWARD_PRIOR_MEAN


def tabular_oracle(
    n: int,
    num_mdps: int = 2000,
    seed: int = 0,
    num_states: int = 10,
    num_actions: int = 5,
    horizon: int = 10,
    split: str = "test",
) -> Estimate:
    """The optimal policy of each true MDP (an upper bound no learner reaches): exact per MDP
    (``n`` times its optimal episode value from the start state), averaged over MDPs."""
    n = _positive("n", n)
    mu, p = sample_mdps(_positive("num_mdps", num_mdps), seed, num_states, num_actions, split)
    return _estimate(n * tabular_optimal_value(mu, p, horizon)[:, INITIAL_STATE])


def tabular_psrl(
    n: int,
    num_mdps: int = 2000,
    seed: int = 0,
    num_states: int = 10,
    num_actions: int = 5,
    horizon: int = 10,
    split: str = "test",
    reward_prior_mean: float = REWARD_PRIOR_MEAN,
    sample: bool = True,
) -> Estimate:
    """Posterior sampling for RL (Osband et al. 2013) over a trial of ``n`` episodes, simulated on
    ``num_mdps`` MDPs at once, with the true prior of the family.

    At each episode start PSRL draws an MDP from its posterior (transition rows from
    ``Dirichlet(1 + counts)``; reward means from the Normal posterior of a ``N(1, 1)`` prior with
    known unit noise variance), solves it by finite-horizon DP and follows that policy for the
    episode. Episodes start in the family's initial state.

    ``reward_prior_mean`` is the mean of PSRL's Normal prior on ``mu(s, a)`` (unit precision).
    The default, 1, is the family's true prior. The RL^2 paper's PSRL baseline ran TabulaRL's
    ``PSRL`` with its default prior mean 0 (the authors' evaluation script builds the agent with
    default arguments); ``reward_prior_mean=0.0`` reproduces that setting. At these short
    horizons the pessimistic prior explores less and scores *higher*: about 137 vs 133 for
    n = 10 and 407.5 vs 403 for n = 25 (paper: 138.1 and 408.8).

    ``sample=False`` plans in the posterior *mean* MDP instead of a posterior sample: the
    certainty-equivalent "greedy" agent (see :func:`tabular_greedy`).
    """
    n, num_mdps = _positive("n", n), _positive("num_mdps", num_mdps)
    s_n, a_n = num_states, num_actions
    rng = np.random.default_rng(seed)
    mu, trans = sample_mdps(num_mdps, rng, s_n, a_n, split)
    cdf = np.cumsum(trans, axis=-1)
    rows = np.arange(num_mdps)
    visits = np.zeros((num_mdps, s_n, a_n))
    reward_sum = np.zeros((num_mdps, s_n, a_n))
    trans_counts = np.zeros((num_mdps, s_n, a_n, s_n))
    prior_prec, noise_prec = 1.0 / REWARD_PRIOR_STD**2, 1.0 / REWARD_NOISE_STD**2
    total = np.zeros(num_mdps)
    for _ in range(n):
        # Sample an MDP from the posterior and plan in it.
        g = (
            rng.gamma(TRANSITION_ALPHA + trans_counts)
            if sample
            else TRANSITION_ALPHA + trans_counts
        )
        sampled_p = g / g.sum(axis=-1, keepdims=True)
        prec = prior_prec + noise_prec * visits
        sampled_mu = (prior_prec * reward_prior_mean + noise_prec * reward_sum) / prec
        if sample:
            sampled_mu = sampled_mu + rng.standard_normal(sampled_mu.shape) / np.sqrt(prec)
        q = tabular_q_values(sampled_mu, sampled_p, horizon)  # (T, M, S, A)
        # Run the episode in the true MDPs.
        state = np.full(num_mdps, INITIAL_STATE)
        for t in range(horizon):
            action = q[t, rows, state].argmax(axis=-1)
            mean = mu[rows, state, action]
            reward = mean + REWARD_NOISE_STD * rng.standard_normal(num_mdps)
            u = rng.random(num_mdps)
            nxt = (cdf[rows, state, action] <= u[:, None]).sum(axis=-1).clip(max=s_n - 1)
            total += mean
            visits[rows, state, action] += 1.0
            reward_sum[rows, state, action] += reward
            trans_counts[rows, state, action, nxt] += 1.0
            state = nxt
    return _estimate(total)


def tabular_greedy(n: int, num_mdps: int = 2000, seed: int = 0, **kwargs: Any) -> Estimate:
    """Certainty equivalence: each episode, plan by finite-horizon DP in the posterior-mean MDP
    (mean rewards from the Normal posterior, transition rows ``(1 + counts) / sum``) and follow
    that plan; no exploration bonus. Same arguments as :func:`tabular_psrl`.

    With the family's true prior (mean 1 for unseen (s, a): optimistic against visited pairs whose
    rewards came out low) it explores enough to beat PSRL at short horizons: about 150 vs 134 for
    n = 10. With ``reward_prior_mean=0.0`` an unseen action looks worse than any visited one
    whose rewards came out positive, so it explores little: about 129 for n = 10."""
    return tabular_psrl(n, num_mdps, seed, sample=False, **kwargs)


# ============================================================================================
# 2D navigation
# ============================================================================================
NAV_POLICIES = ("zero", "oracle")


def navigation_zero_action_exact(horizon: int = 100, goal_radius: float = 0.5) -> float:
    """``-horizon * E|g|`` for ``g ~ U[-r, r]^2``: ``E|g| = r (sqrt 2 + asinh 1) / 3``.

    (Ignores the ~0.04% of goals within 0.01 of the origin, where the episode ends at once.)"""
    return -horizon * goal_radius * (math.sqrt(2.0) + math.asinh(1.0)) / 3.0


def navigation_return(
    policy: str,
    num_goals: int = 10_000,
    seed: int = 0,
    horizon: int = 100,
    max_step: float = 0.1,
    goal_radius: float = 0.5,
    split: str = "test",
) -> Estimate:
    """Mean return of ``"zero"`` (never move) or ``"oracle"`` (step straight at the goal, each
    coordinate clipped to ``max_step``) on goals drawn through the PointNav task space, with the
    PointNav dynamics (reward ``-|pos - goal|`` after the move; done within 0.01 per coordinate)."""
    if policy not in NAV_POLICIES:
        raise TaskError(
            f"policy={policy!r} is not a navigation policy; choose one of {NAV_POLICIES}"
        )
    num_goals = _positive("num_goals", num_goals)
    space = goal_space(goal_radius)
    goals = stack_tasks(space.sample(num_goals, as_generator(seed), split))["goal"]
    pos = np.zeros_like(goals)
    alive = np.ones(num_goals, dtype=bool)
    total = np.zeros(num_goals)
    for _ in range(_positive("horizon", horizon)):
        action = np.zeros_like(pos) if policy == "zero" else goals - pos
        pos = pos + np.clip(action, -max_step, max_step) * alive[:, None]
        delta = pos - goals
        total -= np.sqrt((delta**2).sum(-1)) * alive
        alive &= ~np.all(np.abs(delta) < 0.01, axis=-1)
    return _estimate(total)


# ============================================================================================
# The references of each family (named on its FamilySpec)
# ============================================================================================
BANDIT_DP_MAX_PULLS = 20  # the exact DP of longer trials takes seconds to minutes (k = 5)
BANDIT_DP_MAX_STATES = 500_000  # belief states over all levels (k = 5, n = 20: ~3.5e5)


def bandit_belief_states(n: int, k: int) -> int:
    """Belief states the exact bandit DP visits (all levels): multisets of ``k`` arm counts
    ``(s, f)`` with ``s + f`` pulls in total at most ``n``."""
    n, k = _positive("n", n), _positive("k", k)
    count = [[0] * (n + 1) for _ in range(k + 1)]  # count[j][t]: multisets of j arms, t pulls
    count[0][0] = 1
    for m in range(n + 1):  # the m + 1 arm codes with m pulls, each usable any number of times
        for _ in range(m + 1):
            for j in range(1, k + 1):
                row, prev = count[j], count[j - 1]
                for t in range(m, n + 1):
                    row[t] += prev[t - m]
    return sum(count[k])


def bandit_references(
    episodes: int, num_tasks: int, seed: int, split: str = "test", k: int = 5, **_: Any
) -> References:
    """Bernoulli bandits, a trial of ``episodes`` pulls: the Bayes-optimal value (exact DP, when
    it is cheap enough), Thompson sampling, UCB1, greedy and random pulls (simulated on the
    ``num_tasks`` bandits ``seed`` draws)."""
    refs = References(episodes)
    n = episodes
    if split == "ood":
        refs.skipped["bayes_optimal"] = "ood tasks leave the prior the exact DP assumes"
    elif n > BANDIT_DP_MAX_PULLS:
        refs.skipped["bayes_optimal"] = (
            f"a trial of {n} pulls is longer than the exact DP's limit of {BANDIT_DP_MAX_PULLS}"
        )
    elif (states := bandit_belief_states(n, k)) > BANDIT_DP_MAX_STATES:
        refs.skipped["bayes_optimal"] = (
            f"the exact DP for k={k} arms, n={n} pulls visits {states:,} belief states "
            f"(limit {BANDIT_DP_MAX_STATES:,})"
        )
    else:
        try:
            refs.values["bayes_optimal"] = Estimate.exact_value(bandit_bayes_optimal(n, k))
        except TaskError as err:  # e.g. too many arms for the DP's state keys
            refs.skipped["bayes_optimal"] = str(err)
    for name in BANDIT_POLICIES:
        refs.values[name] = bandit_policy(name, n, k, num_tasks, seed, split)
    return refs


def tabular_references(
    episodes: int,
    num_tasks: int,
    seed: int,
    split: str = "test",
    num_states: int = 10,
    num_actions: int = 5,
    horizon: int = 10,
    **_: Any,
) -> References:
    """Random tabular MDPs, a trial of ``episodes`` episodes: PSRL (the true prior, and the RL^2
    paper's prior mean 0), certainty-equivalent greedy, the per-MDP optimum (simulated or exact
    per MDP on the ``num_tasks`` MDPs ``seed`` draws) and random actions (exact)."""
    sizes = dict(num_states=num_states, num_actions=num_actions, horizon=horizon, split=split)
    n = episodes
    return References(
        n,
        {
            "psrl": tabular_psrl(n, num_tasks, seed, **sizes),
            "psrl_prior0": tabular_psrl(n, num_tasks, seed, reward_prior_mean=0.0, **sizes),
            "greedy": tabular_greedy(n, num_tasks, seed, **sizes),
            "oracle": tabular_oracle(n, num_tasks, seed, **sizes),
            "random": Estimate.exact_value(tabular_random(n, horizon)),
        },
    )


def navigation_references(
    episodes: int,
    num_tasks: int,
    seed: int,
    split: str = "test",
    horizon: int = 100,
    max_step: float = 0.1,
    goal_radius: float = 0.5,
    **_: Any,
) -> References:
    """2D navigation, a trial of ``episodes`` episodes (each episode scores the same: the
    policies have no memory): standing still and walking straight to the goal."""
    nav = dict(horizon=horizon, max_step=max_step, goal_radius=goal_radius, split=split)
    return References(
        episodes,
        {
            name: navigation_return(name, num_tasks, seed, **nav).scaled(episodes)
            for name in NAV_POLICIES
        },
    )


SPARSE_POINT_POLICIES = ("oracle", "zero")


def sparse_point_return(
    policy: str,
    num_goals: int = 10_000,
    seed: int = 0,
    horizon: int = 20,
    max_step: float = 0.1,
    goal_radius: float = 0.2,
    radius: float = 1.0,
    split: str = "test",
) -> Estimate:
    """Mean return of one episode of ``"oracle"`` (knows the goal: steps straight at it, each
    coordinate clipped to ``max_step``, and stays) or ``"zero"`` (never moves: 0) on goals drawn
    through the sparse point robot's task space, with its dynamics and sparse reward."""
    if policy not in SPARSE_POINT_POLICIES:
        raise TaskError(
            f"policy={policy!r} is not a sparse point policy; choose one of {SPARSE_POINT_POLICIES}"
        )
    tasks = sparse_goal_space().sample(_positive("num_goals", num_goals), as_generator(seed), split)
    goals = goal_of(stack_tasks(tasks)["angle"], radius)
    pos = np.zeros_like(goals)
    total = np.zeros(len(goals))
    for _ in range(_positive("horizon", horizon)):
        action = np.zeros_like(pos) if policy == "zero" else goals - pos
        pos = pos + np.clip(action, -max_step, max_step)
        total += sparse_reward(np.sqrt(((pos - goals) ** 2).sum(-1)), goal_radius)
    return _estimate(total)


def sparse_point_references(
    episodes: int,
    num_tasks: int,
    seed: int,
    split: str = "test",
    horizon: int = 20,
    max_step: float = 0.1,
    goal_radius: float = 0.2,
    radius: float = 1.0,
    **_: Any,
) -> References:
    """Sparse point robot, a trial of ``episodes`` episodes: the known-goal oracle (walks
    straight to the goal) and standing still, each episode scoring the same."""
    kw = dict(horizon=horizon, max_step=max_step, goal_radius=goal_radius, radius=radius)
    return References(
        episodes,
        {
            name: sparse_point_return(name, num_tasks, seed, split=split, **kw).scaled(episodes)
            for name in SPARSE_POINT_POLICIES
        },
    )
