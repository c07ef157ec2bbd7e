"""MAML-TRPO / FOMAML / Meta-SGD / MAML-PPO and Reptile on task families."""

import math

import pytest
import torch
from meta_rl_envs import make_env
from torch.func import functional_call

from meta_rl.checkpoint import list_checkpoints
from meta_rl.config import ConfigError
from meta_rl.core import expand_params
from meta_rl.policies import distributions as D
from meta_rl.policies import make_mlp_policy
from meta_rl.presets import get_preset
from meta_rl.rl import reptile
from meta_rl.rl.maml import (
    MAMLConfig,
    MetaLearner,
    OuterProblem,
    TaskData,
    TrainingDiverged,
    outer_objective,
    train,
)
from meta_rl.rl.maml_fast import PiecewiseFisher, SupportCurvature, WrittenOut
from meta_rl.rl.rollout import compute_advantages, sample_episodes
from meta_rl.rl.trpo import (
    KLObjective,
    _conjugate_gradient,
    conjugate_gradient,
    gauss_newton_fvp,
    hessian_fvp,
    trpo_step,
)
from meta_rl.runs import Run

TINY = {
    "device": "cpu",
    "meta_batch": 3,
    "episodes_per_task": 4,
    "horizon": 15,
    "hidden": (8,),
    "eval_tasks": 2,
    "eval_episodes": 2,
    "eval_every": 0,
    "iterations": 2,
}
TIMING = {"steps_per_second"}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine is shared, and small batches do not gain from more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# the batched meta-objective equals the usual per-task loop
# --------------------------------------------------------------------------------------------
def _problem(algorithm, env_id="MetaRL/PointNav-v0"):
    cfg = MAMLConfig(**{**TINY, "algorithm": algorithm, "fisher": "full", "fisher_subsample": 1})
    env = make_env(env_id, 3, 4, horizon=15)
    env.set_tasks(env.sample_tasks(3, 0))
    policy = make_mlp_policy(
        env.single_observation_space,
        env.single_action_space,
        hidden=(8,),
        generator=torch.Generator().manual_seed(0),
    )
    learner = MetaLearner(policy, cfg)
    gen = torch.Generator().manual_seed(1)

    def data(params, seed):
        ep = sample_episodes(env, policy, params, gen, seed=seed)
        return TaskData.from_episodes(ep, compute_advantages(ep))

    theta, lr = learner.detached()
    support = data(expand_params(theta, 3), 0)
    adapted = learner.adapt(learner.theta, learner.lr, [support], 3, first_order=True)
    adapted = {k: v.detach() for k, v in adapted.items()}
    query = data(adapted, 1)
    return learner, OuterProblem(learner, [support], query, adapted), support, query


def _loop_objective(learner, support, query, first_order):
    """Task by task: functional_call on [M, obs], autograd.grad inner step."""
    policy, space = learner.policy, learner.policy.action_space
    theta, lr = learner.theta, learner.lr
    losses, kls = [], []
    for t in range(query.obs.shape[0]):

        def logp(params, d, t=t):
            out = functional_call(policy, params, (d.obs[t],))
            return out.log_prob(d.actions[t])

        ratio = torch.exp(logp(theta, support) - support.logp[t])
        inner = -(ratio * support.advantages[t] * support.mask[t]).sum() / support.mask[t].sum()
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=not first_order)
        step = lr if isinstance(lr, dict) else dict.fromkeys(theta, lr)
        adapted = {k: v - step[k] * g for (k, v), g in zip(theta.items(), grads, strict=True)}
        m = query.mask[t]
        ratio = torch.exp(logp(adapted, query) - query.logp[t])
        losses.append(-(ratio * query.advantages[t] * m).sum() / m.sum())
        head, log_std = policy.head(adapted, query.obs[t])
        old = policy.head({k: v.detach() for k, v in adapted.items()}, query.obs[t])
        kls.append((D.kl(space, old[0], old[1], head, log_std) * m).sum() / m.sum())
    return torch.stack(losses).mean(), torch.stack(kls).mean()


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd"])
def test_batched_meta_gradient_equals_a_per_task_loop(algorithm):
    learner, problem, support, query = _problem(algorithm)
    outer = learner.outer_params()
    leaves = learner.leaves()
    assert leaves == list(outer.values())  # checkpoint names, in the order of the leaves
    objective = outer_objective(learner)(problem)  # the one training uses
    model = objective.local_model()
    loss, flat_grad = model.loss, model.grad
    sizes = [v.numel() for v in leaves]
    ours = [g.view_as(v) for g, v in zip(flat_grad.split(sizes), leaves, strict=True)]
    ref_loss, ref_kl = _loop_objective(learner, support, query, algorithm == "fomaml")
    ref = torch.autograd.grad(ref_loss, leaves)
    torch.testing.assert_close(loss, ref_loss.detach(), atol=1e-5, rtol=1e-4)
    # the default form: Meta-SGD the plain objective (J^T M J in Gauss-Newton factors), a
    # scalar lr the written-out one (J^T M J as a product)
    assert type(objective) is (OuterProblem if algorithm == "metasgd" else WrittenOut)
    # at the sampling params: zero up to float32 rounding
    assert objective.loss_and_kl()[1].item() < 1e-6 and ref_kl.item() < 1e-8
    for name, a, b in zip(outer, ours, ref, strict=True):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3, msg=name)
    if algorithm == "maml":  # the second-order terms are really there
        fo_learner, fo_problem, _, _ = _problem("fomaml")
        fo = outer_objective(fo_learner)(fo_problem).local_model().grad
        assert not torch.allclose(fo, flat_grad, atol=1e-6)


