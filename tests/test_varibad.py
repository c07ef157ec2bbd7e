"""VariBAD (meta_rl/rl/varibad.py) and the GridNavi family (envs/gridnavi.py)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from meta_rl_envs import gridnavi as G
from meta_rl_envs import make_env
from meta_rl_envs.wrappers import BatchedTrialEnv

import meta_rl
from meta_rl.config import ConfigError
from meta_rl.loop import TrainingDiverged
from meta_rl.rl import varibad as V
from meta_rl.rl.rl2 import rollout

TINY = dict(
    reward_decoder="cells", kl_weight=0.01, eval_split="train", iterations=2,
    tasks_per_iteration=8, minibatches=2, eval_tasks=8, eval_every=0, log_every=1,
    checkpoint_every=0, references=False, vae_batch=8, device="cpu", num_threads=1,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# GridNavi and its references
# --------------------------------------------------------------------------------------------
def _brute_force_bayes(episodes: int, size: int, horizon: int) -> float:
    """The best expected trial return over every open-loop path (all moves, every episode)."""
    cells = G.goal_cells(size)
    oracle = G.oracle_return(np.array(cells), horizon)
    best = -math.inf
    for path in itertools.product(range(1, 5), repeat=episodes * horizon):
        total = 0.0
        for g, (gx, gy) in enumerate(cells):
            ret, found = 0.0, False
            for e in range(episodes):
                if found:
                    ret += oracle[g]
                    continue
                x = y = 0
                for t in range(horizon):
                    dx, dy = G.MOVES[path[e * horizon + t]]
                    x, y = min(max(x + dx, 0), size - 1), min(max(y + dy, 0), size - 1)
                    if (x, y) == (gx, gy):
                        ret += G.found_return(t + 1, horizon)
                        found = True
                        break
                if not found:
                    ret += G.STEP_REWARD * horizon
            total += ret
        best = max(best, total / len(cells))
    return best


@pytest.mark.parametrize("episodes,size,horizon", [(1, 3, 5), (1, 4, 6), (2, 3, 3)])
def test_bayes_optimal_search_equals_brute_force(episodes, size, horizon):
    exact = G.bayes_optimal_return(episodes, size, horizon)
    assert exact == pytest.approx(_brute_force_bayes(episodes, size, horizon), abs=1e-9)


def test_gridnavi_first_episode_bayes_optimal_is_four():
    """A snake finds a new goal cell every step from step 2: sum(16 - t, t = 2..15) = 105,
    expected return -1.5 + 1.1 * 105 / 21 = 4.0."""
    assert G.bayes_optimal_return(1) == pytest.approx(4.0, abs=1e-12)
    assert len(G.goal_cells(5)) == 21


def test_references_rank_as_expected():
    first = G.gridnavi_references(1, 2000, 0)
    v = {k: e.mean for k, e in first.values.items()}
    ci = {k: e.ci95 for k, e in first.values.items()}
    assert v["random"] < v["posterior_sampling"] < v["posterior_sampling_resample"]
    assert v["posterior_sampling_resample"] - ci["posterior_sampling_resample"] < 4.0
    assert v["bayes_optimal"] == 4.0 < v["oracle"] - ci["oracle"]
    trial = G.gridnavi_references(4, 2000, 0)
    assert "bayes_optimal" in trial.skipped
    bound = trial.values["bayes_optimal_upper_bound"].mean
    assert trial.values["posterior_sampling_resample"].mean < bound < trial.values["oracle"].mean


def test_trial_env_pays_the_oracle_return_to_the_oracle():
    """Walking straight to the goal in every episode of a trial earns the reference's oracle
    return exactly (the batched twin through RL^2's trial wrapper)."""
    base = make_env("MetaRL/GridNavi-v0", 21, 1)
    env = BatchedTrialEnv(base, 4)
    tasks = base.task_space.all_tasks()
    env.set_tasks(tasks)
    obs, _ = env.reset(seed=0)
    goal = torch.as_tensor(G._goals_xy(tasks, 5))
    total = torch.zeros(21)
    for _ in range(env.max_trial_length):
        dx, dy = (goal - obs[:, :2].long()).unbind(-1)
        action = torch.where(dx > 0, 4, torch.where(dy > 0, 1, 0))
        obs, reward, *_ = env.step(action)
        total += reward
    expected = 4 * G.oracle_return(goal.numpy(), 15)
    assert np.allclose(total.numpy(), expected)


# --------------------------------------------------------------------------------------------
# The trainer's pieces
# --------------------------------------------------------------------------------------------
def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="minibatches"):
        V.VariBADConfig(tasks_per_iteration=2, minibatches=4)
    cfg = V.VariBADConfig(env_id="MetaRL/CartPole-v0", reward_decoder="cells", device="cpu")
    with pytest.raises(ConfigError, match="reward_decoder='cells'"):
        V.train(replace(cfg, iterations=1, tasks_per_iteration=4, eval_tasks=2))


