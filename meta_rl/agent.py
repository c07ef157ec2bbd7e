"""Meta-trained agents as plain policy objects: ``meta_rl.load("runs/X")``.

An agent is rebuilt from a run folder's ``config.json`` (which policy, which family) and the
tensors of its newest checkpoint (safetensors; no pickle, no trainer state). Two kinds:

- :class:`GradientAgent` (MAML, FOMAML, Meta-SGD, Reptile runs): an MLP policy whose
  :meth:`~GradientAgent.adapt` takes inner policy-gradient steps on a task, through the same
  functions training adapts with (:func:`meta_rl.rl.rollout.sample_episodes`,
  :func:`~meta_rl.rl.rollout.compute_advantages`, :meth:`meta_rl.rl.maml.MetaLearner.inner_loss`,
  :func:`meta_rl.core.inner_update`).
- :class:`MemoryAgent` (RL^2 runs): a recurrent policy over *trial observations*
  (``[obs, previous action, previous reward, previous done]``, see
  :mod:`meta_rl_envs.wrappers`; wrap a family env with :meth:`MemoryAgent.wrap_env`). Its memory
  persists across the episode ends inside a trial; :meth:`~MemoryAgent.adapt` warms the memory
  up on a few episodes of a task.

Both offer SB3's ``predict(obs, state=None, episode_start=None, deterministic=False) ->
(actions, state)``, so ``stable_baselines3.common.evaluation.evaluate_policy`` runs them,
``.to(device)`` and ``export(path)`` (TorchScript, loadable with plain ``torch.jit.load``).

Errors: a missing or corrupt run folder or checkpoint raises :class:`~meta_rl.runs.RunError` /
:class:`~meta_rl.checkpoint.CheckpointError` naming the file; a policy whose spaces do not fit an
env raises :class:`SpaceMismatchError` naming both spaces.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs.batched import BatchedTaskEnv
from meta_rl_envs.registry import check_id, make_env
from meta_rl_envs.wrappers import BatchedTrialEnv
from torch import Tensor

from meta_rl.checkpoint import Checkpoint, load_checkpoint, load_usable_checkpoint
from meta_rl.export import flatten_state, script_mlp, script_recurrent, unflatten_state
from meta_rl.policies import distributions as D
from meta_rl.rl.maml import adaptation_curve
from meta_rl.runs import RunError, load_config, read_run, run_of_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "Agent",
    "GradientAgent",
    "MemoryAgent",
    "SpaceMismatchError",
    "check_spaces",
    "load",
    "trial_episode_returns",
]


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


# --------------------------------------------------------------------------------------------
# Trials of a memory agent (per-episode returns)
# --------------------------------------------------------------------------------------------
@dataclass
class TrialResult:
    returns: Tensor
    """[episodes, N] return of each inner episode of each row's trial"""
    lengths: Tensor
    """[episodes, N] env steps of each inner episode"""
    state: Any
    """the policy state after the trial"""
    last_action: Tensor
    last_reward: Tensor
    steps: Tensor
    """[N] steps each row took"""
    success: Tensor | None = None
    """[episodes, N] whether the env reported ``info["success"]`` during each inner episode
    (``None``: the env reports no success)"""


@torch.no_grad()
def trial_episode_returns(
    policy: Any,
    env: BatchedTrialEnv,
    generator: torch.Generator | None,
    deterministic: bool = False,
    time_feature: bool = False,
    time_scale: int | None = None,
    state: Any = None,
    start_step: int = 0,
) -> TrialResult:
    """One trial on every row of a :class:`~meta_rl_envs.wrappers.BatchedTrialEnv` (tasks set),
    from ``state`` (default: a fresh one), recording the return of every inner episode.

    ``time_feature`` appends ``t / time_scale`` to the observation as RL^2 training does
    (``time_scale``: the trained trial length, default the env's ``max_trial_length``)."""
    obs, _ = env.reset()
    n, episodes = env.num_envs, env.episodes_per_trial
    if state is None:
        state = policy.initial_state(n, env.device)
    scale = float(time_scale or env.max_trial_length)
    returns = torch.zeros(episodes, n, device=env.device)
    lengths = torch.zeros(episodes, n, device=env.device)
    index = torch.zeros(n, dtype=torch.long, device=env.device)
    steps = torch.zeros(n, dtype=torch.long, device=env.device)
    rows = torch.arange(n, device=env.device)
    action = reward = success = None
    for t in range(env.max_trial_length):
        x = obs
        if time_feature:
            x = torch.cat([obs, torch.full_like(obs[:, :1], (start_step + t) / scale)], dim=-1)
        action, _, _, state_new = policy.act(x, state, generator, deterministic)
        obs, reward, _, _, info = env.step(action)
        active = info["active"]
        # rows past their trial keep their state (they idle until the next reset)
        state = _select_state(active, state_new, state)
        ep = index.clamp(max=episodes - 1)
        returns[ep, rows] += reward * active
        lengths[ep, rows] += active.float()
        if "success" in info:
            if success is None:
                success = torch.zeros(episodes, n, dtype=torch.bool, device=env.device)
            success[ep, rows] |= info["success"] & active
        steps += active.long()
        index = index + info["episode_done"].long()
        if not bool(info["active"].any()) and t % 16 == 15:
            break
    return TrialResult(returns, lengths, state, action, reward, steps, success)


