"""RL^2 with a memory-augmented policy vs a GRU policy on tasks with a long memory demand.

``--task bandits20`` (presets ``rl2-memory-vs-gru`` and ``rl2-memory-vs-gru-baseline``): Bernoulli
bandits with k=20 arms and n=40 pulls per trial. Playing well means trying arms and coming back to
the ones that paid, i.e. keeping per-arm outcomes for 20 arms over 40 steps; the episodic policy
writes one memory row per step (40 slots: the whole trial) and reads by content, so its small GRU
controller (8 units) need not hold those statistics itself. The GRU baseline gets a parameter count
matched to the memory policy (GRU-28: 6,741 vs 7,125 parameters); ``--gru-hidden 8`` gives the
equal-controller-size comparison.

``--task tabular`` (presets ``rl2-memory-tabular`` and ``rl2-tabular``): random tabular MDPs
(10 states, 5 actions, T=10), n=10 episodes. Acting well means remembering, per (state, action)
pair met so far, the rewards and where it led: up to 50 pairs over a 100-step trial. The memory
policy keys each row by the transition's origin (``transition_keys``); the GRU baseline is RL^2's
GRU-128 with a separate value GRU (more parameters than the memory policy).

Both policies of a task run the same PPO settings and env-step budget.

    python scripts/memory_vs_gru.py --out runs/memory_vs_gru            # 3 seeds each, 2 at a time
    python scripts/memory_vs_gru.py --task tabular --out runs/mvg_tab --seeds 1 2 3 --plot mvg.png
    python scripts/memory_vs_gru.py --out DIR --set iterations=120      # smaller budget

Runs whose ``final.json`` already exists in ``--out`` are reused, not retrained. Each run is
``meta-rl train PRESET --out DIR/NAME_sSEED --set seed=SEED --set num_threads=1 [--set ...]``.
Printed: each seed's score over 1,000 test tasks (95% CI over tasks), each policy's mean over
seeds with a t-interval over seeds, the difference (Welch t-interval), parameter counts and the
reference players of the same runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from meta_rl.presets import get_preset
from meta_rl.rl.rl2 import make_policy, make_trial_env

# task -> (description, (memory label, preset), (GRU label, preset), reference keys)
TASKS = {
    "bandits20": (
        "Bandit-v0 k=20 arms, n=40 pulls",
        ("episodic8", "rl2-memory-vs-gru"),
        ("gru28", "rl2-memory-vs-gru-baseline"),
        ("ref_thompson", "ref_greedy", "ref_ucb1", "ref_random"),
    ),
    "tabular": (
        "TabularMDP-v0 10 states, 5 actions, T=10, n=10 episodes",
        ("episodic128", "rl2-memory-tabular"),
        ("gru128", "rl2-tabular"),
        ("ref_psrl", "ref_psrl_prior0", "ref_greedy", "ref_oracle", "ref_random"),
    ),
}


def arms(args) -> list[tuple[str, str, list[str]]]:
    """(label, preset, extra overrides) of the two policies."""
    _, (mem_label, mem_preset), (gru_label, gru_preset), _ = TASKS[args.task]
    gru = [f"hidden_size={args.gru_hidden}"] if args.gru_hidden else []
    label = f"gru{args.gru_hidden}" if args.gru_hidden else gru_label
    return [(mem_label, mem_preset, []), (label, gru_preset, gru)]


def run_one(preset: str, out: Path, seed: int, sets: list[str]) -> dict:
    final = out / "final.json"
    if not final.exists():
        cmd = [sys.executable, "-m", "meta_rl.cli", "train", preset, "--out", str(out)]
        for s in [f"seed={seed}", "num_threads=1", *sets]:
            cmd += ["--set", s]
        log = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=os.environ)
    return json.loads(final.read_text())


def param_count(preset: str, sets: list[str]) -> int:
    p = get_preset(preset)
    cls = p.config
    over = dict(p.overrides)
    for s in sets:
        key, _, value = s.partition("=")
        field_type = type(over.get(key, getattr(cls(), key)))
        over[key] = json.loads(value) if field_type in (dict, list, bool) else field_type(value)
    config = cls(**over)
    env = make_trial_env(config, 1, 1, torch.device("cpu"))
    return sum(x.numel() for x in make_policy(config, env, 0).parameters())


def t_ci(xs: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean of ``xs`` (nan for one value)."""
    if len(xs) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean difference a - b, the half-width of its 95% Welch t-interval, and the p-value."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1.0
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return float(a.mean() - b.mean()), float(stats.t.ppf(0.975, dof) * se), p


