"""The ``meta-rl`` command (also ``python -m meta_rl``).

::

    meta-rl envs                          task families, their parameters, ranges and splits
    meta-rl rollout --env MetaRL/PointNav-v0 --tasks 8 --steps 200
    meta-rl presets [NAME]                training presets (NAME: its config fields)
    meta-rl train PRESET_OR_YAML [--set key=value ...] [--out DIR] [--resume] [--no-progress]
    meta-rl evaluate RUN [--split test|ood] [--tasks N] [--budget K] [--baselines none,ppo,...]
                         [--ppo-multipliers 1,10[,100]] [--ppo-workers N] [--out DIR] [--json]
                         [--no-progress]
    meta-rl tune PRESET --trials N [--space FILE.yaml] [--sampler tpe|random]
                        [--pruner median|halving|none] [--jobs K] [--storage URL]
                        [--budget FRACTION_OR_ITERATIONS] [--out DIR] [--seed S] [--set k=v]
    meta-rl zoo [NAME]                    pretrained agents shipped with meta-rl (meta_rl.cli_share)
    meta-rl push RUN --repo ORG/NAME [--private] [--dry-run DIR]   upload to the Hugging Face Hub

Bad input (unknown preset, bad ``--set``, a run folder that would be overwritten...) prints one
line to stderr and exits with status 2; nothing is created before the config is valid.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meta_rl.checkpoint import CheckpointError
from meta_rl.cli_errors import check_device, nothing_to_resume, os_error_text, training_error
from meta_rl.cli_share import add_parsers as add_share_parsers
from meta_rl.config import ConfigError, describe, load_yaml
from meta_rl.presets import PRESETS, PresetError, get_preset
from meta_rl.runs import CONFIG_FILE, Run, RunError, RunFinished, read_run

log = logging.getLogger("meta_rl.cli")

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    PresetError,
    RunError,
    CheckpointError,
)


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not break an active tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _HideMetricLines(logging.Filter):
    """Per-step metric lines stay in the run's log file while a progress bar shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("meta_rl.runs.metrics")


def _setup_logging(verbosity: int, progress_bar: bool = False) -> None:
    logger = logging.getLogger("meta_rl")
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    for h in list(logger.handlers):
        if isinstance(h, _TqdmHandler):
            logger.removeHandler(h)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    if progress_bar and verbosity <= 0:
        handler.addFilter(_HideMetricLines())
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO))


def _user_error_types() -> tuple[type[BaseException], ...]:
    try:
        from meta_rl_envs import TaskError
    except ImportError:  # pragma: no cover - the envs package ships with meta-rl
        return USER_ERRORS
    return (*USER_ERRORS, TaskError)


# --------------------------------------------------------------------------------------------
# meta-rl envs
# --------------------------------------------------------------------------------------------
def family_table() -> list[dict[str, Any]]:
    """One entry per registered family: summary, parameters, splits (or why it is unavailable)."""
    import gymnasium as gym
    from meta_rl_envs import FAMILIES

    rows = []
    for env_id, spec in FAMILIES.items():
        row: dict[str, Any] = {
            "id": env_id,
            "summary": spec.summary,
            "batched": spec.batched is not None,
        }
        try:
            env = gym.make(env_id)
            try:
                space = env.unwrapped.task_space
                row["parameters"] = space.describe()
                row["splits"] = list(space.splits)
            finally:
                env.close()
        except Exception as err:  # a family module missing, or its optional extra
            reason = f"{type(err).__name__}: {err}"
            if spec.extra:
                reason += f" (needs the extra: pip install 'meta-rl[{spec.extra}]')"
            row["unavailable"] = reason
        rows.append(row)
    return rows


def cmd_envs(args: argparse.Namespace) -> int:
    rows = family_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        tag = "  [batched]" if row["batched"] else ""
        print(f"{row['id']}{tag}")
        print(f"  {row['summary']}")
        if "unavailable" in row:
            print(f"  unavailable: {row['unavailable']}")
        else:
            print("  parameters:")
            for name, text in row["parameters"].items():
                print(f"    {name}: {text}")
            print(f"  splits: {', '.join(row['splits'])}")
        print()
    return 0


