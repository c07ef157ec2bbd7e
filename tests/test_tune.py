"""``meta-rl tune``: a tiny study end to end (best.yaml that ``meta-rl train`` takes, plots),
resuming without repeating finished trials, a killed trial re-queued, pruning, bad spaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="meta-rl tune needs the tune extra")

from meta_rl.cli import _read_spec, main  # noqa: E402
from meta_rl.config import ConfigError  # noqa: E402
from meta_rl.presets import PRESETS, get_preset  # noqa: E402
from meta_rl.tune import STUDY_NAME, TuneSettings, budget_iterations, trial_schedule, tune  # noqa: E402
from meta_rl.tune_space import DEFAULT_SPACES, Space, default_space, read_space  # noqa: E402

# a sinusoid MAML small enough for CI: a trial of 4 iterations is well under a second
TINY = [
    "device=cpu",
    "num_threads=1",
    "hidden=[8]",
    "meta_batch_size=2",
    "eval_tasks=4",
    "eval_queries=10",
    "eval_inner_steps=2",
]
SPACE = {"inner_lr": {"low": 0.001, "high": 0.3, "log": True}, "algorithm": ["maml", "fomaml"]}


def settings(tmp_path: Path, trials: int, **kw) -> TuneSettings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    kw = {"budget": 4, "reports": 2, "sampler": "random", "overrides": TINY, **kw}
    return TuneSettings("maml-sine", trials, tmp_path / "tune", space, **kw)


def trial_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("trial-*"))


def test_tiny_study_writes_best_config_plots_and_summary(tmp_path, capsys):
    result = tune(settings(tmp_path, 3))
    out = tmp_path / "tune"
    assert result.ran_now == [0, 1, 2]
    assert result.metric == "eval/loss_step2" and result.direction == "minimize"
    assert sum(result.counts.values()) == 3
    assert trial_dirs(out) == ["trial-0000", "trial-0001", "trial-0002"]
    for name in ("best.yaml", "history.png", "importance.png", "summary.json", "study.db"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    first = summary["trials"][0]  # the preset's own strategy (its inner_lr None: drawn)
    assert first["preset_strategy"] is True and first["params"]["algorithm"] == "maml"
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert min(t["value"] for t in done) == pytest.approx(result.best_value)
    # each complete trial trained the short budget in its own run folder, evaluated twice
    for t in done:
        final = json.loads((Path(t["run"]) / "final.json").read_text())
        assert final["eval/loss_step2"] == pytest.approx(t["value"])
        assert sorted(t["intermediate"]) == ["2", "4"]
    # best.yaml is a config `meta-rl train` takes: the preset, the fixed values, the strategy,
    # and not the trial's short schedule
    preset, values = _read_spec(str(out / "best.yaml"))
    assert preset == "maml-sine"
    assert values["inner_lr"] == pytest.approx(result.best_params["inner_lr"])
    assert values["hidden"] == [8] and "iterations" not in values
    config = get_preset(preset).make_config(values)
    assert config.iterations == get_preset("maml-sine").make_config().iterations
    code = main(["-q", "train", str(out / "best.yaml"), "--set", "iterations=2"]
                + ["--out", str(tmp_path / "retrain"), "--no-progress"])  # fmt: skip
    assert code == 0
    trained = json.loads((tmp_path / "retrain" / "config.json").read_text())["config"]
    assert trained["algorithm"] == result.best_params["algorithm"]
    assert trained["inner_lr"] == pytest.approx(result.best_params["inner_lr"])


def test_same_seed_same_trials(tmp_path):
    a = tune(settings(tmp_path / "a", 2, sampler="tpe"))
    b = tune(settings(tmp_path / "b", 2, sampler="tpe"))
    rows = [json.loads((p / "tune" / "summary.json").read_text())["trials"] for p in
            (tmp_path / "a", tmp_path / "b")]  # fmt: skip
    assert [(r["params"], r["value"]) for r in rows[0]] == [
        (r["params"], r["value"]) for r in rows[1]
    ]
    assert a.best_value == b.best_value


def test_rerun_resumes_without_repeating_finished_trials(tmp_path):
    first = tune(settings(tmp_path, 2))
    out = tmp_path / "tune"
    stamps = {d: (out / d / "config.json").stat().st_mtime_ns for d in trial_dirs(out)}
    again = tune(settings(tmp_path, 2))  # nothing missing: nothing runs
    assert again.ran_now == [] and again.best_value == first.best_value
    more = tune(settings(tmp_path, 3))  # one more trial, only that one runs
    assert more.ran_now == [2]
    assert trial_dirs(out) == ["trial-0000", "trial-0001", "trial-0002"]
    assert {d: (out / d / "config.json").stat().st_mtime_ns for d in stamps} == stamps
    params = [t["params"] for t in json.loads((out / "summary.json").read_text())["trials"]]
    assert params[2] not in params[:2]  # the resumed sampler does not redraw old strategies


def test_killed_trial_is_marked_failed_and_its_strategy_requeued(tmp_path):
    tune(settings(tmp_path, 1))
    out = tmp_path / "tune"
    # a process that died mid-trial leaves the trial RUNNING in the study
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    dist = {
        "inner_lr": optuna.distributions.FloatDistribution(0.001, 0.3, log=True),
        "algorithm": optuna.distributions.CategoricalDistribution(["maml", "fomaml"]),
    }
    killed = study.ask(dist)
    assert killed.number == 1
    result = tune(settings(tmp_path, 2))
    assert result.requeued == {1: 2} and result.ran_now == [2]
    rows = json.loads((out / "summary.json").read_text())["trials"]
    assert rows[1]["state"] == "FAIL" and rows[1]["killed"] is True
    assert rows[2]["state"] == "COMPLETE" and rows[2]["retry_of"] == 1
    assert rows[2]["params"] == rows[1]["params"]
    assert "killed mid-way" in _cli_summary(result)


def _cli_summary(result) -> str:
    from meta_rl.tune_report import summary_text

    return summary_text(result.to_dict(), Path("x"))


def test_pruned_trials_stop_early_and_are_marked(tmp_path):
    # every held-out MSE is above 0: the threshold pruner stops each trial at its first
    # evaluation after the warm-up, inside the trainer's loop (through the run's log)
    pruner = optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=1)
    result = tune(settings(tmp_path, 2, budget=6, reports=3, pruner=pruner))
    out = tmp_path / "tune"
    assert result.counts == {"pruned": 2} and result.best_number is None
    rows = json.loads((out / "summary.json").read_text())["trials"]
    assert [r["pruned_at"] for r in rows] == [2, 2]
    for r in rows:
        assert not (Path(r["run"]) / "final.json").exists()  # training stopped at step 2
        assert list(r["intermediate"]) == ["2"]
    assert not (out / "best.yaml").exists()
    assert (out / "history.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inner_lrr: {low: 0.01, high: 0.1}", "unknown config key 'inner_lrr'"),
        ("inner_lr: {low: 0.1, high: 0.01}", "low = 0.1 must be below high = 0.01"),
        ("inner_lr: {low: -1, high: 0.1, log: true}", "a log range needs low > 0"),
        ("algorithm: [maml, sgd]", "algorithm"),
        ("inner_steps: {low: 0, high: 3}", "inner_steps"),
        ("inner_lr: {lo: 0.01, high: 0.1}", "unknown key(s) lo"),
        ("inner_lr: 0.1", "is not a range"),
        ("[1, 2]", "mapping"),
        ("inner_lr: {low: 0.01, high: [}", "malformed YAML"),
        ("iterations: {low: 10, high: 20}", "trial budget"),
    ],
)
def test_bad_space_file_is_one_line_error_naming_it(tmp_path, capsys, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    code = main(["tune", "maml-sine", "--trials", "1", "--space", str(path)]
                + ["--out", str(tmp_path / "tune")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("meta-rl: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "tune").exists()  # nothing created before the plan is valid


def test_searched_field_cannot_also_be_fixed(tmp_path):
    with pytest.raises(ConfigError, match="inner_lr is searched and also fixed"):
        tune(settings(tmp_path, 1, overrides=[*TINY, "inner_lr=0.1"]))


def test_a_study_of_other_settings_is_not_resumed(tmp_path):
    tune(settings(tmp_path, 1))
    with pytest.raises(RuntimeError, match="holds a study that differs in iterations"):
        tune(settings(tmp_path, 2, budget=5))


def test_budget_and_schedule():
    assert budget_iterations(0.25, 2000) == 500
    assert budget_iterations(40, 2000) == 40
    with pytest.raises(ConfigError):
        budget_iterations(2.5, 100)
    with pytest.raises(ConfigError):
        budget_iterations(0, 100)
    config = get_preset("maml-sine").make_config()  # log_every 50
    schedule = trial_schedule(config, 500, 4)
    assert schedule["eval_every"] == 125 and 125 % schedule["log_every"] == 0


def test_default_spaces_fit_their_presets():
    """Every default space builds a valid config at every end of every range, for the
    gradient presets (sinusoid, glyphs, PointNav) and RL^2."""
    seen = set()
    for name in ("maml-sine", "metasgd-sine", "maml-glyphs", "maml-trpo-pointnav",
                 "maml-ppo-pointnav", "rl2-bandits", "rl2-pointnav"):  # fmt: skip
        preset = PRESETS[name]
        space_name, space = default_space(preset.make_config())
        space.check(preset.make_config, name)
        seen.add(space_name)
    assert seen == set(DEFAULT_SPACES)
    with pytest.raises(ConfigError, match="no default search space"):
        default_space(PRESETS["protonet-glyphs"].make_config())


def test_space_yaml_round_trip(tmp_path):
    _, space = default_space(PRESETS["maml-trpo-pointnav"].make_config())
    path = tmp_path / "s.yaml"
    path.write_text(space.to_yaml())
    assert read_space(path) == space
    assert Space.parse({"x": {"low": 1, "high": 4}}, "t").params[0].kind == "int"
    assert Space.parse({"x": {"low": 1, "high": 4, "type": "float"}}, "t").params[0].kind == "float"
