"""Meta-World ML1 and ML10 as task families (extra ``meta-rl[metaworld]``, metaworld 3.x).

A task is one Meta-World goal: the env (``env``, an index into Meta-World's list of v3 envs,
name in :attr:`MetaWorldTask.env_name`) and its ``rand_vec`` (the object/goal positions the env
places at reset). The family env wraps Meta-World's own Sawyer envs (one per env name, built on
first use) with the goal hidden from the observation (Meta-World's ML setting).

## Splits: Meta-World's own
- **ML1** (one env name): ``metaworld.ML1(env_name, seed)`` draws 50 train goals with ``seed`` and
  50 test goals with ``seed + 1`` (same range, different goals).
- **ML10**: ``metaworld.ML10(seed)``: 10 train env names x 50 goals, 5 other test env names x 50.

There is no ``ood`` split. Each split is a finite list of tasks: ``sample_tasks`` draws from that
list without replacement (cycling through fresh permutations when ``n`` exceeds it).
``split_of`` says ``"test"`` for a task of the test list and ``"train"`` otherwise (a hand-made
goal counts as a training task; only the benchmark's test list is held out).

## Guards against upstream defects (metaworld 3.1.1)
- The registered ids ``Meta-World/ML1-train`` and ``Meta-World/ML1-test`` both build the *test*
  split: their entry points are lambdas closing over the loop variable ``split``, which is
  ``"test"`` by the time they run. We never go through those ids: the task lists come from the
  ``metaworld.ML1`` / ``metaworld.ML10`` benchmark objects, and building a family checks that
  its train and test lists share no task (``tests/test_metaworld.py`` checks both the guard and
  that the defect is still there upstream).
- Benchmark construction seeds NumPy's *global* generator (and restores it after); we always
  pass an explicit ``benchmark_seed`` (default 0), so the task lists are the same in every
  process. The lists are built once per (metaworld version, benchmark, env name, seed) and
  kept in memory and on disk (:func:`cache_dir`; ``META_RL_CACHE=`` turns the disk off).

## Episodes, reward, success
Horizon 500 (Meta-World 3's ``max_path_length``; the 2019 paper's v1 envs used 150). Reward:
Meta-World's ``v2`` reward functions (``reward_function_version``). ``info["success"]`` is 1.0 on
steps where the env's success criterion holds; an episode counts as a success when any of its
steps does (Meta-World's evaluation convention): see :func:`success_rate`. Episodes never
terminate, they are truncated at ``horizon``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import metaworld
import numpy as np
from meta_rl_envs.core import (
    Choice,
    Task,
    TaskError,
    TaskFamily,
    TaskSpace,
    Uniform,
    as_generator,
    check_split,
)
from metaworld import env_dict as _env_dict
from metaworld.sawyer_xyz_env import SawyerXYZEnv
from metaworld.types import Task as MWTask

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS",
    "ENV_NAMES",
    "BenchmarkTasks",
    "MetaWorldFamily",
    "MetaWorldTask",
    "MetaWorldTaskSpace",
    "benchmark_tasks",
    "cache_dir",
    "reset_bounds",
    "success_rate",
]

BENCHMARKS = ("ML1", "ML10")
ENV_NAMES: tuple[str, ...] = tuple(_env_dict.ALL_V3_ENVIRONMENTS)
"""Meta-World's v3 env names; a task's ``env`` is an index into this tuple."""
MAX_PATH_LENGTH = 500
metaworld_version = version("metaworld")
_HAND = SawyerXYZEnv._HAND_SPACE
WORKSPACE = (float(_HAND.low.min()), float(_HAND.high.max()))
"""The hull of the Sawyer's hand space (m); every v3 env's rand_vec box lies inside (3.1.1)."""


@dataclass(frozen=True)
class MetaWorldTask(Task):
    """One Meta-World goal: the env (index into :data:`ENV_NAMES`) and its ``rand_vec``."""

    family = "MetaWorld"
    env: float = 0.0
    rand_vec: tuple[float, ...] = ()

    @property
    def env_name(self) -> str:
        return ENV_NAMES[int(self.env)]

    def __repr__(self) -> str:
        vec = ", ".join(f"{v:.4g}" for v in self.rand_vec)
        return f"MetaWorldTask({self.env_name}, rand_vec=({vec}))"


# --------------------------------------------------------------------------------------------
# The benchmark's task lists (built once per process)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkTasks:
    """The train and test task lists of one Meta-World benchmark."""

    name: str
    """"ML1-<env name>" or "ML10" """
    seed: int
    train: tuple[MetaWorldTask, ...]
    test: tuple[MetaWorldTask, ...]

    @property
    def env_indices(self) -> tuple[int, ...]:
        return tuple(sorted({int(t.env) for t in self.train + self.test}))

    @property
    def rand_vec_sizes(self) -> dict[int, int]:
        return {int(t.env): len(t.rand_vec) for t in self.train + self.test}


def _tasks_of(mw_tasks: Sequence[MWTask]) -> tuple[MetaWorldTask, ...]:
    out = []
    for t in mw_tasks:
        vec = pickle.loads(t.data)["rand_vec"]
        out.append(MetaWorldTask(float(ENV_NAMES.index(t.env_name)), tuple(map(float, vec))))
    return tuple(out)


def cache_dir() -> Path | None:
    """Where built task lists are kept between processes: ``$META_RL_CACHE`` (empty: no disk
    cache), else ``$XDG_CACHE_HOME/meta-rl`` or ``~/.cache/meta-rl``."""
    if "META_RL_CACHE" in os.environ:
        return Path(os.environ["META_RL_CACHE"]) if os.environ["META_RL_CACHE"] else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meta-rl"


def _cache_file(name: str, seed: int) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    return root / f"metaworld-{metaworld_version}" / f"{name}-seed{seed}.json"


def _load_cached(path: Path | None) -> tuple[tuple[MetaWorldTask, ...], ...] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return tuple(
            tuple(MetaWorldTask(float(e), tuple(map(float, v))) for e, v in data[split])
            for split in ("train", "test")
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the unreadable Meta-World task cache %s (%s)", path, err)
        return None


def _store_cached(path: Path | None, train, test) -> None:
    if path is None:
        return
    data = {
        s: [[t.env, list(t.rand_vec)] for t in ts] for s, ts in (("train", train), ("test", test))
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    except OSError as err:
        log.debug("could not write the Meta-World task cache %s (%s)", path, err)


@functools.cache
def benchmark_tasks(benchmark: str, env_name: str | None = None, seed: int = 0) -> BenchmarkTasks:
    """The task lists of ``metaworld.ML1(env_name, seed)`` or ``metaworld.ML10(seed)``.

    Building them steps every env through 50 resets per split (ML10: ~10 s), so the lists are
    kept per process and on disk (:func:`cache_dir`, keyed by the metaworld version).
    Raises :class:`TaskError` if the two lists share a task (the upstream-defect guard)."""
    if benchmark not in BENCHMARKS:
        raise TaskError(f"benchmark={benchmark!r} is not supported; choose one of {BENCHMARKS}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TaskError(f"benchmark_seed={seed!r} must be an int (Meta-World seeds its goals)")
    if benchmark == "ML1" and env_name not in _env_dict.ALL_V3_ENVIRONMENTS:
        raise TaskError(
            f"env_name={env_name!r} is not a Meta-World v3 env; choose one of {list(ENV_NAMES)}"
        )
    name = f"ML1-{env_name}" if benchmark == "ML1" else benchmark
    path = _cache_file(name, int(seed))
    cached = _load_cached(path)
    if cached is not None:
        train, test = cached
    else:
        if benchmark == "ML1":
            bench = metaworld.ML1(env_name, seed=int(seed))
        else:
            bench = metaworld.ML10(seed=int(seed))
        train, test = _tasks_of(bench.train_tasks), _tasks_of(bench.test_tasks)
    shared = set(train) & set(test)
    if shared or not train or not test:
        raise TaskError(
            f"Meta-World {name} (seed {seed}) handed out {len(train)} train and {len(test)} test "
            f"tasks sharing {len(shared)}; the splits must be non-empty and disjoint"
        )
    if cached is None:
        _store_cached(path, train, test)
    log.info("Meta-World %s seed %d: %d train / %d test tasks", name, seed, len(train), len(test))
    return BenchmarkTasks(name, int(seed), train, test)


_RESET_BOUNDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def reset_bounds(index: int, env: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of the ``rand_vec`` of env ``index`` (its ``_random_reset_space``), read
    from ``env`` or from a throwaway instance, once per process."""
    if index not in _RESET_BOUNDS:
        own = env is None
        if own:
            env = _env_dict.ALL_V3_ENVIRONMENTS[ENV_NAMES[index]]()
        try:
            space = env._random_reset_space
            _RESET_BOUNDS[index] = (
                np.asarray(space.low, np.float64),
                np.asarray(space.high, np.float64),
            )
        finally:
            if own:
                env.close()
    return _RESET_BOUNDS[index]


