"""Search spaces of learning strategies for ``meta-rl tune``: which config fields vary, over
what range, and the default spaces of the gradient presets and RL^2.

A space is a mapping of config field names (dotted for nested fields) to a range, written in
YAML (``meta-rl tune PRESET --space FILE.yaml``; ``meta-rl tune PRESET --show-space`` prints the
preset's default, ready to copy and edit)::

    inner_lr: {low: 0.001, high: 0.5, log: true}   # a float range (log-uniform)
    inner_steps: {low: 1, high: 5}                  # an int range (both ends integers)
    algorithm: [maml, fomaml, metasgd]              # a choice
    outer_lr: {type: float, low: 1e-4, high: 1e-2, log: true, step: null}

Every name and every end of every range is checked against the preset's config before a trial
runs: an unknown field or a value the field refuses is a :class:`~meta_rl.config.ConfigError`
naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from meta_rl.config import ConfigError, load_yaml

__all__ = ["Param", "Space", "default_space", "read_space", "DEFAULT_SPACES"]

Kind = Literal["float", "int", "categorical"]
_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: a config field and the values it may take."""

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this field."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """Values that stand for the whole range when the space is checked (ends, choices)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def to_mapping(self) -> Any:
        if self.kind == "categorical":
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.kind == "float" and isinstance(self.low, int) and isinstance(self.high, int):
            out["type"] = "float"
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    @classmethod
    def parse(cls, name: str, spec: Any, where: str) -> Param:
        """A parameter from its YAML form (see the module docstring); errors name ``where``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: a field name must be a string, got {name!r}")
        if isinstance(spec, (list, tuple)):
            spec = {"choices": list(spec)}
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"{where}: {name} = {spec!r} is not a range: write {{low: A, high: B}} (float or "
                "int, optional log: true / step: S) or a list of choices"
            )
        unknown = sorted(set(map(str, spec)) - _KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: {name} has unknown key(s) {', '.join(unknown)} (allowed: "
                f"{', '.join(sorted(_KEYS))})"
            )
        if "choices" in spec:
            return cls._categorical(name, spec, where)
        return cls._numeric(name, spec, where)

    @classmethod
    def _categorical(cls, name: str, spec: Mapping[str, Any], where: str) -> Param:
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}: {name}: choices must be a non-empty list")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ConfigError(
                    f"{where}: {name}: choice {c!r} is not a number, string, boolean or null"
                )
        if spec.get("type", "categorical") != "categorical" or set(spec) - {"choices", "type"}:
            raise ConfigError(f"{where}: {name}: a list of choices takes no type/low/high/log")
        return cls(name, "categorical", choices=tuple(choices))

    @classmethod
    def _numeric(cls, name: str, spec: Mapping[str, Any], where: str) -> Param:
        low, high = spec.get("low"), spec.get("high")
        for end, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{where}: {name}: {end} = {v!r} must be a finite number")
        kind = spec.get("type") or (
            "int" if isinstance(low, int) and isinstance(high, int) else "float"
        )
        if kind not in ("float", "int"):
            raise ConfigError(f"{where}: {name}: type = {kind!r}: choose float, int or categorical")
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(
                f"{where}: {name}: an int range needs integer ends, got {low}, {high}"
            )
        if not low < high:
            raise ConfigError(f"{where}: {name}: low = {low} must be below high = {high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: {name}: log = {log!r} must be true or false")
        if log and low <= 0:
            raise ConfigError(f"{where}: {name}: a log range needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
        ):
            raise ConfigError(f"{where}: {name}: step = {step!r} must be a positive number")
        if step is not None and log:
            raise ConfigError(f"{where}: {name}: step and log cannot be combined")
        if kind == "int":
            low, high = int(low), int(high)
        return cls(name, kind, low, high, log, step)


@dataclass(frozen=True)
class Space:
    """A search space: the config fields a strategy search varies."""

    params: tuple[Param, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def to_mapping(self) -> dict[str, Any]:
        return {p.name: p.to_mapping() for p in self.params}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_mapping(), sort_keys=False, default_flow_style=None)

    @classmethod
    def parse(cls, data: Any, where: str) -> Space:
        if not isinstance(data, Mapping) or not data:
            raise ConfigError(
                f"{where}: a search space is a non-empty mapping of config fields to ranges "
                "(e.g. inner_lr: {low: 0.001, high: 0.5, log: true})"
            )
        return cls(tuple(Param.parse(k, v, where) for k, v in data.items()))

    def check(self, make_config: Any, where: str) -> None:
        """Build a config at every end / choice of every field (``make_config(values)``): an
        unknown field or a value the config refuses is a one-line ConfigError naming it."""
        for p in self.params:
            for value in p.probes():
                try:
                    make_config({p.name: value})
                except ConfigError as err:
                    raise ConfigError(f"{where}: {p.name}: {err}") from None


def read_space(path: str | Path) -> Space:
    """The search space of a YAML file (see the module docstring)."""
    try:
        data = load_yaml(path)
    except ConfigError as err:  # YAML's messages span lines (with a caret): one line here
        raise ConfigError(" ".join(line.strip() for line in str(err).splitlines()[:3])) from None
    return Space.parse(data, f"search space {str(path)!r}")


# --------------------------------------------------------------------------------------------
# Default spaces. Learning strategy only: the task (k_shot, n_way, the family), the model and
# the evaluation protocol (eval_*) stay the preset's, so every trial is scored on the same
# held-out adaptation problem.
# --------------------------------------------------------------------------------------------
_FEWSHOT_GRADIENT = {
    # inner optimiser: plain SGD, second order (maml) or first order (fomaml), or Meta-SGD's
    # learned per-parameter step sizes (metasgd: inner_lr is their initial value)
    "algorithm": ["maml", "fomaml", "metasgd"],
    "inner_lr": {"low": 0.001, "high": 0.5, "log": True},
    "inner_steps": {"low": 1, "high": 5},
    "outer_lr": {"low": 1e-4, "high": 1e-2, "log": True},
}
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "fewshot-sine": _FEWSHOT_GRADIENT,
    "fewshot-glyphs": {
        **_FEWSHOT_GRADIENT,
        "inner_lr": {"low": 0.01, "high": 1.0, "log": True},
        "inner_steps": {"low": 1, "high": 3},
    },
    "maml-rl": {
        "algorithm": ["maml", "fomaml", "metasgd"],
        "inner_lr": {"low": 0.01, "high": 1.0, "log": True},
        "inner_steps": {"low": 1, "high": 2},
        # the outer step of TRPO is its trust region (PPO outer: ppo_lr)
        "max_kl": {"low": 0.003, "high": 0.05, "log": True},
        "episodes_per_task": [10, 20, 40],
    },
    "rl2": {
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "ent_coef": {"low": 1e-4, "high": 0.1, "log": True},
        "gae_lambda": {"low": 0.2, "high": 1.0},
    },
}


def default_space(config: Any) -> tuple[str, Space]:
    """(name, space) of the default search space for a preset's config, by its trainer's
    config class; a ConfigError when there is none (then pass --space FILE.yaml)."""
    from meta_rl.fewshot.gradient import GradientFewShotConfig
    from meta_rl.rl.maml import MAMLConfig
    from meta_rl.rl.rl2 import RL2Config

    if isinstance(config, GradientFewShotConfig) and config.algorithm != "reptile":
        name = f"fewshot-{config.task}"
    elif isinstance(config, MAMLConfig):
        name = "maml-rl"
    elif isinstance(config, RL2Config):
        name = "rl2"
    else:
        raise ConfigError(
            f"no default search space for {type(config).__name__} (defaults exist for the "
            "MAML / FOMAML / Meta-SGD / ANIL few-shot presets, the MAML-RL presets and RL^2): "
            "pass --space FILE.yaml"
        )
    space = dict(DEFAULT_SPACES[name])
    if name == "maml-rl" and getattr(config, "outer", "trpo") == "ppo":
        del space["max_kl"]
        space["ppo_lr"] = {"low": 1e-4, "high": 1e-2, "log": True}
    if name.startswith("fewshot") and config.algorithm == "anil":
        space["algorithm"] = ["anil"]  # ANIL's head-only adaptation is the preset's identity
    return name, Space.parse(space, f"default space {name!r}")
