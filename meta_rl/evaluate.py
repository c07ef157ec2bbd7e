"""Evaluate adaptation on held-out tasks: return vs adaptation budget, beside baselines.

``evaluate(run, split="test", tasks=N)`` loads the run's agent (:func:`meta_rl.load`), draws
``N`` tasks of ``split`` from the family (seeded) and measures, with a mean and a 95% confidence
interval over the tasks:

- gradient agents (MAML, Meta-SGD, Reptile): the mean episode return after 0, 1, ..., k inner
  policy-gradient steps (each step adapts on ``episodes`` fresh episodes per task);
- memory agents (RL^2): the return of episode 1, 2, ..., n of one trial per task (and the trial's
  total, the number the RL^2 paper reports).

Baselines on the same tasks and seeds:

- ``none``: the meta-trained policy without adaptation (0 inner steps; a fresh memory for every
  episode, i.e. episode 1 of a trial);
- ``ppo``: stable-baselines3 PPO trained from scratch on each task for ``m x B`` env steps
  (``B``: the env steps the agent's adaptation consumed before its last point; ``m`` in
  ``ppo_multipliers``, default 1, 10, 100), evaluated on ``episodes`` episodes. One PPO run per
  task is evaluated at each budget in turn (its learning rate is constant, so this equals separate
  runs up to whole PPO rollouts; the report gives the env steps each point actually trained).
  PPO acts as the agent does (sampled actions, or both the most likely one with
  ``deterministic=True``);
- ``reference``: the family's reference solvers (its ``FamilySpec.references``, the same ones
  RL^2 reports; e.g. navigation: the straight-to-goal oracle and standing still; bandits:
  Bayes-optimal by dynamic programming, Thompson sampling, UCB1, greedy, random). They are
  computed on the same tasks (the same task-space draws from ``seed``).

When the env's ``info`` carries ``success`` (e.g. Meta-World), the success rate of each point
is reported too (gradient agents: after each inner step; memory agents: in each episode of the
trial). :func:`write_outputs` writes ``report.json`` and ``adaptation.png``;
:func:`markdown_table` renders the report as a table.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs import make_env
from meta_rl_envs.registry import check_id
from meta_rl_envs.stats import mean_ci95

from meta_rl.agent import Agent, GradientAgent, MemoryAgent, load
from meta_rl.checkpoint import atomic_write
from meta_rl.config import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "evaluate",
    "markdown_table",
    "plot_report",
    "ppo_from_scratch",
    "write_outputs",
]

REPORT_FORMAT = "meta-rl-evaluation"
REPORT_VERSION = 1
BASELINES = ("none", "ppo", "reference")
REPORT_FILE = "report.json"
PLOT_FILE = "adaptation.png"


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


def ppo_from_scratch(
    env_id: str,
    env_kwargs: dict[str, Any],
    task: Any,
    budgets: Sequence[int],
    episodes: int,
    seed: int,
    deterministic: bool = False,
) -> list[dict[str, Any]]:
    """SB3 PPO (default hyperparameters, ``n_steps`` fit to the smallest budget) trained from
    scratch on ``task``; after each budget (env steps, increasing) its mean return on
    ``episodes`` episodes. Returns one dict per budget with the env steps actually trained."""
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
            out.append(
                {"target_steps": int(budget), "env_steps": int(model.num_timesteps), "return": ret}
                | ({"success": success} if success is not None else {})
            )
    env.close()
    eval_env.close()
    return out


# --------------------------------------------------------------------------------------------
# Analytic references
# --------------------------------------------------------------------------------------------
def family_references(
    env_id: str, env_kwargs: dict[str, Any], num_tasks: int, seed: int, split: str, episodes: int
) -> dict[str, dict[str, Any]]:
    """The family's reference solvers (its ``FamilySpec.references``) on the evaluated tasks (the
    same ``task_space.sample(num_tasks, default_rng(seed), split)`` draws), as the mean return of
    one episode (``per_episode``) and of ``episodes`` episodes (``mean``, ``ci95``). ``{}`` for
    families without references; a reference that cannot be computed is left out (logged)."""
    refs = check_id(env_id).compute_references(episodes, num_tasks, seed, split, env_kwargs)
    for name, why in refs.skipped.items():
        log.warning("reference %s not computed: %s", name, why)
    return {
        name: {
            "mean": est.mean,
            "se": est.se,
            "ci95": est.ci95,
            "per_episode": est.mean / episodes,
            "episodes": episodes,
            "exact": est.exact,
        }
        for name, est in refs.values.items()
    }


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------
def _check_args(split: str, tasks: int, budget: Any, baselines: Sequence[str], mults: Any) -> None:
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


class _Progress:
    """Stages of an evaluation on a tqdm-like bar: ``start(text)`` names the stage now
    running, ``done()`` advances by one stage."""

    def __init__(self, bar: Any, total: int) -> None:
        self.bar = bar
        if bar is not None:
            bar.total = total
            bar.refresh()

    def start(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        log.debug("evaluate: %s", text)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def _point(budget: int, env_steps: float, per_task: Any, success: Any = None) -> dict[str, Any]:
    per = [float(v) for v in np.asarray(per_task, dtype=np.float64)]
    point = {
        "budget": int(budget),
        "env_steps": float(env_steps),
        **mean_ci95(per).to_dict(),
        "per_task": per,
    }
    if success is not None:
        point["success_rate"] = float(np.mean(success))
        point["success_per_task"] = [float(s) for s in success]
    return point


def evaluate(
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
    ppo_multipliers: Sequence[float] = (1, 10, 100),
    ppo_deterministic: bool | None = None,
    deterministic: bool = False,
    device: str = "cpu",
    num_threads: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    """Adaptation of a run's agent on ``tasks`` held-out tasks of ``split`` (see the module
    docstring). ``budget``: inner steps (gradient agents; default the run's
    ``eval_inner_steps``) or episodes of a trial (memory agents; default the trained
    ``episodes_per_trial``). ``episodes``: episodes per task per inner step (gradient agents;
    default the run's ``eval_episodes``) and of every PPO evaluation. ``env_id`` /
    ``env_kwargs``: evaluate on another family whose spaces match. ``progress``: a tqdm-like bar
    (``update``, ``set_description``) whose total this sets. ``deterministic``: measure the
    returns with the policy's most likely action (gradient agents: on extra episodes after each
    step, not adapted on and not counted in the budget; adaptation itself always samples, as in
    training); default: sampled actions, the MAML / RL^2 papers' protocol. ``ppo_deterministic``
    (default: ``deterministic``): the same for PPO. ``num_threads``: torch CPU threads while
    evaluating (restored afterwards; 0: leave torch's setting). Returns the report dict."""
    _check_args(split, tasks, budget, baselines, ppo_multipliers)
    if ppo_deterministic is None:
        ppo_deterministic = deterministic
    with _torch_threads(num_threads):
        return _evaluate(
            run_or_path,
            split,
            tasks,
            budget,
            baselines,
            seed,
            env_id,
            env_kwargs,
            episodes,
            ppo_multipliers,
            ppo_deterministic,
            deterministic,
            device,
            progress,
        )


def _evaluate(
    run_or_path: Any,
    split: str,
    tasks: int,
    budget: int | None,
    baselines: Sequence[str],
    seed: int,
    env_id: str | None,
    env_kwargs: dict[str, Any] | None,
    episodes: int | None,
    ppo_multipliers: Sequence[float],
    ppo_deterministic: bool,
    deterministic: bool,
    device: str,
    progress: Any,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    agent = run_or_path if isinstance(run_or_path, Agent) else load(run_or_path, device)
    family = env_id or agent.env_id
    kwargs = (
        dict(env_kwargs)
        if env_kwargs is not None
        else (agent.env_kwargs() if family == agent.env_id else {})
    )
    n_ppo = tasks if "ppo" in baselines else 0
    bar = _Progress(progress, 1 + n_ppo + int("reference" in baselines))
    rng = np.random.default_rng(seed)
    series: list[dict[str, Any]] = []

    # ---- the agent's adaptation ------------------------------------------------------------
    bar.start("adaptation")
    if isinstance(agent, GradientAgent):
        cfg = agent.config
        k = int(budget if budget is not None else cfg.eval_inner_steps)
        per_step = int(episodes or cfg.eval_episodes)
        env = make_env(family, tasks, per_step, str(agent.device), **kwargs)
        agent.check_env(env, f"family {family!r}")
        task_list = env.sample_tasks(tasks, rng, split)
        success: list[Any] = []
        measured: list[Any] = []

        def record(step: int, _episodes: Any, params: Any) -> None:
            if deterministic:  # extra episodes with the mean action (not adapted on)
                from meta_rl.rl.rollout import sample_episodes

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

        curve = agent.adaptation_curve(env, task_list, k, seed, after_sampling=record)
        returns = torch.stack(measured) if deterministic else curve.returns
        steps = curve.env_steps.double()  # [k + 1, T]
        before = torch.cat([torch.zeros_like(steps[:1]), steps[:-1].cumsum(0)])  # experience
        points = [
            _point(i, before[i].mean().item(), returns[i].cpu(), success[i]) for i in range(k + 1)
        ]
        unit, eval_episodes = "inner steps", per_step
        series.append(
            {
                "name": "adapted",
                "label": f"{agent.preset} (adapted)",
                "kind": "agent",
                "unit": unit,
                "points": points,
            }
        )
        trial_total = None
    else:
        assert isinstance(agent, MemoryAgent)
        n = int(budget if budget is not None else agent.episodes_per_trial)
        env = agent.make_trial_env(tasks, n, family, **kwargs)
        task_list = env.sample_tasks(tasks, rng, split)
        env.set_tasks(task_list)
        res = agent.run_trials(env, seed, deterministic)
        lengths = res.lengths.double()
        before = torch.cat([torch.zeros_like(lengths[:1]), lengths[:-1].cumsum(0)])
        success = res.success.cpu().numpy() if res.success is not None else [None] * n
        points = [
            _point(i + 1, before[i].mean().item(), res.returns[i].cpu(), success[i])
            for i in range(n)
        ]
        unit, eval_episodes = "episodes", int(episodes or 10)
        series.append(
            {
                "name": "adapted",
                "label": f"{agent.preset or 'RL^2'} (episode i of a trial)",
                "kind": "agent",
                "unit": unit,
                "points": points,
            }
        )
        trial_total = mean_ci95(res.returns.sum(0).cpu()).to_dict()
        trial_total["per_task"] = [float(v) for v in res.returns.sum(0).cpu()]
    bar.done()
    first_returns = np.asarray(points[0]["per_task"])
    for p in points[1:]:  # paired over the same tasks: the noise of task difficulty cancels
        p["gain"] = mean_ci95(np.asarray(p["per_task"]) - first_returns).to_dict()
    budget_steps = points[-1]["env_steps"]  # experience before the last point
    xs = [p["env_steps"] for p in points]

    # ---- baselines ---------------------------------------------------------------------------
    if "none" in baselines:
        first = points[0]
        flat = [
            {**_point(p["budget"], x, first["per_task"]), "measured_at": first["budget"]}
            for p, x in zip(points, xs, strict=True)
        ]
        if "success_rate" in first:
            for f in flat:
                f["success_rate"] = first["success_rate"]
        series.append(
            {
                "name": "no_adaptation",
                "label": "no adaptation",
                "kind": "baseline",
                "unit": unit,
                "points": flat,
            }
        )
    ppo_note = None
    if "ppo" in baselines:
        base = max(1, int(round(budget_steps)))
        targets = sorted({max(1, int(round(m * base))) for m in ppo_multipliers})
        per_task: list[list[dict[str, Any]]] = []
        for i, task in enumerate(task_list):
            bar.start(f"PPO task {i + 1}/{tasks}")
            per_task.append(
                ppo_from_scratch(
                    family, kwargs, task, targets, eval_episodes, seed + i, ppo_deterministic
                )
            )
            bar.done()
        ppo_points = []
        for j, target in enumerate(targets):
            rows = [r[j] for r in per_task]
            succ = [r["success"] for r in rows] if all("success" in r for r in rows) else None
            pt = _point(
                0, float(np.mean([r["env_steps"] for r in rows])), [r["return"] for r in rows], succ
            )
            pt["budget"] = target
            pt["multiplier"] = target / base
            pt["env_steps_trained"] = [r["env_steps"] for r in rows]
            ppo_points.append(pt)
        n_steps, _ = _ppo_shape(targets[0])
        ppo_note = (
            f"SB3 PPO from scratch per task, default hyperparameters with n_steps={n_steps}; "
            f"adaptation budget B={base} env steps; targets {targets} env steps "
            f"(x{', x'.join(f'{m:g}' for m in ppo_multipliers)}); trained steps are rounded up "
            f"to whole rollouts; evaluated on {eval_episodes} episodes "
            f"({'deterministic' if ppo_deterministic else 'sampled'} actions)"
        )
        series.append(
            {
                "name": "ppo",
                "label": "SB3 PPO from scratch",
                "kind": "baseline",
                "unit": "env steps",
                "points": ppo_points,
                "note": ppo_note,
            }
        )
    references: dict[str, Any] = {}
    if "reference" in baselines:
        bar.start("references")
        ref_episodes = len(points) if isinstance(agent, MemoryAgent) else 1
        references = family_references(family, kwargs, tasks, seed, split, ref_episodes)
        bar.done()

    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(agent.path),
        "preset": agent.preset,
        "agent": agent.kind,
        "checkpoint_step": agent.checkpoint_step,
        "trained_env_id": agent.env_id,
        "env_id": family,
        "env_kwargs": kwargs,
        "split": split,
        "num_tasks": tasks,
        "seed": seed,
        "budget": {
            "unit": unit,
            "value": points[-1]["budget"],
            "env_steps": budget_steps,
            "episodes_per_inner_step": eval_episodes if isinstance(agent, GradientAgent) else None,
        },
        "deterministic": deterministic,
        "series": series,
        "references": references,
        "trial_return": trial_total,
        "ppo": ppo_note,
        "tasks": [t.to_dict() for t in task_list],
        "seconds": time.perf_counter() - t_start,
    }
    log.info("evaluated %s on %d %s tasks in %.1f s", agent.path, tasks, split, report["seconds"])
    return report


# --------------------------------------------------------------------------------------------
# Outputs: JSON, PNG, markdown
# --------------------------------------------------------------------------------------------
def _fmt(point: dict[str, Any]) -> str:
    ci = point.get("ci95", float("nan"))
    return f"{point['mean']:.3f} ± {ci:.3f}" if math.isfinite(ci) else f"{point['mean']:.3f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per point of every series and reference."""
    has_success = any("success_rate" in p for s in report["series"] for p in s["points"])
    head = "| agent / baseline | budget | env steps | return (mean ± 95% CI) |"
    rule = "|---|---|---:|---:|"
    if has_success:
        head += " success |"
        rule += "---:|"
    lines = [
        f"{report['preset']} on {report['env_id']}, {report['split']} split, "
        f"{report['num_tasks']} tasks (seed {report['seed']})",
        "",
        head,
        rule,
    ]
    for s in report["series"]:
        for p in s["points"]:
            if s["name"] == "ppo":
                budget = f"x{p['multiplier']:g} ({p['budget']} steps)"
            elif s["unit"] == "episodes":
                budget = f"episode {p['budget']}"
            else:
                budget = f"{p['budget']} inner step{'s' if p['budget'] != 1 else ''}"
            if s["name"] == "no_adaptation" and p is not s["points"][0]:
                continue
            row = f"| {s['label']} | {budget} | {p['env_steps']:.0f} | {_fmt(p)} |"
            if has_success:
                rate = p.get("success_rate")
                row += f" {rate:.2f} |" if rate is not None else " |"
            lines.append(row)
    for name, r in report["references"].items():
        row = f"| reference: {name} | per episode | | {r['per_episode']:.3f} |"
        lines.append(row + (" |" if has_success else ""))
    gains = [p for p in report["series"][0]["points"] if "gain" in p]
    if gains:
        what = "episode" if report["budget"]["unit"] == "episodes" else "inner steps"
        lines.append("")
        lines.append(
            f"Gain over the first point, paired over the same tasks ({what}): "
            + ", ".join(
                f"{p['budget']}: {p['gain']['mean']:+.3f} ± {p['gain']['ci95']:.3f}" for p in gains
            )
        )
    if report.get("trial_return"):
        t = report["trial_return"]
        lines.append("")
        lines.append(
            f"Trial total ({report['budget']['value']} episodes): {t['mean']:.3f} ± "
            f"{t['ci95']:.3f}"
            + "".join(f"; {name} {r['mean']:.3f}" for name, r in report["references"].items())
        )
    if report.get("ppo"):
        lines.append("")
        lines.append(f"PPO: {report['ppo']}.")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Return vs adaptation budget (env steps, symlog axis): a line with a shaded 95% CI per
    agent / baseline, a dashed line per reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    colors = {"adapted": "C0", "no_adaptation": "C7", "ppo": "C3"}
    positive = [p["env_steps"] for s in report["series"] for p in s["points"] if p["env_steps"] > 0]
    for s in report["series"]:
        x = np.array([p["env_steps"] for p in s["points"]])
        y = np.array([p["mean"] for p in s["points"]])
        ci = np.nan_to_num(np.array([p["ci95"] for p in s["points"]]))
        style = "--" if s["name"] == "no_adaptation" else "-"
        c = colors.get(s["name"])
        ax.plot(x, y, style, marker="o", color=c, label=s["label"])
        ax.fill_between(x, y - ci, y + ci, color=c, alpha=0.18, linewidth=0)
    for i, (name, r) in enumerate(report["references"].items()):
        ax.axhline(r["per_episode"], ls=":", color=f"C{4 + i}", label=f"reference: {name}")
    if positive:
        ax.set_xscale("symlog", linthresh=max(1.0, min(positive)))
        ax.set_xlim(0, max(positive) * 1.4)
    unit = report["budget"]["unit"]
    ax.set_xlabel(f"adaptation budget: env steps per task (agent points: {unit})")
    ax.set_ylabel("episode return" + (" (episode i of a trial)" if unit == "episodes" else ""))
    ax.set_title(
        f"{report['preset']} on {report['env_id']} ({report['split']} split, "
        f"{report['num_tasks']} tasks, 95% CI)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``report.json`` and ``adaptation.png`` into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rpath = out / REPORT_FILE
    atomic_write(rpath, json.dumps(report, indent=2).encode())
    ppath = plot_report(report, out / PLOT_FILE)
    log.debug("wrote %s and %s", rpath, ppath)
    return {"report": rpath, "plot": ppath}