def _select_state(mask: Tensor, new: Any, old: Any) -> Any:
    if isinstance(new, Tensor):
        return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)
    items = [_select_state(mask, a, b) for a, b in zip(new, old, strict=True)]
    return type(new)(*items) if hasattr(new, "_fields") else tuple(items)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load(path_or_run: str | Path | Any, device: str | torch.device = "cpu") -> Agent:
    """The agent of a run folder (a path or a :class:`meta_rl.runs.Run`), from its
    ``config.json`` and the tensors of its newest usable checkpoint (a damaged newest one is
    skipped with a warning naming both), or of one checkpoint file (its ``step_*.json``
    sidecar or its ``.safetensors`` file inside the run's ``checkpoints/`` folder).

    Two prefixes name a run folder elsewhere: ``"zoo:NAME"`` an agent shipped in the package
    (:mod:`meta_rl.zoo`; ``meta-rl zoo`` lists them) and ``"hf://ORG/NAME[@revision]"`` a
    repository on the Hugging Face Hub (:func:`meta_rl.hub.download`; needs the ``hub`` extra).

    A run folder is data: nothing it names is imported, and weights holding NaN or inf are
    refused."""
    if isinstance(path_or_run, str):
        path_or_run = resolve(path_or_run)
    path = Path(getattr(path_or_run, "path", path_or_run))
    sidecar = None
    if path.is_file():
        sidecar, path = run_of_checkpoint(path)
    elif not path.exists():
        raise RunError(f"run folder {str(path)!r} does not exist")
    info = read_run(path)
    _import_trainers()
    config = load_config(path)
    from meta_rl.fewshot.metric import GlyphData
    from meta_rl.rl.maml import MetaPGConfig
    from meta_rl.rl.rl2 import RL2Config

    if isinstance(config, GlyphData):
        raise RunError(
            f"run {str(path)!r} (preset {info['preset']!r}) is a supervised few-shot run, not a "
            "meta-RL agent: its held-out evaluation is in its final.json (the trainer's own, "
            "on held-out tasks; eval_* settings size it), and `python "
            "scripts/fewshot_results.py` evaluates few-shot presets on 1,000 held-out episodes. "
            "meta_rl.load and meta-rl evaluate read MAML / Meta-SGD / Reptile and RL^2 runs"
        )
    if not isinstance(config, (MetaPGConfig, RL2Config)):
        raise RunError(
            f"run {str(path)!r} (preset {info['preset']!r}, config {info['config_class']!r}) "
            "is not a meta-RL agent; meta_rl.load reads runs of the MAML / Meta-SGD / Reptile "
            "trainers (meta_rl.rl.maml, meta_rl.rl.reptile) and of RL^2 (meta_rl.rl.rl2)"
        )
    if sidecar is not None:
        ck = load_checkpoint(sidecar, device="cpu")
    else:
        ck = load_usable_checkpoint(path / "checkpoints", device="cpu")
    agent: Agent
    if isinstance(config, MetaPGConfig):
        agent = GradientAgent(path, info, config, ck)
    else:
        agent = MemoryAgent(path, info, config, ck)
    return agent.to(device)


def resolve(spec: str) -> Path:
    """The local run folder a :func:`load` argument names: ``zoo:NAME``
    (:func:`meta_rl.zoo.resolve`), ``hf://ORG/NAME[@revision]`` (:func:`meta_rl.hub.download`),
    else the path itself."""
    from meta_rl import hub, zoo

    if spec.startswith(zoo.PREFIX):
        return zoo.resolve(spec)
    if spec.startswith(hub.PREFIX):
        return hub.download(spec)
    return Path(spec)


