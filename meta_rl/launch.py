"""``torchrun -m meta_rl ...``: the CLI's entry when torchrun started this process as one rank of
several (see :func:`meta_rl.cli.main`, which calls :func:`main`; nothing here imports the CLI).

Rank 0 runs the command as usual (it alone writes the run folder); ranks > 0 of ``train`` run
the same preset's trainer without a run folder, with rank 0's config (the trainer syncs it, see
:meth:`meta_rl.collectives.Context.sync_config`), so no file of rank 0's command line (YAML,
run folder) has to exist on their machine. Other commands run on rank 0 only. A preset whose
trainer does not shard its meta-batch (``Preset.data_parallel`` false) is refused: the other
ranks would only repeat rank 0's work.

A failure in a collective (a peer died or hung past the timeout) ends this rank with status 1
and a message; torchrun's agent then stops the remaining ranks with SIGTERM, which ends each of
them the same way (files are written atomically, so the last checkpoint is whole).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from meta_rl import collectives
from meta_rl.presets import PRESETS

__all__ = ["main", "RankStopped"]


class RankStopped(RuntimeError):
    """This rank was told to stop (SIGTERM: torchrun stops every rank once one has failed)."""


def main(
    argv: Sequence[str],
    command: Callable[[list[str]], int],
    train_preset: Callable[[list[str]], str | None],
    user_errors: tuple[type[BaseException], ...],
) -> int:
    """Join torchrun's process group and run ``argv`` as this rank's part.

    ``command(argv)`` runs the CLI command (rank 0); ``train_preset(argv)`` is the preset a
    ``train`` command line runs (``None``: another command, or one the CLI will reject; only
    rank 0 reads it); ``user_errors`` are the errors the CLI reports as bad input (a follower
    that meets one ends with status 2: the same error stops rank 0, which reports it)."""
    argv = list(argv)
    ctx = collectives.init()
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        preset = ctx.broadcast_object(train_preset(argv) if ctx.is_main else None)
        p = PRESETS.get(preset) if preset is not None else None
        if p is not None and not p.data_parallel:
            if ctx.is_main:
                both = sorted(q.name for q in PRESETS.values() if q.data_parallel)
                print(
                    f"meta-rl: error: preset {preset!r} (trainer {p.trainer}) has no "
                    f"data-parallel training; run it without torchrun. Data-parallel presets: "
                    f"{', '.join(both)}",
                    file=sys.stderr,
                )
            return 2
        if ctx.is_main:
            return command(argv)
        logging.getLogger("meta_rl").setLevel(logging.WARNING)
        if p is None:  # not a train command: rank 0 alone runs it
            return 0
        try:
            p.train(p.make_config(), None)
        except user_errors:  # the same error stops rank 0, which reports it
            return 2
        return 0
    except (RuntimeError, OSError) as err:
        if isinstance(err, RankStopped):
            why = str(err)
        elif _is_comm_error(err):
            first = str(err).splitlines()[0] if str(err) else ""
            why = f"lost contact with the other ranks ({type(err).__name__}: {first})"
        else:
            raise
        print(
            f"meta-rl: error: rank {ctx.rank} of {ctx.world_size} {why}; the job stops. "
            "Continue from the last checkpoint with the same command and --resume.",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        collectives.shutdown()


def _raise_stopped(signum: int, frame: Any) -> None:
    raise RankStopped(
        f"was stopped by {signal.Signals(signum).name} (torchrun stops every rank once one fails)"
    )


def _is_comm_error(err: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return any(s in text for s in ("gloo", "nccl", "connection reset", "timed out", "broken pipe"))