# --------------------------------------------------------------------------------------------
# meta-rl rollout: the quick-start job (random actions through a batched family)
# --------------------------------------------------------------------------------------------
def random_rollout(
    env_id: str,
    tasks: int,
    envs_per_task: int,
    steps: int,
    seed: int,
    device: str = "auto",
    split: str = "train",
) -> dict[str, Any]:
    """Random actions for ``steps`` steps on ``tasks x envs_per_task`` rows of a family (its
    torch-batched twin, or Gymnasium envs of it when it has none: :func:`meta_rl_envs.make_env`).

    Returns steps per second and, per task, the mean return of the episodes that finished (or
    of the unfinished episode when none did)."""
    import gymnasium as gym
    import numpy as np
    import torch
    from meta_rl_envs import TaskError, make_env

    env = make_env(env_id, tasks, envs_per_task, device=device)
    task_list = env.sample_tasks(tasks, np.random.default_rng(seed), split)
    env.set_tasks(task_list)
    obs, _ = env.reset(seed=seed)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    space = env.single_action_space
    n = env.num_envs

    if isinstance(space, gym.spaces.Box):
        low = torch.as_tensor(space.low, dtype=torch.float32, device=env.device)
        high = torch.as_tensor(space.high, dtype=torch.float32, device=env.device)

        def act() -> torch.Tensor:
            u = torch.rand((n, *space.shape), generator=gen, device=env.device)
            return low + (high - low) * u

    elif isinstance(space, gym.spaces.Discrete):

        def act() -> torch.Tensor:
            a = torch.randint(int(space.n), (n,), generator=gen, device=env.device)
            return a + int(space.start)

    else:
        raise TaskError(f"rollout: action space {space} of {env_id} is not Box or Discrete")

    running = torch.zeros(n, dtype=torch.float64, device=env.device)
    finished = torch.zeros(n, dtype=torch.float64, device=env.device)
    episodes = torch.zeros(n, dtype=torch.float64, device=env.device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(act())
            done = terminated | truncated
            running += reward.to(torch.float64)
            finished += torch.where(done, running, torch.zeros_like(running))
            episodes += done.to(torch.float64)
            running = torch.where(done, torch.zeros_like(running), running)
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    elapsed = time.perf_counter() - start

    per_task = []
    fin = finished.view(tasks, envs_per_task).sum(1)
    eps = episodes.view(tasks, envs_per_task).sum(1)
    part = running.view(tasks, envs_per_task).mean(1)
    for i, task in enumerate(task_list):
        complete = bool(eps[i] > 0)
        mean = float(fin[i] / eps[i]) if complete else float(part[i])
        per_task.append(
            {
                "task": task.to_dict(),
                "episodes": int(eps[i]),
                "mean_return": mean,
                "complete": complete,
            }
        )
    return {
        "env": env_id,
        "device": str(env.device),
        "rows": n,
        "steps": steps,
        "seconds": elapsed,
        "steps_per_second": n * steps / max(elapsed, 1e-12),
        "tasks": per_task,
    }


def _short_task(task: dict[str, Any]) -> str:
    parts = []
    for k, v in task.items():
        if k == "family":
            continue
        if isinstance(v, list):
            shown = ", ".join(f"{x:.3g}" for x in v[:4]) + (", ..." if len(v) > 4 else "")
            parts.append(f"{k}=[{shown}]")
        else:
            parts.append(f"{k}={v:.3g}")
    return " ".join(parts)


def cmd_rollout(args: argparse.Namespace) -> int:
    check_device(args.device, "--device")
    result = random_rollout(
        args.env, args.tasks, args.envs_per_task, args.steps, args.seed, args.device, args.split
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['env']} on {result['device']}: {result['rows']} rows x {result['steps']} steps "
        f"in {result['seconds']:.3f} s = {result['steps_per_second']:,.0f} steps/s"
    )
    print("mean return per task (random actions; * = no episode finished, partial return):")
    for i, t in enumerate(result["tasks"]):
        flag = "" if t["complete"] else "*"
        print(
            f"  task {i:3d}: {t['mean_return']:10.3f}{flag}  ({t['episodes']} episodes)  "
            f"{_short_task(t['task'])}"
        )
    return 0


