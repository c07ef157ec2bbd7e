"""The zoo: meta-trained agents shipped inside the package, loadable offline.

``meta_rl.load("zoo:rl2-bandits")`` loads the agent stored in ``meta_rl/zoo/rl2-bandits/`` (a
packed run folder, see :mod:`meta_rl.card`: config, final weights, final metrics, the held-out
evaluation report and plot, a model card). ``meta-rl zoo`` lists them with their held-out score.
Each was trained by its preset as shipped and evaluated on held-out tasks by
``scripts/build_zoo.py``, which rebuilds the zoo; ``tests/test_zoo.py`` checks that every agent
loads, runs under stable-baselines3's ``evaluate_policy`` and still scores its card's result
within the card's 95% CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meta_rl.card import CARD_FILE, Headline, algorithm_tags, find_report, headline, read_report
from meta_rl.report import Report
from meta_rl.runs import CONFIG_FILE, RunError, read_run

__all__ = ["PREFIX", "ZOO_DIR", "ZooEntry", "ZooError", "entries", "entry", "names", "resolve"]

PREFIX = "zoo:"
ZOO_DIR = Path(__file__).resolve().parent
"""where the zoo's agents are stored: this package's folder, one packed run folder per agent
(package data: in the wheel, and read in place by editable installs)"""


class ZooError(RunError):
    """An unknown zoo agent (the message lists the available ones)."""


@dataclass(frozen=True)
class ZooEntry:
    """One agent of the zoo: its folder, what trained it and its held-out result."""

    name: str
    path: Path
    preset: str
    env_id: str
    algorithm: str
    """the algorithm tags of its run, joined by ``/`` (e.g. ``maml/maml/trpo``)"""
    report: Report
    """its held-out evaluation (the card's numbers)"""

    @property
    def headline(self) -> Headline:
        """The card's held-out result (:func:`meta_rl.card.headline`)."""
        return headline(self.report)

    @property
    def card(self) -> Path:
        """The model card (``README.md``)."""
        return self.path / CARD_FILE


def names(root: Path | None = None) -> list[str]:
    """The zoo's agent names, sorted."""
    root = ZOO_DIR if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file())


def _unknown(name: str, root: Path | None) -> ZooError:
    available = ", ".join(names(root)) or "none (the package was built without its zoo)"
    return ZooError(f"no zoo agent called {name!r}; available: {available}")


def entry(name: str, root: Path | None = None) -> ZooEntry:
    """The zoo agent ``name`` (a :class:`ZooError` listing the available names if unknown)."""
    if name not in names(root):
        raise _unknown(name, root)
    path = (ZOO_DIR if root is None else Path(root)) / name
    info = read_run(path)
    return ZooEntry(
        name=name,
        path=path,
        preset=info["preset"],
        env_id=str(info["config"].get("env_id", "")),
        algorithm="/".join(algorithm_tags(info)),
        report=read_report(find_report(path)),
    )


def entries(root: Path | None = None) -> list[ZooEntry]:
    """Every agent of the zoo, by name."""
    return [entry(n, root) for n in names(root)]


def resolve(spec: str, root: Path | None = None) -> Path:
    """The folder of ``"zoo:NAME"`` (a :class:`ZooError` listing the names if unknown)."""
    if not spec.startswith(PREFIX):
        raise ZooError(f"{spec!r} is not a zoo name: write zoo:NAME (available: {names(root)})")
    name = spec[len(PREFIX) :]
    if name not in names(root):
        raise _unknown(name, root)
    return (ZOO_DIR if root is None else Path(root)) / name
