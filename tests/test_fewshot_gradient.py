"""Sinusoid family and the gradient-based few-shot trainer (MAML, FOMAML, Meta-SGD, ANIL,
Reptile): sampling, the batched MLP path, learning relations at a small budget, determinism."""

import json
import math

import pytest
import torch
from torch.func import functional_call

from meta_rl.config import ConfigError
from meta_rl.core import batched_call, get_params, linear_chain
from meta_rl.fewshot.gradient import GradientFewShotConfig, train
from meta_rl.fewshot.models import MLP
from meta_rl.fewshot.sinusoid import SinusoidFamily


def test_sinusoid_family_samples_in_range_and_is_seeded():
    family = SinusoidFamily()
    b = family.sample(64, 10, 7, torch.Generator().manual_seed(0))
    assert b.xs.shape == (64, 10, 1) and b.xq.shape == (64, 7, 1) and b.amplitude.shape == (64,)
    assert 0.1 <= float(b.amplitude.min()) and float(b.amplitude.max()) <= 5.0
    assert 0.0 <= float(b.phase.min()) and float(b.phase.max()) <= math.pi
    assert -5.0 <= float(b.xs.min()) and float(b.xq.max()) <= 5.0
    torch.testing.assert_close(
        b.ys, b.amplitude[:, None, None] * torch.sin(b.xs - b.phase[:, None, None])
    )
    torch.testing.assert_close(family.curve(b, b.xq), b.yq)
    again = family.sample(64, 10, 7, torch.Generator().manual_seed(0))
    assert torch.equal(again.xs, b.xs) and torch.equal(again.yq, b.yq)
    other = family.sample(64, 10, 7, torch.Generator().manual_seed(1))
    assert not torch.equal(other.xs, b.xs)
    with pytest.raises(ValueError, match="k_shot"):
        family.sample(4, 0, 5, torch.Generator())
    with pytest.raises(ValueError, match="amplitude"):
        SinusoidFamily(amplitude=(5.0, 0.1))


def test_mlp_runs_as_a_batched_linear_chain():
    torch.manual_seed(0)
    model = MLP([1, 40, 40, 1]).double()
    assert linear_chain(model) is not None
    g = torch.Generator().manual_seed(1)
    params = {
        k: v.detach().expand(3, *v.shape)
        + 0.1 * torch.randn(3, *v.shape, generator=g, dtype=v.dtype)
        for k, v in get_params(model).items()
    }
    x = torch.randn(3, 10, 1, generator=g, dtype=torch.float64)
    out = batched_call(model, params, x)
    for t in range(3):
        ref = functional_call(model, {k: v[t] for k, v in params.items()}, (x[t],))
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-12)


def sine(algorithm: str, iterations: int, **kw) -> dict:
    torch.set_num_threads(1)
    settings = dict(
        algorithm=algorithm,
        task="sine",
        iterations=iterations,
        outer_lr=3e-3,
        log_every=10**6,
        checkpoint_every=0,
        eval_inner_steps=1,
        eval_tasks=100,
        baseline=False,
    )
    config = GradientFewShotConfig(**{**settings, **kw})
    return train(config)


def test_shipped_maml_sine_skips_the_baseline_which_logs_its_own_time(caplog):
    """maml-sine as shipped meta-trains only (the pretrained baseline would add about as long
    again); asked for, the baseline says how long it took, apart from the meta-training's time
    (issue 14)."""
    import logging

    from meta_rl.presets import get_preset

    assert get_preset("maml-sine").make_config().baseline is False
    with caplog.at_level(logging.INFO, logger="meta_rl"):
        out = sine("maml", 3, baseline=True, eval_tasks=4)
    assert out["baseline/seconds"] > 0 and "baseline/loss_step1" in out
    assert "pretrained baseline (baseline=true): training one network" in caplog.text
    assert f"pretrained baseline took {out['baseline/seconds']:.1f} s" in caplog.text


def test_maml_sinusoid_beats_half_the_pretrained_baseline():
    """10-shot MSE after ONE inner step on held-out tasks: MAML < 0.5 x pretrained baseline
    (the same net trained jointly on the same tasks, adapted with the same step)."""
    out = sine("maml", 1000, baseline=True)
    assert out["eval/loss_step1"] < 0.5 * out["baseline/loss_step1"], out
    assert out["eval/loss_step1"] < 0.5 * out["eval/loss_step0"], out  # adaptation itself helps


