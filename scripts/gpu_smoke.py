"""Run every training preset for a few iterations on CUDA and report what ran.

    python scripts/gpu_smoke.py                 # all presets on cuda (skips, saying so, without)
    python scripts/gpu_smoke.py --device cpu    # the same smoke run on the CPU
    python scripts/gpu_smoke.py --presets maml-trpo-pointnav rl2-bandits --json

Each preset runs ``--iterations`` iterations with its sizes cut down (meta-batch, tasks,
evaluation) into a temporary run folder, with ``device`` set, and must finish, write a
checkpoint and (on CUDA) have allocated GPU memory. A preset whose optional extra is missing
(MuJoCo, Meta-World, fonts) is reported as skipped with the reason. Exit status 1 when any
preset failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

# sizes cut down for a smoke run: field -> value (or a function of the preset's value)
SHRINK: dict[str, Any] = {
    "eval_every": 0,
    "checkpoint_every": 0,
    "log_every": 1,
    "meta_batch": lambda v: min(v, 4),
    "episodes_per_task": lambda v: min(v, 5),
    "eval_tasks": lambda v: min(v, 4),
    "eval_episodes": lambda v: min(v, 2),
    "tasks_per_iteration": lambda v: min(v, 8),
    "meta_batch_size": lambda v: min(v, 4),
    "minibatches": lambda v: min(v, 2),
    "references": False,
    "baseline": False,
}
MISSING_EXTRA = ("No module named", "needs the extra", "not installed", "unavailable")


def smoke_config(preset: Any, device: str, iterations: int) -> Any:
    config = preset.make_config()
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {"device": device, "iterations": iterations}
    for name, value in SHRINK.items():
        if name not in names:
            continue
        old = getattr(config, name)
        if callable(value):
            changes[name] = value(old)
        elif type(old) is type(value):  # e.g. `baseline` is a bool here, a choice there
            changes[name] = value
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in names})


def run_preset(name: str, device: str, iterations: int, root: Path) -> dict[str, Any]:
    from meta_rl.checkpoint import latest_checkpoint
    from meta_rl.presets import get_preset
    from meta_rl.runs import Run

    row: dict[str, Any] = {"preset": name, "device": device}
    t0 = time.perf_counter()
    try:
        preset = get_preset(name)
        trainer = preset.train
    except Exception as err:  # an optional extra is missing: say so, do not fail
        row.update(status="skipped", reason=f"{type(err).__name__}: {err}")
        return row
    try:
        config = smoke_config(preset, device, iterations)
    except Exception as err:
        row.update(status="failed", reason=f"smoke config: {type(err).__name__}: {err}")
        return row
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = Run.create(root / name, name, config, trainer=preset.trainer)
    try:
        trainer(config, run)
        if latest_checkpoint(run.checkpoint_dir) is None:
            # trainers save at the end only when checkpoint_every divides; one more is harmless
            row["checkpoint"] = False
        else:
            row["checkpoint"] = True
        row.update(status="ok", seconds=round(time.perf_counter() - t0, 2))
        if device == "cuda":
            row["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if row["cuda_peak_mb"] == 0:
                row.update(status="failed", reason="nothing was allocated on the GPU")
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        missing = any(s in text for s in MISSING_EXTRA)
        row.update(status="skipped" if missing else "failed", reason=text)
        if not missing:
            row["traceback"] = traceback.format_exc(limit=-3)
    finally:
        run.close()
    return row


def main(argv: list[str] | None = None) -> int:
    from meta_rl.presets import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--presets", nargs="*", default=None, help="default: every preset")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    names = args.presets or list(PRESETS)
    torch.set_num_threads(1)

    if args.device == "cuda" and not torch.cuda.is_available():
        report = {
            "device": "cuda",
            "cuda_available": False,
            "ran": [],
            "skipped": names,
            "message": f"SKIPPED: CUDA is not available on this machine (torch "
            f"{torch.__version__}); none of the {len(names)} presets ran. Run it on a GPU "
            "machine, or pass --device cpu for the same smoke run on the CPU.",
        }
        print(json.dumps(report, indent=2) if args.json else report["message"])
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        for name in names:
            row = run_preset(name, args.device, args.iterations, Path(tmp))
            rows.append(row)
            if not args.json:
                extra = row.get("reason", "")
                took = f"{row.get('seconds', 0):6.1f}s" if "seconds" in row else "       "
                mem = f"  peak {row['cuda_peak_mb']} MB" if "cuda_peak_mb" in row else ""
                print(f"{row['status']:8s} {took} {name}{mem}  {extra[:160]}", flush=True)
    failed = [r["preset"] for r in rows if r["status"] == "failed"]
    summary = {
        "device": args.device,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "iterations": args.iterations,
        "ran": [r["preset"] for r in rows if r["status"] == "ok"],
        "skipped": [r["preset"] for r in rows if r["status"] == "skipped"],
        "failed": failed,
        "results": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{len(summary['ran'])} ran, {len(summary['skipped'])} skipped, {len(failed)} failed "
            f"on {args.device}"
        )
        for r in rows:
            if r["status"] == "failed":
                print(f"--- {r['preset']}\n{r.get('traceback', r.get('reason'))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