def plot(result: dict, out: Path, path: Path) -> Path:
    """Training return per trial vs env steps: each policy's mean over seeds (band: min to max
    over seeds), its held-out scores as dots, the same runs' references as dotted lines."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for i, (label, v) in enumerate(result["policies"].items()):
        curves = []
        for seed in v["seeds"]:
            with open(out / f"{label}_s{seed}" / "metrics.csv") as fh:
                rows = list(csv.DictReader(fh))
            curves.append([(float(r["env_steps"]), float(r["return"])) for r in rows])
        n = min(len(c) for c in curves)
        x = np.array([p[0] for p in curves[0][:n]]) / 1e6
        y = np.array([[p[1] for p in c[:n]] for c in curves])
        ax.plot(x, y.mean(0), color=f"C{i}", label=f"{label} ({v['params']:,} params), training")
        ax.fill_between(x, y.min(0), y.max(0), color=f"C{i}", alpha=0.2, linewidth=0)
        scores = [s["score"] for s in v["seeds"].values()]
        ax.plot([v["env_steps"] / 1e6] * len(scores), scores, "o", color=f"C{i}", ms=4)
    first = next(iter(result["policies"].values()))
    for j, (name, value) in enumerate(first["refs"].items()):
        ax.axhline(value, ls=":", color=f"C{3 + j}", label=f"{name[4:]} (same tasks)")
    ax.set_xlabel("env steps (millions)")
    ax.set_ylabel("total reward of a trial")
    ax.set_title(
        f"{result['task']}: mean over seeds {', '.join(map(str, first['seeds']))}\n"
        "(band: min-max over seeds; dots: held-out score of each seed, 1,000 test tasks)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="bandits20")
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--gru-hidden", type=int, default=0, help="GRU hidden size (0: the preset's)")
    ap.add_argument("--set", action="append", default=[], help="override for both, key=value")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, help="write learning curves of both policies to this PNG")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")

    jobs = [
        (label, preset, seed, [*extra, *args.set])
        for label, preset, extra in arms(args)
        for seed in args.seeds
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        finals = list(
            pool.map(
                lambda j: run_one(j[1], args.out / f"{j[0]}_s{j[2]}", j[2], j[3]),
                jobs,
            )
        )

    description, _, _, refs = TASKS[args.task]
    result: dict = {"task": description, "policies": {}}
    n = len(args.seeds)
    for k, (label, preset, extra) in enumerate(arms(args)):
        runs = finals[k * n : (k + 1) * n]
        scores = np.array([r["eval_return"] for r in runs])
        result["policies"][label] = {
            "preset": preset,
            "overrides": [*extra, *args.set],
            "params": param_count(preset, [*extra, *args.set]),
            "env_steps": runs[0]["env_steps"],
            "seeds": {
                s: {"score": r["eval_return"], "ci95": r["eval_ci95"]}
                for s, r in zip(args.seeds, runs, strict=True)
            },
            "mean": float(scores.mean()),
            "t_ci95": t_ci(scores),
            "refs": {k: float(np.mean([r[k] for r in runs])) for k in refs if k in runs[0]},
        }
    (mem, pm), (gru, pg) = result["policies"].items()
    a = np.array([v["score"] for v in pm["seeds"].values()])
    b = np.array([v["score"] for v in pg["seeds"].values()])
    diff, half, p = welch(a, b) if len(a) > 1 else (float(a.mean() - b.mean()), math.nan, math.nan)
    result["difference"] = {"memory_minus_gru": diff, "welch_ci95": half, "p_value": p}

    print(f"task: {result['task']}; {pm['env_steps']:.0f} env steps per run")
    print(f"{'policy':<10} {'params':>7}  " + "  ".join(f"seed {s:<12}" for s in args.seeds))
    for label, v in result["policies"].items():
        cells = "  ".join(f"{x['score']:6.2f} ± {x['ci95']:4.2f}  " for x in v["seeds"].values())
        print(f"{label:<10} {v['params']:>7}  {cells}  mean {v['mean']:.2f} ± {v['t_ci95']:.2f}")
    print(f"{mem} - {gru}: {diff:+.2f} ± {half:.2f} (Welch 95% CI), p = {p:.3g}")
    print("references: " + ", ".join(f"{k[4:]} {x:.2f}" for k, x in pm["refs"].items()))
    if args.plot:
        print(f"plot: {plot(result, args.out, args.plot)}")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
