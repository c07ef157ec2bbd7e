"""MuJoCo locomotion task families on Gymnasium's v5 envs (extra ``meta-rl[mujoco]``).

The four standard meta-RL locomotion benchmarks, built with
:func:`meta_rl_envs.builder.make_family` over a small subclass of the v5 env that turns the
task parameter into a reward term. The dynamics, observations, action space, control and contact
costs, healthy checks and reset noise are Gymnasium's v5 ones; only the reward's task term (and
the time limit) is ours. ``info`` keeps v5's ``reward_*`` terms, with ``reward_forward`` holding
the task term.

==============  =========================================  =======  ==========================
family          task                                       horizon  splits
==============  =========================================  =======  ==========================
HalfCheetahVel  target velocity U[0, 2]                    200      train/test; ood U[2, 3]
HalfCheetahDir  direction: +1 (forward) or -1 (backward)   200      train only (2 tasks)
AntDir          direction angle U[0, 2 pi)                 200      train/test
AntGoal         goal uniform in the disk of radius 3       200      train/test; ood 3 < r <= 4
==============  =========================================  =======  ==========================

Papers use different settings, so numbers are comparable only under the same ones:

- **HalfCheetahVel**: MAML (Finn et al. 2017) target velocity U[0, 2], H = 200; PEARL (Rakelly et
  al. 2019) U[0, 3], H = 200; VariBAD (Zintgraf et al. 2020) U[0, 3], H = 200. Ours trains on
  U[0, 2] (MAML's) and holds out (2, 3] as the ``ood`` split, the part of PEARL's/VariBAD's range
  MAML never trains on. Reward (all three papers): ``-|v_x - v_target| - 0.05 |a|^2``.
- **HalfCheetahDir**: MAML's forward/backward task, reward ``d * v_x - 0.05 |a|^2``. With two
  tasks there is nothing to hold out: the space has only a ``train`` split (asking for ``test``
  raises, so no run silently evaluates on its training tasks); evaluate on ``train`` as MAML did.
- **AntDir**: MAML's (and PEARL's "ant-dir") Ant direction task is forward/backward only; ours
  draws the direction angle from the whole circle, so that unseen directions form a real test
  split. Reward: v5 Ant's with the forward term replaced by the torso's planar velocity projected
  on the direction: ``v . (cos a, sin a) + healthy(1) - 0.5 |a|^2 - contact_cost``.
- **AntGoal**: PEARL's / VariBAD's goal reaching, goals uniform in the disk of radius 3 and the
  L1 distance ``-|xy - goal|_1`` as the task term (plus v5's healthy reward and costs). The
  observation includes the torso's x, y (``exclude_current_positions_from_observation=False``),
  which the task term depends on. Goals with radius in (3, 4] form the ``ood`` split.

Episodes are truncated after ``horizon`` steps (default 200; pass ``horizon=1000`` for v5's
own limit); Ant episodes also end when the torso leaves v5's healthy height range.

Simulator and observation differ from the papers' (gym v2 envs on mujoco-py / MuJoCo 1.5):
ours is MuJoCo 3.3 through Gymnasium v5; HalfCheetah observes v5's 17 numbers (the papers' envs
appended the torso's center of mass: 20); Ant observes v5's 105 (AntGoal: 107). The papers' Ant
rewards used other cost weights (e.g. PEARL's ant-goal: control 0.1, no survival bonus); ours
keep v5's (healthy 1, control 0.5, contact 5e-4), so Ant returns are comparable only among runs
of these families.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from meta_rl_envs.builder import make_family
from meta_rl_envs.core import TrainOnlySpace, Uniform

__all__ = [
    "AntDirFamily",
    "AntGoalFamily",
    "HalfCheetahDirFamily",
    "HalfCheetahVelFamily",
    "AreaUniform",
    "TrainOnlySpace",
]

HORIZON = 200
CHEETAH_CTRL_COST = 0.05  # MAML / PEARL / VariBAD: 0.5 * 1e-1 * |a|^2 (v5's default is 0.1)
TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------------
# Parameter and space helpers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AreaUniform(Uniform):
    """A radius drawn so that points are uniform over the area of a disk or annulus: density
    proportional to ``r`` on ``[low, high]`` (and on each ood interval)."""

    def sample(self, rng: np.random.Generator, n: int, ood: bool) -> np.ndarray:
        shape = (n, *self.shape)
        intervals = list(self.ood) if (ood and self.ood) else [(self.low, self.high)]
        areas = np.array([b * b - a * a for a, b in intervals])
        which = rng.choice(len(intervals), size=shape, p=areas / areas.sum())
        lo2 = np.array([a * a for a, _ in intervals])[which]
        return np.sqrt(lo2 + areas[which] * rng.random(size=shape))

    def describe(self) -> str:
        return "area-uniform " + super().describe()


# --------------------------------------------------------------------------------------------
# HalfCheetah: target velocity, direction
# --------------------------------------------------------------------------------------------
class HalfCheetahTargetVelocityEnv(HalfCheetahEnv):
    """HalfCheetah-v5 rewarded for running at ``target_velocity``: ``-|v_x - target| - ctrl``."""

    def __init__(self, **kwargs: Any) -> None:
        self.target_velocity = 1.0
        super().__init__(**kwargs)

    def _get_rew(self, x_velocity: float, action):
        forward = -abs(x_velocity - self.target_velocity)
        ctrl = self.control_cost(action)
        return forward - ctrl, {"reward_forward": forward, "reward_ctrl": -ctrl}


class HalfCheetahDirectionEnv(HalfCheetahEnv):
    """HalfCheetah-v5 rewarded for running in ``direction`` (+1 / -1): ``d * v_x - ctrl``."""

    def __init__(self, **kwargs: Any) -> None:
        self.direction = 1.0
        super().__init__(**kwargs)

    def _get_rew(self, x_velocity: float, action):
        forward = self.direction * x_velocity
        ctrl = self.control_cost(action)
        return forward - ctrl, {"reward_forward": forward, "reward_ctrl": -ctrl}


_HalfCheetahVelBase = make_family(
    HalfCheetahTargetVelocityEnv,
    {"target_velocity": (0.0, 2.0)},
    name="HalfCheetahVel",
    class_name="_HalfCheetahVelBase",
    ood={"target_velocity": [(2.0, 3.0)]},
    horizon=HORIZON,
    env_kwargs={"ctrl_cost_weight": CHEETAH_CTRL_COST},
)
HalfCheetahVelTask = _HalfCheetahVelBase.task_cls


class HalfCheetahVelFamily(_HalfCheetahVelBase):
    """HalfCheetah-v5 running at a target velocity (MAML's range; PEARL's and VariBAD's upper
    range held out as ``ood``).

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `target_velocity` | U[0, 2] (m/s along x) | ood: U[2, 3] |

    Reward ``-|v_x - target_velocity| - 0.05 |a|^2`` (v_x: the root's x velocity over one
    control step), horizon 200. Compare: MAML U[0, 2], H=200; PEARL U[0, 3], H=200; VariBAD
    U[0, 3], H=200 (see the module docstring).
    """


_HalfCheetahDirBase = make_family(
    HalfCheetahDirectionEnv,
    {"direction": [-1.0, 1.0]},
    name="HalfCheetahDir",
    class_name="_HalfCheetahDirBase",
    horizon=HORIZON,
    env_kwargs={"ctrl_cost_weight": CHEETAH_CTRL_COST},
    space_cls=TrainOnlySpace,
)
HalfCheetahDirTask = _HalfCheetahDirBase.task_cls


class HalfCheetahDirFamily(_HalfCheetahDirBase):
    """HalfCheetah-v5 running forward or backward (MAML).

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `direction` | one of -1 (backward), +1 (forward) | train only |

    Reward ``direction * v_x - 0.05 |a|^2``, horizon 200. The two tasks are both training tasks;
    ``sample_tasks(..., split="test")`` raises (evaluate on ``train``, as MAML did).
    """


# --------------------------------------------------------------------------------------------
# Ant: direction, goal
# --------------------------------------------------------------------------------------------
class _AntTaskEnv(AntEnv):
    """Ant-v5 whose forward term is replaced by :meth:`task_reward` (healthy reward, control and
    contact costs and termination stay v5's)."""

    def task_reward(self, info: dict[str, Any]) -> float:
        raise NotImplementedError

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        task_term = self.task_reward(info)
        reward = task_term + info["reward_survive"] + info["reward_ctrl"] + info["reward_contact"]
        info["reward_forward"] = task_term
        return obs, float(reward), terminated, truncated, info


class AntDirectionEnv(_AntTaskEnv):
    """Ant-v5 rewarded for its torso's planar velocity along the direction at ``angle``."""

    def __init__(self, **kwargs: Any) -> None:
        self.angle = 0.0
        self.direction = np.array([1.0, 0.0])
        super().__init__(**kwargs)

    def task_reward(self, info: dict[str, Any]) -> float:
        return float(
            info["x_velocity"] * self.direction[0] + info["y_velocity"] * self.direction[1]
        )


class AntGoalEnv(_AntTaskEnv):
    """Ant-v5 rewarded by minus the L1 distance of its torso to ``goal`` (polar: radius, angle)."""

    def __init__(self, **kwargs: Any) -> None:
        self.goal_radius = 0.0
        self.goal_angle = 0.0
        self.goal = np.zeros(2)
        kwargs.setdefault("exclude_current_positions_from_observation", False)
        super().__init__(**kwargs)

    def task_reward(self, info: dict[str, Any]) -> float:
        return -float(
            abs(info["x_position"] - self.goal[0]) + abs(info["y_position"] - self.goal[1])
        )


def _direction_from_angle(env: Any) -> None:
    env.direction = np.array([math.cos(env.angle), math.sin(env.angle)])


def _goal_from_polar(env: Any) -> None:
    env.goal = env.goal_radius * np.array([math.cos(env.goal_angle), math.sin(env.goal_angle)])


_AntDirBase = make_family(
    AntDirectionEnv,
    {"angle": (0.0, TWO_PI)},
    name="AntDir",
    class_name="_AntDirBase",
    horizon=HORIZON,
    derived=_direction_from_angle,
)
AntDirTask = _AntDirBase.task_cls


class AntDirFamily(_AntDirBase):
    """Ant-v5 running in a direction anywhere on the circle.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `angle` | U[0, 2 pi] (radians from +x) | train/test |

    Reward ``v_xy . (cos angle, sin angle) + 1 (healthy) - 0.5 |a|^2 - contact cost`` (v5 Ant with
    its forward term replaced), horizon 200, termination when unhealthy (v5). MAML's AntDir has
    only the angles 0 and pi (forward/backward).
    """


_AntGoalBase = make_family(
    AntGoalEnv,
    {
        "goal_radius": AreaUniform("goal_radius", (), 0.0, 3.0, ood=((3.0, 4.0),)),
        "goal_angle": (0.0, TWO_PI),
    },
    name="AntGoal",
    class_name="_AntGoalBase",
    horizon=HORIZON,
    derived=_goal_from_polar,
)
AntGoalTask = _AntGoalBase.task_cls


class AntGoalFamily(_AntGoalBase):
    """Ant-v5 walking to a goal position in the plane (PEARL, VariBAD).

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `goal_radius` | area-uniform on [0, 3] (goals uniform in the disk) | ood: (3, 4] |
    | `goal_angle` | U[0, 2 pi] | |

    Reward ``-|xy - goal|_1 + 1 (healthy) - 0.5 |a|^2 - contact cost``, horizon 200; the
    observation includes the torso's x, y (107 numbers).
    """