# --------------------------------------------------------------------------------------------
# The task space: Meta-World's finite train / test lists
# --------------------------------------------------------------------------------------------
class MetaWorldTaskSpace(TaskSpace):
    """The tasks of one benchmark: ``train`` and ``test`` are Meta-World's own lists."""

    def __init__(self, tasks: BenchmarkTasks) -> None:
        self.tasks = tasks
        sizes = tasks.rand_vec_sizes
        super().__init__(
            MetaWorldTask,
            [
                Choice("env", (), tuple(float(i) for i in tasks.env_indices)),
                # Positions inside the Sawyer's workspace (the hull of its hand space); validate()
                # checks each env's own box.
                Uniform("rand_vec", (max(sizes.values()),), WORKSPACE[0], WORKSPACE[1]),
            ],
        )
        self._test = frozenset(tasks.test)

    @property
    def is_finite(self) -> bool:
        return True

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def split_of(self, task: Task) -> str:
        return "test" if task in self._test else "train"

    def sample(
        self, n: int, rng: np.random.Generator | int | None, split: str = "train"
    ) -> list[Task]:
        check_split(split)
        if split == "ood":
            raise TaskError(
                f"family {self.tasks.name!r} has no ood split: Meta-World defines only its train "
                f"and test lists; use one of {list(self.splits)}"
            )
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise TaskError(f"n={n!r} must be a non-negative integer")
        rng = as_generator(rng)
        pool = self.tasks.train if split == "train" else self.tasks.test
        order: list[int] = []
        while len(order) < n:  # without replacement, a fresh permutation per pass
            order.extend(rng.permutation(len(pool)).tolist())
        return [pool[i] for i in order[:n]]

    def validate(self, task: Task | Mapping[str, Any] | str) -> Task:
        if isinstance(task, str):
            task = MetaWorldTask.from_json(task)
        elif isinstance(task, Mapping):
            task = MetaWorldTask.from_dict(task)
        if not isinstance(task, MetaWorldTask):
            fam = getattr(task, "family", type(task).__name__)
            raise TaskError(
                f"a task of family {fam!r} ({type(task).__name__}) was given to family "
                f"{self.tasks.name!r}, which takes MetaWorldTask"
            )
        env = task.array("env")
        if env.size != 1:
            raise TaskError(
                f"task parameter 'env' has {env.size} values; this family expects shape scalar "
                "(1 value: an index into meta_rl_envs.metaworld_tasks.ENV_NAMES)"
            )
        self.params["env"].check(env.reshape(()))
        index = int(env)
        vec = task.array("rand_vec")
        low, high = reset_bounds(index)
        if vec.size != low.size:
            self.params["rand_vec"].check(vec)  # out-of-range values are named first
            raise TaskError(
                f"task parameter 'rand_vec' has {vec.size} values; {ENV_NAMES[index]} expects "
                f"shape ({low.size},)"
            )
        if not np.all(np.isfinite(vec)) or np.any(vec < low - 1e-9) or np.any(vec > high + 1e-9):
            raise TaskError(
                f"task parameter 'rand_vec' = {vec.tolist()} is out of range for "
                f"{ENV_NAMES[index]}: allowed low {low.tolist()} to high {high.tolist()}"
            )
        return task

    def describe(self) -> dict[str, str]:
        names = ", ".join(ENV_NAMES[i] for i in self.tasks.env_indices)
        return {
            "env": f"one of {names}",
            "rand_vec": f"Meta-World's goals: {len(self.tasks.train)} train, "
            f"{len(self.tasks.test)} test (seed {self.tasks.seed})",
        }


