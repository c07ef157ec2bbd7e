"""Benchmark: MAML meta-training iterations/s on sinusoid regression, ours vs peers.

Work per iteration (identical for every contender): MLP 1-40-40-1, a meta-batch of sinusoid
tasks with 10 support + 10 query points, one second-order inner SGD step (lr 0.01), the mean
query MSE backpropagated to the meta-params, one Adam step. Data batches are drawn before
timing (a pool cycled by all contenders), so sampling is not timed.

Contenders (one process, same threads, same data, same initial weights):
- ours: the trainer's own step (``FewShotTask.meta_loss`` of meta_rl.fewshot.gradient: the
  batched MLP with factored inner steps, meta_rl.core.maml_loss);
- higher: ``higher.innerloop_ctx`` per task (its documented MAML pattern);
- torchopt: ``torchopt.MetaSGD`` per task with extract/recover_state_dict;
- naive loop: per task ``torch.autograd.grad(create_graph=True)`` + ``functional_call``
  (learn2learn's pattern).
Before timing, every contender's meta-gradient on the same batch is checked against ours.
Process-wide settings apply to all contenders alike: one thread (``--threads``), the glibc
allocator setting of ``meta_rl.core.tune_cpu_allocator`` (``--no-tune-allocator`` to drop it),
and the outer optimizer (``torch.optim.Adam(fused=True)``, as the trainer uses).

    python scripts/bench_meta_core.py [--meta-batch 25 200] [--seconds 2] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from meta_rl.core import tune_cpu_allocator
from meta_rl.fewshot.gradient import GradientFewShotConfig, build_task

K_SHOT, Q_QUERIES, INNER_LR, OUTER_LR = 10, 10, 0.01, 1e-3
Batch = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_setup(meta_batch: int, seed: int = 0):
    config = GradientFewShotConfig(
        task="sine",
        k_shot=K_SHOT,
        q_queries=Q_QUERIES,
        inner_lr=INNER_LR,
        eval_tasks=1,
        eval_queries=1,
        seed=seed,
    )
    gen = torch.Generator().manual_seed(seed)
    task = build_task(config, gen, torch.device("cpu"))
    pool = [task.sample(meta_batch) for _ in range(4)]
    return task, pool


# ------------------------------------------------------------------------------------------
# Contenders: each returns step(batch, compute_only=False) -> list of meta-gradients
# ------------------------------------------------------------------------------------------
def ours(task, init):
    model = task.model
    with torch.no_grad():
        for p, v in zip(model.parameters(), init, strict=True):
            p.copy_(v)
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=OUTER_LR, fused=True)

    def step(batch: Batch, compute_only: bool = False):
        support, query = batch
        out = task.meta_loss(params, support, query, INNER_LR, 1)  # the trainer's own call
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if compute_only:
            return [p.grad.clone() for p in params.values()]
        opt.step()

    return step


def _fresh_model(task, init):
    model = type(task.model)(task.model.sizes)
    with torch.no_grad():
        for p, v in zip(model.parameters(), init, strict=True):
            p.copy_(v)
    return model


def naive_loop(task, init):
    model = _fresh_model(task, init)
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=OUTER_LR, fused=True)

    def step(batch: Batch, compute_only: bool = False):
        (xs, ys), (xq, yq) = batch
        opt.zero_grad(set_to_none=True)
        tasks = xs.shape[0]
        for t in range(tasks):
            loss = F.mse_loss(functional_call(model, params, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            fast = {k: v - INNER_LR * g for (k, v), g in zip(params.items(), grads, strict=True)}
            qloss = F.mse_loss(functional_call(model, fast, (xq[t],)), yq[t]) / tasks
            qloss.backward()
        if compute_only:
            return [p.grad.clone() for p in params.values()]
        opt.step()

    return step


def higher_loop(task, init):
    import higher

    model = _fresh_model(task, init)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR, fused=True)
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)

    def step(batch: Batch, compute_only: bool = False):
        (xs, ys), (xq, yq) = batch
        opt.zero_grad(set_to_none=True)
        tasks = xs.shape[0]
        for t in range(tasks):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
                fm,
                diffopt,
            ):
                diffopt.step(F.mse_loss(fm(xs[t]), ys[t]))
                (F.mse_loss(fm(xq[t]), yq[t]) / tasks).backward()
        if compute_only:
            return [p.grad.clone() for p in model.parameters()]
        opt.step()

    return step


def torchopt_loop(task, init):
    import torchopt

    model = _fresh_model(task, init)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR, fused=True)
    inner_opt = torchopt.MetaSGD(model, lr=INNER_LR)

    def step(batch: Batch, compute_only: bool = False):
        (xs, ys), (xq, yq) = batch
        opt.zero_grad(set_to_none=True)
        tasks = xs.shape[0]
        start = torchopt.extract_state_dict(model)
        start_opt = torchopt.extract_state_dict(inner_opt)
        for t in range(tasks):
            inner_opt.step(F.mse_loss(model(xs[t]), ys[t]))
            (F.mse_loss(model(xq[t]), yq[t]) / tasks).backward()
            torchopt.recover_state_dict(model, start)
            torchopt.recover_state_dict(inner_opt, start_opt)
        if compute_only:
            return [p.grad.clone() for p in model.parameters()]
        opt.step()

    return step


PEERS: dict[str, tuple[str | None, Callable]] = {
    "higher": ("higher", higher_loop),
    "torchopt": ("torchopt", torchopt_loop),
    "naive_loop": (None, naive_loop),
}


def available_peers() -> dict[str, Callable]:
    out = {}
    for name, (module, build) in PEERS.items():
        if module is not None:
            try:
                mod = __import__(module)
            except Exception as err:  # noqa: BLE001 - report any import failure and skip
                print(f"skipping {name}: cannot import {module!r} ({type(err).__name__}: {err})")
                continue
            version = getattr(mod, "__version__", None)
            if version is None:
                from importlib.metadata import version as dist_version

                version = dist_version(module)
            VERSIONS[name] = version
        out[name] = build
    return out


VERSIONS: dict[str, str] = {"torch": torch.__version__}


def rate(
    step: Callable, pool: list[Batch], seconds: float, min_iters: int = 3, cpu: bool = False
) -> float:
    """Iterations per second of wall time, or of this process's CPU time (``cpu=True``: what a
    contender costs when other processes share the cores)."""
    clock = time.process_time if cpu else time.perf_counter
    n, t0, w0 = 0, clock(), time.perf_counter()
    while True:
        step(pool[n % len(pool)])
        n += 1
        if time.perf_counter() - w0 >= seconds and n >= min_iters:
            return n / (clock() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta-batch", type=int, nargs="+", default=[25, 200])
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per contender")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time by wall clock or by this process's CPU time (steadier on a shared machine)",
    )
    ap.add_argument(
        "--no-tune-allocator",
        action="store_true",
        help="keep glibc's default malloc settings (applies to every contender)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else tune_cpu_allocator()
    peers = available_peers()
    results: dict = {
        "versions": VERSIONS,
        "threads": args.threads,
        "clock": args.clock,
        "allocator_tuned": tuned,
        "loadavg_before": list(os.getloadavg()),
    }
    rows = []
    for mb in args.meta_batch:
        task, pool = make_setup(mb)
        init = [p.detach().clone() for p in task.model.parameters()]
        builders = {"ours": ours, **peers}
        steps = {name: build(task, init) for name, build in builders.items()}
        # same meta-gradient first (float32; per-task loops sum in a different order)
        ref = steps["ours"](pool[0], compute_only=True)
        for name, step in steps.items():
            got = step(pool[0], compute_only=True)
            err = max(
                float((a - b).abs().max() / (b.abs().max() + 1e-12))
                for a, b in zip(got, ref, strict=True)
            )
            assert err < 1e-4, f"{name}: meta-gradient differs from ours (max rel err {err:.2e})"
            results[f"max_rel_grad_err_{name}_mb{mb}"] = err
        for step in steps.values():  # warm-up
            rate(step, pool, 0.2, min_iters=2)
        samples: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                samples[name].append(rate(step, pool, args.seconds, cpu=args.clock == "cpu"))
        med = {name: statistics.median(v) for name, v in samples.items()}
        for name, v in med.items():
            results[f"{name}_it_per_s_mb{mb}"] = v
            results[f"{name}_it_per_s_rounds_mb{mb}"] = samples[name]
        fastest = max((n for n in med if n != "ours"), key=med.get, default=None)
        for name in med:
            if name != "ours":
                results[f"ratio_vs_{name}_mb{mb}"] = med["ours"] / med[name]
        if fastest is not None:
            results[f"fastest_peer_mb{mb}"] = fastest
            results[f"ratio_vs_fastest_peer_mb{mb}"] = med["ours"] / med[fastest]
        for name in med:
            ratio = "" if name == "ours" else f"{med['ours'] / med[name]:9.1f}x"
            rows.append(f"{mb:>10} {name:>12} {med[name]:12.2f} {ratio:>10}")
    results["loadavg_after"] = list(os.getloadavg())
    print(f"threads={args.threads} clock={args.clock} allocator_tuned={tuned} versions={VERSIONS}")
    print(f"load average before {results['loadavg_before']} after {results['loadavg_after']}")
    print(f"{'meta-batch':>10} {'contender':>12} {'it/s':>12} {'ours/peer':>10}")
    print("\n".join(rows))
    if args.json:
        print(json.dumps(results, indent=1, sort_keys=True))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
