"""The preset table: a name -> (trainer, config class, overrides, summary, data-parallel).

A preset holds its trainer function and its config class themselves (every trainer module
imports with the core dependencies; the MuJoCo / Meta-World presets need their extra only when
their env is made). A trainer is ``train(config, run) -> dict`` (the final metrics); see
:mod:`meta_rl.runs` for the step convention. Run folders record the trainer and the config
class by their stable ``"module:name"`` (:attr:`Preset.trainer`, ``runs.class_path``).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meta_rl.config import BaseConfig, ConfigError, apply_overrides
from meta_rl.fewshot import gradient, mann, metric, ntm_copy
from meta_rl.rl import maml, oracle, pearl, reptile, rl2, varibad

log = logging.getLogger(__name__)

Trainer = Callable[..., Mapping[str, Any]]
"""``train(config, run) -> final metrics`` (``run``: a :class:`meta_rl.runs.Run` or ``None``)"""


class PresetError(ValueError):
    """An unknown preset, or one whose config cannot be built."""


@dataclass(frozen=True)
class Preset:
    name: str
    train: Trainer
    """the trainer, ``train(config, run) -> dict``"""
    config: type[BaseConfig]
    """the config dataclass (a BaseConfig)"""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """config values that make this preset (applied over the class defaults)"""
    summary: str = ""
    data_parallel: bool = False
    """the trainer shards its meta-batch over torchrun's ranks (:mod:`meta_rl.launch` refuses
    the others: their ranks would only repeat rank 0's work)"""

    @property
    def trainer(self) -> str:
        """The trainer's stable name, ``"module:function"`` (recorded in run folders)."""
        return f"{self.train.__module__}:{self.train.__qualname__}"

    def config_class(self) -> type[BaseConfig]:
        """:attr:`config` (kept for callers written against the string table)."""
        return self.config

    def load_trainer(self) -> Trainer:
        """:attr:`train` (kept for callers written against the string table)."""
        return self.train

    def make_config(
        self,
        values: Mapping[str, Any] | None = None,
        overrides: Iterable[str] = (),
    ) -> BaseConfig:
        """Class defaults, then the preset's overrides, then ``values`` (e.g. from YAML; dotted
        keys allowed), then ``key=value`` strings from the command line."""
        cls = self.config
        try:
            base = apply_overrides(cls(), dict(self.overrides))
        except ConfigError as err:
            raise PresetError(
                f"preset {self.name!r} does not fit {cls.__module__}:{cls.__qualname__}: {err}"
            ) from err
        config = apply_overrides(base, dict(values or {}))
        return apply_overrides(config, list(overrides))


def _grad(name: str, algorithm: str, task: str, summary: str) -> Preset:
    return Preset(
        name,
        gradient.train,
        gradient.GradientFewShotConfig,
        {"algorithm": algorithm, "task": task},
        summary,
        data_parallel=True,
    )


def _varibad(name: str, overrides: dict[str, Any], summary: str) -> Preset:
    # not data-parallel: the VAE's buffer of recent trials is not sharded over ranks
    return Preset(name, varibad.train, varibad.VariBADConfig, overrides, summary)


def _rl2(name: str, overrides: dict[str, Any], summary: str) -> Preset:
    return Preset(name, rl2.train, rl2.RL2Config, overrides, summary, data_parallel=True)


def _pearl(name: str, overrides: dict[str, Any], summary: str) -> Preset:
    return Preset(name, pearl.train, pearl.PEARLConfig, overrides, summary, data_parallel=True)


def _maml(name: str, overrides: dict[str, Any], summary: str) -> Preset:
    return Preset(name, maml.train, maml.MAMLConfig, overrides, summary, data_parallel=True)


