"""The run folder: metrics with growing columns, refusal to overwrite, resume without lost or
duplicated iterations, and a killed real trainer that resumes to the same numbers."""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import replace

import pytest
import torch

from meta_rl.checkpoint import CheckpointError
from meta_rl.config import ConfigError
from meta_rl.presets import PresetError, get_preset
from meta_rl.rl.oracle import OracleNavConfig, train_oracle_pointnav
from meta_rl.runs import Run, RunError, load_config, read_metrics, read_run

SMALL = dict(
    device="cpu",
    iterations=12,
    checkpoint_every=4,
    eval_every=4,
    horizon=30,
    tasks_per_iteration=4,
    envs_per_task=2,
    eval_tasks=4,
)


def test_create_log_growing_columns_and_describe(tmp_path):
    config = OracleNavConfig(**SMALL)
    trainer = get_preset("oracle-pointnav").trainer
    with Run.create(tmp_path / "run", "oracle-pointnav", config, trainer=trainer) as run:
        run.log(1, {"loss": 1.0})
        run.log(2, {"loss": torch.tensor(0.5), "eval_return": -3.0})  # a new column appears
        run.log(3, {"loss": 0.25})
        with pytest.raises(RunError, match="metric 'loss'.*shape"):
            run.log(4, {"loss": torch.ones(2)})
        with pytest.raises(RunError, match="'step' is reserved"):
            run.log(4, {"step": 1})
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [1.0, 0.5, 0.25]
    assert math.isnan(rows[0]["eval_return"]) and rows[1]["eval_return"] == -3.0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,time,loss,eval_return"

    info = read_run(tmp_path / "run")
    assert info["preset"] == "oracle-pointnav"
    assert info["trainer"] == "meta_rl.rl.oracle:train_oracle_pointnav"
    assert info["config_class"] == "meta_rl.rl.oracle:OracleNavConfig"
    assert load_config(tmp_path / "run") == config  # config.json rebuilds the config
    assert "step 2: loss=0.5 eval_return=-3" in (tmp_path / "run" / "log.txt").read_text()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_when_asked_and_on_a_terminal(tmp_path, monkeypatch):
    config = OracleNavConfig(**SMALL)
    with Run.create(tmp_path / "quiet", "oracle-pointnav", config) as run:
        assert run.progress(10).disable  # the library default: no bar
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Run.create(tmp_path / "bar", "oracle-pointnav", config, show_progress=True) as run:
        bar = run.progress(10, key="loss")
        assert not bar.disable
        run.log(3, {"return": -5.0, "loss": 0.125})
        assert bar.n == 3
    assert "3/10" in terminal.getvalue() and "loss=0.125" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar even if asked
    with Run.create(tmp_path / "pipe", "oracle-pointnav", config, show_progress=True) as run:
        assert run.progress(10).disable


def test_refuses_to_overwrite_a_run(tmp_path):
    config = OracleNavConfig(**SMALL)
    Run.create(tmp_path / "run", "oracle-pointnav", config).close()
    with pytest.raises(RunError, match="different config \\(differs in: seed\\).*--resume"):
        Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**{**SMALL, "seed": 1}))
    with pytest.raises(RunError, match="already holds a run of this config; pass --resume"):
        Run.create(tmp_path / "run", "oracle-pointnav", config)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty and holds no run"):
        Run.create(tmp_path / "other", "oracle-pointnav", config)
    with pytest.raises(RunError, match="no config.json"):
        Run.resume(tmp_path / "other")


def test_resume_truncates_metrics_after_checkpoint(tmp_path):
    config = OracleNavConfig(**SMALL)
    with Run.create(tmp_path / "run", "oracle-pointnav", config) as run:
        for step in range(1, 8):
            run.log(step, {"x": float(step)})
            if step == 4:
                run.save(step, {"w": torch.full((2,), 4.0)}, {"note": "at four"})
    # "killed" after logging step 7: steps 5..7 were not checkpointed.
    with Run.resume(tmp_path / "run") as run:
        assert run.start_step == 4
        ck = run.load_last()
        assert ck.step == 4 and ck.state["note"] == "at four" and ck.tensors["w"][0] == 4.0
        assert [r["step"] for r in read_metrics(run.path)] == [1, 2, 3, 4]
        for step in range(5, 9):
            run.log(step, {"x": float(step) * 10})
    assert [r["x"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 50, 60, 70, 80]
    # TensorBoard drops the events logged after the checkpoint too.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 50.0),
        (6, 60.0),
        (7, 70.0),
        (8, 80.0),
    ]


def test_resume_with_a_corrupt_checkpoint_names_it(tmp_path):
    with Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**SMALL)) as run:
        run.save(1, {"w": torch.ones(2)})
        newest = run.save(2, {"w": torch.ones(2)})
    newest.write_text("{")
    with pytest.raises(CheckpointError, match="step_00000002.json.*delete step_00000002.json"):
        Run.resume(tmp_path / "run")
    newest.unlink()
    with Run.resume(tmp_path / "run") as run:
        assert run.start_step == 1


