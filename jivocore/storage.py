"""The storage contract: what a backend provides, and the portable filter language it speaks.

A backend stores every registered `EntityType` (core and plugin ones alike) as a table whose
columns are the entity's fields. Scalars (str, int, bool, float, enums, datetimes as fixed-width
UTC text) are columns that can be filtered, ordered and indexed; collections and nested values
are JSON text. A set-valued field named in `members` also gets a side table, so "has tag X" is an
indexed lookup. Backends share the encoding below, so every backend stores the same values.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import attrs
import cattrs

from .convert import parse_time, structure
from .errors import ValidationError

T = TypeVar("T")


# --- the filter language ------------------------------------------------------------------------


def _tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(values)


def _frozenset(values: Iterable[Any]) -> frozenset[Any]:
    return frozenset(values)


@attrs.frozen
class In:
    """The field's value is one of `values`."""

    values: tuple[Any, ...] = attrs.field(converter=_tuple)


@attrs.frozen
class Not:
    """The field's value is not `value` (None: the field is set)."""

    value: Any


@attrs.frozen(kw_only=True)
class Range:
    """The field's value lies in a range; each bound is optional."""

    gt: Any = None
    ge: Any = None
    lt: Any = None
    le: Any = None

    def bounds(self) -> list[tuple[str, Any]]:
        """The bounds given, each as its comparison operator (``<``, ``<=``, ``>``, ``>=``) and
        value: what a backend writes out."""
        given = (("<", self.lt), ("<=", self.le), (">", self.gt), (">=", self.ge))
        return [(op, bound) for op, bound in given if bound is not None]


@attrs.frozen
class HasAny:
    """A set-valued field (named in `members`) holds at least one of `values`."""

    values: frozenset[Any] = attrs.field(converter=_frozenset)


@attrs.frozen
class HasAll:
    """A set-valued field (named in `members`) holds every one of `values`."""

    values: frozenset[Any] = attrs.field(converter=_frozenset)


@attrs.frozen
class IdOf:
    """The field holds the id of an entity of `cls` (a registered type) that matches `where`:
    the deals of the clients an operator sees are `{"client_id": IdOf(Client, {"involved":
    HasAny([ann.id])})}`, one query however many clients those are."""

    cls: type[Any]
    where: Mapping[str, Any] = attrs.field(factory=dict)


Where = Mapping[str, Any]  # field -> value (equality; None is IS NULL) or an operator above
"""A filter: every condition must hold. `{"state": "inbox", "created": Range(ge=t)}`."""


@attrs.frozen
class Page(typing.Generic[T]):
    """One page of a keyset-paginated listing; pass `next` as `after` for the following page."""

    items: tuple[T, ...]
    next: str | None


# --- entity types ---------------------------------------------------------------------------------

# One encoder, made once: JSON columns are written on every command.
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Column(enum.Enum):
    TEXT = "text"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    REAL = "real"
    TIME = "time"  # fixed-width UTC text
    JSON = "json"


def _column_of(tp: Any) -> Column:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _column_of(rest[0]) if len(rest) == 1 else Column.JSON
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum) or issubclass(tp, str):
            return Column.TEXT
        if issubclass(tp, bool):
            return Column.BOOLEAN
        if issubclass(tp, int):
            return Column.INTEGER
        if issubclass(tp, float):
            return Column.REAL
        if issubclass(tp, datetime):
            return Column.TIME
    return Column.JSON


@attrs.frozen
class Index:
    """Fields indexed together, for filtering and ordering; with `where`, only the rows that
    match it (a partial index: equality, `In` or `Range` on scalar fields).

    A partial index of the id alone is the set of the entities that meet its `where`, kept by
    the database as they change: `Index(("id",), where={"open_deals": Range(gt=0)})`. A filter
    holding the same conditions may test an entity by a lookup in it, as a set condition is
    tested in its side table, instead of reading the entity's row (docs/storage.md)."""

    fields: tuple[str, ...] = attrs.field(converter=_tuple)
    where: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Unique:
    """Fields unique together; with `where`, only among the rows that match it (equality, `In`
    or `Range` on scalar fields), e.g. one *open* conversation per client and channel."""

    fields: tuple[str, ...] = attrs.field(converter=_tuple)
    where: Mapping[str, Any] = attrs.field(factory=dict)