def _problem64(algorithm, env_id="MetaRL/PointNav-v0", **overrides):
    """``_problem``'s episodes, with the policy, step sizes and data in float64."""
    learner, _, support, query = _problem(algorithm, env_id)
    cfg = MAMLConfig(**{**TINY, "algorithm": algorithm, "fisher": "full", **overrides})
    policy = learner.policy.double()
    learner = MetaLearner(policy, cfg)

    def cast(d):
        return TaskData(*(x.double() for x in (d.obs, d.actions, d.logp, d.advantages, d.mask)))

    support, query = cast(support), cast(query)
    adapted = learner.adapt(learner.theta, learner.lr, [support], 3, first_order=True)
    adapted = {k: v.detach() for k, v in adapted.items()}
    return learner, OuterProblem(learner, [support], query, adapted)


@pytest.mark.parametrize(
    ("algorithm", "overrides"),
    [
        ("maml", {"fisher_subsample": 1, "fisher_tasks": 0}),
        ("maml", {"fisher_subsample": 2, "fisher_tasks": 2}),
        ("maml", {"fisher": "first_order"}),
        ("fomaml", {"fisher_subsample": 2}),
        ("metasgd", {"fisher_subsample": 3}),
        ("maml", {"env_id": "MetaRL/CartPole-v0", "fisher_subsample": 2}),  # categorical
    ],
)
def test_gauss_newton_fisher_product_equals_the_double_backward_one(algorithm, overrides):
    """J^T M J v equals the KL's Hessian-vector product (through the inner update) at the
    sampling params: the Gauss-Newton form is the same matrix, not an approximation."""
    learner, problem = _problem64(algorithm, **overrides)
    leaves = learner.leaves()
    n = sum(v.numel() for v in leaves)
    assert problem.fisher_kl().item() < 1e-12  # the KL's minimum
    old = hessian_fvp(problem.fisher_kl(), leaves)
    new = gauss_newton_fvp(*problem.fisher_gauss_newton(), leaves)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        ref = old(v)
        assert ref.norm() > 1e-6
        torch.testing.assert_close(new(v), ref, atol=1e-10, rtol=1e-8)
    # and through the objective trpo_step gets: the plain one in Gauss-Newton factors, the
    # drop-ins as a product (scalar inner lr: two support Hessian-vector products per inner
    # step, by autograd or written out)
    objectives = [problem] if algorithm == "metasgd" else [problem, PiecewiseFisher(problem)]
    if algorithm != "metasgd" and learner.policy.continuous:
        objectives.append(WrittenOut(problem))
    for objective in objectives:
        fvp = objective.local_model().fvp
        torch.testing.assert_close(fvp(v), ref, atol=1e-10, rtol=1e-8, msg=type(objective))
    learner.config.fisher_product = "hessian"  # the double-backward form, the plain objective
    assert outer_objective(learner)(problem) is problem
    torch.testing.assert_close(problem.local_model().fvp(v), ref, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_support_curvature_equals_autograd(activation):
    """The written-out inner-loss gradient and Hessian-vector products of a two-hidden-layer
    Gaussian MLP equal autograd's (float64, per task, with masked rows)."""
    env = make_env("MetaRL/PointNav-v0", 3, 4, horizon=15)
    env.set_tasks(env.sample_tasks(3, 0))
    policy = make_mlp_policy(
        env.single_observation_space,
        env.single_action_space,
        hidden=(8, 6),
        activation=activation,
        generator=torch.Generator().manual_seed(0),
    ).double()
    assert SupportCurvature.applies(policy)
    learner = MetaLearner(policy, MAMLConfig(**TINY))
    gen = torch.Generator().manual_seed(1)
    params = {
        k: v.detach().expand(3, *v.shape) + 0.3 * torch.randn(3, *v.shape, generator=gen).double()
        for k, v in learner.theta.items()
    }
    ep = sample_episodes(env, policy, {k: v.float() for k, v in params.items()}, gen, seed=0)
    data = TaskData.from_episodes(ep, compute_advantages(ep))
    data = TaskData(
        *(x.double() for x in (data.obs, data.actions, data.logp, data.advantages)),
        data.mask.double(),
    )
    data.mask[:, -5:] = 0.0  # some padded rows
    curvature = SupportCurvature(policy, params, data)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = learner.inner_loss(leaves, data).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    torch.testing.assert_close(curvature.loss, loss.detach(), atol=1e-12, rtol=1e-10)
    for name, a, b in zip(leaves, curvature.grads.values(), grads, strict=True):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-10, msg=name)
    xs = [torch.randn(v.shape, generator=gen).double() for v in leaves.values()]
    ref = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=xs)
    for name, a, b in zip(leaves, curvature.hvp(xs), ref, strict=True):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=name)
    sub = curvature.tasks(slice(1, 3))  # a subset of tasks: views of the same numbers
    for a, b in zip(sub.hvp([x[1:3] for x in xs]), ref, strict=True):
        torch.testing.assert_close(a, b[1:3], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(
    ("algorithm", "overrides"),
    [
        ("maml", {"fisher_subsample": 1, "fisher_tasks": 0}),
        ("maml", {"fisher_subsample": 2, "fisher_tasks": 2}),
        ("maml", {"fisher": "first_order"}),
        ("fomaml", {}),
    ],
)
def test_written_out_trpo_objective_equals_the_autograd_one(algorithm, overrides):
    """For a Gaussian MLP with a scalar inner lr the second-order TRPO objective (loss,
    meta-gradient, Fisher products) is computed by SupportCurvature (maml_fast.WrittenOut,
    what training picks): the same numbers as autograd through the inner update
    (maml_fast.PiecewiseFisher; float64), at and away from the sampling params."""
    learner, problem = _problem64(algorithm, **overrides)
    assert outer_objective(learner) is WrittenOut
    leaves = learner.leaves()
    v = torch.randn(sum(x.numel() for x in leaves), generator=torch.Generator().manual_seed(5))
    v = v.double()

    def both():
        out = []
        for objective in (WrittenOut(problem), PiecewiseFisher(problem)):
            model = objective.local_model()
            value, kl = objective.loss_and_kl()
            out.append((model.loss, model.grad, model.fvp(v), value, kl))
        return out

    for _ in range(2):  # at the sampling params, then after a perturbation
        ours, ref = both()
        assert ref[1].norm() > 1e-6 and ref[2].norm() > 1e-6
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)
        with torch.no_grad():
            for x in leaves:
                x.add_(0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6)))
    assert ref[4] > 1e-6  # away from the sampling params: a real KL


