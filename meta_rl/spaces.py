"""Whether an env fits a policy: the spaces it was trained on, and the observations
``predict`` takes (used by every agent kind in :mod:`meta_rl.agent`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from meta_rl.runs import RunError

__all__ = ["SpaceMismatchError", "as_batch", "check_spaces"]


class SpaceMismatchError(RunError):
    """A policy's observation or action space does not fit an env (names both spaces)."""


# --------------------------------------------------------------------------------------------
# Spaces
# --------------------------------------------------------------------------------------------
def _space_key(space: gym.Space) -> tuple:
    if isinstance(space, gym.spaces.Discrete):
        return ("Discrete", int(space.n), int(space.start))
    if isinstance(space, gym.spaces.Box):
        return ("Box", tuple(space.shape))
    return (type(space).__name__, getattr(space, "shape", None))


def check_spaces(
    policy_obs: gym.Space,
    policy_act: gym.Space,
    env_obs: gym.Space,
    env_act: gym.Space,
    where: str,
) -> None:
    """Raise :class:`SpaceMismatchError` unless the env's spaces fit the policy's: the same kind,
    the same shape (Box; bounds may differ) or the same number of actions (Discrete)."""
    problems = []
    if _space_key(policy_obs) != _space_key(env_obs):
        problems.append(f"observation space {env_obs} (policy: {policy_obs})")
    if _space_key(policy_act) != _space_key(env_act):
        problems.append(f"action space {env_act} (policy: {policy_act})")
    if problems:
        raise SpaceMismatchError(
            f"{where} does not fit the policy: {'; '.join(problems)}. An agent runs on a family "
            "whose observation and action spaces have the shapes it was trained on"
        )


def as_batch(obs: Any, size: int, what: str) -> tuple[np.ndarray, bool]:
    """(obs as float32 [B, size], whether a single observation was given)."""
    x = np.asarray(obs, dtype=np.float32)
    if x.ndim == 1 and x.shape[0] == size:
        return x[None], True
    if x.ndim == 2 and x.shape[1] == size:
        return x, False
    raise SpaceMismatchError(
        f"predict got an observation of shape {tuple(np.shape(obs))}; this agent takes "
        f"[{size}] or [n_envs, {size}] ({what})"
    )