def test_resume_allows_only_schedule_changes(tmp_path):
    Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**SMALL)).close()
    with pytest.raises(RunError, match="cannot change lr \\(0.03 -> 0.1\\)"):
        Run.resume(tmp_path / "run", ["lr=0.1"])
    with pytest.raises(RunError, match="preset 'oracle-pointnav', not 'maml-sine'"):
        Run.resume(tmp_path / "run", preset="maml-sine")
    with pytest.raises(ConfigError, match="iterations = 0 is out of range"):
        Run.resume(tmp_path / "run", ["iterations=0"])
    with Run.resume(tmp_path / "run", ["iterations=20"]) as run:
        assert run.config.iterations == 20 and run.start_step == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["iterations"] == 20


def test_preset_table_holds_trainers_and_errors_are_clear():
    with pytest.raises(PresetError, match="unknown preset 'mam-sine'; did you mean 'maml-sine'"):
        get_preset("mam-sine")
    broken = replace(get_preset("oracle-pointnav"), name="broken", overrides={"lr": -1.0})
    with pytest.raises(PresetError, match="preset 'broken' does not fit .*OracleNavConfig.*lr"):
        broken.make_config()
    p = get_preset("oracle-pointnav")
    assert p.make_config({"lr": 0.5}, ["seed=4"]) == OracleNavConfig(lr=0.5, seed=4)


class Killed(Exception):
    pass


class KilledRun(Run):
    """A run whose process dies right after it logs step ``kill_at`` (before any checkpoint of
    that step is written)."""

    kill_at = 0

    def log(self, step, metrics):
        super().log(step, metrics)
        if step == self.kill_at:
            raise Killed(step)


