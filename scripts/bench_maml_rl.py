"""Benchmark: MAML-TRPO on 2D point navigation, ours (batched, vmapped) vs the usual way, and
whole-training-loop env steps/s vs stable-baselines3 PPO.

Work per meta-iteration (the MAML paper's batch): 40 tasks x 20 episodes x 100 steps, one inner
policy-gradient step (support episodes with the meta-params, query episodes with the adapted
params), then one TRPO step on the query surrogate through the inner update (CG, KL constraint,
line search). Both contenders run the same config (``MAMLConfig`` defaults unless --set), the
same returns / linear baseline code and the same ``trpo_step``; they differ in how the tasks run
and in how the Fisher-vector products of the conjugate gradient are formed (the same matrix):

- ours: ``meta_rl.rl.maml.train`` -- all 40 x 20 rows in one torch-batched env, per-task params
  stacked, policy forward / inner step / meta-objective batched over tasks; Fisher-vector
  products in the exact Gauss-Newton form ``J^T M J v`` (``fisher_product="gauss_newton"``),
  applied as ``A J_q^T M J_q A v`` with ``A = I - lr H_support`` the (symmetric) Jacobian of
  the inner step: two support Hessian-vector products per CG iteration, written out
  (``meta_rl.rl.maml_fast``); ``x^T F x`` from CG's residual; tanh layers run as
  ``2 sigmoid(2z) - 1`` with the affine maps folded into the weights (``batched_call``);
- loop: a Python loop over tasks, each sampled through a Gymnasium ``SyncVectorEnv`` of 20
  scalar ``PointNavEnv``s, policy forward by ``functional_call`` on that task's params, the inner
  step by a per-task ``torch.autograd.grad`` (pytorch-maml-rl / learn2learn's pattern), and the
  TRPO objective summed over a loop of tasks; Fisher-vector products the usual way, by double
  backward of the KL's gradient; the policy's own ``nn.Tanh``. Both use the same Fisher
  subsample (``fisher_tasks``, ``fisher_subsample``) and the same ``trpo_step`` (CG, line
  search).

Peer for throughput: SB3 ``PPO("MlpPolicy")`` training on the same family (one PointNav env,
SB3 defaults), env steps/s of ``model.learn``. Ours: env steps (in-episode steps only) of the
whole training loop (sampling + adaptation + TRPO) per second of wall time.

    python scripts/bench_maml_rl.py [--rounds 2] [--iterations 3] [--loop-iterations 3]
                                    [--ppo-steps 4096] [--threads 1] [--set key=value ...]
                                    [--json]

Timing: after one warm-up run, ``--rounds`` rounds each time a fresh run of ours and then a
fresh run of the loop (same seed, so each round repeats the same meta-iterations), setup
included for both; load from other processes falls on both alike. The two sample different
episodes (different random streams), so their TRPO steps may accept different line-search
fractions, i.e. evaluate the objective a different number of times: the fractions and the
trial counts are printed (seed 0, iterations 1-3: 13 trials each; iteration 1 alone: ours 4,
the loop 8, which would flatter ours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import gymnasium as gym
import meta_rl_envs  # noqa: F401  (registers MetaRL/... ids)
import numpy as np
import torch
from torch.func import functional_call

from meta_rl.config import apply_overrides
from meta_rl.core import tune_cpu_allocator
from meta_rl.policies import distributions as D
from meta_rl.policies import make_mlp_policy
from meta_rl.rl import maml as maml_module
from meta_rl.rl.maml import MAMLConfig, train
from meta_rl.rl.rollout import Episodes, compute_advantages
from meta_rl.rl.trpo import KLObjective, trpo_step

ENV_ID = "MetaRL/PointNav-v0"
TRPO_SECONDS = [0.0]  # time spent inside trpo_step (both contenders), for the breakdown
TRPO_FRACTIONS: list[float] = []  # accepted line-search fractions (the work differs with them)
TINY_EVAL = {"eval_tasks": 1, "eval_episodes": 1, "eval_every": 0, "device": "cpu"}


def timed_trpo_step(*args, **kwargs):
    start = time.perf_counter()
    try:
        info = trpo_step(*args, **kwargs)
        TRPO_FRACTIONS.append(info.step_fraction)
        return info
    finally:
        TRPO_SECONDS[0] += time.perf_counter() - start


def _reset() -> None:
    TRPO_SECONDS[0] = 0.0
    TRPO_FRACTIONS.clear()


# ------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------
def run_ours(cfg: MAMLConfig, iterations: int) -> dict[str, float]:
    """Wall time of a fresh run of the trainer for ``iterations`` meta-iterations (its setup
    and a one-episode final evaluation included)."""
    maml_module.trpo_step = timed_trpo_step  # only to report the time share of the TRPO step
    _reset()
    start = time.perf_counter()
    try:
        metrics = train(apply_overrides(cfg, {**TINY_EVAL, "iterations": iterations}))
    finally:
        maml_module.trpo_step = trpo_step
    return {
        "seconds": time.perf_counter() - start,
        "trpo_seconds": TRPO_SECONDS[0],
        "env_steps": metrics["env_steps_total"],
        "iterations": iterations,
        "fractions": list(TRPO_FRACTIONS),
    }


# ------------------------------------------------------------------------------------------
# the usual way: a loop over tasks, SyncVectorEnv sampling, per-task autograd.grad
# ------------------------------------------------------------------------------------------
class LoopMAML:
    """The same MAML-TRPO iteration written task by task."""

    def __init__(self, cfg: MAMLConfig) -> None:
        self.cfg = cfg
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(ENV_ID) for _ in range(cfg.episodes_per_task)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        probe = self.envs.envs[0].unwrapped
        self.policy = make_mlp_policy(
            probe.observation_space,
            probe.action_space,
            hidden=cfg.hidden,
            activation=cfg.activation,
            init_log_std=cfg.init_log_std,
            generator=torch.Generator().manual_seed(cfg.seed + 1),
        )
        self.theta = dict(self.policy.named_parameters())
        self.space = probe.action_space
        self.task_space = probe.task_space
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.env_steps = 0

    def head(self, params, obs):
        net = {k[4:]: v for k, v in params.items() if k.startswith("net.")}
        return functional_call(self.policy.net, net, (obs,)), params["log_std"]

    @torch.no_grad()
    def sample(self, params, seed: int) -> Episodes:
        """One episode per sub-env of the current task (masked after it ends)."""
        obs, _ = self.envs.reset(seed=seed)
        alive = np.ones(self.envs.num_envs, dtype=bool)
        rec = {k: [] for k in ("obs", "act", "logp", "rew", "term", "mask")}
        for _ in range(self.cfg.horizon or probe_horizon()):
            x = torch.as_tensor(obs, dtype=torch.float32)
            mean, log_std = self.head(params, x)
            action = D.sample(self.space, mean, log_std, self.gen)
            obs, reward, terminated, truncated, _ = self.envs.step(action.numpy())
            rec["obs"].append(x)
            rec["act"].append(action)
            rec["logp"].append(D.log_prob(self.space, mean, log_std, action))
            rec["rew"].append(torch.as_tensor(reward * alive, dtype=torch.float32))
            rec["term"].append(torch.as_tensor(terminated & alive))
            rec["mask"].append(torch.as_tensor(alive, dtype=torch.float32))
            alive = alive & ~(terminated | truncated)
            if not alive.any():
                break
        ep = Episodes(
            obs=torch.stack(rec["obs"]),
            actions=torch.stack(rec["act"]),
            logp=torch.stack(rec["logp"]),
            rewards=torch.stack(rec["rew"]),
            terminated=torch.stack(rec["term"]),
            mask=torch.stack(rec["mask"]),
            num_tasks=1,
            envs_per_task=self.envs.num_envs,
        )
        self.env_steps += ep.num_steps()
        return ep

    def batch(self, ep: Episodes) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        adv = compute_advantages(
            ep, cfg.gamma, cfg.gae_lambda, cfg.baseline, cfg.normalize_advantages
        )
        flat = {
            "obs": ep.obs,
            "act": ep.actions,
            "logp": ep.logp,
            "adv": adv,
            "mask": ep.mask,
        }
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in flat.items()}

    def inner_loss(self, params, b) -> torch.Tensor:
        mean, log_std = self.head(params, b["obs"])
        logp = D.log_prob(self.space, mean, log_std, b["act"])
        ratio = torch.exp(logp - b["logp"])
        return -(ratio * b["adv"] * b["mask"]).sum() / b["mask"].sum()

    def adapt(self, params, support, create_graph: bool):
        loss = self.inner_loss(params, support)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        return {
            k: v - self.cfg.inner_lr * g for (k, v), g in zip(params.items(), grads, strict=True)
        }

    def iteration(self) -> None:
        cfg = self.cfg
        tasks = self.task_space.sample(cfg.meta_batch, self.rng, "train")
        seed = int(self.rng.integers(2**31 - 1))
        supports, queries, old_heads = [], [], []
        for task in tasks:  # ---- sampling, one task at a time ----
            for env in self.envs.envs:
                env.unwrapped.set_task(task)
            theta = {k: v.detach().requires_grad_(True) for k, v in self.theta.items()}
            support = self.batch(self.sample(theta, seed))
            adapted = {k: v.detach() for k, v in self.adapt(theta, support, False).items()}
            query = self.batch(self.sample(adapted, seed + 1))
            with torch.no_grad():
                old_heads.append(self.head(adapted, query["obs"]))
            supports.append(support)
            queries.append(query)

        def kl_of(params, query, old, rows):
            mean, log_std = self.head(params, query["obs"][rows])
            kl = D.kl(self.space, old[0][rows], old[1], mean, log_std)
            m = query["mask"][rows]
            return (kl * m).sum() / m.sum()

        k = min(cfg.fisher_tasks or cfg.meta_batch, cfg.meta_batch)
        rows = slice(None, None, cfg.fisher_subsample)
        separate_fisher = cfg.fisher == "first_order" or rows.step > 1 or k < cfg.meta_batch

        def objective(second_order):  # ---- the TRPO objective, one task at a time ----
            outer = self.theta
            losses, kls, fisher_kls = [], [], []
            for t, (support, query, old) in enumerate(
                zip(supports, queries, old_heads, strict=True)
            ):
                adapted = self.adapt(outer, support, create_graph=second_order)
                with torch.set_grad_enabled(second_order):
                    mean, log_std = self.head(adapted, query["obs"])
                    logp = D.log_prob(self.space, mean, log_std, query["act"])
                    ratio = torch.exp(logp - query["logp"])
                    m = query["mask"]
                    losses.append(-(ratio * query["adv"] * m).sum() / m.sum())
                    kls.append(kl_of(adapted, query, old, slice(None)))
                if second_order and separate_fisher and t < k:  # the KL of TRPO's metric
                    full = cfg.fisher == "full"
                    fisher_params = self.adapt(outer, support, create_graph=full)
                    fisher_kls.append(kl_of(fisher_params, query, old, rows))
            kl = torch.stack(fisher_kls if fisher_kls else kls).mean()
            return torch.stack(losses).mean(), kl

        leaves = list(self.theta.values())
        timed_trpo_step(
            leaves,
            KLObjective(objective, leaves),
            max_kl=cfg.max_kl,
            damping=cfg.cg_damping,
            cg_iters=cfg.cg_iters,
            ls_steps=cfg.ls_steps,
            ls_ratio=cfg.ls_ratio,
        )


def probe_horizon() -> int:
    return int(gym.make(ENV_ID).unwrapped.horizon)


def run_loop(cfg: MAMLConfig, iterations: int) -> dict[str, float]:
    """Wall time of a fresh loop run (its envs and policy built inside the timing, like ours)."""
    _reset()
    start = time.perf_counter()
    loop = LoopMAML(cfg)
    for _ in range(iterations):
        loop.iteration()
    return {
        "seconds": time.perf_counter() - start,
        "trpo_seconds": TRPO_SECONDS[0],
        "env_steps": loop.env_steps,
        "iterations": iterations,
        "fractions": list(TRPO_FRACTIONS),
    }


def _trials(fraction: float, ratio: float, steps: int) -> int:
    """Objective evaluations of a line search that accepted ``fraction`` (0: all rejected)."""
    return steps if fraction <= 0 else round(math.log(fraction) / math.log(ratio)) + 1


def summarize(runs: list[dict], cfg: MAMLConfig) -> dict[str, float]:
    iterations = sum(r["iterations"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    fractions = [f for r in runs for f in r["fractions"]]
    return {
        "seconds_per_iteration": seconds / iterations,
        "line_search_trials": sum(_trials(f, cfg.ls_ratio, cfg.ls_steps) for f in fractions),
        "trpo_seconds_per_iteration": sum(r["trpo_seconds"] for r in runs) / iterations,
        "env_steps_per_second": sum(r["env_steps"] for r in runs) / seconds,
        "step_fractions": fractions,
        "round_seconds_per_iteration": [r["seconds"] / r["iterations"] for r in runs],
    }


# ------------------------------------------------------------------------------------------
# SB3 PPO on the same family
# ------------------------------------------------------------------------------------------
def bench_sb3_ppo(steps: int, seed: int) -> dict[str, float]:
    from stable_baselines3 import PPO

    env = gym.make(ENV_ID)
    env.unwrapped.set_task(env.unwrapped.sample_tasks(1, seed)[0])
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=model.n_steps)  # warm-up: one rollout + one update
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=True)
    wall = time.perf_counter() - start
    return {"env_steps_per_second": model.num_timesteps / wall, "env_steps": model.num_timesteps}


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds ours / loop")
    parser.add_argument(
        "--iterations", type=int, default=3, help="meta-iterations of ours per round"
    )
    parser.add_argument(
        "--loop-iterations", type=int, default=3, help="meta-iterations of the loop per round"
    )
    parser.add_argument("--ppo-steps", type=int, default=4096, help="SB3 PPO env steps timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (all contenders)")
    parser.add_argument("--set", nargs="*", default=[], help="MAMLConfig overrides key=value")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    cfg = apply_overrides(MAMLConfig(device="cpu"), list(args.set))
    if cfg.env_id != ENV_ID or cfg.algorithm != "maml" or cfg.outer != "trpo":
        parser.error("this benchmark runs MAML-TRPO on MetaRL/PointNav-v0")

    load_start = os.getloadavg()[0]
    # one warm-up (allocator, kernels; process-wide, so the loop profits too), then rounds that
    # alternate ours and the loop so that load from other processes hits both alike
    train(apply_overrides(cfg, {**TINY_EVAL, "iterations": 1}))
    ours_runs, loop_runs = [], []
    for _ in range(args.rounds):
        ours_runs.append(run_ours(cfg, args.iterations))
        loop_runs.append(run_loop(cfg, args.loop_iterations))
    ours, loop = summarize(ours_runs, cfg), summarize(loop_runs, cfg)
    ppo = bench_sb3_ppo(args.ppo_steps, cfg.seed)
    result = {
        "work": (
            f"MAML-TRPO PointNav, {cfg.meta_batch} tasks x {cfg.episodes_per_task} episodes x "
            f"{cfg.horizon or probe_horizon()} steps, {cfg.inner_steps} inner step, "
            f"hidden {list(cfg.hidden)}, fisher {cfg.fisher}/{cfg.fisher_subsample}, "
            f"ours {cfg.fisher_product} Fisher products (A J_q^T M J_q A), loop double backward"
        ),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_1min_start": load_start,
        "load_average_1min": os.getloadavg()[0],
        "rounds": args.rounds,
        "ours_seconds_per_iteration": ours["seconds_per_iteration"],
        "loop_seconds_per_iteration": loop["seconds_per_iteration"],
        "speedup_ratio_vs_loop": loop["seconds_per_iteration"] / ours["seconds_per_iteration"],
        "ours_trpo_seconds_per_iteration": ours["trpo_seconds_per_iteration"],
        "loop_trpo_seconds_per_iteration": loop["trpo_seconds_per_iteration"],
        "sampling_adaptation_ratio_vs_loop": (
            (loop["seconds_per_iteration"] - loop["trpo_seconds_per_iteration"])
            / (ours["seconds_per_iteration"] - ours["trpo_seconds_per_iteration"])
        ),
        "trpo_ratio_vs_loop": loop["trpo_seconds_per_iteration"]
        / ours["trpo_seconds_per_iteration"],
        "ours_round_seconds_per_iteration": ours["round_seconds_per_iteration"],
        "loop_round_seconds_per_iteration": loop["round_seconds_per_iteration"],
        "ours_line_search_trials": ours["line_search_trials"],
        "loop_line_search_trials": loop["line_search_trials"],
        "ours_step_fractions": ours["step_fractions"],
        "loop_step_fractions": loop["step_fractions"],
        "ours_env_steps_per_second": ours["env_steps_per_second"],
        "loop_env_steps_per_second": loop["env_steps_per_second"],
        "ppo_env_steps_per_second": ppo["env_steps_per_second"],
        "steps_ratio_vs_ppo": ours["env_steps_per_second"] / ppo["env_steps_per_second"],
    }
    if not all(math.isfinite(v) for v in result.values() if isinstance(v, float)):
        print("non-finite timing", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["work"])
        ours_s, loop_s = result["ours_seconds_per_iteration"], result["loop_seconds_per_iteration"]
        print(
            f"per meta-iteration: ours {ours_s:.2f} s, loop {loop_s:.2f} s -> "
            f"{result['speedup_ratio_vs_loop']:.1f}x"
        )
        print(
            f"env steps/s of the training loop: ours {result['ours_env_steps_per_second']:,.0f}, "
            f"SB3 PPO {result['ppo_env_steps_per_second']:,.0f} -> "
            f"{result['steps_ratio_vs_ppo']:.1f}x"
        )
        print(
            f"  of which the TRPO step: ours {result['ours_trpo_seconds_per_iteration']:.2f} s, "
            f"loop {result['loop_trpo_seconds_per_iteration']:.2f} s "
            f"({result['trpo_ratio_vs_loop']:.1f}x); sampling + adaptation "
            f"{result['sampling_adaptation_ratio_vs_loop']:.1f}x"
        )
        fr = ", ".join(f"{f:.3g}" for f in result["ours_step_fractions"])
        fl = ", ".join(f"{f:.3g}" for f in result["loop_step_fractions"])
        print(
            f"  accepted line-search fractions: ours [{fr}] ({result['ours_line_search_trials']} "
            f"trials), loop [{fl}] ({result['loop_line_search_trials']} trials)"
        )
        print(
            f"(load average {result['load_average_1min_start']:.1f} at the start, "
            f"{result['load_average_1min']:.1f} at the end, on {result['cpus']} CPUs, "
            f"{result['threads']} torch thread(s) for every contender)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
