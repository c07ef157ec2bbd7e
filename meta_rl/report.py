"""The adaptation report of ``meta-rl evaluate``: typed values, and their edges (JSON, markdown
table, PNG plot).

:func:`meta_rl.evaluate.evaluate_run` measures and returns a :class:`Report`; nothing reads a
report back by string key. :meth:`Report.to_dict` / :meth:`Report.from_dict` are the JSON edge
(``report.json``, format ``meta-rl-evaluation``), :func:`markdown_table` and :func:`plot_report`
the human ones, :func:`write_outputs` writes ``report.json`` and ``adaptation.png``.

Report format version 2 (version 1 read too): the ``no_adaptation`` series holds the one point
it was measured at (version 1 repeated it at every budget), and ``skipped_references`` names the
references that could not be computed, with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from meta_rl_envs.stats import Estimate, mean_ci95

from meta_rl.checkpoint import atomic_write

__all__ = [
    "Budget",
    "Point",
    "Reference",
    "Report",
    "Series",
    "markdown_table",
    "plot_report",
    "write_outputs",
]

REPORT_FORMAT = "meta-rl-evaluation"
REPORT_VERSION = 2
REPORT_FILE = "report.json"
PLOT_FILE = "adaptation.png"


@dataclass(frozen=True)
class Point:
    """One point of a curve: the per-task returns measured after ``budget`` (inner steps, the
    episode of a trial, or PPO's target env steps), with ``env_steps`` the mean env steps per
    task of experience before it (the plot's x)."""

    budget: int
    env_steps: float
    per_task: tuple[float, ...]
    success_per_task: tuple[float, ...] | None = None
    """the success rate of each task, when the env's info carries ``success``"""
    gain: Estimate | None = None
    """paired over the same tasks: this point minus the curve's first point"""
    multiplier: float | None = None
    """PPO: the target as a multiple of the adaptation budget"""
    env_steps_trained: tuple[int, ...] | None = None
    """PPO: the env steps each task's run actually trained (whole rollouts)"""

    @property
    def stat(self) -> Estimate:
        """Mean and 95% CI over the tasks."""
        return mean_ci95(self.per_task)

    @property
    def mean(self) -> float:
        """Mean over the tasks."""
        return self.stat.mean

    @property
    def ci95(self) -> float:
        """95% confidence half-width over the tasks."""
        return self.stat.ci95

    @property
    def success_rate(self) -> float | None:
        """Mean success over the tasks (``None`` when the env reports no success)."""
        return None if self.success_per_task is None else float(np.mean(self.success_per_task))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"budget": self.budget, "env_steps": self.env_steps}
        out.update(self.stat.to_dict())
        out["per_task"] = list(self.per_task)
        if self.success_per_task is not None:
            out["success_rate"] = self.success_rate
            out["success_per_task"] = list(self.success_per_task)
        if self.gain is not None:
            out["gain"] = self.gain.to_dict()
        if self.multiplier is not None:
            out["multiplier"] = self.multiplier
        if self.env_steps_trained is not None:
            out["env_steps_trained"] = list(self.env_steps_trained)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        """A point from its JSON form."""
        gain = d.get("gain")
        return cls(
            budget=int(d["budget"]),
            env_steps=float(d["env_steps"]),
            per_task=tuple(float(v) for v in d["per_task"]),
            success_per_task=_floats(d.get("success_per_task")),
            gain=Estimate(gain["mean"], gain["se"], gain["num"]) if gain else None,
            multiplier=d.get("multiplier"),
            env_steps_trained=_ints(d.get("env_steps_trained")),
        )


def _floats(v: Any) -> tuple[float, ...] | None:
    return None if v is None else tuple(float(x) for x in v)


def _ints(v: Any) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(x) for x in v)


def with_gains(points: Sequence[Point]) -> list[Point]:
    """``points`` with each later point's paired gain over the first (the noise of task
    difficulty cancels in the difference)."""
    first = np.asarray(points[0].per_task)
    return [points[0]] + [
        replace(p, gain=mean_ci95(np.asarray(p.per_task) - first)) for p in points[1:]
    ]


