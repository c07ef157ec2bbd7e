"""The outputs of a strategy search (``meta-rl tune``), made at the edge from the Optuna study:
``best.yaml`` (a config ``meta-rl train`` takes), ``history.png``, ``importance.png`` and
``summary.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from meta_rl.checkpoint import atomic_write

__all__ = ["trial_rows", "write_best", "plot_history", "plot_importance", "write_outputs"]

MIN_IMPORTANCE_TRIALS = 4
"""complete trials below which no importances are computed (the figure says so)"""
_STATE_STYLE = {  # state -> (marker, colour, label)
    "COMPLETE": ("o", "tab:blue", "complete"),
    "PRUNED": ("x", "tab:red", "pruned (last reported value)"),
    "FAIL": ("v", "tab:gray", "failed (diverged / killed)"),
}


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One JSON-able row per trial: number, state, value, params, run folder, notes."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": dict(t.params),
            "intermediate": {int(s): float(t.intermediate_values[s]) for s in steps},
            "last_reported": float(t.intermediate_values[steps[-1]]) if steps else None,
            "seconds": t.duration.total_seconds() if t.duration is not None else None,
        }
        row.update({k: v for k, v in t.user_attrs.items()})
        rows.append(row)
    return rows


def _best(rows: list[dict[str, Any]], maximize: bool) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done:
        return None
    key = (lambda r: r["value"]) if maximize else (lambda r: -r["value"])
    return max(done, key=key)


def write_best(best: Mapping[str, Any], info: Mapping[str, Any], path: Path) -> Path:
    """``best.yaml``: the preset, the fixed values and the best strategy (not the short trial
    schedule: ``meta-rl train best.yaml`` trains at the preset's own budget)."""
    header = [
        f"# meta-rl tune: the best of {info['trials']} trials of preset {info['preset']}",
        f"# trial {best['number']}: {info['metric']} = {best['value']:.6g} ({info['direction']}) "
        f"after {info['iterations']} of the preset's {info['preset_iterations']} iterations",
        f"# search space: {info['space']}; sampler {info['sampler']}, pruner {info['pruner']}, "
        f"seed {info['seed']}",
        f"# train it at the preset's budget: meta-rl train {path}",
    ]
    values = {"preset": info["preset"], **dict(info["fixed"]), **best["params"]}
    text = "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False)
    atomic_write(path, text.encode())
    return path


def plot_history(rows: list[dict[str, Any]], info: Mapping[str, Any], path: Path) -> Path:
    """Left: the objective of every trial (complete, pruned at its last reported value,
    failed at the plot's edge) and the best so far. Right: every trial's evaluations during
    training (pruned trials dashed, where they stopped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maximize = info["direction"] == "maximize"
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    shown = [r["value"] if r["state"] == "COMPLETE" else r["last_reported"] for r in rows]
    finite = [v for v in shown if v is not None and math.isfinite(v)]
    edge = (max(finite) if not maximize else min(finite)) if finite else 0.0
    if not maximize and finite and min(finite) > 0:  # losses: keep blow-ups off the scale
        edge = min(edge, 100 * float(np.median(finite)))
        shown = [v if v is None or not math.isfinite(v) else min(v, edge) for v in shown]
    for state, (marker, colour, label) in _STATE_STYLE.items():
        pts = [
            (r["number"], edge if v is None or not math.isfinite(v) else v)
            for r, v in zip(rows, shown, strict=True)
            if r["state"] == state
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=marker, color=colour, label=f"{label} ({len(pts)})")
    best, best_xy = None, []
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None:
            v = r["value"]
            if best is None or (v > best if maximize else v < best):
                best = v
            best_xy.append((r["number"], best))
    for r, v in zip(rows, shown, strict=True):
        if r.get("preset_strategy") and v is not None and math.isfinite(v):
            ax.scatter([r["number"]], [v], s=160, facecolors="none", edgecolors="tab:green",
                       label="the preset's strategy")  # fmt: skip
    if best_xy:
        xs, ys = zip(*best_xy, strict=True)
        ax.step(xs, ys, where="post", color="black", lw=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{info['metric']} ({info['direction']})")
    ax.set_title(f"{info['preset']}: optimisation history")
    if not maximize and finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    for r in rows:
        curve = sorted((int(s), v) for s, v in r["intermediate"].items())  # JSON: str keys
        if not curve:
            continue
        pruned = r["state"] == "PRUNED"
        ax2.plot(
            [s for s, _ in curve],
            [v for _, v in curve],
            ls="--" if pruned else "-",
            marker="x" if pruned else ".",
            color="tab:red" if pruned else "tab:blue",
            alpha=0.8,
            lw=1,
        )
    if not maximize and finite and min(finite) > 0:
        ax.set_ylim(top=edge * 2)
        ax.text(0.01, 0.99, f"values above {edge:.3g} and failed trials drawn at the top",
                transform=ax.transAxes, va="top", fontsize=7)  # fmt: skip
    ax2.set_xlabel("training iteration")
    ax2.set_ylabel(info["metric"])
    ax2.set_title("evaluations reported to the pruner (red dashed: pruned)")
    if not maximize and finite and min(finite) > 0:
        ax2.set_yscale("log")
        ax2.set_ylim(0.5 * min(finite), edge * 2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_importance(study: Any, info: Mapping[str, Any], path: Path) -> tuple[Path, dict]:
    """Importance of each parameter for the objective over the complete trials (fANOVA, or
    PED-ANOVA without scikit-learn; a figure saying why when there are too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    importances: dict[str, float] = {}
    why = ""
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        why = f"{len(complete)} complete trials (needs {MIN_IMPORTANCE_TRIALS})"
    else:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=_evaluator(len(complete), int(info["seed"]))
            )
        except (RuntimeError, ValueError, ZeroDivisionError) as err:  # e.g. one value only
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * max(1, len(importances))))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel(f"importance ({info.get('importance', 'fANOVA / PED-ANOVA')})")
    else:
        ax.text(0.5, 0.5, f"no importances: {why}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title(f"{info['preset']}: parameter importance for {info['metric']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, {k: float(v) for k, v in importances.items()}


def _evaluator(complete: int, seed: int) -> Any:
    """fANOVA (Optuna's default) when scikit-learn is installed, else PED-ANOVA (no extra
    dependency), its top quantile holding at least two of the ``complete`` trials."""
    import optuna

    try:
        import sklearn  # noqa: F401

        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    except ImportError:
        q = min(0.5, max(0.1, 2 / max(1, complete)))
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=q)


def write_outputs(study: Any, info: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Write best.yaml (when a trial completed), history.png, importance.png, summary.json;
    returns the rows, the best row, the importances and the files."""
    rows = trial_rows(study)
    best = _best(rows, info["direction"] == "maximize")
    files: dict[str, str] = {}
    if best is not None:
        files["best"] = str(write_best(best, info, out / "best.yaml"))
    files["history"] = str(plot_history(rows, info, out / "history.png"))
    path, importances = plot_importance(study, info, out / "importance.png")
    files["importance"] = str(path)
    summary = {**info, "best": best, "importances": importances, "trials": rows}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    files["summary"] = str(out / "summary.json")
    return {"rows": rows, "best": best, "importances": importances, "files": files}


def summary_text(result: Mapping[str, Any], out: Path) -> str:
    """What ``meta-rl tune`` prints: counts, what ran now, re-queued trials, the best, files."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result["counts"].items()))
    lines = [f"study {out}: {counts}"]
    ran = result["ran_now"]
    lines.append(f"ran now: trials {', '.join(map(str, ran))}" if ran else "ran now: nothing")
    for killed, retry in result["requeued"].items():
        lines.append(f"trial {killed} was killed mid-way: marked failed, re-queued as {retry}")
    if result["best_number"] is None:
        lines.append("no trial completed yet: no best.yaml")
    else:
        lines.append(
            f"best: trial {result['best_number']}, {result['metric']} = "
            f"{result['best_value']:.6g} ({result['direction']}): {result['best_params']}"
        )
    for name, path in result["files"].items():
        lines.append(f"  {name}: {path}")
    if "best" in result["files"]:
        lines.append(f"train it at the preset's budget: meta-rl train {result['files']['best']}")
    return "\n".join(lines)
