"""JSON schemas of the API's answers for the OpenAPI document. Entities' schemas are derived from
their attrs fields, as the desk's converter writes them (datetimes as ISO text, sets as sorted
lists, enums as their values, amounts as text, durations as seconds), so the document cannot
drift from the answers."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs

Schema = dict[str, Any]

PREFIX = "#/components/schemas/"


_classes: dict[str, type[Any]] = {}  # every attrs class a reference was made to, by name


def ref(cls: type[Any]) -> Schema:
    """A reference to an attrs class's schema (`components` adds the schema itself)."""
    _classes[cls.__name__] = cls
    return {"$ref": PREFIX + cls.__name__}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}


def _of(tp: Any, found: dict[str, type[Any]]) -> Schema:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        options = [_of(a, found) for a in args if a is not types.NoneType]
        one = options[0] if len(options) == 1 else {"anyOf": options}
        return nullable(one) if types.NoneType in args else one
    if origin in (tuple, list, set, frozenset):
        return array(_of(args[0], found) if args else {})
    if origin in (dict, Mapping):
        return {"type": "object", "additionalProperties": _of(args[1], found)}
    if isinstance(tp, type):
        if attrs.has(tp):
            found.setdefault(tp.__name__, tp)
            return ref(tp)
        if issubclass(tp, enum.Enum):
            return {"type": "string", "enum": [member.value for member in tp]}
        if issubclass(tp, bool):
            return BOOLEAN
        if issubclass(tp, int):
            return INTEGER
        if issubclass(tp, float | timedelta):
            return {"type": "number"}
        if issubclass(tp, datetime):
            return {"type": "string", "format": "date-time"}
        if issubclass(tp, str | Decimal):
            return STRING
    raise TypeError(f"no JSON schema for {tp!r}")


def entity(cls: type[Any], found: dict[str, type[Any]]) -> Schema:
    """The schema of an attrs class as the converter unstructures it: every field present."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    return obj({f.name: _of(hints[f.name], found) for f in fields})


def components(schemas: Any) -> dict[str, Schema]:
    """The schemas of every attrs class referenced in `schemas` (and of the classes theirs
    reference), by name."""
    found: dict[str, type[Any]] = {}
    done: dict[str, Schema] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                name = item[len(PREFIX) :] if key == "$ref" else None
                if name in _classes:
                    found.setdefault(name, _classes[name])
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(schemas)
    while len(done) < len(found):
        for name, cls in list(found.items()):
            if name not in done:
                done[name] = entity(cls, found)
    return dict(sorted(done.items()))
