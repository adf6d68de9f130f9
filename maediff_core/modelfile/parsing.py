"""Typed configurations from JSON: every value checked against its dataclass field's declared type
and range, and refused with the key's path (``config.unet.channels[0]: ...``), so that a broken card
fails in seconds and not after preprocessing."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields, is_dataclass

from ..errors import CardError


def parse_value(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return parse_value(next(a for a in args if a is not type(None)), value, where)
    if is_dataclass(hint):
        return parse_config(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CardError(f"{where}: expected a list, got {value!r}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise CardError(f"{where}: expected {len(kinds)} values, got {len(value)}")
        return tuple(parse_value(k, v, f"{where}[{i}]") for i, (k, v) in enumerate(zip(kinds, value, strict=True)))
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is float and numeric and math.isfinite(value):
        return float(value)
    if (hint is int and numeric and value == int(value)) or (hint in (bool, str) and isinstance(value, hint)):
        return hint(value)
    expected = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}
    raise CardError(f"{where}: expected {expected.get(hint, hint)}, got {value!r}")


def parse_config(cls, data, where: str):
    """A configuration dataclass from JSON: unknown keys, wrong types, non-finite numbers and values
    out of range are refused with the key's path."""
    if not isinstance(data, dict):
        raise CardError(f"{where}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise CardError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    values = {key: parse_value(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise CardError(f"{where}: {err}") from None


def parse_model_config(data, where: str = "config"):
    """A method's configuration, of the class its ``method`` names (methods.REGISTRY)."""
    from ..methods import method_of

    if not isinstance(data, dict):
        raise CardError(f"{where}: expected an object, got {data!r}")
    try:
        cls = method_of(data.get("method")).config_class
    except ValueError as err:
        raise CardError(f"{where}.method: {err}") from None
    diffusion = data.get("diffusion")
    if isinstance(diffusion, dict) and isinstance(diffusion.get("t_test"), int):
        # Cards written before ensembles hold one level.
        data = {**data, "diffusion": {**diffusion, "t_test": [diffusion["t_test"]]}}
    # Cards written before the method registry hold every method's parts, null where a method has none.
    own = {f.name for f in fields(cls)}
    return parse_config(cls, {k: v for k, v in data.items() if k in own or v is not None}, where)
