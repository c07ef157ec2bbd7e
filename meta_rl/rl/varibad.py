"""VariBAD (Zintgraf et al. 2020): a belief over tasks learned with a VAE, and a policy on it.

A recurrent encoder reads the trial so far, ``(previous action, previous reward, state)`` per
step (the RL^2 trial observation, :mod:`meta_rl_envs.wrappers`), and gives a Gaussian posterior
``q_t(z) = N(mean_t, exp(logvar_t))`` over a task latent after every step; ``q_0`` (from the
GRU's zero state) is the prior. A decoder reconstructs the rewards of the *whole* trial (past
and future) from a sample of every ``q_t``; the ELBO adds the KL between consecutive posteriors
(``N(0, I) -> q_0 -> q_1 -> ...``) weighted by ``kl_weight``. The policy acts on
``[state, mean_t, logvar_t]``; the RL loss does not reach the encoder (the latents are inputs).

One iteration, top to bottom:

1. sample ``tasks_per_iteration`` tasks (train split); one whole trial per row of RL^2's
   :class:`~meta_rl_envs.wrappers.BatchedTrialEnv` (:func:`meta_rl.rl.rl2.rollout`), acting with
   the encoder + policy (:class:`VariBADPolicy`, a recurrent policy: its state is the GRU's);
2. GAE across the episode ends inside a trial (cut only at trial ends), as RL^2;
3. PPO (:func:`meta_rl.rl.ppo.ppo_loss`) over minibatches of whole trials; the policy is a
   feed-forward net on the stored ``[state, mean, logvar]``, so no unroll is needed;
4. the trials join a buffer of recent trials; ``vae_updates`` ELBO steps on batches from it.

Reward decoders: ``"mlp"`` predicts ``r`` from ``(z, s, a, s')`` (Gaussian, squared error);
``"cells"`` (grid families whose observation is an integer cell, e.g. GridNavi) is the
reference's multi-head decoder: from ``z`` alone one logit per cell, the probability that
arriving there pays more than ``hit_threshold`` (Bernoulli). Its probabilities are the belief
picture of ``meta-rl evaluate``. An optional state decoder predicts ``s'`` from ``(z, s, a)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import resolve_device
from meta_rl_envs.stats import Estimate, mean_ci95
from meta_rl_envs.wrappers import BatchedTrialEnv, action_encoding_size
from torch import Tensor, nn

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, ConfigError, bounds
from meta_rl.policies import distributions as D
from meta_rl.policies.recurrent import RecurrentPolicy
from meta_rl.rl.ppo import ppo_loss
from meta_rl.rl.returns import gae
from meta_rl.rl.rl2 import Trials, make_trial_env, reference_returns, rollout

log = logging.getLogger(__name__)

__all__ = [
    "BeliefState",
    "VariBADConfig",
    "VariBADModel",
    "VariBADPolicy",
    "cell_belief",
    "episode_returns",
    "make_model",
    "train",
    "vae_loss",
]


@dataclass
class VariBADConfig(BaseConfig):
    """VariBAD: a VAE belief (GRU encoder, reward decoder, KL chain) and PPO on [s, belief]."""

    env_id: str = "MetaRL/GridNavi-v0"
    """registered family id (its torch twin, or Gymnasium envs of it, step the trials)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the family (e.g. {"horizon": 15})"""
    episodes_per_trial: int = field(default=4, metadata=bounds(ge=1))
    """episodes of one task in a trial (the belief lives for a trial)"""
    env_workers: int = field(default=1, metadata=bounds(ge=1))
    """processes stepping a family without a torch twin (e.g. MuJoCo), as RL^2's"""
    latent_size: int = field(default=5, metadata=bounds(ge=1))
    """task latent dimensions"""
    encoder_hidden: int = field(default=64, metadata=bounds(ge=1))
    """GRU hidden units of the encoder"""
    embed: int = field(default=32, metadata=bounds(ge=1))
    """width of the ReLU embedding of (action, reward, state) before the GRU"""
    reward_decoder: Literal["mlp", "cells"] = "mlp"
    """"mlp": r from (z, s, a, s'), squared error; "cells": one hit logit per cell of an integer
    Box observation (GridNavi), Bernoulli on r > hit_threshold"""
    hit_threshold: float = 0.0
    """"cells" decoder: a reward above this counts as a hit"""
    decoder_hidden: int = field(default=32, metadata=bounds(ge=1))
    """hidden units of the decoders' two layers"""
    state_decoder: bool = False
    """also decode s' from (z, s, a) (squared error), as VariBAD's optional transition decoder"""
    decoder_weight: float = field(default=1.0, metadata=bounds(ge=0))
    """weight of the reconstruction terms (0 removes the decoder loss: an ablation)"""
    kl_weight: float = field(default=0.1, metadata=bounds(ge=0))
    """weight of the KL chain (VariBAD: 0.01 on GridNavi, 0.1 on MuJoCo; 0: an ablation)"""
    decode_future: bool = True
    """decode every transition of the trial from every posterior (False: only the past ones)"""
    vae_lr: float = field(default=1e-3, metadata=bounds(gt=0))
    """Adam learning rate of the encoder and decoders"""
    vae_buffer: int = field(default=1000, metadata=bounds(ge=1))
    """recent trials kept for the VAE"""
    vae_batch: int = field(default=64, metadata=bounds(ge=1))
    """trials per VAE update"""
    vae_updates: int = field(default=3, metadata=bounds(ge=0))
    """VAE updates per iteration"""
    vae_subsample: int = field(default=0, metadata=bounds(ge=0))
    """posteriors per trial whose ELBO terms a VAE update decodes, drawn at random (0: all; long
    trials, e.g. MuJoCo's 400 steps, need a few dozen to fit in memory)"""
    policy_hidden: int = field(default=32, metadata=bounds(ge=1))
    """hidden units of the actor's and the critic's two tanh layers"""
    init_log_std: float = -0.5
    """initial log standard deviation of Gaussian actions (Box action spaces only)"""
    iterations: int = field(default=300, metadata=bounds(ge=1))
    """iterations (one batch of trials each)"""
    tasks_per_iteration: int = field(default=64, metadata=bounds(ge=1))
    """tasks (train split) per iteration, one trial each"""
    lr: float = field(default=7e-4, metadata=bounds(gt=0))
    """Adam learning rate of the policy"""
    lr_final_fraction: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    """policy learning rate at the last iteration as a fraction of `lr` (linear decay)"""
    gamma: float = field(default=0.95, metadata=bounds(ge=0, le=1))
    """discount inside a trial (episode ends inside a trial are not cut)"""
    gae_lambda: float = field(default=0.95, metadata=bounds(ge=0, le=1))
    """GAE lambda"""
    update_epochs: int = field(default=2, metadata=bounds(ge=1))
    """PPO passes over each batch of trials"""
    minibatches: int = field(default=4, metadata=bounds(ge=1))
    """PPO minibatches per pass (whole trials each)"""
    clip: float = field(default=0.1, metadata=bounds(gt=0))
    """PPO ratio clip"""
    vf_coef: float = field(default=0.5, metadata=bounds(ge=0))
    """weight of the value loss"""
    ent_coef: float = field(default=0.01, metadata=bounds(ge=0))
    """weight of the entropy bonus at the first iteration"""
    ent_final_fraction: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    """entropy weight at the last iteration as a fraction of `ent_coef` (linear decay)"""
    max_grad_norm: float = field(default=0.5, metadata=bounds(gt=0))
    """gradient clipping (global norm) of the policy and of the VAE"""
    reward_scale: float = field(default=1.0, metadata=bounds(gt=0))
    """the policy's training rewards are multiplied by this (the encoder sees raw rewards)"""
    eval_every: int = field(default=50, metadata=bounds(ge=0))
    """evaluate every this many iterations (0: only at the end)"""
    eval_tasks: int = field(default=1000, metadata=bounds(ge=2))
    """tasks of an evaluation (one trial each; fixed by the seed)"""
    eval_split: Literal["train", "test", "ood"] = "test"
    """task split of the evaluation and the references ("train" for train-only families such as
    GridNavi, whose 21 goals are all training goals)"""
    eval_deterministic: bool = False
    """evaluate with the most likely action instead of sampling"""
    references: bool = True
    """compute the family's reference solvers at the end (whole trial and first episode)"""
    checkpoint_every: int = field(default=50, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    log_every: int = field(default=5, metadata=bounds(ge=1))
    """write training metrics every this many iterations"""

    time_feature: ClassVar[bool] = False  # the RL^2 trial protocol's option; VariBAD has none

    def check(self) -> None:
        if self.tasks_per_iteration < self.minibatches:
            raise ConfigError(
                f"minibatches = {self.minibatches} is more than tasks_per_iteration = "
                f"{self.tasks_per_iteration} (one trial per task)"
            )


# --------------------------------------------------------------------------------------------
# The model: encoder + policy (acts), decoders (train the encoder)
# --------------------------------------------------------------------------------------------
class BeliefState(NamedTuple):
    """The encoder's GRU state and whether a step has been taken (the first step keeps the
    prior: nothing has been observed yet)."""

    h: Tensor
    started: Tensor


def _mlp(n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), act(), nn.Linear(hidden, hidden), act(),
                         nn.Linear(hidden, n_out))  # fmt: skip


