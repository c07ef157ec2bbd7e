"""A run folder made shareable: the files loading needs, the evaluation, and a model card.

:func:`pack_run` writes what the zoo ships and what ``meta-rl push`` uploads::

    README.md                      the model card (YAML front matter + the result table)
    config.json                    the run's config (enough to rebuild the policy)
    final.json                     the run's final metrics
    checkpoints/step_N.json        the final checkpoint's sidecar (weights only: no trainer
    checkpoints/step_N-*.safetensors  state, no RNG states; intermediate checkpoints dropped)
    evaluation-SPLIT/report.json   the held-out adaptation report (``meta-rl evaluate``)
    evaluation-SPLIT/adaptation.png

Everything is safetensors, JSON, markdown or PNG: :func:`meta_rl.load` reads such a folder as it
reads any run folder, without importing or executing anything it names.

The card's YAML front matter follows the Hugging Face Hub's model-card metadata:
``library_name: meta-rl``, tags for the family and the algorithm, and a ``model-index`` entry
holding the held-out adaptation result (:func:`headline`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from meta_rl.checkpoint import load_usable_checkpoint, save_checkpoint
from meta_rl.report import PLOT_FILE, REPORT_FILE, Report, markdown_table, plot_report
from meta_rl.runs import CONFIG_FILE, FINAL_FILE, LOCAL_KEYS, RunError, read_run

__all__ = [
    "CARD_FILE",
    "Headline",
    "algorithm_tags",
    "find_report",
    "headline",
    "model_card",
    "pack_run",
    "packed_files",
    "read_report",
]

CARD_FILE = "README.md"
LIBRARY = "meta-rl"


@dataclass(frozen=True)
class Headline:
    """The held-out result a card leads with: ``mean ± ci95`` over ``tasks`` tasks of
    ``split``, and the same measurement before adaptation (``before``)."""

    label: str
    """what ``mean`` measures, e.g. ``return after 1 inner step``"""
    mean: float
    ci95: float
    before_label: str
    before: float
    before_ci95: float
    tasks: int
    split: str
    env_id: str

    def text(self) -> str:
        """``mean ± ci95`` with three decimals."""
        return f"{self.mean:.3f} ± {self.ci95:.3f}"


def headline(report: Report) -> Headline:
    """The card's result: for a gradient agent, the return after the report's last inner step
    (before: 0 steps); for a memory (RL^2) agent, the return of the whole trial, the number the
    RL^2 paper reports (before: ``n`` times the first episode's, i.e. no memory carried over)."""
    first, last = report.adapted.points[0], report.adapted.points[-1]
    if report.agent == "memory" and report.trial_return is not None:
        n = report.budget.value
        t = report.trial_return
        return Headline(
            f"return of a {n}-episode trial",
            t.mean,
            t.ci95,
            f"{n} x the first episode's return (no memory carried over)",
            n * first.mean,
            n * first.ci95,
            report.num_tasks,
            report.split,
            report.env_id,
        )
    k = last.budget
    return Headline(
        f"return after {k} inner step{'s' if k != 1 else ''}",
        last.mean,
        last.ci95,
        "return before adaptation",
        first.mean,
        first.ci95,
        report.num_tasks,
        report.split,
        report.env_id,
    )


def algorithm_tags(info: dict[str, Any]) -> list[str]:
    """Tags naming the algorithm of a run (its ``config.json`` parsed): the trainer's module
    (``maml``, ``reptile``, ``rl2``...) and the config's ``algorithm``, ``outer`` and ``policy``
    values when it has them (``fomaml``, ``trpo``, ``gru``...)."""
    trainer = str(info.get("trainer") or info.get("config_class") or "")
    module = trainer.split(":")[0].rsplit(".", 1)[-1]
    config = info.get("config") or {}
    tags = [module] + [str(config[k]) for k in ("algorithm", "outer", "policy") if k in config]
    return list(dict.fromkeys(t for t in tags if t))


def family_tag(env_id: str) -> str:
    """A family id as a Hub tag: ``MetaRL/PointNav-v0`` -> ``PointNav-v0``."""
    return env_id.rsplit("/", 1)[-1]


def read_report(path: str | Path) -> Report:
    """The :class:`~meta_rl.report.Report` in a ``report.json`` (a :class:`RunError` naming the
    file when it is not one)."""
    path = Path(path)
    try:
        return Report.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunError(f"{str(path)!r} is not a meta-rl evaluation report: {err}") from err


def _rounded(data: Any, key: str = "") -> Any:
    """``data`` with the floats of its ``per_task`` lists rounded to 4 decimals."""
    if isinstance(data, dict):
        return {k: _rounded(v, k) for k, v in data.items()}
    if isinstance(data, list):
        if key.endswith("per_task"):
            return [round(float(v), 4) for v in data]
        return [_rounded(v, key) for v in data]
    return data


def find_report(run: Path) -> Path:
    """The evaluation report of a run folder: ``evaluation-test/report.json``, else the first
    ``evaluation-*/report.json``; a :class:`RunError` saying how to make one when it has none."""
    preferred = run / "evaluation-test" / REPORT_FILE
    if preferred.exists():
        return preferred
    found = sorted(run.glob(f"evaluation-*/{REPORT_FILE}"))
    if found:
        return found[0]
    raise RunError(
        f"run {str(run)!r} has no evaluation report (evaluation-*/report.json): run "
        f"`meta-rl evaluate {run}` first; its held-out result and plot go into the model card"
    )


def _summary(preset: str) -> str:
    from meta_rl.presets import PRESETS

    p = PRESETS.get(preset)
    return p.summary if p is not None else ""


def _metric(value: float, ci: float) -> str:
    return f"{value:.2f} +/- {ci:.2f}"


def card_metadata(name: str, info: dict[str, Any], report: Report) -> dict[str, Any]:
    """The card's YAML front matter (Hugging Face model-card metadata)."""
    h = headline(report)
    dataset = f"{h.env_id} ({h.split} split, {h.tasks} held-out tasks)"
    return {
        "library_name": LIBRARY,
        "license": "mit",
        "tags": [
            LIBRARY,
            "reinforcement-learning",
            "meta-reinforcement-learning",
            family_tag(info["config"].get("env_id", h.env_id)),
            *algorithm_tags(info),
        ],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {
                            "type": "reinforcement-learning",
                            "name": "reinforcement-learning",
                        },
                        "dataset": {"name": dataset, "type": h.env_id},
                        "metrics": [
                            {
                                "type": "mean_reward",
                                "value": _metric(h.mean, h.ci95),
                                "name": f"{h.label} (held-out tasks, mean +/- 95% CI)",
                                "verified": False,
                            },
                            {
                                "type": "mean_reward",
                                "value": _metric(h.before, h.before_ci95),
                                "name": f"{h.before_label} (held-out tasks)",
                                "verified": False,
                            },
                        ],
                    }
                ],
            }
        ],
    }


