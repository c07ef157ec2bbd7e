"""Evaluate adaptation on held-out tasks: return vs adaptation budget, beside baselines.

``evaluate_run(run, split="test", tasks=N)`` loads the run's agent (:func:`meta_rl.load`), draws
``N`` tasks of ``split`` from the family (seeded) and measures, with a mean and a 95% confidence
interval over the tasks:

- gradient agents (MAML, Meta-SGD, Reptile): the mean episode return after 0, 1, ..., k inner
  policy-gradient steps (each step adapts on ``episodes`` fresh episodes per task);
- memory agents (RL^2): the return of episode 1, 2, ..., n of one trial per task (and the trial's
  total, the number the RL^2 paper reports);
- context agents (PEARL): the return of episode 1, 2, ..., n per task, episode 1 with z from the
  prior and episode i with z from the posterior of the transitions of episodes 1..i-1.

Baselines on the same tasks and seeds:

- ``none``: the meta-trained policy without adaptation: the agent's first point (0 inner steps;
  episode 1 of a trial from a fresh memory), drawn flat across the budget;
- ``ppo``: stable-baselines3 PPO trained from scratch on each task for ``m x B`` env steps
  (``B``: the env steps the agent's adaptation consumed before its last point; ``m`` in
  ``ppo_multipliers``, default 1 and 10; add 100 for the 100x baseline), evaluated on
  ``episodes`` episodes. One PPO run per task is evaluated at each budget in turn (its learning
  rate is constant, so this equals separate runs up to whole PPO rollouts; the report gives the
  env steps each point actually trained). The tasks' runs are independent and go to
  ``ppo_workers`` processes (default: all of them at once, up to ``max(cores, 8)``, so that no
  core idles while the last runs finish); each run is seeded and uses one torch thread, so the
  numbers are the same as in one process. PPO acts as the agent does
  (sampled actions, or both the most likely one with ``deterministic=True``);
- ``reference``: the family's reference solvers (its ``FamilySpec.references``, the same ones
  RL^2 reports; e.g. navigation: the straight-to-goal oracle and standing still; bandits:
  Bayes-optimal by dynamic programming, Thompson sampling, UCB1, greedy, random). They are
  computed on the same tasks (the same task-space draws from ``seed``); one that cannot be
  computed here (e.g. the exact bandit DP with 50 arms) is skipped with a note in the report.

When the env's ``info`` carries ``success`` (e.g. Meta-World), the success rate of each point
is reported too (gradient agents: after each inner step; memory agents: in each episode of the
trial). The result is a typed :class:`~meta_rl.report.Report`; :func:`write_outputs` writes
``report.json`` and ``adaptation.png``, :func:`markdown_table` renders it as a table.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs import make_env
from meta_rl_envs.registry import check_id

from meta_rl.agent import (
    Agent,
    ContextAgent,
    GradientAgent,
    MemoryAgent,
    VariBADAgent,
    load,
)
from meta_rl.belief import record_belief
from meta_rl.config import ConfigError
from meta_rl.report import (
    Budget,
    Point,
    Reference,
    Report,
    Series,
    markdown_table,
    plot_report,
    with_gains,
    write_outputs,
)
from meta_rl.rl.maml import adaptation_curve
from meta_rl.rl.rollout import sample_episodes

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "PPOResult",
    "Report",
    "evaluate_run",
    "markdown_table",
    "plot_report",
    "ppo_from_scratch",
    "write_outputs",
]

BASELINES = ("none", "ppo", "reference")
PPO_MULTIPLIERS = (1.0, 10.0)
"""PPO budgets, as multiples of the adaptation's env steps (``(1, 10, 100)`` adds the 100x one)"""


# --------------------------------------------------------------------------------------------
# PPO from scratch (stable-baselines3)
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """SB3 seeds Python's, numpy's and torch's global generators; put them back afterwards."""
    py, torch_state = random.getstate(), torch.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)  # noqa: NPY002
        torch.set_rng_state(torch_state)


