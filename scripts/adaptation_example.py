"""The README's worked example: point-navigation adaptation vs SB3 PPO from scratch.

Trains the ``smoke-pointnav`` preset (MAML-TRPO on 2D navigation, under a minute on a CPU)
into ``runs/adaptation-example`` (or evaluates a given ``--run``), then evaluates its adaptation
on held-out goals (test split) beside SB3 PPO trained from scratch on each goal at 1x, 10x and
100x the adaptation's env-step budget, the meta-policy without adaptation and the analytic
navigation references. Writes ``OUT/report.json`` and ``OUT/adaptation.png`` (``OUT``:
``results/adaptation``) and prints the markdown table.

    python scripts/adaptation_example.py                   # ~5-7 min on 2 CPU cores
    python scripts/adaptation_example.py --run runs/X      # evaluate an existing run
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from meta_rl.checkpoint import latest_checkpoint
from meta_rl.evaluate import evaluate_run, markdown_table, write_outputs
from meta_rl.presets import get_preset
from meta_rl.runs import Run

PRESET = "smoke-pointnav"


def train_run(path: Path, seed: int) -> float:
    """Train the preset into ``path`` (reusing a finished run there); return the seconds."""
    if latest_checkpoint(path / "checkpoints") is not None and (path / "final.json").exists():
        print(f"reusing the trained run in {path}")
        return 0.0
    preset = get_preset(PRESET)
    config = preset.make_config({"seed": seed, "device": "cpu"})
    start = time.perf_counter()
    with Run.create(path, PRESET, config, trainer=preset.trainer, show_progress=True) as run:
        final = preset.train(run.config, run)
        run.finish(final)
    seconds = time.perf_counter() - start
    print(
        f"trained {PRESET} in {seconds:.1f} s: held-out return before adaptation "
        f"{final['eval_return_0']:.2f}, after one inner step {final['eval_return_1']:.2f}"
    )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="evaluate this run instead of training one")
    parser.add_argument("--out", type=Path, default=Path("results/adaptation"))
    parser.add_argument("--tasks", type=int, default=10, help="held-out goals (default 10)")
    parser.add_argument("--budget", type=int, default=1, help="inner steps (default 1)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per inner step")
    parser.add_argument("--ppo-multipliers", default="1,10,100", help="PPO budgets (x adaptation)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the run folder's log.txt keeps the rest
        handler.setLevel(logging.WARNING)

    run = args.run
    train_seconds = 0.0
    if run is None:
        run = Path("runs/adaptation-example")
        train_seconds = train_run(run, args.seed)
    start = time.perf_counter()
    with tqdm(desc="evaluate", dynamic_ncols=True) as bar:
        report = evaluate_run(
            run,
            split="test",
            tasks=args.tasks,
            budget=args.budget,
            episodes=args.episodes,
            ppo_multipliers=[float(m) for m in args.ppo_multipliers.split(",")],
            seed=args.seed,
            progress=bar,
        )
    if train_seconds:
        report.extra["train_seconds"] = train_seconds
    paths = write_outputs(report, args.out)
    print(markdown_table(report))
    print(
        f"\nevaluation took {time.perf_counter() - start:.0f} s; wrote {paths['report']} and "
        f"{paths['plot']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