# --------------------------------------------------------------------------------------------
# meta-rl presets / train
# --------------------------------------------------------------------------------------------
def cmd_presets(args: argparse.Namespace) -> int:
    if args.name is None:
        width = max(len(n) for n in PRESETS)
        for name, p in PRESETS.items():
            print(f"{name:<{width}}  {p.summary}")
        return 0
    p = get_preset(args.name)
    cls = p.config
    config = p.make_config()
    print(f"{p.name}: {p.summary}")
    print(f"  trainer: {p.trainer}{'  (data-parallel under torchrun)' if p.data_parallel else ''}")
    print(f"  config:  {cls.__module__}:{cls.__qualname__}")
    if p.overrides:
        print(f"  preset values: {json.dumps(dict(p.overrides))}")
    print("  fields (value in this preset; --set key=value to change):")
    for row in describe(cls):
        value = getattr(config, row["name"])
        extra = f"  [{row['constraint']}]" if row["constraint"] else ""
        print(f"    {row['name']} = {value!r}  ({row['type']}){extra}")
        if row["doc"]:
            print(f"        {row['doc']}")
    return 0


def _read_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A preset name, or a YAML file with ``preset: NAME`` and config values."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml", ".json")) or path.is_file():
        data = load_yaml(path)
        preset = data.pop("preset", None)
        if not isinstance(preset, str):
            raise ConfigError(
                f"config file {spec!r} needs a 'preset: NAME' entry (presets: "
                f"{', '.join(sorted(PRESETS))})"
            )
        nested = data.pop("config", None) or {}
        if not isinstance(nested, dict):
            raise ConfigError(f"'config' in {spec!r} must be a mapping of fields")
        return preset, {**nested, **data}
    return spec, {}