def _indexable(cond: Any) -> bool:
    """Whether a condition can be a partial index's: an equality, `In` or `Range`."""
    if isinstance(cond, In | Range) or cond is None:
        return True
    operators = Not | HasAny | HasAll | IdOf
    return not isinstance(cond, operators | Mapping | Iterable) or isinstance(cond, str)


def _indexes(value: Iterable[Index | Sequence[str]]) -> tuple[Index, ...]:
    return tuple(i if isinstance(i, Index) else Index(tuple(i)) for i in value)


def _uniques(value: Iterable[Unique | Sequence[str]]) -> tuple[Unique, ...]:
    return tuple(u if isinstance(u, Unique) else Unique(tuple(u)) for u in value)


@attrs.frozen(kw_only=True)
class EntityType:
    """How an entity class is stored. Plugins register theirs with `jivocore_register_entity_types`.

    :param name: the table's name, e.g. ``"conversations"``.
    :param cls: the frozen attrs class, with ``id: str`` and ``version: int`` fields.
    :param indexes: field tuples (or `Index`, partial ones too) to index for filtering and
        ordering.
    :param unique: field tuples (or `Unique`) that must be unique together; the keys
        `upsert_many` can match on.
    :param members: set-valued fields that filters test with `HasAny` / `HasAll`.
    :param searchable: text fields covered by full-text `search`.
    """

    name: str
    cls: type[Any]
    indexes: tuple[Index, ...] = attrs.field(default=(), converter=_indexes)
    unique: tuple[Unique, ...] = attrs.field(default=(), converter=_uniques)
    members: tuple[str, ...] = ()
    searchable: tuple[str, ...] = ()
    columns: Mapping[str, Column] = attrs.field(init=False)
    _decoders: weakref.WeakKeyDictionary[cattrs.Converter, dict[bool, Callable[[Any], Any]]] = (
        attrs.field(init=False, factory=weakref.WeakKeyDictionary, eq=False, repr=False)
    )

    @columns.default
    def _columns(self) -> Mapping[str, Column]:
        hints = typing.get_type_hints(self.cls)
        return {f.name: _column_of(hints[f.name]) for f in attrs.fields(self.cls)}

    def __attrs_post_init__(self) -> None:
        if not attrs.has(self.cls):
            raise ValidationError(f"{self.cls!r} is not an attrs class", entity=self.name)
        if (
            self.columns.get("id") is not Column.TEXT
            or self.columns.get("version") is not Column.INTEGER
        ):
            raise ValidationError(
                f"{self.cls.__name__} needs fields `id: str` and `version: int` to be stored",
                entity=self.name,
            )
        keys: list[Index | Unique] = [*self.indexes, *self.unique]
        named = [f for key in keys for f in (*key.fields, *key.where)]
        for field in [*named, *self.members, *self.searchable]:
            if field not in self.columns:
                raise ValidationError(
                    f"{self.cls.__name__} has no field {field!r} to index", entity=self.name
                )
        for field in self.members:
            if self.columns[field] is not Column.JSON:
                raise ValidationError(f"{self.name}.{field} is not a set", entity=self.name)
        for key in keys:
            for field, cond in key.where.items():
                if self.columns[field] is Column.JSON or not _indexable(cond):
                    raise ValidationError(
                        f"{self.name}: an index's `where` holds equalities, In or Range on "
                        f"scalar fields, not {field}={cond!r}",
                        entity=self.name,
                        field=field,
                    )

    # Encoding shared by every backend -----------------------------------------------------------

    def encode(self, converter: cattrs.Converter, entity: Any) -> dict[str, Any]:
        """The entity as column values: scalars as they are, the rest as JSON text."""
        data: dict[str, Any] = converter.unstructure(entity)
        for name, column in self.columns.items():
            value = data[name]
            if column is Column.JSON:
                value = data[name] = _to_json(value)
            elif column is not Column.TEXT or value is None:
                continue
            if "\x00" in value:
                # PostgreSQL cannot store it; refused everywhere, so backends agree.
                raise ValidationError(
                    f"{self.cls.__name__}.{name} contains a NUL character (0x00)",
                    entity=self.name,
                    field=name,
                )
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate: no database stores it
                    raise ValidationError(
                        f"{self.cls.__name__}.{name} is not valid Unicode text (it holds a lone "
                        "surrogate)",
                        entity=self.name,
                        field=name,
                    ) from None
        return data

    def decode(self, converter: cattrs.Converter, row: Mapping[str, Any]) -> Any:
        """The entity a row (column name -> value) holds."""
        return self.decoder(converter)(row)

    def decoder(
        self, converter: cattrs.Converter, *, by_position: bool = False
    ) -> Callable[[Any], Any]:
        """`decode` as one function, for a backend to fetch once per query; `by_position`: it
        takes the values in `columns` order (a tuple, or a row that indexes by position, which
        saves making a dict per row). Rows are read often (a listing decodes a page of them),
        so it is made for this type and converter once; a row it cannot read goes the general
        way, which names what is wrong."""
        made = self._decoders.get(converter)
        if made is None:
            made = self._decoders[converter] = {}
        decoder = made.get(by_position)
        if decoder is None:
            decoder = made[by_position] = _make_decoder(self, converter, by_position)
        return decoder

    def decode_slowly(self, converter: cattrs.Converter, row: Mapping[str, Any]) -> Any:
        """`decode` through the converter: ValidationError naming what the row lacks."""
        data = dict(row)
        for name, column in self.columns.items():
            if column is Column.JSON and isinstance(data.get(name), str):
                data[name] = json.loads(data[name])
        return structure(converter, data, self.cls)

    def value(self, converter: cattrs.Converter, field: str, value: Any) -> Any:
        """A filter value as its column holds it (an enum as its value, a time as its text)."""
        self.check_filterable(field)
        return None if value is None else converter.unstructure(value)

    def check_searchable(self) -> None:
        """ValidationError unless the type has searchable fields (`Transaction.search`)."""
        if not self.searchable:
            raise ValidationError(f"{self.name} has no searchable fields", entity=self.name)

    def check_filterable(self, field: str) -> None:
        """ValidationError unless filters can test `field`: a scalar, or a set in `members`."""
        if self.columns[field] is Column.JSON and field not in self.members:
            raise ValidationError(
                f"{self.name}.{field} holds structured data and cannot be filtered on",
                entity=self.name,
                field=field,
            )

    def default(self, converter: cattrs.Converter, field: str) -> tuple[bool, Any]:
        """(True, the column value of `field`'s default), or (False, None) if it has none: what
        a backend gives existing rows when a plugin's entity gains the field."""
        attribute = attrs.fields_dict(self.cls)[field]
        if attribute.default is attrs.NOTHING:
            return False, None
        default: Any = attribute.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            if default.takes_self:
                return False, None
            default = default.factory()
        value = converter.unstructure(default)
        return True, _to_json(value) if self.columns[field] is Column.JSON else value

    def key(self, fields: Sequence[str]) -> Unique:
        """The unconditional unique constraint on exactly `fields`, for `upsert_many`."""
        for unique in self.unique:
            if unique.fields == tuple(fields) and not unique.where:
                return unique
        if tuple(fields) == ("id",):
            return Unique(("id",))
        raise ValidationError(
            f"{self.name} has no unique key {tuple(fields)!r} to upsert by", entity=self.name
        )

    def check_fields(self, fields: Iterable[str]) -> None:
        for field in fields:
            if field not in self.columns:
                known = ", ".join(self.columns)
                raise ValidationError(
                    f"{self.name} has no field {field!r}; it has: {known}",
                    entity=self.name,
                    field=field,
                )


