"""One writer per run folder: an exclusive lock held for the life of a training process.

The lock is the file ``.lock`` in the run folder, holding the owner's pid, host and start time
as JSON, and an ``fcntl.flock`` on it (released by the kernel when the process dies, however it
dies). A second writer is refused with a :class:`LockedError` naming the holder. A lock file
left by a process that is gone is taken over: on this host when its pid is no longer running
(or the flock is free), never silently from another host (its owner's liveness cannot be
checked; the message says which file to delete). Imports nothing from ``meta_rl``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class LockedError(RuntimeError):
    """The run folder is being written by another process (the message names it)."""


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def read_holder(folder: str | Path) -> dict[str, Any] | None:
    """The owner recorded in ``folder``'s lock file (``None``: no lock file, or empty)."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"pid": None, "host": None, "raw": text[:80]}
    return data if isinstance(data, dict) else None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    started = f", started {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{started}"


class RunLock:
    """The held lock of a folder; :meth:`release` (idempotent) gives it back."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                self.path.unlink()  # while still holding the flock: no one holds a dead inode
        with contextlib.suppress(OSError):
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _refuse(folder: Path, holder: dict[str, Any] | None, why: str = "") -> LockedError:
    return LockedError(
        f"run folder {str(folder)!r} is being written by {describe(holder)}{why}; wait for it to "
        f"finish or stop it (one training process per run folder). If that process is gone, "
        f"delete {str(folder / LOCK_FILE)!r}"
    )


def acquire(folder: str | Path) -> RunLock:
    """Take the exclusive lock of ``folder`` (which must exist) or raise :class:`LockedError`."""
    folder = Path(folder)
    me = {
        "pid": os.getpid(),
        "host": _host(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(10):  # retry when a releasing holder unlinked the file under us
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flocked = _flock(fd)
        except BaseException:
            os.close(fd)
            raise
        if flocked is False:
            os.close(fd)
            raise _refuse(folder, read_holder(folder))
        if not _same_file(fd, folder / LOCK_FILE):
            os.close(fd)
            continue
        holder = read_holder(folder)
        try:
            _check_previous(folder, holder, me, flocked is True)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return RunLock(folder, fd)
    raise _refuse(folder, read_holder(folder), " (its lock file keeps changing)")


def _flock(fd: int) -> bool | None:
    """True: flock taken; False: held by another; None: flock not available here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # e.g. ENOLCK on a file system without locks: fall back on the pid check
    return True


def _check_previous(
    folder: Path, holder: dict[str, Any] | None, me: dict[str, Any], flocked: bool
) -> None:
    """Decide about a lock file that already names an owner (we may hold the flock)."""
    if not holder or holder.get("pid") is None:
        return
    pid, host = holder.get("pid"), holder.get("host")
    if host == me["host"] and pid == me["pid"]:
        return  # our own leftover (a Run of this process that was never closed)
    if host != me["host"]:
        if flocked:  # the flock is free, but a network file system may not share flocks
            raise _refuse(folder, holder, " (another host: its liveness cannot be checked)")
        raise _refuse(folder, holder)
    if not isinstance(pid, int) or not pid_alive(pid):
        log.warning("taking over the stale lock of %s: that process is gone", describe(holder))
        return
    if not flocked:  # no flock on this file system: a live pid holds the folder
        raise _refuse(folder, holder)
    # the flock is free, so the live process with that pid is not the writer (pid reused)
    log.warning("taking over the lock of %s: it no longer holds the folder", describe(holder))
