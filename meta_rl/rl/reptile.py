"""Reptile for policy gradients (Nichol et al. 2018): move the meta-params toward the params
each task reaches after several inner policy-gradient steps.

One training loop (cleanrl style), all tasks of the meta-batch stepping together in one env:

1. sample ``meta_batch`` tasks;
2. ``inner_steps`` times: sample ``episodes_per_task`` episodes per task with the current
   per-task params (stacked), compute advantages (GAE over the linear feature baseline, refit per
   task), take one policy-gradient step per task through :func:`meta_rl.core.inner_update`;
3. outer step ``theta += outer_lr * mean_t(adapted_t - theta)``
   (:func:`meta_rl.core.reptile_update_`), ``outer_lr`` annealed linearly to 0 if asked.

Reptile is first order by construction: no graph through the inner loop is kept. Evaluation is
the same as MAML's: return before and after ``eval_inner_steps`` steps of size ``inner_lr``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import bounds
from meta_rl.core import expand_params, inner_update, reptile_update_
from meta_rl.rl.maml import MetaPGConfig, TaskData, build_setup
from meta_rl.rl.rollout import compute_advantages

log = logging.getLogger(__name__)

__all__ = ["ReptileConfig", "train"]


@dataclass
class ReptileConfig(MetaPGConfig):
    """Reptile with policy-gradient inner steps (defaults: 2D point navigation)."""

    inner_steps: int = field(default=5, metadata=bounds(ge=1))
    """policy-gradient steps per task before the outer step (each on fresh episodes)"""
    inner_lr: float = field(default=0.3, metadata=bounds(gt=0))
    """inner (and evaluation-time adaptation) step size"""
    outer_lr: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    """Reptile's outer step size epsilon (fraction of the way toward the adapted params)"""
    anneal: bool = True
    """anneal outer_lr linearly to 0 over the iterations"""


def train(config: ReptileConfig, run: Any = None) -> dict[str, float]:
    """Meta-train with Reptile; ``run`` (a :class:`meta_rl.runs.Run`, or None) gets metrics and
    checkpoints. Returns the final metrics."""
    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    cfg = config = dist.sync_config(config)
    setup = build_setup(cfg)
    shard = setup.shard
    device, env, learner = setup.device, setup.env, setup.learner
    task_rng, action_gen = setup.task_rng, setup.action_gen
    theta = learner.theta

    def checkpoint() -> loop.Saved:
        state = {"task_rng": rng_state(task_rng), "action_rng": rng_state(action_gen)}
        return {k: v.detach() for k, v in theta.items()}, state

    # ---- resume ------------------------------------------------------------------------
    start = 0
    ck = loop.resume(run, dist, device, theta, ("task_rng", "action_rng"))
    if ck is not None:
        with torch.no_grad():
            for k, v in theta.items():
                v.copy_(ck.tensors[k])
        set_rng_state(task_rng, ck.state["task_rng"])
        set_rng_state(action_gen, ck.state["action_rng"])
        start = ck.step
    elif run is not None:
        run.log(0, setup.evaluate())
    dist.broadcast_(theta.values())

    metrics: dict[str, float] = {}
    hint = f"Lower outer_lr (now {cfg.outer_lr}) or inner_lr (now {cfg.inner_lr})."
    with loop.progress(run, cfg, start, "return_last"):
        for it in range(start, cfg.iterations):
            step = it + 1
            t0 = time.perf_counter()
            T = shard.size  # this rank's tasks

            # ---- 1. tasks --------------------------------------------------------------
            env.set_tasks(shard.take(env.sample_tasks(cfg.meta_batch, task_rng, "train")))
            env_seed = int(task_rng.integers(2**31 - 1))

            # ---- 2. inner policy-gradient steps on fresh episodes, all tasks at once ----
            params = expand_params({k: v.detach() for k, v in theta.items()}, T)
            returns, env_steps = [], 0
            for k in range(cfg.inner_steps):
                ep = setup.sample(params, env_seed + k)
                env_steps += ep.num_steps()
                returns.append(ep.task_returns().mean().item())
                adv = compute_advantages(
                    ep, cfg.gamma, cfg.gae_lambda, cfg.baseline, cfg.normalize_advantages
                )
                data = TaskData.from_episodes(ep, adv)
                params = inner_update(
                    learner.inner_loss, params, data, cfg.inner_lr, 1, first_order=True
                )
                params = {n: v.detach() for n, v in params.items()}

            # ---- 3. outer step toward the adapted params -------------------------------
            eps = cfg.outer_lr * (1.0 - it / cfg.iterations if cfg.anneal else 1.0)
            direction = {k: (params[k] - theta[k].detach()).mean(0) for k in theta}
            direction = {k: dist.all_reduce(d * shard.weight) for k, d in direction.items()}
            reptile_update_(theta, direction, eps)

            # ---- metrics, then evaluation / log / checkpoint when due -----------------
            if dist.enabled:  # means over all tasks, steps of all ranks
                w = shard.weight
                g = dist.weighted_sum({"pre": returns[0] * w, "last": returns[-1] * w}, 1.0)
                returns = [g["pre"], g["last"]]
                env_steps = int(dist.weighted_sum({"n": env_steps}, 1.0)["n"])
            seconds = time.perf_counter() - t0
            step_norm = math.sqrt(sum(float(d.square().sum()) for d in direction.values()))
            metrics = {
                "return_pre": returns[0],
                "return_last": returns[-1],  # before the last inner step
                "outer_lr": eps,
                "direction_norm": step_norm,
                "env_steps": float(env_steps),
                "steps_per_second": env_steps / seconds,
            }
            loop.end_step(run, cfg, step, metrics, theta.values(), setup.evaluate, checkpoint, hint)
    return loop.final(metrics, setup.evaluate)
