"""meta-rl: meta-reinforcement learning on parameterized Gymnasium task families."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import meta_rl_envs  # noqa: F401  (registers the MetaRL/... ids)

from meta_rl._version import __version__

if TYPE_CHECKING:
    from meta_rl.agent import Agent

__all__ = ["__version__", "load"]


def load(path_or_run: str | Path | Any, device: str = "cpu") -> Agent:
    """The meta-trained agent of a run folder, rebuilt from its ``config.json`` and newest
    safetensors checkpoint (see :mod:`meta_rl.agent`): ``adapt``, ``predict``, ``export``."""
    from meta_rl.agent import load as _load

    return _load(path_or_run, device)
