"""PEARL (Rakelly et al. 2019): off-policy meta-RL with probabilistic task inference.

A context encoder turns transitions ``(s, a, r)`` of a task into Gaussian factors over a latent
``z``; their product is the posterior ``q(z | c)``, pulled toward ``N(0, I)`` by a KL term
(``kl_lambda``). SAC runs on ``[s, z]`` (two Q networks, V with a target, a tanh-Gaussian actor,
``reward_scale``, ``tau``); the encoder learns from the Q loss only (``z`` is detached for V and
the actor). One iteration, top to bottom:

1. (first iteration) ``initial_steps`` steps on every train task with ``z`` from the prior;
2. ``collect_tasks`` train tasks: the task's *context buffer* is cleared and refilled with
   ``prior_steps`` steps taken with ``z ~ N(0, I)`` (into the replay buffer too), then
   ``posterior_steps`` steps with ``z`` from the posterior of that fresh context (replay buffer
   only). All collected tasks step together, one row each, in one batched env;
3. ``grad_steps`` SAC updates, each on ``meta_batch`` train tasks at once: every tensor is
   ``[tasks, batch, ...]`` and each network is called once for all tasks (no loop over tasks).
   A task's context is ``context_batch`` transitions of its context buffer.

All losses of an update are computed on the same parameters, then one backward and one Adam
step per network (rlkit steps the Q networks first and evaluates the V / actor targets with the
stepped Q networks; this one-step lag is the difference). Evaluation: on each held-out task, an
episode with ``z`` from the prior, then one episode after another with ``z`` sampled from the
posterior of all transitions so far (:func:`explore`).

Replay and context buffers are part of the checkpoint (safetensors), so a resumed run continues
with exactly the numbers of an uninterrupted one. Data-parallel (torchrun): every rank collects
the same steps (same seeds, identical buffers) and takes its shard of each update's meta-batch;
gradients are summed over ranks, so every rank keeps the same weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedTaskEnv, resolve_device
from meta_rl_envs.registry import check_id, make_env
from meta_rl_envs.stats import mean_ci95
from torch import Tensor

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, ConfigError, bounds
from meta_rl.policies.context import Belief, PEARLNets, gaussian_kl
from meta_rl.rl.replay import TaskBuffers

__all__ = [
    "Belief",
    "Exploration",
    "PEARLConfig",
    "TaskBuffers",
    "collect",
    "explore",
    "losses",
    "make_env_for",
    "make_nets",
    "train",
    "update",
    "update_per_task_loop",
]


@dataclass
class PEARLConfig(BaseConfig):
    """PEARL: context encoder + SAC on [s, z], batched over the meta-batch of tasks."""

    env_id: str = "MetaRL/SparsePoint-v0"
    """registered family id with Box actions (batched twin or Gymnasium-only)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the family (e.g. {"horizon": 20})"""
    env_backend: Literal["auto", "batched", "vector"] = "auto"
    """"auto": the family's torch twin when it has one, else Gymnasium envs (VectorTaskEnv)"""
    train_tasks: int = field(default=100, metadata=bounds(ge=1))
    """the fixed set of meta-training tasks (train split, drawn from the seed)"""
    latent_size: int = field(default=5, metadata=bounds(ge=1))
    """dimension of z"""
    hidden: int = field(default=300, metadata=bounds(ge=1))
    """width of the 3 hidden layers of Q1, Q2, V and the actor"""
    encoder_hidden: int = field(default=200, metadata=bounds(ge=1))
    """width of the encoder's 3 hidden layers"""
    use_next_obs: bool = False
    """the encoder sees (s, a, r, s') instead of (s, a, r)"""
    use_encoder: bool = True
    """False (an ablation): z is always drawn from the prior; nothing infers the task"""
    kl_lambda: float = field(default=0.1, metadata=bounds(ge=0))
    """weight of KL(q(z|c) || N(0, I)), summed over the meta-batch's tasks (0: no KL term)"""
    critic_reward: str = "reward"
    """reward the critic learns from: "reward" (the env's) or the name of a per-step info entry
    of the family's torch twin (e.g. "dense_reward" of the sparse point robot, PEARL's setting;
    Gymnasium-only families pass no info entries); the encoder always sees the env's reward"""
    reward_scale: float = field(default=5.0, metadata=bounds(gt=0))
    """SAC reward scale"""
    gamma: float = field(default=0.99, metadata=bounds(ge=0, le=1))
    """discount"""
    tau: float = field(default=0.005, metadata=bounds(gt=0, le=1))
    """soft update rate of the target V"""
    lr: float = field(default=3e-4, metadata=bounds(gt=0))
    """Adam learning rate of Q, V and the actor"""
    context_lr: float = field(default=3e-4, metadata=bounds(gt=0))
    """Adam learning rate of the encoder"""
    policy_reg: float = field(default=1e-3, metadata=bounds(ge=0))
    """weight of the actor's mean^2 and log_std^2 regularisers"""
    meta_batch: int = field(default=16, metadata=bounds(ge=1))
    """tasks per gradient step"""
    batch_size: int = field(default=256, metadata=bounds(ge=1))
    """SAC transitions per task per gradient step"""
    context_batch: int = field(default=100, metadata=bounds(ge=1))
    """context transitions per task per gradient step"""
    grad_steps: int = field(default=2000, metadata=bounds(ge=1))
    """gradient steps per iteration"""
    initial_steps: int = field(default=2000, metadata=bounds(ge=1))
    """steps per train task with z from the prior before the first update"""
    collect_tasks: int = field(default=5, metadata=bounds(ge=1))
    """train tasks whose buffers are refreshed each iteration"""
    prior_steps: int = field(default=400, metadata=bounds(ge=1))
    """steps per collected task with z ~ prior (context and replay buffers)"""
    posterior_steps: int = field(default=600, metadata=bounds(ge=0))
    """steps per collected task with z from the posterior (replay buffer only)"""
    replay_size: int = field(default=100_000, metadata=bounds(ge=1))
    """replay buffer capacity per train task (steps; oldest overwritten)"""
    iterations: int = field(default=500, metadata=bounds(ge=1))
    """PEARL iterations"""
    eval_every: int = field(default=10, metadata=bounds(ge=0))
    """evaluate every this many iterations (0: only at the end)"""
    eval_tasks: int = field(default=30, metadata=bounds(ge=2))
    """held-out tasks of an evaluation (fixed by the seed)"""
    eval_episodes: int = field(default=3, metadata=bounds(ge=1))
    """episodes per held-out task: the first with z from the prior, each next one with z from
    the posterior of all transitions so far"""
    eval_split: Literal["train", "test", "ood"] = "test"
    """split of the held-out tasks"""
    eval_deterministic: bool = True
    """evaluate with the actor's mode (z is still sampled from the posterior, as PEARL does)"""
    checkpoint_every: int = field(default=10, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    log_every: int = field(default=1, metadata=bounds(ge=1))
    """write metrics every this many iterations"""

    def check(self) -> None:
        if self.meta_batch > self.train_tasks:
            raise ConfigError(
                f"meta_batch = {self.meta_batch} is more than train_tasks = {self.train_tasks}"
            )
        if self.collect_tasks > self.train_tasks:
            raise ConfigError(
                f"collect_tasks = {self.collect_tasks} is more than train_tasks = "
                f"{self.train_tasks}"
            )
        if self.prior_steps > self.replay_size or self.initial_steps > self.replay_size:
            raise ConfigError(
                f"replay_size = {self.replay_size} must hold prior_steps = {self.prior_steps} "
                f"and initial_steps = {self.initial_steps}"
            )


# --------------------------------------------------------------------------------------------
# Envs, networks, buffers
# --------------------------------------------------------------------------------------------
def make_env_for(config: PEARLConfig, num_tasks: int, device: str | torch.device) -> BatchedTaskEnv:
    """``num_tasks`` rows (one per task) of the config's family."""
    kwargs = check_id(config.env_id).trainer_kwargs(config.env_kwargs)
    env = make_env(config.env_id, num_tasks, 1, str(device), config.env_backend, **kwargs)
    if not isinstance(env.single_action_space, gym.spaces.Box):
        raise ConfigError(
            f"env_id = {config.env_id!r} has action space {env.single_action_space}; PEARL's "
            "tanh-Gaussian actor needs a Box"
        )
    return env


def make_nets(config: PEARLConfig, env: BatchedTaskEnv, seed: int) -> PEARLNets:
    """PEARL's networks for ``env``'s spaces, initialised from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = PEARLNets(
            int(env.single_observation_space.shape[0]),
            int(env.single_action_space.shape[0]),
            config.latent_size,
            config.hidden,
            config.encoder_hidden,
            config.use_next_obs,
        )
    return nets.to(env.device)


def context_rows(buffers: TaskBuffers, rows: Tensor, config: PEARLConfig) -> Tensor:
    return buffers.context(rows, config.use_next_obs)


def posterior(
    nets: PEARLNets, config: PEARLConfig, context: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``q(z | context)`` per task (the prior without an encoder): ``(mean, var) [..., L]``."""
    if not config.use_encoder:
        shape = (*context.shape[:-2], config.latent_size)
        return context.new_zeros(shape), context.new_ones(shape)
    return nets.encoder.posterior(context, mask)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
class Scaler:
    """Actions in ``[-1, 1]`` <-> the env's Box bounds."""

    def __init__(self, space: gym.spaces.Box, device) -> None:
        self.low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
        self.high = torch.as_tensor(space.high, dtype=torch.float32, device=device)

    def __call__(self, a: Tensor) -> Tensor:
        return self.low + (a + 1.0) * 0.5 * (self.high - self.low)


def _critic_reward(config: PEARLConfig, reward: Tensor, info: dict[str, Any]) -> Tensor:
    if config.critic_reward == "reward":
        return reward
    if config.critic_reward not in info:
        raise ConfigError(
            f"critic_reward = {config.critic_reward!r} is not in the step info of "
            f"{config.env_id!r} (it has {sorted(info)}; envs without a torch twin pass no info "
            "entries); use 'reward'"
        )
    return info[config.critic_reward].to(reward.dtype)


@torch.no_grad()
def collect(
    env: BatchedTaskEnv,
    nets: PEARLNets,
    config: PEARLConfig,
    steps: int,
    z_mean: Tensor,
    z_var: Tensor,
    generator: torch.Generator,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """``steps`` steps on every row of ``env`` (tasks set), acting with ``z ~ N(z_mean, z_var)``
    (``[R, L]``), a new draw at every episode start. Returns the transitions ``[steps, R,
    width]`` (rows of :class:`TaskBuffers`) and the return of every finished episode ``[E]``."""
    scale = Scaler(env.single_action_space, env.device)
    obs, _ = env.reset(seed=seed)
    R, L = env.num_envs, z_mean.shape[-1]
    z = z_mean + z_var.sqrt() * torch.randn((R, L), generator=generator, device=env.device)
    act_dim = int(env.single_action_space.shape[0])
    rows, finished = [], []
    running = torch.zeros(R, device=env.device)
    for _ in range(steps):
        eps = torch.randn((R, act_dim), generator=generator, device=env.device)
        a = nets.act(obs.float(), z, eps)
        next_obs, reward, term, trunc, info = env.step(scale(a))
        reward = reward.float()
        crew = _critic_reward(config, reward, info)
        final = info["final_obs"].float()
        rows.append(
            torch.cat(
                [obs.float(), a, reward[:, None], crew[:, None], final, term.float()[:, None]], -1
            )
        )
        running += reward
        done = term | trunc
        finished.append(torch.where(done, running, torch.full_like(running, math.nan)))
        running = torch.where(done, torch.zeros_like(running), running)
        fresh = z_mean + z_var.sqrt() * torch.randn((R, L), generator=generator, device=env.device)
        z = torch.where(done[:, None], fresh, z)
        obs = next_obs
    ends = torch.stack(finished)
    return torch.stack(rows), ends[~torch.isnan(ends)]


@dataclass
class Exploration:
    """Episodes 1..E on each task: the first with z from the prior, each next one with z from
    the posterior of all earlier transitions of the task."""

    returns: Tensor
    """[E, T] return of each episode"""
    lengths: Tensor
    """[E, T] env steps of each episode"""
    success: Tensor | None
    """[E, T] success of each episode (None: the family reports none)"""
    z_mean: Tensor
    """[T, L] posterior mean after all episodes"""
    z_var: Tensor
    """[T, L] posterior variance after all episodes"""
    context: Tensor
    """[T, E * H, D] transitions seen (masked by ``mask``)"""
    mask: Tensor


@torch.no_grad()
def explore(
    env: BatchedTaskEnv,
    nets: PEARLNets,
    config: PEARLConfig,
    episodes: int,
    generator: torch.Generator,
    seed: int,
    deterministic: bool = True,
) -> Exploration:
    """PEARL's test-time protocol on every row of ``env`` (one row per task, tasks set): see
    :class:`Exploration`. ``deterministic``: act with the actor's mode (z is sampled)."""
    scale = Scaler(env.single_action_space, env.device)
    T, H, dev = env.num_envs, int(env.horizon), env.device
    L, act_dim = config.latent_size, int(env.single_action_space.shape[0])
    obs_dim = int(env.single_observation_space.shape[0])
    buf = TaskBuffers(T, 1, obs_dim, act_dim, dev)  # for its row layout only
    ctx = torch.zeros(T, 0, nets.context_dim, device=dev)
    mask = torch.zeros(T, 0, device=dev)
    mean, var = torch.zeros(T, L, device=dev), torch.ones(T, L, device=dev)
    returns, lengths, success = [], [], []
    for e in range(episodes):
        z = mean + var.sqrt() * torch.randn((T, L), generator=generator, device=dev)
        obs, _ = env.reset(seed=seed + e)
        alive = torch.ones(T, dtype=torch.bool, device=dev)
        ret, n = torch.zeros(T, device=dev), torch.zeros(T, device=dev)
        rows, live = [], []
        for t in range(H):
            eps = (
                None
                if deterministic
                else torch.randn((T, act_dim), generator=generator, device=dev)
            )
            a = nets.act(obs.float(), z, eps)
            next_obs, reward, term, trunc, info = env.step(scale(a))
            row = torch.cat(
                [
                    obs.float(),
                    a,
                    reward.float()[:, None],
                    reward.float()[:, None],
                    info["final_obs"].float(),
                    term.float()[:, None],
                ],
                -1,
            )
            rows.append(row)
            live.append(alive.float())
            ret += reward.float() * alive
            n += alive.float()
            alive = alive & ~(term | trunc)
            obs = next_obs
            if t % 16 == 15 and not bool(alive.any()):
                break
        returns.append(ret)
        lengths.append(n)
        s = env.task_success()
        success.append(None if s is None else torch.as_tensor(s, device=dev))
        ctx = torch.cat([ctx, context_rows(buf, torch.stack(rows, 1), config)], 1)
        mask = torch.cat([mask, torch.stack(live, 1)], 1)
        mean, var = posterior(nets, config, ctx, mask)
    succ = None if any(s is None for s in success) else torch.stack(success)
    return Exploration(torch.stack(returns), torch.stack(lengths), succ, mean, var, ctx, mask)


# --------------------------------------------------------------------------------------------
# The update, batched over the meta-batch of tasks
# --------------------------------------------------------------------------------------------
@dataclass
class Noise:
    """The random numbers of one update: ``z_eps [T, L]``, ``act_eps [T, B, A]``."""

    z_eps: Tensor
    act_eps: Tensor


def losses(
    nets: PEARLNets, config: PEARLConfig, batch: dict[str, Tensor], context: Tensor, noise: Noise
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """PEARL's losses on ``T`` tasks at once (``batch`` entries ``[T, B, ...]``, ``context
    [T, C, D]``): ``(mean part, kl part, parts)``. The mean part averages over all ``T * B``
    transitions (Q, V and actor losses); the kl part is ``kl_lambda`` times the KL summed over
    tasks. Gradients reach each network only from its own loss (the Q networks' params are
    held fixed inside the V target and the actor loss; z is detached for V and the actor)."""
    obs, act = batch["obs"], batch["act"]
    B = obs.shape[1]
    mean, var = posterior(nets, config, context)
    z_task = mean + var.sqrt() * noise.z_eps  # [T, L], differentiable (encoder <- Q loss)
    z = z_task[:, None, :].expand(-1, B, -1)
    zd = z.detach()
    # Q loss (the encoder learns through z)
    q_in = torch.cat([obs, act, z], -1)
    q1, q2 = nets.q1(q_in).squeeze(-1), nets.q2(q_in).squeeze(-1)
    with torch.no_grad():
        v_next = nets.v_target(torch.cat([batch["next"], zd], -1)).squeeze(-1)
        target = config.reward_scale * batch["crew"] + (1.0 - batch["term"]) * config.gamma * v_next
    qf_loss = (q1 - target).square().mean() + (q2 - target).square().mean()
    # actor sample; V target and actor loss through Q networks with fixed params
    new_a, logp, a_mean, a_log_std = nets.actor(torch.cat([obs, zd], -1), noise.act_eps)
    qa_in = torch.cat([obs, new_a, zd], -1)
    qa = torch.minimum(_frozen(nets.q1, qa_in), _frozen(nets.q2, qa_in)).squeeze(-1)
    v = nets.v(torch.cat([obs, zd], -1)).squeeze(-1)
    vf_loss = 0.5 * (v - (qa - logp).detach()).square().mean()
    reg = config.policy_reg * (a_mean.square().mean() + a_log_std.square().mean())
    policy_loss = (logp - qa).mean() + reg
    kl = gaussian_kl(mean, var).sum() if config.use_encoder else mean.new_zeros(())
    parts = {
        "qf_loss": qf_loss,
        "vf_loss": vf_loss,
        "policy_loss": policy_loss,
        "kl": kl,
        "z_var": var.mean(),
        "q": q1.mean(),
        "log_pi": logp.mean(),
    }
    return qf_loss + vf_loss + policy_loss, config.kl_lambda * kl, parts


def _frozen(net: torch.nn.Sequential, x: Tensor) -> Tensor:
    """``net(x)`` with its parameters held fixed (gradients reach ``x`` only)."""
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            x = torch.nn.functional.linear(x, layer.weight.detach(), layer.bias.detach())
        else:
            x = layer(x)
    return x


def draw(
    replay: TaskBuffers,
    contexts: TaskBuffers,
    config: PEARLConfig,
    tasks: Tensor,
    act_dim: int,
    generator: torch.Generator,
) -> tuple[dict[str, Tensor], Tensor, Noise]:
    """One update's data for ``tasks``: SAC batch, context, noise."""
    batch = replay.split(replay.sample(tasks, config.batch_size, generator))
    context = context_rows(
        contexts, contexts.sample(tasks, config.context_batch, generator), config
    )
    dev = replay.size.device
    T = len(tasks)
    z_eps = torch.randn((T, config.latent_size), generator=generator, device=dev)
    act_eps = torch.randn((T, config.batch_size, act_dim), generator=generator, device=dev)
    return batch, context, Noise(z_eps, act_eps)


def update(
    nets: PEARLNets,
    optimizer: torch.optim.Optimizer,
    config: PEARLConfig,
    batch: dict[str, Tensor],
    context: Tensor,
    noise: Noise,
    weight: float = 1.0,
    dist: collectives.Context | None = None,
) -> dict[str, Tensor]:
    """One gradient step on all tasks of the batch at once (``weight``: this rank's share of
    the meta-batch; gradients are summed over ranks), then the soft target update."""
    mean_part, kl_part, parts = losses(nets, config, batch, context, noise)
    optimizer.zero_grad(set_to_none=True)
    (mean_part * weight + kl_part).backward()
    if dist is not None:
        dist.all_reduce_grads(p for g in optimizer.param_groups for p in g["params"])
    optimizer.step()
    soft_update(nets, config.tau)
    return parts


def update_per_task_loop(
    nets: PEARLNets,
    optimizer: torch.optim.Optimizer,
    config: PEARLConfig,
    batch: dict[str, Tensor],
    context: Tensor,
    noise: Noise,
) -> None:
    """The same step as :func:`update`, task by task (a Python loop calling every network once
    per task, gradients accumulated): the plain version the equality test and
    ``scripts/bench_pearl.py`` compare against."""
    T = context.shape[0]
    optimizer.zero_grad(set_to_none=True)
    for t in range(T):
        one = {k: v[t : t + 1] for k, v in batch.items()}
        mean_part, kl_part, _ = losses(
            nets,
            config,
            one,
            context[t : t + 1],
            Noise(noise.z_eps[t : t + 1], noise.act_eps[t : t + 1]),
        )
        (mean_part / T + kl_part).backward()
    optimizer.step()
    soft_update(nets, config.tau)


@torch.no_grad()
def soft_update(nets: PEARLNets, tau: float) -> None:
    for t, s in zip(nets.v_target.parameters(), nets.v.parameters(), strict=True):
        t.mul_(1.0 - tau).add_(s, alpha=tau)


def make_optimizer(nets: PEARLNets, config: PEARLConfig) -> torch.optim.Adam:
    groups = [
        {
            "params": [
                *nets.q1.parameters(),
                *nets.q2.parameters(),
                *nets.v.parameters(),
                *nets.actor.parameters(),
            ],
            "lr": config.lr,
        },
    ]
    if config.use_encoder:
        groups.append({"params": list(nets.encoder.parameters()), "lr": config.context_lr})
    return torch.optim.Adam(groups)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def evaluation_metrics(res: Exploration) -> dict[str, float]:
    """``eval_return_ep{i}`` (and ``eval_success_ep{i}``) per episode; ``eval_return`` /
    ``eval_success``: the last episode's (after the exploration episodes)."""
    out: dict[str, float] = {}
    for i in range(res.returns.shape[0]):
        est = mean_ci95(res.returns[i])
        out[f"eval_return_ep{i + 1}"] = est.mean
        if res.success is not None:
            out[f"eval_success_ep{i + 1}"] = float(res.success[i].mean())
    last = mean_ci95(res.returns[-1])
    out["eval_return"], out["eval_ci95"] = last.mean, last.ci95
    if res.success is not None:
        out["eval_success"] = float(res.success[-1].mean())
    return out


def train(config: PEARLConfig, run=None) -> dict[str, float]:
    """PEARL meta-training (see the module docstring). ``run`` receives metrics and checkpoints;
    returns the final metrics (evaluation on ``eval_tasks`` held-out tasks included)."""
    dist = collectives.context()
    config = dist.sync_config(config)
    shard = dist.shard(config.meta_batch)  # this rank's tasks of each update
    config.apply_num_threads()
    device = resolve_device(config.device)

    # ---- envs, tasks, networks, buffers, generators --------------------------------------
    env = make_env_for(config, config.collect_tasks, device)
    tasks = env.sample_tasks(config.train_tasks, config.seed + 1, "train")
    eval_env = make_env_for(config, config.eval_tasks, device)
    eval_env.set_tasks(eval_env.sample_tasks(config.eval_tasks, config.seed + 2, config.eval_split))
    nets = make_nets(config, env, config.seed + 3)
    optimizer = make_optimizer(nets, config)
    obs_dim = int(env.single_observation_space.shape[0])
    act_dim = int(env.single_action_space.shape[0])
    replay = TaskBuffers(config.train_tasks, config.replay_size, obs_dim, act_dim, device)
    contexts = TaskBuffers(config.train_tasks, config.replay_size, obs_dim, act_dim, device)
    task_rng = np.random.default_rng(config.seed)
    env_seed_rng = np.random.default_rng(config.seed + 4)
    act_gen = torch.Generator(device=device).manual_seed(config.seed + 5)
    upd_gen = torch.Generator(device=device).manual_seed(config.seed + 6)
    L = config.latent_size
    rngs = {
        "task_rng": task_rng,
        "env_seed_rng": env_seed_rng,
        "act_rng": act_gen,
        "update_rng": upd_gen,
    }

    def checkpoint() -> loop.Saved:
        state = {k: rng_state(g) for k, g in rngs.items()}
        state.update(
            optimizer=optimizer.state_dict(),
            replay=replay.state(),
            contexts=contexts.state(),
            env_steps=env_steps,
        )
        return nets.state_dict(), state

    def evaluation() -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(config.seed + 7)
        res = explore(
            eval_env,
            nets,
            config,
            config.eval_episodes,
            gen,
            config.seed + 8,
            config.eval_deterministic,
        )
        return evaluation_metrics(res)

    def gather(ids: np.ndarray, steps: int, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        env.set_tasks([tasks[i] for i in ids])
        seed = int(env_seed_rng.integers(2**31))
        return collect(env, nets, config, steps, mean, var, act_gen, seed)

    # ---- resume --------------------------------------------------------------------------
    start, env_steps = 0, 0
    keys = (*rngs, "optimizer", "replay", "contexts", "env_steps")
    ck = loop.resume(run, dist, device, nets.state_dict(), keys)
    if ck is not None:
        nets.load_state_dict(ck.tensors)
        optimizer.load_state_dict(ck.state["optimizer"])
        for k, g in rngs.items():
            set_rng_state(g, ck.state[k])
        replay.load(ck.state["replay"])
        contexts.load(ck.state["contexts"])
        start, env_steps = ck.step, int(ck.state["env_steps"])
    dist.broadcast_(nets.state_dict().values())

    metrics: dict[str, float] = {}
    R = config.collect_tasks
    prior = (torch.zeros(R, L, device=device), torch.ones(R, L, device=device))
    hint = f"Lower lr (now {config.lr}) or reward_scale (now {config.reward_scale})."
    sample_time = update_time = 0.0
    with loop.progress(run, config, start, "eval_return"):
        for it in range(start, config.iterations):
            step = it + 1
            t0 = time.perf_counter()
            # ---- 1. first iteration: prior steps on every train task ----------------------
            if it == 0:
                for lo in range(0, config.train_tasks, R):
                    ids = np.arange(lo, lo + R) % config.train_tasks
                    rows, _ = gather(ids, config.initial_steps, *prior)
                    idx = torch.as_tensor(ids, device=device)
                    keep = slice(0, min(R, config.train_tasks - lo))
                    replay.add(idx[keep], rows[:, keep])
                    contexts.add(idx[keep], rows[:, keep])
                    env_steps += config.initial_steps * (keep.stop - keep.start)
            # ---- 2. refresh context (prior steps) and replay (posterior steps) -----------
            ids = task_rng.choice(config.train_tasks, R, replace=False)
            idx = torch.as_tensor(ids, device=device)
            rows, _ = gather(ids, config.prior_steps, *prior)
            contexts.clear(idx)
            contexts.add(idx, rows)
            replay.add(idx, rows)
            env_steps += config.prior_steps * R
            train_returns = torch.zeros(0, device=device)
            if config.posterior_steps:
                with torch.no_grad():
                    ctx = context_rows(
                        contexts, contexts.sample(idx, config.context_batch, act_gen), config
                    )
                    post = posterior(nets, config, ctx)
                rows, train_returns = gather(ids, config.posterior_steps, *post)
                replay.add(idx, rows)
                env_steps += config.posterior_steps * R
            t1 = time.perf_counter()
            # ---- 3. gradient steps, all tasks of the meta-batch at once -------------------
            for _ in range(config.grad_steps):
                chosen = torch.randperm(config.train_tasks, generator=upd_gen, device=device)[
                    : config.meta_batch
                ]
                batch, context, noise = draw(replay, contexts, config, chosen, act_dim, upd_gen)
                batch, context = shard.take(batch), shard.take(context)
                noise = Noise(shard.take(noise.z_eps), shard.take(noise.act_eps))
                parts = update(nets, optimizer, config, batch, context, noise, shard.weight, dist)
            t2 = time.perf_counter()
            sample_time += t1 - t0
            update_time += t2 - t1
            # ---- metrics, then evaluation / log / checkpoint when due ---------------------
            metrics = {k: float(v.detach()) for k, v in parts.items()}
            kl = dist.weighted_sum({"kl": metrics["kl"]}, 1.0)  # a sum over the meta-batch
            metrics = dist.weighted_sum(metrics, shard.weight) | kl
            metrics["kl_loss"] = config.kl_lambda * metrics["kl"]
            if len(train_returns):
                metrics["return"] = float(train_returns.mean())
            metrics["env_steps"] = float(env_steps)
            metrics["grad_steps"] = float(step * config.grad_steps)
            metrics["sample_s"], metrics["update_s"] = sample_time, update_time
            loop.end_step(
                run, config, step, metrics, nets.parameters(), evaluation, checkpoint, hint
            )
    return loop.final(metrics, evaluation)
