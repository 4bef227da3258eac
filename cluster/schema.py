"""Building frozen dataclasses from parsed YAML, with errors that name the offending field."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A cluster config that does not validate; the message gives the field's path."""


def build(cls: type[T], data: Any, path: str) -> T:
    """Instantiate dataclass ``cls`` from a mapping, recursing into dataclass-typed fields."""
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigFileError(f"{_join(path, unknown[0])}: unknown field (expected one of {sorted(fields)})")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and n not in data]
    if required:
        raise ConfigFileError(f"{_join(path, required[0])}: required field missing")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigFileError(f"{path or 'config'}: {e}") from None
    except ValueError as e:
        raise ConfigFileError(f"{path or 'config'}: {e}") from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, path)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigFileError(f"{path} must be a list, got {type(value).__name__}")
        return tuple(_convert(typing.get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigFileError(f"{path} must be a mapping, got {type(value).__name__}")
        _, vt = typing.get_args(hint)
        return {str(k): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (
            hint is int and isinstance(value, bool))):
        raise ConfigFileError(f"{path} must be {hint.__name__}, got {value!r}")
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
