"""Data-parallel training (meta_rl.distributed): 2 CPU ranks (gloo) give the single-process
update on the same seed; a killed rank stops the job; --resume continues without lost or
duplicated iterations."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from meta_rl import distributed
from meta_rl.checkpoint import latest_checkpoint, load_checkpoint
from meta_rl.presets import get_preset
from meta_rl.runs import Run, read_metrics

# tiny configs: a few iterations each, sizes that split unevenly over 2 ranks
MAML = {
    "iterations": 3,
    "meta_batch": 5,
    "episodes_per_task": 4,
    "hidden": (16,),
    "fisher_tasks": 4,  # rank 0 holds 3 of the Fisher's tasks, rank 1 one
    "cg_iters": 5,
    "eval_tasks": 4,
    "eval_episodes": 2,
    "eval_every": 0,
    "checkpoint_every": 0,
    "log_every": 1,
}
RL2 = {
    "iterations": 3,
    "tasks_per_iteration": 7,
    "envs_per_task": 2,
    "minibatches": 4,
    "update_epochs": 2,
    "hidden_size": 16,
    "eval_tasks": 10,
    "eval_every": 0,
    "references": False,
    "checkpoint_every": 0,
    "log_every": 1,
}
JOBS = [("maml-trpo-pointnav", MAML), ("rl2-bandits", RL2), ("maml-sine", None)]
SINE = {"iterations": 5, "meta_batch_size": 5, "log_every": 1, "eval_every": 0}
SINE.update(checkpoint_every=0, baseline=False, eval_tasks=10)
COMPARED = ("return_pre", "return_post", "loss", "kl", "return", "policy_loss", "train/loss")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(preset: str, values: dict, out: Path | None) -> None:
    p = get_preset(preset)
    config = p.make_config(values)
    run = Run.create(out, preset, config) if out is not None else None
    try:
        p.load_trainer()(config, run)
    finally:
        if run is not None:
            run.close()


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    distributed.init(timeout_s=60)
    try:
        for preset, values in JOBS:
            out = Path(root) / f"dist-{preset}" if rank == 0 else None  # rank 0 writes alone
            _train(preset, values or SINE, out)
    finally:
        distributed.shutdown()


def _final(run: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    return ck.tensors


def _assert_same_runs(a: Path, b: Path, tol: float = 1e-5) -> None:
    ta, tb = _final(a), _final(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=tol, rtol=tol, msg=f"param {k}")
    ma, mb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb, strict=True):
        for key in COMPARED:
            if key in ra:  # NaN: a row without that metric (e.g. an evaluation row)
                assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5, nan_ok=True), (
                    key,
                    ra["step"],
                )


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    for preset, values in JOBS:
        _train(preset, values or SINE, tmp_path / f"single-{preset}")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for preset, _ in JOBS:
        _assert_same_runs(tmp_path / f"single-{preset}", tmp_path / f"dist-{preset}")


def test_shards_split_unevenly_and_cover_the_batch() -> None:
    shards = [distributed.Context(r, 3).shard(7) for r in range(3)]
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 5), (5, 7)]
    assert sum(s.weight for s in shards) == pytest.approx(1.0)
    with pytest.raises(distributed.DistributedError, match="cannot be split over 3 ranks"):
        distributed.Context(0, 3).shard(2)
    rows = torch.tensor([9, 0, 5, 6, 13])  # rows of a 7-task x 2 batch, in minibatch order
    assert shards[1].rows(rows, 2).tolist() == [3, 0]  # rows 6..9 are its: 9, 6 -> 3, 0
    # a shard's noise is the whole batch's noise, sliced: row r gets the same numbers
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    from gymnasium.spaces import Box

    from meta_rl.policies import distributions as D

    space = Box(-1, 1, (2,))
    full = D.noise(space, (7, 4), gen_a)
    part = D.noise(space, (2, 4), shards[1].noise(gen_b))
    torch.testing.assert_close(part, full[3:5], atol=0, rtol=0)
    # and a sharded batched env steps its rows with the whole env's noise
    from meta_rl_envs import make_batched

    whole = make_batched("MetaRL/Bandit-v0", 7, 2)
    mine = distributed.attach_shard(make_batched("MetaRL/Bandit-v0", 2, 2), shards[1])
    tasks = whole.sample_tasks(7, 0)
    whole.set_tasks(tasks)
    mine.set_tasks(shards[1].take(tasks))
    whole.reset(seed=5)
    mine.reset(seed=5)
    act = torch.zeros(14, dtype=torch.long)
    for _ in range(3):
        _, r_whole, *_ = whole.step(act)
        _, r_mine, *_ = mine.step(act[6:10])
        torch.testing.assert_close(r_mine, r_whole[6:10], atol=0, rtol=0)


def _torchrun(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "meta_rl", "train", "rl2-bandits", "--out", str(out), "--no-progress"]
    for k, v in {**RL2, "checkpoint_every": 5, "num_threads": 1}.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, distributed.TIMEOUT_ENV: "30", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _rank_pid(parent: int, rank: int) -> int | None:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds ranks through /proc")
def test_killed_rank_stops_job_and_resume_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    job = _torchrun(out, "--set", "iterations=100000")  # never finishes by itself
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_00000005.json").exists():
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint at step 5 within 120 s"
        time.sleep(0.1)
    victim = _rank_pid(job.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0 and time.time() - t0 < 30
    assert "lost contact with the other ranks" in err and "--resume" in err
    assert "rank      : 1" in err  # torchrun's report names the killed rank

    last = load_checkpoint(latest_checkpoint(out / "checkpoints")).step
    total = last + 3
    resumed = _torchrun(out, "--resume", "--set", f"iterations={total}")
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err[-2000:]
    steps = [int(r["step"]) for r in read_metrics(out)]
    assert steps == list(range(1, total + 1))  # none lost, none twice

    # the interrupted 2-rank run ends where an uninterrupted single-process run does
    _train("rl2-bandits", {**RL2, "checkpoint_every": 5, "iterations": total}, tmp_path / "ref")
    _assert_same_runs(tmp_path / "ref", out)
