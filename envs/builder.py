"""Turn any Gymnasium env plus ``{attribute: range}`` into a task family.

``make_family`` subclasses the env's own class (so seeding, ``np_random``, ``check_env`` and
rendering keep working as they are) and mixes in :class:`~meta_rl_envs.core.TaskFamily`:

- a frozen task dataclass with one float field per attribute (built with
  ``dataclasses.make_dataclass``, a subclass of :class:`~meta_rl_envs.core.Task`);
- a :class:`~meta_rl_envs.core.TaskSpace` with ``train``/``test`` and, when ``ood`` is given,
  an ``ood`` split;
- ``set_task`` writes the attributes on the env and then calls ``update_derived()`` (a hook for
  quantities computed from them, e.g. CartPole's ``total_mass``);
- ``reset(options={"task": ...})``, ``info["task"]`` on reset and step, and the time limit of the
  base id (``horizon``) applied inside the env, since family ids are registered without Gymnasium's
  ``TimeLimit`` wrapper.

Example: a user family of heavier or lighter Acrobot links in a few lines::

    import gymnasium as gym
    from meta_rl_envs import register_family
    from meta_rl_envs.builder import make_family

    AcrobotFamily = make_family(
        "Acrobot-v1",
        {"LINK_MASS_1": (0.5, 2.0), "LINK_MASS_2": (0.5, 2.0)},
        ood={"LINK_MASS_1": [(2.0, 3.0)]},
    )
    register_family("MyLab/Acrobot-v0", AcrobotFamily, "Acrobot with link masses")
    env = gym.make("MyLab/Acrobot-v0")
    task = env.unwrapped.sample_tasks(1, rng=0, split="ood")[0]
    obs, info = env.reset(seed=0, options={"task": task})

Ranges are ``(low, high)`` (uniform), a list of values (``Choice``), or any
:class:`~meta_rl_envs.core.Param` named like the attribute.

A key may also be a path into the env: ``"a.b"`` or ``"a.b[i]"`` (``"a.b[i, j]"``), e.g. a
MuJoCo model array entry such as ``"model.body_mass[1]"`` (HalfCheetah's torso). The task
field is then the path made an identifier (``model_body_mass_1``), and ``set_task`` writes the
value in place (MuJoCo's model arrays are views into the simulator, so the next step uses it).
Quantities MuJoCo derives from the model (e.g. ``body_subtreemass``) are refreshed by
``mujoco.mj_setConst(env.model, env.data)`` in ``derived`` when they matter.

Bind the built class at module level under its name (``{name}Family``, or pass
``class_name``): envs and tasks then pickle, the task class being reachable as
``Family.task_cls``. Subclass the built class to change more (e.g.
``CartPoleFamily`` replaces ``_base_reset`` to draw its initial state through ``_noise``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import gymnasium as gym
import numpy as np
from meta_rl_envs.core import Choice, Param, Task, TaskError, TaskFamily, TaskSpace, Uniform

RangeSpec = tuple[float, float] | Sequence[float] | Param


def _resolve_base(base: str | type[gym.Env]) -> tuple[type[gym.Env], dict[str, Any], int | None]:
    """The env class, its registered kwargs and its registered time limit."""
    if isinstance(base, str):
        if base not in gym.registry:
            close = difflib.get_close_matches(base, list(gym.registry), n=5, cutoff=0.5)
            hint = f"; close matches: {close}" if close else ""
            raise TaskError(f"unknown Gymnasium env id {base!r}{hint}")
        spec = gym.spec(base)
        entry = spec.entry_point
        if isinstance(entry, str):
            from gymnasium.envs.registration import load_env_creator

            entry = load_env_creator(entry)
        if not (isinstance(entry, type) and issubclass(entry, gym.Env)):
            raise TaskError(
                f"env id {base!r} has entry point {spec.entry_point!r}, which is not a "
                "gymnasium.Env class; pass the env class itself to make_family"
            )
        return entry, dict(spec.kwargs), spec.max_episode_steps
    if isinstance(base, type) and issubclass(base, gym.Env):
        return base, {}, None
    raise TaskError(
        f"base={base!r} is neither a registered Gymnasium env id nor a gymnasium.Env subclass"
    )


_PATH = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\[\s*(\d+(?:\s*,\s*\d+)*)\s*\])?$")


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where a task parameter lives in the env: ``env.a.b`` or ``env.a.b[index]``."""

    path: str
    parts: tuple[str, ...]
    index: tuple[int, ...] | None

    @property
    def field(self) -> str:
        """The task field's name: the path itself, or the path made an identifier."""
        return self.path if self.path.isidentifier() else re.sub(r"\W+", "_", self.path).strip("_")

    @classmethod
    def parse(cls, path: Any) -> _Target:
        m = _PATH.match(path) if isinstance(path, str) else None
        if m is None:
            raise TaskError(
                f"parameter {path!r} is neither an attribute name nor a path; use 'attr', "
                "'a.b' or 'a.b[i]' (e.g. 'model.body_mass[1]')"
            )
        index = tuple(int(i) for i in m.group(2).split(",")) if m.group(2) else None
        return cls(path, tuple(m.group(1).split(".")), index)

    def get(self, env: Any) -> Any:
        obj = env
        for part in self.parts:
            obj = getattr(obj, part)
        return obj[self.index] if self.index is not None else obj

    def set(self, env: Any, value: Any) -> None:
        if len(self.parts) == 1 and self.index is None:
            setattr(env, self.parts[0], value)
            return
        parent = env
        for part in self.parts[:-1]:
            parent = getattr(parent, part)
        if self.index is not None:
            getattr(parent, self.parts[-1])[self.index] = value
            return
        current = getattr(parent, self.parts[-1])
        if isinstance(current, np.ndarray):
            current[...] = value  # in place: e.g. a MuJoCo model array the simulator reads
        else:
            setattr(parent, self.parts[-1], value)


