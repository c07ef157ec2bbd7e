"""Rebuild the zoo shipped in the package (``meta_rl/zoo/``): train each zoo preset as shipped,
evaluate it on held-out tasks, and pack it (:func:`meta_rl.card.pack_run`).

    python scripts/build_zoo.py                      # every agent (trains what is not trained)
    python scripts/build_zoo.py rl2-bandits          # one agent
    python scripts/build_zoo.py --runs runs/zoo-train --zoo meta_rl/zoo

Training runs go to ``--runs`` (a finished run there is reused, not retrained); each agent's
evaluation is ``meta-rl evaluate``'s (``evaluate_run``) on ``ZOO[name]`` tasks of the test split
with seed 0, beside the no-adaptation point and the family's references (PPO from scratch is
left out: it would cost more than the rest together; ``meta-rl evaluate`` runs it on request).
The zoo test (``tests/test_zoo.py``) repeats that evaluation and checks the card's number.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from meta_rl.card import pack_run, packed_files
from meta_rl.evaluate import evaluate_run, markdown_table, write_outputs
from meta_rl.runs import FINAL_FILE
from meta_rl.zoo import ZOO_DIR

ZOO: dict[str, int] = {
    "smoke-pointnav": 100,
    "maml-trpo-pointnav": 100,
    "rl2-bandits": 1000,
}
"""zoo agent (= preset) -> held-out test tasks of its card's evaluation"""
MORE: dict[str, int] = {"rl2-memory-tabular": 1000}
"""agents the script builds when named (``python scripts/build_zoo.py rl2-memory-tabular``) but
the shipped zoo leaves out: rl2-memory-tabular trains 3.84M env steps (6.6 min on a quiet 2-core
CPU) and did not fit the shared CPU of the session that built the zoo"""
SEED = 0
BASELINES = ("none", "reference")


def build(name: str, runs: Path, zoo: Path) -> None:
    run = runs / name
    t0 = time.perf_counter()
    if not (run / FINAL_FILE).exists():
        if run.exists():
            shutil.rmtree(run)  # an unfinished run: train again from scratch, as shipped
        cmd = ["meta-rl", "-q", "train", name, "--out", str(run), "--no-progress"]
        subprocess.run(cmd, check=True)
        print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    tasks = {**ZOO, **MORE}[name]
    report = evaluate_run(run, split="test", tasks=tasks, baselines=BASELINES, seed=SEED)
    write_outputs(report, run / "evaluation-test")
    print(markdown_table(report))
    print(f"{name}: evaluated in {time.perf_counter() - t1:.0f} s", flush=True)
    dest = zoo / name
    if dest.exists():
        shutil.rmtree(dest)
    pack_run(run, dest, name, load_as=f"zoo:{name}")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{name}: packed {len(packed_files(dest))} files, {size / 1024:.0f} KiB into {dest}")


DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "sharing.md"
START, END = "<!-- zoo-table -->", "<!-- /zoo-table -->"


def zoo_table(zoo: Path) -> str:
    """The zoo as a markdown table (written into docs/sharing.md between the markers)."""
    from meta_rl.zoo import entries

    rows = [
        "| agent | family | algorithm | held-out result (mean ± 95% CI) | before adaptation |",
        "|---|---|---|---|---|",
    ]
    for e in entries(zoo):
        h = e.headline
        rows.append(
            f"| `zoo:{e.name}` | `{e.env_id}` | {e.algorithm} | {h.label}: **{h.text()}** "
            f"({h.tasks} {h.split} tasks) | {h.before:.3f} ± {h.before_ci95:.3f} |"
        )
    return "\n".join(rows)


def write_docs_table(zoo: Path) -> None:
    text = DOCS_PAGE.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOCS_PAGE.write_text(f"{head}{START}\n{zoo_table(zoo)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"agents to rebuild (default: {', '.join(ZOO)})")
    parser.add_argument("--runs", type=Path, default=Path("runs/zoo-train"), help="run folders")
    parser.add_argument("--zoo", type=Path, default=ZOO_DIR, help="the zoo folder to write")
    args = parser.parse_args(argv)
    known = {**ZOO, **MORE}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"not zoo agents: {unknown}; choose from {list(known)}")
    for name in args.names or list(ZOO):
        build(name, args.runs, args.zoo)
    if args.zoo.resolve() == ZOO_DIR:
        write_docs_table(args.zoo)
    print(zoo_table(args.zoo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
