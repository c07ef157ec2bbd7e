"""Policies: modules from observations (and a carry) to action distributions."""

from meta_rl.policies import distributions
from meta_rl.policies.mlp import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    MLPPolicy,
    make_mlp_policy,
)
from meta_rl.policies.recurrent import GRUPolicy, MemoryPolicy, NTMPolicy, RecurrentPolicy

__all__ = [
    "distributions",
    "CategoricalMLPPolicy",
    "GaussianMLPPolicy",
    "MLPPolicy",
    "make_mlp_policy",
    "GRUPolicy",
    "MemoryPolicy",
    "NTMPolicy",
    "RecurrentPolicy",
]