def _import_trainers() -> None:
    """Import the preset table (it imports every trainer) so that each of meta-rl's config
    classes is known to :func:`meta_rl.config.config_class`: a run folder only names one."""
    import meta_rl.presets  # noqa: F401


def _restore(ck: Checkpoint, named: dict[str, Tensor]) -> None:
    """Copy the checkpoint's tensors into ``named`` after the check a resume makes."""
    from meta_rl.loop import check_checkpoint

    check_checkpoint(ck, named)
    with torch.no_grad():
        for k, v in named.items():
            v.copy_(ck.tensors[k])


def _as_batch(obs: Any, size: int, what: str) -> tuple[np.ndarray, bool]:
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


class Agent:
    """Common parts of the two agent kinds (see the module docstring)."""

    kind: str = ""
    observation_space: gym.Space
    action_space: gym.Space

    def __init__(self, path: Path, info: dict[str, Any], config: Any, ck: Checkpoint) -> None:
        self.path = path
        self.info = info
        self.config = config
        self.preset: str = info.get("preset", "")
        self.checkpoint_step = ck.step
        self.checkpoint_path = ck.path
        self.device = torch.device("cpu")
        self.generator = torch.Generator().manual_seed(0)
        self.adapted_on: Any = None
        """the task this agent was adapted on (None: the meta-trained agent)"""

    # -- common API ----------------------------------------------------------------------
    @property
    def env_id(self) -> str:
        """The family id the agent was trained on (its config's ``env_id``)."""
        return self.config.env_id

    def env_kwargs(self) -> dict[str, Any]:
        """The env kwargs the agent's family was made with in training."""
        raise NotImplementedError

    def seed(self, seed: int) -> None:
        """Reseed the generator of sampled (non-deterministic) actions."""
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def to(self, device: str | torch.device) -> Agent:
        """Move the policy (and an adapted agent's state) to ``device``; returns ``self``."""
        from meta_rl_envs.batched import resolve_device

        self.device = resolve_device(device)
        self._move(self.device)
        state = self.generator.get_state()
        self.generator = torch.Generator(device=self.device)
        if self.device.type == "cpu":
            self.generator.set_state(state)
        return self

    def _move(self, device: torch.device) -> None:
        raise NotImplementedError

    def check_env(self, env: gym.Env | BatchedTaskEnv, where: str = "env") -> None:
        """Raise :class:`SpaceMismatchError` unless ``env`` (a Gymnasium env, or a batched /
        vector env with ``single_*_space``) fits this agent's policy."""
        obs = getattr(env, "single_observation_space", None) or env.observation_space
        act = getattr(env, "single_action_space", None) or env.action_space
        check_spaces(self.observation_space, self.action_space, obs, act, where)

    def _resolve_target(self, env_or_task: Any) -> tuple[str, dict[str, Any], Any]:
        """(family id, env kwargs, task) of what ``adapt`` was given."""
        from meta_rl_envs.core import Task

        if isinstance(env_or_task, Task):
            return self.env_id, self.env_kwargs(), env_or_task
        base = getattr(env_or_task, "unwrapped", None)
        if base is not None and hasattr(base, "get_task"):
            spec = getattr(env_or_task, "spec", None)
            if spec is None or spec.id is None:
                raise RunError(
                    "adapt needs a family env made with gymnasium.make(id) (so it can run "
                    "copies of it) or a Task of the agent's family; this env has no spec id"
                )
            check_id(spec.id)
            return spec.id, dict(spec.kwargs or {}), base.get_task()
        raise RunError(
            f"adapt takes a Task or a Gymnasium task-family env, got {type(env_or_task).__name__}"
        )

    def _clone(self) -> Any:
        """A copy with its own policy module (so ``to(device)`` on it leaves this one alone)."""
        other = copy.copy(self)
        other.policy = copy.deepcopy(self.policy)
        return other

    def export(self, path: str | Path) -> Path:
        """Write this (adapted) policy's act function as TorchScript to ``path``."""
        path = Path(path)
        with warnings.catch_warnings():  # torch 2.x marks TorchScript deprecated; it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            module = self._export_module()
        path.parent.mkdir(parents=True, exist_ok=True)
        module.save(str(path))
        log.info("exported %s policy to %s", self.kind, path)
        return path

    def _export_module(self) -> torch.jit.ScriptModule:
        raise NotImplementedError

    def __repr__(self) -> str:
        adapted = f", adapted on {self.adapted_on}" if self.adapted_on is not None else ""
        return (
            f"{type(self).__name__}(run={str(self.path)!r}, preset={self.preset!r}, "
            f"env={self.env_id!r}, step={self.checkpoint_step}{adapted})"
        )


