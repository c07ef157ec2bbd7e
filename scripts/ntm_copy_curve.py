"""The NTM copy task's learning curve from one or more ``ntm-copy`` run folders.

Reads each run's ``metrics.csv`` and ``config.json``; x is training sequences (updates x
``batch_size``). Plotted: the training cost averaged over the last ``log_every`` sequences and
the held-out test cost (lengths 1-20, and the longer ``eval_lengths`` for the first run), error
bits per sequence,
log scale, with the 1-bit line and the 30k-sequence budget of issue 18. Printed: every
evaluation row and the first evaluation with a test cost below 1 bit.

    meta-rl train ntm-copy --out runs/ntm-copy-b1
    python scripts/ntm_copy_curve.py runs/ntm-copy-b1 --plot results/ntm_copy.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from meta_rl.runs import read_metrics, read_run

BUDGET = 30_000
"""training sequences within which issue 18 asks for a cost below 1 bit"""


def curve(run: Path) -> tuple[dict, list[dict[str, float]]]:
    """The run's config and its metrics rows, each with ``sequences`` added."""
    config = read_run(run)["config"]
    rows = read_metrics(run)
    for r in rows:
        r["sequences"] = r["step"] * config["batch_size"]
    return config, rows


def report(run: Path, config: dict, rows: list[dict[str, float]]) -> None:
    longer = [f"test_cost_{n}" for n in config["eval_lengths"]]
    evals = [r for r in rows if not math.isnan(r.get("test_cost", math.nan))]
    print(f"{run}: {variant(config)}, lr {config['lr']}")
    print(
        f"{'sequences':>10} {'train avg':>9} {'test 1-20':>9} {'+-95%':>6} "
        + " ".join(f"{k[5:]:>9}" for k in longer)
    )
    for r in evals:
        cells = " ".join(f"{r.get(k, math.nan):9.2f}" for k in longer)
        print(
            f"{r['sequences']:10.0f} {r['cost_avg']:9.2f} {r['test_cost']:9.3f} "
            f"{r['test_cost_ci95']:6.3f} {cells}"
        )
    below = next((r for r in evals if r["test_cost"] < 1.0), None)
    if below is None:
        print("test cost never below 1 bit per sequence")
    else:
        where = "within" if below["sequences"] <= BUDGET else "after"
        print(
            f"first test cost below 1 bit: {below['test_cost']:.3f} at {below['sequences']:.0f} "
            f"sequences ({where} the {BUDGET:,} budget)"
        )


def variant(config: dict) -> str:
    """What the run's NTM is (runs made before the options existed are the reference's)."""
    if config.get("memory_init", "random") == "random" and not config.get("bounded", False):
        text = "reference NTM"
    else:
        text = f"{config['memory_init']} memory, {'bounded' if config['bounded'] else 'unbounded'}"
    if config.get("lr_final_fraction", 1.0) < 1.0:
        text += f", lr decay to x{config['lr_final_fraction']}"
    if config["batch_size"] > 1:
        text += f", batch {config['batch_size']}"
    return f"{text}, seed {config['seed']}"


def plot(runs: list[tuple[Path, dict, list[dict[str, float]]]], path: Path) -> Path:
    """Every run's training and test cost; the longer lengths for the first run only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for i, (_, config, rows) in enumerate(runs):
        label = variant(config)
        x = [r["sequences"] for r in rows]
        ax.plot(
            x,
            [r["cost_avg"] for r in rows],
            color=f"C{i}",
            alpha=0.45,
            lw=1,
            label=f"{label}: training, mean of last {config['log_every']}",
        )
        evals = [r for r in rows if not math.isnan(r.get("test_cost", math.nan))]
        ex = [r["sequences"] for r in evals]
        ax.plot(
            ex,
            [r["test_cost"] for r in evals],
            "o-",
            color=f"C{i}",
            ms=3,
            label=f"{label}: test, lengths {config['min_length']}-{config['max_length']}",
        )
        for j, n in enumerate(config["eval_lengths"] if i == 0 else ()):
            ax.plot(
                ex,
                [r[f"test_cost_{n}"] for r in evals],
                ls=("--", ":")[j % 2],
                color=f"C{i}",
                lw=1,
                label=f"{label}: test, length {n}",
            )
    ax.axhline(1.0, color="k", lw=0.8, ls="-.", label="1 bit per sequence")
    ax.axvline(BUDGET, color="grey", lw=0.8, ls=":")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training sequences")
    ax.set_ylabel("error bits per sequence")
    ax.set_title("NTM copy task (LSTM-100, memory 128 x 20, RMSprop 1e-4)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="ntm-copy run folders")
    ap.add_argument("--plot", type=Path, help="write the curve to this PNG")
    args = ap.parse_args()
    runs = []
    for run in args.runs:
        config, rows = curve(run)
        report(run, config, rows)
        runs.append((run, config, rows))
    if args.plot:
        print(f"plot: {plot(runs, args.plot)}")


if __name__ == "__main__":
    main()
