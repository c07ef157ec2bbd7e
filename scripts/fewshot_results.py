"""Few-shot results table: train each learner, evaluate it on held-out tasks, write the table.

Every entry is a preset plus overrides, trained through the same trainer and run folder as
``meta-rl train PRESET --out DIR --set k=v`` (so each row's command reproduces it). The final
evaluation is the trainer's own, on held-out tasks (glyphs: the test scripts of the shared
script split; sinusoids: a held-out task sample): mean and 95% confidence interval over 1,000
episodes / tasks.

Resumable: each entry is a run folder ``OUT/NAME``. A finished run of the same config is
skipped, a killed one resumes from its last checkpoint, and a run whose schedule changed
(e.g. more ``iterations``) continues from where it stopped.

    python scripts/fewshot_results.py --budget small            # what a 2-core CPU can do
    python scripts/fewshot_results.py --budget full --only maml-glyphs-5w1s
    python scripts/fewshot_results.py --table-only              # rebuild the table

Writes ``results/fewshot.md`` and ``results/fewshot.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EPISODES = 1000
"""held-out episodes (or sinusoid tasks) behind every number and its 95% CI"""

log = logging.getLogger("fewshot_results")


@dataclass(frozen=True)
class Entry:
    """One row group of the table: a preset, its overrides per budget, what to report."""

    name: str
    preset: str
    method: str
    setting: str
    common: dict[str, Any]
    """overrides of every budget"""
    budgets: dict[str, dict[str, Any]]
    """budget name -> extra overrides (the training length)"""
    report: list[tuple[str, str, str, str]] = field(default_factory=list)
    """rows: (label suffix, metric key, its CI key, paper number from DESIGN.md section 5)"""
    scale: float = 100.0
    """metric -> table units (accuracy in %; MSE as is)"""

    def overrides(self, budget: str) -> dict[str, Any]:
        return {**self.common, **self.budgets[budget], **EXTRA}


_GLYPH_GRAD = dict(
    task="glyphs",
    k_shot=1,
    n_way=5,
    q_queries=5,
    meta_batch_size=8,
    inner_steps=1,
    eval_inner_steps=3,
    eval_tasks=EPISODES,
    eval_chunk=50,
    eval_every=0,
    checkpoint_every=25,
    log_every=5,
    num_threads=1,
)
_GLYPH_GRAD_FULL = dict(iterations=60000, meta_batch_size=32, q_queries=15, checkpoint_every=1000)
_SINE = dict(
    k_shot=10,
    eval_tasks=EPISODES,
    eval_queries=100,
    eval_inner_steps=10,
    eval_every=0,
    checkpoint_every=500,
    log_every=50,
    num_threads=1,
)

ENTRIES = [
    Entry(
        "maml-sine",
        "maml-sine",
        "MAML",
        "sinusoid 10-shot, query MSE",
        {**_SINE, "baseline": True},
        {"small": {"iterations": 20000}, "full": {"iterations": 70000}},
        [
            ("after 1 step", "eval/loss_step1", "eval/loss_step1_ci95", "below baseline"),
            ("after 10 steps", "eval/loss_step10", "eval/loss_step10_ci95", "below baseline"),
        ],
        scale=1.0,
    ),
    Entry(
        "pretrained-sine",
        "maml-sine",
        "pretrained baseline",
        "sinusoid 10-shot, query MSE",
        {**_SINE, "baseline": True},
        {"small": {"iterations": 20000}, "full": {"iterations": 70000}},
        [
            ("after 1 step", "baseline/loss_step1", "baseline/loss_step1_ci95", "-"),
            ("after 10 steps", "baseline/loss_step10", "baseline/loss_step10_ci95", "-"),
        ],
        scale=1.0,
    ),
    Entry(
        "metasgd-sine",
        "metasgd-sine",
        "Meta-SGD",
        "sinusoid 10-shot, query MSE",
        {**_SINE, "baseline": False},
        {"small": {"iterations": 20000}, "full": {"iterations": 70000}},
        [("after 1 step", "eval/loss_step1", "eval/loss_step1_ci95", "below MAML")],
        scale=1.0,
    ),
    Entry(
        "protonet-glyphs-5w1s",
        "protonet-glyphs",
        "ProtoNet",
        "glyphs 5-way 1-shot",
        dict(
            n_way=5,
            k_shot=1,
            q_queries=15,
            train_way=20,
            eval_episodes=EPISODES,
            eval_every=0,
            checkpoint_every=25,
            log_every=5,
        ),
        {"small": {"iterations": 500}, "full": {"iterations": 20000, "checkpoint_every": 500}},
        [("", "test_accuracy", "test_ci95", "98.8 (Omniglot)")],
    ),
    Entry(
        "maml-glyphs-5w1s",
        "maml-glyphs",
        "MAML",
        "glyphs 5-way 1-shot (3 test steps)",
        _GLYPH_GRAD,
        {"small": {"iterations": 700}, "full": _GLYPH_GRAD_FULL},
        [("", "eval/acc_step3", "eval/acc_step3_ci95", "98.7 (Omniglot)")],
    ),
    Entry(
        "anil-glyphs-5w1s",
        "anil-glyphs",
        "ANIL",
        "glyphs 5-way 1-shot (3 test steps)",
        _GLYPH_GRAD,
        {"small": {"iterations": 150}, "full": _GLYPH_GRAD_FULL},
        [("", "eval/acc_step3", "eval/acc_step3_ci95", "-")],
    ),
    Entry(
        "reptile-glyphs-5w1s",
        "reptile-glyphs",
        "Reptile",
        "glyphs 5-way 1-shot (3 test steps)",
        {**_GLYPH_GRAD, "reptile_steps": 5, "reptile_epsilon": 0.5},
        {"small": {"iterations": 150}, "full": {**_GLYPH_GRAD_FULL, "iterations": 100000}},
        [("", "eval/acc_step3", "eval/acc_step3_ci95", "97.7 (Omniglot)")],
    ),
    Entry(
        "siamese-glyphs-20w1s",
        "siamese-glyphs",
        "Siamese (contrastive)",
        "glyphs 20-way 1-shot",
        dict(
            n_way=20,
            k_shot=1,
            q_queries=1,
            train_way=5,
            meta_batch=8,
            eval_episodes=EPISODES,
            eval_every=0,
            checkpoint_every=25,
            log_every=5,
        ),
        {"small": {"iterations": 200}, "full": {"iterations": 20000, "checkpoint_every": 500}},
        [("", "test_accuracy", "test_ci95", "92.0 (Omniglot)")],
    ),
    Entry(
        "mann-glyphs",
        "mann-glyphs",
        "MANN",
        "glyphs 5-way, accuracy by instance",
        dict(eval_episodes=EPISODES, eval_every=0, checkpoint_every=50, log_every=10),
        {"small": {"iterations": 800}, "full": {"iterations": 100000, "checkpoint_every": 2000}},
        [
            ("1st", "test_instance_1", "test_instance_1_ci95", "36.4 (Omniglot)"),
            ("2nd", "test_instance_2", "test_instance_2_ci95", "82.8 (Omniglot)"),
            ("5th", "test_instance_5", "test_instance_5_ci95", "94.9 (Omniglot)"),
            ("10th", "test_instance_10", "test_instance_10_ci95", "98.1 (Omniglot)"),
        ],
    ),
]
BY_NAME = {e.name: e for e in ENTRIES}
EXTRA: dict[str, Any] = {}
"""--set key=value overrides applied to every chosen entry (e.g. a quick smoke run)"""


# --------------------------------------------------------------------------------------------
# running one entry
# --------------------------------------------------------------------------------------------
def command(entry: Entry, budget: str, out: Path) -> str:
    """The ``meta-rl train`` command equivalent to this entry."""
    folder = out / run_name(entry)
    if folder.resolve().is_relative_to(REPO):
        folder = folder.resolve().relative_to(REPO)
    parts = ["meta-rl", "train", entry.preset, "--out", str(folder)]
    for k, v in entry.overrides(budget).items():
        parts += ["--set", f"{k}={v}"]
    return shlex.join(parts)


def run_name(entry: Entry) -> str:
    """Entries that read the same run (MAML sine and its pretrained baseline) share a folder."""
    return "maml-sine" if entry.name == "pretrained-sine" else entry.name


def run_entry(entry: Entry, budget: str, out: Path) -> dict[str, float]:
    """Train (or resume, or skip) ``entry``; returns its final metrics."""
    from meta_rl.presets import get_preset
    from meta_rl.runs import FINAL_FILE, Run, read_run

    preset = get_preset(entry.preset)
    overrides = entry.overrides(budget)
    config = preset.make_config(overrides)
    folder = out / run_name(entry)
    final_path = folder / FINAL_FILE
    if (folder / "config.json").exists():
        stored = read_run(folder)
        same = stored["config"] == json.loads(config.to_json())
        if final_path.exists() and same:
            log.info("%s: finished run in %s, skipping", entry.name, folder)
            return json.loads(final_path.read_text())
        final_path.unlink(missing_ok=True)  # stale: the schedule changed, or it was killed
        run = Run.resume(folder, overrides, preset=entry.preset, show_progress=True)
    else:
        run = Run.create(folder, entry.preset, config, trainer=preset.trainer, show_progress=True)
    with run:
        t0 = time.perf_counter()
        metrics = preset.train(run.config, run)
        final = run.finish(metrics or {})
        log.info("%s: done in %.0f s", entry.name, time.perf_counter() - t0)
    return final


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def wall_seconds(folder: Path) -> float:
    """From the run's creation to its final metrics (training + final evaluation)."""
    from meta_rl.runs import FINAL_FILE, read_run

    created = dt.datetime.fromisoformat(read_run(folder)["created"]).timestamp()
    return (folder / FINAL_FILE).stat().st_mtime - created


