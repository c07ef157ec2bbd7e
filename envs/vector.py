"""The batched-env contract over Gymnasium envs, for families without a torch-batched twin.

:class:`VectorTaskEnv` runs ``num_tasks * envs_per_task`` scalar family envs (stepped in turn,
Gymnasium's same-step autoreset) behind the contract the torch twins
implement (:class:`~meta_rl_envs.batched.BatchedTaskEnv`: torch tensors in and out,
``info["final_obs"]``, row ``r`` running task ``r // envs_per_task``). It is the one adapter:
rollouts, RL^2 trials (:class:`~meta_rl_envs.wrappers.BatchedTrialEnv`) and the evaluator all
take it as they take a batched twin. :func:`meta_rl_envs.make_env` picks one of the two.

When the envs report ``info["success"]`` (e.g. Meta-World), ``step`` passes it on per row and
:meth:`VectorTaskEnv.task_success` gives each task's success rate over the first episode of its
rows since the last ``reset``.

``workers=K`` (K > 1) steps the rows in K processes instead (:class:`RowWorkers`): each
holds a contiguous shard of rows in its own :class:`Rows` and writes observations, rewards and
ends into shared memory. Row ``r`` gets the same task and the same reset seed either way, so one
process and K processes give the same episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import batch_space
from meta_rl_envs.batched import resolve_device
from meta_rl_envs.core import Task, TaskError
from torch import Tensor

__all__ = ["RowWorkers", "Rows", "VectorTaskEnv"]


class VectorTaskEnv:
    """``num_tasks * envs_per_task`` scalar family envs (:class:`Rows`, or ``workers``
    processes of them) behind the batched-env contract (torch tensors in and out, same-step
    autoreset)."""

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        workers: int = 1,
        **env_kwargs: Any,
    ) -> None:
        for name, v in (
            ("num_tasks", num_tasks),
            ("envs_per_task", envs_per_task),
            ("workers", workers),
        ):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise TaskError(f"{name}={v!r} must be a positive integer")
        self.num_tasks = int(num_tasks)
        self.envs_per_task = int(envs_per_task)
        self.num_envs = self.num_tasks * self.envs_per_task
        self.device = resolve_device(device)
        self.workers = min(int(workers), self.num_envs)
        if self.workers == 1:
            self.rows: Rows | RowWorkers = Rows(env_id, self.num_envs, env_kwargs)
            first = self.rows.envs[0]
        else:  # one local env only for the family's spaces, task space and horizon
            first = self._probe = gym.make(env_id, **env_kwargs)
        self.family = first.unwrapped
        if not hasattr(self.family, "set_task"):
            raise TaskError(f"env {env_id!r} is not a task family (no set_task)")
        self.task_space = self.family.task_space
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, self.num_envs)
        self.action_space = batch_space(first.action_space, self.num_envs)
        horizon = getattr(self.family, "horizon", None) or (
            first.spec and first.spec.max_episode_steps
        )
        if not horizon:
            raise TaskError(f"env {env_id!r} has no horizon (family.horizon or a TimeLimit)")
        self.horizon = int(horizon)
        if self.workers > 1:
            self.rows = RowWorkers(env_id, self.num_envs, self.workers, env_kwargs, first)
        self.tasks: list[Task] = []
        self._clear_success()

    def sample_tasks(self, n: int, rng: Any, split: str = "train") -> list[Task]:
        return self.task_space.sample(n, rng, split)

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        if len(tasks) != self.num_tasks:
            raise TaskError(
                f"set_tasks got {len(tasks)} tasks; this env has num_tasks={self.num_tasks}"
            )
        self.tasks = [self.task_space.validate(t) for t in tasks]
        self.rows.set_tasks([self.tasks[i // self.envs_per_task] for i in range(self.num_envs)])

    row_window: tuple[int, int] | None = None
    """``(first_row, total_rows)`` of a data-parallel shard: row ``i`` is reset with seed
    ``seed + first_row + i``, as in the whole ``total_rows``-row env"""

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        if not self.tasks:
            raise TaskError("call set_tasks(tasks) before reset()")
        seeds = None
        if seed is not None:
            first = self.row_window[0] if self.row_window is not None else 0
            seeds = [seed + first + i for i in range(self.num_envs)]
        obs = self.rows.reset(seeds)
        self._clear_success()
        return self._tensor(obs), {}

    def _tensor(self, x: np.ndarray) -> Tensor:
        t = torch.as_tensor(np.asarray(x), device=self.device)
        return t.float() if t.is_floating_point() else t

    def step(self, action: Tensor):
        """Batched-env step; ``info`` holds ``final_obs`` and, when the envs report one,
        ``success`` (``[N]`` bool: ``info["success"]`` was true at this step)."""
        obs, reward, terminated, truncated, final, success = self.rows.step(action.cpu().numpy())
        out = {"final_obs": self._tensor(final)}
        if success is not None:
            out["success"] = torch.as_tensor(success, device=self.device)
            self._seen = True
            self._success |= success & self._alive
        self._alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        return (
            self._tensor(obs),
            self._tensor(reward).float(),
            torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device),
            out,
        )

    # -- success of each row's first episode since reset -------------------------------------
    def _clear_success(self) -> None:
        self._seen = False
        self._success = np.zeros(self.num_envs, dtype=bool)
        self._alive = np.ones(self.num_envs, dtype=bool)

    def task_success(self) -> np.ndarray | None:
        """``[num_tasks]`` success rate of each task's rows over their first episode since the
        last ``reset`` (None: the envs report no ``info["success"]``)."""
        if not self._seen:
            return None
        return self._success.reshape(self.num_tasks, self.envs_per_task).mean(1)

    def close(self) -> None:
        self.rows.close()
        if self.workers > 1:
            self._probe.close()


class Rows:
    """Scalar family envs of ``n`` rows stepped in turn, each reset in the step its episode
    ends (Gymnasium's same-step autoreset, without a vector env's merging of every info key):
    the one-process body of :class:`VectorTaskEnv` and of each of its workers."""

    def __init__(self, env_id: str, n: int, env_kwargs: dict[str, Any]) -> None:
        self.envs = [gym.make(env_id, **env_kwargs) for _ in range(n)]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        for env, task in zip(self.envs, tasks, strict=True):
            env.unwrapped.set_task(task)

    def reset(self, seeds: list[int] | None) -> np.ndarray:
        seeds = seeds if seeds is not None else [None] * len(self.envs)
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds, strict=True)])

    def step(self, actions: np.ndarray) -> tuple:
        """``(obs, reward, terminated, truncated, final_obs, success or None)``, numpy arrays;
        ``final_obs`` is ``obs`` with the last observation of the rows whose episode ended, and
        ``success`` says which rows' envs reported ``info["success"]`` true (None: none report
        it)."""
        n = len(self.envs)
        obs, final = [None] * n, [None] * n
        reward = np.zeros(n)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        success, seen = np.zeros(n, dtype=bool), False
        for i, env in enumerate(self.envs):
            o, reward[i], terminated[i], truncated[i], info = env.step(actions[i])
            if "success" in info:
                seen = True
                success[i] = float(info["success"]) > 0
            final[i] = o
            obs[i] = env.reset()[0] if terminated[i] or truncated[i] else o
        return (
            np.stack(obs),
            reward,
            terminated,
            truncated,
            np.stack(final),
            success if seen else None,
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()


class RowWorkers:
    """The rows of :class:`VectorTaskEnv` stepped by ``workers`` processes: this process steps
    the first contiguous shard of rows itself while ``workers - 1`` worker processes step the
    others, each in its own :class:`Rows`, writing observations, final observations, rewards and
    ends into shared memory; commands and actions go by pipe.

    Worker processes are forked where the platform allows (families registered in this process
    exist in them too), else spawned. Every process runs numpy's BLAS on one thread (this one
    while the env is open, restored by ``close``): an idle BLAS pool's spinning threads take the
    cores the workers step on, which halved the throughput on 2 cores. A worker's exception is
    raised here with its traceback and the rows it held."""

    def __init__(
        self, env_id: str, n: int, workers: int, env_kwargs: dict[str, Any], probe: gym.Env
    ) -> None:
        import multiprocessing as mp

        from threadpoolctl import threadpool_limits

        self._blas = threadpool_limits(1, user_api="blas")
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        space = probe.observation_space
        self.shards = [(int(s[0]), int(s[-1]) + 1) for s in np.array_split(np.arange(n), workers)]
        fields = {
            "obs": ((n, *space.shape), space.dtype),
            "final": ((n, *space.shape), space.dtype),
            "reward": ((n,), np.float64),
            "terminated": ((n,), np.bool_),
            "truncated": ((n,), np.bool_),
        }
        self._raw = {
            k: ctx.RawArray("b", max(1, int(np.prod(shape)) * np.dtype(dt).itemsize))
            for k, (shape, dt) in fields.items()
        }
        self.arrays = {k: _view(self._raw[k], *fields[k]) for k in fields}
        self.pipes, self.procs = [], []
        self.local: Rows | None = None
        for lo, hi in self.shards[1:]:
            here, there = ctx.Pipe()
            proc = ctx.Process(
                target=_work,
                args=(env_id, env_kwargs, lo, hi, self._raw, fields, there),
                daemon=True,
            )
            proc.start()
            there.close()
            self.pipes.append(here)
            self.procs.append(proc)
        self.local = Rows(env_id, self.shards[0][1], env_kwargs)
        self._ask("ready", [None] * len(self.pipes))

    def _send(self, command: str, values: Sequence[Any]) -> None:
        for pipe, value in zip(self.pipes, values, strict=True):
            pipe.send((command, value))

    def _ask(self, command: str, values: Sequence[Any]) -> list[Any]:
        """Send ``(command, values[k])`` to worker ``k`` (if not sent yet) and gather answers."""
        if command:
            self._send(command, values)
        answers = []
        for k, pipe in enumerate(self.pipes):
            try:
                status, value = pipe.recv()
            except EOFError:
                status, value = "error", f"the process ended (exit code {self.procs[k].exitcode})"
            if status == "error":
                lo, hi = self.shards[k + 1]
                self.close()
                raise RuntimeError(f"env worker {k + 1} (rows {lo}-{hi - 1}) failed: {value}")
            answers.append(value)
        return answers

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        # as plain dicts: a family's task class need not be importable by name in a worker
        self._send("tasks", [[t.to_dict() for t in tasks[lo:hi]] for lo, hi in self.shards[1:]])
        self.local.set_tasks(tasks[: self.shards[0][1]])
        self._ask("", [])

    def reset(self, seeds: list[int] | None) -> np.ndarray:
        self._send("reset", [None if seeds is None else seeds[lo:hi] for lo, hi in self.shards[1:]])
        k = self.shards[0][1]
        self.arrays["obs"][:k] = self.local.reset(None if seeds is None else seeds[:k])
        self._ask("", [])
        return self.arrays["obs"].copy()

    def step(self, actions: np.ndarray) -> tuple:
        self._send("step", [actions[lo:hi] for lo, hi in self.shards[1:]])
        k = self.shards[0][1]
        a = self.arrays
        *mine, first = self.local.step(actions[:k])
        for name, v in zip(
            ("obs", "reward", "terminated", "truncated", "final"), mine, strict=True
        ):
            a[name][:k] = v
        parts = [first, *self._ask("", [])]
        success = None
        if any(p is not None for p in parts):
            success = np.zeros(len(a["reward"]), dtype=bool)
            for (lo, hi), part in zip(self.shards, parts, strict=True):
                if part is not None:
                    success[lo:hi] = part
        return (
            a["obs"].copy(),
            a["reward"].copy(),
            a["terminated"].copy(),
            a["truncated"].copy(),
            a["final"].copy(),
            success,
        )

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "local", None) is None:
            return
        for pipe in self.pipes:
            try:
                pipe.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self.pipes, self.procs = [], []
        self.local.close()
        self.local = None
        self._blas.restore_original_limits()


def _view(raw: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return (
        np.frombuffer(raw, dtype=np.uint8)[: int(np.prod(shape)) * np.dtype(dtype).itemsize]
        .view(dtype)
        .reshape(shape)
    )


def _work(env_id, env_kwargs, lo, hi, raw, fields, pipe) -> None:
    """A :class:`RowWorkers` process: rows ``lo..hi-1`` in a :class:`Rows`, until "close"."""
    import traceback

    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    out = {k: _view(raw[k], *fields[k])[lo:hi] for k in fields}
    rows = None
    while True:
        command, value = pipe.recv()
        if command == "close":
            break
        try:
            if command == "ready":
                rows = Rows(env_id, hi - lo, env_kwargs)
                answer = None
            elif command == "tasks":
                space = rows.envs[0].unwrapped.task_space
                answer = rows.set_tasks([space.validate(t) for t in value])
            elif command == "reset":
                out["obs"][:] = rows.reset(value)
                answer = None
            else:
                *arrays, answer = rows.step(value)
                for k, v in zip(
                    ("obs", "reward", "terminated", "truncated", "final"), arrays, strict=True
                ):
                    out[k][:] = v
            pipe.send(("ok", answer))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            pipe.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"))
    if rows is not None:
        rows.close()
