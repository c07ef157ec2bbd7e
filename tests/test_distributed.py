"""Data-parallel training (meta_rl.collectives, meta_rl.launch): 2 CPU ranks (gloo) give the
single-process update on the same seed; a killed rank stops the job; --resume continues without
lost or duplicated iterations."""

from __future__ import annotations

import copy
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

from meta_rl import collectives
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
        p.train(config, run)
    finally:
        if run is not None:
            run.close()


def _join(rank: int, world: int, port: int) -> None:
    """Join a local gloo group as torchrun would set it up (one thread per rank)."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    collectives.init(timeout_s=60)


def _worker(rank: int, world: int, port: int, root: str) -> None:
    _join(rank, world, port)
    try:
        for preset, values in JOBS:
            out = Path(root) / f"dist-{preset}" if rank == 0 else None  # rank 0 writes alone
            _train(preset, values or SINE, out)
    finally:
        collectives.shutdown()


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
    shards = [collectives.Context(r, 3).shard(7) for r in range(3)]
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 5), (5, 7)]
    assert sum(s.weight for s in shards) == pytest.approx(1.0)
    with pytest.raises(collectives.DistributedError, match="cannot be split over 3 ranks"):
        collectives.Context(0, 3).shard(2)
    rows = torch.tensor([9, 0, 5, 6, 13])  # rows of a 7-task x 2 batch, in minibatch order
    assert shards[1].rows(rows, 2).tolist() == [3, 0]  # rows 6..9 are its: 9, 6 -> 3, 0
    # a shard's noise is the whole batch's noise, sliced: row r gets the same numbers
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    from gymnasium.spaces import Box

    from meta_rl.policies import distributions as D

    space = Box(-1, 1, (2,))
    full = D.noise(space, (7, 4), gen_a)
    part = D.noise(space, (2, 4), D.windowed(gen_b, shards[1].window()))
    torch.testing.assert_close(part, full[3:5], atol=0, rtol=0)
    # and a sharded batched env steps its rows with the whole env's noise
    from meta_rl_envs import make_batched

    whole = make_batched("MetaRL/Bandit-v0", 7, 2)
    from meta_rl.rl.rollout import shard_env

    mine = shard_env(make_batched("MetaRL/Bandit-v0", 2, 2), shards[1])
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


def test_shard_holds_its_part_of_the_first_tasks() -> None:
    """MAML-TRPO's Fisher uses the first fisher_tasks tasks: each rank its own of them, weighted
    by its share of their mean (shards are contiguous, so they are each rank's first ones)."""
    shards = [collectives.Context(r, 3).shard(7) for r in range(3)]  # (0, 3), (3, 5), (5, 7)
    assert [s.first(4) for s in shards] == [(3, 0.75), (1, 0.25), (0, 0.0)]
    assert [s.first(0) for s in shards] == [(3, 3 / 7), (2, 2 / 7), (2, 2 / 7)]  # 0: all
    assert collectives.Context().shard(7).first(9) == (7, 1.0)  # more than the batch: all


def test_launch_runs_the_command_on_rank_0_and_the_trainer_on_the_others(monkeypatch, capsys):
    """meta_rl.launch without torchrun: a fake process group of the rank under test."""
    from dataclasses import replace

    from meta_rl import launch
    from meta_rl.config import ConfigError

    ran: list[list[str]] = []

    def command(argv: list[str]) -> int:
        ran.append(argv)
        return 0

    monkeypatch.setattr(collectives, "shutdown", lambda: None)
    monkeypatch.setattr(collectives, "init", lambda: collectives.Context())  # rank 0 of 1
    # a preset whose trainer does not shard its batch is refused (the others would repeat it)
    assert launch.main(["train", "x"], command, lambda argv: "oracle-pointnav", ()) == 2
    assert "'oracle-pointnav' (trainer meta_rl.rl.oracle" in capsys.readouterr().err
    assert launch.main(["envs"], command, lambda argv: None, ()) == 0 and ran == [["envs"]]
    assert launch.main(["train", "y"], command, lambda argv: "reptile-pointnav", ()) == 0
    assert ran[-1] == ["train", "y"]

    # rank 1 of 2: trains rank 0's preset (broadcast) without a run folder
    follower = collectives.Context(1, 2)
    monkeypatch.setattr(follower, "broadcast_object", lambda obj: "reptile-pointnav")
    monkeypatch.setattr(collectives, "init", lambda: follower)
    trained = []

    def train(config, run):
        trained.append((type(config).__name__, run))
        if len(trained) > 1:
            raise ConfigError("bad")  # rank 0 reports it; a follower ends with status 2

    fake = replace(launch.PRESETS["reptile-pointnav"], train=train)
    monkeypatch.setitem(launch.PRESETS, "reptile-pointnav", fake)
    assert launch.main(["train", "z"], command, lambda argv: 1 / 0, (ConfigError,)) == 0
    assert trained == [("ReptileConfig", None)] and ran[-1] == ["train", "y"]
    assert launch.main(["train", "z"], command, lambda argv: 1 / 0, (ConfigError,)) == 2


def _torchrun(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "meta_rl", "train", "rl2-bandits", "--out", str(out), "--no-progress"]
    for k, v in {**RL2, "checkpoint_every": 5, "num_threads": 1}.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, collectives.TIMEOUT_ENV: "30", "OMP_NUM_THREADS": "1"}
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
    assert job.returncode != 0 and time.time() - t0 < 30, err[-3000:]
    # rank 0 either meets the dead peer in a collective or is stopped by torchrun first
    # (whichever comes first under load); both say how to go on
    assert "lost contact with the other ranks" in err or "was stopped by SIGTERM" in err, err
    assert "the job stops. Continue from the last checkpoint" in err and "--resume" in err, err
    assert "rank      : 1" in err, err[-3000:]  # torchrun's report names the killed rank

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


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds ranks through /proc")
def test_stopped_rank_says_how_to_resume(tmp_path: Path) -> None:
    """What torchrun does to the surviving ranks once one has failed: SIGTERM. The rank ends
    with status 1, names the signal and the way on; the last checkpoint is whole."""
    out = tmp_path / "run"
    job = _torchrun(out, "--set", "iterations=100000")
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_00000005.json").exists():
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint at step 5 within 120 s"
        time.sleep(0.1)
    os.kill(_rank_pid(job.pid, 0), signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0, err[-3000:]
    assert "rank 0 of 2 was stopped by SIGTERM" in err and "--resume" in err, err[-3000:]
    assert load_checkpoint(latest_checkpoint(out / "checkpoints")).step >= 5


# few-shot trainers: whole episodes split over the ranks (3 and 5 over 2: uneven shards)
SCRIPTS = ("Armenian", "Hebrew", "Tifinagh", "Lao", "Old Italic", "Nko", "Ogham", "Coptic", "Lisu")
GLYPHS = {"image_size": 16, "samples_per_class": 8, "scripts": SCRIPTS, "device": "cpu"}
SCHEDULE = {"iterations": 3, "eval_every": 0, "checkpoint_every": 0, "log_every": 1}
EPISODIC = {"n_way": 5, "train_way": 5, "q_queries": 3, "hidden": 8, "eval_episodes": 4}
FEWSHOT = [  # (run name, preset, values)
    ("protonet", "protonet-glyphs", {**EPISODIC, "meta_batch": 3}),
    ("siamese", "siamese-glyphs", {**EPISODIC, "meta_batch": 3}),
    # one episode per update: its 20 images are split over the ranks (synchronised BatchNorm)
    ("protonet-1", "protonet-glyphs", {**EPISODIC, "meta_batch": 1}),
    ("siamese-1", "siamese-glyphs", {**EPISODIC, "meta_batch": 1}),
    ("mann", "mann-glyphs", {"n_way": 3, "length": 12, "batch_size": 5, "input_size": 8}),
]
FEWSHOT[-1][2].update(hidden=16, slots=12, width=8, heads=2, eval_episodes=4)
FEWSHOT_COMPARED = ("loss", "accuracy", "instance_1", "instance_2", "test_accuracy")


def _fewshot_values(values: dict, glyph_root: str) -> dict:
    return {**GLYPHS, **SCHEDULE, **values, "data_root": glyph_root}


def _fewshot_worker(rank: int, world: int, port: int, root: str, glyph_root: str) -> None:
    _join(rank, world, port)
    try:
        for name, preset, values in FEWSHOT:
            out = Path(root) / f"dist-{name}" if rank == 0 else None
            _train(preset, _fewshot_values(values, glyph_root), out)
    finally:
        collectives.shutdown()


def test_two_ranks_equal_one_process_fewshot(tmp_path: Path) -> None:
    """ProtoNet, Siamese and MANN: 2 ranks splitting the episodes (or, with meta_batch = 1, the
    images of the episode) end with the parameters (and the training metrics) of one process on
    the same seed; a MANN sequence is never split."""
    from meta_rl.config import ConfigError
    from meta_rl.fewshot.glyphs import load_glyphs
    from meta_rl.fewshot.metric import episode_shard

    with pytest.raises(ConfigError, match="batch_size = 1 episodes cannot be split over 2 ranks"):
        episode_shard(collectives.Context(0, 2), 1, "batch_size")
    assert episode_shard(collectives.Context(1, 2), 3, "meta_batch").slice == slice(2, 3)

    torch.set_num_threads(1)
    glyph_root = str(tmp_path / "glyphs")
    load_glyphs(root=glyph_root, image_size=16, samples_per_class=8, scripts=list(SCRIPTS))
    for name, preset, values in FEWSHOT:
        _train(preset, _fewshot_values(values, glyph_root), tmp_path / f"single-{name}")
    mp.spawn(
        _fewshot_worker, args=(2, _free_port(), str(tmp_path), glyph_root), nprocs=2, join=True
    )
    for name, _, _ in FEWSHOT:
        a, b = tmp_path / f"single-{name}", tmp_path / f"dist-{name}"
        ma, mb = read_metrics(a), read_metrics(b)
        assert [r["step"] for r in ma] == [r["step"] for r in mb] == [1, 2, 3]
        for ra, rb in zip(ma, mb, strict=True):
            for key in FEWSHOT_COMPARED:
                if key in ra:
                    # rel 1e-3: the ranks sum the same terms in another order (float32);
                    # Adam's normalised steps can grow that 1e-7 to ~2e-4 by step 3 (protonet-1
                    # with today's glyph renderings: 1e-7 apart at steps 1-2, 2e-4 at step 3)
                    assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-5, nan_ok=True), (
                        name,
                        key,
                        ra["step"],
                    )
    _assert_same_runs(tmp_path / "single-mann", tmp_path / "dist-mann")
    for name in ("protonet", "siamese", "protonet-1", "siamese-1"):
        _assert_same_encoders(tmp_path / f"single-{name}", tmp_path / f"dist-{name}", glyph_root)


