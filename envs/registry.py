"""Registered family ids (``MetaRL/...``) and their batched twins.

Entry points are strings, so registering imports no family module until it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from meta_rl_envs.core import TaskError


@dataclass(frozen=True)
class FamilySpec:
    env_id: str
    entry_point: str | Callable[..., gym.Env]  # "module:Class" (lazy) or the class itself
    summary: str
    batched: str | None = None  # "module:Class" of the torch-batched twin, if any
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: str | None = None  # the pip extra the family needs, if any


FAMILIES: dict[str, FamilySpec] = {}


def add_family(spec: FamilySpec) -> None:
    """Register a family id with Gymnasium and in meta-rl's table (idempotent)."""
    FAMILIES[spec.env_id] = spec
    if spec.env_id not in gym.registry:
        gym.register(id=spec.env_id, entry_point=spec.entry_point, kwargs=dict(spec.kwargs))


def check_id(env_id: str) -> FamilySpec:
    if env_id not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise TaskError(f"unknown family id {env_id!r}; registered families: {known}")
    return FAMILIES[env_id]


def _load(path: str):
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def make_batched(env_id: str, num_tasks: int, envs_per_task: int = 1, device: str = "cpu", **kw):
    """The torch-batched twin of a family: ``num_tasks x envs_per_task`` rows on ``device``."""
    spec = check_id(env_id)
    if spec.batched is None:
        have = sorted(i for i, s in FAMILIES.items() if s.batched)
        raise TaskError(f"family {env_id!r} has no batched version; batched families: {have}")
    cls = _load(spec.batched)
    return cls(
        num_tasks=num_tasks, envs_per_task=envs_per_task, device=device, **{**spec.kwargs, **kw}
    )


def register_all() -> None:
    for spec in _BUILTIN:
        add_family(spec)


_BUILTIN = [
    FamilySpec(
        "MetaRL/PointNav-v0",
        "meta_rl_envs.navigation:PointNavEnv",
        "2D point navigation to a goal (MAML): goal ~ U[-0.5,0.5]^2, reward -distance, T=100",
        batched="meta_rl_envs.navigation:BatchedPointNav",
    ),
    FamilySpec(
        "MetaRL/Bandit-v0",
        "meta_rl_envs.bandits:BernoulliBanditEnv",
        "Bernoulli multi-armed bandit (RL^2): k arms, p_i ~ U[0,1], one pull per episode",
        batched="meta_rl_envs.bandits:BatchedBernoulliBandit",
    ),
    FamilySpec(
        "MetaRL/TabularMDP-v0",
        "meta_rl_envs.tabular:TabularMDPEnv",
        "Random tabular MDP (RL^2): 10 states, 5 actions, T=10, N(mu,1) rewards, Dirichlet(1)",
        batched="meta_rl_envs.tabular:BatchedTabularMDP",
    ),
    FamilySpec(
        "MetaRL/CartPole-v0",
        "meta_rl_envs.classic:CartPoleFamily",
        "CartPole-v1 with sampled pole length, pole mass and cart mass",
        batched="meta_rl_envs.classic:BatchedCartPole",
    ),
    FamilySpec(
        "MetaRL/Pendulum-v0",
        "meta_rl_envs.classic:PendulumFamily",
        "Pendulum-v1 with sampled mass, length and gravity",
    ),
    FamilySpec(
        "MetaRL/MountainCarContinuous-v0",
        "meta_rl_envs.classic:MountainCarContinuousFamily",
        "MountainCarContinuous-v0 with sampled engine power",
    ),
]
