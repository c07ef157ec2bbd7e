"""The task protocol shared by every family.

A **task** is a frozen dataclass of one family's parameters (a goal, arm probabilities, a pole
length...). It round-trips through JSON and validates its own values.

A **task space** lists the parameters with how they are drawn (``Uniform``, ``Normal``,
``Dirichlet``, ``Choice``) and, where it makes sense, a held-out ``ood`` region.

A **split** is a value: ``"train"``, ``"test"`` or ``"ood"``.

- ``train`` and ``test`` draw from the same range, and never share a task: every task belongs to
  exactly one of them by a hash of its exact parameter values (a fixed partition of the space, so
  it holds across seeds, processes and machines). Sampling a split draws until it has ``n`` tasks
  of that side.
- ``ood`` draws every parameter that declares an ``ood`` region from that region (outside the
  training range) and the others from their usual range. A space whose parameters declare no
  ``ood`` region has no ``ood`` split and says so.

A **family** is a Gymnasium env that mixes in :class:`TaskFamily`: ``sample_tasks(n, rng,
split)``, ``set_task(task)``, ``get_task()``, ``reset(options={"task": task})`` and
``info["task"]`` on every step. All randomness comes from explicit ``numpy.random.Generator``
objects seeded from one seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

Split = Literal["train", "test", "ood"]
SPLITS: tuple[str, ...] = ("train", "test", "ood")
TEST_FRACTION = 0.25  # share of the in-range parameter space that belongs to the test split


class TaskError(ValueError):
    """A task, split or family argument that is not allowed. The message names the problem."""


def check_split(split: str) -> str:
    """``split`` if it is one of ``train``, ``test``, ``ood``; else a :class:`TaskError`."""
    if split not in SPLITS:
        raise TaskError(f"split={split!r} is not a split; choose one of {list(SPLITS)}")
    return split


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """An explicit generator: pass a Generator through, seed a new one from an int."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise TaskError(
            "rng is required: pass a numpy.random.Generator or an int seed "
            "(meta-rl draws no randomness from global state)"
        )
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TaskError(f"rng={rng!r} is neither a numpy.random.Generator nor an int seed")


# --------------------------------------------------------------------------------------------
# Parameters: how one field of a task is drawn, and which values it may take
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One task parameter. ``shape=()`` gives a float, otherwise a tuple of floats (row-major)."""

    name: str
    shape: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Number of floats of the parameter."""
        return math.prod(self.shape)

    def sample(self, rng: np.random.Generator, n: int, ood: bool) -> np.ndarray:
        """``n`` draws as an array of shape ``(n, *shape)``."""
        raise NotImplementedError

    def check(self, value: np.ndarray) -> None:
        """Raise :class:`TaskError` naming the field when ``value`` is not allowed."""

    @property
    def has_ood(self) -> bool:
        """True when the parameter declares an out-of-distribution region."""
        return False

    def row_sequential(self, ood: bool) -> bool:
        """Whether ``sample(rng, n, ood)`` draws the same numbers as ``n`` calls
        ``sample(rng, 1, ood)`` in a row (so a one-parameter space may draw a block at once)."""
        return False

    def describe(self) -> str:
        """The distribution and its range, as text."""
        raise NotImplementedError

    def _fail(self, value: Any, allowed: str) -> None:
        raise TaskError(f"task parameter {self.name!r} = {value!r} is out of range: {allowed}")


