"""Classic-control task families (CartPole, Pendulum, MountainCarContinuous) built with
:func:`meta_rl_envs.builder.make_family`, and a torch-batched CartPole.

Each family is the Gymnasium env itself with some physical constants turned into task
parameters; episodes are truncated at the base id's time limit (500 / 200 / 999 steps).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control import utils as cc_utils
from meta_rl_envs.batched import BatchedEnv
from meta_rl_envs.builder import make_family
from meta_rl_envs.core import TaskError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# CartPole
# --------------------------------------------------------------------------------------------
CARTPOLE_RANGES: dict[str, tuple[float, float]] = {
    "length": (0.25, 0.75),  # half the pole's length (Gymnasium default 0.5)
    "masspole": (0.05, 0.2),  # default 0.1
    "masscart": (0.5, 2.0),  # default 1.0
}
CARTPOLE_OOD: dict[str, list[tuple[float, float]]] = {"length": [(0.1, 0.25), (0.75, 1.5)]}


def _cartpole_derived(env: Any) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


_CartPoleBase = make_family(
    "CartPole-v1",
    CARTPOLE_RANGES,
    name="CartPole",
    class_name="_CartPoleBase",
    ood=CARTPOLE_OOD,
    derived=_cartpole_derived,
)
CartPoleTask = _CartPoleBase.task_cls


class CartPoleFamily(_CartPoleBase):
    """CartPole-v1 with sampled pole half-length, pole mass and cart mass.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `length` | U[0.25, 0.75] (half-length; default 0.5) | ood: U[0.1, 0.25] or U[0.75, 1.5] |
    | `masspole` | U[0.05, 0.2] (default 0.1) | |
    | `masscart` | U[0.5, 2.0] (default 1.0) | |

    Dynamics, reward (+1 per step, termination step included), termination (|x| > 2.4 or
    |theta| > 12 degrees) and truncation (500 steps) are Gymnasium's CartPole-v1. The initial state
    is uniform in [-0.05, 0.05]^4, drawn as ``-0.05 + 0.1 * self._noise("reset", 4)`` so that
    :class:`BatchedCartPole` can be checked against it step for step.
    """

    def _base_reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        gym.Env.reset(self, seed=seed)
        low, high = cc_utils.maybe_parse_reset_bounds(options, -0.05, 0.05)
        self.state = low + (high - low) * self._noise("reset", 4)
        self.steps_beyond_terminated = None
        if self.render_mode == "human":
            self.render()
        return np.array(self.state, dtype=np.float32), {}


# --------------------------------------------------------------------------------------------
# Pendulum and MountainCarContinuous
# --------------------------------------------------------------------------------------------
_PendulumBase = make_family(
    "Pendulum-v1",
    {"m": (0.5, 2.0), "l": (0.5, 2.0), "g": (5.0, 15.0)},
    name="Pendulum",
    class_name="_PendulumBase",
    ood={"m": [(2.0, 3.0)]},
)
PendulumTask = _PendulumBase.task_cls


class PendulumFamily(_PendulumBase):
    """Pendulum-v1 with sampled mass, length and gravity.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `m` | U[0.5, 2.0] (default 1.0) | ood: U[2.0, 3.0] |
    | `l` | U[0.5, 2.0] (default 1.0) | |
    | `g` | U[5.0, 15.0] (default 10.0) | |

    Everything else is Gymnasium's Pendulum-v1 (truncated at 200 steps).
    """


_MountainCarBase = make_family(
    "MountainCarContinuous-v0",
    {"power": (0.001, 0.002)},
    name="MountainCarContinuous",
    class_name="_MountainCarBase",
    ood={"power": [(0.0007, 0.001), (0.002, 0.003)]},
)
MountainCarContinuousTask = _MountainCarBase.task_cls


class MountainCarContinuousFamily(_MountainCarBase):
    """MountainCarContinuous-v0 with sampled engine power.

    ## Task Parameters
    | name | distribution | splits |
    |------|--------------|--------|
    | `power` | U[0.001, 0.002] (default 0.0015) | ood: U[0.0007, 0.001] or U[0.002, 0.003] |

    Everything else is Gymnasium's MountainCarContinuous-v0 (truncated at 999 steps).
    """


# --------------------------------------------------------------------------------------------
# Batched CartPole
# --------------------------------------------------------------------------------------------
GRAVITY = 9.8
FORCE_MAG = 10.0
TAU = 0.02
X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * math.pi / 360


def cartpole_step(
    state: torch.Tensor,
    t: torch.Tensor,
    action: torch.Tensor,
    length: torch.Tensor,
    masspole: torch.Tensor,
    masscart: torch.Tensor,
    reset_noise: torch.Tensor,
    horizon: int,
) -> tuple[torch.Tensor, ...]:
    """One CartPole-v1 step (Euler) of every row, with same-step autoreset.

    Returns ``(obs, final_obs, reward, terminated, truncated, t)``; a pure function, so
    ``torch.compile`` can fuse it into one kernel."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(action == 1, FORCE_MAG, -FORCE_MAG)
    total_mass = masspole + masscart
    polemass_length = masspole * length
    costheta = torch.cos(theta)
    sintheta = torch.sin(theta)
    temp = (force + polemass_length * theta_dot * theta_dot * sintheta) / total_mass
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        length * (4.0 / 3.0 - masspole * costheta * costheta / total_mass)
    )
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    x = x + TAU * x_dot
    x_dot = x_dot + TAU * xacc
    theta = theta + TAU * theta_dot
    theta_dot = theta_dot + TAU * thetaacc
    final_obs = torch.stack((x, x_dot, theta, theta_dot), dim=-1)
    terminated = (x.abs() > X_THRESHOLD) | (theta.abs() > THETA_THRESHOLD)
    t = t + 1
    truncated = (t >= horizon) & ~terminated
    done = terminated | truncated
    t = torch.where(done, 0, t)
    obs = torch.where(done.unsqueeze(-1), -0.05 + 0.1 * reset_noise, final_obs)
    reward = torch.ones_like(x)
    return obs, final_obs, reward, terminated, truncated, t