def _assert_same_encoders(a: Path, b: Path, glyph_root: str) -> None:
    """Conv-4 encoders: every weight (conv kernels, BatchNorm scales) equal to 1e-5, and the
    logits on test episodes equal to 1e-2. Biases are left out: a conv bias ahead of a
    BatchNorm has an exactly zero gradient (the norm removes it) and ProtoNet's distances do
    not move with the last BatchNorm's shift in channels whose ReLU is on for every image, so
    those gradients are rounding noise (~1e-7) that Adam, dividing by their root mean square,
    turns into steps of up to ~lr (1e-3): they differ between any two summation orders, in one
    process too, and move test logits where a ReLU turns off by ~1e-3 per step.
    test_sharded_episodes_sum_to_the_batch_gradient checks the gradients themselves."""
    from meta_rl.fewshot.data import EpisodeSampler
    from meta_rl.fewshot.metric import ProtoNet, ProtoNetConfig, SiameseNet, glyph_splits

    ta, tb = _final(a), _final(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        if k.endswith(".weight"):
            torch.testing.assert_close(ta[k], tb[k], atol=1e-5, rtol=1e-5, msg=f"param {k}")
    values = _fewshot_values(EPISODIC, glyph_root)
    test = EpisodeSampler(glyph_splits(ProtoNetConfig(**values))["test"], 5, 1, 3, seed=0)
    xs, ys, xq, _ = test.sample(4)
    logits = []
    for tensors in (ta, tb):
        net = (ProtoNet if "protonet" in a.name else SiameseNet)(1, 8, 16)
        net.load_state_dict(tensors)
        with torch.no_grad():
            logits.append(net(xs, ys, xq, 5))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-2, rtol=1e-2)


