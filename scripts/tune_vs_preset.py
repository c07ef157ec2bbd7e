"""Does the tuned strategy beat the preset's at the preset's training budget?

Takes the ``best.yaml`` of a ``meta-rl tune`` study, trains the preset's strategy and the tuned
one at the preset's FULL budget (``meta-rl train``, same training seed), then scores both on the
same held-out tasks, drawn from ``--eval-seed`` (not the tasks the study tuned on), with the
preset's evaluation protocol (its headline: MSE / accuracy after ``eval_inner_steps`` steps for
few-shot presets, the return after ``eval_inner_steps`` inner steps through ``meta-rl
evaluate`` for MAML-RL, the trial return for RL^2). The difference is paired by task:
mean and 95% CI of (tuned - preset), sign-adjusted so that positive means the tuned strategy is
better.

    python scripts/tune_vs_preset.py runs/tune-maml-sine/best.yaml --seeds 1,2,3 --tasks 1000
    python scripts/tune_vs_preset.py runs/tune-maml-trpo-pointnav/best.yaml --tasks 100 --json

Resumable: the run folders OUT/preset-seedS and OUT/tuned-seedS are reused when finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from meta_rl_envs.stats import mean_ci95

from meta_rl.cli import _read_spec
from meta_rl.cli import main as meta_rl
from meta_rl.config import to_jsonable
from meta_rl.presets import get_preset
from meta_rl.runs import FINAL_FILE, load_config

log = logging.getLogger("tune_vs_preset")


def train(preset: str, values: dict[str, Any], seed: int, out: Path, sets: list[str]) -> float:
    """Train through ``meta-rl train`` (a YAML of preset + values); the wall seconds it took
    (0 when the run was already finished)."""
    if (out / FINAL_FILE).exists():
        return 0.0
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = out.parent / f"{out.name}.yaml"
    spec.write_text(json.dumps({"preset": preset, **values, "seed": seed}))  # JSON is YAML
    argv = ["-q", "train", str(spec), "--out", str(out), "--no-progress"]
    argv += [a for s in sets for a in ("--set", s)]
    if out.exists():
        argv.append("--resume")
    t0 = time.perf_counter()
    code = meta_rl(argv)
    if code != 0:
        raise SystemExit(f"training {out} failed (exit {code})")
    return time.perf_counter() - t0


def fewshot_scores(run: Path, tasks: int, eval_seed: int) -> np.ndarray:
    """Per-task held-out score of a few-shot gradient run after ``eval_inner_steps`` steps,
    on ``tasks`` tasks drawn from ``eval_seed`` (the trainer's own held-out protocol)."""
    from meta_rl.checkpoint import load_usable_checkpoint
    from meta_rl.core import METASGD_PREFIX, adaptation_scores
    from meta_rl.fewshot.gradient import build_task

    config = load_config(run)
    probe = dataclasses.replace(config, seed=eval_seed, eval_tasks=tasks, device="cpu")
    task = build_task(probe, torch.Generator().manual_seed(0), torch.device("cpu"))
    ck = load_usable_checkpoint(run / "checkpoints")
    params = {k: v for k, v in ck.tensors.items() if not k.startswith(METASGD_PREFIX)}
    lrs = {
        k[len(METASGD_PREFIX) :]: v for k, v in ck.tensors.items() if k.startswith(METASGD_PREFIX)
    }
    lr: Any = lrs or config.step_size
    adapt = task.head if config.algorithm == "anil" else None
    metric = task.loss_fn if task.metric == "mse" else task.metric_fn
    support, query = task.eval_batch
    out = []
    for lo in range(0, tasks, config.eval_chunk):
        part = slice(lo, lo + config.eval_chunk)
        curve = adaptation_scores(
            task.loss_fn,
            params,
            tuple(t[part] for t in support),
            tuple(t[part] for t in query),
            lr,
            config.eval_inner_steps,
            metric,
            adapt,
            task.factored,
        )
        out.append(curve[-1].cpu().numpy())
    return np.concatenate(out)


def rl_scores(run: Path, tasks: int, eval_seed: int) -> np.ndarray:
    """Per-task held-out score of an RL run through ``meta-rl evaluate``'s evaluator: return
    after the run's ``eval_inner_steps`` inner steps (gradient agents) or the trial's return
    (RL^2), on ``tasks`` tasks of the run's ``eval_split`` drawn from ``eval_seed``."""
    from meta_rl.evaluate import evaluate_run

    config = load_config(run)
    split = getattr(config, "eval_split", "test")
    report = evaluate_run(run, split=split, tasks=tasks, baselines=("none",), seed=eval_seed)
    point = report.trial_return if report.trial_return is not None else report.adapted.points[-1]
    return np.asarray(point.per_task, dtype=np.float64)


def scores(run: Path, tasks: int, eval_seed: int) -> np.ndarray:
    from meta_rl.fewshot.gradient import GradientFewShotConfig

    if isinstance(load_config(run), GradientFewShotConfig):
        return fewshot_scores(run, tasks, eval_seed)
    return rl_scores(run, tasks, eval_seed)


def compare(best: Path, out: Path, seeds: list[int], tasks: int, eval_seed: int, sets: list[str]):
    name, values = _read_spec(str(best))
    summary_file = best.parent / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    fixed = dict(summary.get("fixed", {}))
    tuned = {k: v for k, v in values.items() if k not in fixed}
    preset = get_preset(name)
    config = preset.make_config(fixed)
    headline = config.headline()
    sign = 1.0 if headline.maximize else -1.0
    rows = []
    for seed in seeds:
        runs = {"preset": out / f"preset-seed{seed}", "tuned": out / f"tuned-seed{seed}"}
        seconds = {
            "preset": train(name, fixed, seed, runs["preset"], sets),
            "tuned": train(name, {**fixed, **tuned}, seed, runs["tuned"], sets),
        }
        per_task = {k: scores(p, tasks, eval_seed) for k, p in runs.items()}
        diff = sign * (per_task["tuned"] - per_task["preset"])
        d = mean_ci95(diff)
        rows.append(
            {
                "seed": seed,
                "preset": _est(per_task["preset"]),
                "tuned": _est(per_task["tuned"]),
                "improvement": {"mean": d.mean, "ci95": d.ci95},
                "tuned_better": bool(d.mean - d.ci95 > 0),
                "tuned_better_on_tasks": float(np.mean(diff > 0)),
                "train_seconds": seconds,
                "runs": {k: str(p) for k, p in runs.items()},
            }
        )
    return {
        "preset": name,
        "metric": headline.metric,
        "direction": headline.direction,
        "iterations": config.iterations,
        "tuned_values": to_jsonable(tuned),
        "fixed": fixed,
        "tasks": tasks,
        "eval_seed": eval_seed,
        "rows": rows,
    }


def _est(x: np.ndarray) -> dict[str, float]:
    e = mean_ci95(x)
    return {"mean": e.mean, "ci95": e.ci95}


def table(result: dict[str, Any]) -> str:
    m = result["metric"]
    lines = [
        f"{result['preset']} at its budget ({result['iterations']} iterations); {m} "
        f"({result['direction']}) on {result['tasks']} held-out tasks (eval seed "
        f"{result['eval_seed']}); tuned: {json.dumps(result['tuned_values'])}",
        "",
        "| training seed | preset | tuned | improvement (paired, 95% CI) | tuned better on |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        p, t, d = r["preset"], r["tuned"], r["improvement"]
        mark = " **(CI > 0)**" if r["tuned_better"] else ""
        lines.append(
            f"| {r['seed']} | {p['mean']:.4g} ± {p['ci95']:.2g} | {t['mean']:.4g} ± "
            f"{t['ci95']:.2g} | {d['mean']:+.4g} ± {d['ci95']:.2g}{mark} | "
            f"{100 * r['tuned_better_on_tasks']:.0f}% of tasks |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("best", type=Path, help="best.yaml of a meta-rl tune folder")
    p.add_argument("--out", type=Path, help="folder of the full-budget runs (default: beside)")
    p.add_argument("--seeds", default="1", help="training seeds, comma-separated (default 1)")
    p.add_argument("--tasks", type=int, default=1000, help="held-out tasks (default 1000)")
    p.add_argument("--eval-seed", type=int, default=20261203, help="seed of the held-out tasks")
    p.add_argument("--set", action="append", default=[], help="machine fields, both runs")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # not the runs' INFO lines
    out = args.out or args.best.parent.parent / f"{args.best.parent.name}-vs-preset"
    seeds = [int(s) for s in args.seeds.split(",")]
    result = compare(args.best, out, seeds, args.tasks, args.eval_seed, args.set)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