def test_gaussian_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    m, lv, mp, lvp = (torch.randn(7, 5, generator=g) for _ in range(4))
    p = torch.distributions.Normal(m, (0.5 * lv).exp())
    q = torch.distributions.Normal(mp, (0.5 * lvp).exp())
    want = torch.distributions.kl_divergence(p, q).sum(-1)
    assert torch.allclose(V._gauss_kl(m, lv, mp, lvp), want, atol=1e-5)


def _model_and_trials(cfg: V.VariBADConfig, n: int = 6):
    from meta_rl.rl.rl2 import make_trial_env

    env = make_trial_env(cfg, n, 1, torch.device("cpu"))
    env.set_tasks(env.sample_tasks(n, 0))
    model = V.make_model(cfg, env, 0)
    return model, rollout(env, model.policy, torch.Generator().manual_seed(0)), env


def test_encoder_acts_on_the_posteriors_it_is_trained_on():
    """The step-by-step belief while acting equals the whole-trial unroll (prior at t = 0), and
    the policy's value along the trial equals the stored values."""
    cfg = V.VariBADConfig(**TINY)
    model, trials, _ = _model_and_trials(cfg)
    pol = model.policy
    mean, logvar = pol.encode(trials.obs)
    assert torch.allclose(mean[0], pol.posterior(torch.zeros(1, pol.gru.hidden_size))[0])
    _, values = pol.heads(pol.features(trials.obs, mean, logvar))
    assert torch.allclose(values, trials.values, atol=1e-5)


@pytest.mark.parametrize("decoder", ["cells", "mlp"])
def test_vae_loss_parts_and_the_ablations(decoder):
    cfg = V.VariBADConfig(**{**TINY, "reward_decoder": decoder, "state_decoder": True})
    model, trials, _ = _model_and_trials(cfg)
    batch = V.TrialBatch.of(trials)
    loss, parts = V.vae_loss(model, batch, cfg, torch.Generator().manual_seed(1))
    assert parts["vae_rec_loss"] > 0 and parts["vae_kl"] > 0 and parts["vae_state_loss"] > 0
    want = parts["vae_rec_loss"] + 0.01 * parts["vae_kl"] + parts["vae_state_loss"]
    assert loss.detach().item() == pytest.approx(float(want), rel=1e-5)
    no_kl = replace(cfg, kl_weight=0.0, state_decoder=False)
    loss, parts = V.vae_loss(model, batch, no_kl, torch.Generator().manual_seed(1))
    assert loss.detach().item() == pytest.approx(parts["vae_rec_loss"], rel=1e-6)
    loss.backward()  # the policy's actor and critic get no gradient from the ELBO
    assert all(p.grad is None for p in model.policy.actor.parameters())


