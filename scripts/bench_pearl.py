"""PEARL: gradient steps/s of the batched update (every network called once for all tasks of
the meta-batch) vs the per-task loop (every network called once per task, gradients
accumulated, the same step; ``meta_rl.rl.pearl.update_per_task_loop``), and env steps/s of its
sampling (all collected tasks stepping in one batched env), in one process.

    python scripts/bench_pearl.py --json                 # meta-batch 16, two network sizes
    python scripts/bench_pearl.py --sizes 64:64:32 --meta-batch 16

A size is ``hidden:batch:context`` (network width, SAC transitions per task, context
transitions per task): the default measures the ``pearl-sparse-point`` preset's size and the
paper's (300 : 256 : 100). Both sides run the same update on the same data and noise (their
results agree to float precision; ``tests/test_pearl.py`` checks it in float64).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from meta_rl.core import tune_cpu_allocator
from meta_rl.rl.pearl import (
    PEARLConfig,
    collect,
    draw,
    make_env_for,
    make_nets,
    make_optimizer,
    update,
    update_per_task_loop,
)
from meta_rl.rl.replay import TaskBuffers


def steps_per_s(fn, reps: int, min_s: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < reps or time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_update(args, hidden: int, batch: int, context: int) -> dict:
    config = PEARLConfig(
        device="cpu",
        train_tasks=args.meta_batch,
        meta_batch=args.meta_batch,
        hidden=hidden,
        encoder_hidden=min(hidden, 200),
        batch_size=batch,
        context_batch=context,
        critic_reward="dense_reward",
    )
    env = make_env_for(config, 1, "cpu")
    nets = make_nets(config, env, 0)
    opt = make_optimizer(nets, config)
    obs, act = env.single_observation_space.shape[0], env.single_action_space.shape[0]
    buf = TaskBuffers(args.meta_batch, 1000, obs, act, "cpu")
    g = torch.Generator().manual_seed(0)
    buf.add(torch.arange(args.meta_batch), torch.randn(500, args.meta_batch, buf.width))
    tasks = torch.arange(args.meta_batch)
    data = draw(buf, buf, config, tasks, act, g)
    out = {"hidden": hidden, "batch_size": batch, "context_batch": context}
    for name, fn in (("batched", update), ("per_task_loop", update_per_task_loop)):
        out[f"{name}_grad_steps_per_s"] = steps_per_s(
            lambda fn=fn: fn(nets, opt, config, *data), args.reps, args.min_seconds
        )
    out["ratio"] = out["batched_grad_steps_per_s"] / out["per_task_loop_grad_steps_per_s"]
    return out


def bench_sampling(args, rows: int, backend: str) -> dict:
    config = PEARLConfig(device="cpu", critic_reward="dense_reward", env_backend=backend)
    env = make_env_for(config, rows, "cpu")
    env.set_tasks(env.sample_tasks(rows, 0, "train"))
    nets = make_nets(config, env, 0)
    g = torch.Generator().manual_seed(0)
    prior = torch.zeros(rows, config.latent_size), torch.ones(rows, config.latent_size)
    steps = args.sample_steps
    rate = steps_per_s(lambda: collect(env, nets, config, steps, *prior, g, 0), 2, args.min_seconds)
    return {"rows": rows, "backend": backend, "env_steps_per_s": rate * steps * rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meta-batch", type=int, default=16, help="tasks per gradient step")
    p.add_argument("--sizes", default="64:64:32,300:256:100", help="hidden:batch:context,...")
    p.add_argument("--reps", type=int, default=3, help="timed updates at least")
    p.add_argument("--min-seconds", type=float, default=5.0, help="time each side at least")
    p.add_argument("--sample-steps", type=int, default=400, help="steps per row per collect")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    out = {
        "meta_batch": args.meta_batch,
        "threads": args.threads,
        "update": [bench_update(args, *s) for s in sizes],
        "sampling": [
            bench_sampling(args, r, b) for r, b in ((5, "batched"), (16, "batched"), (5, "vector"))
        ],  # fmt: skip
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for u in out["update"]:
        print(
            f"update hidden {u['hidden']}, batch {u['batch_size']}, context {u['context_batch']}, "
            f"meta-batch {args.meta_batch}: batched {u['batched_grad_steps_per_s']:.2f} vs "
            f"per-task loop {u['per_task_loop_grad_steps_per_s']:.2f} grad steps/s "
            f"({u['ratio']:.2f}x)"
        )
    for s in out["sampling"]:
        print(f"sampling {s['rows']} rows ({s['backend']}): {s['env_steps_per_s']:.0f} env steps/s")


if __name__ == "__main__":
    main()
