"""One-line messages for the user mistakes and machine troubles ``meta-rl`` meets: a device
this machine lacks, nothing to resume, a full disk or read-only folder, numbers that overflow.
Each says what happened and what to do (``cli.main`` prints it as ``meta-rl: error: ...``)."""

from __future__ import annotations

import dataclasses
import errno
import re
from pathlib import Path
from typing import Any

from meta_rl.checkpoint import list_checkpoints
from meta_rl.config import ConfigError
from meta_rl.runs import CONFIG_FILE, RunError


def check_device(device: str, flag: str) -> None:
    """A ConfigError unless ``device`` names a torch device this machine has (before any run
    folder is created or any family built)."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"{flag}={device} is not a device: choose one of auto, cpu, cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"{flag}={device} but CUDA is not available on this machine; use {flag}=cpu "
                f"(or {flag}=auto, which picks CUDA when there is one)"
            )


def nothing_to_resume(out: Path | None) -> str:
    where = "does not exist" if out is None or not out.exists() else "holds no run (no config.json)"
    return (
        f"nothing to resume: {str(out)!r} {where}. To start a run there, name a preset: "
        f"meta-rl train PRESET --out {out}"
    )


_NUMERIC = re.compile(
    r"overflow|\bnan\b|\binf\b|non-finite|not finite|satisfy the constraint|invalid values",
    re.IGNORECASE,
)


def training_error(err: BaseException, path: Path, config: Any) -> RunError | None:
    """One line for a failure inside a trainer that is not a bug of meta-rl: a full disk or a
    read-only folder, or numbers that overflowed (``None``: anything else)."""
    if isinstance(err, OSError):
        return RunError(os_error_text(err, path, started=True))
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, FloatingPointError):  # a trainer's own divergence check: says what to do
        return RunError(f"training stopped: {first}{_kept(path)}")
    if _NUMERIC.search(str(err)):
        steps = _step_sizes(config)
        hint = f"lower {steps}" if steps else "lower the step sizes"
        return RunError(
            f"training stopped: the numbers overflowed or became NaN ({type(err).__name__}: "
            f"{first}); the step size is too large for this problem: {hint}, or change the "
            f"seed{_kept(path)}"
        )
    return None


def _kept(path: Path) -> str:
    """What is left of the run on disk, for the end of a message."""
    found = list_checkpoints(path / "checkpoints")
    if not found:
        return " (no checkpoint was written)"
    return f". Its last checkpoint (step {found[-1][0]}) is intact"


_STEP_SIZES = ("lr", "step_size", "max_kl")


def _step_sizes(config: Any) -> str:
    found = [
        f"{f.name} (now {getattr(config, f.name):g})"
        for f in dataclasses.fields(config)
        if (f.name in _STEP_SIZES or f.name.endswith("_lr"))
        and isinstance(getattr(config, f.name), float)
    ]
    return " / ".join(found)


def os_error_text(err: OSError, out: Path | None, started: bool) -> str:
    what = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free some disk space"
    elif err.errno == errno.EROFS:
        todo = "the file system is read-only: choose a writable --out"
    elif err.errno in (errno.EACCES, errno.EPERM):
        todo = "you may not write there: choose another --out"
    else:
        todo = "fix the cause"
    text = f"cannot write the run folder: {what}{where}; {todo}"
    if started and out is not None and (out / CONFIG_FILE).exists():
        found = list_checkpoints(out / "checkpoints")
        kept = f"its last checkpoint (step {found[-1][0]}) is intact; " if found else ""
        text += f". Files are written atomically: {kept}then: meta-rl train --resume --out {out}"
    return text