@dataclass(frozen=True)
class Series:
    """A curve: the agent's adaptation (``kind="agent"``) or a baseline."""

    name: str
    """``adapted``, ``no_adaptation`` or ``ppo``"""
    label: str
    kind: str
    unit: str
    """what ``Point.budget`` counts: ``inner steps``, ``episodes`` or ``env steps``"""
    points: tuple[Point, ...]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out = {"name": self.name, "label": self.label, "kind": self.kind, "unit": self.unit}
        out["points"] = [p.to_dict() for p in self.points]
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Series:
        """A series from its JSON form."""
        points = tuple(Point.from_dict(p) for p in d["points"])
        if d["name"] == "no_adaptation":  # version 1 repeated its one measurement per budget
            points = points[:1]
        return cls(d["name"], d["label"], d["kind"], d["unit"], points, d.get("note"))


@dataclass(frozen=True)
class Reference:
    """A family's reference solver on the evaluated tasks: the mean return of a trial of
    ``episodes`` episodes (``per_episode``: of one episode)."""

    name: str
    mean: float
    se: float
    episodes: int
    exact: bool = False

    @property
    def ci95(self) -> float:
        """95% confidence half-width (``1.96 * se``)."""
        return 1.96 * self.se

    @property
    def per_episode(self) -> float:
        """The mean return of one episode."""
        return self.mean / self.episodes

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "mean": self.mean,
            "se": self.se,
            "ci95": self.ci95,
            "per_episode": self.per_episode,
            "episodes": self.episodes,
            "exact": self.exact,
        }


@dataclass(frozen=True)
class Budget:
    """The adaptation budget evaluated: ``value`` inner steps or episodes, ``env_steps`` the
    mean env steps per task of experience before the last point (PPO's 1x)."""

    unit: str
    value: int
    env_steps: float
    episodes_per_inner_step: int | None = None