# --------------------------------------------------------------------------------------------
# The family env
# --------------------------------------------------------------------------------------------
class MetaWorldFamily(TaskFamily, gym.Env):
    """Meta-World ML1 (one env name) or ML10 as a task family, goal hidden.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `env` | the benchmark's env names (ML1: one; ML10: 10 train + 5 test) | by env (ML10) |
    | `rand_vec` | Meta-World's goal lists (50 per env per split) | Meta-World's train/test |

    Args:
        benchmark: "ML1" or "ML10".
        env_name: the ML1 env (e.g. "reach-v3"); ignored by ML10.
        benchmark_seed: the seed of Meta-World's goal lists (ML1: train ``seed``, test
            ``seed + 1``).
        horizon: episode length, at most 500 (Meta-World's ``max_path_length``).
        reward_function_version: Meta-World's reward version, "v2" (default) or "v1".
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        benchmark: str = "ML1",
        env_name: str = "reach-v3",
        benchmark_seed: int = 0,
        horizon: int = MAX_PATH_LENGTH,
        reward_function_version: str = "v2",
    ) -> None:
        if not isinstance(horizon, (int, np.integer)) or not 1 <= horizon <= MAX_PATH_LENGTH:
            raise TaskError(
                f"horizon={horizon!r} must be an integer in [1, {MAX_PATH_LENGTH}] "
                "(Meta-World's envs stop at max_path_length=500)"
            )
        if reward_function_version not in ("v1", "v2"):
            raise TaskError(
                f"reward_function_version={reward_function_version!r}; choose 'v1' or 'v2'"
            )
        self.benchmark = benchmark
        self.horizon = int(horizon)
        self.reward_function_version = reward_function_version
        self.tasks = benchmark_tasks(
            benchmark, env_name if benchmark == "ML1" else None, benchmark_seed
        )
        self.task_space = MetaWorldTaskSpace(self.tasks)
        self._envs: dict[int, Any] = {}
        self._env: Any = None
        self.elapsed_steps = 0
        self._sawyer(int(self.tasks.train[0].env))  # (also records its rand_vec bounds)
        self.set_task(self.tasks.train[0])
        # Every Sawyer env has the same (goal-hidden) observation bounds and action space.
        obs_space = self._env.sawyer_observation_space
        self.observation_space = gym.spaces.Box(obs_space.low, obs_space.high, dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)

    # -- tasks -----------------------------------------------------------------------------
    def _sawyer(self, index: int) -> Any:
        if index not in self._envs:
            cls = _env_dict.ALL_V3_ENVIRONMENTS[ENV_NAMES[index]]
            self._envs[index] = cls(reward_function_version=self.reward_function_version)
            reset_bounds(index, self._envs[index])
        return self._envs[index]

    def _on_task_set(self) -> None:
        task = self.task
        env = self._sawyer(int(task.env))
        kwargs = dict(_env_dict.ML1_ARGS_KWARGS[task.env_name]["kwargs"])
        kwargs.pop("task_id", None)
        data = {
            **kwargs,
            "rand_vec": np.asarray(task.rand_vec, dtype=np.float64),
            "env_cls": type(env),
            "partially_observable": True,
        }
        env.set_task(MWTask(env_name=task.env_name, data=pickle.dumps(data)))
        self._env = env

    # -- Gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._take_task_option(options)
        super().reset(seed=seed)  # seeds self.np_random (Meta-World's reset itself is fixed)
        obs, info = self._env.reset()
        self.elapsed_steps = 0
        return obs, {**info, **self.task_info()}

    def step(self, action):
        obs, reward, _, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        self.elapsed_steps += 1
        truncated = bool(truncated or self.elapsed_steps >= self.horizon)
        info = {**info, "success": float(info["success"]), **self.task_info()}
        return obs, float(reward), False, truncated, info

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


# --------------------------------------------------------------------------------------------
# Success rate
# --------------------------------------------------------------------------------------------
def success_rate(
    env: gym.Env,
    tasks: Sequence[Task],
    act: Callable[[np.ndarray], np.ndarray],
    episodes: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Meta-World's success rate of ``act`` (observation -> action) over ``tasks``.

    An episode succeeds when ``info["success"]`` is 1 on any step; returns the fraction of
    successful episodes (``success_rate``), its standard error and the mean episode return."""
    successes, returns = [], []
    for i, task in enumerate(tasks):
        for e in range(episodes):
            obs, _ = env.reset(seed=seed + i * episodes + e, options={"task": task})
            done, success, total = False, 0.0, 0.0
            while not done:
                obs, reward, terminated, truncated, info = env.step(act(obs))
                success = max(success, float(info["success"]))
                total += float(reward)
                done = terminated or truncated
            successes.append(success)
            returns.append(total)
    s = np.asarray(successes)
    se = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan")
    return {
        "success_rate": float(s.mean()),
        "success_se": se,
        "mean_return": float(np.mean(returns)),
        "episodes": float(len(s)),
    }
