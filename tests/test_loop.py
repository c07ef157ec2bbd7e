"""The training-loop skeleton (meta_rl/loop.py) as every trainer meets it: a non-finite loss or
parameter stops training with TrainingDiverged, nothing non-finite is saved, the newest
checkpoint is the last good one and the message says which (or that none was written)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from meta_rl import loop
from meta_rl.checkpoint import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint
from meta_rl.presets import get_preset
from meta_rl.runs import Run
from tests.test_golden import CASES

# a blow-up per trainer: a step size no training survives
BLOW_UP = {
    "maml-sine": {"outer_lr": 1e20},
    "reptile": {"inner_lr": 1e20},
    "rl2-gru": {"lr": 1e20},
    "rl2-memory": {"lr": 1e20},
    "protonet": {"lr": 1e20},
    "mann": {"lr": 1e37, "grad_clip": 0.0},
    "oracle": {"lr": 1e20},
}


@pytest.mark.parametrize("name", sorted(BLOW_UP))
def test_every_trainer_stops_on_non_finite_values_and_keeps_good_checkpoints(name, tmp_path):
    preset_name, values = CASES[name]
    values = {**values, **BLOW_UP[name], "iterations": 6, "checkpoint_every": 1}
    preset = get_preset(preset_name)
    config = preset.make_config(values)
    with Run.create(tmp_path / "run", preset_name, config) as run:
        with pytest.raises(loop.TrainingDiverged) as err:
            preset.load_trainer()(run.config, run)
    message = str(err.value)
    step = int(re.match(r"iteration (\d+):", message).group(1))
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in kept] == list(range(max(1, step - 3), step))[-3:]  # keep_checkpoints=3
    for _, path in kept:
        ck = load_checkpoint(path)
        assert all(bool(torch.isfinite(t).all()) for t in ck.tensors.values()), path
    if kept:
        assert f"the last good checkpoint (step {kept[-1][0]}) is kept" in message
    else:
        assert "no checkpoint had been written yet" in message and "kept" not in message
    assert "NaN/inf" in message and "Lower" in message


def test_guard_names_the_bad_value_and_no_run_says_nothing_was_saved():
    with pytest.raises(
        loop.TrainingDiverged,
        match=r"iteration 4: the loss became NaN/inf "
        r"\(loss=nan\); training stopped, nothing was saved",
    ):
        loop.guard(4, None, math.nan, [], "hint")
    with pytest.raises(loop.TrainingDiverged, match="parameters became NaN/inf"):
        loop.guard(1, None, {"a": 1.0}, [torch.tensor([1.0, math.inf])], "hint")
    loop.guard(1, None, {"a": 1.0}, [torch.zeros(3)], "hint")  # finite: no error


def _ck(tensors, state=None):
    return Checkpoint(step=3, tensors=tensors, state=state or {}, config=None, path=None)


def test_resume_check_names_missing_extra_and_misshaped_tensors():
    model = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    loop.check_checkpoint(_ck(dict(model), {"rng": 1}), model, ["rng"])
    with pytest.raises(CheckpointError, match=r"missing \['b'\]; extra \['x'\]"):
        loop.check_checkpoint(_ck({"w": model["w"], "x": model["b"]}), model)
    with pytest.raises(CheckpointError, match=r"extra \['x'\]"):  # MAML accepted extra tensors
        loop.check_checkpoint(_ck({**model, "x": model["b"]}), model)
    with pytest.raises(CheckpointError, match=r"'w' has shape \(3, 2\).*\(2, 3\)"):
        loop.check_checkpoint(_ck({**model, "w": torch.zeros(3, 2)}), model)
    with pytest.raises(CheckpointError, match=r"lacks the trainer state \['rng'\]"):
        loop.check_checkpoint(_ck(dict(model)), model, ["rng"])