def _usage(load_as: str, report: Report) -> list[str]:
    """A runnable snippet: load, set a held-out task, adapt, SB3's ``evaluate_policy``."""
    kwargs = "".join(f", {k}={v!r}" for k, v in report.env_kwargs.items())
    lines = [
        "```python",
        "import gymnasium as gym",
        "import meta_rl",
        "from stable_baselines3.common.evaluation import evaluate_policy",
        "",
        f'agent = meta_rl.load("{load_as}")',
        f'env = gym.make("{report.env_id}"{kwargs})',
        f'env.unwrapped.set_task(env.unwrapped.sample_tasks(1, rng=0, split="{report.split}")[0])',
    ]
    if report.agent == "memory":
        lines += [
            "trial_env = agent.wrap_env(env)  # trials: the memory lives across episodes",
            "print(evaluate_policy(agent, trial_env, n_eval_episodes=10))  # return per trial",
        ]
    else:
        lines += [
            f"adapted = agent.adapt(env, budget={report.budget.value})  # inner policy-gradient "
            "steps on this task",
            "print(evaluate_policy(adapted, env, n_eval_episodes=10))  # SB3's predict protocol",
        ]
    return [*lines, "```"]


def model_card(
    name: str,
    info: dict[str, Any],
    report: Report,
    final: dict[str, Any],
    load_as: str | None = None,
) -> str:
    """The ``README.md`` of a shared agent: front matter (:func:`card_metadata`), then how to
    load it (``meta_rl.load(load_as)``; default: the agent's name, a local folder), the
    held-out result table and plot, and how it was trained and evaluated."""
    h = headline(report)
    preset = info["preset"]
    front = yaml.safe_dump(card_metadata(name, info, report), sort_keys=False, allow_unicode=True)
    report_dir = f"evaluation-{report.split}"
    budget = f"--budget {report.budget.value} " if report.budget.value else ""
    det = "--deterministic " if report.deterministic else ""
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"A meta-trained agent of meta-rl: preset "
        f"`{preset}` ({_summary(preset) or info['config_class']}), trained on the `train` tasks "
        f"of `{info['config'].get('env_id', h.env_id)}`.",
        "",
        f"**Held-out result**: {h.label} **{h.text()}** (mean ± 95% CI over {h.tasks} "
        f"`{h.split}` tasks); {h.before_label} {h.before:.3f} ± {h.before_ci95:.3f}.",
        "",
        "## Use",
        "",
        *_usage(load_as or name, report),
        "",
        "The weights are safetensors and everything else is JSON: loading executes nothing from "
        "this repository (no pickle, so no trust switch is needed), and every checkpoint is "
        "checked (names, shapes, SHA-256, finite values) before use.",
        "",
        "## Held-out adaptation",
        "",
        markdown_table(report),
        "",
        f"![adaptation]({report_dir}/{PLOT_FILE})",
        "",
        "## Training and evaluation",
        "",
        "```bash",
        f"meta-rl train {preset} --out runs/{preset}",
        f"meta-rl evaluate runs/{preset} --split {report.split} --tasks {report.num_tasks} "
        f"{budget}{det}--seed {report.seed} --baselines {','.join(_baselines(report)) or 'none'}",
        "```",
        "",
        f"Checkpoint step {report.checkpoint_step}; final training metrics in `{FINAL_FILE}`"
        + (
            f" ({final['env_steps_total']:,.0f} env steps)"
            if isinstance(final.get("env_steps_total"), (int, float))
            else ""
        )
        + f"; the whole config in `{CONFIG_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def _baselines(report: Report) -> list[str]:
    names = [s.name for s in report.series[1:]]
    out = [n for n in ("none", "ppo") if (n if n == "ppo" else "no_adaptation") in names]
    return out + (["reference"] if report.references or report.skipped_references else [])


