"""meta-rl task families: parameterized Gymnasium environments (import name ``meta_rl_envs``).

Importing this package registers every ``MetaRL/...`` id with Gymnasium.
"""

from meta_rl_envs.core import (
    SPLITS,
    Choice,
    Dirichlet,
    Normal,
    Param,
    Task,
    TaskError,
    TaskFamily,
    TaskSpace,
    Uniform,
    stack_tasks,
)
from meta_rl_envs.registry import (
    FAMILIES,
    FamilySpec,
    TaskDistribution,
    add_family,
    check_id,
    make_batched,
    make_env,
    register_all,
    register_family,
)
from meta_rl_envs.stats import Estimate, mean_ci95

register_all()

__all__ = [
    "FAMILIES",
    "SPLITS",
    "Choice",
    "Dirichlet",
    "Estimate",
    "FamilySpec",
    "Normal",
    "Param",
    "Task",
    "TaskDistribution",
    "TaskError",
    "TaskFamily",
    "TaskSpace",
    "Uniform",
    "add_family",
    "check_id",
    "make_batched",
    "make_env",
    "mean_ci95",
    "register_all",
    "register_family",
    "stack_tasks",
]
