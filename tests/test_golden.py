"""Same seed, same numbers: tiny runs of one preset per trainer, recorded before the redesign
(issue 13) and compared at 1e-5 after it. Every metric of every logged step and the final
metrics must match, except wall-clock columns.

Re-record only on purpose (a behaviour change an issue names), with:
    python -m tests.test_golden --record
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from meta_rl.presets import get_preset
from meta_rl.runs import Run, read_metrics

GOLDEN = Path(__file__).parent / "golden"
TIMING = {"time", "env_steps_per_s", "steps_per_second", "train/it_per_s", "train/seconds"}

_MAML = dict(
    device="cpu",
    iterations=2,
    meta_batch=3,
    episodes_per_task=2,
    hidden=(8, 8),
    eval_tasks=2,
    eval_episodes=2,
    eval_every=2,
    checkpoint_every=2,
    num_threads=1,
)
_RL2 = dict(
    device="cpu",
    iterations=2,
    tasks_per_iteration=8,
    hidden_size=8,
    eval_every=2,
    eval_tasks=8,
    checkpoint_every=2,
    log_every=1,
    num_threads=1,
)
_GRAD = dict(
    device="cpu",
    iterations=4,
    meta_batch_size=2,
    eval_tasks=4,
    eval_chunk=2,
    eval_inner_steps=2,
    log_every=2,
    checkpoint_every=4,
    baseline=False,
    num_threads=1,
)
_GLYPH = dict(device="cpu", num_threads=1, samples_per_class=4, image_size=16)
_EPISODIC = dict(
    **_GLYPH,
    iterations=2,
    eval_every=2,
    checkpoint_every=2,
    log_every=1,
    hidden=8,
    eval_episodes=4,
)

CASES: dict[str, tuple[str, dict]] = {
    "maml-trpo": ("maml-trpo-pointnav", _MAML),
    "fomaml-trpo": ("fomaml-trpo-pointnav", _MAML),
    "metasgd-trpo": ("metasgd-pointnav", _MAML),
    "maml-ppo": ("maml-ppo-pointnav", {**_MAML, "ppo_epochs": 2}),
    "maml-trpo-full-fisher": ("maml-trpo-pointnav", {**_MAML, "fisher": "full"}),
    "reptile": ("reptile-pointnav", {**_MAML, "inner_steps": 2}),
    "rl2-gru": ("rl2-bandits", {**_RL2, "episodes_per_trial": 3}),
    "rl2-memory": ("rl2-mann-bandits", {**_RL2, "episodes_per_trial": 3, "memory_slots": 4}),
    "rl2-episodic": (
        "rl2-memory-tabular",
        {**_RL2, "episodes_per_trial": 2, "memory_slots": 20, "minibatches": 2},
    ),
    "maml-sine": ("maml-sine", _GRAD),
    "metasgd-sine": ("metasgd-sine", _GRAD),
    "reptile-sine": ("reptile-sine", {**_GRAD, "reptile_steps": 2}),
    "anil-glyphs": (
        "anil-glyphs",
        {**_GRAD, **_GLYPH, "conv_hidden": 4, "k_shot": 1, "q_queries": 2, "eval_queries": 2},
    ),
    "protonet": ("protonet-glyphs", {**_EPISODIC, "train_way": 5, "q_queries": 2}),
    "siamese": ("siamese-glyphs", {**_EPISODIC, "n_way": 5, "q_queries": 2}),
    "mann": (
        "mann-glyphs",
        {
            **_EPISODIC,
            "length": 6,
            "batch_size": 2,
            "hidden": 8,
            "slots": 8,
            "width": 4,
            "heads": 1,
            "input_size": 8,
        },
    ),
    "oracle": (
        "oracle-pointnav",
        dict(
            device="cpu",
            iterations=4,
            eval_every=2,
            checkpoint_every=2,
            horizon=20,
            tasks_per_iteration=2,
            envs_per_task=2,
            eval_tasks=2,
        ),
    ),
}


def run_case(name: str, out: Path) -> dict:
    preset_name, values = CASES[name]
    preset = get_preset(preset_name)
    config = preset.make_config(values)
    trainer = preset.load_trainer()
    with Run.create(out, preset_name, config, show_progress=False) as run:
        final = run.finish(trainer(run.config, run) or {})
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(out)]
    final = {k: v for k, v in final.items() if k not in TIMING}
    return {"preset": preset_name, "values": values, "rows": rows, "final": final}


def _close(a: float, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_seed_same_numbers_as_recorded(name, tmp_path):
    want = json.loads((GOLDEN / f"{name}.json").read_text())
    got = json.loads(json.dumps(run_case(name, tmp_path / "run")))  # same float round trip
    assert [r["step"] for r in got["rows"]] == [r["step"] for r in want["rows"]]
    for r_got, r_want in zip(got["rows"], want["rows"], strict=True):
        for key, value in r_want.items():
            assert key in r_got, f"step {r_want['step']}: metric {key!r} disappeared"
            assert _close(r_got[key], value), (r_want["step"], key, r_got[key], value)
    for key, value in want["final"].items():
        assert key in got["final"], f"final metric {key!r} disappeared"
        if isinstance(value, float):
            assert _close(got["final"][key], value), (key, got["final"][key], value)


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    only = [a for a in sys.argv[1:] if a != "--record"] or sorted(CASES)
    for name in only:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_case(name, Path(tmp) / "run")
        (GOLDEN / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(name, len(result["rows"]), "rows,", len(result["final"]), "final metrics")