@dataclass
class Report:
    """Everything ``meta-rl evaluate`` measured (see :mod:`meta_rl.evaluate`)."""

    run: str
    preset: str | None
    agent: str
    """``gradient`` or ``memory``"""
    checkpoint_step: int | None
    trained_env_id: str
    env_id: str
    env_kwargs: dict[str, Any]
    split: str
    num_tasks: int
    seed: int
    budget: Budget
    deterministic: bool
    series: list[Series]
    """the agent's curve first, then the baselines"""
    tasks: list[dict[str, Any]]
    """the evaluated tasks (JSON form)"""
    references: list[Reference] = field(default_factory=list)
    skipped_references: dict[str, str] = field(default_factory=dict)
    """references the family has but that could not be computed here, with the reason"""
    trial_return: Point | None = None
    """memory agents: the total return of the whole trial (``budget``: its episodes)"""
    seconds: float = 0.0
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """free-form additions kept in the JSON (e.g. a script's training time)"""

    @property
    def adapted(self) -> Series:
        """The agent's adaptation curve (the first series)."""
        return self.series[0]

    def get(self, name: str) -> Series | None:
        """The series called ``name`` (``adapted``, ``no_adaptation``, ``ppo``), or None."""
        return next((s for s in self.series if s.name == name), None)

    @property
    def ppo_note(self) -> str | None:
        """The PPO series' note (its settings), or ``None`` without PPO."""
        ppo = self.get("ppo")
        return ppo.note if ppo is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report.json``)."""
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "created": self.created,
            "run": self.run,
            "preset": self.preset,
            "agent": self.agent,
            "checkpoint_step": self.checkpoint_step,
            "trained_env_id": self.trained_env_id,
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "split": self.split,
            "num_tasks": self.num_tasks,
            "seed": self.seed,
            "budget": vars(self.budget).copy(),
            "deterministic": self.deterministic,
            "series": [s.to_dict() for s in self.series],
            "references": {r.name: r.to_dict() for r in self.references},
            "skipped_references": dict(self.skipped_references),
            "trial_return": self.trial_return.to_dict() if self.trial_return else None,
            "ppo": self.ppo_note,
            "tasks": self.tasks,
            "seconds": self.seconds,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """A report from its JSON form (versions 1 and 2)."""
        if d.get("format") != REPORT_FORMAT or d.get("version") not in (1, 2):
            raise ValueError(
                f"not a {REPORT_FORMAT} report of version 1 or 2 "
                f"(format={d.get('format')!r}, version={d.get('version')!r})"
            )
        known = {f for f in cls.__dataclass_fields__} | {"format", "version", "ppo"}
        trial = d.get("trial_return")
        if trial is not None and "budget" not in trial:  # version 1: stats and per_task only
            trial = {"budget": d["budget"]["value"], "env_steps": 0.0, **trial}
        return cls(
            run=d["run"],
            preset=d.get("preset"),
            agent=d["agent"],
            checkpoint_step=d.get("checkpoint_step"),
            trained_env_id=d["trained_env_id"],
            env_id=d["env_id"],
            env_kwargs=dict(d.get("env_kwargs") or {}),
            split=d["split"],
            num_tasks=int(d["num_tasks"]),
            seed=int(d["seed"]),
            budget=Budget(**d["budget"]),
            deterministic=bool(d.get("deterministic", False)),
            series=[Series.from_dict(s) for s in d["series"]],
            tasks=list(d.get("tasks", [])),
            references=[
                Reference(name, r["mean"], r["se"], int(r["episodes"]), bool(r.get("exact")))
                for name, r in (d.get("references") or {}).items()
            ],
            skipped_references=dict(d.get("skipped_references") or {}),
            trial_return=Point.from_dict(trial) if trial is not None else None,
            seconds=float(d.get("seconds", 0.0)),
            created=d.get("created", ""),
            extra={k: v for k, v in d.items() if k not in known},
        )


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _fmt(mean: float, ci: float) -> str:
    return f"{mean:.3f} ± {ci:.3f}" if math.isfinite(ci) else f"{mean:.3f}"


def _budget_text(series: Series, p: Point) -> str:
    if series.name == "ppo":
        return f"x{p.multiplier:g} ({p.budget} steps)"
    if series.unit == "episodes":
        return f"episode {p.budget}"
    return f"{p.budget} inner step{'s' if p.budget != 1 else ''}"


def _row_label(report: Report, series: Series, i: int) -> str:
    """The agent's first point is its return without adaptation (0 inner steps, or episode 1
    of a trial from a fresh memory): the no-adaptation baseline is that same measurement, so the
    table prints it once, named for both."""
    if series.kind != "agent":
        return series.label
    name = report.preset or ("RL^2" if report.agent == "memory" else "agent")
    if i == 0:
        return f"{name}, no adaptation" + (" (fresh memory)" if report.agent == "memory" else "")
    return f"{name}, adapted" + (" (episode i of a trial)" if report.agent == "memory" else "")


def markdown_table(report: Report) -> str:
    """The report as a markdown table: one row per point of the agent's curve and of PPO, one
    per reference, then the paired gains, the trial total and the notes."""
    points = [p for s in report.series for p in s.points]
    has_success = any(p.success_per_task is not None for p in points)
    head = "| agent / baseline | budget | env steps | return (mean ± 95% CI) |"
    rule = "|---|---|---:|---:|"
    if has_success:
        head, rule = head + " success |", rule + "---:|"
    lines = [
        f"{report.preset} on {report.env_id}, {report.split} split, "
        f"{report.num_tasks} tasks (seed {report.seed})",
        "",
        head,
        rule,
    ]
    for s in report.series:
        if s.name == "no_adaptation":  # the agent's first row (see _row_label)
            continue
        for i, p in enumerate(s.points):
            row = f"| {_row_label(report, s, i)} | {_budget_text(s, p)} | {p.env_steps:.0f} | "
            row += f"{_fmt(p.mean, p.ci95)} |"
            if has_success:
                rate = p.success_rate
                row += f" {rate:.2f} |" if rate is not None else " |"
            lines.append(row)
    for r in report.references:
        row = f"| reference: {r.name} | per episode | | {r.per_episode:.3f} |"
        lines.append(row + (" |" if has_success else ""))
    gains = [p for p in report.adapted.points if p.gain is not None]
    if gains:
        what = "episode" if report.budget.unit == "episodes" else "inner steps"
        lines += [
            "",
            f"Gain over the first point, paired over the same tasks ({what}): "
            + ", ".join(f"{p.budget}: {p.gain.mean:+.3f} ± {p.gain.ci95:.3f}" for p in gains),
        ]
    if report.trial_return is not None:
        t = report.trial_return
        lines += [
            "",
            f"Trial total ({report.budget.value} episodes): {_fmt(t.mean, t.ci95)}"
            + "".join(f"; {r.name} {r.mean:.3f}" for r in report.references),
        ]
    for name, why in report.skipped_references.items():
        lines += ["", f"Reference {name} not computed: {why}."]
    if report.ppo_note:
        lines += ["", f"PPO: {report.ppo_note}."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
X_LABEL = "env steps per task (experience before the measurement)"


def _figure(report: Report) -> Any:
    """The plot's figure: return vs env steps per task (symlog axis), a line with a shaded 95%
    CI per curve, the no-adaptation return as a flat dashed line, a dotted line per reference.
    The agent's points are annotated with their own budget (inner steps or episode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    colors = {"adapted": "C0", "no_adaptation": "C7", "ppo": "C3"}
    xs_all = [p.env_steps for s in report.series for p in s.points]
    positive = [x for x in xs_all if x > 0]
    for s in report.series:
        x = np.array([p.env_steps for p in s.points])
        y = np.array([p.mean for p in s.points])
        ci = np.nan_to_num(np.array([p.ci95 for p in s.points]))
        c = colors.get(s.name)
        if s.name == "no_adaptation":  # one measurement, drawn across the agent's budget
            x = np.array([min(xs_all), max(xs_all)])
            y, ci = np.repeat(y[:1], 2), np.repeat(ci[:1], 2)
            ax.plot(x, y, "--", color=c, label=s.label)
        else:
            ax.plot(x, y, "-", marker="o", color=c, label=s.label)
        ax.fill_between(x, y - ci, y + ci, color=c, alpha=0.18, linewidth=0)
        if s.kind == "agent":
            for p in s.points:
                many = "s" if p.budget != 1 else ""
                text = f"ep {p.budget}" if s.unit == "episodes" else f"{p.budget} step{many}"
                ax.annotate(text, (p.env_steps, p.mean), textcoords="offset points",
                            xytext=(4, 6), fontsize=7, color=c)  # fmt: skip
    for i, r in enumerate(report.references):
        ax.axhline(r.per_episode, ls=":", color=f"C{4 + i}", label=f"reference: {r.name}")
    if positive:
        ax.set_xscale("symlog", linthresh=max(1.0, min(positive)))
        ax.set_xlim(0, max(positive) * 1.4)
    ax.set_xlabel(X_LABEL)
    memory = report.budget.unit == "episodes"
    ax.set_ylabel("episode return" + (" (episode i of a trial)" if memory else ""))
    ax.set_title(
        f"{report.preset} on {report.env_id} ({report.split} split, "
        f"{report.num_tasks} tasks, 95% CI)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_report(report: Report, path: str | Path) -> Path:
    """Write the report's plot (see :func:`_figure`) as a PNG to ``path``."""
    import matplotlib.pyplot as plt

    fig = _figure(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(report: Report, out: str | Path) -> dict[str, Path]:
    """Write ``report.json`` and ``adaptation.png`` into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rpath = out / REPORT_FILE
    atomic_write(rpath, json.dumps(report.to_dict(), indent=2).encode())
    return {"report": rpath, "plot": plot_report(report, out / PLOT_FILE)}