@pytest.fixture
def one_thread():
    """Same thread count for the runs compared (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _numbers(path):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(path)]


def test_killed_run_resumes_to_the_same_numbers(tmp_path, one_thread):
    config = OracleNavConfig(**SMALL)

    with Run.create(tmp_path / "straight", "oracle-pointnav", config) as run:
        final_straight = train_oracle_pointnav(config, run)

    KilledRun.kill_at = 7  # the checkpoint at 4 survives; steps 5-7 are redone
    with pytest.raises(Killed):
        with KilledRun.create(tmp_path / "killed", "oracle-pointnav", config) as run:
            train_oracle_pointnav(config, run)
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == list(range(1, 8))
    with Run.resume(tmp_path / "killed") as run:
        assert run.start_step == 4
        final_resumed = train_oracle_pointnav(run.config, run)

    assert final_resumed == final_straight
    assert _numbers(tmp_path / "killed") == _numbers(tmp_path / "straight")
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == list(range(1, 13))
    a = Run.resume(tmp_path / "straight")
    b = Run.resume(tmp_path / "killed")
    try:
        wa, wb = a.load_last().tensors, b.load_last().tensors
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    finally:
        a.close()
        b.close()


def test_oracle_trainer_learns(tmp_path, one_thread):
    """Seeing the goal, REINFORCE must beat a policy that never moves (-38.3 at T=100; about
    -11 at T=30) by a wide margin: random initial weights score far below it."""
    config = OracleNavConfig(
        device="cpu", iterations=25, horizon=30, eval_every=0, checkpoint_every=0, lr=0.05
    )
    with Run.create(tmp_path / "run", "oracle-pointnav", config) as run:
        final = train_oracle_pointnav(config, run)
    rows = read_metrics(tmp_path / "run")
    first = rows[0]["return"]
    assert final["eval_return"] > -3.0, final
    assert first < -10.0, first  # the untrained policy is far worse


# --------------------------------------------------------------------------------------------
# A run folder is data: nothing it names is imported, everything it holds is checked
# --------------------------------------------------------------------------------------------
EVIL = """
from pathlib import Path
Path(__file__).with_name("PWNED").write_text("evil_cfg ran")
from meta_rl.rl.oracle import OracleNavConfig as Cfg
"""


def _evil_folder(tmp_path, config_class="evil_cfg:Cfg"):
    folder = tmp_path / "downloaded"
    Run.create(folder, "oracle-pointnav", OracleNavConfig(**SMALL)).close()
    (folder / "evil_cfg.py").write_text(EVIL)
    info = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**info, "config_class": config_class}))
    return folder


@pytest.mark.parametrize("config_class", ["evil_cfg:Cfg", "evil_cfg:OracleNavConfig"])
def test_loading_a_run_never_imports_code_it_names(tmp_path, monkeypatch, config_class):
    import subprocess

    folder = _evil_folder(tmp_path, config_class)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(RunError, match=f"'{config_class}' is not one of meta-rl's config"):
        load_config(".")
    with pytest.raises(RunError, match="is not one of meta-rl's config classes"):
        Run.resume(".")
    assert "evil_cfg" not in sys.modules and not (folder / "PWNED").exists()
    # the commands, in the folder itself (where `import evil_cfg` would find it)
    for code in [
        "import meta_rl; meta_rl.load('.')",
        "from meta_rl.cli import main; raise SystemExit(main())",
    ]:
        argv = ["evaluate", "."] if "main" in code else []
        proc = subprocess.run(
            [sys.executable, "-c", code, *argv], cwd=folder, capture_output=True, text=True
        )
        assert proc.returncode != 0 and "is not one of meta-rl's config classes" in proc.stderr
        assert not (folder / "PWNED").exists(), code


def test_config_json_without_its_entries_is_a_clear_error(tmp_path):
    folder = tmp_path / "run"
    Run.create(folder, "oracle-pointnav", OracleNavConfig(**SMALL)).close()
    info = json.loads((folder / "config.json").read_text())
    for key in ("config", "config_class", "preset"):
        (folder / "config.json").write_text(json.dumps({k: v for k, v in info.items() if k != key}))
        with pytest.raises(RunError, match=f"config.json' is damaged: its '{key}' entry"):
            load_config(folder)


def test_data_root_of_a_loaded_run_is_not_used(tmp_path, monkeypatch):
    from meta_rl.fewshot.metric import ProtoNetConfig

    folder = tmp_path / "run"
    config = ProtoNetConfig(device="cpu", data_root=str(tmp_path / "theirs"))
    Run.create(folder, "protonet-glyphs", config).close()
    assert load_config(folder).data_root is None  # the folder does not choose it
    with Run.resume(folder) as run:
        assert run.config.data_root is None
    with Run.resume(folder, [f"data_root={tmp_path / 'mine'}"]) as run:  # the user's own
        assert run.config.data_root == str(tmp_path / "mine")


def _tamper(sidecar, **changes):
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, **changes}))


def _run_with_checkpoints(tmp_path):
    with Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**SMALL)) as run:
        for step in range(1, 10):
            run.log(step, {"x": float(step)})
            if step % 4 == 0:
                newest = run.save(step, {"w": torch.full((2,), float(step))}, {"n": step})
    return run.path, newest


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"step": -5}, "step = -5 is not a non-negative integer"),
        ({"step": 4}, "step = 4 does not match its file name step_00000008.json"),
        ({"step": "eight"}, "step = 'eight' is not a non-negative integer"),
        ({"tensors_file": "../../config.json"}, "tensors_file = '../../config.json' is not"),
        ({"state": None}, "state = None is not a mapping"),
    ],
)
def test_resume_checks_the_checkpoint_before_touching_anything(tmp_path, changes, message):
    path, newest = _run_with_checkpoints(tmp_path)
    _tamper(newest, **changes)
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match=f"{message}.*delete step_00000008.json"):
        Run.resume(path, ["iterations=20"])
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == before
    newest.unlink()
    with Run.resume(path) as run:  # the previous checkpoint, as the message says
        assert run.start_step == 4 and [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_resume_refuses_non_finite_weights(tmp_path):
    from tests.test_config import rewrite_tensors

    path, newest = _run_with_checkpoints(tmp_path)
    rewrite_tensors(newest, lambda t: t["w"].fill_(float("nan")))
    rows = (path / "metrics.csv").read_text()
    with pytest.raises(CheckpointError, match="non-finite weights.*delete step_00000008.json"):
        Run.resume(path)
    assert (path / "metrics.csv").read_text() == rows


def test_torn_last_metrics_row_is_dropped_on_resume(tmp_path):
    path, _ = _run_with_checkpoints(tmp_path)
    with Run.resume(path) as run:  # back to step 8
        assert run.start_step == 8
    with (path / "metrics.csv").open("a") as f:
        f.write("1")  # killed after the first byte of the row of step 10 (or 11, 12...)
    with Run.resume(path) as run:
        run.log(9, {"x": 90.0})
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 10))  # no second step 1
    assert read_metrics(path)[-1]["x"] == 90.0


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    from meta_rl.runs import RunFinished

    config = OracleNavConfig(**{**SMALL, "iterations": 4})
    with Run.create(tmp_path / "run", "oracle-pointnav", config) as run:
        run.finish(train_oracle_pointnav(config, run))
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(RunFinished, match="is finished: it trained 4 of 4 iterations") as done:
        Run.resume(tmp_path / "run")
    assert set(done.value.final) == {"return", "loss", "eval_return"}
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files
    with Run.resume(tmp_path / "run", ["iterations=8"]) as run:  # more iterations: not finished
        assert run.start_step == 4


def test_final_json_is_complete_after_a_crash_after_the_last_checkpoint(tmp_path):
    config = OracleNavConfig(**{**SMALL, "iterations": 4})
    with Run.create(tmp_path / "run", "oracle-pointnav", config) as run:
        complete = run.finish(train_oracle_pointnav(config, run))
    (tmp_path / "run" / "final.json").unlink()  # killed before final.json was written
    with Run.resume(tmp_path / "run") as run:
        assert run.start_step == 4
        final = run.finish(train_oracle_pointnav(run.config, run))
    assert set(final) == set(complete) == {"return", "loss", "eval_return"}
    assert final["return"] == complete["return"] and final["loss"] == complete["loss"]
    assert json.loads((tmp_path / "run" / "final.json").read_text()) == final