_CARTPOLE_MAML = {
    "env_id": "MetaRL/CartPole-v0",
    "eval_split": "ood",
    "meta_batch": 20,
    "episodes_per_task": 10,
    "iterations": 20,
    "eval_tasks": 20,
    "eval_episodes": 10,
    "eval_every": 5,
    "checkpoint_every": 5,
}
_BANDIT = {"env_id": "MetaRL/Bandit-v0", "env_kwargs": {"k": 5}}
_TABULAR = {"env_id": "MetaRL/TabularMDP-v0"}
# PPO settings shared by the GRU and the memory policy on tabular MDPs: n=10 3.84M env steps,
# n=25 6.4M
_TABULAR_N10 = {
    **_TABULAR,
    "episodes_per_trial": 10,
    "lr": 0.003,
    "minibatches": 8,
    "gamma": 0.99,
    "gae_lambda": 0.3,
    "ent_coef": 0.01,
    "time_feature": True,
    "action_reward_input": True,
    "reward_scale": 0.05,
    "iterations": 150,
}
_TABULAR_N25 = {**_TABULAR_N10, "episodes_per_trial": 25, "reward_scale": 0.02, "iterations": 100}
_TABULAR_MEMORY = {  # rows keyed by where the step came from; memory holds the whole trial
    "policy": "episodic",
    "hidden_size": 128,
    "memory_slots": 100,  # 10 episodes x 10 steps
    "memory_heads": 4,
    "memory_width": 16,
    "transition_keys": True,
}
_NAV = {"env_id": "MetaRL/PointNav-v0", "episodes_per_trial": 2}
# GridNavi (VariBAD): trials of 4 episodes of 15 steps; the 21 goals are all training goals
_GRID = {"env_id": "MetaRL/GridNavi-v0", "episodes_per_trial": 4, "eval_split": "train"}
_GRID_ITERATIONS, _GRID_TASKS = 1200, 32  # 1200 x 32 trials x 60 steps = 2.3M env steps
_MANN = {"policy": "memory"}
# long memory demand: 20 arms x 40 pulls (scripts/memory_vs_gru.py compares the two policies)
_LONG_MEMORY_BANDIT = {
    "env_id": "MetaRL/Bandit-v0",
    "env_kwargs": {"k": 20},
    "episodes_per_trial": 40,
    "action_reward_input": True,
    "lr": 0.003,
    "tasks_per_iteration": 256,
    "iterations": 200,  # 2.05M env steps: the budget of the pre-registered comparison (README)
    "eval_every": 100,
}
# MuJoCo / Meta-World (extras mujoco, metaworld): settings of the papers, meant for a GPU machine;
# the families run as one Gymnasium env per row (no torch twin): ~1 MB per HalfCheetah row, ~23 MB
# per Meta-World row (the ML1 MAML preset holds 20 x 10 + 10 x 5 = 250 rows: ~6 GB of RAM).
_CHEETAH_VEL = {"env_id": "MetaRL/HalfCheetahVel-v0"}  # target U[0, 2], H=200 (MAML)
_ML1_REACH = {"env_id": "MetaRL/ML1-reach-v0"}  # Meta-World's 50 train / 50 test goals, H=500
_MUJOCO_MAML = {  # MAML (Finn et al. 2017): 40 tasks x 20 episodes, one step of 0.1, 2 x 100 ReLU
    **_CHEETAH_VEL,
    "meta_batch": 40,
    "episodes_per_task": 20,
    "inner_lr": 0.1,
    "hidden": (100, 100),
    "activation": "relu",
    "iterations": 500,
    "eval_tasks": 40,
    "eval_episodes": 10,
}
_ML1_MAML = {  # Meta-World's MAML-TRPO: 20 tasks x 10 episodes, one step of 0.1, 2 x 100 tanh
    **_ML1_REACH,
    "meta_batch": 20,
    "episodes_per_task": 10,
    "inner_lr": 0.1,
    "hidden": (100, 100),
    "iterations": 300,
    "eval_tasks": 10,
    "eval_episodes": 5,
}