def packed_files(folder: str | Path) -> list[str]:
    """The files of a packed folder, relative and sorted (what an upload would send)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pack_run(
    run: str | Path,
    out: str | Path,
    name: str | None = None,
    report: str | Path | None = None,
    load_as: str | None = None,
) -> Path:
    """Write the shareable copy of a finished run folder into ``out`` (created; must be empty
    or absent) and return it. ``name``: the agent's name on its card (default: the preset);
    ``report``: the evaluation ``report.json`` to ship (default: :func:`find_report`);
    ``load_as``: what the card's snippet passes to :func:`meta_rl.load` (``zoo:NAME``,
    ``hf://ORG/NAME``).

    Raises :class:`RunError` when the run is not finished (no ``final.json``), has no evaluation
    report, or ``out`` already holds files."""
    run, out = Path(run), Path(out)
    info = read_run(run)
    name = name or info["preset"]
    final_path = run / FINAL_FILE
    if not final_path.exists():
        raise RunError(
            f"run {str(run)!r} is not finished (no {FINAL_FILE}): share a run once training "
            "has ended"
        )
    report_path = Path(report) if report is not None else find_report(run)
    rep = read_report(report_path)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{str(out)!r} is not empty: pack a run into a new folder")
    out.mkdir(parents=True, exist_ok=True)

    # config (fields of the machine dropped) and final metrics
    shared = dict(info)
    shared["config"] = {k: v for k, v in info["config"].items() if k not in LOCAL_KEYS}
    (out / CONFIG_FILE).write_text(json.dumps(shared, indent=2) + "\n")
    final = json.loads(final_path.read_text())
    shutil.copyfile(final_path, out / FINAL_FILE)

    # the final weights only (no trainer state, RNG states or older checkpoints)
    ck = load_usable_checkpoint(run / "checkpoints")
    save_checkpoint(out / "checkpoints", ck.step, ck.tensors, None, config=ck.config)

    # the evaluation: tasks are left out (the family redraws them from split + seed), per-task
    # returns kept to 4 decimals, compact JSON (a 1,000-task report stays ~100 KB)
    rep = Report.from_dict(_rounded(replace(rep, run=name, tasks=[]).to_dict()))
    rdir = out / f"evaluation-{rep.split}"
    rdir.mkdir()
    text = json.dumps(rep.to_dict(), separators=(",", ":"))
    (rdir / REPORT_FILE).write_text(text + "\n")
    plot = report_path.parent / PLOT_FILE
    if plot.exists():
        shutil.copyfile(plot, rdir / PLOT_FILE)
    else:
        plot_report(rep, rdir / PLOT_FILE)

    (out / CARD_FILE).write_text(model_card(name, shared, rep, final, load_as))
    return out