def test_fisher_product_through_two_inner_steps_equals_the_double_backward_one():
    """Two inner steps: F v = A_1 A_2 J_q^T M J_q A_2 A_1 v, the KL's Hessian (float64)."""
    learner, problem = _problem64("maml", fisher_subsample=2, fisher_tasks=2)
    supports = [problem.supports[0], problem.supports[0]]  # two steps (on the same episodes)
    sampled = learner.adapt(learner.theta, learner.lr, supports, 3, first_order=True)
    problem = OuterProblem(
        learner, supports, problem.query, {k: v.detach() for k, v in sampled.items()}
    )
    leaves = learner.leaves()
    assert problem.fisher_kl().item() < 1e-12
    old = hessian_fvp(problem.fisher_kl(), leaves)
    new = PiecewiseFisher(problem).local_model().fvp
    one_step = PiecewiseFisher(_problem64("maml", fisher_subsample=2, fisher_tasks=2)[1])
    one_step = one_step.local_model().fvp
    v = torch.randn(sum(x.numel() for x in leaves), generator=torch.Generator().manual_seed(4))
    v = v.double()
    ref = old(v)
    torch.testing.assert_close(new(v), ref, atol=1e-10, rtol=1e-8)
    assert not torch.allclose(one_step(v), ref, atol=1e-6)  # the second step counts
    # the written-out objective through both steps: loss, meta-gradient and Fisher products
    assert outer_objective(learner) is WrittenOut
    model = WrittenOut(problem).local_model()
    learner.config.fisher_product = "hessian"  # the plain objective, double backward metric
    plain = problem.local_model()
    torch.testing.assert_close(model.loss, plain.loss, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(model.grad, plain.grad, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(model.fvp(v), ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(plain.fvp(v), ref, atol=1e-10, rtol=1e-8)


# --------------------------------------------------------------------------------------------
# TRPO pieces
# --------------------------------------------------------------------------------------------
def test_conjugate_gradient_solves_spd_systems():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    spd = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: spd @ v, b, iters=20)
    torch.testing.assert_close(spd @ x, b)
    # the residual the recursion keeps is b - A x, so trpo_step gets x^T A x without a product
    x, r = _conjugate_gradient(lambda v: spd @ v, b, 4, 1e-30)  # stopped early: r is not ~0
    assert r.norm() > 1e-3
    torch.testing.assert_close(r, b - spd @ x, atol=1e-12, rtol=1e-10)


def test_trpo_step_improves_within_the_trust_region():
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(200, 2, generator=g)
    adv = actions[:, 0] - actions[:, 1]  # favours moving the mean to (+, -)
    params = {"mean": torch.zeros(2, requires_grad=True)}
    log_std = torch.zeros(2)
    old_logp = D.log_prob(D_BOX, torch.zeros(2), log_std, actions)

    def objective(second_order):
        logp = D.log_prob(D_BOX, params["mean"].expand(200, 2), log_std, actions)
        loss = -(torch.exp(logp - old_logp) * adv).mean()
        kl = D.kl(D_BOX, torch.zeros(2), log_std, params["mean"], log_std)
        return loss, kl

    leaves = list(params.values())
    info = trpo_step(leaves, KLObjective(objective, leaves), max_kl=0.01)
    assert info.step_fraction > 0 and info.loss_after < info.loss_before
    assert 0 < info.kl <= 0.01
    m = params["mean"].detach()
    assert m[0] > 0 and m[1] < 0
    # the KL lands near the boundary: the full step is scaled to it
    assert info.kl > 0.5 * 0.01


D_BOX = __import__("gymnasium").spaces.Box(-1.0, 1.0, (2,))


# --------------------------------------------------------------------------------------------
# training: determinism, variants, divergence, vector-env families
# --------------------------------------------------------------------------------------------
def _strip(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_same_seed_same_numbers():
    a = train(MAMLConfig(**TINY))
    b = train(MAMLConfig(**TINY))
    c = train(MAMLConfig(**{**TINY, "seed": 1}))
    assert _strip(a) == _strip(b)
    assert _strip(a) != _strip(c)
    assert all(math.isfinite(v) for v in a.values())


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "fomaml"},
        {"algorithm": "metasgd"},
        {"outer": "ppo", "ppo_epochs": 2},
        {"algorithm": "metasgd", "outer": "ppo", "ppo_epochs": 2},
        {"inner_steps": 2, "eval_inner_steps": 2},
    ],
    ids=["fomaml", "metasgd", "ppo", "metasgd-ppo", "two-inner-steps"],
)
def test_variants_train(overrides):
    m = train(MAMLConfig(**{**TINY, **overrides}))
    assert all(math.isfinite(v) for v in m.values())
    steps = overrides.get("eval_inner_steps", 1)
    assert f"eval_return_{steps}" in m
    if overrides.get("algorithm") == "metasgd":
        assert m["inner_lr_mean"] != pytest.approx(0.1, abs=1e-9)  # the step sizes learn