def test_sharded_episodes_sum_to_the_batch_gradient() -> None:
    """The Conv-4 normalises per episode (vmap over episodes), so shards of a meta-batch, each
    weighted by its share, sum to the whole batch's ProtoNet gradient (biases included) and
    embed each episode as the whole batch does: no synchronised BatchNorm is needed."""
    import torch.nn.functional as F

    from meta_rl.fewshot.metric import ProtoNet, _embed_episodes
    from meta_rl.fewshot.models import seeded

    torch.set_num_threads(1)
    with seeded(0):
        net = ProtoNet(1, 8, 16)
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(5, 5, 1, 16, 16, generator=g) * torch.arange(1.0, 6.0).view(5, 1, 1, 1, 1)
    xq = torch.rand(5, 10, 1, 16, 16, generator=g)
    ys, yq = torch.arange(5).repeat(5, 1), torch.arange(5).repeat_interleave(2).repeat(5, 1)

    def grads(shard: collectives.Shard) -> dict[str, torch.Tensor]:
        net.zero_grad()
        b = shard.take((xs, ys, xq, yq))
        loss = F.cross_entropy(net(b[0], b[1], b[2], 5).flatten(0, 1), b[3].flatten())
        (loss * shard.weight).backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    whole = grads(collectives.Context().shard(5))
    parts = [grads(collectives.Context(r, 2).shard(5)) for r in range(2)]
    # float32 sums in another order: 1e-5 of the largest gradient entry (a conv bias ahead of a
    # BatchNorm has a zero gradient up to rounding: it is held to that absolute bound only)
    tol = 1e-5 * max(float(v.abs().max()) for v in whole.values())
    for k, v in whole.items():
        torch.testing.assert_close(parts[0][k] + parts[1][k], v, atol=tol, rtol=0, msg=k)
    zs, zq = _embed_episodes(net.encoder, xs, xq)
    zs2, zq2 = _embed_episodes(net.encoder, xs[3:], xq[3:])
    torch.testing.assert_close(zs2, zs[3:], atol=0, rtol=0)
    torch.testing.assert_close(zq2, zq[3:], atol=0, rtol=0)
    # without a process group the synchronised BatchNorm is the plain one (same parameters)
    from meta_rl.fewshot.models import SyncBatchNorm2d, sync_batchnorm_

    synced = sync_batchnorm_(copy.deepcopy(net))
    assert sum(isinstance(m, SyncBatchNorm2d) for m in synced.modules()) == 4
    assert synced.state_dict().keys() == net.state_dict().keys()
    torch.testing.assert_close(synced(xs, ys, xq, 5), net(xs, ys, xq, 5), atol=0, rtol=0)
