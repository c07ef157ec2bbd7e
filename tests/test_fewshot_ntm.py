"""The NTM's two supervised uses: the copy task trainer (data, cost, learning, resume, guard)
and the NTM memory inside the few-shot MANN learner (``memory="ntm"``, preset ntm-glyphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meta_rl import loop
from meta_rl.config import ConfigError
from meta_rl.core.memory import MemoryCore
from meta_rl.core.ntm import NTMCore
from meta_rl.fewshot.mann import MANN, MANNConfig
from meta_rl.fewshot.models import seeded
from meta_rl.fewshot.ntm_copy import CopyNTM, CopyTaskConfig, copy_batch, error_bits, evaluate
from meta_rl.fewshot.ntm_copy import train as train_copy
from meta_rl.presets import get_preset
from meta_rl.runs import Run


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# a copy task small enough for CI: 4-bit vectors, lengths 1-3, a small NTM, larger steps
TINY_COPY = dict(
    device="cpu",
    bits=4,
    min_length=1,
    max_length=3,
    hidden=32,
    slots=16,
    width=8,
    batch_size=32,
    lr=3e-3,
    iterations=120,
    eval_every=0,
    log_every=20,
    checkpoint_every=0,
    eval_per_length=20,
    eval_lengths=(6,),
    eval_long=20,
)


def test_copy_batch_layout():
    x, y = copy_batch(np.random.default_rng(0), batch=3, length=5, bits=8)
    assert x.shape == (6, 3, 9) and y.shape == (5, 3, 8)
    assert torch.equal(x[:5, :, :8], y) and torch.all(x[5, :, :8] == 0)
    assert torch.all(x[:5, :, 8] == 0) and torch.all(x[5, :, 8] == 1)  # the delimiter channel
    assert set(y.unique().tolist()) == {0.0, 1.0}
    again, _ = copy_batch(np.random.default_rng(0), batch=3, length=5, bits=8)
    assert torch.equal(x, again)


def test_error_bits_threshold_outputs_and_sum_per_sequence():
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]])  # [T=2, B=2, 2]
    logits = torch.tensor([[[2.0, -1.0], [0.0, -3.0]], [[1.0, 1.0], [-1.0, 0.5]]])
    # sequence 0: step 0 right, step 1 both bits wrong -> 2; sequence 1: logit 0 is a 1 (right),
    # -3 is a 0 (wrong), then right, right -> 1
    assert error_bits(logits, targets).tolist() == [2.0, 1.0]


def test_copy_model_shapes_and_errors():
    with seeded(0):
        model = CopyNTM(bits=4, hidden=8, slots=6, width=3)
    x, _ = copy_batch(np.random.default_rng(0), 2, 3, 4)
    assert model(x).shape == (3, 2, 4)
    with pytest.raises(ValueError, match="bits \\+ 1 = 5"):
        model(torch.zeros(4, 2, 4))
    with pytest.raises(ConfigError, match="min_length = 5 must be <= max_length = 3"):
        CopyTaskConfig(min_length=5, max_length=3)


def test_copy_task_cost_falls_well_below_the_untrained_models():
    config = CopyTaskConfig(seed=0, **TINY_COPY)
    with seeded(config.seed):  # the trainer's initial model (same seed)
        untrained = CopyNTM(config.bits, config.hidden, config.slots, config.width)
    lengths = range(config.min_length, config.max_length + 1)
    before = evaluate(untrained, np.random.default_rng([0, 2]), lengths, config.eval_per_length)
    final = train_copy(config, None)
    # here 4.0 -> 1.35 error bits per sequence (lengths 1-3 of 4 bits: 8 bits on average)
    assert final["test_cost"] < 0.5 * before["cost"], (before, final)
    assert final["test_bce"] < before["bce"]
    assert np.isfinite(final["test_cost_6"]) and final["test_cost_ci95"] > 0


def test_copy_trainer_resumes_and_repeats(tmp_path):
    values = {**TINY_COPY, "iterations": 4, "checkpoint_every": 2, "log_every": 1, "eval_every": 2}
    values.update(eval_per_length=2, eval_long=2, batch_size=2)
    config = CopyTaskConfig(**values)
    with Run.create(tmp_path / "a", "ntm-copy", config) as run:
        first = train_copy(config, run)
    assert train_copy(config, None) == first  # same seed, same numbers
    with Run.resume(tmp_path / "a", ["iterations=6"]) as run:
        assert run.start_step == 4
        resumed = train_copy(run.config, run)
    straight = train_copy(CopyTaskConfig(**{**values, "iterations": 6}), None)
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-5)
    assert resumed["test_cost"] == straight["test_cost"]
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "cost", "cost_avg", "test_cost", "test_cost_ci95", "test_cost_6"} <= set(header)


def test_copy_trainer_resumes_its_learning_rate_decay(tmp_path):
    values = {**TINY_COPY, "iterations": 4, "checkpoint_every": 2, "log_every": 1}
    values.update(eval_per_length=2, eval_long=2, batch_size=2, lr_final_fraction=0.25)
    config = CopyTaskConfig(**values)
    with Run.create(tmp_path / "a", "ntm-copy", config) as run:
        straight = train_copy(config, run)
    for f in (tmp_path / "a" / "checkpoints").glob("step_00000004*"):
        f.unlink()  # as if killed after the checkpoint of step 2
    with Run.resume(tmp_path / "a") as run:
        assert run.start_step == 2
        resumed = train_copy(run.config, run)
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-6)
    constant = train_copy(CopyTaskConfig(**{**values, "lr_final_fraction": 1.0}), None)
    assert constant["loss"] != pytest.approx(straight["loss"], rel=1e-6)  # the decay acts


def test_copy_trainer_stops_on_a_blow_up():
    config = CopyTaskConfig(**{**TINY_COPY, "lr": 1e30, "grad_clip": 0.0, "iterations": 6})
    with pytest.raises(loop.TrainingDiverged, match="NaN/inf.*Lower lr"):
        train_copy(config, None)


def test_presets_build():
    copy = get_preset("ntm-copy").make_config()
    assert (copy.hidden, copy.slots, copy.width, copy.lr, copy.batch_size) == (
        100,
        128,
        20,
        1e-4,
        1,
    )
    assert (copy.min_length, copy.max_length, copy.bits) == (1, 20, 8)
    glyphs = get_preset("ntm-glyphs").make_config()
    assert glyphs.memory == "ntm"


# -- the NTM memory inside the few-shot MANN learner ----------------------------------------


def test_mann_takes_either_memory():
    x, y = torch.randn(3, 7, 10), torch.randint(0, 5, (3, 7))
    with seeded(0):
        lrua = MANN(10, 5, hidden=16, slots=8, width=4, heads=2)
        ntm = MANN(10, 5, hidden=16, slots=8, width=4, heads=2, memory="ntm")
    assert isinstance(lrua.core, MemoryCore) and isinstance(ntm.core, NTMCore)
    assert (ntm.core.read_heads, ntm.core.write_heads) == (2, 1)
    out = ntm(x, y)
    assert out.shape == (3, 7, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in ntm.parameters())
    with pytest.raises(ValueError, match="memory='dnc'"):
        MANN(10, 5, memory="dnc")


def test_lrua_only_fields_are_errors_with_the_ntm_memory():
    MANNConfig(memory="ntm", heads=200, slots=8)  # NTM read heads are not bounded by the slots
    with pytest.raises(ConfigError, match="init_strength = 2.0 applies to memory 'lrua' only"):
        MANNConfig(memory="ntm", init_strength=2.0)
    with pytest.raises(ConfigError, match="heads = 9 must be <= slots = 8"):
        MANNConfig(heads=9, slots=8)


def test_ntm_glyphs_trains_and_reports_accuracy_by_instance(tmp_path):
    """The preset's trainer end to end on a tiny glyph set (two scripts, rendered here)."""
    from meta_rl.fewshot.glyphs import load_glyphs
    from meta_rl.fewshot.mann import train

    root = tmp_path / "glyphs"
    scripts = ["Armenian", "Hebrew", "Tifinagh", "Lao", "Ogham"]
    load_glyphs(root=root, image_size=20, samples_per_class=8, scripts=scripts)
    config = get_preset("ntm-glyphs").make_config(
        {
            "data_root": str(root),
            "scripts": scripts,
            "image_size": 20,
            "samples_per_class": 8,
            "device": "cpu",
            "length": 10,
            "batch_size": 4,
            "hidden": 16,
            "slots": 12,
            "width": 8,
            "heads": 2,
            "iterations": 2,
            "log_every": 1,
            "eval_episodes": 4,
        }
    )
    with Run.create(tmp_path / "run", "ntm-glyphs", config) as run:
        final = train(config, run)
    for key in ("loss", "test_accuracy", "test_instance_1", "test_instance_2"):
        assert key in final and np.isfinite(final[key]), key
