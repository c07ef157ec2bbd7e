"""One writer per run folder: a second writer is refused naming the holder, a stale lock of a
dead process is taken over, two trainings released together on one --out write each step once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from meta_rl.rl.oracle import OracleNavConfig
from meta_rl.runlock import LOCK_FILE
from meta_rl.runs import Run, RunError, read_metrics

SMALL = dict(device="cpu", iterations=4, checkpoint_every=2, horizon=10, tasks_per_iteration=2)
TINY = [
    *("--set", "device=cpu", "--set", "iterations=30", "--set", "checkpoint_every=5"),
    *("--set", "horizon=10", "--set", "tasks_per_iteration=2", "--set", "envs_per_task=2"),
    *("--set", "eval_tasks=2"),
]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def holder(tmp_path):
    """Another process holding the run folder open (as a training process would)."""
    Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**SMALL)).close()
    code = textwrap.dedent(
        f"""
        import sys
        import meta_rl.rl.oracle  # the config class this run folder names
        from meta_rl.runs import Run
        run = Run.resume({str(tmp_path / "run")!r})
        print("holding", flush=True)
        sys.stdin.readline()
        run.close()
        print("released", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout.readline().strip() == "holding"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder, capsys):
    from meta_rl.cli import main

    host = socket.gethostname()
    who = f"pid {holder.pid} on host {host}"
    with pytest.raises(RunError, match=f"is being written by {who}.*one training process"):
        Run.resume(tmp_path / "run")
    with pytest.raises(RunError, match=f"being written by {who}"):
        Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**SMALL))
    before = (tmp_path / "run" / "config.json").read_text()
    code = main(["train", "--resume", "--out", str(tmp_path / "run"), "--set", "iterations=8"])
    err = capsys.readouterr().err
    assert code == 2 and f"being written by {who}" in err and "Traceback" not in err
    assert (tmp_path / "run" / "config.json").read_text() == before  # nothing changed

    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    holder.wait(timeout=60)
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with Run.resume(tmp_path / "run") as run:  # free again
        assert (tmp_path / "run" / LOCK_FILE).exists()
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunError, match=f"being written by pid {os.getpid()}"):
            Run.resume(run.path)  # a second Run of the same process is refused too
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_killed_holder_leaves_a_lock_that_is_taken_over(tmp_path, holder, caplog):
    holder.kill()  # kill -9: no close(), the lock file stays
    holder.wait(timeout=60)
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid
    with Run.resume(tmp_path / "run") as run:
        assert run.start_step == 0
    assert f"taking over the stale lock of pid {holder.pid}" in caplog.text


def test_a_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path, caplog):
    Run.create(tmp_path / "run", "oracle-pointnav", OracleNavConfig(**SMALL)).close()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = {"pid": gone.pid, "host": socket.gethostname(), "started": "2024-01-01T00:00:00"}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(lock))
    with Run.resume(tmp_path / "run"):
        pass
    assert f"stale lock of pid {gone.pid} on host {socket.gethostname()}" in caplog.text
    # a lock of another host cannot be checked: refused, naming the file to delete
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps({**lock, "host": "elsewhere"}))
    with pytest.raises(RunError, match=f"pid {gone.pid} on host elsewhere.*delete .*\\.lock"):
        Run.resume(tmp_path / "run")


def test_two_trainings_released_together_on_one_out(tmp_path):
    """The issue's case: both exited 0 and wrote every step twice."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "meta_rl", "-q", "train", "oracle-pointnav", "--out", str(out)]
    procs = [
        subprocess.Popen(
            [*cmd, *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "being written by pid" in refused or "already holds a run" in refused, refused
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 31))
