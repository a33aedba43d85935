"""Checking a YAML mapping against a config dataclass: unknown keys, types and ranges, in full sentences.

:mod:`tunebook.config` declares the fields (with :func:`ranged` for numbers that must lie in a
range); :func:`build` turns a mapping into the dataclass or raises one `ConfigError` that names the
key, the value received and what fits: ``train.max_steps: expected a whole number, got 'ten'.``,
``lora.dropout: 1.5 is out of range: it must be >= 0 and < 1.``, ``Unknown config key
'train.lerning_rate'. Did you mean 'learning_rate'?``. The error carries the key, so that
:func:`tunebook.config.load_config` can add the file and line where it was written.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal

from .errors import ConfigError


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
                   lt: float | None = None) -> Any:
    """A dataclass field whose numbers must lie in a range (None passes: it means "off" or "all")."""
    return field(default=default, metadata={"range": (ge, gt, le, lt)})


# Names that peft, transformers and tutorials use for tunebook's keys.
_ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lr": "learning_rate",
            "batch_size": "per_device_batch_size", "per_device_train_batch_size": "per_device_batch_size",
            "lr_scheduler_type": "lr_scheduler", "model_name": "name", "quantize": "quantization",
            "dataset": "path", "max_seq_length": "max_length", "gradient_accumulation": "gradient_accumulation_steps"}


def suggest(key: str, valid: typing.Iterable[str]) -> str:
    """`` Did you mean '<nearest valid key>'?`` (aliases such as lora_r first), or "" when none is near."""
    valid = list(valid)
    match = [_ALIASES[key]] if _ALIASES.get(key) in valid else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def fail(key: str, message: str, name_key: bool = True) -> ConfigError:
    error = ConfigError(f"{key}: {message}" if key and name_key else message)
    error.key = key  # load_config adds the file and line where this key was written
    return error


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Return `value` if it fits `hint` (ints are accepted for floats), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, where)
            except ConfigError:
                continue
        raise fail(where, f"{value!r} does not fit {type_name(hint)}.")
    if origin is Literal:
        choices = typing.get_args(hint)
        # `True in (0, 1)` holds in Python; a config's true is not the number 1.
        if value not in choices or (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            raise fail(where, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}.")
        return value
    if hint is type(None):
        if value is not None:
            raise fail(where, f"expected null, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise fail(where, f"expected a list, got {value!r}.")
        (item_hint,) = typing.get_args(hint)
        return [check_type(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(where, f"expected a mapping, got {value!r}.")
        _, value_hint = typing.get_args(hint)
        return {str(k): check_type(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise fail(where, f"expected true or false, got {value!r}.")
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise fail(where, f"expected {type_name(hint)}, got {value!r}.")
    return value


def type_name(hint: Any) -> str:
    names = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
             "NoneType": "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    name = getattr(hint, "__name__", None)
    return names.get(name, name) if name and typing.get_origin(hint) is None else str(hint).replace("typing.", "")


def check_range(value: Any, bounds: tuple, where: str) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):  # YAML reads .nan and .inf as numbers; no setting means them
        raise fail(where, f"{value!r} is not a finite number. Write a number such as 1e-4 (null where the key "
                           "allows it).")
    ge, gt, le, lt = bounds
    allowed = " and ".join(text for text, bound in ((f">= {ge}", ge), (f"> {gt}", gt), (f"<= {le}", le),
                                                     (f"< {lt}", lt)) if bound is not None)
    if ((ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le)
            or (lt is not None and value >= lt)):
        raise fail(where, f"{value!r} is out of range: it must be {allowed}.")


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys, ill-typed and out-of-range values."""
    if not isinstance(values, dict):
        raise fail(where or "config", f"expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise fail(path, f"Unknown config key '{path}'.{suggest(str(key), fields)} Valid keys"
                              f"{' in ' + where if where else ''}: {', '.join(fields)}.", name_key=False)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build(hint, value or {}, path)
        else:
            kwargs[key] = check_type(value, hint, path)
            check_range(value, fields[key].metadata.get("range", (None,) * 4), path)  # shown as written
    return cls(**kwargs)
