"""Learning-strategy search over tasks: ``meta-rl tune PRESET --trials N`` (Optuna).

A *strategy* is a set of config values of a preset (inner learning rate, inner steps, first or
second order, outer step size...; :mod:`meta_rl.tune_space`). Each trial trains one strategy
into its own run folder, through the same preset config and run folder as ``meta-rl train``,
with a shortened budget (``budget`` iterations), and is scored by the trainer's held-out
adaptation score (:meth:`meta_rl.config.BaseConfig.headline`: MSE down, accuracy / return up).
Every evaluation during training is reported to Optuna as it is logged (the hook is the run's
``log``; no trainer knows it is being tuned), so the pruner can stop a poor trial early.

The tune folder::

    DIR/study.db          the Optuna study (sqlite; --storage for another database)
    DIR/trial-0003/       the run folder of trial 3 (a pruned trial stops where it was pruned)
    DIR/best.yaml         the best strategy: `meta-rl train DIR/best.yaml` trains it
    DIR/history.png       objective per trial (pruned and failed trials marked) and the
                          evaluation curves of every trial (pruned ones dashed)
    DIR/importance.png    parameter importances (fANOVA over the finished trials)
    DIR/summary.json      every trial: state, value, parameters, run folder

Running the same command on the same folder resumes the study: finished trials (complete,
pruned, or failed because training diverged) are kept and only the missing ones run. A trial
that was running when its process died is marked failed (user attribute ``killed``) and its
strategy is queued again as a new trial (``retry_of``), which trains from scratch.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meta_rl.cli_errors import training_error
from meta_rl.config import BaseConfig, ConfigError, Headline, parse_override, to_jsonable
from meta_rl.presets import Preset, get_preset
from meta_rl.runlock import LockedError, acquire
from meta_rl.runs import Run, RunError
from meta_rl.tune_space import Space, default_space, read_space

log = logging.getLogger(__name__)

__all__ = ["TuneSettings", "TuneResult", "tune", "budget_iterations", "trial_schedule"]

STUDY_NAME = "meta-rl-tune"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")
# training failures that fail one trial (a strategy that diverges), not the study
TRIAL_ERRORS: tuple[type[BaseException], ...] = (RunError, FloatingPointError)


@dataclass
class TuneSettings:
    """What ``meta-rl tune`` was asked (the CLI's flags)."""

    preset: str
    trials: int
    out: Path
    space: Path | None = None
    sampler: str = "tpe"
    pruner: Any = "median"
    """median | halving | none, or an ``optuna.pruners.BasePruner``"""
    jobs: int = 1
    storage: str | None = None
    """database URL (default: ``sqlite:///OUT/study.db``)"""
    budget: float = 0.25
    """training iterations per trial: a fraction (< 1, of the preset's) or a count (>= 1)"""
    reports: int = 4
    """evaluations (reported for pruning) per trial"""
    seed: int = 0
    """seed of the sampler and of every trial's training (so trials differ only in strategy)"""
    overrides: Sequence[str] = ()
    """``key=value`` config values fixed for every trial (and kept in best.yaml)"""
    preset_trial: bool = True
    """a fresh study's first trial is the preset's own strategy"""

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"


@dataclass
class TuneResult:
    """The study's outcome: the best trial and its strategy, what ran now, the files."""

    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    metric: str
    direction: str
    counts: dict[str, int]
    ran_now: list[int]
    requeued: dict[int, int] = field(default_factory=dict)
    """killed trial number -> the trial that retries its strategy"""
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# The trial budget
# --------------------------------------------------------------------------------------------
def budget_iterations(budget: float, preset_iterations: int) -> int:
    """Iterations of one trial: ``budget`` < 1 is a fraction of the preset's, >= 1 a count."""
    if not (isinstance(budget, (int, float)) and math.isfinite(budget)) or budget <= 0:
        raise ConfigError(f"--budget {budget!r} must be a fraction in (0, 1) or iterations >= 1")
    if budget < 1:
        return max(1, round(budget * preset_iterations))
    if not float(budget).is_integer():
        raise ConfigError(f"--budget {budget} above 1 counts iterations: give an integer")
    return int(budget)


def trial_schedule(config: BaseConfig, iterations: int, reports: int) -> dict[str, Any]:
    """The schedule fields of one trial: ``iterations``, an evaluation every ``iterations /
    reports`` (logged: ``log_every`` divides it), a checkpoint only at the end."""
    every = max(1, iterations // max(1, reports))
    log_every = math.gcd(every, int(config.log_every))
    return {
        "iterations": iterations,
        "eval_every": every,
        "log_every": log_every,
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
    }


# --------------------------------------------------------------------------------------------
# The study's plan (everything checked before anything is written)
# --------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    preset: Preset
    space: Space
    space_name: str
    headline: Headline
    fixed: dict[str, Any]
    schedule: dict[str, Any]
    settings: TuneSettings

    def config(self, params: Mapping[str, Any]) -> BaseConfig:
        """One trial's config: the preset, the fixed values, the strategy, the short schedule."""
        return self.preset.make_config({**self.fixed, **params, **self.schedule})


def _plan(settings: TuneSettings) -> _Plan:
    if settings.trials < 1:
        raise ConfigError(f"--trials {settings.trials} must be >= 1")
    if settings.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {settings.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if isinstance(settings.pruner, str) and settings.pruner not in PRUNERS:
        raise ConfigError(f"--pruner {settings.pruner!r}: choose one of {', '.join(PRUNERS)}")
    if settings.jobs < 1:
        raise ConfigError(f"--jobs {settings.jobs} must be >= 1")
    preset = get_preset(settings.preset)
    given = dict(parse_override(o) for o in settings.overrides)
    base = preset.make_config(given)  # a bad --set fails here, naming the field
    fixed = {k: _value(base, k) for k in given}  # typed (--set gives strings)
    headline = base.headline()
    if headline is None:
        raise ConfigError(
            f"preset {preset.name!r} ({type(base).__name__}) reports no held-out adaptation "
            "score to tune against; meta-rl tune runs the few-shot gradient, MAML-RL, Reptile "
            "and RL^2 presets"
        )
    if settings.space is not None:
        space, space_name = read_space(settings.space), str(settings.space)
    else:
        space_name, space = default_space(base)
    where = f"search space {space_name!r}"
    for name in space.names:
        if name in fixed:
            raise ConfigError(f"{where}: {name} is searched and also fixed by --set {name}=...")
    iterations = budget_iterations(settings.budget, base.iterations)
    schedule = trial_schedule(base, iterations, settings.reports)
    clash = sorted(set(space.names) & set(schedule))
    if clash:
        raise ConfigError(f"{where}: {', '.join(clash)} is the trial budget (use --budget)")
    plan = _Plan(preset, space, space_name, headline, fixed, schedule, settings)
    space.check(lambda v: preset.make_config({**fixed, **v, **schedule}), where)
    return plan


def _value(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return to_jsonable(config)


# --------------------------------------------------------------------------------------------
# Optuna pieces
# --------------------------------------------------------------------------------------------
def _sampler(plan: _Plan, offset: int = 0) -> Any:
    import optuna

    s = plan.settings
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed + offset)
    startup = max(2, min(10, s.trials // 3))
    return optuna.samplers.TPESampler(seed=s.seed + offset, n_startup_trials=startup)


def _pruner(plan: _Plan) -> Any:
    import optuna

    s = plan.settings
    if not isinstance(s.pruner, str):
        return s.pruner
    first = plan.schedule["eval_every"]
    if s.pruner == "median":
        startup = max(2, min(5, s.trials // 4))
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=first)
    if s.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _study(plan: _Plan, storage: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: one line of ours
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction=plan.headline.direction,
        sampler=_sampler(plan),
        pruner=_pruner(plan),
        load_if_exists=True,
    )
    mine = {
        "preset": plan.preset.name,
        "metric": plan.headline.metric,
        "iterations": plan.schedule["iterations"],
        "space": plan.space.to_mapping(),
        "fixed": plan.fixed,
    }
    held = study.user_attrs
    if not held:
        for k, v in mine.items():
            study.set_user_attr(k, v)
    else:
        differs = [k for k, v in mine.items() if json.dumps(held.get(k)) != json.dumps(v)]
        if differs:
            parts = [f"{k} ({held.get(k)!r} there, {mine[k]!r} now)" for k in differs]
            raise RunError(
                f"tune folder {str(plan.settings.out)!r} holds a study that differs in "
                f"{'; '.join(parts)}; choose another --out or repeat its settings to resume it"
            )
    return study


def _storage(url: str) -> Any:
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


class _TrialRun(Run):
    """A run folder whose logged evaluations are reported to an Optuna trial, which may
    prune it there (raising ``optuna.TrialPruned`` out of the trainer's loop)."""

    trial: Any = None
    metric: str = ""

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        super().log(step, metrics)
        if self.trial is None or self.metric not in metrics:
            return
        import optuna

        value = float(metrics[self.metric])
        if not math.isfinite(value):
            return
        self.trial.report(value, int(step))
        last = int(step) >= int(self.config.iterations)  # trained out: complete, not pruned
        if not last and self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", int(step))
            log.info(
                "trial %d pruned at step %d (%s = %.4g)",
                self.trial.number,
                step,
                self.metric,
                value,
            )
            raise optuna.TrialPruned(f"pruned at step {step}: {self.metric} = {value:.4g}")


def trial_folder(out: Path, number: int) -> Path:
    return out / f"trial-{number:04d}"


class _Objective:
    """Train one strategy into its run folder; its held-out score (picklable for --jobs)."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def __call__(self, trial: Any) -> float:
        try:
            return self._train(trial)
        except (*TRIAL_ERRORS, ConfigError) as err:  # the trial fails, the study goes on
            log.warning("trial %d failed: %s", trial.number, str(err).splitlines()[0])
            raise

    def _train(self, trial: Any) -> float:
        plan = self.plan
        params = plan.space.suggest(trial)
        try:
            config = plan.config(params)
        except ConfigError as err:  # a combination of values the config refuses
            trial.set_user_attr("error", str(err))
            raise
        folder = trial_folder(plan.settings.out, trial.number)
        trial.set_user_attr("run", str(folder))
        run = _TrialRun.create(folder, plan.preset.name, config, trainer=plan.preset.trainer)
        run.trial, run.metric = trial, plan.headline.metric
        with run:
            try:
                final = run.finish(plan.preset.train(run.config, run) or {})
            except (FloatingPointError, RuntimeError, ValueError) as err:
                # a strategy that diverges fails its trial (the one line meta-rl train prints);
                # anything else is a bug and stops the study
                problem = err if isinstance(err, RunError) else training_error(err, folder, config)
                if problem is None:
                    raise
                trial.set_user_attr("error", str(problem).splitlines()[0][:500])
                if problem is err:
                    raise
                raise problem from err
        value = final.get(plan.headline.metric)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"final {plan.headline.metric} = {value}")
            raise RunError(f"trial {trial.number}: final {plan.headline.metric} = {value}")
        log.info("trial %d: %s -> %s = %.5g", trial.number, params, plan.headline.metric, value)
        return float(value)


# --------------------------------------------------------------------------------------------
# Resume: count what is finished, re-queue what a killed process left running
# --------------------------------------------------------------------------------------------
def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        t for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get("killed")
    ]


def preset_strategy(plan: _Plan) -> dict[str, Any]:
    """The preset's own values of the searched fields that lie in the space (a field the
    preset leaves at ``None``, e.g. "the task's default inner_lr", is left out)."""
    base = plan.preset.make_config(plan.fixed)
    out = {}
    for p in plan.space.params:
        value = _value(base, p.name)
        if p.kind == "categorical":
            inside = value in p.choices
        else:
            inside = isinstance(value, (int, float)) and p.low <= value <= p.high
        if inside:
            out[p.name] = value
    return out


def _enqueue_preset(study: Any, plan: _Plan) -> None:
    """A fresh study's first trial is the preset's own strategy (the yardstick every other
    trial is judged against in the plots; fields it leaves unset are drawn)."""
    if study.get_trials(deepcopy=False):
        return
    values = preset_strategy(plan)
    study.enqueue_trial(values, user_attrs={"preset_strategy": True})
    log.info("trial 0 is the preset's strategy %s", values)


def _requeue_killed(study: Any, storage: Any) -> dict[int, int]:
    """Trials left RUNNING by a process that died (the tune folder's lock is ours, so none is
    alive): mark them failed (``killed``) and queue their strategy again. Returns killed ->
    queued trial number (the queued trial gets its number when it starts; -1 here)."""
    from optuna.trial import TrialState

    out: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "killed", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        out[t.number] = -1
        log.warning(
            "trial %d was running when its process died: marked failed (killed); its strategy "
            "%s is queued again and trains from scratch",
            t.number,
            t.params,
        )
    return out


def _optimize(plan: _Plan, n_trials: int, worker: int = 0) -> None:
    """Run ``n_trials`` trials of the study in this process (a --jobs worker, or the main).
    The sampler's seed moves on with the trials already there (a resumed study does not
    redraw its first strategies) and with the worker (workers do not draw the same ones)."""
    if n_trials < 1:
        return
    study = _study(plan, _storage(plan.settings.storage_url))
    study.sampler = _sampler(plan, len(study.get_trials(deepcopy=False)) + 100_003 * worker)
    catch = (*TRIAL_ERRORS, ConfigError)
    study.optimize(_Objective(plan), n_trials=n_trials, catch=catch, gc_after_trial=True)


def tune(settings: TuneSettings) -> TuneResult:
    """Run (or resume) the study of ``settings`` until it holds ``settings.trials`` finished
    trials; write best.yaml, the plots and summary.json; return the outcome."""
    from meta_rl import tune_report

    plan = _plan(settings)  # nothing is created before the plan is valid
    out = settings.out
    if out.exists() and not out.is_dir():
        raise RunError(f"tune folder {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire(out)
    except LockedError as err:
        raise RunError(str(err).replace("run folder", "tune folder")) from err
    try:
        storage = _storage(settings.storage_url)
        study = _study(plan, storage)
        before = {t.number for t in study.get_trials(deepcopy=False)}
        if settings.preset_trial:
            _enqueue_preset(study, plan)
        requeued = _requeue_killed(study, storage)
        missing = settings.trials - len(_finished(study))
        if missing > 0:
            log.info(
                "study %s: %d finished trials, running %d more (%d iterations each, %s)",
                out,
                settings.trials - missing,
                missing,
                plan.schedule["iterations"],
                plan.headline.metric,
            )
            jobs = min(settings.jobs, missing)
            if jobs == 1:
                _optimize(plan, missing)
            else:
                shares = [missing // jobs + (i < missing % jobs) for i in range(jobs)]
                spawn = multiprocessing.get_context("spawn")  # no fork of torch's threads
                with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
                    work = [pool.submit(_optimize, plan, n, i) for i, n in enumerate(shares)]
                    for f in work:
                        f.result()
        else:
            log.info("study %s already holds %d finished trials", out, settings.trials - missing)
        study = _study(plan, storage)
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.user_attrs.get("retry_of") in requeued:
                requeued[t.user_attrs["retry_of"]] = t.number
        ran = sorted(t.number for t in trials if t.number not in before)
        written = tune_report.write_outputs(study, plan_info(plan), out)
    finally:
        lock.release()
    best = written["best"] or {}
    counts: dict[str, int] = {}
    for row in written["rows"]:
        counts[row["state"].lower()] = counts.get(row["state"].lower(), 0) + 1
    return TuneResult(
        best_number=best.get("number"),
        best_value=best.get("value"),
        best_params=dict(best.get("params", {})),
        metric=plan.headline.metric,
        direction=plan.headline.direction,
        counts=counts,
        ran_now=ran,
        requeued=requeued,
        files=written["files"],
    )


def show_space(preset: str, overrides: Sequence[str] = ()) -> tuple[str, Space]:
    """(name, space) of the preset's default search space (``meta-rl tune --show-space``)."""
    config = get_preset(preset).make_config(dict(parse_override(o) for o in overrides))
    return default_space(config)


def plan_info(plan: _Plan) -> dict[str, Any]:
    """What the outputs say about the study (best.yaml header, summary.json)."""
    s = plan.settings
    return {
        "preset": plan.preset.name,
        "metric": plan.headline.metric,
        "direction": plan.headline.direction,
        "space": plan.space_name,
        "fixed": plan.fixed,
        "iterations": plan.schedule["iterations"],
        "preset_iterations": plan.preset.make_config(plan.fixed).iterations,
        "sampler": s.sampler,
        "pruner": s.pruner if isinstance(s.pruner, str) else type(s.pruner).__name__,
        "seed": s.seed,
        "trials": s.trials,
        "storage": s.storage_url,
    }