@contextlib.contextmanager
def _torch_threads(num: int) -> Iterator[None]:
    """Run with ``num`` torch CPU threads (0: unchanged), then restore the previous count. Small
    policies run fastest on one thread, and far faster than on two when the CPU is shared."""
    old = torch.get_num_threads()
    if num > 0:
        torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run_episodes(
    model: Any, env: gym.Env, episodes: int, seed: int, deterministic: bool
) -> tuple[float, float | None]:
    """Mean return (and success rate, if info has "success") of ``episodes`` episodes."""
    returns, successes, seen = [], [], False
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        total, success, done = 0.0, False, False
        while not done:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            if "success" in info:
                seen = True
                success |= bool(info["success"])
            done = terminated or truncated
        returns.append(total)
        successes.append(float(success))
    return float(np.mean(returns)), (float(np.mean(successes)) if seen else None)


def _ppo_shape(first_budget: int) -> tuple[int, int]:
    """(n_steps, batch_size) of PPO for a smallest budget: one rollout fits the 1x budget."""
    n_steps = int(min(2048, max(8, first_budget)))
    for b in (64, 50, 40, 32, 25, 20, 16, 10, 8):
        if n_steps % b == 0 and b < n_steps:
            return n_steps, b
    return n_steps, n_steps


@dataclass(frozen=True)
class PPOResult:
    """PPO from scratch on one task, measured after training toward ``target_steps``."""

    target_steps: int
    env_steps: int
    """the env steps actually trained (whole rollouts)"""
    mean_return: float
    success: float | None = None
    """success rate of the evaluation episodes (None: the env's info has no ``success``)"""


def ppo_from_scratch(
    env_id: str,
    env_kwargs: dict[str, Any],
    task: Any,
    budgets: Sequence[int],
    episodes: int,
    seed: int,
    deterministic: bool = False,
) -> list[PPOResult]:
    """SB3 PPO (default hyperparameters, ``n_steps`` fit to the smallest budget) trained from
    scratch on ``task``; after each budget (env steps, increasing) its mean return on
    ``episodes`` episodes. One :class:`PPOResult` per budget."""
    from stable_baselines3 import PPO

    env = gym.make(env_id, **env_kwargs)
    eval_env = gym.make(env_id, **env_kwargs)
    env.unwrapped.set_task(task)
    eval_env.unwrapped.set_task(task)
    n_steps, batch = _ppo_shape(min(budgets))
    out = []
    with _global_rng_kept():
        model = PPO(
            "MlpPolicy", env, n_steps=n_steps, batch_size=batch, seed=seed, device="cpu", verbose=0
        )
        for budget in budgets:
            if budget > model.num_timesteps:
                first = model.num_timesteps == 0
                model.learn(budget - model.num_timesteps, reset_num_timesteps=first)
            ret, success = _run_episodes(model, eval_env, episodes, seed, deterministic)
            out.append(PPOResult(int(budget), int(model.num_timesteps), ret, success))
    env.close()
    eval_env.close()
    return out


def _ppo_job(args: tuple[Any, ...]) -> list[PPOResult]:
    """One task's PPO run in a worker process (one torch thread, like the serial path)."""
    torch.set_num_threads(1)
    return ppo_from_scratch(*args)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_ppo_workers(jobs: int) -> int:
    """Processes for ``jobs`` equal PPO runs: all at once (at most ``max(cores, 8)``), the OS
    sharing the cores between them, so 3 runs on 2 cores take the time of 1.5 runs, not 2. On
    one core: 1 (the runs go one after the other in this process)."""
    cores = available_cores()
    return 1 if cores == 1 else max(1, min(jobs, max(cores, 8)))