@dataclass(frozen=True)
class Uniform(Param):
    """Uniform on ``[low, high]`` per element. ``ood`` lists held-out intervals (outside
    ``[low, high]``) used by the ``ood`` split; ``limits`` are the values a hand-made task may
    take (default: the hull of the range and the ood intervals)."""

    low: float = 0.0
    high: float = 1.0
    ood: tuple[tuple[float, float], ...] = ()
    limits: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise TaskError(f"{self.name}: low={self.low} must be below high={self.high}")
        for a, b in self.ood:
            if not a < b or (a < self.high and b > self.low):
                raise TaskError(
                    f"{self.name}: ood interval ({a}, {b}) must be non-empty and outside "
                    f"the range [{self.low}, {self.high}]"
                )

    @property
    def bounds(self) -> tuple[float, float]:
        if self.limits is not None:
            return self.limits
        lows = [self.low] + [a for a, _ in self.ood]
        highs = [self.high] + [b for _, b in self.ood]
        return min(lows), max(highs)

    @property
    def has_ood(self) -> bool:
        return bool(self.ood)

    def row_sequential(self, ood: bool) -> bool:
        return type(self).sample is Uniform.sample and not (ood and self.ood)

    def sample(self, rng: np.random.Generator, n: int, ood: bool) -> np.ndarray:
        shape = (n, *self.shape)
        if not (ood and self.ood):
            return rng.uniform(self.low, self.high, size=shape)
        # Pick an interval in proportion to its length, then a point inside it.
        lengths = np.array([b - a for a, b in self.ood])
        which = rng.choice(len(self.ood), size=shape, p=lengths / lengths.sum())
        lo = np.array([a for a, _ in self.ood])[which]
        return lo + lengths[which] * rng.random(size=shape)

    def check(self, value: np.ndarray) -> None:
        lo, hi = self.bounds
        if not np.all(np.isfinite(value)) or np.any(value < lo) or np.any(value > hi):
            self._fail(value.tolist(), f"allowed [{lo}, {hi}]")

    def describe(self) -> str:
        text = f"U[{self.low:g}, {self.high:g}]"
        if self.shape:
            text += f"^{self.shape}"
        if self.ood:
            text += "; ood " + " or ".join(f"U[{a:g}, {b:g}]" for a, b in self.ood)
        return text


@dataclass(frozen=True)
class Normal(Param):
    """Normal(mean, std) per element; any finite value is allowed."""

    mean: float = 0.0
    std: float = 1.0

    def row_sequential(self, ood: bool) -> bool:
        return type(self).sample is Normal.sample

    def sample(self, rng: np.random.Generator, n: int, ood: bool) -> np.ndarray:
        return rng.normal(self.mean, self.std, size=(n, *self.shape))

    def check(self, value: np.ndarray) -> None:
        if not np.all(np.isfinite(value)):
            self._fail(value.tolist(), "allowed: finite values")

    def describe(self) -> str:
        return f"N({self.mean:g}, {self.std:g}^2)^{self.shape}"


@dataclass(frozen=True)
class Dirichlet(Param):
    """Rows along the last axis of ``shape`` drawn from a symmetric Dirichlet(alpha)."""

    alpha: float = 1.0

    def row_sequential(self, ood: bool) -> bool:
        return type(self).sample is Dirichlet.sample

    def sample(self, rng: np.random.Generator, n: int, ood: bool) -> np.ndarray:
        rows = math.prod(self.shape[:-1])
        draws = rng.dirichlet(np.full(self.shape[-1], self.alpha), size=n * rows)
        return draws.reshape(n, *self.shape)

    def check(self, value: np.ndarray) -> None:
        rows = value.reshape(-1, value.shape[-1])
        sums = rows.sum(-1)
        bad = ~np.isfinite(rows).all(-1) | (rows < 0).any(-1) | ~np.isclose(sums, 1.0, atol=1e-6)
        if bad.any():
            i = int(np.argmax(bad))
            self._fail(
                f"row {i}: {rows[i].tolist()} (sum {sums[i]:.6g})",
                "allowed: each row non-negative and sum to 1",
            )

    def describe(self) -> str:
        return f"Dirichlet({self.alpha:g}) rows of shape {self.shape}"