def _default_out(preset: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{preset}-{stamp}"
    i = 1
    while out.exists():
        out = Path("runs") / f"{preset}-{stamp}-{i}"
        i += 1
    return out


def cmd_train(args: argparse.Namespace) -> int:
    if args.spec is None and not args.resume:
        raise ConfigError("train needs a preset name or a YAML file (see: meta-rl presets)")
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out DIR, the run folder to continue")
    name, values = _read_spec(args.spec) if args.spec else (None, {})
    out = Path(args.out) if args.out else None
    fresh = False  # whether this command creates the run folder
    try:
        if args.resume and out is not None and (out / CONFIG_FILE).exists():
            stored = read_run(out)
            name = name if name is not None else stored["preset"]
            preset = get_preset(name)
            trainer = preset.train
            overrides = {**values, **dict(_pairs(args.set))}
            device = overrides.get("device", stored["config"].get("device", "auto"))
            check_device(str(device), "--set device")
            try:
                run = Run.resume(out, overrides, preset=name, show_progress=not args.no_progress)
            except RunFinished as done:
                print(f"meta-rl: {done}", file=sys.stderr)
                print(json.dumps({"run": str(out), "final": done.final}, indent=2))
                return 0
        else:
            if name is None:
                raise RunError(nothing_to_resume(out))
            preset = get_preset(name)
            trainer = preset.train
            config = preset.make_config(values, args.set)  # validated before anything is created
            check_device(config.device, "--set device")
            out = out if out is not None else _default_out(name)
            if args.resume:
                log.warning("nothing to resume in %s (no run there): starting a new run", out)
            fresh = not out.exists()
            run = Run.create(
                out, name, config, trainer=preset.trainer, show_progress=not args.no_progress
            )
    except OSError as err:
        raise RunError(os_error_text(err, out, started=False)) from err

    with run:
        log.info("run folder: %s (starting at step %d)", run.path, run.start_step)
        try:
            try:
                final = run.finish(trainer(run.config, run) or {})
            except (OSError, FloatingPointError, RuntimeError, ValueError) as err:
                if isinstance(err, _user_error_types()):
                    raise
                problem = training_error(err, run.path, run.config)
                if problem is None:
                    raise
                raise problem from err
        except _user_error_types():
            run.close()
            if fresh:
                _remove_if_untouched(run)
            raise
        except KeyboardInterrupt:
            print(
                f"meta-rl: interrupted; continue with: meta-rl train {name} --out {run.path} "
                "--resume",
                file=sys.stderr,
            )
            return 130
    print(json.dumps({"run": str(run.path), "final": final}, indent=2))
    return 0


def _remove_if_untouched(run: Run) -> None:
    """Delete a run folder this command created when the trainer refused its config before
    logging or saving anything (so a rejected run leaves nothing behind)."""
    import shutil

    from meta_rl.checkpoint import list_checkpoints

    if run.metrics_path.exists() or list_checkpoints(run.checkpoint_dir):
        return
    expected = {CONFIG_FILE, "log.txt", "tb", "checkpoints"}
    if {p.name for p in run.path.iterdir()} <= expected:
        shutil.rmtree(run.path, ignore_errors=True)


def _pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    from meta_rl.config import parse_override

    return [parse_override(s) for s in items]


# --------------------------------------------------------------------------------------------
# meta-rl evaluate
# --------------------------------------------------------------------------------------------
def _csv(kind: type, text: str) -> list[Any]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from meta_rl.evaluate import evaluate_run, markdown_table, write_outputs

    run = Path(args.run)
    check_device(args.device, "--device")
    if not run.exists():
        raise RunError(f"run folder {str(run)!r} does not exist")
    out = Path(args.out) if args.out else run / f"evaluation-{args.split}"
    env_kwargs = dict(_pairs(args.env_kwarg)) if args.env_kwarg else None
    if env_kwargs is not None:
        import yaml

        env_kwargs = {k: yaml.safe_load(v) for k, v in env_kwargs.items()}
    bar = tqdm(
        total=None,
        desc="evaluate",
        disable=args.no_progress or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    with bar:
        report = evaluate_run(
            run,
            split=args.split,
            tasks=args.tasks,
            budget=args.budget,
            baselines=args.baselines,
            seed=args.seed,
            env_id=args.env,
            env_kwargs=env_kwargs,
            episodes=args.episodes,
            ppo_multipliers=args.ppo_multipliers,
            ppo_workers=args.ppo_workers,
            deterministic=args.deterministic,
            device=args.device,
            progress=None if bar.disable else bar,  # no bar: progress lines in the log
        )
    paths = write_outputs(report, out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(markdown_table(report))
        print(f"\nwrote {paths['report']} and {paths['plot']}")
        if "belief" in paths:
            print(f"wrote the belief picture {paths['belief']}")
    return 0


# --------------------------------------------------------------------------------------------
# meta-rl tune (meta_rl.tune: Optuna over learning strategies)
# --------------------------------------------------------------------------------------------
def cmd_tune(args: argparse.Namespace) -> int:
    from meta_rl import tune, tune_report

    if args.show_space:
        name, space = tune.show_space(args.preset, args.set)
        print(f"# default search space {name!r} of preset {args.preset}\n{space.to_yaml()}", end="")
        return 0
    out = Path(args.out) if args.out else Path("runs") / f"tune-{args.preset}"
    settings = tune.TuneSettings(
        args.preset, args.trials, out, Path(args.space) if args.space else None, args.sampler,
        args.pruner, args.jobs, args.storage, args.budget, args.reports, args.seed, args.set,
        not args.no_preset_trial,
    )  # fmt: skip
    result = tune.tune(settings)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(tune_report.summary_text(result.to_dict(), out))
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meta-rl", description="Meta-reinforcement learning on parameterized task families."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("envs", help="list task families, parameters, ranges and splits")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("rollout", help="random-action batched rollout (quick start)")
    p.add_argument("--env", default="MetaRL/PointNav-v0", help="family id (see: meta-rl envs)")
    p.add_argument("--tasks", type=_positive, default=8, help="tasks sampled")
    p.add_argument("--envs-per-task", type=_positive, default=4, help="rows per task")
    p.add_argument("--steps", type=_positive, default=200, help="steps per row")
    p.add_argument("--seed", type=int, default=0, help="seed of tasks, env and actions")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--split", default="train", help="train | test | ood")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("presets", help="list training presets, or show one's config")
    p.add_argument("name", nargs="?", help="a preset to describe")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a preset or a YAML config into a run folder")
    p.add_argument("spec", nargs="?", metavar="PRESET_OR_YAML", help="preset name or YAML file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable; dotted keys for nested fields)",
    )
    p.add_argument("--out", help="run folder (default: runs/PRESET-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="adaptation on held-out tasks vs baselines: report.json + adaptation.png"
    )
    p.add_argument("run", metavar="RUN", help="run folder (from meta-rl train)")
    p.add_argument("--split", default="test", help="test | ood | train (default: test)")
    p.add_argument("--tasks", type=_positive, default=10, help="held-out tasks (default: 10)")
    p.add_argument(
        "--budget",
        type=_positive,
        default=None,
        help="inner steps (gradient agents) or episodes per trial (RL^2); default: the run's",
    )
    p.add_argument(
        "--baselines",
        type=lambda t: _csv(str, t),
        default=["none", "ppo", "reference"],
        help="comma-separated subset of none,ppo,reference (default: all)",
    )
    p.add_argument(
        "--ppo-multipliers",
        type=lambda t: _csv(float, t),
        default=[1.0, 10.0],
        help="PPO budgets as multiples of the adaptation's env steps (default: 1,10; "
        "1,10,100 adds the 100x baseline, several minutes)",
    )
    p.add_argument(
        "--ppo-workers",
        type=_positive,
        default=None,
        help="processes for the per-task PPO runs (default: every task at once, up to "
        "max(cores, 8))",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="measure returns with the most likely action (agent and PPO; default: sampled)",
    )
    p.add_argument("--episodes", type=_positive, default=None, help="episodes per inner step")
    p.add_argument("--env", default=None, help="another family id with the same spaces")
    p.add_argument(
        "--env-kwarg", action="append", default=[], metavar="KEY=VALUE", help="family kwarg"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of tasks, env and actions")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--out", help="output folder (default: RUN/evaluation-SPLIT)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune", help="search learning strategies (Optuna): best.yaml + plots")
    p.add_argument("preset", metavar="PRESET", help="a preset (see: meta-rl presets)")
    p.add_argument("--trials", type=_positive, default=20, help="finished trials wanted")
    p.add_argument("--space", help="search space YAML (default: the preset's; --show-space)")
    p.add_argument("--show-space", action="store_true", help="print the default space, exit")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random"])
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"])
    p.add_argument("--jobs", type=_positive, default=1, help="trials at once (processes)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument(
        "--budget",
        type=float,
        default=0.25,
        help="iterations per trial: a fraction (< 1) of the preset's, or a count (default 0.25)",
    )
    p.add_argument("--reports", type=_positive, default=4, help="evaluations per trial")
    p.add_argument("--out", help="tune folder (default: runs/tune-PRESET; re-run to resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the trials")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed value")
    p.add_argument(
        "--no-preset-trial", action="store_true", help="do not start with the preset's strategy"
    )
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_tune)
    add_share_parsers(sub)  # meta-rl zoo, meta-rl push
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``meta-rl`` command (``python -m meta_rl``). Started by torchrun as one rank of
    several, this process first joins the process group (:func:`meta_rl.launch.main`)."""
    from meta_rl import collectives

    argv = list(sys.argv[1:] if argv is None else argv)
    if collectives.pending():  # one rank of a torchrun job: one run-folder writer, followers
        from meta_rl import launch

        return launch.main(argv, _run_command, _train_preset, _user_error_types())
    return _run_command(argv)


def _run_command(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bar = args.command == "tune" or (
        args.command in ("train", "evaluate") and not args.no_progress and sys.stderr.isatty()
    )  # tune: per-step metric lines stay in each trial's log.txt
    _setup_logging(-1 if args.quiet else args.verbose, progress_bar=bar)
    try:
        return int(args.func(args) or 0)
    except _user_error_types() as err:
        print(f"meta-rl: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `meta-rl envs | head`
        return 0
    except OSError as err:  # a disk full, a read-only or missing folder: not a bug of meta-rl
        where = f": {err.filename}" if err.filename else ""
        print(f"meta-rl: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


def _train_preset(argv: list[str]) -> str | None:
    """The preset a ``train`` command line runs (``None``: not a train command, or one that
    :func:`_run_command` will reject with a message)."""
    from meta_rl.runs import read_run

    try:
        args, _ = build_parser().parse_known_args(argv)
        if args.command != "train":
            return None
        if args.spec:
            return _read_spec(args.spec)[0]
        if args.out and (Path(args.out) / CONFIG_FILE).exists():
            return read_run(args.out)["preset"]
    except (SystemExit, Exception):  # the command reports it on rank 0
        return None
    return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