# PEARL (Rakelly et al. 2019). Sparse point robot: PEARL's setting (goals on the unit half
# circle, reward within 0.2, T=20; the critic learns from the dense reward, the encoder sees the
# sparse one) with networks and batches sized for a CPU.
_PEARL_SPARSE_POINT = {
    "env_id": "MetaRL/SparsePoint-v0",
    "critic_reward": "dense_reward",
    "train_tasks": 40,
    "hidden": 64,
    "encoder_hidden": 64,
    "meta_batch": 8,
    "batch_size": 64,
    "context_batch": 32,
    "grad_steps": 100,
    "initial_steps": 100,
    "collect_tasks": 5,
    "prior_steps": 100,
    "posterior_steps": 100,
    "replay_size": 20_000,
    "lr": 1e-3,
    "context_lr": 1e-3,
    "iterations": 60,
    "eval_every": 10,
    "checkpoint_every": 10,
    "num_threads": 1,
}
# HalfCheetahVel on a CPU budget (<= 60 min on 2 cores): the task setting (100 train /
# 30 test tasks, latent 5, meta-batch 16) with smaller networks and batches and fewer gradient
# steps per iteration than the paper's GPU setting (nets 300, batch 256, 2,000 steps/iteration).
# The family's target velocities are U[0, 2] (train/test) and U[2, 3] (ood); the paper's U[0, 3].
_PEARL_CHEETAH_CPU = {
    **_CHEETAH_VEL,
    "train_tasks": 100,
    "eval_tasks": 30,
    "latent_size": 5,
    "hidden": 128,
    "encoder_hidden": 128,
    "meta_batch": 16,
    "batch_size": 128,
    "context_batch": 100,
    "grad_steps": 250,
    "initial_steps": 400,
    "collect_tasks": 5,
    "prior_steps": 200,
    "posterior_steps": 400,
    "replay_size": 20_000,
    "iterations": 120,
    "eval_every": 20,
    "checkpoint_every": 10,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _grad("maml-sine", "maml", "sine", "MAML on sinusoid regression (Finn et al. 2017)"),
        _grad("fomaml-sine", "fomaml", "sine", "first-order MAML on sinusoid regression"),
        _grad("metasgd-sine", "metasgd", "sine", "Meta-SGD (learned per-parameter inner lrs)"),
        _grad("anil-sine", "anil", "sine", "ANIL: adapt only the head, sinusoid regression"),
        _grad("reptile-sine", "reptile", "sine", "Reptile on sinusoid regression"),
        _grad("maml-glyphs", "maml", "glyphs", "MAML, few-shot classification of glyphs"),
        _grad("anil-glyphs", "anil", "glyphs", "ANIL, few-shot classification of glyphs"),
        _grad("reptile-glyphs", "reptile", "glyphs", "Reptile, few-shot classification of glyphs"),
        Preset(
            "protonet-glyphs",
            metric.train_protonet,
            metric.ProtoNetConfig,
            {},
            "Prototypical networks, few-shot classification of glyphs",
            data_parallel=True,  # splits the meta_batch of episodes (or one episode's images)
        ),
        Preset(
            "siamese-glyphs",
            metric.train_siamese,
            metric.SiameseConfig,
            {},
            "Siamese network (verification), one-shot glyph classification",
            data_parallel=True,
        ),
        Preset(
            "mann-glyphs",
            mann.train,
            mann.MANNConfig,
            {},
            "Memory-augmented network (MANN), episodic glyph classification",
            data_parallel=True,  # splits the batch_size sequences
        ),
        Preset(
            "ntm-glyphs",
            mann.train,
            mann.MANNConfig,
            {"memory": "ntm"},
            "Neural Turing Machine memory beside MANN's, episodic glyph classification",
            data_parallel=True,  # splits the batch_size sequences
        ),
        Preset(
            "ntm-copy",
            ntm_copy.train,
            ntm_copy.CopyTaskConfig,
            {"device": "cpu", "num_threads": 1},  # one sequence per update: overhead-bound
            "Neural Turing Machine on the copy task (Graves et al. 2014): error bits per sequence",
            data_parallel=True,  # splits the batch_size sequences (batch_size >= ranks)
        ),
        Preset(
            "oracle-pointnav",
            oracle.train_oracle_pointnav,
            oracle.OracleNavConfig,
            {},
            "REINFORCE on batched PointNav seeing the goal (task-aware baseline; infra check)",
        ),
        _maml("maml-trpo-pointnav", {}, "MAML-TRPO on 2D point navigation (Finn et al. 2017)"),
        _maml("fomaml-trpo-pointnav", {"algorithm": "fomaml"}, "first-order MAML-TRPO, PointNav"),
        _maml(
            "maml-ppo-pointnav", {"outer": "ppo"}, "MAML with a clipped PPO outer step, PointNav"
        ),
        _maml("metasgd-pointnav", {"algorithm": "metasgd"}, "Meta-SGD (TRPO outer), PointNav"),
        _maml(
            "maml-trpo-cartpole",
            _CARTPOLE_MAML,
            "MAML-TRPO on CartPole physics (pole length...), evaluated on the ood split",
        ),
        _maml(
            "smoke-pointnav",
            {
                "meta_batch": 20,
                "episodes_per_task": 10,
                "iterations": 30,
                "hidden": (32, 32),
                "eval_tasks": 20,
                "eval_episodes": 10,
                "eval_every": 10,
                "checkpoint_every": 10,
                "num_threads": 1,
            },
            "MAML-TRPO on PointNav in under a minute on a CPU (quick start; then meta-rl evaluate)",
        ),
        Preset(
            "reptile-pointnav",
            reptile.train,
            reptile.ReptileConfig,
            {},
            "Reptile with policy-gradient inner steps, PointNav",
            data_parallel=True,
        ),
        _rl2(
            "rl2-bandits",
            {
                **_BANDIT,
                "episodes_per_trial": 10,
                "hidden_size": 64,
                "lr": 0.003,
                "tasks_per_iteration": 256,
                "iterations": 300,
            },
            "RL^2 (GRU, PPO over trials) on 5-armed Bernoulli bandits, n=10 pulls",
        ),
        _rl2(
            "rl2-bandits-n100",
            {
                **_BANDIT,
                "episodes_per_trial": 100,
                "hidden_size": 128,
                "lr": 0.001,
                "gamma": 1.0,
                "gae_lambda": 0.95,
                "ent_coef": 0.01,
                "time_feature": True,
                "action_reward_input": True,
                "reward_scale": 0.05,
                "tasks_per_iteration": 256,
                "iterations": 300,
            },
            "RL^2 (GRU) on 5-armed Bernoulli bandits, n=100 pulls",
        ),
        _rl2(
            "rl2-tabular",
            {**_TABULAR_N10, "hidden_size": 128, "separate_critic": True},
            "RL^2 (GRU) on random tabular MDPs (10 states, 5 actions, T=10), n=10 episodes",
        ),
        _rl2(
            "rl2-memory-tabular",
            {**_TABULAR_N10, **_TABULAR_MEMORY},
            "RL^2, episodic memory keyed by transitions, random tabular MDPs, n=10 (beats PSRL)",
        ),
        _rl2(
            "rl2-tabular-n25",
            {**_TABULAR_N25, "hidden_size": 128, "separate_critic": True},
            "RL^2 (GRU) on random tabular MDPs, n=25 episodes",
        ),
        _rl2(
            "rl2-memory-tabular-n25",
            {**_TABULAR_N25, **_TABULAR_MEMORY, "memory_slots": 250},
            "RL^2, episodic memory keyed by transitions, random tabular MDPs, n=25",
        ),
        _rl2(
            "rl2-pointnav",
            {
                **_NAV,
                "hidden_size": 64,
                "lr": 0.002,
                "lr_final_fraction": 0.25,
                "init_log_std": -2.3,
                "reward_scale": 0.1,
                "tasks_per_iteration": 128,
                "iterations": 200,
                "eval_tasks": 500,
            },
            "RL^2 (GRU) on 2D point navigation, trials of 2 episodes of 100 steps",
        ),
        _varibad(
            "varibad-gridnavi",
            {
                **_GRID,
                "reward_decoder": "cells",
                "hit_threshold": 0.0,
                "kl_weight": 0.01,
                "latent_size": 5,
                "encoder_hidden": 64,
                "lr": 1e-3,
                "update_epochs": 4,
                "clip": 0.2,
                "ent_coef": 0.05,
                "ent_final_fraction": 0.1,
                "eval_every": 100,
                "checkpoint_every": 100,
                "iterations": _GRID_ITERATIONS,
                "tasks_per_iteration": _GRID_TASKS,
            },
            "VariBAD on GridNavi (5x5, 4 episodes of 15 steps), per-cell reward decoder; "
            "experimental: not yet shown above RL^2 (issue 17)",
        ),
        _rl2(
            "rl2-gridnavi",
            {
                **_GRID,
                "hidden_size": 128,
                "ent_coef": 0.05,
                "ent_final_fraction": 0.1,
                "eval_every": 100,
                "checkpoint_every": 100,
                "iterations": _GRID_ITERATIONS,
                "tasks_per_iteration": _GRID_TASKS,
            },
            "RL^2 (GRU) on GridNavi at varibad-gridnavi's env steps (the comparison)",
        ),
        _varibad(
            "varibad-pointnav",
            {
                **_NAV,
                "kl_weight": 0.1,
                "init_log_std": -2.3,
                "reward_scale": 0.1,
                "tasks_per_iteration": 64,
                "iterations": 300,
                "eval_tasks": 500,
                "vae_subsample": 50,
            },
            "VariBAD on 2D point navigation, trials of 2 episodes of 100 steps, MLP reward "
            "decoder; experimental: never run to the end yet (issue 17)",
        ),
        _rl2(
            "rl2-mann-bandits",
            {
                **_BANDIT,
                **_MANN,
                "episodes_per_trial": 10,
                "hidden_size": 64,
                "lr": 0.003,
                "tasks_per_iteration": 256,
                "iterations": 300,
            },
            "RL^2 with a memory-augmented policy (GRU controller + LRUA memory), bandits n=10",
        ),
        _rl2(
            "rl2-ntm-bandits",
            {
                **_BANDIT,
                "policy": "ntm",
                "episodes_per_trial": 10,
                "hidden_size": 64,
                "lr": 0.01,
                "tasks_per_iteration": 128,
                "minibatches": 4,
                "iterations": 100,  # 128k env steps (the memory policy's slow-test budget)
                "num_threads": 1,
            },
            "RL^2 with a Neural Turing Machine policy (GRU controller + NTM memory), bandits n=10",
        ),
        _rl2(
            "rl2-mann-pointnav",
            {
                **_NAV,
                **_MANN,
                "hidden_size": 64,
                "lr": 0.002,
                "lr_final_fraction": 0.25,
                "init_log_std": -2.3,
                "reward_scale": 0.1,
                "tasks_per_iteration": 128,
                "minibatches": 1,
                "update_epochs": 2,
                "iterations": 100,
                "eval_tasks": 500,
            },
            "RL^2 with a memory-augmented policy on 2D point navigation, 2 episodes per trial",
        ),
        _rl2(
            "rl2-memory-vs-gru",
            {**_LONG_MEMORY_BANDIT, "policy": "episodic", "hidden_size": 8, "memory_slots": 40},
            "RL^2, episodic memory (GRU-8 controller, 7.1k params) on 20-armed bandits, n=40",
        ),
        _rl2(
            "rl2-memory-vs-gru-baseline",
            {**_LONG_MEMORY_BANDIT, "policy": "gru", "hidden_size": 28},
            "RL^2, GRU-28 (6.7k params, matched to rl2-memory-vs-gru) on 20-armed bandits, n=40",
        ),
        _pearl(
            "pearl-sparse-point",
            _PEARL_SPARSE_POINT,
            "PEARL on the sparse point robot (goal on a half circle, reward within 0.2); "
            "experimental: not yet shown to learn (issue 16)",
        ),
        _pearl(
            "pearl-halfcheetah-vel-cpu",
            _PEARL_CHEETAH_CPU,
            "PEARL on HalfCheetahVel at a CPU budget (needs meta-rl[mujoco]); "
            "experimental: never run to the end yet (issue 16)",
        ),
        _maml(
            "maml-trpo-halfcheetah-vel",
            _MUJOCO_MAML,
            "MAML-TRPO on HalfCheetahVel (target U[0,2], H=200; needs meta-rl[mujoco], a GPU box)",
        ),
        _maml(
            "maml-ppo-halfcheetah-vel",
            {**_MUJOCO_MAML, "outer": "ppo"},
            "MAML with a PPO outer step on HalfCheetahVel (needs meta-rl[mujoco])",
        ),
        _rl2(
            "rl2-halfcheetah-vel",
            {
                **_CHEETAH_VEL,
                "episodes_per_trial": 2,
                "hidden_size": 128,
                "lr": 3e-4,
                "tasks_per_iteration": 32,
                "iterations": 2000,
                "eval_tasks": 40,
                "references": False,
            },
            "RL^2 (GRU) on HalfCheetahVel, trials of 2 episodes of 200 steps (VariBAD's setting)",
        ),
        _varibad(
            "varibad-halfcheetah-vel-cpu",
            {
                **_CHEETAH_VEL,
                "episodes_per_trial": 2,
                "latent_size": 5,
                "encoder_hidden": 128,
                "kl_weight": 0.1,
                "policy_hidden": 128,
                "init_log_std": 0.0,
                "gamma": 0.97,
                "lr": 3e-4,
                "tasks_per_iteration": 16,
                "iterations": 300,
                "vae_buffer": 200,
                "vae_batch": 16,
                "vae_subsample": 40,
                "eval_tasks": 40,
                "eval_split": "test",
                "references": False,
            },
            "VariBAD on HalfCheetahVel for 2 CPU cores (trials of 2 x 200 steps; needs "
            "meta-rl[mujoco]; sized to <= 60 min, not yet run to the end here)",
        ),
        _maml(
            "maml-trpo-ml1-reach",
            _ML1_MAML,
            "MAML-TRPO on Meta-World ML1 reach (H=500; needs meta-rl[metaworld], a GPU box)",
        ),
        _maml(
            "maml-ppo-ml1-reach",
            {**_ML1_MAML, "outer": "ppo"},
            "MAML with a PPO outer step on Meta-World ML1 reach (needs meta-rl[metaworld])",
        ),
        _rl2(
            "rl2-ml1-reach",
            {
                **_ML1_REACH,
                "episodes_per_trial": 10,
                "lr": 3e-4,
                "tasks_per_iteration": 20,
                "iterations": 1000,
                "eval_tasks": 10,
                "references": False,
            },
            "RL^2 (GRU) on Meta-World ML1 reach, trials of 10 episodes of 500 steps",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` or a :class:`PresetError` listing close matches."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise PresetError(f"unknown preset {name!r}{hint} (presets: {', '.join(sorted(PRESETS))})")