def _numeric_attrs(env: gym.Env) -> list[str]:
    return sorted(
        k
        for k, v in vars(env).items()
        if not k.startswith("_") and isinstance(v, Real) and not isinstance(v, bool)
    )


def _as_param(attr: str, spec: Any, ood: Sequence[tuple[float, float]] | None) -> Param:
    def finite(v: Any) -> bool:
        return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))

    if isinstance(spec, Param):
        if spec.name != attr:
            raise TaskError(f"parameter for attribute {attr!r} is named {spec.name!r}")
        if ood:
            if not isinstance(spec, Uniform):
                raise TaskError(f"ood region given for {attr!r}, whose {spec} is not Uniform")
            spec = dataclasses.replace(spec, ood=tuple(tuple(map(float, iv)) for iv in ood))
        return spec
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(finite(v) for v in spec):
            raise TaskError(
                f"range for {attr!r} = {spec!r} must be (low, high) with two finite numbers "
                "(use a list for a set of choices)"
            )
        low, high = float(spec[0]), float(spec[1])
        if not low < high:
            raise TaskError(f"range for {attr!r} = {spec!r}: low must be below high")
        intervals: list[tuple[float, float]] = []
        for iv in ood or ():
            if not (isinstance(iv, (tuple, list)) and len(iv) == 2 and all(map(finite, iv))):
                raise TaskError(
                    f"ood interval for {attr!r} = {iv!r} must be (low, high) with finite numbers"
                )
            intervals.append((float(iv[0]), float(iv[1])))
        return Uniform(attr, (), low, high, ood=tuple(intervals))
    if isinstance(spec, list):
        if not spec or not all(finite(v) for v in spec):
            raise TaskError(f"choices for {attr!r} = {spec!r} must be a non-empty list of numbers")
        if ood:
            raise TaskError(f"ood region given for {attr!r}, whose values are a list of choices")
        return Choice(attr, (), tuple(float(v) for v in spec))
    raise TaskError(
        f"range for {attr!r} = {spec!r} must be a (low, high) tuple, a list of choices or a Param"
    )


def _default_value(param: Param, current: Any) -> Any:
    """The env's own value when the space allows it, else the middle of the range."""
    value = np.asarray(current, dtype=np.float64)
    if value.shape == param.shape:
        try:
            param.check(value)
            return float(value) if not param.shape else tuple(value.ravel().tolist())
        except TaskError:
            pass
    if isinstance(param, Uniform):
        mid = 0.5 * (param.low + param.high)
        return mid if not param.shape else (mid,) * param.size
    if isinstance(param, Choice):
        return param.values[0]
    draw = param.sample(np.random.default_rng(0), 1, False)[0]
    return float(draw) if not param.shape else tuple(draw.ravel().tolist())