def collect(budget: str, out: Path) -> list[dict[str, Any]]:
    """One record per reported number (entries without a finished run are marked not run)."""
    from meta_rl.runs import FINAL_FILE, read_run

    records = []
    for entry in ENTRIES:
        folder = out / run_name(entry)
        final_path = folder / FINAL_FILE
        done = final_path.exists()
        final = json.loads(final_path.read_text()) if done else {}
        config = read_run(folder)["config"] if done else entry.overrides(budget)
        for label, key, ci_key, paper in entry.report:
            value, ci = final.get(key, math.nan), final.get(ci_key, math.nan)
            records.append(
                {
                    "name": entry.name,
                    "method": entry.method,
                    "setting": entry.setting + (f" ({label})" if label else ""),
                    "metric": key,
                    "value": value * entry.scale,
                    "ci95": ci * entry.scale,
                    "unit": "%" if entry.scale == 100.0 else "MSE",
                    "paper": paper,
                    "iterations": config.get("iterations"),
                    "wall_seconds": wall_seconds(folder) if done else math.nan,
                    "episodes": EPISODES,
                    "finished": done,
                    "command": command(entry, budget, out),
                }
            )
    return records


def _fmt(v: float, unit: str) -> str:
    if math.isnan(v):
        return "not run"
    return f"{v:.1f}" if unit == "%" else f"{v:.3f}"


