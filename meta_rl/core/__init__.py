"""The meta-core shared by meta-RL and few-shot learning: functional params, the inner update
and the outer objectives (MAML, FOMAML, Meta-SGD, ANIL, Reptile). Imports no env code."""

from meta_rl.core.functional import (
    Params,
    batched_call,
    expand_params,
    get_params,
    linear_chain,
    put_params,
    register_linear_chain,
    stack_params,
    task_index,
    tune_cpu_allocator,
    unstack_params,
)
from meta_rl.core.inner import LearningRate, LossFn, inner_update, sgd_step
from meta_rl.core.outer import (
    MetaLoss,
    adaptation_curve,
    init_metasgd_lrs,
    maml_loss,
    maml_loss_vmapped,
    num_tasks,
    reptile_direction,
    reptile_update_,
)

__all__ = [
    "Params",
    "batched_call",
    "expand_params",
    "get_params",
    "linear_chain",
    "put_params",
    "register_linear_chain",
    "stack_params",
    "task_index",
    "tune_cpu_allocator",
    "unstack_params",
    "LearningRate",
    "LossFn",
    "inner_update",
    "sgd_step",
    "MetaLoss",
    "adaptation_curve",
    "init_metasgd_lrs",
    "maml_loss",
    "maml_loss_vmapped",
    "num_tasks",
    "reptile_direction",
    "reptile_update_",
]