@dataclass(frozen=True)
class Choice(Param):
    """One of a finite set of values (scalars only)."""

    values: tuple[float, ...] = (0.0, 1.0)

    def sample(self, rng: np.random.Generator, n: int, ood: bool) -> np.ndarray:
        return np.asarray(self.values, dtype=float)[rng.integers(len(self.values), size=n)]

    def check(self, value: np.ndarray) -> None:
        if not np.isin(value, self.values).all():
            self._fail(value.tolist(), f"allowed one of {list(self.values)}")

    def describe(self) -> str:
        return "one of " + ", ".join(f"{v:g}" for v in self.values)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """Base class of task dataclasses. Fields are floats or (nested-flat) tuples of floats.

    Subclasses set ``family`` (the registered id's family name) and declare their fields.
    """

    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The task as a JSON-able mapping, with its ``family``."""
        out: dict[str, Any] = {"family": self.family}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        """The task as a JSON string (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """The task of a mapping made by :meth:`to_dict`; a :class:`TaskError` names a wrong
        family, unknown or missing fields or a non-numeric value."""
        if not isinstance(data, Mapping):
            raise TaskError(f"a {cls.__name__} must be a mapping of fields, got {type(data)}")
        names = [f.name for f in dataclasses.fields(cls)]
        family = data.get("family", cls.family)
        if family != cls.family:
            raise TaskError(f"task of family {family!r} given to family {cls.family!r}")
        unknown = sorted(set(data) - set(names) - {"family"})
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise TaskError(
                f"{cls.__name__}: unknown fields {unknown}, missing fields {missing}; "
                f"expected fields {names}"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            v = data[f.name]
            try:
                kwargs[f.name] = (
                    tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)
                )
            except (TypeError, ValueError) as err:
                raise TaskError(f"{cls.__name__}.{f.name} = {v!r} is not numeric") from err
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Task:
        """The task of a JSON string made by :meth:`to_json` (a :class:`TaskError` if malformed)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskError(f"malformed task JSON for {cls.__name__}: {err}") from err
        return cls.from_dict(data)

    def array(self, name: str) -> np.ndarray:
        """Field ``name`` as a float64 numpy array."""
        return np.asarray(getattr(self, name), dtype=np.float64)

    def digest(self) -> float:
        """A number in [0, 1) fixed by the exact parameter values (decides train vs test)."""
        raw = b"".join(
            np.ascontiguousarray(self.array(f.name), dtype="<f8").tobytes()
            for f in dataclasses.fields(self)
        )
        h = hashlib.blake2b(self.family.encode() + raw, digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64


def stack_tasks(tasks: Sequence[Task]) -> dict[str, np.ndarray]:
    """Field-wise stack: ``{field: array of shape (len(tasks), *field_shape)}``."""
    if not tasks:
        raise TaskError("stack_tasks needs at least one task")
    cls = type(tasks[0])
    for t in tasks:
        if type(t) is not cls:
            raise TaskError(f"cannot stack a {type(t).__name__} with a {cls.__name__}")
    return {f.name: np.stack([t.array(f.name) for t in tasks]) for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------------------------
# Task spaces: parameters + splits
# --------------------------------------------------------------------------------------------
class TaskSpace:
    """The parameters of a family's tasks, how they are drawn, and the split partition.

    ``make`` turns a dict of per-field arrays into a task (defaults to ``task_cls(**fields)`` with
    arrays flattened to tuples); families whose task has derived fields may pass their own.
    """

    def __init__(self, task_cls: type[Task], params: Sequence[Param]) -> None:
        self.task_cls = task_cls
        self.params = {p.name: p for p in params}
        fields = [f.name for f in dataclasses.fields(task_cls)]
        if sorted(fields) != sorted(self.params):
            raise TaskError(
                f"{task_cls.__name__}: fields {fields} != parameters {list(self.params)}"
            )

    @property
    def has_ood(self) -> bool:
        """True when a parameter declares an out-of-distribution region."""
        return any(p.has_ood for p in self.params.values())

    @property
    def is_finite(self) -> bool:
        """True when every parameter is a finite :class:`Choice`."""
        return all(isinstance(p, Choice) for p in self.params.values())

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this space offers: ``train``, ``test`` and, with an ood region, ``ood``."""
        return SPLITS if self.has_ood else SPLITS[:2]

    def _build(self, values: dict[str, np.ndarray], i: int) -> Task:
        kwargs = {}
        for name, p in self.params.items():
            v = values[name][i]
            kwargs[name] = float(v) if not p.shape else tuple(v.ravel().tolist())
        return self.task_cls(**kwargs)

    def split_of(self, task: Task) -> str:
        """``"ood"`` if any parameter lies in its ood region, else ``"train"`` or ``"test"``."""
        for name, p in self.params.items():
            if isinstance(p, Uniform) and p.ood:
                v = task.array(name)
                if np.any((v < p.low) | (v > p.high)):
                    return "ood"
        if self.is_finite:
            return "train"  # a finite space cannot hold unseen draws: test shares train's tasks
        return "test" if task.digest() < TEST_FRACTION else "train"

    def sample(
        self, n: int, rng: np.random.Generator | int | None, split: str = "train"
    ) -> list[Task]:
        """``n`` tasks of ``split``. Candidates are drawn one task after the other from ``rng``
        and kept when they belong to ``split``, so the first ``k`` tasks of a seeded draw do not
        depend on ``n`` (``sample(3, 0)`` is ``sample(5, 0)[:3]``)."""
        check_split(split)
        if split == "ood" and not self.has_ood:
            raise TaskError(
                f"family {self.task_cls.family!r} has no ood split: none of its parameters "
                f"{list(self.params)} declares a held-out region; use one of {list(self.splits)}"
            )
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise TaskError(f"n={n!r} must be a non-negative integer")
        rng = as_generator(rng)
        want = "train" if (split == "test" and self.is_finite) else split
        ood = split == "ood"
        (only,) = self.params.values() if len(self.params) == 1 else (None,)
        tasks: list[Task] = []
        while len(tasks) < n:
            block = max(8, 2 * (n - len(tasks)))
            if only is not None and only.row_sequential(ood):  # one block draw, same numbers
                values = {only.name: only.sample(rng, block, ood)}
            else:  # candidate by candidate: each task's parameters in turn
                rows = [[p.sample(rng, 1, ood) for p in self.params.values()] for _ in range(block)]
                values = {
                    name: np.concatenate([row[j] for row in rows])
                    for j, name in enumerate(self.params)
                }
            for i in range(block):
                task = self._build(values, i)
                if self.split_of(task) == want:
                    tasks.append(task)
                    if len(tasks) == n:
                        break
        return tasks

    def validate(self, task: Task | Mapping[str, Any] | str) -> Task:
        """Coerce a task, a dict or a JSON string into a checked task of this space."""
        if isinstance(task, str):
            task = self.task_cls.from_json(task)
        elif isinstance(task, Mapping):
            task = self.task_cls.from_dict(task)
        if not isinstance(task, self.task_cls):
            fam = getattr(task, "family", type(task).__name__)
            raise TaskError(
                f"a task of family {fam!r} ({type(task).__name__}) was given to family "
                f"{self.task_cls.family!r}, which takes {self.task_cls.__name__}"
            )
        for name, p in self.params.items():
            v = task.array(name)
            if v.size != p.size:
                raise TaskError(
                    f"task parameter {name!r} has {v.size} values; this family expects shape "
                    f"{p.shape or 'scalar'} ({p.size} values)"
                )
            p.check(v.reshape(p.shape))
        return task

    def describe(self) -> dict[str, str]:
        """``{parameter: its distribution and range, as text}`` (``meta-rl envs`` prints it)."""
        return {name: p.describe() for name, p in self.params.items()}


# --------------------------------------------------------------------------------------------
# The family mixin for Gymnasium envs
# --------------------------------------------------------------------------------------------
class TaskFamily:
    """Mix into a ``gymnasium.Env`` (put it first in the bases). The env sets ``task_space`` in
    ``__init__`` (before calling ``set_task``) and reads its current task from ``self.task``.

    ``reset(options={"task": t})`` switches task before resetting. The env must put
    ``self.task_info()`` into the ``info`` of ``reset`` and ``step``.
    """

    task_space: TaskSpace
    task: Task

    def sample_tasks(
        self, n: int, rng: np.random.Generator | int | None, split: str = "train"
    ) -> list[Task]:
        """``n`` tasks of ``split`` drawn from ``rng`` (a Generator or an int seed); the first
        ``k`` of a draw do not depend on ``n``."""
        return self.task_space.sample(n, rng, split)

    def set_task(self, task: Task | Mapping[str, Any] | str) -> None:
        """Set the task the next episodes run on (a Task, its mapping or its JSON; validated)."""
        self.task = self.task_space.validate(task)
        self._on_task_set()

    def get_task(self) -> Task:
        """The current task."""
        return self.task

    def _on_task_set(self) -> None:
        """Hook: derive per-task quantities after ``set_task``."""

    def _take_task_option(self, options: Mapping[str, Any] | None) -> None:
        if options and "task" in options:
            self.set_task(options["task"])

    def task_info(self) -> dict[str, Any]:
        """``{"task": ...}``, the task echoed in each step's ``info``."""
        return {"task": self.task.to_dict()}

    def _noise(self, kind: str, k: int) -> np.ndarray:
        """``k`` uniforms in [0, 1) from the env's seeded generator (``kind``: "step" | "reset").

        Scalar families draw all their randomness here, mirroring ``BatchedEnv._rand``, so the
        batched twin can be fed the same numbers in the step-for-step tests."""
        return self.np_random.random(k)
