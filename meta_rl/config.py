"""Typed, validated config dataclasses shared by every trainer.

A trainer's config is a dataclass that subclasses :class:`BaseConfig`, one documented field per
knob (cleanrl style: a docstring under each field). Constraints live in the field's metadata::

    @dataclass
    class MyConfig(BaseConfig):
        algorithm: Literal["maml", "fomaml"] = "maml"
        \"\"\"which outer objective\"\"\"
        inner_lr: float = field(default=0.4, metadata=bounds(gt=0))
        \"\"\"step size of the inner (adaptation) update\"\"\"
        hidden: tuple[int, ...] = (40, 40)
        \"\"\"hidden layer widths\"\"\"

Values are checked (and coerced: ``1`` -> ``1.0`` for a float, a list -> a tuple) when the
object is built, so a config that exists is valid. Errors are :class:`ConfigError` and name the
field, the bad value and what is allowed. Configs are plain mutable dataclasses (do not declare
a subclass ``frozen``); build changed copies with :func:`apply_overrides` or
``dataclasses.replace`` so the checks run again.

Overrides come as ``key=value`` strings (``--set inner_lr=0.1``, ``--set optim.lr=1e-3`` for a
nested dataclass field); the value is parsed according to the field's type annotation.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A config value, key or file that is not allowed. The message names the problem."""


C = TypeVar("C", bound="BaseConfig")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


# --------------------------------------------------------------------------------------------
# Field constraints (put into ``dataclasses.field(metadata=...)``; combine with ``|``)
# --------------------------------------------------------------------------------------------
def choice(*values: Any) -> dict[str, Any]:
    """Metadata: the value must be one of ``values``."""
    if not values:
        raise ConfigError("choice() needs at least one allowed value")
    return {"choices": tuple(values)}


