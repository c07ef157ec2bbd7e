"""RL^2 (Duan et al. 2016): meta-learning by training a recurrent policy over whole trials.

A trial is ``episodes_per_trial`` episodes of one task; the policy sees the previous action,
reward and done flag and keeps its memory across the episode ends inside the trial
(:class:`meta_rl_envs.wrappers.BatchedTrialEnv`), so "learning to learn" is ordinary RL on the
trial. We train with PPO over whole trials:

1. sample ``tasks_per_iteration`` tasks (train split), one trial per row of a batched env;
2. roll every row through one full trial from a fresh policy state (no gradient);
3. GAE over the trial: episode ends inside a trial are *not* cut (the value of the next
   episode's first step bootstraps), only the trial end is terminal;
4. ``update_epochs`` passes of PPO over minibatches of whole trials, each trial re-unrolled from
   the initial state (full backpropagation through time).

Evaluation runs one trial on each of ``eval_tasks`` test-split tasks (fixed by the seed) and
reports the mean total reward of a trial with a 95% confidence interval, beside the family's
reference solvers (its ``FamilySpec.references``, e.g. bandits: Bayes-optimal DP, Thompson
sampling, UCB1, greedy, random) computed in the same run on the same tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import resolve_device
from meta_rl_envs.registry import check_id, make_env
from meta_rl_envs.stats import Estimate, mean_ci95
from meta_rl_envs.wrappers import BatchedTrialEnv

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, ConfigError, Headline, bounds
from meta_rl.policies import distributions as D
from meta_rl.policies.recurrent import (
    EpisodicMemoryPolicy,
    GRUPolicy,
    MemoryPolicy,
    NTMPolicy,
    RecurrentPolicy,
)
from meta_rl.rl.ppo import ppo_loss
from meta_rl.rl.returns import gae
from meta_rl.rl.rollout import shard_env

log = logging.getLogger(__name__)

__all__ = [
    "RL2Config",
    "Trials",
    "evaluate_trials",
    "make_policy",
    "make_trial_env",
    "reference_returns",
    "rollout",
    "train",
]

# fields that only one kind of policy reads: setting them for another is a config error
POLICY_ONLY_FIELDS = {
    "embed": ("gru",),
    "separate_critic": ("gru",),
    "action_reward_input": ("gru", "episodic"),
    "transition_keys": ("episodic",),
    "controller": ("memory", "ntm"),
}


@dataclass
class RL2Config(BaseConfig):
    """RL^2 with PPO over whole trials on a batched task family."""

    env_id: str = "MetaRL/Bandit-v0"
    """registered family id with a batched version (MetaRL/Bandit-v0, MetaRL/TabularMDP-v0,
    MetaRL/PointNav-v0, ...)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the batched family (e.g. {"k": 5} arms, {"horizon": 100})"""
    env_workers: int = field(default=1, metadata=bounds(ge=1))
    """processes stepping the Gymnasium envs of a family without a torch twin (e.g. MuJoCo):
    2 on a 2-core machine; the same episodes for any count"""
    episodes_per_trial: int = field(default=10, metadata=bounds(ge=1))
    """episodes of one task in a trial (RL^2's n); the policy's memory lives for a trial"""
    policy: Literal["gru", "memory", "episodic", "ntm"] = "gru"
    """"gru" (RL^2's GRU policy), "memory" (recurrent controller + external LRUA memory),
    "episodic" (GRU controller + an episodic memory written every step, read by content) or
    "ntm" (recurrent controller + a Neural Turing Machine memory: content and location
    addressing, erase/add writes)"""
    hidden_size: int = field(default=256, metadata=bounds(ge=1))
    """GRU / controller hidden units"""
    embed: int = field(default=0, metadata=bounds(ge=0))
    """GRU policy only: width of a tanh input embedding before the GRU (0: none)"""
    action_reward_input: bool = False
    """GRU/episodic policies, discrete actions: also feed the previous action's one-hot times the
    previous reward (per-action rewards; the GRU otherwise has to form this product itself)"""
    separate_critic: bool = False
    """GRU policy only: the value comes from a second GRU, so value-loss gradients do not shape
    the policy's features (RL^2 fitted a separate baseline)"""
    memory_slots: int = field(default=32, metadata=bounds(ge=1))
    """memory/episodic/ntm policies: rows of the external memory (episodic: >= the trial length
    keeps training on the fast path)"""
    memory_width: int = field(default=16, metadata=bounds(ge=1))
    """memory/episodic/ntm policies: numbers per memory row (and head, episodic)"""
    memory_heads: int = field(default=2, metadata=bounds(ge=1))
    """memory/episodic policies: read/write heads; ntm: read heads (plus one write head)"""
    transition_keys: bool = False
    """episodic policy: key each memory row by the previous step (so a row stores a transition:
    where the last action was taken -> its action, reward, outcome)"""
    controller: Literal["gru", "lstm"] = "gru"
    """memory/ntm policies: the controller cell"""
    time_feature: bool = False
    """append the trial's elapsed fraction t / max_trial_length to the policy's input (helps the
    value head of long trials; not part of RL^2's original input)"""
    init_log_std: float = -0.5
    """initial log standard deviation of Gaussian actions (Box action spaces only)"""
    iterations: int = field(default=300, metadata=bounds(ge=1))
    """PPO iterations (one batch of trials each)"""
    tasks_per_iteration: int = field(default=256, metadata=bounds(ge=1))
    """tasks (train split) sampled per iteration"""
    envs_per_task: int = field(default=1, metadata=bounds(ge=1))
    """trials per task per iteration"""
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    """Adam learning rate"""
    lr_final_fraction: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    """learning rate at the last iteration as a fraction of `lr` (linear decay; 1: constant)"""
    gamma: float = field(default=0.99, metadata=bounds(ge=0, le=1))
    """discount inside a trial (episode ends inside a trial are not cut)"""
    gae_lambda: float = field(default=0.3, metadata=bounds(ge=0, le=1))
    """GAE lambda (RL^2 used 0.3)"""
    update_epochs: int = field(default=4, metadata=bounds(ge=1))
    """PPO passes over each batch of trials"""
    minibatches: int = field(default=4, metadata=bounds(ge=1))
    """minibatches per pass (split over trials; each trial is re-unrolled whole)"""
    clip: float = field(default=0.2, metadata=bounds(gt=0))
    """PPO ratio clip"""
    vf_coef: float = field(default=0.5, metadata=bounds(ge=0))
    """weight of the value loss"""
    ent_coef: float = field(default=0.01, metadata=bounds(ge=0))
    """weight of the entropy bonus at the first iteration"""
    ent_final_fraction: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    """entropy weight at the last iteration as a fraction of `ent_coef` (linear decay)"""
    max_grad_norm: float = field(default=0.5, metadata=bounds(gt=0))
    """gradient clipping (global norm)"""
    reward_scale: float = field(default=1.0, metadata=bounds(gt=0))
    """training rewards are multiplied by this (the policy still observes raw rewards)"""
    eval_every: int = field(default=50, metadata=bounds(ge=0))
    """evaluate on `eval_split` tasks every this many iterations (0: only at the end)"""
    eval_tasks: int = field(default=1000, metadata=bounds(ge=1))
    """tasks of an evaluation (one trial each; fixed by the seed)"""
    eval_split: Literal["train", "test", "ood"] = "test"
    """task split evaluation and the references sample from ("train" for train-only families such
    as HalfCheetahDir, "ood" for families with an out-of-distribution range)"""
    eval_deterministic: bool = False
    """evaluate with the most likely action instead of sampling"""
    references: bool = True
    """compute the family's reference solvers at the end (same test-task count, same run)"""
    checkpoint_every: int = field(default=50, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    log_every: int = field(default=5, metadata=bounds(ge=1))
    """write training metrics every this many iterations"""

    def headline(self) -> Headline:
        """Mean held-out trial return (the RL^2 paper's number)."""
        return Headline("eval_return", maximize=True)

    def check(self) -> None:
        if self.tasks_per_iteration * self.envs_per_task < self.minibatches:
            raise ConfigError(
                f"minibatches = {self.minibatches} is more than the trials per iteration "
                f"(tasks_per_iteration * envs_per_task = "
                f"{self.tasks_per_iteration * self.envs_per_task})"
            )
        for name, policies in POLICY_ONLY_FIELDS.items():
            value = getattr(self, name)
            if value != getattr(type(self), name) and self.policy not in policies:
                raise ConfigError(
                    f"{name} = {value!r} applies to policy {' / '.join(map(repr, policies))} "
                    f"only; policy = {self.policy!r} would ignore it"
                )
        if self.policy == "memory" and self.memory_heads > self.memory_slots:
            raise ConfigError(
                f"memory_heads = {self.memory_heads} must be <= memory_slots = {self.memory_slots}"
            )


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def make_trial_env(
    config: RL2Config, num_tasks: int, envs_per_task: int, device: torch.device
) -> BatchedTrialEnv:
    """Trials of the config's family on ``num_tasks x envs_per_task`` rows: over its torch twin,
    or over Gymnasium envs of it when it has none (:func:`meta_rl_envs.make_env`)."""
    kwargs = check_id(config.env_id).trainer_kwargs(config.env_kwargs)
    env = make_env(
        config.env_id,
        num_tasks,
        envs_per_task,
        device=str(device),
        workers=config.env_workers,
        **kwargs,
    )
    return BatchedTrialEnv(env, config.episodes_per_trial)


def make_policy(config: RL2Config, env: BatchedTrialEnv, seed: int) -> RecurrentPolicy:
    """The config's policy for ``env``'s trial observations, initialised from ``seed``."""
    obs_size = env.single_observation_space.shape[0] + int(config.time_feature)
    action_reward = None
    if config.action_reward_input:
        if not isinstance(env.single_action_space, gym.spaces.Discrete):
            raise ConfigError(
                f"action_reward_input=True needs a Discrete action space; {config.env_id} has "
                f"{env.single_action_space}"
            )
        # trial observation: [obs, previous action one-hot, previous reward, previous done, ...]
        k = int(env.single_action_space.n)
        start = env.single_observation_space.shape[0] - k - 2
        action_reward = (start, start + k, start + k)
    with torch.random.fork_rng(devices=[]):  # seed-determined weights, global RNG untouched
        torch.manual_seed(seed)
        if config.policy == "gru":
            policy: RecurrentPolicy = GRUPolicy(
                obs_size,
                env.single_action_space,
                config.hidden_size,
                embed=config.embed,
                init_log_std=config.init_log_std,
                separate_critic=config.separate_critic,
                action_reward=action_reward,
            )
        elif config.policy == "episodic":
            policy = EpisodicMemoryPolicy(
                obs_size,
                env.single_action_space,
                config.hidden_size,
                slots=config.memory_slots,
                width=config.memory_width,
                heads=config.memory_heads,
                init_log_std=config.init_log_std,
                action_reward=action_reward,
                transition_keys=config.transition_keys,
            )
        elif config.policy == "ntm":
            policy = NTMPolicy(
                obs_size,
                env.single_action_space,
                config.hidden_size,
                slots=config.memory_slots,
                width=config.memory_width,
                read_heads=config.memory_heads,
                controller=config.controller,
                init_log_std=config.init_log_std,
            )
        else:
            policy = MemoryPolicy(
                obs_size,
                env.single_action_space,
                config.hidden_size,
                slots=config.memory_slots,
                width=config.memory_width,
                heads=config.memory_heads,
                controller=config.controller,
                init_log_std=config.init_log_std,
            )
    return policy.to(env.device)


@dataclass
class Trials:
    """One trial per row, time-major ``[T, N, ...]`` (T = the env's ``max_trial_length``)."""

    obs: torch.Tensor
    actions: torch.Tensor
    logps: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    active: torch.Tensor
    """the row was inside its trial at this step"""
    trial_end: torch.Tensor
    """this step ended the row's trial"""
    next_obs: torch.Tensor
    """the trial observation after this step (the finished episode's last one where an
    episode ended: ``info["final_obs"]``)"""

    def totals(self) -> torch.Tensor:
        """Total reward of every row's trial: ``[N]``."""
        return (self.rewards * self.active).sum(0)


@torch.no_grad()
def rollout(
    env: BatchedTrialEnv,
    policy: RecurrentPolicy,
    generator: torch.Generator | None,
    deterministic: bool = False,
    time_feature: bool = False,
) -> Trials:
    """One full trial on every row, from a fresh policy state (no host-device sync).

    With ``time_feature`` the policy sees ``t / max_trial_length`` appended to each observation
    (stored in ``Trials.obs`` too)."""
    obs, _ = env.reset()
    state = policy.initial_state(env.num_envs, env.device)
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in Trials.__dataclass_fields__}
    horizon = env.max_trial_length
    for t in range(horizon):
        if time_feature:
            obs = torch.cat([obs, torch.full_like(obs[:, :1], t / horizon)], dim=-1)
        action, logp, value, state = policy.act(obs, state, generator, deterministic)
        next_obs, reward, terminated, truncated, info = env.step(action)
        for key, val in (
            ("obs", obs),
            ("actions", action),
            ("logps", logp),
            ("values", value),
            ("rewards", reward),
            ("active", info["active"]),
            ("trial_end", terminated | truncated),
            ("next_obs", info["final_obs"]),
        ):
            buf[key].append(val)
        obs = next_obs
    return Trials(**{k: torch.stack(v) for k, v in buf.items()})


def evaluate_trials(
    config: RL2Config,
    policy: RecurrentPolicy,
    env: BatchedTrialEnv,
    seed: int,
    deterministic: bool | None = None,
) -> Estimate:
    """Mean total reward of one trial on each of ``env``'s (test) tasks, with its 95% CI."""
    gen = torch.Generator(device=env.device).manual_seed(seed)
    det = config.eval_deterministic if deterministic is None else deterministic
    env.env.reset(seed=seed)  # the same env noise at every evaluation
    trials = rollout(env, policy, gen, det, config.time_feature)
    return mean_ci95(trials.totals())


def reference_returns(config: RL2Config, num_tasks: int, seed: int) -> dict[str, Estimate]:
    """The family's reference solvers (``FamilySpec.references``) over a trial of
    ``episodes_per_trial`` episodes on ``num_tasks`` tasks of ``config.eval_split``: name -> total
    reward (the same tasks as the evaluation for the same ``seed``). Families without shipped
    references return ``{}``; a reference that cannot be computed is left out with a warning."""
    spec = check_id(config.env_id)
    refs = spec.compute_references(
        config.episodes_per_trial, num_tasks, seed, config.eval_split, config.env_kwargs
    )
    for name, why in refs.skipped.items():
        log.warning("reference %s not computed: %s", name, why)
    return refs.values


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train(config: RL2Config, run=None) -> dict[str, float]:
    """RL^2 + PPO over whole trials. ``run`` (a :class:`meta_rl.runs.Run` or ``None``) receives
    metrics and checkpoints; returns the final metrics (evaluation and references included)."""

    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    config = dist.sync_config(config)
    shard = dist.shard(config.tasks_per_iteration)  # this rank's tasks of each iteration
    config.apply_num_threads()
    device = resolve_device(config.device)

    # ---- envs, policy, optimizer, generators --------------------------------------------
    env = make_trial_env(config, shard.size, config.envs_per_task, device)
    shard_env(env, shard)  # the env draws the whole batch's noise, keeps this shard's rows
    eval_env = make_trial_env(config, config.eval_tasks, 1, device)
    eval_env.set_tasks(eval_env.sample_tasks(config.eval_tasks, config.seed + 2, config.eval_split))
    task_rng = np.random.default_rng(config.seed)
    action_gen = torch.Generator(device=device).manual_seed(config.seed)
    env_seed_gen = np.random.default_rng(config.seed + 3)
    perm_gen = torch.Generator().manual_seed(config.seed + 4)
    policy = make_policy(config, env, config.seed + 1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
    space = env.single_action_space

    def checkpoint() -> loop.Saved:
        state = {
            "optimizer": optimizer.state_dict(),
            "task_rng": rng_state(task_rng),
            "action_rng": rng_state(action_gen),
            "env_seed_rng": rng_state(env_seed_gen),
            "perm_rng": rng_state(perm_gen),
            "env_steps": env_steps,
        }
        return policy.state_dict(), state

    def evaluation() -> dict[str, float]:
        res = evaluate_trials(config, policy, eval_env, config.seed + 5)
        return {"eval_return": res.mean, "eval_ci95": res.ci95}

    # ---- resume --------------------------------------------------------------------------
    start, env_steps = 0, 0
    keys = ("optimizer", "task_rng", "action_rng", "env_seed_rng", "perm_rng", "env_steps")
    ck = loop.resume(run, dist, device, policy.state_dict(), keys)
    if ck is not None:
        policy.load_state_dict(ck.tensors)
        optimizer.load_state_dict(ck.state["optimizer"])
        set_rng_state(task_rng, ck.state["task_rng"])
        set_rng_state(action_gen, ck.state["action_rng"])
        set_rng_state(env_seed_gen, ck.state["env_seed_rng"])
        set_rng_state(perm_gen, ck.state["perm_rng"])
        start = ck.step
        env_steps = int(ck.state["env_steps"])

    metrics: dict[str, float] = {}
    start_steps = env_steps
    sample_time = update_time = 0.0
    dist.broadcast_(policy.state_dict().values())
    num_rows = shard.total * config.envs_per_task  # rows of the whole batch (all ranks)
    mb_size = num_rows // config.minibatches
    hint = f"Lower lr (now {config.lr}) or max_grad_norm, or change the seed."
    with loop.progress(run, config, start, "return"):
        for it in range(start, config.iterations):
            step = it + 1
            frac = it / max(config.iterations - 1, 1)
            lr = config.lr * (1.0 - frac * (1.0 - config.lr_final_fraction))
            ent_coef = config.ent_coef * (1.0 - frac * (1.0 - config.ent_final_fraction))
            for group in optimizer.param_groups:
                group["lr"] = lr

            # ---- 1. sample tasks; 2. one whole trial per row ----------------------------
            t0 = time.perf_counter()
            tasks = env.sample_tasks(config.tasks_per_iteration, task_rng, "train")
            env.set_tasks(shard.take(tasks))
            env.env.reset(seed=int(env_seed_gen.integers(2**31)))
            noise = D.windowed(action_gen, shard.window(config.envs_per_task))
            trials = rollout(env, policy, noise, time_feature=config.time_feature)
            env_steps += env.max_trial_length * num_rows

            # ---- 3. GAE across episode ends inside a trial; cut only at trial ends ------
            with torch.no_grad():
                rewards = trials.rewards * config.reward_scale
                next_values = torch.cat([trials.values[1:], torch.zeros_like(trials.values[:1])])
                cut = trials.trial_end | ~trials.active
                advantages = gae(
                    rewards, trials.values, next_values, cut, cut, config.gamma, config.gae_lambda
                )
                returns = advantages + trials.values
            t1 = time.perf_counter()

            # ---- 4. PPO epochs over minibatches of whole trials (full BPTT) -------------
            mask = trials.active
            for _ in range(config.update_epochs):
                perm = torch.randperm(num_rows, generator=perm_gen).to(device)
                for b in range(config.minibatches):
                    rows = shard.rows(perm[b * mb_size : (b + 1) * mb_size], config.envs_per_task)
                    m = mask[:, rows]
                    head, values, _ = policy.unroll(
                        trials.obs[:, rows], policy.initial_state(len(rows), device)
                    )
                    logp = D.log_prob(space, head, policy.log_std, trials.actions[:, rows])
                    entropy = D.entropy(space, head, policy.log_std)
                    adv, share = dist.normalize_advantages(advantages[:, rows][m])
                    loss, info = ppo_loss(
                        logp[m],
                        trials.logps[:, rows][m],
                        adv,
                        values[m],
                        trials.values[:, rows][m],
                        returns[:, rows][m],
                        entropy[m],
                        config.clip,
                        config.vf_coef,
                        ent_coef,
                    )
                    optimizer.zero_grad()
                    (loss * share).backward()  # this rank's share of the minibatch mean
                    dist.all_reduce_grads(policy.parameters())
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                    optimizer.step()
            t2 = time.perf_counter()
            sample_time += t1 - t0
            update_time += t2 - t1

            # ---- metrics, then evaluation / log / checkpoint when due -------------------
            metrics = {
                "return": float(trials.totals().mean()),
                "policy_loss": info.policy_loss,
                "value_loss": info.value_loss,
                "entropy": info.entropy,
                "approx_kl": info.approx_kl,
                "clip_fraction": info.clip_fraction,
                "env_steps": float(env_steps),
                "env_steps_per_s": (env_steps - start_steps) / max(sample_time + update_time, 1e-9),
            }
            metrics.update(dist.weighted_sum({"return": metrics["return"]}, shard.weight))
            metrics.update(dist.weighted_sum(vars(info), float(share)))  # the last minibatch's
            loop.end_step(
                run, config, step, metrics, policy.parameters(), evaluation, checkpoint, hint
            )

    # ---- final evaluation beside the references ------------------------------------------
    final = loop.final(metrics, evaluation)
    other_mode = not config.eval_deterministic  # the final metrics report both action modes
    other = evaluate_trials(config, policy, eval_env, config.seed + 5, other_mode)
    tag = "sampled" if config.eval_deterministic else "mode"
    final[f"eval_return_{tag}"], final[f"eval_ci95_{tag}"] = other.mean, other.ci95
    if config.references:
        for name, est in reference_returns(config, config.eval_tasks, config.seed + 2).items():
            final[f"ref_{name}"] = est.mean
            final[f"ref_{name}_ci95"] = est.ci95
    return final
