"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar. No pickle.

A checkpoint of step ``s`` in folder ``d`` is two files:

- ``d/step_{s:08d}.json``: the sidecar (format name and version, step, config, the JSON part of
  the trainer's state, and the name, size and SHA-256 of the tensors file). Writing it is the
  commit: a checkpoint exists when its sidecar does.
- ``d/step_{s:08d}-{token}.safetensors``: every tensor (model weights under their own names,
  tensors found inside ``state`` under ``"state/..."`` keys).

``state`` may nest dicts, lists and tuples of tensors, numbers, strings, booleans and ``None``
(an optimizer's ``state_dict()``, RNG states from :func:`rng_state` ...); tensors go to the
safetensors file, the structure to JSON, and :func:`load_checkpoint` rebuilds it exactly
(int dict keys and tuples included), so ``optimizer.load_state_dict`` takes it back.

Both files are written atomically (temporary file in the same folder, fsync, ``os.replace``),
the tensors file first under a fresh name, so a crash at any point leaves the previous
checkpoints intact. ``keep`` bounds how many checkpoints stay on disk.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

log = logging.getLogger(__name__)

FORMAT = "meta-rl-checkpoint"
FORMAT_VERSION = 1
_SIDECAR = re.compile(r"^step_(\d+)\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or from a newer format (names the file)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` (model weights), ``state`` (rebuilt trainer state)."""

    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any] | None
    path: Path


# --------------------------------------------------------------------------------------------
# Atomic file writes
# --------------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0o600


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# State <-> (tensors, JSON structure)
# --------------------------------------------------------------------------------------------
def flatten_state(state: Any, prefix: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested ``state`` into a JSON-able structure and ``{key: tensor}``."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, key: str) -> Any:
        if key in tensors:  # a dict key holding "/" could repeat a path: keep names unique
            key = f"{key}#{len(tensors)}"
        if isinstance(x, torch.Tensor):
            tensors[key] = x
            return {"__tensor__": key}
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                raise CheckpointError(f"state entry {key} is an object array (not storable)")
            tensors[key] = torch.from_numpy(np.ascontiguousarray(x))
            return {"__ndarray__": key}
        if isinstance(x, Mapping):
            if all(isinstance(k, str) for k in x) and not any(k.startswith("__") for k in x):
                return {k: walk(v, f"{key}/{k}") for k, v in x.items()}
            items = []
            for k, v in x.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise CheckpointError(f"state key {k!r} at {key} is not a str/int/float/bool")
                items.append([k, walk(v, f"{key}/{k}")])
            return {"__dict__": items}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{key}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{key}/{i}") for i, v in enumerate(x)]
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return x.item()
        if x is None or isinstance(x, (str, int, float, bool)):
            return x
        raise CheckpointError(
            f"state entry {key} has type {type(x).__name__}; allowed: tensors, arrays, dicts, "
            "lists, tuples, str, int, float, bool, None"
        )

    return walk(state, prefix), tensors


def unflatten_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__ndarray__" in x:
                return tensors[x["__ndarray__"]].numpy()
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
            if "__dict__" in x:
                return {k: walk(v) for k, v in x["__dict__"]}
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(structure)


# --------------------------------------------------------------------------------------------
# RNG states as JSON-able data
# --------------------------------------------------------------------------------------------
def rng_state(gen: np.random.Generator | torch.Generator) -> dict[str, Any]:
    """The state of a numpy or torch generator as JSON-able data."""
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": gen.bit_generator.state}
    if isinstance(gen, torch.Generator):
        raw = gen.get_state().numpy().tobytes()
        return {
            "kind": "torch",
            "device": str(gen.device),
            "state": base64.b64encode(raw).decode(),
        }
    raise CheckpointError(f"rng_state: {type(gen).__name__} is not a numpy or torch Generator")


def set_rng_state(gen: np.random.Generator | torch.Generator, data: Mapping[str, Any]) -> None:
    """Restore a state captured by :func:`rng_state` into ``gen`` (same kind)."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    try:
        if isinstance(gen, np.random.Generator) and kind == "numpy":
            gen.bit_generator.state = data["state"]
            return
        if isinstance(gen, torch.Generator) and kind == "torch":
            raw = np.frombuffer(base64.b64decode(data["state"]), dtype=np.uint8).copy()
            gen.set_state(torch.from_numpy(raw))
            return
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"the saved {kind} generator state is damaged ({type(err).__name__}: {err})"
        ) from err
    raise CheckpointError(f"cannot restore a {kind!r} generator state into a {type(gen).__name__}")


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------
def sidecar_path(directory: str | Path, step: int) -> Path:
    """The sidecar path of checkpoint ``step`` in ``directory``."""
    return Path(directory) / f"step_{step:08d}.json"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, sidecar path)`` of every committed checkpoint, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _SIDECAR.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The sidecar of the newest checkpoint in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, t in tensors.items() if not _finite(t)]


def _finite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    # a NaN or inf element makes the sum NaN or inf; a sum that overflows is checked exactly
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _bad_text(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return f"NaN or inf in tensor{'s' if len(names) > 1 else ''} {shown}"


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensor {k!r} is a {type(t).__name__}, not a torch.Tensor")
        out[k] = t.detach().to("cpu", copy=True).contiguous()  # own storage: no shared memory
    return out


def save_checkpoint(
    directory: str | Path,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write checkpoint ``step`` into ``directory`` atomically; return the sidecar's path.

    ``tensors`` are saved under their names (no key may start with ``"state/"``); ``state`` is
    any nesting of JSON-able values and tensors. Keeps the ``keep`` newest checkpoints.
    """
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"step={step!r} must be a non-negative integer")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for k in tensors:
        if k.startswith("state/"):
            raise CheckpointError(f"tensor name {k!r} is reserved (the 'state/' prefix)")
    structure, state_tensors = flatten_state(dict(state or {}))
    all_tensors = _prepare({**tensors, **state_tensors})
    bad = non_finite(all_tensors)
    if bad:
        found = list_checkpoints(directory)
        kept = f"the last one (step {found[-1][0]}) is kept" if found else "there is none before"
        raise CheckpointError(
            f"checkpoint of step {step} not written: {_bad_text(bad)} (training diverged); {kept}"
        )

    blob = safetensors.torch.save(all_tensors, metadata={"format": FORMAT})
    tensors_name = f"step_{step:08d}-{uuid.uuid4().hex[:8]}.safetensors"
    atomic_write(directory / tensors_name, blob)

    sidecar = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "config": dict(config) if config is not None else None,
        "state": structure,
        "tensor_names": sorted(tensors),
        "tensors_file": tensors_name,
        "tensors_bytes": len(blob),
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    try:
        text = json.dumps(sidecar, indent=1, allow_nan=True)
    except (TypeError, ValueError) as err:
        with contextlib.suppress(OSError):
            (directory / tensors_name).unlink()
        raise CheckpointError(f"checkpoint config/state is not JSON-able: {err}") from err
    path = sidecar_path(directory, step)
    atomic_write(path, text.encode())
    log.debug("saved checkpoint %s", path)
    _prune(directory, keep)
    return path


def _prune(directory: Path, keep: int | None) -> None:
    """Drop checkpoints beyond the ``keep`` newest and tensors files no sidecar refers to."""
    found = list_checkpoints(directory)
    if keep is not None and keep > 0 and len(found) > keep:
        for _, p in found[: len(found) - keep]:
            with contextlib.suppress(OSError):
                p.unlink()  # the sidecar first: a half-pruned checkpoint is not "committed"
        found = found[len(found) - keep :]
    referenced = set()
    for _, p in found:
        try:
            referenced.add(json.loads(p.read_text()).get("tensors_file"))
        except (OSError, ValueError, AttributeError):
            return  # an unreadable sidecar: leave every file alone
    for p in directory.glob("step_*.safetensors"):
        if p.name not in referenced:
            with contextlib.suppress(OSError):
                p.unlink()
    for p in directory.glob(".step_*.tmp"):  # leftovers of a crash mid-write
        with contextlib.suppress(OSError):
            p.unlink()


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, allow_non_finite: bool = False
) -> Checkpoint:
    """Load a checkpoint from its sidecar path (or a folder: its newest checkpoint).

    Everything in the sidecar is checked before it is used: its step is a non-negative integer
    equal to the step in the file name, its tensors file is a file of the same folder whose size
    and SHA-256 match, its state is well formed. Weights holding NaN or inf are refused unless
    ``allow_non_finite``. Any problem is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if path.is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint in folder {str(path)!r}")
        path = newest
    if not path.exists():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    meta = read_sidecar(path)
    tpath = path.parent / meta["tensors_file"]
    try:
        blob = tpath.read_bytes()
    except OSError as err:
        raise CheckpointError(
            f"tensors file {str(tpath)!r} of checkpoint {str(path)!r} cannot be read: "
            f"{err.strerror}"
        ) from err
    if len(blob) != meta["tensors_bytes"]:
        raise CheckpointError(
            f"tensors file {str(tpath)!r} is truncated or corrupt: {len(blob)} bytes, "
            f"expected {meta['tensors_bytes']}"
        )
    if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
        raise CheckpointError(f"tensors file {str(tpath)!r} is corrupt: SHA-256 mismatch")
    try:
        everything = safetensors.torch.load(blob)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"tensors file {str(tpath)!r} is corrupt: {err}") from err
    state_tensors = {k: v for k, v in everything.items() if k.startswith("state/")}
    tensors = {k: v for k, v in everything.items() if not k.startswith("state/")}
    names = meta.get("tensor_names")
    if names is not None and sorted(names) != sorted(tensors):
        raise CheckpointError(
            f"checkpoint {str(path)!r} lists tensors {sorted(names)} but its tensors file "
            f"holds {sorted(tensors)}"
        )
    bad = non_finite(tensors)
    if bad and not allow_non_finite:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds non-finite weights ({_bad_text(bad)}): the training "
            "that wrote it had diverged. Delete it (both files) to use the previous checkpoint"
        )
    try:
        state = unflatten_state(meta["state"], state_tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupt state: {err!r}") from err
    return Checkpoint(
        step=meta["step"],
        tensors={k: v.to(device) for k, v in tensors.items()},
        state=_to(state, device),
        config=meta.get("config"),
        path=path,
    )


def _to(state: Any, device: str | torch.device) -> Any:
    """``state`` with its tensors on ``device`` (as loading always did)."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_to(v, device) for v in state]
    if isinstance(state, tuple):
        return tuple(_to(v, device) for v in state)
    return state


def read_sidecar(path: Path) -> dict[str, Any]:
    """The checked JSON sidecar of checkpoint ``path`` (see :func:`load_checkpoint`)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a meta-rl checkpoint sidecar")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}; this meta-rl reads up to "
            f"version {FORMAT_VERSION}: upgrade meta-rl to load it"
        )
    for key in ("step", "tensors_file", "tensors_sha256", "tensors_bytes", "state"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks the field {key!r}")

    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {str(path)!r} is not valid: {field} = {meta[field]!r} {why}"
        )

    step = meta["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step", "is not a non-negative integer")
    m = _SIDECAR.match(path.name)
    if m and int(m.group(1)) != step:
        raise bad("step", f"does not match its file name {path.name} (step {int(m.group(1))})")
    name = meta["tensors_file"]
    if (
        not isinstance(name, str)
        or not name.endswith(".safetensors")
        or name != Path(name).name
        or "/" in name
        or "\\" in name
        or name.startswith(".")
    ):
        raise bad("tensors_file", "is not a .safetensors file of the checkpoint's own folder")
    target = path.parent / name
    if target.is_symlink() and target.resolve().parent != path.parent.resolve():
        raise bad("tensors_file", "links outside the checkpoint's folder")
    size = meta["tensors_bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad("tensors_bytes", "is not a byte count")
    if not isinstance(meta["tensors_sha256"], str):
        raise bad("tensors_sha256", "is not a SHA-256 hex digest")
    if not isinstance(meta["state"], dict):
        raise bad("state", "is not a mapping")
    names = meta.get("tensor_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise bad("tensor_names", "is not a list of names")
    if meta.get("config") is not None and not isinstance(meta["config"], dict):
        raise bad("config", "is not a mapping")
    return meta


def checkpoint_sidecar(path: str | Path) -> Path:
    """The sidecar of a checkpoint file: ``path`` itself (``step_*.json``) or the sidecar that
    names ``path`` as its tensors file (``.safetensors``); else a :class:`CheckpointError`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        for _, sidecar in list_checkpoints(path.parent):
            try:
                named = json.loads(sidecar.read_text()).get("tensors_file")
            except (OSError, ValueError, AttributeError):
                continue
            if named == path.name:
                return sidecar
        raise CheckpointError(
            f"{str(path)!r} is not the tensors file of any checkpoint in its folder (no "
            "step_*.json sidecar names it)"
        )
    if not _SIDECAR.match(path.name):
        raise CheckpointError(
            f"{str(path)!r} is neither a run folder nor a checkpoint file (a run folder's "
            "checkpoints/step_XXXXXXXX.json or its .safetensors file)"
        )
    return path


def load_usable_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The newest checkpoint of ``directory`` that loads; when newer ones are damaged, a warning
    names them and the one used. Raises the newest one's :class:`CheckpointError` when none
    loads (or :class:`CheckpointError` when there is none)."""
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(f"no checkpoint in folder {str(directory)!r}")
    errors: list[tuple[Path, CheckpointError]] = []
    for _, sidecar in reversed(found):
        try:
            ck = load_checkpoint(sidecar, device)
        except CheckpointError as err:
            errors.append((sidecar, err))
            continue
        if errors:
            log.warning(
                "using checkpoint %s (step %d): the newer %s cannot be used (%s)",
                sidecar.name,
                ck.step,
                ", ".join(p.name for p, _ in errors),
                errors[0][1],
            )
        return ck
    raise errors[0][1]
