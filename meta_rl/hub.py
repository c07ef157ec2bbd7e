"""Share agents on the Hugging Face Hub with the official client (``pip install 'meta-rl[hub]'``).

- :func:`push` (``meta-rl push RUN --repo ORG/NAME``): packs a finished, evaluated run folder
  (:func:`meta_rl.card.pack_run`: weights, config, final metrics, evaluation report and plot,
  a ``README.md`` model card) and uploads it with ``HfApi.create_repo`` + ``HfApi.upload_folder``.
- :func:`download` (``meta_rl.load("hf://ORG/NAME[@revision]")``): ``snapshot_download`` of the
  repository (the client's cache; ``HF_HUB_OFFLINE=1`` reads the cache only), then a plain copy
  of the snapshot into meta-rl's cache so the loader reads real files inside one folder (the
  client's cache links snapshot files to ``blobs/``, and a run folder's checkpoint must not point
  outside its folder).

The files are safetensors and JSON: loading one executes nothing from the repository, so no trust
switch is needed (SB3's zip files hold pickle and need one).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meta_rl.card import CARD_FILE, pack_run, packed_files
from meta_rl.runs import CONFIG_FILE, RunError

log = logging.getLogger(__name__)

__all__ = ["PREFIX", "HubError", "PushResult", "RepoRef", "download", "parse", "push"]

PREFIX = "hf://"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"^({_PART})/({_PART})$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
INSTALL_HINT = "pip install 'meta-rl[hub]'"


class HubError(RunError):
    """A malformed repository id, a missing client or a failed download (the message says
    which and how to fix it)."""


@dataclass(frozen=True)
class RepoRef:
    """A model repository on the Hub and the revision to read (branch, tag or commit)."""

    repo_id: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision != "main" else "")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is ``ORG/NAME`` (letters, digits, ``-``, ``_``, ``.``), else a
    :class:`HubError` showing the expected form."""
    if not isinstance(repo_id, str) or not _REPO.match(repo_id) or ".." in repo_id:
        raise HubError(
            f"{repo_id!r} is not a Hub repository id: expected ORG/NAME (letters, digits, "
            "'-', '_', '.'), e.g. my-org/rl2-bandits"
        )
    return repo_id


def parse(spec: str) -> RepoRef:
    """``"hf://ORG/NAME[@revision]"`` as a :class:`RepoRef` (a :class:`HubError` naming the
    expected form when malformed)."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        raise HubError(f"{spec!r} is not a Hub address: expected hf://ORG/NAME[@revision]")
    body = spec[len(PREFIX) :]
    repo_id, _, revision = body.partition("@")
    if "@" in body and not _REVISION.match(revision):
        raise HubError(
            f"{spec!r} has a malformed revision {revision!r}: expected hf://ORG/NAME[@revision] "
            "with a branch, tag or commit hash"
        )
    if not _REPO.match(repo_id) or ".." in repo_id:
        raise HubError(
            f"{spec!r} is not a Hub address: expected hf://ORG/NAME[@revision] (ORG and NAME: "
            "letters, digits, '-', '_', '.')"
        )
    return RepoRef(repo_id, revision or "main")


def _client() -> Any:
    try:
        import huggingface_hub
    except ImportError as err:
        raise HubError(f"sharing on the Hugging Face Hub needs its client: {INSTALL_HINT}") from err
    return huggingface_hub


def cache_root() -> Path:
    """Where downloaded agents are copied: ``$META_RL_CACHE`` or ``~/.cache/meta-rl``."""
    return Path(os.environ.get("META_RL_CACHE") or Path.home() / ".cache" / "meta-rl")


def _copy_snapshot(snapshot: Path, dest: Path) -> Path:
    """A real-file copy of a snapshot folder (links followed), written beside ``dest`` and
    renamed into place; an existing copy of the same commit is reused."""
    if (dest / CONFIG_FILE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        for path in sorted(snapshot.rglob("*")):
            rel = path.relative_to(snapshot)
            if path.is_file() and not rel.parts[0].startswith("."):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, tmp / rel)  # follows the cache's links to blobs/
        try:
            tmp.rename(dest)
        except OSError:  # another process put the same commit there first
            if not (dest / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download(spec: str | RepoRef, cache_dir: str | Path | None = None) -> Path:
    """The local run folder of ``hf://ORG/NAME[@revision]``: the repository's snapshot from the
    client (``snapshot_download``; online, or from its cache with ``HF_HUB_OFFLINE=1``), copied
    into :func:`cache_root`. ``cache_dir``: the client's cache (default: its own setting)."""
    ref = spec if isinstance(spec, RepoRef) else parse(spec)
    hub = _client()
    from meta_rl._version import __version__

    try:
        snapshot = hub.snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            cache_dir=cache_dir,
            library_name="meta-rl",
            library_version=__version__,
        )
    except hub.errors.LocalEntryNotFoundError as err:
        raise HubError(
            f"{ref} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {err}"
        ) from err
    except hub.errors.HfHubHTTPError as err:
        raise HubError(f"{ref} cannot be downloaded: {err}") from err
    snapshot = Path(snapshot)
    if not (snapshot / CONFIG_FILE).is_file():
        raise HubError(f"{ref} is not a meta-rl agent: its repository has no {CONFIG_FILE}")
    owner, name = ref.repo_id.split("/")
    dest = cache_root() / "hub" / f"{owner}--{name}" / snapshot.name
    return _copy_snapshot(snapshot, dest)


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` did: the repository, the files sent and the client's answer (a
    commit URL; ``None`` for a dry run)."""

    repo_id: str
    folder: Path
    files: list[str]
    url: str | None


def push(
    run: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: str | Path | None = None,
    report: str | Path | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload a finished, evaluated run folder to the Hub repository ``repo_id`` (created if
    absent; ``private`` for a private one) as :func:`meta_rl.card.pack_run` packs it.

    ``dry_run``: write the folder that would be uploaded into this (new or empty) folder and
    stop before the client is called. ``report``: the evaluation ``report.json`` to ship
    (default: the run's ``evaluation-test/report.json``). ``token``: a Hub token (default: the
    client's login)."""
    check_repo_id(repo_id)
    name = repo_id.split("/")[1]
    if dry_run is not None:
        folder = pack_run(run, dry_run, name, report, f"{PREFIX}{repo_id}")
        files = packed_files(folder)
        log.info("dry run: %d files for %s in %s", len(files), repo_id, folder)
        return PushResult(repo_id, folder, files, None)
    hub = _client()
    with tempfile.TemporaryDirectory(prefix="meta-rl-push-") as tmp:
        folder = pack_run(run, Path(tmp) / name, name, report, f"{PREFIX}{repo_id}")
        files = packed_files(folder)
        api = hub.HfApi(token=token, library_name="meta-rl")
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or f"meta-rl: upload {name} ({CARD_FILE}, weights)",
        )
    url = getattr(info, "commit_url", None) or (str(info) if info is not None else None)
    log.info("pushed %d files to %s", len(files), repo_id)
    return PushResult(repo_id, folder, files, url)
