"""What a family knows lives on its FamilySpec (issue 13): references and trainer defaults, read
by RL^2 and the evaluator through one code path; one mean_ci95. (That meta_rl never compares
against or keys a table by a family id: tests/test_architecture.py.)"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from meta_rl_envs import Estimate, FamilySpec, check_id, mean_ci95, register_family
from meta_rl_envs.references import References, bandit_belief_states

from meta_rl.evaluate import family_references
from meta_rl.rl.rl2 import RL2Config, make_trial_env, reference_returns

META_RL = Path(__file__).resolve().parents[1] / "meta_rl"


def _sources():
    return {p: p.read_text() for p in sorted(META_RL.rglob("*.py"))}


def test_one_mean_ci95_with_one_return_type():
    defs = [p.name for p, t in _sources().items() if re.search(r"^def mean_ci95\(", t, re.M)]
    assert defs == []  # meta_rl_envs.stats holds the only one
    est = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert isinstance(est, Estimate) and est.num == 4 and est.mean == 3.0
    assert est.se == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2) and est.ci95 == 1.96 * est.se
    assert est.to_dict() == {"mean": 3.0, "se": est.se, "ci95": est.ci95, "num": 4}
    one, none = mean_ci95([5.0]), mean_ci95([])
    assert one.mean == 5.0 and math.isnan(one.ci95) and none.num == 0 and math.isnan(none.mean)


@pytest.mark.parametrize(
    ("env_id", "env_kwargs", "episodes"),
    [
        ("MetaRL/Bandit-v0", {}, 4),
        ("MetaRL/TabularMDP-v0", {"horizon": 3}, 2),
        ("MetaRL/PointNav-v0", {"horizon": 10}, 3),
    ],
)
def test_rl2_and_the_evaluator_report_the_same_references(env_id, env_kwargs, episodes):
    config = RL2Config(env_id=env_id, env_kwargs=env_kwargs, episodes_per_trial=episodes)
    ours = reference_returns(config, 40, 7)
    values, skipped = family_references(env_id, env_kwargs, 40, 7, "test", episodes)
    theirs = {r.name: r for r in values}
    assert list(ours) == list(theirs) and ours and skipped == {}
    for name, est in ours.items():
        assert theirs[name].mean == est.mean and theirs[name].ci95 == est.ci95
        assert theirs[name].per_episode == pytest.approx(est.mean / episodes)
        assert theirs[name].exact == est.exact


def test_the_spec_holds_references_and_trainer_defaults():
    bandit = check_id("MetaRL/Bandit-v0")
    assert bandit.trainer_defaults == {"k": 5}
    assert bandit.trainer_kwargs({"k": 3}) == {"k": 3}
    assert make_trial_env(RL2Config(), 2, 1, torch.device("cpu")).env.k == 5
    refs = bandit.compute_references(10, 50, 0)
    assert refs.values["bayes_optimal"].exact and refs.values["bayes_optimal"].mean == (
        pytest.approx(6.66, abs=0.01)
    )
    assert check_id("MetaRL/CartPole-v0").compute_references(3, 10, 0) == References(3)


def test_a_user_family_brings_its_own_references():
    from meta_rl_envs.classic import PendulumFamily

    def refs(episodes, num_tasks, seed, split, **kw):
        return References(episodes, {"zero": Estimate.exact_value(-1.0 * episodes)})

    spec = register_family("MetaRLTest/Pendulum-v0", PendulumFamily, references=refs)
    assert isinstance(spec, FamilySpec) and check_id("MetaRLTest/Pendulum-v0") is spec
    (zero,), _ = family_references("MetaRLTest/Pendulum-v0", {}, 4, 0, "test", 3)
    assert zero.name == "zero" and zero.mean == -3.0 and zero.exact


def test_many_armed_bandit_skips_the_exact_dp_with_a_reason(caplog):
    """k=50 arms, n=10 pulls: the exact DP cannot run; the other references still come out and
    the reason is logged (it used to raise 'too large for the exact bandit DP')."""
    config = RL2Config(env_kwargs={"k": 50}, episodes_per_trial=10)
    refs = reference_returns(config, 20, 0)
    assert "bayes_optimal" not in refs and set(refs) == {"thompson", "ucb1", "greedy", "random"}
    assert "bayes_optimal not computed" in caplog.text
    skipped = check_id("MetaRL/Bandit-v0").compute_references(10, 20, 0, env_kwargs={"k": 50})
    assert "too large" in skipped.skipped["bayes_optimal"]
    long = check_id("MetaRL/Bandit-v0").compute_references(21, 20, 0)
    assert "longer than" in long.skipped["bayes_optimal"]
    assert bandit_belief_states(3, 5) == 23 and bandit_belief_states(10, 8) > 1000