def _say(message: str) -> None:
    """``message`` at INFO on this module's logger, or on stderr when logging is not set up (so
    a long silent pause is explained even in a plain script)."""
    if log.hasHandlers():
        log.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


class BatchedCartPole(BatchedEnv):
    """:class:`CartPoleFamily` for ``num_tasks x envs_per_task`` rows, each with its own pole
    length, pole mass and cart mass (float32 on ``device``).

    ``compile=True`` runs the step as one kernel fused by TorchInductor (the first step pays the
    compile time, a few seconds, logged; on failure it falls back to eager with a warning).
    Actions are a ``(num_envs,)`` tensor of 0 (push left) / 1 (push right).
    """

    def __init__(
        self,
        num_tasks: int,
        envs_per_task: int = 1,
        device: str = "cpu",
        horizon: int = 500,
        compile: bool = False,
    ) -> None:
        super().__init__(num_tasks, envs_per_task, device)
        if not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise TaskError(f"horizon={horizon!r} must be a positive integer")
        self.horizon = int(horizon)
        self.task_space = CartPoleFamily.task_space
        probe = gym.make("CartPole-v1").unwrapped
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        probe.close()
        self.state = torch.zeros(self.num_envs, 4, device=self.device)
        self.compile = bool(compile)
        self._step_fn: Any = None  # the compiled step, built on the first step
        self.compile_seconds: float | None = None

    def _load_params(self, params: dict[str, torch.Tensor]) -> None:
        self.length = params["length"].contiguous()
        self.masspole = params["masspole"].contiguous()
        self.masscart = params["masscart"].contiguous()

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        init = -0.05 + 0.1 * self._rand("reset", 4)
        self.state = torch.where(mask.unsqueeze(-1), init, self.state)
        return self.state

    def _step(self, action: torch.Tensor):
        # The unfused contract path (``step`` below fuses this with the time limit and autoreset).
        zeros = torch.zeros_like(self.state)
        _, final_obs, reward, terminated, _, _ = cartpole_step(
            self.state, self.t, action, self.length, self.masspole, self.masscart, zeros, 0
        )
        self.state = final_obs
        return final_obs, reward, terminated

    def _compile(self, args: tuple[torch.Tensor, ...]) -> None:
        """Compile the step for this env's shapes with Inductor (one fused C++/Triton kernel).

        ``torch._inductor.compile`` on a traced graph skips TorchDynamo's per-call guard checks,
        which cost more than the whole kernel at ~1,000 rows on CPU. Falls back to eager."""
        _say(
            "BatchedCartPole: compiling (once) the step into one kernel; this first step can "
            "take up to a minute (compile=False runs eager)..."
        )
        start = time.perf_counter()
        horizon = self.horizon

        class Step(torch.nn.Module):
            def forward(self, state, t, action, length, masspole, masscart, reset_noise):
                return cartpole_step(
                    state, t, action, length, masspole, masscart, reset_noise, horizon
                )

        try:
            graph = torch.fx.symbolic_trace(Step())
            # One thread for the CPU kernel: a step is too short for OpenMP to pay off, and on a
            # busy machine its spinning threads cost ~10x (measured with 2 threads on 2 cores).
            with torch.no_grad(), torch._inductor.config.patch({"cpp.threads": 1}):
                self._step_fn = torch._inductor.compile(graph, list(args))
        except Exception as err:  # e.g. no C++ compiler: degrade, don't die
            log.warning(
                "compiling the CartPole step failed (%s: %s); running eager",
                type(err).__name__,
                err,
            )
            self.compile = False
        self.compile_seconds = time.perf_counter() - start
        log.info("BatchedCartPole: compiled the step in %.1f s", self.compile_seconds)

    def step(self, action: torch.Tensor):
        action = torch.as_tensor(action, device=self.device).reshape(self.num_envs)
        if action.dtype != torch.long:
            action = action.long()
        # The compiled kernel is specialised to contiguous float32 inputs (no-ops when they are).
        noise = self._rand("reset", 4).to(torch.float32).contiguous()
        self.state = self.state.to(torch.float32).contiguous()
        args = (self.state, self.t, action, self.length, self.masspole, self.masscart, noise)
        if not self.compile:
            out = cartpole_step(*args, self.horizon)
        else:
            if self._step_fn is None:
                self._compile(args)
            out = self._step_fn(*args) if self.compile else cartpole_step(*args, self.horizon)
        obs, final_obs, reward, terminated, truncated, self.t = out
        self.state = obs
        return obs, reward, terminated, truncated, {"final_obs": final_obs}
