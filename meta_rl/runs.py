"""The run folder: a training run that describes itself and survives being killed.

::

    runs/maml-sine/
      config.json        preset, trainer, config class and config (enough to rebuild the model)
      metrics.csv        one row per logged step; columns grow when new metrics appear
      tb/                TensorBoard events
      checkpoints/       step_XXXXXXXX.json + .safetensors (see meta_rl.checkpoint)
      log.txt            the library's log lines during the run
      final.json         final metrics, written when the trainer returns
      .lock              while a training process writes the folder: its pid and host

A trainer is ``train(config, run) -> dict``. The convention for ``step``: the number of
iterations completed. After iteration ``i`` (0-based) a trainer logs ``run.log(i + 1, ...)`` and
saves ``run.save(i + 1, ...)``; on resume it continues at ``run.load_last().step``. Resuming
drops metric rows and TensorBoard events logged after the last checkpoint, so the iterations
between that checkpoint and the crash are neither lost nor counted twice.

A run folder is data. Loading one never imports code it names (its config class is looked up
among meta-rl's own, :func:`meta_rl.config.config_class`), never reads or writes outside it
(a checkpoint's tensors file lies in ``checkpoints/``; a ``data_root`` it names is not used),
and everything it holds is checked before use. One process writes a run folder at a time
(:mod:`meta_rl.runlock`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from meta_rl.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write,
    checkpoint_sidecar,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from meta_rl.config import BaseConfig, ConfigError, apply_overrides, config_class, diff
from meta_rl.runlock import LOCK_FILE, LockedError, RunLock, acquire

log = logging.getLogger(__name__)
metrics_log = logging.getLogger("meta_rl.runs.metrics")  # one line per run.log call

RUN_FORMAT = "meta-rl-run"
RUN_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
LOG_FILE = "log.txt"
FINAL_FILE = "final.json"

# Fields of the machine, not of what is learned: a loaded run does not choose them for the user.
LOCAL_KEYS = frozenset({"data_root"})
# Fields that may change when a run is resumed (the schedule and the machine).
RESUMABLE_KEYS = frozenset(
    {"iterations", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every"}
    | {"device", "num_threads"}
    | LOCAL_KEYS
)


class RunError(RuntimeError):
    """A run folder that cannot be created or resumed as asked. The message says why."""


class RunFinished(RunError):
    """Resuming a run that has finished (its ``final.json`` is written): nothing to do."""

    def __init__(self, message: str, final: dict[str, Any]) -> None:
        super().__init__(message)
        self.final = final


def due(step: int, every: int, last: int | None = None) -> bool:
    """True when ``step`` is a multiple of ``every`` (> 0) or the final step ``last``."""
    return (every > 0 and step % every == 0) or (last is not None and step == last)


def class_path(obj: type | Any) -> str:
    """The stable ``"module:qualname"`` of a class or of an object's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def read_run(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run folder."""
    path = Path(path)
    cfile = path / CONFIG_FILE
    if not cfile.exists():
        raise RunError(f"{str(path)!r} is not a run folder: it has no {CONFIG_FILE}")
    try:
        data = json.loads(cfile.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{str(cfile)!r} is unreadable or corrupt: {err}") from err
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise RunError(f"{str(cfile)!r} is not a meta-rl run config")
    if not isinstance(data.get("version"), int) or data["version"] > RUN_VERSION:
        raise RunError(
            f"{str(cfile)!r} has run format version {data.get('version')!r}; this meta-rl reads "
            f"up to {RUN_VERSION}: upgrade meta-rl"
        )
    for key, kind, what in (
        ("preset", str, "a preset name"),
        ("config_class", str, "a config class name"),
        ("config", dict, "a mapping of config fields"),
    ):
        if not isinstance(data.get(key), kind):
            got = "has none" if key not in data else f"has {data[key]!r}"
            raise RunError(
                f"{str(cfile)!r} is damaged: its {key!r} entry should be {what} but {got}; "
                "restore the file from a copy of the run, or start a new run"
            )
    return data


def load_config(path: str | Path) -> BaseConfig:
    """Rebuild the config object of a run folder from its ``config.json``.

    The class comes from meta-rl's closed registry (nothing the folder names is imported);
    fields of the machine (:data:`LOCAL_KEYS`, e.g. ``data_root``) are left at their defaults:
    set them yourself (``--set data_root=DIR`` when resuming)."""
    data = read_run(path)
    try:
        cls = config_class(data["config_class"])
    except ConfigError as err:
        raise RunError(f"run {str(path)!r} cannot be loaded: {err}") from err
    values = dict(data["config"])
    for key in sorted(LOCAL_KEYS & set(values)):
        if values[key] is not None:
            log.info(
                "not using %s=%r from %s (a run folder does not choose where meta-rl reads or "
                "writes data; pass --set %s=DIR)",
                key,
                values[key],
                Path(path) / CONFIG_FILE,
                key,
            )
        del values[key]
    try:
        return cls.from_dict(values)
    except ConfigError as err:
        raise RunError(f"config of run {str(path)!r} is not valid: {err}") from err


def run_of_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(sidecar, run folder) of a checkpoint file: a run's ``checkpoints/step_*.json`` or the
    ``.safetensors`` file one of them names."""
    sidecar = checkpoint_sidecar(path)
    folder = sidecar.parent
    if folder.name != "checkpoints" or not (folder.parent / CONFIG_FILE).exists():
        raise RunError(
            f"checkpoint {str(path)!r} is not inside a run folder's checkpoints/ folder: the "
            "run's config.json is needed to rebuild the policy"
        )
    return sidecar, folder.parent


# --------------------------------------------------------------------------------------------
# metrics.csv with growing columns
# --------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.exists() or path.stat().st_size == 0:
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _drop_torn_row(path: Path) -> bool:
    """Drop a last row cut short by a crash mid-append (the file does not end with a newline:
    appends write whole lines). Returns whether one was dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    if not data or data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    log.warning("%s: dropping a torn last row %r (a crash mid-write)", path, data[cut:][:60])
    atomic_write(path, data[:cut])
    return True


def _write_csv(path: Path, columns: list[str], rows: Iterable[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write(path, buf.getvalue().encode())


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as floats (missing cells are NaN)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    _, rows = _read_csv(path)
    return [
        {k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in rows
    ]


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise RunError(f"metric {name!r} is a tensor of shape {tuple(value.shape)}, not scalar")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise RunError(f"metric {name!r} = {value!r} is not a number") from err


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
class Run:
    """A run folder being written. Build it with :meth:`create` or :meth:`resume`."""

    def __init__(
        self,
        path: Path,
        info: dict[str, Any],
        config: BaseConfig,
        checkpoint: Checkpoint | None,
        show_progress: bool = False,
        lock: RunLock | None = None,
    ) -> None:
        self._lock = lock
        self._closed = True  # until the handlers below exist
        try:
            self._open(path, info, config, checkpoint, show_progress)
        except BaseException:
            self.close()
            raise

    def _open(
        self,
        path: Path,
        info: dict[str, Any],
        config: BaseConfig,
        checkpoint: Checkpoint | None,
        show_progress: bool,
    ) -> None:
        self.path = path
        self.info = info
        self.preset: str = info["preset"]
        self.config = config
        self.show_progress = show_progress
        self._checkpoint = checkpoint
        self.start_step = checkpoint.step if checkpoint is not None else 0
        self.checkpoint_dir = path / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = path / METRICS_FILE
        self._columns, _ = _read_csv(self.metrics_path)
        self._bar: Any = None
        self._bar_key: str | None = None

        # The log file gets the library's log lines while the run is open.
        self._handler = logging.FileHandler(path / LOG_FILE, encoding="utf-8")
        self._handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        self._handler.setLevel(logging.INFO)
        self._logger = logging.getLogger("meta_rl")
        self._old_level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)
        self._closed = False

        from torch.utils.tensorboard import SummaryWriter

        purge = self.start_step + 1 if checkpoint is not None or info.get("resumed") else None
        self.writer = SummaryWriter(log_dir=str(path / "tb"), purge_step=purge)

    # -- building ------------------------------------------------------------------------
    @staticmethod
    def describe(preset: str, config: BaseConfig, trainer: str | None = None) -> dict[str, Any]:
        """The ``config.json`` content of a run of ``preset`` with ``config``; ``trainer``: the
        trainer's stable name (``Preset.trainer``) when the caller knows it."""
        from meta_rl._version import __version__

        return {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "preset": preset,
            "trainer": trainer,
            "config_class": class_path(config),
            "config": config.to_dict(),
            "meta_rl_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def check_new(cls, out_dir: str | Path, preset: str, config: BaseConfig) -> None:
        """Raise :class:`RunError` unless ``out_dir`` can hold a new run (absent or empty)."""
        path = Path(out_dir)
        if path.exists() and not path.is_dir():
            raise RunError(f"run folder {str(path)!r} exists and is not a folder")
        if not path.exists() or not any(p.name != LOCK_FILE for p in path.iterdir()):
            return
        _lock(path).release()  # a folder being written: refused naming its writer
        cls._check_contents(path, preset, config)

    @staticmethod
    def _check_contents(path: Path, preset: str, config: BaseConfig) -> None:
        if not any(p.name != LOCK_FILE for p in path.iterdir()):
            return
        if not (path / CONFIG_FILE).exists():
            raise RunError(
                f"run folder {str(path)!r} is not empty and holds no run; choose another --out"
            )
        old = read_run(path)
        changed = diff(old.get("config", {}), config.to_dict())
        if old.get("preset") != preset:
            changed = ["preset", *changed]
        if changed:
            raise RunError(
                f"run folder {str(path)!r} holds a run of a different config (differs in: "
                f"{', '.join(changed)}); choose another --out, or pass --resume to continue "
                "that run"
            )
        raise RunError(
            f"run folder {str(path)!r} already holds a run of this config; pass --resume to "
            "continue it, or choose another --out"
        )

    @classmethod
    def create(
        cls,
        out_dir: str | Path,
        preset: str,
        config: BaseConfig,
        *,
        trainer: str | None = None,
        show_progress: bool = False,
    ) -> Run:
        """Start a new run in ``out_dir`` (absent or empty; anything else is a RunError)."""
        if not isinstance(config, BaseConfig):
            raise RunError(f"config must be a BaseConfig, got {type(config).__name__}")
        cls.check_new(out_dir, preset, config)
        path = Path(out_dir)
        made = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        try:
            cls._check_contents(path, preset, config)  # again, now that no one else writes
            info = cls.describe(preset, config, trainer)
            atomic_write(path / CONFIG_FILE, json.dumps(info, indent=2).encode())
        except BaseException:
            lock.release()
            if made:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if still empty
            raise
        run = cls(path, info, config, None, show_progress, lock)
        log.info("new run of preset %s (%s) in %s", preset, info["config_class"], path)
        return run

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        overrides: Iterable[str] | Mapping[str, Any] = (),
        *,
        preset: str | None = None,
        show_progress: bool = False,
    ) -> Run:
        """Reopen a run folder at its last checkpoint.

        ``overrides`` may change only the schedule (:data:`RESUMABLE_KEYS`, e.g. more
        ``iterations``); ``preset``, if given, must be the run's. Metric rows and TensorBoard
        events after the checkpoint's step are dropped.
        """
        path = Path(out_dir)
        info = read_run(path)
        if preset is not None and preset != info.get("preset"):
            raise RunError(
                f"run folder {str(path)!r} holds a run of preset {info.get('preset')!r}, "
                f"not {preset!r}; choose another --out for a new run"
            )
        lock = _lock(path)
        try:
            new, checkpoint, info = cls._prepare_resume(path, info, overrides)
        except BaseException:
            lock.release()
            raise
        return cls(path, info, new, checkpoint, show_progress, lock)

    @classmethod
    def _prepare_resume(
        cls, path: Path, info: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]
    ) -> tuple[BaseConfig, Checkpoint | None, dict[str, Any]]:
        """Check everything (config, overrides, the checkpoint), then write: config.json and
        metrics.csv change only once the run is known to be resumable. Holds the lock."""
        config = load_config(path)
        new = apply_overrides(config, overrides)
        changed = diff(config, new)
        fixed = [k for k in changed if k not in RESUMABLE_KEYS]
        if fixed:
            parts = [f"{k} ({_get(config, k)!r} -> {_get(new, k)!r})" for k in fixed]
            raise RunError(
                f"cannot change {', '.join(parts)} when resuming {str(path)!r}; only "
                f"{', '.join(sorted(RESUMABLE_KEYS))} may change. Start a new run with --out"
            )
        newest = latest_checkpoint(path / "checkpoints")
        try:
            checkpoint = load_checkpoint(newest) if newest is not None else None
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}. To resume from the previous checkpoint instead, delete {newest.name} "
                "from the checkpoints folder"
            ) from err
        step = checkpoint.step if checkpoint is not None else 0
        iterations = getattr(new, "iterations", None)
        final_file = path / FINAL_FILE
        if isinstance(iterations, int) and step >= iterations and final_file.exists():
            try:
                final = json.loads(final_file.read_text())
            except (OSError, ValueError):
                final = None
            if isinstance(final, dict):
                raise RunFinished(
                    f"run {str(path)!r} is finished: it trained {step} of {iterations} "
                    f"iterations and its results are in {final_file} (unchanged). To train "
                    f"longer, resume with --set iterations=N (N > {step})",
                    final,
                )

        # Everything checked: now write.
        if changed:
            log.info("resuming with changed %s", ", ".join(changed))
        if new.to_dict() != info["config"]:
            info = {**info, "config": new.to_dict()}
            atomic_write(path / CONFIG_FILE, json.dumps(info, indent=2).encode())
        metrics = path / METRICS_FILE
        torn = _drop_torn_row(metrics)
        columns, rows = _read_csv(metrics)
        kept = [r for r in rows if _row_step(r) <= step]
        if len(kept) != len(rows):
            _write_csv(metrics, columns, kept)
        log.info(
            "resuming %s at step %d (dropped %d metric rows logged after it%s)",
            path,
            step,
            len(rows) - len(kept),
            " and a torn one" if torn else "",
        )
        return new, checkpoint, {**info, "resumed": True}

    # -- writing -------------------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record scalar ``metrics`` at ``step`` (CSV, TensorBoard, log file, progress bar)."""
        values = {k: _scalar(k, v) for k, v in metrics.items()}
        for reserved in ("step", "time"):
            if reserved in values:
                raise RunError(f"metric name {reserved!r} is reserved by the run")
        row = {"step": int(step), "time": round(time.time(), 3), **values}
        new_cols = [k for k in row if k not in self._columns]
        if new_cols or not self.metrics_path.exists():
            columns = self._columns + new_cols if self._columns else list(row)
            _, rows = _read_csv(self.metrics_path)
            _write_csv(self.metrics_path, columns, [*rows, row])
            self._columns = columns
        else:
            with self.metrics_path.open("a", newline="") as f:
                csv.DictWriter(
                    f, fieldnames=self._columns, extrasaction="ignore", lineterminator="\n"
                ).writerow(row)
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=int(step))
        metrics_log.info("step %d: %s", step, " ".join(f"{k}={v:.6g}" for k, v in values.items()))
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            key = self._bar_key or next(iter(values), None)
            if key is not None and key in values:
                self._bar.set_postfix({key: f"{values[key]:.4g}"}, refresh=False)

    def save(
        self, step: int, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any] | None = None
    ) -> Path:
        """Checkpoint ``step``: model ``tensors`` plus trainer ``state`` (optimizer, RNGs...)."""
        keep = getattr(self.config, "keep_checkpoints", None)
        path = save_checkpoint(
            self.checkpoint_dir,
            int(step),
            tensors,
            state,
            config=self.config.to_dict(),
            keep=keep,
        )
        self.writer.flush()
        log.info("checkpoint at step %d: %s", step, path.name)
        return path

    def load_last(self, device: str | torch.device = "cpu") -> Checkpoint | None:
        """The newest checkpoint (``None`` for a fresh run)."""
        newest = latest_checkpoint(self.checkpoint_dir)
        if newest is None:
            return None
        if self._checkpoint is not None and self._checkpoint.path == newest:
            ck = self._checkpoint
            ck.tensors = {k: v.to(device) for k, v in ck.tensors.items()}
            return ck
        return load_checkpoint(newest, device)

    def progress(self, total: int, initial: int | None = None, key: str | None = None):
        """A tqdm bar over ``total`` steps, advanced by :meth:`log`, showing metric ``key``.

        Disabled unless the CLI asked for it (``show_progress``) and stderr is a terminal."""
        from tqdm.auto import tqdm

        if self._bar is not None:
            self._bar.close()
        enabled = self.show_progress and sys.stderr.isatty()
        start = self.start_step if initial is None else initial
        self._bar = tqdm(
            total=total, initial=start, disable=not enabled, desc=self.preset, dynamic_ncols=True
        )
        self._bar_key = key
        return self._bar

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Write the trainer's final metrics to ``final.json`` and return them as floats.

        A run resumed at its last step (it crashed after its final checkpoint) trained nothing
        in this process: the metrics logged at that step complete what the trainer returns."""
        final = {k: _scalar(k, v) for k, v in metrics.items()}
        iterations = getattr(self.config, "iterations", None)
        if self.info.get("resumed") and self.start_step == iterations:
            final = {**self._logged_at(self.start_step), **final}
        atomic_write(self.path / FINAL_FILE, json.dumps(final, indent=2).encode())
        return final

    def _logged_at(self, step: int) -> dict[str, float]:
        """The metrics logged at ``step`` (rows of that step merged, empty cells skipped)."""
        out: dict[str, float] = {}
        for row in read_metrics(self.metrics_path):
            if row.get("step") == step:
                out.update({k: v for k, v in row.items() if k not in ("step", "time")})
        return {k: v for k, v in out.items() if not math.isnan(v)}

    def close(self) -> None:
        """Flush and close the run's files and give back its lock (idempotent)."""
        if not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            if getattr(self, "writer", None) is not None:
                self.writer.close()
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._logger.setLevel(self._old_level)
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _lock(path: Path) -> RunLock:
    try:
        return acquire(path)
    except LockedError as err:
        raise RunError(str(err)) from err


def _row_step(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step", "nan"))
    except ValueError:
        return math.inf


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part) if dataclasses.is_dataclass(config) else config[part]
    return config