class VariBADPolicy(RecurrentPolicy):
    """Encoder + policy as one recurrent policy over trial observations ``[s, a, r, done]``:
    ``step`` updates the GRU with the observation (not at a trial's first step), reads the
    posterior and acts on ``[s, mean, logvar]`` (separate tanh actor and critic trunks)."""

    def __init__(self, obs_dim: int, trial_obs: int, space: gym.Space, cfg: VariBADConfig):
        super().__init__(trial_obs, space, cfg.policy_hidden, cfg.init_log_std)
        self.obs_dim, self.latent_size = obs_dim, cfg.latent_size
        self.embed = nn.Sequential(nn.Linear(trial_obs, cfg.embed), nn.ReLU())
        self.gru = nn.GRU(cfg.embed, cfg.encoder_hidden)
        self.latent = nn.Linear(cfg.encoder_hidden, 2 * cfg.latent_size)
        n_in = obs_dim + 2 * cfg.latent_size
        h = cfg.policy_hidden
        self.actor = nn.Sequential(nn.Linear(n_in, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.critic = nn.Sequential(nn.Linear(n_in, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())

    def initial_state(self, batch: int, device: str | torch.device | None = None) -> BeliefState:
        hidden = self.gru.hidden_size
        return BeliefState(torch.zeros(batch, hidden, device=device),
                           torch.zeros(batch, 1, device=device))  # fmt: skip

    def posterior(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.latent(h).chunk(2, dim=-1)
        return mean, logvar

    def features(self, obs: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
        """The policy's input ``[s, mean, logvar]`` (``obs``: trial observations)."""
        return torch.cat([obs[..., : self.obs_dim], mean, logvar], dim=-1)

    def heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy_head(self.actor(features)), self.value_head(self.critic(features))[
            ..., 0
        ]

    def step(self, obs: Tensor, state: BeliefState) -> tuple[Tensor, Tensor, BeliefState]:
        _, h_new = self.gru(self.embed(obs)[None], state.h[None].contiguous())
        h = torch.where(state.started > 0, h_new[0], state.h)
        head, value = self.heads(self.features(obs, *self.posterior(h)))
        return head, value, BeliefState(h, torch.ones_like(state.started))

    def encode(self, obs: Tensor, last: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posteriors ``[T, B, L]`` (mean, logvar) the policy acted on along trials ``obs``
        ``[T, B, D]`` (``q_0`` = the prior at ``t = 0``); with ``last`` (the trial observation
        after the last step, ``[B, D]``) also the final posterior: ``[T + 1, B, L]``."""
        seq = obs[1:] if last is None else torch.cat([obs[1:], last[None]])
        h0 = torch.zeros(1, obs.shape[1], self.gru.hidden_size, device=obs.device)
        out, _ = self.gru(self.embed(seq), h0)
        return self.posterior(torch.cat([h0, out]))


class VariBADModel(nn.Module):
    """Everything VariBAD trains: ``policy`` (encoder + actor-critic, what acts) and the
    decoders (what trains the encoder)."""

    def __init__(self, env: BatchedTrialEnv, cfg: VariBADConfig) -> None:
        super().__init__()
        obs_space, space = env.env.single_observation_space, env.single_action_space
        obs_dim = int(np.prod(obs_space.shape))
        trial_obs = env.single_observation_space.shape[0]
        self.policy = VariBADPolicy(obs_dim, trial_obs, space, cfg)
        self.kind = cfg.reward_decoder
        self.hit_threshold = cfg.hit_threshold
        self.act_size = action_encoding_size(space)
        n_sas = 2 * obs_dim + self.act_size
        if self.kind == "cells":
            low, high = np.asarray(obs_space.low), np.asarray(obs_space.high)
            whole = np.isfinite(low).all() and np.isfinite(high).all()
            sizes = (high - low + 1).round().astype(np.int64) if whole else np.zeros(1, np.int64)
            if not whole or (low != low.round()).any() or (sizes < 1).any():
                raise ConfigError(
                    f"reward_decoder='cells' needs an integer grid observation space (finite "
                    f"integer bounds); {cfg.env_id} has {obs_space}. Use reward_decoder='mlp'"
                )
            strides = np.cumprod(np.concatenate([sizes[1:], [1]])[::-1])[::-1].copy()
            self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
            self.register_buffer("strides", torch.as_tensor(strides, dtype=torch.float32))
            self.grid = tuple(int(s) for s in sizes)
            self.reward = _mlp(cfg.latent_size, cfg.decoder_hidden, int(np.prod(sizes)))
        else:
            self.reward = _mlp(cfg.latent_size + n_sas, cfg.decoder_hidden, 1)
        self.state = _mlp(cfg.latent_size + obs_dim + self.act_size, cfg.decoder_hidden, obs_dim)
        self.state.requires_grad_(cfg.state_decoder)

    def cells(self, s_next: Tensor) -> Tensor:
        """Cell index of grid observations ``[..., obs_dim]`` (the "cells" decoder)."""
        return ((s_next - self.low) * self.strides).sum(-1).round().long()

    def hit_logits(self, z: Tensor) -> Tensor:
        """The "cells" decoder: a hit logit per cell, ``[..., cells]``."""
        return self.reward(z)


def make_model(config: VariBADConfig, env: BatchedTrialEnv, seed: int) -> VariBADModel:
    """The config's model for ``env``, initialised from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VariBADModel(env, config)
    return model.to(env.device)


# --------------------------------------------------------------------------------------------
# The ELBO
# --------------------------------------------------------------------------------------------
@dataclass
class TrialBatch:
    """Trials for the VAE, time-major ``[T, B, ...]``: trial observations before and after
    every step (``next_obs``: the finished episode's last one where an episode ended)."""

    obs: Tensor
    next_obs: Tensor
    actions: Tensor
    rewards: Tensor
    active: Tensor

    @classmethod
    def of(cls, trials: Trials) -> TrialBatch:
        return cls(trials.obs, trials.next_obs, trials.actions, trials.rewards, trials.active)

    def rows(self, idx: Tensor) -> TrialBatch:
        return TrialBatch(*(getattr(self, k)[:, idx] for k in self.__dataclass_fields__))


def _gauss_kl(mean: Tensor, logvar: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mean, exp logvar) || N(mean_p, exp logvar_p)), summed over the last axis."""
    var_ratio = (logvar - logvar_p).exp()
    return 0.5 * ((mean - mean_p).pow(2) / logvar_p.exp() + var_ratio - 1.0 - (logvar - logvar_p)
                  ).sum(-1)  # fmt: skip


def vae_loss(
    model: VariBADModel, batch: TrialBatch, cfg: VariBADConfig, gen: torch.Generator | None
) -> tuple[Tensor, dict[str, float]]:
    """The negative ELBO of trials ``batch`` (summed over posteriors and decoded transitions,
    averaged over trials, as the reference code): ``decoder_weight * reconstruction +
    kl_weight * KL chain``; and its parts as floats."""
    pol = model.policy
    mean, logvar = pol.encode(batch.obs, batch.next_obs[-1])  # [T + 1, B, L]
    t_len, n = batch.obs.shape[:2]
    seen = torch.cat([torch.ones_like(batch.active[:1]), batch.active])  # posterior t exists
    zeros = torch.zeros_like(mean[:1])
    kl = _gauss_kl(mean, logvar, torch.cat([zeros, mean[:-1]]), torch.cat([zeros, logvar[:-1]]))
    kl = (kl * seen).sum(0).mean()
    eps = torch.randn(mean.shape, generator=gen, device=mean.device)
    z = mean + (0.5 * logvar).exp() * eps
    keep = torch.arange(t_len + 1, device=mean.device)
    if 0 < cfg.vae_subsample < t_len + 1:
        keep = torch.randperm(t_len + 1, generator=gen, device=mean.device)[: cfg.vae_subsample]
    z, seen_k = z[keep], seen[keep]
    d = pol.obs_dim
    s, s_next = batch.obs[..., :d], batch.next_obs[..., :d]
    a = batch.next_obs[..., d : d + model.act_size]  # the action taken at each step
    mask = seen_k[:, None] * batch.active[None]  # [K, T, B]: posterior k decodes transition j
    if not cfg.decode_future:
        mask = mask * (torch.arange(t_len, device=mask.device)[None, :] < keep[:, None])[..., None]
    if model.kind == "cells":
        onehot = nn.functional.one_hot(model.cells(s_next), int(np.prod(model.grid))).float()
        logits = torch.einsum("kbc,jbc->kjb", model.hit_logits(z), onehot)
        hit = (batch.rewards > model.hit_threshold).float().expand_as(logits)
        rec = nn.functional.binary_cross_entropy_with_logits(logits, hit, reduction="none")
    else:
        k = z.shape[0]
        sas = torch.cat([s, a, s_next], -1)[None].expand(k, -1, -1, -1)
        pred = model.reward(torch.cat([z[:, None].expand(-1, t_len, -1, -1), sas], -1))[..., 0]
        rec = (pred - batch.rewards[None]).pow(2)
    rec = (rec * mask).sum((0, 1)).mean()
    loss = cfg.decoder_weight * rec + cfg.kl_weight * kl
    parts = {"vae_rec_loss": float(rec.detach()), "vae_kl": float(kl.detach())}
    if cfg.state_decoder:
        k = z.shape[0]
        sa = torch.cat([s, a], -1)[None].expand(k, -1, -1, -1)
        pred = model.state(torch.cat([z[:, None].expand(-1, t_len, -1, -1), sa], -1))
        st = ((pred - s_next[None]).pow(2).sum(-1) * mask).sum((0, 1)).mean()
        loss = loss + cfg.decoder_weight * st
        parts["vae_state_loss"] = float(st.detach())
    parts["vae_loss"] = float(loss.detach())
    return loss, parts


class TrialBuffer:
    """The most recent ``capacity`` trials (a ring, on the device)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.size, self.next = capacity, 0, 0
        self.data: TrialBatch | None = None

    def add(self, batch: TrialBatch) -> None:
        n = batch.obs.shape[1]
        if self.data is None:
            self.data = TrialBatch(*(
                torch.zeros((v.shape[0], self.capacity, *v.shape[2:]), dtype=v.dtype,
                            device=v.device) for v in vars(batch).values()
            ))  # fmt: skip
        idx = (self.next + torch.arange(n)) % self.capacity
        for k, v in vars(batch).items():
            getattr(self.data, k)[:, idx.to(v.device)] = (
                v[:, -self.capacity :] if n > self.capacity else v
            )
        self.next = int((self.next + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, gen: torch.Generator) -> TrialBatch:
        assert self.data is not None
        idx = torch.randint(self.size, (n,), generator=gen)
        return self.data.rows(idx.to(self.data.obs.device))

    def state(self) -> dict[str, Any]:
        data = {k: v[:, : self.size] for k, v in vars(self.data).items()} if self.data else {}
        return {"size": self.size, "next": self.next, "data": data}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.data, self.size, self.next = None, 0, 0
        if int(state["size"]):  # the saved rows are the ring's slots 0 .. size - 1
            self.add(TrialBatch(**{k: v.to(device) for k, v in state["data"].items()}))
        self.size, self.next = int(state["size"]), int(state["next"])


# --------------------------------------------------------------------------------------------
# Evaluation: per-episode returns, decoded beliefs
# --------------------------------------------------------------------------------------------
def episode_returns(trials: Trials, episodes: int) -> Tensor:
    """``[episodes, N]`` return of each inner episode of every row's trial (the trial
    observation's done flag, its last number, marks each episode's first step)."""
    index = trials.obs[..., -1].cumsum(0).long().clamp(max=episodes - 1)
    out = torch.zeros(episodes, trials.rewards.shape[1], device=trials.rewards.device)
    return out.scatter_add_(0, index, trials.rewards * trials.active)


@torch.no_grad()
def cell_belief(model: VariBADModel, trials: Trials, policy: VariBADPolicy | None = None) -> Tensor:
    """The "cells" decoder's hit probability of every cell from the posterior mean after each
    step: ``[T + 1, N, cells]`` (index ``t``: after ``t`` steps; ``0``: the prior). ``policy``:
    the encoder to use (default the model's)."""
    mean, _ = (policy or model.policy).encode(trials.obs, trials.next_obs[-1])
    return torch.sigmoid(model.hit_logits(mean))


def evaluate_trials(
    cfg: VariBADConfig, model: VariBADModel, env: BatchedTrialEnv, seed: int,
    deterministic: bool | None = None,
) -> tuple[Estimate, list[Estimate]]:  # fmt: skip
    """Mean total reward of one trial on each of ``env``'s tasks, and of each episode (95% CIs)."""
    gen = torch.Generator(device=env.device).manual_seed(seed)
    det = cfg.eval_deterministic if deterministic is None else deterministic
    env.env.reset(seed=seed)
    trials = rollout(env, model.policy, gen, det)
    per_ep = episode_returns(trials, env.episodes_per_trial)
    return mean_ci95(trials.totals()), [mean_ci95(r) for r in per_ep]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _ppo_epochs(
    model: VariBADModel, optimizer: torch.optim.Optimizer, trials: Trials, advantages: Tensor,
    returns: Tensor, cfg: VariBADConfig, ent_coef: float, perm_gen: torch.Generator,
) -> Any:  # fmt: skip
    """PPO over minibatches of whole trials; the policy reads the stored posteriors (the
    encoder is not updated by the RL loss)."""
    pol, space = model.policy, model.policy.action_space
    with torch.no_grad():
        feats = pol.features(trials.obs, *pol.encode(trials.obs))
    n = feats.shape[1]
    mb = n // cfg.minibatches
    params = [p for name, p in pol.named_parameters() if _is_policy_param(name)]
    info = None
    for _ in range(cfg.update_epochs):
        perm = torch.randperm(n, generator=perm_gen).to(feats.device)
        for b in range(cfg.minibatches):
            rows = perm[b * mb : (b + 1) * mb]
            m = trials.active[:, rows]
            head, values = pol.heads(feats[:, rows])
            logp = D.log_prob(space, head, pol.log_std, trials.actions[:, rows])
            adv = advantages[:, rows][m]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            loss, info = ppo_loss(
                logp[m], trials.logps[:, rows][m], adv, values[m], trials.values[:, rows][m],
                returns[:, rows][m], D.entropy(space, head, pol.log_std)[m], cfg.clip,
                cfg.vf_coef, ent_coef,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
    return info


_ENCODER = ("embed.", "gru.", "latent.")


def _is_policy_param(name: str) -> bool:
    return not name.startswith(_ENCODER)


def train(config: VariBADConfig, run=None) -> dict[str, float]:
    """VariBAD: trials, PPO on ``[s, belief]``, ELBO updates of the encoder and decoders.
    ``run`` receives metrics and checkpoints; returns the final metrics (evaluation per episode
    and the family's references, whole trial and first episode, included)."""
    dist = collectives.context()
    if dist.enabled:
        raise ConfigError(
            "VariBAD does not shard over torchrun ranks (its VAE buffer is not sharded); "
            "run it in one process (device=cuda for a GPU)"
        )
    config.apply_num_threads()
    device = resolve_device(config.device)

    # ---- envs, model, optimizers, generators --------------------------------------------
    env = make_trial_env(config, config.tasks_per_iteration, 1, device)
    eval_env = make_trial_env(config, config.eval_tasks, 1, device)
    eval_env.set_tasks(eval_env.sample_tasks(config.eval_tasks, config.seed + 2, config.eval_split))
    task_rng = np.random.default_rng(config.seed)
    action_gen = torch.Generator(device=device).manual_seed(config.seed)
    env_seed_gen = np.random.default_rng(config.seed + 3)
    perm_gen = torch.Generator().manual_seed(config.seed + 4)
    vae_gen = torch.Generator(device=device).manual_seed(config.seed + 6)
    buf_gen = torch.Generator().manual_seed(config.seed + 7)
    model = make_model(config, env, config.seed + 1)
    pol = model.policy
    policy_params = [p for name, p in pol.named_parameters() if _is_policy_param(name)]
    optimizer = torch.optim.Adam(policy_params, lr=config.lr, eps=1e-5)
    vae_params = [p for name, p in pol.named_parameters() if name.startswith(_ENCODER)]
    vae_params += [p for p in (*model.reward.parameters(), *model.state.parameters())]
    vae_opt = torch.optim.Adam(vae_params, lr=config.vae_lr)
    buffer = TrialBuffer(config.vae_buffer)
    gens = {"task_rng": task_rng, "action_rng": action_gen, "env_seed_rng": env_seed_gen,
            "perm_rng": perm_gen, "vae_rng": vae_gen, "buffer_rng": buf_gen}  # fmt: skip

    def checkpoint() -> loop.Saved:
        state = {k: rng_state(g) for k, g in gens.items()}
        state.update(optimizer=optimizer.state_dict(), vae_optimizer=vae_opt.state_dict(),
                     buffer=buffer.state(), env_steps=env_steps)  # fmt: skip
        return model.state_dict(), state

    def evaluation() -> dict[str, float]:
        total, per_ep = evaluate_trials(config, model, eval_env, config.seed + 5)
        out = {"eval_return": total.mean, "eval_ci95": total.ci95}
        for i, est in enumerate(per_ep):
            out[f"eval_return_ep{i + 1}"], out[f"eval_ci95_ep{i + 1}"] = est.mean, est.ci95
        return out

    # ---- resume --------------------------------------------------------------------------
    start, env_steps = 0, 0
    keys = (*gens, "optimizer", "vae_optimizer", "buffer", "env_steps")
    ck = loop.resume(run, dist, device, model.state_dict(), keys)
    if ck is not None:
        model.load_state_dict(ck.tensors)
        optimizer.load_state_dict(ck.state["optimizer"])
        vae_opt.load_state_dict(ck.state["vae_optimizer"])
        for k, g in gens.items():
            set_rng_state(g, ck.state[k])
        buffer.load(ck.state["buffer"], device)
        start, env_steps = ck.step, int(ck.state["env_steps"])

    metrics: dict[str, float] = {}
    hint = f"Lower lr (now {config.lr}) / vae_lr (now {config.vae_lr}), or change the seed."
    with loop.progress(run, config, start, "return"):
        for it in range(start, config.iterations):
            frac = it / max(config.iterations - 1, 1)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1.0 - frac * (1.0 - config.lr_final_fraction))
            ent_coef = config.ent_coef * (1.0 - frac * (1.0 - config.ent_final_fraction))

            # ---- 1. tasks; one whole trial per row, acting on the belief ----------------
            env.set_tasks(env.sample_tasks(config.tasks_per_iteration, task_rng, "train"))
            env.env.reset(seed=int(env_seed_gen.integers(2**31)))
            trials = rollout(env, pol, action_gen)
            env_steps += env.max_trial_length * env.num_envs

            # ---- 2. GAE across episode ends inside a trial; cut only at trial ends ------
            with torch.no_grad():
                next_values = torch.cat([trials.values[1:], torch.zeros_like(trials.values[:1])])
                cut = trials.trial_end | ~trials.active
                rewards = trials.rewards * config.reward_scale
                advantages = gae(
                    rewards, trials.values, next_values, cut, cut, config.gamma, config.gae_lambda
                )
                returns = advantages + trials.values

            # ---- 3. PPO on [s, mean, logvar]; 4. ELBO steps on recent trials ------------
            info = _ppo_epochs(model, optimizer, trials, advantages, returns, config, ent_coef,
                               perm_gen)  # fmt: skip
            buffer.add(TrialBatch.of(trials))
            parts: dict[str, float] = {}
            for _ in range(config.vae_updates):
                loss, parts = vae_loss(model, buffer.sample(config.vae_batch, buf_gen), config,
                                       vae_gen)  # fmt: skip
                vae_opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vae_params, config.max_grad_norm)
                vae_opt.step()

            metrics = {"return": float(trials.totals().mean()), **vars(info), **parts,
                       "env_steps": float(env_steps)}  # fmt: skip
            loop.end_step(
                run, config, it + 1, metrics, model.parameters(), evaluation, checkpoint, hint
            )

    # ---- final evaluation beside the references (whole trial and first episode) ----------
    final = loop.final(metrics, evaluation)
    if config.references:
        for prefix, cfg in (("ref", config), ("ref_ep1", _one_episode(config))):
            for name, est in reference_returns(cfg, config.eval_tasks, config.seed + 2).items():
                final[f"{prefix}_{name}"], final[f"{prefix}_{name}_ci95"] = est.mean, est.ci95
    return final


def _one_episode(config: VariBADConfig) -> VariBADConfig:
    import dataclasses

    return dataclasses.replace(config, episodes_per_trial=1)
