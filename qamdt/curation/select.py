"""``--select`` expressions: which curated rows go into ``selected.jsonl``.

An expression is ``FIELD OP VALUE``; several ``--select`` options must all hold. They are
parsed by a small grammar, never evaluated as code:

* ``FIELD``: ``pmos``, ``level`` (``quality_level``), ``prefix`` (``quality_prefix``),
  ``split``, ``duration``, ``offset``, ``caption_source``, ``source`` (``meta.source``),
  ``clap`` (``clap.generated_audio``), ``clap.KEY`` (any CLAP score), ``meta.KEY``;
* ``OP``: ``>=``, ``<=``, ``>``, ``<``, ``==`` (or ``=``), ``!=``;
* ``VALUE``: a number, or a word or quoted text (only with ``==`` and ``!=``).

A row without the field (a clip that failed, an unscored caption) never matches.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Sequence
from typing import Any

from qamdt.errors import ConfigError
from qamdt.manifest import ClipRecord

_ALIASES = {
    "pmos": "pmos",
    "level": "quality_level",
    "quality_level": "quality_level",
    "prefix": "quality_prefix",
    "quality_prefix": "quality_prefix",
    "split": "split",
    "duration": "duration",
    "offset": "offset",
    "caption_source": "caption_source",
    "source": "meta.source",
    "clap": "clap.generated_audio",
}
_OPERATORS = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_EXPRESSION = re.compile(
    r"\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?)\s*"
    r"(?P<op>>=|<=|!=|==|=|>|<)\s*(?P<value>.+?)\s*"
)


@dataclasses.dataclass(frozen=True)
class Condition:
    """One parsed ``--select`` expression.

    Attributes:
        text: The expression as given.
        field: The row field (``pmos``, ``clap.generated_audio``, ``meta.source``).
        op: The comparison.
        value: A number or a text.
    """

    text: str
    field: str
    op: str
    value: float | str

    def matches(self, record: ClipRecord) -> bool:
        """Whether the row satisfies the condition (a missing field never does)."""
        found = field_value(record, self.field)
        if found is None:
            return False
        if isinstance(self.value, float):
            if isinstance(found, bool) or not isinstance(found, int | float):
                return False
            return bool(_OPERATORS[self.op](float(found), self.value))
        return bool(_OPERATORS[self.op](str(found), self.value))


def field_value(record: ClipRecord, name: str) -> Any:
    """A row's value of a field name as :class:`Condition` uses them (None if absent)."""
    top, _, key = name.partition(".")
    value = getattr(record, top)
    if key:
        return value.get(key) if isinstance(value, dict) else None
    return value


def parse_condition(text: str) -> Condition:
    """Parses one expression.

    Raises:
        ConfigError: Naming ``--select`` and the expression, and what is wrong.
    """
    match = _EXPRESSION.fullmatch(text)
    if not match:
        raise ConfigError(
            f"--select {text!r}: expected FIELD OP VALUE, e.g. 'pmos>=3.5' "
            f"(operators: {', '.join(_OPERATORS)})"
        )
    name, op, raw = match.group("field"), match.group("op"), match.group("value")
    top = name.split(".", 1)[0]
    if name in _ALIASES:
        field = _ALIASES[name]
    elif "." in name and top in ("clap", "meta"):
        field = name
    else:
        known = ", ".join([*_ALIASES, "clap.KEY", "meta.KEY"])
        raise ConfigError(f"--select {text!r}: unknown field {name!r}; known: {known}")
    value: float | str
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = raw[1:-1]
    else:
        try:
            value = float(raw)
        except ValueError:
            value = raw
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--select {text!r}: the value must be a finite number")
    if isinstance(value, str):
        if op not in ("==", "=", "!="):
            raise ConfigError(f"--select {text!r}: {op} needs a number, got {raw!r}")
        if not re.fullmatch(r"[\w .:/#-]*", value):
            raise ConfigError(f"--select {text!r}: quote a text value with odd characters")
    return Condition(text=text, field=field, op=op, value=value)


@dataclasses.dataclass(frozen=True)
class Selection:
    """Every ``--select`` expression; a row is selected when all hold.

    Attributes:
        conditions: The parsed expressions.
    """

    conditions: tuple[Condition, ...]

    @classmethod
    def parse(cls, texts: Sequence[str]) -> Selection:
        """Parses the expressions (see :func:`parse_condition`)."""
        return cls(tuple(parse_condition(text) for text in texts))

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def matches(self, record: ClipRecord) -> bool:
        """Whether every condition holds for the row."""
        return all(condition.matches(record) for condition in self.conditions)
