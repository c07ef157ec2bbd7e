"""Per-task replay buffers for off-policy meta-RL (PEARL): one tensor for all tasks, so a
meta-batch of tasks draws its transitions in one gather."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TaskBuffers"]


class TaskBuffers:
    """Per-task ring buffers of transitions, one tensor ``[tasks, capacity, width]``; a row is
    ``[obs, action (in [-1, 1]), reward, critic reward, next obs, terminated]``."""

    def __init__(self, tasks: int, capacity: int, obs_dim: int, act_dim: int, device) -> None:
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 3
        self.capacity = capacity
        self.data = torch.zeros(tasks, 0, self.width, device=device)  # grown on demand
        self.size = torch.zeros(tasks, dtype=torch.long, device=device)
        self.pos = torch.zeros(tasks, dtype=torch.long, device=device)

    def add(self, tasks: Tensor, rows: Tensor) -> None:
        """Append ``rows [n, R, width]`` to the buffers of the distinct ``tasks [R]``."""
        n = rows.shape[0]
        need = min(self.capacity, int((self.pos[tasks] + n).max()))
        if need > self.data.shape[1]:
            grow = min(self.capacity, max(need, 2 * self.data.shape[1]))
            extra = self.data.new_zeros(self.data.shape[0], grow - self.data.shape[1], self.width)
            self.data = torch.cat([self.data, extra], 1)
        at = (
            self.pos[tasks][None, :] + torch.arange(n, device=rows.device)[:, None]
        ) % self.capacity
        self.data[tasks[None, :].expand(n, -1), at] = rows
        self.pos[tasks] = (self.pos[tasks] + n) % self.capacity
        self.size[tasks] = (self.size[tasks] + n).clamp(max=self.capacity)

    def clear(self, tasks: Tensor) -> None:
        self.size[tasks] = 0
        self.pos[tasks] = 0

    def sample(self, tasks: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``[T, n, width]``: ``n`` transitions drawn uniformly from each task's buffer."""
        u = torch.rand((len(tasks), n), generator=generator, device=self.size.device)
        index = (u * self.size[tasks, None]).long()
        return self.data[tasks[:, None], index]

    def split(self, rows: Tensor) -> dict[str, Tensor]:
        o, a = self.obs_dim, self.act_dim
        return {
            "obs": rows[..., :o],
            "act": rows[..., o : o + a],
            "rew": rows[..., o + a],
            "crew": rows[..., o + a + 1],
            "next": rows[..., o + a + 2 : 2 * o + a + 2],
            "term": rows[..., -1],
        }

    def context(self, rows: Tensor, use_next_obs: bool) -> Tensor:
        """The encoder's input of transitions: ``(s, a, r)`` or ``(s, a, r, s')``."""
        o, a = self.obs_dim, self.act_dim
        return rows[..., : 2 * o + a + 1] if use_next_obs else rows[..., : o + a + 1]

    def state(self) -> dict[str, Tensor]:
        used = int(self.size.max()) if len(self.size) else 0
        return {"data": self.data[:, :used].clone(), "size": self.size, "pos": self.pos}

    def load(self, state: dict[str, Tensor]) -> None:
        self.data = state["data"].to(self.size.device)
        self.size.copy_(state["size"])
        self.pos.copy_(state["pos"])
