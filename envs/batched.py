"""The torch-batched env contract: ``num_tasks x envs_per_task`` rows stepping at once.

Row ``r`` runs task ``r // envs_per_task``. Tensors live on ``device``; nothing in ``step``
copies to the host.

Autoreset (same step): when a row terminates or is truncated, ``step`` returns the first
observation of that row's next episode (same task) in ``obs``; the last observation of the
finished episode is in ``info["final_obs"]`` (all rows; equal to ``obs`` where no episode ended).
``reward``, ``terminated`` and ``truncated`` belong to the finished step.

Randomness comes from one ``torch.Generator`` on ``device`` seeded by ``reset(seed=...)``; all of
it is drawn through ``self._rand(kind, k)``: ``k`` uniforms in [0, 1) for every row, ``kind`` being
``"step"`` (noise of a transition) or ``"reset"`` (noise of an initial state, drawn for every row
and used where a row resets). The scalar env of a family draws the same ``k`` numbers through
``self._noise(kind, k)`` and maps them the same way, so the step-for-step tests can feed both the
same numbers. No host-device sync happens in ``step``.

:class:`BatchedTaskEnv` is the contract as a ``typing.Protocol``: the torch twins
(:class:`BatchedEnv`) and the Gymnasium adapter (:class:`~meta_rl_envs.vector.VectorTaskEnv`)
implement it, and everything that steps many tasks at once takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.core import Task, TaskError, TaskSpace, stack_tasks


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device (``auto``: CUDA when available); a :class:`TaskError` when
    CUDA is asked for and absent."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TaskError(f"device={str(device)!r} was asked for but CUDA is not available")
    return dev


@runtime_checkable
class BatchedTaskEnv(Protocol):
    """``num_tasks x envs_per_task`` rows of one family stepping at once (see the module
    docstring): what rollouts, RL^2 trials and the evaluator take."""

    num_tasks: int
    envs_per_task: int
    num_envs: int
    device: torch.device
    horizon: int
    """steps after which an episode is truncated"""
    task_space: TaskSpace
    tasks: list[Task]
    """the tasks of the last ``set_tasks``, one per task slot"""
    single_observation_space: gym.Space
    single_action_space: gym.Space
    observation_space: gym.Space
    """the batched space (Gymnasium's vector convention: ``single_*`` batched ``num_envs`` times)"""
    action_space: gym.Space
    row_window: tuple[int, int] | None
    """``(first_row, total_rows)`` when this env is a data-parallel shard of a larger one"""

    def sample_tasks(self, n: int, rng: Any, split: str = "train") -> list[Task]:
        """``n`` seeded tasks of ``split``."""
        ...

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """One task per group of ``envs_per_task`` rows."""
        ...

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset every row: ``(obs, info)``."""
        ...

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step every row: ``(obs, reward, terminated, truncated, info)``, with same-step
        autoreset."""
        ...

    def task_success(self) -> np.ndarray | None:
        """``[num_tasks]`` success rate of each task's first episode since ``reset`` (None: the
        family reports no ``info["success"]``)."""
        ...

    def close(self) -> None:
        """Release the env's resources."""
        ...


class BatchedEnv:
    """Base of the torch-batched families. Subclasses define the spaces, ``task_space``,
    ``_load_params(params)``, ``_reset_rows(mask)`` and ``_step(action)``."""

    task_space: TaskSpace
    single_observation_space: gym.Space
    single_action_space: gym.Space
    horizon: int

    def __init__(self, num_tasks: int, envs_per_task: int = 1, device: str = "cpu") -> None:
        for name, v in (("num_tasks", num_tasks), ("envs_per_task", envs_per_task)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise TaskError(f"{name}={v!r} must be a positive integer")
        self.num_tasks = int(num_tasks)
        self.envs_per_task = int(envs_per_task)
        self.num_envs = self.num_tasks * self.envs_per_task
        self.device = resolve_device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)
        self.tasks: list[Task] = []
        self.t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

    # -- tasks ---------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng, split: str = "train") -> list[Task]:
        return self.task_space.sample(n, rng, split)

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """One task per task slot (``num_tasks`` of them); rows are repeated per task."""
        if len(tasks) != self.num_tasks:
            raise TaskError(
                f"set_tasks got {len(tasks)} tasks; this env has num_tasks={self.num_tasks}"
            )
        self.tasks = [self.task_space.validate(t) for t in tasks]
        stacked = stack_tasks(self.tasks)
        params = {
            k: torch.as_tensor(v, dtype=torch.float32, device=self.device).repeat_interleave(
                self.envs_per_task, dim=0
            )
            for k, v in stacked.items()
        }
        self._load_params(params)

    def row_tasks(self) -> list[Task]:
        return [t for t in self.tasks for _ in range(self.envs_per_task)]

    # -- Gymnasium's vector-env convention ----------------------------------------------------
    @cached_property
    def observation_space(self) -> gym.Space:
        """``single_observation_space`` batched over the ``num_envs`` rows."""
        return gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)

    @cached_property
    def action_space(self) -> gym.Space:
        """``single_action_space`` batched over the ``num_envs`` rows."""
        return gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    def task_success(self) -> np.ndarray | None:
        return None  # the torch twins report no success

    def close(self) -> None:
        pass

    # -- stepping ------------------------------------------------------------------------
    row_window: tuple[int, int] | None = None
    """``(first_row, total_rows)``: this env is rows ``[first_row, first_row + num_envs)`` of a
    ``total_rows``-row env (a data-parallel shard); its noise is drawn for all ``total_rows``
    rows and sliced, so each row sees the numbers it would see in the whole env."""

    def _rand(self, kind: str, k: int) -> torch.Tensor:
        """``(num_envs, k)`` uniforms in [0, 1); ``kind`` is ``"step"`` or ``"reset"``."""
        if self.row_window is None:
            return torch.rand((self.num_envs, k), generator=self.generator, device=self.device)
        first, total = self.row_window
        full = torch.rand((total, k), generator=self.generator, device=self.device)
        return full[first : first + self.num_envs]

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if not self.tasks:
            raise TaskError("call set_tasks(tasks) before reset()")
        if seed is not None:
            self.generator.manual_seed(int(seed))
        everything = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.t.zero_()
        return self._reset_rows(everything), {}

    def step(self, action: torch.Tensor):
        obs, reward, terminated = self._step(action)
        self.t += 1
        truncated = (self.t >= self.horizon) & ~terminated
        done = terminated | truncated
        self.t = torch.where(done, torch.zeros_like(self.t), self.t)
        return self._reset_rows(done), reward, terminated, truncated, {"final_obs": obs}

    # -- to be defined by each family ----------------------------------------------------
    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        """Reset the rows where ``mask`` is true (drawing ``_rand("reset", m)`` for all rows if the
        family's initial state is random); return the observations of all rows after it."""
        raise NotImplementedError

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every row; return (obs, reward, terminated)."""
        raise NotImplementedError
