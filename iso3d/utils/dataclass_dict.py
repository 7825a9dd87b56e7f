"""Rebuild a (nested, frozen) dataclass config from ``dataclasses.asdict``'s output.

``asdict`` turns nested configs into dicts (and, through JSON, tuples into lists); this undoes it by
the fields' type hints, so a saved run can be reloaded with the config it ran with.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing

__all__ = ["dataclass_from_dict"]


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _rebuild(hint, value):
    if isinstance(value, dict) and dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: the first option that fits
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return dataclass_from_dict(option, value)
        return _rebuild(next((a for a in typing.get_args(hint) if typing.get_origin(a) is tuple), None), value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        items = args if inner is None and len(args) == len(value) else [inner] * len(value)
        return tuple(_rebuild(a, v) for a, v in zip(items, value))
    return value


def dataclass_from_dict(cls, data: dict):
    """``cls(**data)`` with nested dataclass fields rebuilt from dicts and tuple fields from lists.

    Keys the class lacks raise ``ValueError`` (naming them); keys it has that ``data`` lacks take their
    defaults (a config saved before the field existed).

    >>> import json
    >>> from iso3d.generation import GenerateConfig
    >>> saved = json.loads(json.dumps(dataclasses.asdict(GenerateConfig.cpu_tiny())))  # as run.json keeps it
    >>> type(saved["field"]).__name__, type(saved["milestones"]).__name__
    ('dict', 'list')
    >>> dataclass_from_dict(GenerateConfig, saved) == GenerateConfig.cpu_tiny()
    True
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
        raise TypeError(f"dataclass_from_dict: expected a dataclass and a dict, got {cls!r} and {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)} (saved by another iso3d version?)")
    hints = _hints(cls)
    return cls(**{k: _rebuild(hints.get(k), v) for k, v in data.items()})