# How a decoder reads a column: an expression over `v`, the column's value, and the names it
# uses. The JSON columns hold text the encoder wrote (no surrounding space), so the decoder's
# scanner reads them (`read_json(v, 0)`: value, end) without the checks `json.loads` adds (a
# quarter of the time) or the Python frame `raw_decode` puts around the scanner.
_Reader = tuple[str, dict[str, Any]]
_READ_NAMES: dict[str, Any] = {
    "read_json": json.JSONDecoder().scan_once,  # type: ignore[attr-defined]  # (not in typeshed)
    "empty_set": frozenset(),
    "fromisoformat": datetime.fromisoformat,
    "parse_time": parse_time,
    "UTC": UTC,
}


def _reader(converter: cattrs.Converter, tp: Any, column: Column, key: str) -> _Reader:
    """How to read one column's value as the field's type. The shapes the core stores are read
    directly; any other type goes through the converter's hook, resolved once. `key` names
    what this field's expression puts in the decoder's namespace."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return _hooked(converter, tp, column, key)
        inner, names = _reader(converter, rest[0], column, key)
        if column is Column.JSON:  # None is the JSON text null there
            return f'None if v is None or v == "null" else {inner}', names
        return ("v" if inner == "v" else f"None if v is None else {inner}"), names
    if column is Column.JSON:
        if origin is frozenset and args == (str,):
            return 'empty_set if v == "[]" else frozenset(read_json(v, 0)[0])', {}
        if origin is tuple and args == (str, ...):
            return '() if v == "[]" else tuple(read_json(v, 0)[0])', {}
        if origin is dict and args in ((str, str), (str, Any)):
            return '{} if v == "{}" else read_json(v, 0)[0]', {}
        hooked, names = _hooked(converter, tp, column, key)
        if origin in (tuple, frozenset):
            return f'{key}_empty if v == "[]" else {hooked}', {**names, f"{key}_empty": origin()}
        return hooked, names
    if tp in (str, int):
        return "v", {}
    if tp in (bool, float):
        return f"{tp.__name__}(v)", {}
    if tp is datetime:
        # parse_time inlined for the encoder's UTC text (read with the `timezone.utc` singleton,
        # which parse_time would return as it is); any other zone, or none, goes through it.
        return "t if (t := fromisoformat(v)).tzinfo is UTC else parse_time(v)", {}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"{key}_members[v]", {f"{key}_members": tp._value2member_map_}
    return _hooked(converter, tp, column, key)


def _hooked(converter: cattrs.Converter, tp: Any, column: Column, key: str) -> _Reader:
    value = "read_json(v, 0)[0]" if column is Column.JSON else "v"
    names = {f"{key}_hook": converter.get_structure_hook(tp), f"{key}_type": tp}
    return f"{key}_hook({value}, {key}_type)", names


def _make_decoder(
    etype: EntityType, converter: cattrs.Converter, by_position: bool
) -> Callable[[Any], Any]:
    """A function from a row to the entity, generated for `etype` as attrs and cattrs generate
    theirs, each field read by its `_reader`'s expression. A stored row was validated when it
    was written, so a class without converters or `__attrs_post_init__` is filled in directly,
    without running its validators again (what they check of times, the readers check)."""
    cls = etype.cls
    hints = typing.get_type_hints(cls)
    names: dict[str, Any] = {
        **_READ_NAMES,
        "cls": cls,
        "new": object.__new__,
        "bind_setattr": object.__setattr__.__get__,
    }
    fields = attrs.fields(cls)
    plain = not any(
        hasattr(cls, hook) for hook in ("__attrs_pre_init__", "__attrs_post_init__")
    ) and all(field.converter is None for field in fields)
    # A field in a slot is set through the slot's descriptor (what object.__setattr__ would look
    # up, then call); any other by a bound __setattr__, as attrs' own __init__ does (a third of
    # the cost of setattr(e, ...)).
    slots = [_slot(cls, field.name) for field in fields]
    body = ["entity = new(cls)"] if plain else []
    if plain and None in slots:
        body.append("set = bind_setattr(entity)")
    arguments = []
    for n, field in enumerate(fields):
        expression, used = _reader(converter, hints[field.name], etype.columns[field.name], f"f{n}")
        names.update(used)
        value = f"row[{n if by_position else repr(field.name)}]"
        if expression != "v":  # it reads `v`, maybe more than once
            body.append(f"v = {value}")
            value = expression
        if plain and slots[n] is not None:
            names[f"set_f{n}"] = slots[n].__set__
            body.append(f"set_f{n}(entity, {value})")
        elif plain:
            body.append(f"set({field.name!r}, {value})")
        else:
            body.append(f"f{n} = {value}")
            if field.init:
                arguments.append(f"{field.alias}=f{n}")
    body.append("return entity" if plain else f"return cls({', '.join(arguments)})")
    slowly = functools.partial(etype.decode_slowly, converter)
    if by_position:  # the row may hold more values after the entity's (a search's key, score)
        names["slowly"] = lambda row: slowly(dict(zip(etype.columns, row, strict=False)))
    else:
        names["slowly"] = slowly
    source = (
        "def decode(row):\n    try:\n"
        + "".join(f"        {line}\n" for line in body)
        + "    except Exception:\n        return slowly(row)\n"
    )
    exec(compile(source, f"<jivocore decoder for {etype.name}>", "exec"), names)
    return names["decode"]  # type: ignore[no-any-return]


def _slot(cls: type[Any], name: str) -> Any:
    """The slot descriptor that holds `name` on `cls`'s instances, or None (not a slot)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            found = vars(klass)[name]
            return found if isinstance(found, types.MemberDescriptorType) else None
    return None