def test_episode_returns_split_the_trial():
    cfg = V.VariBADConfig(**TINY)
    _, trials, env = _model_and_trials(cfg)
    per_ep = V.episode_returns(trials, 4)
    assert torch.allclose(per_ep.sum(0), trials.totals(), atol=1e-5)
    assert torch.all(per_ep >= 15 * G.STEP_REWARD - 1e-5)


def test_box_actions_and_the_mlp_decoder_on_pointnav():
    from meta_rl.presets import PRESETS

    cfg = PRESETS["varibad-pointnav"].make_config()
    small = dict(iterations=1, tasks_per_iteration=4, minibatches=2, eval_tasks=4, vae_batch=4)
    final = V.train(replace(cfg, **small, references=False, device="cpu", num_threads=1))
    assert final["env_steps"] == 4 * 200 and math.isfinite(final["vae_rec_loss"])
    assert {"eval_return_ep1", "eval_return_ep2"} <= set(final)


def test_same_seed_same_numbers_and_different_seed_differs():
    cfg = V.VariBADConfig(**TINY)
    a, b, c = V.train(cfg), V.train(cfg), V.train(replace(cfg, seed=1))
    assert a == b
    assert a != c


def test_resume_continues_exactly(tmp_path):
    from meta_rl.runs import Run

    full_cfg = V.VariBADConfig(**{**TINY, "iterations": 4, "checkpoint_every": 2})
    with Run.create(tmp_path / "full", "varibad-gridnavi", full_cfg) as run:
        full = V.train(full_cfg, run)
    half = replace(full_cfg, iterations=2)
    with Run.create(tmp_path / "half", "varibad-gridnavi", half) as run:
        V.train(half, run)
    with Run.resume(tmp_path / "half", ["iterations=4"]) as run:
        resumed = V.train(run.config, run)
    assert resumed == full


def test_divergence_guard_stops_before_saving(tmp_path, monkeypatch):
    from meta_rl.runs import Run

    real = V.vae_loss

    def nan_loss(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), {**parts, "vae_loss": float("nan")}

    monkeypatch.setattr(V, "vae_loss", nan_loss)
    cfg = V.VariBADConfig(**{**TINY, "checkpoint_every": 1})
    with Run.create(tmp_path / "run", "varibad-gridnavi", cfg) as run:
        with pytest.raises(TrainingDiverged, match="no checkpoint had been written"):
            V.train(cfg, run)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))


# --------------------------------------------------------------------------------------------
# The surface: load, predict, export, evaluate (belief picture)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vb_run(tmp_path_factory):
    from meta_rl.runs import Run

    path = tmp_path_factory.mktemp("varibad") / "run"
    cfg = V.VariBADConfig(**{**TINY, "iterations": 3})
    with Run.create(path, "varibad-gridnavi", cfg) as run:
        V.train(cfg, run)
    return path


def test_load_predict_export_and_evaluate(vb_run, tmp_path):
    from meta_rl.evaluate import evaluate_run, write_outputs

    agent = meta_rl.load(vb_run)
    assert type(agent).__name__ == "VariBADAgent" and agent.episodes_per_trial == 4
    obs = np.zeros((3, agent.trial_observation_space.shape[0]), np.float32)
    act, state = agent.predict(obs, deterministic=True)
    act2, _ = agent.predict(obs, state, deterministic=True)
    path = agent.export(tmp_path / "varibad.pt")
    m = torch.jit.load(str(path))
    s = m.initial_state(3)
    a1, s = m(torch.as_tensor(obs), s, True)
    a2, s = m(torch.as_tensor(obs), s, True)
    assert a1.tolist() == act.tolist() and a2.tolist() == act2.tolist()
    report = evaluate_run(vb_run, split="train", tasks=6, baselines=("none", "reference"))
    names = {r.name for r in report.references}
    assert {"oracle", "bayes_optimal (episode 1)", "bayes_optimal_upper_bound"} <= names
    assert len(report.belief.probs) == 61 and len(report.belief.probs[0]) == 25
    paths = write_outputs(report, tmp_path / "eval")
    assert paths["belief"].stat().st_size > 0
    again = json.loads(paths["report"].read_text())
    assert again["belief"]["grid"] == [5, 5]


