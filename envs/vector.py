"""The batched-env contract over Gymnasium envs, for families without a torch-batched twin.

:class:`VectorTaskEnv` runs ``num_tasks * envs_per_task`` scalar family envs in a
``gymnasium.vector.SyncVectorEnv`` (same-step autoreset) behind the contract the torch twins
implement (:class:`~meta_rl_envs.batched.BatchedTaskEnv`: torch tensors in and out,
``info["final_obs"]``, row ``r`` running task ``r // envs_per_task``). It is the one adapter:
rollouts, RL^2 trials (:class:`~meta_rl_envs.wrappers.BatchedTrialEnv`) and the evaluator all
take it as they take a batched twin. :func:`meta_rl_envs.make_env` picks one of the two.

When the envs report ``info["success"]`` (e.g. Meta-World), ``step`` passes it on per row and
:meth:`VectorTaskEnv.task_success` gives each task's success rate over the first episode of its
rows since the last ``reset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import resolve_device
from meta_rl_envs.core import Task, TaskError
from torch import Tensor

__all__ = ["VectorTaskEnv", "info_success"]


class VectorTaskEnv:
    """A ``gymnasium.vector.SyncVectorEnv`` of ``num_tasks * envs_per_task`` scalar family envs
    behind the batched-env contract (torch tensors in and out, same-step autoreset)."""

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        **env_kwargs: Any,
    ) -> None:
        for name, v in (("num_tasks", num_tasks), ("envs_per_task", envs_per_task)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise TaskError(f"{name}={v!r} must be a positive integer")
        self.num_tasks = int(num_tasks)
        self.envs_per_task = int(envs_per_task)
        self.num_envs = self.num_tasks * self.envs_per_task
        self.device = resolve_device(device)
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(env_id, **env_kwargs) for _ in range(self.num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        first = self.envs.envs[0]
        self.family = first.unwrapped
        if not hasattr(self.family, "set_task"):
            raise TaskError(f"env {env_id!r} is not a task family (no set_task)")
        self.task_space = self.family.task_space
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space
        self.observation_space = self.envs.observation_space
        self.action_space = self.envs.action_space
        horizon = getattr(self.family, "horizon", None) or (
            first.spec and first.spec.max_episode_steps
        )
        if not horizon:
            raise TaskError(f"env {env_id!r} has no horizon (family.horizon or a TimeLimit)")
        self.horizon = int(horizon)
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
        for i, env in enumerate(self.envs.envs):
            env.unwrapped.set_task(self.tasks[i // self.envs_per_task])

    row_window: tuple[int, int] | None = None
    """``(first_row, total_rows)`` of a data-parallel shard: row ``i`` is reset with seed
    ``seed + first_row + i``, as in the whole ``total_rows``-row env"""

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        if not self.tasks:
            raise TaskError("call set_tasks(tasks) before reset()")
        if seed is not None and self.row_window is not None:
            seed = [seed + self.row_window[0] + i for i in range(self.num_envs)]
        obs, info = self.envs.reset(seed=seed)
        self._clear_success()
        return self._tensor(obs), info

    def _tensor(self, x: np.ndarray) -> Tensor:
        t = torch.as_tensor(np.asarray(x), device=self.device)
        return t.float() if t.is_floating_point() else t

    def step(self, action: Tensor):
        """Batched-env step; ``info`` holds ``final_obs`` and, when the envs report one,
        ``success`` (``[N]`` bool: ``info["success"]`` was true at this step)."""
        obs, reward, terminated, truncated, info = self.envs.step(action.cpu().numpy())
        final = np.array(obs, copy=True)
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = info["final_obs"][i]
        out = {"final_obs": self._tensor(final)}
        success = info_success(info)
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
        self.envs.close()


def info_success(info: dict[str, Any]) -> np.ndarray | None:
    """Per-row ``info["success"]`` of a Gymnasium vector env's step as a bool array (a row
    whose env did not report it counts as False), including the ``final_info`` of rows reset in
    the same step; ``None`` when no row reported it."""
    hit, seen = None, False
    for part in (info, info.get("final_info")):
        if not isinstance(part, dict) or "success" not in part:
            continue
        values = np.asarray(part["success"], dtype=np.float64) > 0
        values &= np.asarray(part.get("_success", np.ones_like(values)), dtype=bool)
        hit, seen = (values if hit is None else hit | values), True
    return hit if seen else None