def parse_order(etype: EntityType, order: Sequence[str]) -> list[tuple[str, bool]]:
    """`("-created", "name")` -> `[("created", True), ("name", False), ("id", False)]`: the
    order fields with `descending`; `id` closes every order so keyset pages are exact."""
    parsed = [(o.lstrip("-"), o.startswith("-")) for o in order]
    etype.check_fields(name for name, _ in parsed)
    for name, _ in parsed:
        if etype.columns[name] is Column.JSON:
            raise ValidationError(f"{etype.name}.{name} cannot be ordered on", field=name)
    if not any(name == "id" for name, _ in parsed):
        parsed.append(("id", parsed[-1][1] if parsed else False))
    return parsed


def make_cursor(
    converter: cattrs.Converter, etype: EntityType, entity: Any, order: Sequence[tuple[str, bool]]
) -> str:
    """An opaque cursor that resumes a listing after `entity`."""
    values = [converter.unstructure(getattr(entity, name)) for name, _ in order]
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def read_cursor(cursor: str, order: Sequence[tuple[str, bool]]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError as exc:
        raise ValidationError(f"not a cursor this listing made: {cursor!r}") from exc
    if not isinstance(values, list) or len(values) != len(order):
        raise ValidationError(f"the cursor {cursor!r} belongs to a listing in another order")
    return values


# --- what a backend provides ----------------------------------------------------------------------


class Transaction(Protocol):
    """One unit of work; everything in it commits or none of it does."""

    def get(self, cls: type[T], id: str) -> T:
        """The entity, or NotFoundError."""

    def find(self, cls: type[T], id: str) -> T | None:
        """The entity, or None."""

    def add(self, entity: T) -> T:
        """Store a new entity (version 0); returns it at version 1. ConflictError when a unique
        field is taken."""

    def update(self, entity: T) -> T:
        """Store `entity` if the stored version is still `entity.version`; returns it at the
        next version. ConflictError when someone else changed it first."""

    def delete(self, entity: T) -> None:
        """Remove the entity if its stored version is still `entity.version`."""

    def select(
        self,
        cls: type[T],
        where: Where | None = None,
        *,
        order: Sequence[str] = ("id",),
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[T]:
        """Matching entities in order, streamed."""

    def page(
        self,
        cls: type[T],
        where: Where | None = None,
        *,
        order: Sequence[str] = ("id",),
        after: str | None = None,
        limit: int = 50,
    ) -> Page[T]:
        """One page of `select`, with the cursor of the next."""

    def count(self, cls: type[Any], where: Where | None = None, *, limit: int | None = None) -> int:
        """How many entities match; with `limit`, counting stops there (the answer is at most
        `limit`), so a count of a broad filter costs what `limit` matches cost."""

    def search(
        self, cls: type[T], text: str, where: Where | None = None, *, limit: int = 50
    ) -> list[T]:
        """Entities whose searchable fields hold every word of `text`, best match first."""

    def search_page(
        self,
        cls: type[T],
        text: str,
        where: Where | None = None,
        *,
        window: int,
        order: Sequence[str] = ("id",),
        after: str | None = None,
        limit: int = 50,
    ) -> tuple[Page[T], int]:
        """The `window` best matches of `search` listed in `order` one page at a time, as
        `page` lists (pass `Page.next` as `after`), and how many they are (at most `window`):
        a free-text listing whose work is bounded by `window` whatever the words, and which
        reads only the page's entities."""

    def upsert_many(self, cls: type[T], entities: Iterable[T], *, key: Sequence[str]) -> int:
        """Add each entity, or update the one with the same `key` fields (keeping its id);
        returns how many were written."""


class Storage(Protocol):
    """A storage backend, as `jivocore_get_storage` returns it."""

    def setup(self, entity_types: Sequence[EntityType], converter: cattrs.Converter) -> None:
        """Create or extend the schema for these entity types."""

    def transaction(self, *, write: bool = True) -> AbstractContextManager[Transaction]:
        """A transaction; `write=False` gives a consistent read-only view."""

    def close(self) -> None:
        """Release connections."""


# --- search documents: an optional part of the contract -------------------------------------------

RELEVANCE_WINDOW = 1000
"""How many of the newest matches a relevance search ranks, by default (see `search_documents`)."""

_DOCUMENT_ORDERS = ("date", "relevance")


@attrs.frozen(kw_only=True)
class Document:
    """Search text kept beside one stored entity, outside its fields: a conversation's transcript,
    say, which is too big and too late to be a field of the conversation. Written in batches
    with `put_documents`; found with `search_documents`, together with filters on the entity's
    own fields, in one indexed query."""

    id: str  # the entity's id
    text: str
    at: datetime  # the document's date: date order lists the newest first

    @staticmethod
    def key_range(at: Range | None) -> tuple[int, int]:
        """The keys ``[low, high)`` of the documents dated within `at` (a `Range` of datetimes;
        None: every key): a backend walks only these keys (`document_key`), so a period costs
        what its own documents cost."""
        if at is None:
            return -_KEYS, _KEYS

        def first_key(instant: Any, later: int) -> int:  # the first key at or after it
            if not isinstance(instant, datetime) or instant.tzinfo is None:
                raise ValidationError(f"a document date range takes aware datetimes: {at!r}")
            micros = (instant - _EPOCH) // _MICROSECOND + later
            return max(-_KEYS, min(_KEYS, micros * 1024))

        low, high = -_KEYS, _KEYS
        for bound, later in ((at.ge, 0), (at.gt, 1)):
            if bound is not None:
                low = max(low, first_key(bound, later))
        for bound, later in ((at.lt, 0), (at.le, 1)):
            if bound is not None:
                high = min(high, first_key(bound, later))
        return low, max(low, high)


def document_key(at: datetime, slot: int = 0) -> int:
    """The integer a backend files a document under: its date in microseconds since the epoch,
    times 1024, plus a slot (0-1023) among documents of the same microsecond. Keys order
    documents by date, then by the order they were put; a backend gives a document the slot
    after the highest one taken at its microsecond."""
    if not 0 <= slot < 1024:
        raise ValidationError(f"more than 1024 documents share the instant {at.isoformat()}")
    micros = (at - _EPOCH) // _MICROSECOND
    if not -(2**52) <= micros < 2**52:
        raise ValidationError(f"a document's date must lie within 1827..2112, not {at}")
    return int(micros) * 1024 + slot


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_KEYS = 2**52 * 1024  # every key lies in [-_KEYS, _KEYS)


def search_words(text: str) -> list[str]:
    """The words of a search: `text` split on whitespace. Each word is then tokenised as the
    documents are (docs/storage.md); every word must match."""
    return text.split()


def check_page_size(*sizes: int) -> None:
    """ValidationError unless each of a listing's sizes (its page; a search's window too) is
    1 or more."""
    if min(sizes) < 1:
        raise ValidationError(f"a page holds at least one item, not {min(sizes)}")


def check_document_order(by: str) -> None:
    if by not in _DOCUMENT_ORDERS:
        raise ValidationError(f"search documents by 'date' or 'relevance', not {by!r}", by=by)


class DocumentSearch(Protocol):
    """What a transaction offers when its backend keeps search documents (both built-in ones
    do). Document storage for a type is made when its first document is put; searching a type
    that has none finds nothing.

    Search matches as `Transaction.search` does (every word; a word's tokens in a row; the
    tokenisation of docs/storage.md). Orders:

    - ``by="date"``: newest document first (its `Document.at`; the same instant: the one put
      last first). Keyset pages are exact, however many documents match.
    - ``by="relevance"``: the best match first, among the newest `window` documents that match
      the text and the filter; older matches are not ranked and not listed. This bounds the
      work of a relevance query whatever the words (ranking every match of a common word is
      slow), and favours recent conversations. Pages are exact while no document is put.

    `at` (a `Range` of datetimes) keeps only documents dated within it. Backends walk only the
    keys of that range (`Document.key_range`), so a period costs what its own documents cost,
    where the same bound on an entity field would be tested on every match walked.
    """

    def put_documents(self, cls: type[Any], documents: Iterable[Document]) -> int:
        """Store each entity's document, replacing the one it had; returns how many."""

    def delete_documents(self, cls: type[Any], ids: Iterable[str]) -> int:
        """Remove the documents of these entities; returns how many there were."""

    def document_dates(self, cls: type[Any], ids: Iterable[str]) -> dict[str, datetime]:
        """The date (`Document.at`) of each of these entities' documents, for those that have
        one."""

    def newest_document(self, cls: type[Any]) -> datetime | None:
        """The latest date among the type's documents, or None when it has none."""

    def search_documents(
        self,
        cls: type[T],
        text: str,
        where: Where | None = None,
        *,
        by: str = "date",
        after: str | None = None,
        limit: int = 50,
        window: int = RELEVANCE_WINDOW,
        at: Range | None = None,
    ) -> Page[T]:
        """One page of the entities whose document holds every word of `text`, is dated within
        `at` and that match `where`, in the order `by` names; pass `Page.next` as `after` for
        the next page."""


def make_document_cursor(by: str, score: float, key: int) -> str:
    """The cursor that resumes a `search_documents` listing after the item with this score (0
    in date order) and document key."""
    # The text json.dumps([by, score, key]) writes (`by` is a plain name), without its encoder.
    return base64.urlsafe_b64encode(f'["{by}", {float(score)!r}, {int(key)}]'.encode()).decode()


def read_document_cursor(after: str | None, by: str) -> tuple[float, int] | None:
    """(score, key) from a cursor `make_document_cursor` made for the same order, or None."""
    if after is None:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(after.encode()))
        if not isinstance(values, list) or values[0] != by:
            raise ValueError(by)
        return float(values[1]), int(values[2])
    except (ValueError, TypeError, IndexError) as exc:
        raise ValidationError(f"not a cursor this search made in {by} order: {after!r}") from exc
