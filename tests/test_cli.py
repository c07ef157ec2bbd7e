"""The ``meta-rl`` command: envs, rollout, presets, train (errors exit 2 with one line)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from meta_rl.cli import main, random_rollout
from meta_rl.runs import read_metrics

TINY = [
    "--set",
    "device=cpu",
    "--set",
    "iterations=6",
    "--set",
    "checkpoint_every=3",
    "--set",
    "horizon=10",
    "--set",
    "tasks_per_iteration=2",
    "--set",
    "envs_per_task=2",
    "--set",
    "eval_tasks=2",
]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_envs_lists_pointnav_with_ranges_and_splits(capsys):
    code, out, _ = run_cli(capsys, "envs")
    assert code == 0
    block = out.split("MetaRL/PointNav-v0")[1].split("\n\n")[0]
    assert "[batched]" in block
    assert "goal: U[-0.5, 0.5]^(2,); ood U[-1, -0.5] or U[0.5, 1]" in block
    assert "splits: train, test, ood" in block
    code, out, _ = run_cli(capsys, "envs", "--json")
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["MetaRL/PointNav-v0"]["parameters"] == {
        "goal": "U[-0.5, 0.5]^(2,); ood U[-1, -0.5] or U[0.5, 1]"
    }


def test_rollout_prints_speed_and_returns(capsys):
    code, out, _ = run_cli(
        capsys, "rollout", "--tasks", "3", "--envs-per-task", "2", "--steps", "250"
    )
    assert code == 0
    assert "6 rows x 250 steps" in out and "steps/s" in out
    assert out.count("episodes)") == 3
    result = random_rollout("MetaRL/PointNav-v0", 3, 2, 250, seed=0, device="cpu")
    again = random_rollout("MetaRL/PointNav-v0", 3, 2, 250, seed=0, device="cpu")
    assert [t["mean_return"] for t in result["tasks"]] == [t["mean_return"] for t in again["tasks"]]
    for t in result["tasks"]:
        assert t["episodes"] == 4 and t["complete"]  # 2 rows x 2 full episodes of 100 steps
        # Random steps wander: worse than standing still at the origin for 100 steps.
        goal_dist = sum(g * g for g in t["task"]["goal"]) ** 0.5
        assert t["mean_return"] < -100 * goal_dist + 5


def test_rollout_bad_family_exits_2(capsys):
    code, out, err = run_cli(capsys, "rollout", "--env", "MetaRL/Nope-v0")
    assert code == 2 and out == ""
    assert err.startswith("meta-rl: error: unknown family id 'MetaRL/Nope-v0'")
    assert len(err.strip().splitlines()) == 1


def test_presets_lists_all(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    for name in [
        "maml-sine",
        "reptile-glyphs",
        "protonet-glyphs",
        "mann-glyphs",
        "oracle-pointnav",
    ]:
        assert name in out
    code, out, _ = run_cli(capsys, "presets", "oracle-pointnav")
    assert code == 0 and "lr = 0.03  (float)  [must be > 0]" in out and "Adam learning rate" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "mam-sine"], "unknown preset 'mam-sine'; did you mean 'maml-sine'"),
        (["train", "oracle-pointnav", "--set", "lr=-1"], "lr = -1.0 is out of range: must be > 0"),
        (["train", "oracle-pointnav", "--set", "lrr=1"], "unknown config key 'lrr'"),
        (["train", "oracle-pointnav", "--set", "device=gpu"], "choose one of ['auto', 'cpu'"),
        (["train", "oracle-pointnav", "--set", "horizon"], "not of the form key=value"),
    ],
)
def test_train_bad_input_exits_2_and_creates_nothing(capsys, tmp_path, argv, message):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, *argv, "--out", str(out_dir))
    assert code == 2
    assert err.startswith("meta-rl: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_trainer_refusing_its_config_leaves_no_folder(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "oracle-pointnav", "--set", "device=cuda", "--out", str(out_dir)
    )
    assert code == 2 and "CUDA is not available" in err and "Traceback" not in err
    assert not out_dir.exists()


def test_train_resume_and_refusal(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "-q", "train", "oracle-pointnav", "--out", str(out_dir), *TINY)
    assert code == 0
    first = json.loads(out)
    assert first["run"] == str(out_dir) and set(first["final"]) >= {"return", "eval_return"}
    assert [r["step"] for r in read_metrics(out_dir)] == list(range(1, 7))

    # Same folder, other config, no --resume: refused, nothing touched.
    before = (out_dir / "metrics.csv").read_text()
    code, _, err = run_cli(capsys, "train", "oracle-pointnav", "--out", str(out_dir))
    assert code == 2 and "holds a run of a different config" in err
    assert (out_dir / "metrics.csv").read_text() == before

    # --resume with more iterations continues at the last checkpoint (step 6).
    code, out, _ = run_cli(
        capsys, "-q", "train", "--resume", "--out", str(out_dir), "--set", "iterations=9"
    )
    assert code == 0
    assert [r["step"] for r in read_metrics(out_dir)] == list(range(1, 10))
    code, _, err = run_cli(capsys, "train", "--resume", "--out", str(out_dir), "--set", "lr=1")
    assert code == 2 and "cannot change lr (0.03 -> 1.0)" in err


def test_resume_of_a_missing_run_starts_one(capsys, tmp_path):
    out_dir = tmp_path / "fresh"
    code, _, _ = run_cli(
        capsys, "-q", "train", "oracle-pointnav", "--resume", "--out", str(out_dir), *TINY
    )
    assert code == 0 and [r["step"] for r in read_metrics(out_dir)] == list(range(1, 7))
    code, _, err = run_cli(capsys, "train", "--resume")
    assert code == 2 and "--resume needs --out DIR" in err


def test_train_from_yaml(capsys, tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text("preset: oracle-pointnav\nconfig:\n  lr: 0.05\nseed: 3\n")
    out_dir = tmp_path / "run"
    code, _, _ = run_cli(capsys, "-q", "train", str(spec), "--out", str(out_dir), *TINY)
    assert code == 0
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["preset"] == "oracle-pointnav"
    assert saved["config"]["lr"] == 0.05 and saved["config"]["seed"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.05\n")
    code, _, err = run_cli(capsys, "train", str(bad), "--out", str(tmp_path / "b"))
    assert code == 2 and "needs a 'preset: NAME' entry" in err


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "meta_rl", "rollout", "--tasks", "2", "--steps", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "steps/s" in proc.stdout and "task   1:" in proc.stdout


def test_evaluate_command_prints_json_and_writes_report(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, _ = run_cli(
        capsys,
        "-q",
        "train",
        "smoke-pointnav",
        "--out",
        str(run),
        "--no-progress",
        *("--set", "device=cpu", "--set", "iterations=1", "--set", "meta_batch=2"),
        *("--set", "episodes_per_task=2", "--set", "horizon=10", "--set", "eval_tasks=2"),
    )
    assert code == 0
    code, out, _ = run_cli(
        capsys, "evaluate", str(run), "--tasks", "2", "--baselines", "none", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert [s["name"] for s in report["series"]] == ["adapted", "no_adaptation"]
    assert (run / "evaluation-test" / "report.json").exists()
    assert (run / "evaluation-test" / "adaptation.png").exists()
    code, out, _ = run_cli(capsys, "presets")
    assert "smoke-pointnav" in out


# --------------------------------------------------------------------------------------------
# User mistakes and machine troubles: one line saying what happened and what to do
# --------------------------------------------------------------------------------------------
def one_line(err: str) -> bool:
    return err.startswith("meta-rl: error: ") and len(err.strip().splitlines()) == 1


def test_resume_errors_from_the_trainer_are_one_line(capsys, tmp_path):
    """cmd_train set `fresh` only for new runs: any user error under --resume (here an unknown
    env id in config.json) ended in UnboundLocalError."""
    from meta_rl.presets import get_preset
    from meta_rl.runs import Run

    out_dir = tmp_path / "run"
    config = get_preset("smoke-pointnav").make_config({"env_id": "MetaRL/Nope-v0"}, ["device=cpu"])
    Run.create(out_dir, "smoke-pointnav", config).close()
    capsys.readouterr()
    code, _, err = run_cli(capsys, "-q", "train", "--resume", "--out", str(out_dir))
    assert code == 2 and one_line(err) and "unknown family id 'MetaRL/Nope-v0'" in err, err
    assert (out_dir / "config.json").exists()  # a resumed run is never removed


@pytest.mark.parametrize("command", [["evaluate", "RUN"], ["rollout"]])
def test_bad_device_is_one_line(capsys, tmp_path, command):
    argv = [str(tmp_path) if a == "RUN" else a for a in command]
    code, out, err = run_cli(capsys, *argv, "--device", "gpu")
    assert code == 2 and one_line(err) and "--device=gpu is not a device" in err, err
    assert "auto, cpu, cuda" in err and out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_so_before_creating_anything(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "train", "oracle-pointnav", "--set", "device=cuda", "--out", str(out_dir)
    )
    assert code == 2 and one_line(err) and "new run" not in err + out and "run folder" not in err
    assert "CUDA is not available" in err and "device=cpu" in err and "device=auto" in err
    assert not out_dir.exists()
    for command in (["evaluate", str(tmp_path)], ["rollout"]):
        code, _, err = run_cli(capsys, *command, "--device", "cuda")
        assert code == 2 and one_line(err) and "--device=cpu" in err


def test_evaluate_and_resume_of_what_is_not_there(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "nonexistent"))
    assert code == 2 and one_line(err) and "nonexistent' does not exist" in err
    code, _, err = run_cli(capsys, "train", "--resume", "--out", str(tmp_path / "nope"))
    assert code == 2 and one_line(err) and "nothing to resume: " in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", str(tmp_path / "empty"))
    assert code == 2 and one_line(err) and "nothing to resume" in err and "holds no run" in err
    # with a preset, --resume starts the run, and says there was nothing to resume
    code, _, err = run_cli(
        capsys, "train", "oracle-pointnav", "--resume", "--out", str(tmp_path / "new"), *TINY
    )
    assert code == 0 and "nothing to resume in" in err


def test_config_json_without_config_is_one_line(capsys, tmp_path):
    out_dir = tmp_path / "run"
    run_cli(capsys, "-q", "train", "oracle-pointnav", "--out", str(out_dir), *TINY)
    info = json.loads((out_dir / "config.json").read_text())
    del info["config"]
    (out_dir / "config.json").write_text(json.dumps(info))
    for argv in (["evaluate", str(out_dir)], ["train", "--resume", "--out", str(out_dir)]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and one_line(err) and "'config' entry" in err and "KeyError" not in err


def test_disk_full_and_read_only_are_one_line_and_keep_the_data(capsys, tmp_path, monkeypatch):
    import errno

    import meta_rl.checkpoint as ckpt
    import meta_rl.runs as runs

    real = ckpt.atomic_write

    def full(path, data):
        if "step_00000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", full)
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "-q", "train", "oracle-pointnav", "--out", str(out_dir), *TINY)
    assert code == 2 and one_line(err) and "No space left on device" in err, err
    assert "free some disk space" in err and "checkpoint (step 3) is intact" in err
    assert f"meta-rl train --resume --out {out_dir}" in err
    monkeypatch.undo()
    code, out, _ = run_cli(capsys, "-q", "train", "--resume", "--out", str(out_dir))
    assert code == 0 and [r["step"] for r in read_metrics(out_dir)] == list(range(1, 7))

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runs, "atomic_write", read_only)
    code, _, err = run_cli(capsys, "train", "oracle-pointnav", "--out", str(tmp_path / "ro"))
    assert code == 2 and one_line(err) and "Read-only file system" in err
    assert "choose a writable --out" in err and not (tmp_path / "ro").exists()


def test_divergence_and_overflow_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        *("-q", "train", "maml-sine", "--out", str(tmp_path / "sine")),
        *("--set", "device=cpu", "--set", "outer_lr=1e30", "--set", "iterations=5"),
        *("--set", "baseline=false", "--set", "eval_tasks=10"),
    )
    assert code == 2 and one_line(err) and "the loss became NaN/inf" in err, err
    assert "outer_lr" in err and "no checkpoint had been written yet" in err
    code, _, err = run_cli(
        capsys,
        *("-q", "train", "rl2-bandits", "--out", str(tmp_path / "rl2")),
        *("--set", "device=cpu", "--set", "lr=1e38", "--set", "iterations=3"),
        *("--set", "tasks_per_iteration=8", "--set", "hidden_size=16", "--set", "eval_tasks=8"),
        *("--set", "references=false"),
    )
    assert code == 2 and one_line(err) and "lower lr (now 1e+38)" in err, err


def test_resuming_a_finished_run_says_so_and_changes_nothing(capsys, tmp_path):
    out_dir = tmp_path / "run"
    run_cli(capsys, "-q", "train", "oracle-pointnav", "--out", str(out_dir), *TINY)
    files = {p: p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    code, out, err = run_cli(capsys, "train", "--resume", "--out", str(out_dir))
    assert code == 0 and "is finished: it trained 6 of 6 iterations" in err
    assert set(json.loads(out)["final"]) == {"return", "loss", "eval_return"}
    assert {p: p.read_bytes() for p in out_dir.rglob("*") if p.is_file()} == files


def test_maml_final_json_is_complete_after_a_crash_after_its_last_checkpoint(capsys, tmp_path):
    """The issue: --resume rewrote final.json with only the evaluation keys (12 -> 2)."""
    out_dir = tmp_path / "run"
    tiny = ["device=cpu", "iterations=2", "meta_batch=2", "episodes_per_task=2", "horizon=10"]
    sets = [a for s in [*tiny, "eval_tasks=2", "checkpoint_every=1"] for a in ("--set", s)]
    code, out, _ = run_cli(capsys, "-q", "train", "smoke-pointnav", "--out", str(out_dir), *sets)
    complete = json.loads(out)["final"]
    (out_dir / "final.json").unlink()  # killed in the final evaluation
    code, out, _ = run_cli(capsys, "-q", "train", "--resume", "--out", str(out_dir))
    assert code == 0
    final = json.loads((out_dir / "final.json").read_text())
    assert len(complete) > 5 and set(final) == set(complete)
    assert final["loss"] == complete["loss"] and final["kl"] == complete["kl"]
