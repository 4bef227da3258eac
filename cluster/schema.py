"""Building frozen dataclasses from parsed YAML, with errors that name the offending field."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, TypeVar, cast

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A cluster config that does not validate; the message gives the field's path."""


def build(cls: type[T], data: Any, path: str) -> T:
    """Instantiate dataclass ``cls`` from a mapping, recursing into dataclass-typed fields."""
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigFileError(f"{_join(path, unknown[0])}: unknown field (expected one of {sorted(fields)})")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and n not in data]
    if required:
        raise ConfigFileError(f"{_join(path, required[0])}: required field missing")
    hints = typing.get_type_hints(cls)
    secret = getattr(cls, "SECRET_FIELDS", ())
    kwargs = {name: _convert(hints[name], value, _join(path, name), name in secret) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigFileError(f"{path or 'config'}: {e}") from None
    except ValueError as e:
        raise ConfigFileError(_located(path, str(e), fields)) from None


def _located(path: str, message: str, fields: dict) -> str:
    """``path.field ...`` when the class's message starts with one of its fields, else ``path: ...``."""
    name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", message)
    if name and name.group() in fields and message[name.end():name.end() + 1] in (" ", ":", "."):
        return _join(path, message)
    return f"{path or 'config'}: {message}"


def _convert(hint: Any, value: Any, path: str, secret: bool = False) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, path, secret)
    if dataclasses.is_dataclass(hint):
        return build(cast(type, hint), value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigFileError(f"{path} must be a list, got {type(value).__name__}")
        return tuple(_convert(typing.get_args(hint)[0], v, f"{path}[{i}]", secret) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigFileError(f"{path} must be a mapping, got {type(value).__name__}")
        _, vt = typing.get_args(hint)
        return {str(k): _convert(vt, v, f"{path}.{k}", secret) for k, v in value.items()}
    return _scalar(hint, value, path, secret)


def _scalar(hint: Any, value: Any, path: str, secret: bool = False) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (
            hint is int and isinstance(value, bool))):
        got = f"{type(value).__name__} (value not shown)" if secret else repr(value)  # a secret stays unechoed
        raise ConfigFileError(f"{path} must be {hint.__name__}, got {got}")
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
