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
    TaskDistribution,
    TaskError,
    TaskFamily,
    TaskSpace,
    Uniform,
    stack_tasks,
)
from meta_rl_envs.registry import (
    FAMILIES,
    FamilySpec,
    add_family,
    check_id,
    make_batched,
    register_all,
)

register_all()

__all__ = [
    "FAMILIES",
    "SPLITS",
    "Choice",
    "Dirichlet",
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
    "register_all",
    "stack_tasks",
]