def test_metasgd_not_worse_than_maml_at_equal_budget():
    maml = sine("maml", 400)
    metasgd = sine("metasgd", 400)
    assert metasgd["eval/loss_step1"] <= maml["eval/loss_step1"], (metasgd, maml)
    assert metasgd["eval/loss_step1"] < 1.5  # random weights: about 3.5 after one step


@pytest.mark.parametrize(
    "algorithm,iterations,steps,bound",
    [("fomaml", 600, 1, 2.3), ("anil", 300, 5, 2.3), ("reptile", 300, 10, 1.2)],
)
def test_other_learners_adapt_on_held_out_sinusoids(algorithm, iterations, steps, bound):
    """Post-adaptation MSE on held-out tasks well below the unadapted level (about 3.6); the
    untrained network adapted with the same steps stays above 4 (measured 4.3 to 4.7)."""
    out = sine(algorithm, iterations, eval_inner_steps=steps)
    final = out[f"eval/loss_step{steps}"]
    assert final < bound and final < 0.7 * out["eval/loss_step0"], out


def test_training_is_deterministic():
    a = sine("metasgd", 30)
    b = sine("metasgd", 30)
    c = sine("metasgd", 30, seed=1)
    drop = {"train/seconds", "train/it_per_s"}
    assert {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }
    assert a["eval/loss_step1"] != c["eval/loss_step1"]


def test_config_errors_name_field_and_choices():
    with pytest.raises(ConfigError, match="algorithm"):
        GradientFewShotConfig(algorithm="maml2")
    with pytest.raises(ConfigError, match="inner_lr"):
        GradientFewShotConfig(inner_lr=-1.0)
    with pytest.raises(ConfigError, match="reptile_epsilon"):
        GradientFewShotConfig(reptile_epsilon=2.0)
    assert GradientFewShotConfig().step_size == 0.01
    assert GradientFewShotConfig(algorithm="reptile").step_size == 0.02
    assert GradientFewShotConfig(task="glyphs").step_size == 0.4


def test_train_writes_a_run_folder_and_resumes_exactly(tmp_path):
    from meta_rl.runs import Run

    settings = dict(
        algorithm="metasgd",
        checkpoint_every=3,
        log_every=2,
        eval_every=3,
        eval_tasks=10,
        baseline=False,
        eval_inner_steps=1,
    )
    config = GradientFewShotConfig(iterations=6, **settings)
    with Run.create(tmp_path / "full", "metasgd-sine", config) as run:
        final = run.finish(train(config, run))  # as the CLI does: the trainer returns, run writes
    assert json.loads((tmp_path / "full" / "final.json").read_text()) == pytest.approx(final)
    names = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("*.json"))
    assert names == ["step_00000003.json", "step_00000006.json"]
    # stop after 3 iterations, resume to 6: same params, optimizer, lrs and RNG -> same result
    short = GradientFewShotConfig(iterations=3, **settings)
    with Run.create(tmp_path / "cut", "metasgd-sine", short) as run:
        train(short, run)
    with Run.resume(tmp_path / "cut", ["iterations=6"]) as run:
        resumed = train(run.config, run)
    assert resumed["eval/loss_step1"] == final["eval/loss_step1"]
    assert resumed["eval/loss_step0"] == final["eval/loss_step0"]


def test_maml_glyphs_five_way_one_shot_on_held_out_scripts():
    """MAML reaches >= 60% 5-way 1-shot accuracy on held-out scripts (chance: 20%)."""
    torch.set_num_threads(1)
    config = GradientFewShotConfig(
        algorithm="maml",
        task="glyphs",
        n_way=5,
        k_shot=1,
        q_queries=5,
        meta_batch_size=8,
        conv_hidden=32,
        iterations=60,
        outer_lr=3e-3,
        inner_lr=0.4,
        eval_tasks=100,
        eval_inner_steps=1,
        log_every=10**6,
        checkpoint_every=0,
    )
    out = train(config)
    assert out["eval/acc_step0"] < 0.35, out
    assert out["eval/acc_step1"] >= 0.60, out