def test_families_without_a_batched_env_train_through_a_vector_env():
    cfg = {**TINY, "env_id": "MetaRL/Pendulum-v0", "horizon": 10, "meta_batch": 2}
    m = train(MAMLConfig(**cfg))
    assert m["env_steps"] == 2 * 2 * 4 * 10  # support + query, 2 tasks x 4 episodes x 10 steps
    m = train(MAMLConfig(**{**TINY, "env_id": "MetaRL/CartPole-v0", "env_backend": "vector"}))
    assert math.isfinite(m["loss"])


def test_exploding_kl_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = MAMLConfig(**{**TINY, "outer": "ppo", "checkpoint_every": 1})
    run = Run.create(tmp_path / "run", "maml-ppo-pointnav", cfg)
    with run:
        train(cfg, run)
        good = run.load_last()
        assert good.step == 2
        bad = MAMLConfig(**{**TINY, "outer": "ppo", "iterations": 4, "abort_kl": 1e-12})
        with pytest.raises(TrainingDiverged, match=r"iteration 3: the KL exploded .*kl=.*abort_kl"):
            train(bad, run)
        assert [s for s, _ in list_checkpoints(run.checkpoint_dir)][-1] == 2
        assert all(torch.equal(good.tensors[k], v) for k, v in run.load_last().tensors.items())


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    cfg = MAMLConfig(**{**TINY, "iterations": 3, "checkpoint_every": 1})
    straight = train(cfg)
    run = Run.create(tmp_path / "r", "maml-trpo-pointnav", cfg)
    with run:
        train(MAMLConfig(**{**TINY, "iterations": 2, "checkpoint_every": 1}), run)
    again = Run.resume(tmp_path / "r", {"iterations": 3})
    with again:
        resumed = train(again.config, again)
    assert _strip(resumed) == _strip(straight)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="algorithm"):
        MAMLConfig(algorithm="anil")
    with pytest.raises(ConfigError, match="outer"):
        MAMLConfig(outer="sgd")
    with pytest.raises(ConfigError, match="max_kl"):
        MAMLConfig(max_kl=0.0)