def write_table(records: list[dict[str, Any]], budget: str, note: str, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Few-shot results",
        "",
        f"Budget: **{budget}**. {note}",
        "",
        f"Ours: mean over {EPISODES:,} held-out episodes (glyphs: classes of the held-out scripts"
        " of the shared script split, `split_seed=0`; sinusoids: held-out tasks) ± the"
        " half-width of the 95% confidence interval. Accuracies in %, sinusoid numbers are"
        " query MSE. Paper numbers are the Omniglot yardsticks of DESIGN.md section 5; our"
        " glyph set is a different (font-rendered) benchmark, so they are a reference, not a"
        " like-for-like comparison. Wall time: run creation to its final metrics (training"
        " + final evaluation), on a shared 2-core CPU under load from other jobs.",
        "",
        "| method | setting | ours ± 95% CI | paper | train iterations | wall time | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ours = _fmt(r["value"], r["unit"])
        if r["finished"] and not math.isnan(r["ci95"]):
            ours += f" ± {_fmt(r['ci95'], r['unit'])}"
        wall = "-" if math.isnan(r["wall_seconds"]) else f"{r['wall_seconds'] / 60:.1f} min"
        iters = r["iterations"] if r["finished"] else "-"
        lines.append(
            f"| {r['method']} | {r['setting']} | {ours} | {r['paper']} | {iters} | {wall} "
            f"| `{r['command']}` |"
        )
    lines.append("")
    (results / "fewshot.md").write_text("\n".join(lines))
    payload = {"budget": budget, "note": note, "episodes": EPISODES, "rows": records}
    payload["rows"] = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in records
    ]
    (results / "fewshot.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["small", "full"], default="small")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "fewshot", help="run folders")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument(
        "--only", action="append", default=[], choices=sorted(BY_NAME), help="repeatable"
    )
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table")
    parser.add_argument(
        "--note",
        default="",
        help="text under the title (default for small: 'CPU budget, not converged')",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override every entry"
    )
    args = parser.parse_args(argv)
    from meta_rl.config import parse_override

    EXTRA.update(parse_override(s) for s in args.set)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)
    chosen = [BY_NAME[n] for n in args.only] if args.only else ENTRIES
    if not args.table_only:
        for entry in tqdm(chosen, desc="few-shot entries", disable=not sys.stderr.isatty()):
            run_entry(entry, args.budget, args.out)
    note = args.note or ("CPU budget, not converged." if args.budget == "small" else "Full budget.")
    records = collect(args.budget, args.out)
    write_table(records, args.budget, note, args.results)
    print(json.dumps({"results": str(args.results / "fewshot.md"), "rows": len(records)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
