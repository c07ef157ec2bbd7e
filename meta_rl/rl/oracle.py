"""The task-aware upper baseline of PointNav: REINFORCE on the batched 2D navigation family
with the goal appended to the observation (no meta-learning). Small enough to be the end-to-end
check of the run machinery too: checkpoints, resume, metrics (preset ``oracle-pointnav``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, bounds

__all__ = ["OracleNavConfig", "GoalPolicy", "train_oracle_pointnav"]


@dataclass
class OracleNavConfig(BaseConfig):
    """REINFORCE on ``MetaRL/PointNav-v0`` with the goal appended to the observation."""

    iterations: int = field(default=40, metadata=bounds(ge=1))
    """policy-gradient updates (one batch of episodes each)"""
    checkpoint_every: int = field(default=10, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    eval_every: int = field(default=10, metadata=bounds(ge=0))
    """evaluate the mean action on test-split goals every this many iterations (0: at the end)"""
    tasks_per_iteration: int = field(default=8, metadata=bounds(ge=1))
    """goals sampled per iteration (train split)"""
    envs_per_task: int = field(default=4, metadata=bounds(ge=1))
    """episodes per goal per iteration"""
    horizon: int = field(default=100, metadata=bounds(ge=1))
    """episode length"""
    lr: float = field(default=0.03, metadata=bounds(gt=0))
    """Adam learning rate"""
    init_log_std: float = -3.0
    """initial log standard deviation of the Gaussian actions"""
    discount: float = field(default=0.99, metadata=bounds(ge=0, le=1))
    """discount of the reward-to-go"""
    eval_tasks: int = field(default=16, metadata=bounds(ge=1))
    """test-split goals used by evaluation (fixed by the seed)"""


class GoalPolicy(torch.nn.Module):
    """Gaussian policy: mean ``max_step * tanh(W [position, goal] / max_step + b)``."""

    def __init__(self, init_log_std: float, max_step: float, generator: torch.Generator) -> None:
        super().__init__()
        self.max_step = max_step
        self.mean = torch.nn.Linear(4, 2)
        with torch.no_grad():  # explicit generator: no global RNG in the initialisation
            self.mean.weight.copy_((torch.rand(2, 4, generator=generator) * 2 - 1) * 0.1)
            self.mean.bias.zero_()
        self.log_std = torch.nn.Parameter(torch.full((2,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.max_step * torch.tanh(self.mean(obs / self.max_step))
        return torch.distributions.Normal(mean, self.log_std.exp(), validate_args=False)


def _episode(env, policy, goals, generator, horizon, sample: bool):
    """One episode on every row; returns (log-probs [T, N], rewards [T, N], alive [T, N])."""
    obs, _ = env.reset()
    logps, rewards, alive = [], [], []
    running = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)
    for _ in range(horizon):
        dist = policy(torch.cat([obs, goals], dim=-1))
        if sample:
            noise = torch.randn(dist.loc.shape, generator=generator, device=env.device)
            action = (dist.loc + dist.scale * noise).detach()
        else:
            action = dist.loc.detach()
        logps.append(dist.log_prob(action).sum(-1))
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        alive.append(running.clone())
        running = running & ~(terminated | truncated)
    return torch.stack(logps), torch.stack(rewards), torch.stack(alive).float()


def train_oracle_pointnav(config: OracleNavConfig, run: Any = None) -> dict[str, float]:
    """REINFORCE with reward-to-go and a per-time-step mean baseline."""
    from meta_rl_envs import make_batched
    from meta_rl_envs.batched import resolve_device

    config.apply_num_threads()
    device = resolve_device(config.device)
    env = make_batched(
        "MetaRL/PointNav-v0",
        config.tasks_per_iteration,
        config.envs_per_task,
        device=str(device),
        horizon=config.horizon,
    )
    eval_env = make_batched(
        "MetaRL/PointNav-v0", config.eval_tasks, 1, device=str(device), horizon=config.horizon
    )
    task_rng = np.random.default_rng(config.seed)
    action_gen = torch.Generator(device=device).manual_seed(config.seed)
    init_gen = torch.Generator().manual_seed(config.seed + 1)
    policy = GoalPolicy(config.init_log_std, env.max_step, init_gen).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    eval_env.set_tasks(eval_env.sample_tasks(config.eval_tasks, config.seed + 2, "test"))
    eval_goals = eval_env.goal

    def checkpoint() -> loop.Saved:
        state = {
            "optimizer": optimizer.state_dict(),
            "task_rng": rng_state(task_rng),
            "action_rng": rng_state(action_gen),
        }
        return policy.state_dict(), state

    def evaluation() -> dict[str, float]:
        with torch.no_grad():
            _, rewards, alive = _episode(eval_env, policy, eval_goals, None, config.horizon, False)
        return {"eval_return": (rewards * alive).sum(0).mean().item()}

    # ---- resume ------------------------------------------------------------------------
    start = 0
    keys = ("optimizer", "task_rng", "action_rng")
    ck = loop.resume(run, collectives.context(), device, policy.state_dict(), keys)
    if ck is not None:
        policy.load_state_dict(ck.tensors)
        optimizer.load_state_dict(ck.state["optimizer"])
        set_rng_state(task_rng, ck.state["task_rng"])
        set_rng_state(action_gen, ck.state["action_rng"])
        start = ck.step

    metrics: dict[str, float] = {}
    discounts = config.discount ** torch.arange(config.horizon, device=device, dtype=torch.float)
    hint = f"Lower lr (now {config.lr})."
    with loop.progress(run, config, start, "return"):
        for it in range(start, config.iterations):
            step = it + 1
            # ---- sample a batch of goals and one episode per row ------------------------
            env.set_tasks(env.sample_tasks(config.tasks_per_iteration, task_rng, "train"))
            goals = env.goal
            logps, rewards, alive = _episode(
                env, policy, goals, action_gen, config.horizon, sample=True
            )
            rewards = rewards * alive
            # ---- REINFORCE: discounted reward-to-go minus the per-step mean ---------------
            disc = rewards * discounts[:, None]
            to_go = disc.flip(0).cumsum(0).flip(0) / discounts[:, None]
            adv = to_go - to_go.mean(dim=1, keepdim=True)
            adv = adv / (adv.std() + 1e-8)
            loss = -(logps * adv * alive).sum() / alive.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            metrics = {"return": rewards.sum(0).mean().item(), "loss": loss.item()}
            loop.end_step(
                run, config, step, metrics, policy.parameters(), evaluation, checkpoint, hint
            )
    return loop.final(metrics, evaluation)