# --------------------------------------------------------------------------------------------
# The belief: collapses on the goal once found; needs the decoder loss and the KL chain
# --------------------------------------------------------------------------------------------
BELIEF_CI = dict(
    TINY, iterations=10, tasks_per_iteration=32, minibatches=4, vae_updates=100, vae_batch=16,
    vae_lr=3e-3, decode_future=False,
)  # fmt: skip
"""a CI-size GridNavi training: 19k env steps, 1,000 ELBO steps (decoding the past only, which
learns faster than VariBAD's default of decoding the whole trial)"""


def belief_metrics(tmp_path, **overrides) -> dict[str, float]:
    """Train ``BELIEF_CI`` (plus ``overrides``), then run one trial on each of 200 fresh GridNavi
    tasks and measure, on the trials that reached the goal, the decoded goal probability at the
    true goal cell right after it was first reached, the same minus the mean probability of the
    other goal cells (the belief's contrast: 0 for an uninformed decoder), and the prior's KL
    from N(0, I)."""
    from meta_rl.runs import Run

    cfg = V.VariBADConfig(**{**BELIEF_CI, **overrides})
    with Run.create(tmp_path / "belief", "varibad-gridnavi", cfg) as run:
        V.train(cfg, run)
    agent = meta_rl.load(tmp_path / "belief")
    env = agent.make_trial_env(200, 4)
    tasks = env.sample_tasks(200, np.random.default_rng(123))
    env.set_tasks(tasks)
    env.env.reset(seed=123)
    trials = rollout(env, agent.policy, torch.Generator().manual_seed(123))
    probs = V.cell_belief(agent.model, trials)  # [T + 1, N, 25]
    rows = torch.arange(200)
    goal = torch.as_tensor([int(t.goal) for t in tasks])
    hit = trials.rewards > 0
    reached = hit.any(0)
    after = probs[hit.float().argmax(0) + 1, rows]  # [N, 25] right after the first hit
    cells = torch.as_tensor([x * 5 + y for x, y in G.goal_cells(5)])
    others = (after[:, cells].sum(-1) - after[rows, goal]) / (len(cells) - 1)
    with torch.no_grad():
        mean, logvar = agent.policy.encode(trials.obs, trials.next_obs[-1])
    prior_kl = V._gauss_kl(mean[0, 0], logvar[0, 0], torch.zeros(5), torch.zeros(5))
    chain = V._gauss_kl(mean[1:], logvar[1:], mean[:-1], logvar[:-1]).sum(0).mean()
    return {
        "kl_chain": float(chain),
        "reached": float(reached.float().mean()),
        "p_goal_after_reaching": float(after[rows, goal][reached].mean()),
        "contrast": float((after[rows, goal] - others)[reached].mean()),
        "prior_kl_to_standard_normal": float(prior_kl),
    }


def check_belief(m: dict[str, float]) -> None:
    """What the test asserts: once the goal was reached the decoded probability at the true
    goal cell stands out from the other goal cells (the decoder loss's job; an untrained decoder
    gives every cell the same probability), and the belief moves only as far as the evidence
    asks: the KL chain along a held-out trial stays small and the prior near N(0, I) (the KL
    term's job). Measured (seed 0): full 0.252 contrast / 66 chain; without the decoder loss
    0.006 contrast; without the KL term 8,038 chain."""
    assert m["reached"] > 0.2, m
    assert m["contrast"] > 0.1, m
    assert m["kl_chain"] < 500.0, m
    assert m["prior_kl_to_standard_normal"] < 1.0, m


def test_belief_singles_out_the_goal_once_found_and_keeps_the_prior(tmp_path):
    check_belief(belief_metrics(tmp_path))
