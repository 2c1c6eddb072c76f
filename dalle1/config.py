"""Typed configs: dataclasses filled from YAML files and `key.sub=value` overrides.

Every stage describes its settings as a tree of dataclasses. A run's config is built as

    defaults of the dataclasses  <-  the YAML file (--config)  <-  command-line overrides

and each value is checked against the field's type hint. An unknown key, a value of the wrong
type or a failed `__post_init__` check raises `ConfigError` naming the key, before any work starts.
The resolved config is saved beside the run (`save_config`) so that a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclasses."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 3e-4). The value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of the nested dict `data` with each 'a.b=value' override set."""
    data = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                dotted = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {text!r}: {dotted!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def from_dict(cls: type[T], data: dict | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, checking every key and type."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix or '<root>'!r} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            where = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            valid = ", ".join(fields)
            raise ConfigError(f"unknown config key {where!r}{hint}; valid keys here: {valid}")
    kwargs = {}
    for name, value in data.items():
        default = _default_of(fields[name])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A section given in part keeps the parent's defaults for the rest, which may differ
            # from the section class's own defaults (e.g. a stage's own run_dir).
            value = _merge(dataclasses.asdict(default), value)
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"invalid config {prefix.rstrip('.') or cls.__name__}: {err}") from err


def load_config(
    cls: type[T],
    config_file: str | Path | None,
    overrides: Sequence[str] = (),
    values: dict | None = None,
) -> T:
    """Defaults of `cls`, then the YAML file (if any), then `values` (top-level keys, e.g. from
    command-line flags), then the dotted overrides."""
    data: dict = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    data.update(values or {})
    return from_dict(cls, apply_overrides(data, overrides))


def to_dict(config: Any) -> dict:
    """The config tree as plain dicts and lists (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Check (and where lossless, convert) `value` against the type hint `hint`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key!r}: {value!r} fits no type")
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=f"{key}.")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"config key {key!r} has an unsupported type {hint!r}")
    raise ConfigError(
        f"config key {key!r} expects {hint.__name__}, got {value!r} ({type(value).__name__})"
    )


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def describe_config(config: Any, prefix: str = "") -> list[str]:
    """One line per key of a config instance: 'key (type, default value): comment'.

    The comments are the ones written beside (or just above) each field in the dataclass's
    source, so `--help` and the code cannot drift apart.
    """
    comments = _field_comments(type(config))
    hints = typing.get_type_hints(type(config))
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines += describe_config(value, f"{prefix}{f.name}.")
            continue
        hint = hints[f.name]
        kind = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
        kind = kind or str(hint).replace("typing.", "")
        comment = comments.get(f.name, "")
        lines.append(
            f"{prefix}{f.name} ({kind}, default {value!r})" + f": {comment}" * bool(comment)
        )
    return lines


def _field_comments(cls: type) -> dict[str, str]:
    """{field: its comment} from the class body: a trailing '# ...' on the field's first line,
    or the '# ...' lines just above it."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments, above = {}, []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+)\s*:[^#]*(?:#\s*(.*))?$", stripped)
        if match and match.group(1) in names and match.group(1) not in comments:
            comments[match.group(1)] = " ".join([*above, match.group(2) or ""]).strip()
        above = []
    return comments


def add_config_flags(parser: Any, cls: type) -> None:
    """One `--flag` per top-level field of dataclass `cls` that is not a section; its help is
    the field's comment. Unset flags stay None, so they override neither the file nor defaults.
    Lists are given comma-separated (`--holdout red:triangle,blue:circle`)."""
    import argparse

    comments, hints = _field_comments(cls), typing.get_type_hints(cls)
    group = parser.add_argument_group(f"settings ({cls.__name__}; also --config FILE, key=value)")
    for f in dataclasses.fields(cls):
        default = _default_of(f)
        if dataclasses.is_dataclass(default) or not f.init:
            continue
        hint = _plain(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f"{comments.get(f.name, '')} (default {_shown(default)})".strip().replace("%", "%%")
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif typing.get_origin(hint) in (list, tuple):
            group.add_argument(flag, type=_comma_list, metavar="A,B,...", help=text)
        else:
            group.add_argument(flag, type=hint if hint in (int, float) else str, help=text)


def flag_values(args: Any, cls: type) -> dict:
    """The config values given as flags (add_config_flags), by field name."""
    names = [f.name for f in dataclasses.fields(cls)]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _plain(hint: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return hint


def _comma_list(text: str) -> list:
    """'a,b,3' -> ['a', 'b', 3]: each item read as a YAML scalar."""
    return [yaml.safe_load(item.strip()) for item in text.split(",") if item.strip()]


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return repr(value)
