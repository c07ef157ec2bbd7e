"""Registered family ids (``MetaRL/...``), what meta-rl knows about each family, and the one
factory of ``num_tasks x envs_per_task`` envs (:func:`make_env`).

A :class:`FamilySpec` is everything the learners may know about a family: how to build it (the
Gymnasium entry point, its torch-batched twin), its reference solvers, and the env kwargs
trainers use unless a config sets them. Code outside ``meta_rl_envs`` asks the spec
(:func:`check_id`) and never branches on a family id.

Entry points are strings, so registering imports no family module until it is made.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from meta_rl_envs.core import Task, TaskError, check_split

if TYPE_CHECKING:
    from meta_rl_envs.batched import BatchedTaskEnv
    from meta_rl_envs.references import References


@dataclass(frozen=True)
class FamilySpec:
    env_id: str
    entry_point: str | Callable[..., gym.Env]  # "module:Class" (lazy) or the class itself
    summary: str
    batched: str | None = None  # "module:Class" of the torch-batched twin, if any
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: str | None = None  # the pip extra the family needs, if any
    references: str | Callable[..., References] | None = None
    """"module:function" (lazy) or the function computing the family's reference solvers:
    ``(episodes, num_tasks, seed, split, **env_kwargs) -> References`` (see
    :mod:`meta_rl_envs.references`); None: the family ships none"""
    trainer_defaults: dict[str, Any] = field(default_factory=dict)
    """env kwargs a trainer uses unless its config sets them (e.g. RL^2's k=5 bandit arms)"""

    def trainer_kwargs(self, env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``env_kwargs`` on top of the family's trainer defaults."""
        return {**self.trainer_defaults, **dict(env_kwargs or {})}

    def compute_references(
        self,
        episodes: int,
        num_tasks: int,
        seed: int,
        split: str = "test",
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> References:
        """The family's reference solvers over a trial of ``episodes`` episodes on the tasks
        ``task_space.sample(num_tasks, seed, split)`` (the same tasks an evaluation with that
        seed draws); empty for a family without references."""
        from meta_rl_envs.references import References

        check_split(split)
        if self.references is None:
            return References(int(episodes))
        fn = _load(self.references) if isinstance(self.references, str) else self.references
        return fn(
            int(episodes), int(num_tasks), int(seed), split, **self.trainer_kwargs(env_kwargs)
        )


FAMILIES: dict[str, FamilySpec] = {}


def add_family(spec: FamilySpec) -> None:
    """Register a family id with Gymnasium and in meta-rl's table (idempotent; registering the
    same id again with another entry point or kwargs replaces it)."""
    FAMILIES[spec.env_id] = spec
    old = gym.registry.get(spec.env_id)
    if old is not None and (old.entry_point, old.kwargs) != (spec.entry_point, spec.kwargs):
        del gym.registry[spec.env_id]
        old = None
    if old is None:
        gym.register(id=spec.env_id, entry_point=spec.entry_point, kwargs=dict(spec.kwargs))


def register_family(
    env_id: str,
    family: str | Callable[..., gym.Env],
    summary: str = "",
    *,
    batched: str | None = None,
    references: str | Callable[..., References] | None = None,
    trainer_defaults: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> FamilySpec:
    """Register a task family (e.g. a class from :func:`meta_rl_envs.builder.make_family`) under
    ``env_id``, so ``gymnasium.make(env_id)``, :func:`make_env` and every trainer (``env_id=``)
    find it. ``kwargs`` are the family's constructor kwargs; the rest are the
    :class:`FamilySpec` fields. Returns the spec."""
    if not isinstance(env_id, str) or not env_id:
        raise TaskError(f"env_id={env_id!r} must be a Gymnasium id such as 'MetaRL/Acrobot-v0'")
    if not (isinstance(family, str) or callable(family)):
        raise TaskError(f"family={family!r} is neither a 'module:Class' string nor a class")
    if not summary:
        doc = getattr(family, "__doc__", None) or ""
        summary = doc.strip().split("\n")[0] if doc.strip() else env_id
    spec = FamilySpec(
        env_id,
        family,
        summary,
        batched=batched,
        kwargs=dict(kwargs),
        references=references,
        trainer_defaults=dict(trainer_defaults or {}),
    )
    add_family(spec)
    return spec


def check_id(env_id: str) -> FamilySpec:
    """The :class:`FamilySpec` of a registered id; a :class:`TaskError` naming the known ids, or
    the extra to install for an optional family."""
    if env_id not in FAMILIES and _ML1_ID.match(env_id) and extra_available("metaworld"):
        add_family(ml1_spec(_ML1_ID.match(env_id).group(1) + "-v3"))  # any ML1 env on demand
    if env_id not in FAMILIES:
        extra = next((s.extra for s in _OPTIONAL if s.env_id == env_id), None)
        if extra is None and _ML1_ID.match(env_id):
            extra = "metaworld"
        if extra is not None:
            raise TaskError(
                f"family {env_id!r} needs the '{extra}' extra, which is not installed: "
                f"pip install 'meta-rl[{extra}]'"
            )
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


def make_env(
    env_id: str,
    num_tasks: int,
    envs_per_task: int = 1,
    device: str = "cpu",
    backend: str = "auto",
    workers: int = 1,
    **env_kwargs: Any,
) -> BatchedTaskEnv:
    """A ``num_tasks x envs_per_task`` env of a family behind the batched-env contract
    (:class:`~meta_rl_envs.batched.BatchedTaskEnv`): ``backend`` "batched" (the torch twin),
    "vector" (:class:`~meta_rl_envs.vector.VectorTaskEnv`, Gymnasium envs of the scalar family,
    stepped by ``workers`` processes) or "auto" (the torch twin when the family has one; a twin
    is one process whatever ``workers`` says)."""
    if backend not in ("auto", "batched", "vector"):
        raise TaskError(f"backend={backend!r} is not allowed; choose 'auto', 'batched' or 'vector'")
    spec = check_id(env_id)
    if backend == "batched" or (backend == "auto" and spec.batched is not None):
        return make_batched(env_id, num_tasks, envs_per_task, device=device, **env_kwargs)
    from meta_rl_envs.vector import VectorTaskEnv

    return VectorTaskEnv(
        env_id, num_tasks, envs_per_task, device=device, workers=workers, **env_kwargs
    )


def extra_available(extra: str) -> bool:
    """Whether the module an optional family needs (its extra's name) can be imported."""
    import importlib.util

    return importlib.util.find_spec(extra) is not None


def register_all() -> None:
    """Register the built-in families, and the optional ones whose extra is installed."""
    for spec in _BUILTIN:
        add_family(spec)
    for spec in _OPTIONAL:
        if spec.extra is not None and extra_available(spec.extra):
            add_family(spec)


_BUILTIN = [
    FamilySpec(
        "MetaRL/PointNav-v0",
        "meta_rl_envs.navigation:PointNavEnv",
        "2D point navigation to a goal (MAML): goal ~ U[-0.5,0.5]^2, reward -distance, T=100",
        batched="meta_rl_envs.navigation:BatchedPointNav",
        references="meta_rl_envs.references:navigation_references",
    ),
    FamilySpec(
        "MetaRL/Bandit-v0",
        "meta_rl_envs.bandits:BernoulliBanditEnv",
        "Bernoulli multi-armed bandit (RL^2): k arms, p_i ~ U[0,1], one pull per episode",
        batched="meta_rl_envs.bandits:BatchedBernoulliBandit",
        references="meta_rl_envs.references:bandit_references",
        trainer_defaults={"k": 5},
    ),
    FamilySpec(
        "MetaRL/TabularMDP-v0",
        "meta_rl_envs.tabular:TabularMDPEnv",
        "Random tabular MDP (RL^2): 10 states, 5 actions, T=10, N(mu,1) rewards, Dirichlet(1)",
        batched="meta_rl_envs.tabular:BatchedTabularMDP",
        references="meta_rl_envs.references:tabular_references",
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

_ML1_ID = re.compile(r"^MetaRL/ML1-([a-z0-9-]+)-v0$")


def ml1_spec(env_name: str, check: bool = True) -> FamilySpec:
    """The family spec of Meta-World ML1 on ``env_name`` (e.g. "door-open-v3"), id
    ``MetaRL/ML1-door-open-v0``. Three are registered up front (reach, push, pick-place, the
    Meta-World paper's ML1 tasks); :func:`check_id` registers the others when first asked for.
    ``check``: validate the name against Meta-World's list (imports metaworld, ~1 s)."""
    if not env_name.endswith("-v3"):
        raise TaskError(f"env_name={env_name!r} is not a Meta-World v3 env name (e.g. 'reach-v3')")
    if check and extra_available("metaworld"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if env_name not in ALL_V3_ENVIRONMENTS:
            raise TaskError(
                f"env_name={env_name!r} is not a Meta-World v3 env; choose one of "
                f"{sorted(ALL_V3_ENVIRONMENTS)}"
            )
    name = env_name.removesuffix("-v3")
    return FamilySpec(
        f"MetaRL/ML1-{name}-v0",
        "meta_rl_envs.metaworld_tasks:MetaWorldFamily",
        f"Meta-World ML1 {env_name}: 50 train / 50 test goals (Meta-World's), T=500",
        kwargs={"benchmark": "ML1", "env_name": env_name},
        extra="metaworld",
    )


# Families that need a pip extra (``FamilySpec.extra`` names both the extra and the module it
# installs); registered only when that module can be imported.
_LOCOMOTION = "MuJoCo v5, T=200"
_OPTIONAL = [
    FamilySpec(
        "MetaRL/HalfCheetahVel-v0",
        "meta_rl_envs.locomotion:HalfCheetahVelFamily",
        f"HalfCheetah target velocity U[0,2] (MAML), ood U[2,3]; {_LOCOMOTION}",
        extra="mujoco",
    ),
    FamilySpec(
        "MetaRL/HalfCheetahDir-v0",
        "meta_rl_envs.locomotion:HalfCheetahDirFamily",
        f"HalfCheetah forward/backward (MAML), train split only; {_LOCOMOTION}",
        extra="mujoco",
    ),
    FamilySpec(
        "MetaRL/AntDir-v0",
        "meta_rl_envs.locomotion:AntDirFamily",
        f"Ant running in a direction, angle U[0,2pi); {_LOCOMOTION}",
        extra="mujoco",
    ),
    FamilySpec(
        "MetaRL/AntGoal-v0",
        "meta_rl_envs.locomotion:AntGoalFamily",
        f"Ant walking to a goal in the radius-3 disk (PEARL), ood 3<r<=4; {_LOCOMOTION}",
        extra="mujoco",
    ),
    *(ml1_spec(f"{name}-v3", check=False) for name in ("reach", "push", "pick-place")),
    FamilySpec(
        "MetaRL/ML10-v0",
        "meta_rl_envs.metaworld_tasks:MetaWorldFamily",
        "Meta-World ML10: 10 train envs / 5 test envs x 50 goals (Meta-World's), T=500",
        kwargs={"benchmark": "ML10"},
        extra="metaworld",
    ),
]


@dataclass(frozen=True)
class TaskDistribution:
    """A family id, its constructor kwargs and a split: a value that samples tasks."""

    env_id: str
    split: str = "train"
    env_kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_split(self.split)

    def make_env(self, **overrides: Any) -> gym.Env:
        """``gymnasium.make`` of the family with the distribution's kwargs (``overrides`` on
        top)."""
        check_id(self.env_id)
        return gym.make(self.env_id, **{**dict(self.env_kwargs), **overrides})

    def sample(self, n: int, rng: np.random.Generator | int | None) -> list[Task]:
        """``n`` seeded tasks of the distribution's split."""
        env = self.make_env()
        try:
            return env.unwrapped.sample_tasks(n, rng, self.split)
        finally:
            env.close()
