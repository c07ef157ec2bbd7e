"""Meta-iterations per second with 1 and with 2 data-parallel processes on this machine.

    python scripts/bench_scaling.py                              # maml-trpo-pointnav, 1 vs 2
    python scripts/bench_scaling.py --preset rl2-bandits --iterations 8 --json
    python scripts/bench_scaling.py --procs 1 2 4 --set meta_batch=80

Each size runs the real command, ``torchrun --standalone --nproc-per-node N -m meta_rl train
PRESET`` (one CPU thread per process), into a temporary run folder and reads the iteration
rate off rank 0's ``metrics.csv`` (the time between the first and the last logged iteration,
so start-up, the first iteration and the final evaluation are not counted). Both sizes train
the same tasks and reach the same parameters (tests/test_distributed.py), so the ratio is
pure throughput. ``ratio`` = rate with the largest N / rate with 1 process; the ideal is N,
and on a machine with fewer free cores than processes it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from meta_rl.runs import read_metrics

QUIET = ["eval_every=0", "checkpoint_every=0", "log_every=1"]


def iterations_per_second(preset: str, procs: int, iterations: int, sets: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={procs}", "-m", "meta_rl", "-q", "train", preset]
        cmd += ["--out", str(out), "--no-progress"]
        for kv in [*QUIET, f"iterations={iterations}", *sets]:
            cmd += ["--set", kv]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        rows = [r for r in read_metrics(out) if r["step"] >= 1]
        rows = {int(r["step"]): r["time"] for r in rows}  # the last row per step
        first, last = min(rows), max(rows)
        if last - first < 2:
            raise SystemExit("need at least 3 logged iterations; raise --iterations")
        return (last - first) / (rows[last] - rows[first])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="maml-trpo-pointnav")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    procs = sorted(set(args.procs) | {1})
    rates = {}
    for n in procs:
        rates[n] = iterations_per_second(args.preset, n, args.iterations, args.set)
        if not args.json:
            print(f"{args.preset}: {n} process(es): {rates[n]:.3f} meta-iterations/s", flush=True)
    top = max(procs)
    result = {
        "preset": args.preset,
        "overrides": args.set,
        "iterations": args.iterations,
        "cpu_count": os.cpu_count(),
        "iterations_per_second": {str(n): r for n, r in rates.items()},
        "ratio": rates[top] / rates[1],
        "ideal_ratio": top,
        "processes": top,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"ratio ({top} vs 1 processes): {result['ratio']:.2f}x (ideal {top}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
