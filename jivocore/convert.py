"""The one converter factory: entities to JSON-ready values and back (cattrs, preconf json)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import cattrs
from cattrs.preconf.json import make_converter as _make_json_converter

from .errors import ValidationError


def format_time(value: datetime) -> str:
    """Fixed width, always UTC (``0999-01-01T00:00:00.000000+00:00``): the text sorts as the
    instant does, on every backend."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: str | datetime) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone")
    return parsed.astimezone(UTC)


def make_converter() -> cattrs.Converter:
    """A new converter for jivocore's values. Plugins add hooks for their own types through
    `jivocore_prepare_converter`; nothing uses the global cattrs converter."""
    converter = _make_json_converter()
    converter.register_unstructure_hook(datetime, format_time)
    converter.register_structure_hook(datetime, lambda value, _: parse_time(value))
    converter.register_unstructure_hook(enum.Enum, lambda value: value.value)
    # Sets are stored sorted, so equal entities serialise to equal text.
    converter.register_unstructure_hook_func(
        lambda t: getattr(t, "__origin__", None) is frozenset,
        lambda value: sorted(value),
    )
    return converter


def structure(converter: cattrs.Converter, data: Any, cls: type[Any]) -> Any:
    """Structure `data` as `cls`, turning a failure into a ValidationError a person can read."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        lines = cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else []
        reason = "; ".join(lines) or str(exc)
        raise ValidationError(f"not a valid {cls.__name__}: {reason}", entity=cls.__name__) from exc