def _task_repr(self: Task) -> str:
    values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
    return f"{type(self).__name__}({values})"


def _probe(
    env_cls: type[gym.Env],
    base_kwargs: dict[str, Any],
    targets: list[_Target],
    params: Mapping[str, RangeSpec],
    ood: Mapping[str, Sequence[tuple[float, float]]],
) -> tuple[list[Param], dict[str, Any]]:
    """Probe one instance: every attribute (or path) must exist and be numeric. Returns the
    task space's parameters and each field's default (the env's own value when allowed)."""
    fields_seen: dict[str, str] = {}
    for t in targets:
        if t.field in fields_seen:
            raise TaskError(
                f"parameters {fields_seen[t.field]!r} and {t.path!r} both make the task field "
                f"{t.field!r}; rename one"
            )
        fields_seen[t.field] = t.path
    probe = env_cls(**base_kwargs)
    try:
        have = _numeric_attrs(probe)
        defaults: dict[str, Any] = {}
        space_params: list[Param] = []
        for t, (attr, spec) in zip(targets, params.items(), strict=True):
            try:
                current = t.get(probe)
            except (AttributeError, IndexError, TypeError, KeyError) as err:
                close = difflib.get_close_matches(t.parts[0], have, n=3)
                raise TaskError(
                    f"{env_cls.__name__} has no attribute {attr!r}"
                    + (f" (did you mean {close}?)" if close else "")
                    + (f" ({type(err).__name__}: {err})" if len(t.parts) > 1 or t.index else "")
                    + f"; numeric attributes it has: {have[:20]}"
                ) from err
            if callable(current) or not np.issubdtype(np.asarray(current).dtype, np.number):
                raise TaskError(
                    f"{env_cls.__name__}.{attr} = {current!r} is not numeric; "
                    f"numeric attributes it has: {have[:20]}"
                )
            param = _as_param(t.field, spec, ood.get(attr))
            space_params.append(param)
            defaults[t.field] = _default_value(param, current)
    finally:
        probe.close()
    return space_params, defaults