def bounds(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> dict[str, Any]:
    """Metadata: a numeric range, e.g. ``bounds(gt=0)`` or ``bounds(ge=0, le=1)``."""
    out = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if not out:
        raise ConfigError("bounds() needs at least one of ge, gt, le, lt")
    return {"bounds": out}


def _range_text(b: Mapping[str, float]) -> str:
    parts = []
    for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in b:
            parts.append(f"{op} {b[key]:g}")
    return "must be " + " and ".join(parts)


def _check_bounds(name: str, value: Any, b: Mapping[str, float]) -> None:
    if value is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        ok = not (isinstance(v, float) and math.isnan(v))
        ok = ok and ("gt" not in b or v > b["gt"]) and ("ge" not in b or v >= b["ge"])
        ok = ok and ("lt" not in b or v < b["lt"]) and ("le" not in b or v <= b["le"])
        if not ok:
            raise ConfigError(f"{name} = {value!r} is out of range: {_range_text(b)}")


# --------------------------------------------------------------------------------------------
# Type coercion from YAML / JSON / command-line values
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _bad(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name} = {value!r} is not allowed: {allowed}")


def _parse_sequence_text(text: str) -> list[Any]:
    s = text.strip()
    if s.startswith("(") and s.endswith(")"):
        s = "[" + s[1:-1] + "]"
    if s.startswith("["):
        try:
            parsed = yaml.safe_load(s)
        except yaml.YAMLError as err:
            raise ValueError(f"malformed list {text!r}: {err}") from err
        if not isinstance(parsed, list):
            raise ValueError(f"{text!r} is not a list")
        return parsed
    return [] if not s else [p.strip() for p in s.split(",")]


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` converted to the annotated type ``tp`` or a :class:`ConfigError` naming ``name``.

    Strings (from ``--set`` or YAML) are parsed for the target type; numbers are not silently
    truncated (``2.5`` is not an int) and booleans are not numbers.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
            if isinstance(value, str) and not isinstance(allowed, str):
                try:
                    if coerce(value, type(allowed), name) == allowed:
                        return allowed
                except ConfigError:
                    pass
        raise _bad(name, value, f"choose one of {list(args)}")

    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, name)
            except ConfigError as err:
                errors.append(str(err))
        allowed = " or ".join(_type_name(a) for a in args)
        raise _bad(name, value, f"expected {allowed}")

    if origin in (tuple, list):
        if isinstance(value, str):
            try:
                value = _parse_sequence_text(value)
            except ValueError as err:
                raise _bad(name, value, f"expected a list ({err})") from None
        if not isinstance(value, (list, tuple)):
            raise _bad(name, value, f"expected a list of {_type_name(tp)}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis) or not args:
            item = args[0] if args else Any
            items = [coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _bad(name, value, f"expected {len(args)} items ({_type_name(tp)})")
            items = [
                coerce(v, a, f"{name}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        return tuple(items) if origin is tuple else items

    if origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if not isinstance(value, Mapping):
            raise _bad(name, value, "expected a mapping")
        kt, vt = args if args else (Any, Any)
        return {coerce(k, kt, name): coerce(v, vt, f"{name}.{k}") for k, v in value.items()}

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if not isinstance(value, Mapping):
            raise _bad(name, value, f"expected a mapping of {tp.__name__} fields")
        return _build(tp, value, prefix=name + ".")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad(name, value, "expected true or false")

    if tp is int:
        if isinstance(value, bool):
            raise _bad(name, value, "expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = math.nan
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        raise _bad(name, value, "expected an integer")

    if tp is float:
        if isinstance(value, bool):
            raise _bad(name, value, "expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _bad(name, value, "expected a number")

    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(name, value, "expected a string")

    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _bad(name, value, f"expected {_type_name(tp)}")


# --------------------------------------------------------------------------------------------
# Building, checking and serialising dataclasses
# --------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as err:  # an annotation that does not resolve
        raise ConfigError(f"cannot read the field types of {cls.__name__}: {err}") from err


def _suggest(key: str, names: Iterable[str], prefix: str = "") -> str:
    names = sorted(names)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(prefix + c) for c in close) + "?"
    return "; known keys: " + ", ".join(prefix + n for n in names)


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping of fields, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r} for {cls.__name__}"
                f"{_suggest(str(key), names, prefix)}"
            )
    try:
        return cls(**dict(data))
    except TypeError as err:  # e.g. a required field without default is missing
        raise ConfigError(f"cannot build {cls.__name__}: {err}") from err


def check_fields(obj: Any, prefix: str = "") -> None:
    """Coerce every field of dataclass ``obj`` to its annotated type and apply its constraints."""
    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        name = f"{prefix}{f.name}"
        tp = hints.get(f.name, Any)
        value = coerce(getattr(obj, f.name), tp, name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, prefix=name + ".")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise _bad(name, value, f"choose one of {list(choices)}")
        if "bounds" in f.metadata:
            _check_bounds(name, value, f.metadata["bounds"])
        if value is not getattr(obj, f.name):
            object.__setattr__(obj, f.name, value)


def to_jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and dataclasses as dicts (for ``config.json``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# The closed registry of config classes a run folder may name
# --------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[BaseConfig]] = {}


def register_config(cls: type[C]) -> type[C]:
    """Allow run folders to name ``cls`` (a BaseConfig subclass) as their config class.

    This package's own config classes register themselves (every ``BaseConfig`` subclass
    defined in a ``meta_rl`` module); call this (or use it as a decorator) for the config class
    of a trainer of your own. A run folder is data: :func:`config_class` only ever maps its
    ``config_class`` string to a class already registered, it never imports anything."""
    if not (isinstance(cls, type) and issubclass(cls, BaseConfig)):
        raise ConfigError(f"register_config: {cls!r} is not a BaseConfig subclass")
    known = _REGISTRY.get(cls.__qualname__)
    if known is not None and known is not cls and _ours(known):
        raise ConfigError(
            f"register_config: {cls.__module__}.{cls.__qualname__} would shadow meta-rl's "
            f"{known.__module__}.{known.__qualname__}; give your config class another name"
        )
    _REGISTRY[cls.__qualname__] = cls
    return cls


def _ours(cls: type) -> bool:
    return cls.__module__ == "meta_rl" or cls.__module__.startswith("meta_rl.")


def registered_configs() -> dict[str, type[BaseConfig]]:
    """``{class name: class}`` of every config class a run folder may name."""
    return dict(_REGISTRY)


def config_class(name: str) -> type[BaseConfig]:
    """The registered config class a run folder names: ``"module:Class"`` (as ``config.json``
    stores it) or ``"Class"``. Nothing is imported; an unknown name is a :class:`ConfigError`.

    A ``"module:Class"`` string from an older meta-rl still resolves when ``Class`` is one of
    ours and ``module`` a ``meta_rl`` module (classes may move between modules)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"config class {name!r} is not a class name")
    module, _, qualname = name.rpartition(":")
    cls = _REGISTRY.get(qualname)
    if cls is not None and module and module != cls.__module__:
        if not (_ours(cls) and (module == "meta_rl" or module.startswith("meta_rl."))):
            cls = None  # e.g. "evil_cfg:MAMLConfig" names evil_cfg's class, not ours
    if cls is None and (module == "meta_rl" or module.startswith("meta_rl.")):
        raise ConfigError(
            f"config class {name!r} is not loaded: import the trainer that defines it (e.g. "
            "`import meta_rl.presets`) before loading the run; meta-rl never imports code a "
            "run folder names"
        )
    if cls is None:
        raise ConfigError(
            f"config class {name!r} is not one of meta-rl's config classes (nor one registered "
            "with meta_rl.config.register_config); meta-rl never imports code a run folder "
            f"names. Known: {', '.join(sorted(_REGISTRY)) or 'none loaded'}"
        )
    return cls


@dataclass(frozen=True)
class Headline:
    """The held-out adaptation score a trainer's evaluation reports as its result: the metric
    it logs under ``metric`` (at every evaluation and in the final metrics) and whether more
    is better (a return, an accuracy) or less (a loss)."""

    metric: str
    maximize: bool

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"`` (Optuna's word for :attr:`maximize`)."""
        return "maximize" if self.maximize else "minimize"


@dataclass
class BaseConfig:
    """Fields every trainer shares. Subclass it (a plain, non-frozen dataclass) per trainer."""

    seed: int = 0
    """seed of every random generator of the run (same seed, same numbers on CPU)"""
    device: str = field(default="auto", metadata=choice("auto", "cpu", "cuda"))
    """torch device: "auto" picks cuda when available, else cpu"""
    iterations: int = field(default=100, metadata=bounds(ge=1))
    """number of meta-training iterations (outer updates)"""
    eval_every: int = field(default=0, metadata=bounds(ge=0))
    """evaluate on held-out tasks every this many iterations (0: only at the end)"""
    checkpoint_every: int = field(default=50, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    keep_checkpoints: int = field(default=3, metadata=bounds(ge=1))
    """how many of the newest checkpoints to keep on disk"""
    log_every: int = field(default=1, metadata=bounds(ge=1))
    """write metrics (CSV, TensorBoard, log file) every this many iterations"""
    num_threads: int = field(default=0, metadata=bounds(ge=0))
    """torch CPU threads for the run (0: leave torch's default)"""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if _ours(cls):  # this package's own config classes; others: register_config
            _REGISTRY[cls.__qualname__] = cls

    def apply_num_threads(self) -> None:
        """Set torch's CPU thread count to ``num_threads`` (a no-op when it is 0)."""
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Hook for checks across fields; raise :class:`ConfigError` naming the fields."""

    def headline(self) -> Headline | None:
        """The held-out score this trainer's evaluation reports as its result (what
        ``meta-rl tune`` optimises); ``None``: the trainer names none."""
        return None

    # -- conversion ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists, nested dataclasses dicts)."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build and check; unknown keys are rejected with close-match suggestions."""
        return _build(cls, data)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, overrides: Iterable[str] = ()) -> C:
        """A config from a YAML file of field values (validated)."""
        data = load_yaml(path)
        return apply_overrides(cls.from_dict(data), overrides)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding one mapping (``{}`` for an empty file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in {str(path)!r}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of fields, got {type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------------------------
# Overrides: ``key=value`` strings or a mapping of dotted keys
# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, str]:
    """``(key, value)`` of a ``key=value`` override, the value parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. seed=3)")
    return key.strip(), value


def apply_overrides(config: C, overrides: Iterable[str] | Mapping[str, Any]) -> C:
    """A checked copy of ``config`` with dotted-key overrides applied.

    ``overrides`` is a list of ``"key=value"`` strings (values parsed by the field's type) or a
    mapping ``{"key": value}``.
    """
    pairs = (
        list(overrides.items())
        if isinstance(overrides, Mapping)
        else [parse_override(o) for o in overrides]
    )
    if not pairs:
        return config
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    data = {
        k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in data.items()
    }
    for key, value in pairs:
        parts = key.split(".")
        cls: type = type(config)
        node = data
        for depth, part in enumerate(parts):
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            dotted = ".".join(parts[: depth + 1])
            if part not in names:
                raise ConfigError(
                    f"unknown config key {dotted!r} for {cls.__name__}"
                    f"{_suggest(part, names, dotted[: len(dotted) - len(part)])}"
                )
            if depth == len(parts) - 1:
                node[part] = value
                break
            sub = _hints(cls).get(part)
            if not (isinstance(sub, type) and dataclasses.is_dataclass(sub)):
                raise ConfigError(
                    f"config key {dotted!r} is not a nested config; cannot set {key!r}"
                )
            cls, node = sub, node[part]
    return _build(type(config), data)


def diff(a: BaseConfig | Mapping[str, Any], b: BaseConfig | Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (or their dicts)."""
    da = a.to_dict() if isinstance(a, BaseConfig) else to_jsonable(a)
    db = b.to_dict() if isinstance(b, BaseConfig) else to_jsonable(b)
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k, "<missing>"), y.get(k, "<missing>"), f"{prefix}{k}.")
        elif x != y:
            out.append(prefix[:-1])

    walk(da, db, "")
    return out


# --------------------------------------------------------------------------------------------
# Documentation of fields (the docstring under each field)
# --------------------------------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` read from the class source (base classes included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type) -> list[dict[str, str]]:
    """One row per field: name, type, default, constraint and doc (for ``meta-rl presets``)."""
    hints = _hints(cls)
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        constraint = ""
        if "choices" in f.metadata:
            constraint = "one of " + ", ".join(map(repr, f.metadata["choices"]))
        if "bounds" in f.metadata:
            constraint = _range_text(f.metadata["bounds"])
        rows.append(
            {
                "name": f.name,
                "type": _type_name(hints.get(f.name, Any)),
                "default": default,
                "constraint": constraint,
                "doc": docs.get(f.name, ""),
            }
        )
    return rows