# --------------------------------------------------------------------------------------------
# Gradient agents
# --------------------------------------------------------------------------------------------
class GradientAgent(Agent):
    """An MLP policy meta-trained by MAML / FOMAML / Meta-SGD / Reptile."""

    kind = "gradient"

    def __init__(self, path: Path, info: dict[str, Any], config: Any, ck: Checkpoint) -> None:
        super().__init__(path, info, config, ck)
        from meta_rl.policies.mlp import make_mlp_policy
        from meta_rl.rl.maml import MetaLearner

        env = make_env(self.env_id, 1, 1, "cpu", config.env_backend, **self.env_kwargs())
        try:
            self.observation_space = env.single_observation_space
            self.action_space = env.single_action_space
        finally:
            env.close()
        self.policy = make_mlp_policy(
            self.observation_space,
            self.action_space,
            hidden=config.hidden,
            activation=config.activation,
            init_log_std=config.init_log_std,
        )
        self.learner = MetaLearner(self.policy, config)
        _restore(ck, self.learner.outer_params())
        self.params: dict[str, Tensor] = self.policy.params(detach=True)
        """the params ``predict`` acts with (the meta-params, or adapted ones)"""

    def env_kwargs(self) -> dict[str, Any]:
        """``{"horizon": ...}`` when the run set a horizon, else ``{}``."""
        return {"horizon": self.config.horizon} if self.config.horizon else {}

    def _clone(self) -> GradientAgent:
        from meta_rl.rl.maml import MetaLearner

        other = super()._clone()
        other.learner = MetaLearner(other.policy, self.config)
        if self.learner.lrs is not None:
            other.learner.lrs = {k: v.detach().clone() for k, v in self.learner.lrs.items()}
        return other

    def _move(self, device: torch.device) -> None:
        self.policy.to(device)
        self.learner.theta = self.policy.params()
        if self.learner.lrs is not None:
            self.learner.lrs = {k: v.to(device) for k, v in self.learner.lrs.items()}
        self.params = {k: v.to(device) for k, v in self.params.items()}

    def make_env(
        self, num_tasks: int, envs_per_task: int, env_id: str | None = None, **kw: Any
    ) -> BatchedTaskEnv:
        """A ``num_tasks x envs_per_task`` env of ``env_id`` (default: the trained family)."""
        env_id = env_id or self.env_id
        kwargs = {**(self.env_kwargs() if env_id == self.env_id else {}), **kw}
        env = make_env(env_id, num_tasks, envs_per_task, str(self.device), "auto", **kwargs)
        self.check_env(env, f"family {env_id!r}")
        return env

    def adapt(
        self, env_or_task: Any, budget: int = 1, episodes: int | None = None, seed: int = 0
    ) -> GradientAgent:
        """A copy of this agent adapted to one task by ``budget`` inner policy-gradient steps,
        each on ``episodes`` fresh episodes (default: the run's ``eval_episodes``).

        ``env_or_task``: a Task of the trained family, or a family env made with
        ``gymnasium.make`` (its current task is used; copies of it run the episodes)."""
        if not isinstance(budget, (int, np.integer)) or budget < 0:
            raise RunError(f"budget={budget!r} must be a number of inner steps >= 0")
        env_id, kwargs, task = self._resolve_target(env_or_task)
        episodes = int(episodes or self.config.eval_episodes)
        env = make_env(env_id, 1, episodes, str(self.device), "auto", **kwargs)
        self.check_env(env, f"family {env_id!r}")
        curve = adaptation_curve(self.learner, env, [task], int(budget), seed)
        env.close()
        adapted = self._clone()
        adapted.params = {k: v[0].detach().clone() for k, v in curve.params.items()}
        adapted.adapted_on = task
        adapted.adaptation_returns = curve.returns[:, 0].tolist()
        adapted.generator = torch.Generator(device=self.device).manual_seed(seed)
        log.info(
            "adapted on %s: return %s", task, " -> ".join(f"{r:.3g}" for r in curve.returns[:, 0])
        )
        return adapted

    @torch.no_grad()
    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's protocol: ``(actions, state)``; Box actions are clipped to the action space
        bounds (as SB3 does). ``state`` and ``episode_start`` are passed through (no memory)."""
        x, single = _as_batch(observation, self.policy.obs_dim, f"{self.observation_space}")
        obs = torch.as_tensor(x, device=self.device)
        head, log_std = self.policy.head(self.params, obs)
        if deterministic:
            action = D.mode(self.action_space, head)
        else:
            action = D.sample(self.action_space, head, log_std, self.generator)
        out = action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            out = np.clip(out, self.action_space.low, self.action_space.high)
        return (out[0] if single else out), state

    def _export_module(self) -> torch.jit.ScriptModule:
        return script_mlp(self)


# --------------------------------------------------------------------------------------------
# Memory agents (RL^2)
# --------------------------------------------------------------------------------------------
class MemoryAgent(Agent):
    """A recurrent RL^2 policy. It acts on trial observations (:meth:`wrap_env`); its state is
    the policy's memory plus the trial's step count."""

    kind = "memory"

    def __init__(self, path: Path, info: dict[str, Any], config: Any, ck: Checkpoint) -> None:
        super().__init__(path, info, config, ck)
        from meta_rl.rl.rl2 import make_policy, make_trial_env

        env = make_trial_env(config, 1, 1, torch.device("cpu"))
        self.observation_space = env.env.single_observation_space
        self.action_space = env.single_action_space
        self.trial_observation_space = env.single_observation_space
        self.episodes_per_trial = int(config.episodes_per_trial)
        self.horizon = int(env.horizon)
        self.max_trial_length = int(env.max_trial_length)
        self.policy = make_policy(config, env, config.seed + 1)
        _restore(ck, dict(self.policy.state_dict()))
        self.policy.eval()
        self.warm_state: Any = None
        """the memory after :meth:`adapt` (None: a fresh trial)"""
        self.warm_tail: Tensor | None = None
        """previous action / reward / done of the last warm-up step"""
        self.warm_steps = 0

    def env_kwargs(self) -> dict[str, Any]:
        """The family's trainer defaults updated by the run's ``env_kwargs``."""
        return check_id(self.env_id).trainer_kwargs(self.config.env_kwargs)

    def _move(self, device: torch.device) -> None:
        self.policy.to(device)
        if self.warm_state is not None:
            self.warm_state = unflatten_state(
                self.warm_state, [t.to(device) for t in flatten_state(self.warm_state)]
            )
        if self.warm_tail is not None:
            self.warm_tail = self.warm_tail.to(device)

    def wrap_env(self, env: gym.Env, episodes_per_trial: int | None = None) -> gym.Env:
        """``env`` (a family env) as trials of ``episodes_per_trial`` episodes (default: the
        trained number; 1 for an adapted agent, whose memory already holds the warm-up)."""
        from meta_rl_envs.wrappers import TrialWrapper

        self.check_env(env, "env")
        n = episodes_per_trial or (1 if self.warm_state is not None else self.episodes_per_trial)
        return TrialWrapper(env, n)

    def make_trial_env(
        self, num_tasks: int, episodes: int, env_id: str | None = None, **kw: Any
    ) -> BatchedTrialEnv:
        """Trials of ``episodes`` episodes on ``num_tasks`` rows: over the family's torch-batched
        env, or over a Gymnasium vector env of it when it has none (any family, e.g. one made
        with the family builder)."""
        env_id = env_id or self.env_id
        kwargs = {**(self.env_kwargs() if env_id == self.env_id else {}), **kw}
        base = make_env(env_id, num_tasks, 1, str(self.device), **kwargs)
        check_spaces(
            self.observation_space,
            self.action_space,
            base.single_observation_space,
            base.single_action_space,
            f"family {env_id!r}",
        )
        return BatchedTrialEnv(base, episodes)

    def run_trials(
        self,
        env: BatchedTrialEnv,
        seed: int = 0,
        deterministic: bool = False,
    ) -> TrialResult:
        """One trial per row of ``env`` (tasks set) from this agent's memory (fresh, or warm
        after :meth:`adapt`), seeded: env noise ``seed``, actions ``seed``."""
        env.env.reset(seed=seed)
        gen = torch.Generator(device=env.device).manual_seed(seed)
        return trial_episode_returns(
            self.policy,
            env,
            gen,
            deterministic,
            self.config.time_feature,
            self.max_trial_length,
            self._fresh_state(env.num_envs),
            self.warm_steps,
        )

    def adapt(
        self, env_or_task: Any, budget: int = 1, seed: int = 0, deterministic: bool = False
    ) -> MemoryAgent:
        """A copy of this agent whose memory has seen ``budget`` episodes of one task (memory
        warm-up). Its ``predict`` starts every new episode from that memory."""
        if not isinstance(budget, (int, np.integer)) or budget < 0:
            raise RunError(f"budget={budget!r} must be a number of episodes >= 0")
        env_id, kwargs, task = self._resolve_target(env_or_task)
        adapted = self._clone()
        adapted.adapted_on = task
        adapted.generator = torch.Generator(device=self.device).manual_seed(seed)
        if budget == 0:
            return adapted
        env = self.make_trial_env(1, int(budget), env_id, **kwargs)
        env.set_tasks([task])
        res = self.run_trials(env, seed, deterministic)
        adapted.warm_state = res.state
        act = res.last_action.reshape(1, -1) if res.last_action.dim() > 1 else res.last_action
        if isinstance(self.action_space, gym.spaces.Discrete):
            n = int(self.action_space.n)
            enc = torch.nn.functional.one_hot(
                act.long().reshape(1) - int(self.action_space.start), n
            )
        else:
            enc = act.reshape(1, -1)
        adapted.warm_tail = torch.cat(
            [
                enc.float(),
                res.last_reward.reshape(1, 1).float(),
                torch.ones(1, 1, device=self.device),
            ],
            dim=-1,
        )[0]
        adapted.warm_steps = self.warm_steps + int(res.steps[0])
        adapted.adaptation_returns = res.returns[:, 0].tolist()
        log.info("memory warm-up on %s: episode returns %s", task, adapted.adaptation_returns)
        return adapted

    def _fresh_state(self, batch: int) -> Any:
        if self.warm_state is None:
            return self.policy.initial_state(batch, self.device)
        return unflatten_state(
            self.warm_state,
            [t.expand(batch, *t.shape[1:]).clone() for t in flatten_state(self.warm_state)],
        )

    @torch.no_grad()
    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """SB3's recurrent protocol on trial observations: ``state`` is ``None`` at the start
        (a fresh memory, or the warm-up memory of an adapted agent) and the returned state
        afterwards; rows with ``episode_start`` true start over from that initial memory. Inside
        a trial (:meth:`wrap_env`) the wrapper's episode is the whole trial, so the memory
        persists across the inner episodes."""
        size = self.trial_observation_space.shape[0]
        x, single = _as_batch(
            observation, size, "a trial observation: wrap the env with agent.wrap_env(env)"
        )
        obs = torch.as_tensor(x, device=self.device)
        batch = obs.shape[0]
        if state is None:
            mem, steps = self._fresh_state(batch), np.full(batch, self.warm_steps)
            starts = np.ones(batch, dtype=bool)
        else:
            mem, steps = state
            starts = (
                np.zeros(batch, dtype=bool)
                if episode_start is None
                else np.asarray(episode_start, dtype=bool).reshape(batch)
            )
            if starts.any():
                mask = torch.as_tensor(starts, device=self.device)
                mem = _select_state(mask, self._fresh_state(batch), mem)
                steps = np.where(starts, self.warm_steps, steps)
        if self.warm_tail is not None and starts.any():
            # the first step after the warm-up sees the warm-up's last action, reward and done
            tail = self.warm_tail.numel()
            fixed = obs.clone()
            fixed[:, -tail:] = self.warm_tail
            obs = torch.where(torch.as_tensor(starts, device=self.device)[:, None], fixed, obs)
        if self.config.time_feature:
            t = torch.as_tensor(steps / self.max_trial_length, dtype=obs.dtype, device=self.device)
            obs = torch.cat([obs, t[:, None]], dim=-1)
        action, _, _, mem = self.policy.act(obs, mem, self.generator, deterministic)
        out = action.cpu().numpy()
        return (out[0] if single else out), (mem, steps + 1)

    def _export_module(self) -> torch.jit.ScriptModule:
        return script_recurrent(self)