def _ppo_runs(jobs: list[tuple[Any, ...]], workers: int, bar: _Progress) -> list[list[PPOResult]]:
    """``ppo_from_scratch(*job)`` for every job, in ``workers`` processes (forked, so a family
    registered at run time is known there; in this process where fork is not the platform's
    way). Results in the order of ``jobs``."""
    n = len(jobs)
    fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    if workers <= 1 or n <= 1 or not fork:
        out = []
        for i, job in enumerate(jobs):
            bar.start(f"PPO task {i + 1}/{n}")
            out.append(ppo_from_scratch(*job))
            bar.done(f"PPO task {i + 1}/{n}")
        return out
    import stable_baselines3  # noqa: F401  (imported once here; the forked workers inherit it)

    results: list[list[PPOResult] | None] = [None] * n
    bar.start(f"PPO on {n} tasks in {min(workers, n)} processes ({available_cores()} cores)")
    with ProcessPoolExecutor(min(workers, n), mp_context=multiprocessing.get_context("fork")) as ex:
        futures = {ex.submit(_ppo_job, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.done(f"PPO task {futures[fut] + 1}/{n}")
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------
# Analytic references
# --------------------------------------------------------------------------------------------
def family_references(
    env_id: str, env_kwargs: dict[str, Any], num_tasks: int, seed: int, split: str, episodes: int
) -> tuple[list[Reference], dict[str, str]]:
    """The family's reference solvers (its ``FamilySpec.references``) on the evaluated tasks (the
    same ``task_space.sample(num_tasks, default_rng(seed), split)`` draws), as the mean return of
    a trial of ``episodes`` episodes; and the references that could not be computed here, with
    the reason (also logged). Nothing for families without references."""
    refs = check_id(env_id).compute_references(episodes, num_tasks, seed, split, env_kwargs)
    for name, why in refs.skipped.items():
        log.warning("reference %s not computed: %s", name, why)
    values = [
        Reference(name, est.mean, est.se, episodes, est.exact) for name, est in refs.values.items()
    ]
    return values, dict(refs.skipped)


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------
def _check_args(
    split: str, tasks: int, budget: Any, baselines: Sequence[str], mults: Any, workers: Any
) -> None:
    from meta_rl_envs.core import check_split

    check_split(split)
    if not isinstance(tasks, (int, np.integer)) or isinstance(tasks, bool) or tasks < 2:
        raise ConfigError(f"tasks={tasks!r} must be an integer >= 2 (a CI needs two tasks)")
    if budget is not None and (not isinstance(budget, (int, np.integer)) or budget < 1):
        raise ConfigError(f"budget={budget!r} must be a positive integer (inner steps / episodes)")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"baselines {unknown} are not known; choose from {list(BASELINES)}")
    if not mults or any(not (isinstance(m, (int, float)) and m > 0) for m in mults):
        raise ConfigError(f"ppo_multipliers={mults!r} must be positive numbers")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ConfigError(f"ppo_workers={workers!r} must be a positive integer (or None: auto)")


class _Progress:
    """Stages of an evaluation: on a tqdm-like bar (``start(text)`` names the stage now running,
    ``done(text)`` advances by one), or, without a bar, as log lines (INFO) with the elapsed
    time, so a run whose output goes to a file still shows what it is doing."""

    def __init__(self, bar: Any, total: int) -> None:
        self.bar, self.total, self.count = bar, total, 0
        self.t0 = time.perf_counter()
        if bar is not None:
            bar.total = total
            bar.refresh()

    def _line(self, text: str) -> None:
        level = logging.DEBUG if self.bar is not None else logging.INFO
        log.log(level, "evaluate: %s [%.0f s]", text, time.perf_counter() - self.t0)

    def start(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        self._line(f"{text} ...")

    def done(self, text: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        self._line(f"{text} done ({self.count}/{self.total})")


def _experience_before(steps: torch.Tensor) -> list[float]:
    """Mean over tasks of the env steps used before each point (``steps``: [points, T])."""
    steps = steps.double()
    before = torch.cat([torch.zeros_like(steps[:1]), steps[:-1].cumsum(0)])
    return [float(v) for v in before.mean(1)]


def _floats(x: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1))


@dataclass
class _Adaptation:
    """The agent's curve on the drawn tasks, and what the baselines need from it."""

    series: Series
    tasks: list[Any]
    eval_episodes: int
    """episodes of every PPO evaluation"""
    episodes_per_inner_step: int | None
    trial_return: Point | None = None


def _gradient_adaptation(
    agent: GradientAgent,
    family: str,
    kwargs: dict[str, Any],
    num_tasks: int,
    split: str,
    budget: int | None,
    episodes: int | None,
    seed: int,
    deterministic: bool,
) -> _Adaptation:
    """Return after 0..k inner steps from the meta-params (``deterministic``: measured on extra
    mean-action episodes after each step, not adapted on and not counted in the budget)."""
    cfg = agent.config
    k = int(budget if budget is not None else cfg.eval_inner_steps)
    per_step = int(episodes or cfg.eval_episodes)
    env = make_env(family, num_tasks, per_step, str(agent.device), **kwargs)
    agent.check_env(env, f"family {family!r}")
    tasks = env.sample_tasks(num_tasks, np.random.default_rng(seed), split)
    success: list[Any] = []
    measured: list[torch.Tensor] = []

    def record(step: int, _episodes: Any, params: Any) -> None:
        if deterministic:
            ep = sample_episodes(
                env,
                agent.policy,
                params,
                None,
                seed=seed + 10_000 + step,
                horizon=cfg.horizon or None,
                deterministic=True,
            )
            measured.append(ep.task_returns())
        success.append(env.task_success())

    curve = adaptation_curve(agent.learner, env, tasks, k, seed, after_sampling=record)
    returns = torch.stack(measured) if deterministic else curve.returns
    xs = _experience_before(curve.env_steps)
    points = [
        Point(i, xs[i], _floats(returns[i].cpu()), _success(success[i])) for i in range(k + 1)
    ]
    label = f"{agent.preset} (adapted)"
    series = Series("adapted", label, "agent", "inner steps", tuple(with_gains(points)))
    return _Adaptation(series, tasks, per_step, per_step)


def _success(x: Any) -> tuple[float, ...] | None:
    return None if x is None else _floats(x)


def _memory_adaptation(
    agent: MemoryAgent,
    family: str,
    kwargs: dict[str, Any],
    num_tasks: int,
    split: str,
    budget: int | None,
    episodes: int | None,
    seed: int,
    deterministic: bool,
) -> _Adaptation:
    """Return of episode 1..n of one trial per task, and the trial's total."""
    n = int(budget if budget is not None else agent.episodes_per_trial)
    env = agent.make_trial_env(num_tasks, n, family, **kwargs)
    tasks = env.sample_tasks(num_tasks, np.random.default_rng(seed), split)
    env.set_tasks(tasks)
    res = agent.run_trials(env, seed, deterministic)
    xs = _experience_before(res.lengths)
    success = res.success.cpu().numpy() if res.success is not None else [None] * n
    points = [
        Point(i + 1, xs[i], _floats(res.returns[i].cpu()), _success(success[i])) for i in range(n)
    ]
    label = f"{agent.preset or 'RL^2'} (episode i of a trial)"
    series = Series("adapted", label, "agent", "episodes", tuple(with_gains(points)))
    total = Point(n, float(res.lengths.double().sum(0).mean()), _floats(res.returns.sum(0).cpu()))
    return _Adaptation(series, tasks, int(episodes or 10), None, total)


def _context_adaptation(
    agent: ContextAgent,
    family: str,
    kwargs: dict[str, Any],
    num_tasks: int,
    split: str,
    budget: int | None,
    episodes: int | None,
    seed: int,
    deterministic: bool,
) -> _Adaptation:
    """Return of episode 1..n per task: episode 1 with z from the prior, episode i with z from
    the posterior of episodes 1..i-1 (PEARL's protocol; the actor's mode when the run's
    ``eval_deterministic`` or ``deterministic``)."""
    n = int(budget if budget is not None else agent.config.eval_episodes)
    env = agent.make_env(num_tasks, family, **kwargs)
    tasks = env.sample_tasks(num_tasks, np.random.default_rng(seed), split)
    env.set_tasks(tasks)
    res = agent.explore(env, n, seed, deterministic or None)
    env.close()
    xs = _experience_before(res.lengths)
    success = res.success.cpu().numpy() if res.success is not None else [None] * n
    points = [
        Point(i + 1, xs[i], _floats(res.returns[i].cpu()), _success(success[i])) for i in range(n)
    ]
    label = f"{agent.preset or 'PEARL'} (episode i, z from the posterior of episodes < i)"
    series = Series("adapted", label, "agent", "episodes", tuple(with_gains(points)))
    total = Point(n, float(res.lengths.double().sum(0).mean()), _floats(res.returns.sum(0).cpu()))
    return _Adaptation(series, tasks, int(episodes or 10), None, total)


def _no_adaptation(adapted: Series) -> Series:
    """The policy without adaptation: the agent's first point, one measurement."""
    first = adapted.points[0]
    return Series("no_adaptation", "no adaptation", "baseline", adapted.unit, (first,))


def _ppo_baseline(
    family: str,
    kwargs: dict[str, Any],
    tasks: list[Any],
    budget_steps: float,
    multipliers: Sequence[float],
    episodes: int,
    seed: int,
    deterministic: bool,
    workers: int,
    bar: _Progress,
) -> Series:
    """SB3 PPO from scratch per task at every multiple of the adaptation's env steps."""
    base = max(1, int(round(budget_steps)))
    targets = sorted({max(1, int(round(m * base))) for m in multipliers})
    jobs = [
        (family, kwargs, t, targets, episodes, seed + i, deterministic) for i, t in enumerate(tasks)
    ]
    per_task = _ppo_runs(jobs, workers, bar)
    points = []
    for j, target in enumerate(targets):
        rows = [r[j] for r in per_task]
        succ = [r.success for r in rows]
        points.append(
            Point(
                budget=target,
                env_steps=float(np.mean([r.env_steps for r in rows])),
                per_task=tuple(r.mean_return for r in rows),
                success_per_task=None if None in succ else tuple(float(s) for s in succ),
                multiplier=target / base,
                env_steps_trained=tuple(r.env_steps for r in rows),
            )
        )
    n_steps, _ = _ppo_shape(targets[0])
    note = (
        f"SB3 PPO from scratch per task, default hyperparameters with n_steps={n_steps}; "
        f"adaptation budget B={base} env steps; targets {targets} env steps "
        f"(x{', x'.join(f'{m:g}' for m in multipliers)}); trained steps are rounded up "
        f"to whole rollouts; evaluated on {episodes} episodes "
        f"({'deterministic' if deterministic else 'sampled'} actions)"
    )
    return Series("ppo", "SB3 PPO from scratch", "baseline", "env steps", tuple(points), note)


def evaluate_run(
    run_or_path: str | Path | Agent | Any,
    split: str = "test",
    tasks: int = 10,
    budget: int | None = None,
    baselines: Sequence[str] = BASELINES,
    seed: int = 0,
    *,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int | None = None,
    ppo_multipliers: Sequence[float] = PPO_MULTIPLIERS,
    ppo_deterministic: bool | None = None,
    ppo_workers: int | None = None,
    deterministic: bool = False,
    device: str = "cpu",
    num_threads: int = 1,
    progress: Any = None,
) -> Report:
    """Adaptation of a run's agent on ``tasks`` held-out tasks of ``split`` (see the module
    docstring), as a :class:`~meta_rl.report.Report`. ``budget``: inner steps (gradient agents;
    default the run's ``eval_inner_steps``) or episodes of a trial (memory agents; default the
    trained ``episodes_per_trial``). ``episodes``: episodes per task per inner step (gradient
    agents; default the run's ``eval_episodes``) and of every PPO evaluation. ``env_id`` /
    ``env_kwargs``: evaluate on another family whose spaces match. ``progress``: a tqdm-like bar
    (``update``, ``set_description``) whose total this sets; without one, each stage is logged
    (INFO). ``deterministic``: measure the returns with the policy's most likely action
    (adaptation itself always samples, as in training); default: sampled actions, the MAML /
    RL^2 papers' protocol. ``ppo_deterministic`` (default: ``deterministic``): the same for
    PPO. ``ppo_workers``: processes for the per-task PPO runs (default:
    :func:`default_ppo_workers`).
    ``num_threads``: torch CPU threads while evaluating (restored afterwards; 0: leave torch's
    setting)."""
    _check_args(split, tasks, budget, baselines, ppo_multipliers, ppo_workers)
    ppo_det = deterministic if ppo_deterministic is None else ppo_deterministic
    t_start = time.perf_counter()
    with _torch_threads(num_threads):
        agent = run_or_path if isinstance(run_or_path, Agent) else load(run_or_path, device)
        family = env_id or agent.env_id
        if env_kwargs is not None:
            kwargs = dict(env_kwargs)
        else:
            kwargs = agent.env_kwargs() if family == agent.env_id else {}
        n_ppo = tasks if "ppo" in baselines else 0
        bar = _Progress(progress, 1 + n_ppo + int("reference" in baselines))
        bar.start(f"adaptation on {tasks} {split} tasks of {family}")
        measure = (
            _gradient_adaptation
            if isinstance(agent, GradientAgent)
            else _context_adaptation
            if isinstance(agent, ContextAgent)
            else _memory_adaptation
        )
        ad = measure(agent, family, kwargs, tasks, split, budget, episodes, seed, deterministic)
        bar.done("adaptation")
        curve = ad.series
        series = [curve]
        if "none" in baselines:
            series.append(_no_adaptation(curve))
        budget_steps = curve.points[-1].env_steps  # experience before the last point
        if "ppo" in baselines:
            workers = ppo_workers or default_ppo_workers(tasks)
            series.append(
                _ppo_baseline(
                    family,
                    kwargs,
                    ad.tasks,
                    budget_steps,
                    ppo_multipliers,
                    ad.eval_episodes,
                    seed,
                    ppo_det,
                    workers,
                    bar,
                )  # fmt: skip
            )
        references: list[Reference] = []
        skipped: dict[str, str] = {}
        if "reference" in baselines:
            bar.start("references")
            ref_episodes = len(curve.points) if curve.unit == "episodes" else 1
            references, skipped = family_references(
                family, kwargs, tasks, seed, split, ref_episodes
            )
            if ref_episodes > 1:  # memory agents: each reference's first episode too
                first, _ = family_references(family, kwargs, tasks, seed, split, 1)
                references += [replace(r, name=f"{r.name} (episode 1)") for r in first]
            bar.done("references")
        belief = None
        if isinstance(agent, VariBADAgent) and agent.model.kind == "cells":
            belief = record_belief(agent, ad.tasks[0], seed)
    report = Report(
        run=str(agent.path),
        preset=agent.preset,
        agent=agent.kind,
        checkpoint_step=agent.checkpoint_step,
        trained_env_id=agent.env_id,
        env_id=family,
        env_kwargs=kwargs,
        split=split,
        num_tasks=tasks,
        seed=seed,
        budget=Budget(
            curve.unit, curve.points[-1].budget, budget_steps, ad.episodes_per_inner_step
        ),
        deterministic=deterministic,
        series=series,
        tasks=[t.to_dict() for t in ad.tasks],
        references=references,
        skipped_references=skipped,
        trial_return=ad.trial_return,
        belief=belief,
        seconds=time.perf_counter() - t_start,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    log.info("evaluated %s on %d %s tasks in %.1f s", agent.path, tasks, split, report.seconds)
    return report


evaluate = evaluate_run
"""The former name of :func:`evaluate_run` (kept for code written against it)."""