def test_presets_build():
    for name in [
        "maml-trpo-pointnav",
        "fomaml-trpo-pointnav",
        "maml-ppo-pointnav",
        "metasgd-pointnav",
        "maml-trpo-cartpole",
        "reptile-pointnav",
    ]:
        preset = get_preset(name)
        config = preset.make_config(overrides=["iterations=1"])
        assert callable(preset.train) and preset.data_parallel and config.iterations == 1
    assert get_preset("maml-trpo-cartpole").make_config().eval_split == "ood"


def test_reptile_runs_and_is_deterministic():
    cfg = {k: v for k, v in TINY.items()}
    a = reptile.train(reptile.ReptileConfig(**cfg, inner_steps=2))
    b = reptile.train(reptile.ReptileConfig(**cfg, inner_steps=2))
    assert _strip(a) == _strip(b) and a["direction_norm"] > 0


# --------------------------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------------------------
def test_maml_trpo_pointnav_one_step_gain():
    """CI size: after a short meta-training, one inner step on test-split goals clearly beats
    no adaptation, and beats the one-step return of the meta-untrained policy."""
    cfg = {
        "device": "cpu",
        "meta_batch": 10,
        "episodes_per_task": 10,
        "hidden": (32, 32),
        "iterations": 12,
        "eval_tasks": 10,
        "eval_episodes": 10,
        "eval_every": 0,
    }
    untrained = train(MAMLConfig(**{**cfg, "iterations": 1, "max_kl": 1e-9}))
    trained = train(MAMLConfig(**cfg))
    assert trained["eval_return_1"] > trained["eval_return_0"] + 5.0
    assert trained["eval_return_1"] > untrained["eval_return_1"] + 10.0
    assert trained["eval_return_1"] > -35.0  # never moving scores -38.3; random walks ~ -90


@pytest.mark.slow
def test_maml_trpo_pointnav_reaches_the_paper_band():
    """The maml-trpo-pointnav preset, halfway (seed 0, test split: -41.4 -> -17.4 at step 25)."""
    cfg = get_preset("maml-trpo-pointnav").make_config(overrides=["iterations=25", "device=cpu"])
    m = train(cfg)
    assert m["eval_return_1"] > m["eval_return_0"] + 10.0
    assert m["eval_return_1"] > -22.0


@pytest.mark.slow
def test_cartpole_adaptation_improves_on_the_ood_split():
    """Pole lengths outside the training range: one inner step beats no adaptation (halfway
    through the preset, seed 0: 331.8 -> 382.5 of 500)."""
    cfg = get_preset("maml-trpo-cartpole").make_config(overrides=["iterations=10", "device=cpu"])
    m = train(cfg)
    assert m["eval_return_1"] > m["eval_return_0"] + 10.0
    assert m["eval_return_0"] > 100.0  # meta-training itself works: random play scores ~22


@pytest.mark.slow
def test_reptile_pointnav_preset_one_step_gain():
    """The reptile-pointnav preset (seed 0, test split: -42.1 -> -26.0 after one step)."""
    cfg = get_preset("reptile-pointnav").make_config(overrides=["device=cpu"])
    m = reptile.train(cfg)
    assert m["eval_return_1"] > m["eval_return_0"] + 8.0
    assert m["eval_return_1"] > -32.0
