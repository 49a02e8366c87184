"""Plain data (what configs and checkpoints store) checked against type hints, field by field.

Checkpoints and run files hold settings as plain data: ``None``, booleans, numbers, strings and lists
of them. Nothing read from a file is ever instantiated by name; it is checked against the type hints
of the dataclass or constructor it is meant for (:func:`build_dataclass`, :func:`check_arguments`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def plain(value: Any) -> Any:
    """OmegaConf nodes, tuples and dataclasses to plain dicts/lists."""
    if hasattr(value, "_metadata") and hasattr(value, "_get_node"):  # an OmegaConf container
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def merge(base: dict, extra: Mapping, where: str) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if key not in out:
            raise ValueError(f"{where}: unknown key '{key}'; allowed: {sorted(out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{key} is a section ({sorted(out[key])}), got {value!r}")
            out[key] = merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def build_dataclass(cls: type[T], node: Any, where: str) -> T:
    """A dataclass from plain data, checking keys and value types field by field."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(node).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(node) - set(names))
    missing = sorted(set(names) - set(node))
    if unknown or missing:
        raise ValueError(
            f"{where}: "
            + "; ".join(
                part
                for part in (
                    f"unknown key(s) {unknown}" if unknown else "",
                    f"missing key(s) {missing}" if missing else "",
                )
                if part
            )
            + f". Allowed keys: {names}"
        )
    return cls(**{name: check_value(hints[name], node[name], f"{where}.{name}") for name in names})


def check_value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        last: Exception | None = None
        for option in options:
            if option is type(None):
                continue
            try:
                return check_value(option, value, where)
            except ValueError as err:
                last = err
        raise last or ValueError(f"{where}: unexpected value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(check_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list, Sequence, collections.abc.Sequence):
        (arg,) = typing.get_args(hint) or (Any,)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [check_value(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {hint}")  # pragma: no cover - a programming error


def check_arguments(fn: Callable[..., Any], node: Any, where: str, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments for ``fn`` from plain data: every key must be a parameter of ``fn`` (not in
    ``exclude``) and every value must match its type hint; nested mappings are refused."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{where}: expected a mapping of arguments, got {type(node).__name__}")
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target)
    params = [
        n
        for n, p in inspect.signature(target).parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(node) - set(params) | (set(node) & set(exclude)))
    if unknown:
        raise ValueError(
            f"{where}: unknown argument(s) {unknown}; {getattr(fn, '__name__', fn)} takes "
            f"{[p for p in params if p not in exclude]}"
        )
    return {name: check_value(hints.get(name, Any), value, f"{where}.{name}") for name, value in node.items()}