def make_family(
    base: str | type[gym.Env],
    params: Mapping[str, RangeSpec],
    *,
    name: str | None = None,
    ood: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    horizon: int | None = None,
    derived: Callable[[gym.Env], None] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    module: str | None = None,
    class_name: str | None = None,
    space_cls: type[TaskSpace] = TaskSpace,
) -> type:
    """A family class over ``base`` whose tasks set the attributes in ``params``.

    Args:
        base: a registered Gymnasium env id (e.g. ``"CartPole-v1"``) or a ``gymnasium.Env`` class.
        params: ``{attribute: (low, high)}`` (uniform), ``{attribute: [v1, v2, ...]}`` (choice)
            or ``{attribute: Param}``; an attribute may be a path such as
            ``"model.body_mass[1]"`` (its task field: ``model_body_mass_1``).
        name: the family name (``Task.family``, class names ``{name}Family``/``{name}Task``);
            default: the id without its version, or the class name without ``Env``.
        ood: ``{attribute: [(low, high), ...]}`` held-out intervals outside the range.
        horizon: episode length (truncation); default: the id's ``max_episode_steps``, or none.
        derived: called with the env after each ``set_task`` to update derived quantities.
        env_kwargs: constructor kwargs of the base env (on top of the id's registered kwargs).
        module: ``__module__`` of the built classes (default: the caller's, for pickling).
        class_name: the built class's name (default ``{name}Family``); give the name it is bound
            to in ``module`` when that differs, so instances pickle.
        space_cls: the :class:`~meta_rl_envs.core.TaskSpace` subclass holding the parameters
            (e.g. one with its own split rule, like HalfCheetahDir's two training-only tasks).
    """
    env_cls, registered_kwargs, base_horizon = _resolve_base(base)
    if not isinstance(params, Mapping) or not params:
        raise TaskError(f"params={params!r} must be a non-empty mapping {{attribute: range}}")
    ood = dict(ood or {})
    unknown_ood = sorted(set(ood) - set(params))
    if unknown_ood:
        raise TaskError(f"ood names {unknown_ood}, which are not in params {list(params)}")
    if name is None:
        name = base.split("/")[-1].split("-v")[0] if isinstance(base, str) else env_cls.__name__
        name = name.removesuffix("Env") or name
    if not name.isidentifier():
        raise TaskError(f"name={name!r} must be a Python identifier (it names the classes)")
    base_kwargs = {**registered_kwargs, **dict(env_kwargs or {})}
    default_horizon = base_horizon if horizon is None else horizon
    if default_horizon is not None and (
        not isinstance(default_horizon, (int, np.integer)) or default_horizon < 1
    ):
        raise TaskError(f"horizon={default_horizon!r} must be a positive integer or None")

    targets = [_Target.parse(key) for key in params]
    space_params, defaults = _probe(env_cls, base_kwargs, targets, params, ood)

    module = module or sys._getframe(1).f_globals.get("__name__", __name__)
    fields = [
        (p.name, float if not p.shape else tuple, dataclasses.field(default=defaults[p.name]))
        for p in space_params
    ]
    task_cls = dataclasses.make_dataclass(
        f"{name}Task",
        fields,
        bases=(Task,),
        frozen=True,
        namespace={
            "family": name,
            "__doc__": f"A {name} task: " + ", ".join(p.name for p in space_params) + ".",
            "__module__": module,
            "__repr__": _task_repr,
        },
    )
    if not (isinstance(space_cls, type) and issubclass(space_cls, TaskSpace)):
        raise TaskError(f"space_cls={space_cls!r} is not a TaskSpace subclass")
    space = space_cls(task_cls, space_params)
    derive = derived

    def __init__(self, horizon: int | None = default_horizon, **kwargs: Any) -> None:
        env_cls.__init__(self, **{**base_kwargs, **kwargs})
        if horizon is not None and (not isinstance(horizon, (int, np.integer)) or horizon < 1):
            raise TaskError(f"horizon={horizon!r} must be a positive integer or None")
        self.horizon = None if horizon is None else int(horizon)
        self.task_space = space
        self.elapsed_steps = 0
        self.set_task(task_cls())

    def _on_task_set(self) -> None:
        for p, target in zip(space_params, targets, strict=True):
            value = getattr(self.task, p.name)
            target.set(self, value if not p.shape else np.asarray(value).reshape(p.shape))
        self.update_derived()

    def update_derived(self) -> None:
        """Recompute quantities derived from the task attributes (hook; default: ``derived``)."""
        if derive is not None:
            derive(self)

    def _base_reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """The base env's reset (a family may replace it, e.g. to draw through ``_noise``)."""
        return env_cls.reset(self, seed=seed, options=options)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        rest = dict(options or {})
        task = rest.pop("task", None)
        if task is not None:
            self.set_task(task)
        obs, info = self._base_reset(seed=seed, options=rest or None)
        self.elapsed_steps = 0
        return obs, {**info, **self.task_info()}

    def step(self, action):
        obs, reward, terminated, truncated, info = env_cls.step(self, action)
        self.elapsed_steps += 1
        if self.horizon is not None and self.elapsed_steps >= self.horizon and not terminated:
            truncated = True
        return obs, reward, terminated, truncated, {**info, **self.task_info()}

    rows = "\n".join(f"    | `{k}` | {v} |" for k, v in space.describe().items())
    doc = (
        f"{env_cls.__name__} as a task family (built by make_family).\n\n"
        f"    ## Task Parameters\n    | name | distribution |\n    |------|------|\n{rows}\n"
        f"\n    Episodes are truncated after `horizon` steps (default {default_horizon}).\n"
    )
    family_cls = type(
        class_name or f"{name}Family",
        (TaskFamily, env_cls),
        {
            "__doc__": doc,
            "__module__": module,
            "__init__": __init__,
            "_on_task_set": _on_task_set,
            "update_derived": update_derived,
            "_base_reset": _base_reset,
            "reset": reset,
            "step": step,
            "task_cls": task_cls,
            "task_space": space,
            "family_name": name,
            "base_env": env_cls,
        },
    )
    family_cls.__qualname__ = family_cls.__name__
    # Pickle finds the task class through the family class (bind that one in ``module``).
    task_cls.__qualname__ = f"{family_cls.__qualname__}.task_cls"
    return family_cls
