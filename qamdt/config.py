"""The config base of every settings class: known keys, sections, JSON and YAML.

A settings class is a dataclass that inherits :class:`ConfigBase` and declares only its
fields, their docs and its value checks (in ``__post_init__``). The base reads it from a
mapping (:meth:`ConfigBase.from_dict`) or a YAML file with overrides
(:meth:`ConfigBase.from_yaml`) and writes it as JSON-ready values
(:meth:`ConfigBase.to_dict`):

* an unknown key is named with the closest known one ("did you mean");
* a field without a default must be given, and a missing one is named;
* a field whose type is a dataclass is a nested section, read the same way and named as
  ``where: section`` in its errors;
* YAML lists become tuples where the field is a tuple (tuples of tuples too), and a key
  left empty (``null``) reads as an empty tuple, mapping or section where the field cannot
  be None;
* a bad value is reported as ``ConfigError("WHERE: message")``, the file and the key named.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from qamdt.errors import ConfigError, check_known_keys


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML mapping, naming the file on errors.

    Raises:
        ConfigError: If the file is missing, not YAML or not a mapping at the top level.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


@functools.cache
def _field_types(target: type) -> dict[str, Any]:
    return typing.get_type_hints(target)


def _arms(kind: Any) -> tuple[tuple[Any, ...], bool]:
    """The non-None types of a (possibly optional) annotation, and whether None is one."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        arms = typing.get_args(kind)
        return tuple(a for a in arms if a is not type(None)), type(None) in arms
    return (kind,), kind is Any


def _convert(kind: Any, value: Any, where: str) -> Any:
    """``value`` read as a field of type ``kind``: sections built, lists made tuples."""
    arms, optional = _arms(kind)
    if value is None:
        if optional:
            return None
        arm = arms[0]
        if dataclasses.is_dataclass(arm):
            return _convert(arm, {}, where)
        origin = typing.get_origin(arm) or arm
        if origin in (tuple, dict):
            return origin()
        return None
    for arm in arms:
        origin = typing.get_origin(arm) or arm
        section = isinstance(value, Mapping) or len(arms) == 1
        if dataclasses.is_dataclass(arm) and section and not isinstance(value, arm):
            if issubclass(arm, ConfigBase):
                return arm.from_dict(value, where)
            return build_dataclass(arm, value, where)
        if origin is tuple and isinstance(value, (list, tuple)):
            inner = typing.get_args(arm)
            if len(inner) == 2 and inner[1] is Ellipsis:
                inner = (inner[0],) * len(value)
            if len(inner) != len(value):
                return tuple(value)  # the class's own check names the wrong length
            return tuple(_convert(k, v, where) for k, v in zip(inner, value, strict=True))
        if origin is dict and isinstance(value, Mapping):
            return dict(value)
    return value


def build_dataclass(
    target: type,
    values: Any,
    where: str,
    noun: str = "key",
    ignore: tuple[str, ...] = (),
) -> Any:
    """A dataclass from a mapping, its keys and sections checked (see the module doc).

    Args:
        target: The dataclass.
        values: Its field values by name, as read from a file.
        where: What holds them (a file, ``file: section``), named in every error.
        noun: What a key is called in the messages ("unknown <noun>(s)").
        ignore: Keys dropped before checking (format markers such as ``kind``).

    Raises:
        ConfigError: ``WHERE: ...`` on a value that is not a mapping, an unknown or missing
            key, or a value the class rejects.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    values = {k: v for k, v in values.items() if k not in ignore}
    check_known_keys(values, target, where, noun)
    fields = [f for f in dataclasses.fields(target) if f.init]
    missing = [
        f.name
        for f in fields
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing {noun}(s) {', '.join(map(repr, missing))}")
    types_of = _field_types(target)
    converted = {
        name: _convert(types_of[name], value, f"{where}: {name}") for name, value in values.items()
    }
    try:
        return target(**converted)
    except (ConfigError, TypeError) as error:
        message = str(error)
        if message.startswith(f"{where}:"):
            raise
        raise ConfigError(f"{where}: {message}") from None
    except ValueError as error:
        if type(error) is not ValueError:
            raise
        raise ConfigError(f"{where}: {error}") from None


class ConfigBase:
    """Reading and writing of a settings dataclass (mixed into ``@dataclass`` classes).

    Class attributes a subclass may set:

    * ``config_where``: what its errors name when no file is given ("mos train config");
    * ``config_noun``: what a key is called in them ("key", "setting");
    * ``config_ignore``: keys dropped on reading (format markers such as ``kind``).
    """

    config_where: ClassVar[str] = "config"
    config_noun: ClassVar[str] = "key"
    config_ignore: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Rewrites read values before they are checked (a subclass's own spellings)."""
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str | None = None):
        """Builds the settings from a mapping such as a YAML file or ``to_dict``'s output.

        Args:
            values: Field values by name; sections as mappings, tuples as lists.
            where: The file or label named in errors (default: ``config_where``).

        Raises:
            ConfigError: On an unknown or missing key or a bad value, naming ``where`` and
                the key.
        """
        where = where or cls.config_where
        if isinstance(values, Mapping):
            values = cls.prepare(dict(values), where)
        return build_dataclass(cls, values, where, cls.config_noun, cls.config_ignore)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, **overrides: Any):
        """Reads the settings from a YAML file; overrides that are not None replace values.

        Args:
            path: The YAML file; None starts from no values (the defaults).
            **overrides: Values given on the command line, by field name.

        Raises:
            ConfigError: Naming the file and the key at fault.
        """
        values = read_yaml(path) if path is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, where=str(path) if path is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (sections as dicts, tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
