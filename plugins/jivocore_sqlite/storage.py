"""The storage contract on SQLite: a file in WAL mode, or memory."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sqlite3
import threading
import typing
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import attrs
import cattrs
import sqlite_utils

from jivocore import (
    RELEVANCE_WINDOW,
    Column,
    ConfigurationError,
    ConflictError,
    Document,
    EntityType,
    HasAll,
    HasAny,
    IdOf,
    In,
    Index,
    Not,
    NotFoundError,
    Page,
    Range,
    StorageError,
    ValidationError,
    Where,
    check_document_order,
    check_page_size,
    document_key,
    make_cursor,
    make_document_cursor,
    parse_order,
    read_cursor,
    read_document_cursor,
    search_words,
)

T = TypeVar("T")

_SQL_TYPES = {
    Column.TEXT: str,
    Column.INTEGER: int,
    Column.BOOLEAN: int,
    Column.REAL: float,
    Column.TIME: str,
    Column.JSON: str,
}


def _translate(exc: sqlite3.Error | OverflowError, what: str) -> Exception:
    text = str(exc)
    if isinstance(exc, OverflowError):
        return ValidationError(f"{what}: a number is too large for the database ({text})")
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in text:
        fields = text.split(":", 1)[-1].strip()
        return ConflictError(f"{what}: another record already has the same {fields}", fields=fields)
    retriable = isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)
    return StorageError(f"{what}: SQLite said: {text}", retriable=retriable)


class _Tables:
    """Entity types by class, with the SQL each needs, made once."""

    def __init__(
        self, entity_types: Sequence[EntityType], converter: cattrs.Converter | None = None
    ) -> None:
        self.by_class: dict[type[Any], EntityType] = {}
        self.insert: dict[type[Any], str] = {}
        self.columns: dict[str, str] = {}
        self._updates: dict[tuple[str, tuple[str, ...]], str] = {}
        # Each type's indexes, as `_create` names them: what a listing can walk in order.
        self.indexes: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        self.fields: dict[str, tuple[str, ...]] = {}  # those indexes' fields, by name
        # Each type's partial indexes of the id alone: sets of the entities meeting their
        # conditions, probed as a side table is. Each with its conditions and the test of an
        # entity in it, in two parts to put the entity's id between.
        self.probes: dict[str, list[tuple[Mapping[str, Any], str, str]]] = {}
        # Fields that may hold None, which a row-value comparison cannot order.
        self.optional: dict[str, frozenset[str]] = {}
        for etype in entity_types:
            self.by_class[etype.cls] = etype
            hints = typing.get_type_hints(etype.cls)
            self.optional[etype.name] = frozenset(
                name for name in etype.columns if type(None) in typing.get_args(hints[name])
            )
            self.indexes[etype.name] = []
            self.probes[etype.name] = []
            for index in etype.indexes:
                if not index.where:
                    fields = _by_id(index.fields)
                    self.indexes[etype.name].append((_index_name(etype.name, fields), fields))
                elif index.fields == ("id",):
                    assert converter is not None  # setup() passes it
                    conditions = _literal_where(etype, converter, index.where, table="p")
                    self.probes[etype.name].append(
                        (
                            index.where,
                            f"EXISTS (SELECT 1 FROM [{etype.name}] AS p INDEXED BY "
                            f"[{_partial_name(etype, converter, index)}] WHERE p.id = ",
                            f" AND {' AND '.join(conditions)})",
                        )
                    )
            self.fields.update(self.indexes[etype.name])
            cols = list(etype.columns)
            # Every column by name, in the type's order: rows a decoder reads by position.
            self.columns[etype.name] = ", ".join(f"[{etype.name}].[{c}]" for c in cols)
            self.insert[etype.cls] = (
                f"INSERT INTO [{etype.name}] ({', '.join(f'[{c}]' for c in cols)}) "
                f"VALUES ({', '.join(f':{c}' for c in cols)})"
            )

    def update(self, etype: EntityType, changed: tuple[str, ...]) -> str:
        """The compare-and-set UPDATE that writes the `changed` columns."""
        sql = self._updates.get((etype.name, changed))
        if sql is None:
            sets = "".join(f"[{c}] = :{c}, " for c in changed)
            sql = self._updates[(etype.name, changed)] = (
                f"UPDATE [{etype.name}] SET {sets}version = version + 1 "
                "WHERE id = :id AND version = :version"
            )
        return sql

    def of(self, cls: type[Any]) -> EntityType:
        try:
            return self.by_class[cls]
        except KeyError:
            raise ValidationError(
                f"{cls.__name__} is not a registered entity type; register it with "
                "jivocore_register_entity_types",
                entity=cls.__name__,
            ) from None


class SQLiteTransaction:
    """A transaction on one SQLite connection."""

    # Rows read or written in this transaction, so an update writes only the columns (and side
    # table values) that changed; bounded, so a long scan does not hold the table in memory.
    _SEEN = 256

    def __init__(
        self,
        conn: sqlite3.Connection,
        tables: _Tables,
        converter: cattrs.Converter,
        *,
        write: bool = True,
    ):
        self.conn = conn
        self.tables = tables
        self.converter = converter
        self.write = write
        self._seen: dict[tuple[str, str], Mapping[str, Any]] = {}
        # Bounded counts that chose where listings start, kept by the connection (`_bounded`).
        self._counted: dict[_Counted, tuple[int, tuple[int, int]]] = (
            conn.counted if isinstance(conn, _Connection) else {}
        )
        self._stamp: tuple[int, int] | None = None
        # How many entities matched a filter (`_sorted`), by its SQL, with the connection's
        # changes then: a listing's page and its count ask alike; any write makes it stale.
        self._totals: dict[tuple[str, tuple[str, ...], tuple[Any, ...]], tuple[int, int]] = {}

    def _saw(self, etype: EntityType, row: Mapping[str, Any]) -> None:
        if len(self._seen) >= self._SEEN:
            del self._seen[next(iter(self._seen))]
        self._seen[(etype.name, row["id"])] = row

    def _decode(self, etype: EntityType, row: Sequence[Any]) -> Any:
        """The entity of a row holding its columns in the type's order (`_Tables.columns`),
        then anything else. A transaction that writes keeps the row, so that an update writes
        only what changed; one that reads does not need to."""
        if self.write:
            self._saw(etype, dict(zip(etype.columns, row, strict=False)))
        return etype.decoder(self.converter, by_position=True)(row)

    # reads --------------------------------------------------------------------------------

    def find(self, cls: type[T], id: str) -> T | None:
        etype = self.tables.of(cls)
        row = self.conn.execute(
            f"SELECT {self.tables.columns[etype.name]} FROM [{etype.name}] WHERE id = ?", (id,)
        ).fetchone()
        return None if row is None else self._decode(etype, row)

    def get(self, cls: type[T], id: str) -> T:
        found = self.find(cls, id)
        if found is None:
            raise NotFoundError(
                f"no {cls.__name__.lower()} with id {id!r}", entity=cls.__name__, id=id
            )
        return found

    def _where(
        self,
        etype: EntityType,
        where: Where | None,
        *,
        probe: bool = False,
        drive: tuple[str, Any] | None = None,
        walked: Sequence[str] | None = None,
    ) -> tuple[list[str], list[Any]]:
        """`where` as SQL conditions. A set field's condition is `id IN (the holders)`, which
        lets SQLite start from the side table when few entities hold the values. With `probe`,
        it is a correlated EXISTS on the side table instead (`_probes`), tested per row while
        another index drives (a walk in order, a full-text match), where the IN form would
        first list every holder (~1.5 ms for 5,000 of them, growing with the table). With
        `drive` (see `_drive`), only that condition is left for SQLite to start from: when it
        is a set's, the other sets are probed on its holders inside the side table, before any
        entity row is read (an operator's 24,000 clients narrowed to the 4,800 with a tag in
        13 ms, where probing after reading each client took 65), and the columns are made
        unindexable (`+column`).

        When a set drives, or a walk of the index on the fields `walked`, conditions that a
        partial index of the id holds (`_covered`) are tested by a lookup in it, on fields the
        walk does not seek by; a row is then read only for an entity that meets them. Walking
        1M clients in name order for a tag and open deals, 1.8 -> 0.7 us an entry (in created
        order, where rows are read in file order, 0.4 -> 0.5)."""
        clauses: list[str] = []
        params: list[Any] = []
        if not where:
            return clauses, params
        etype.check_fields(where)
        sets: dict[str, tuple[list[Any], bool]] = {}  # field: (values, any of them)
        for field, cond in where.items():
            etype.check_filterable(field)
            if field not in etype.members:
                if isinstance(cond, HasAny | HasAll):
                    raise ValidationError(f"{etype.name}.{field} is not a set field", field=field)
                continue
            if not isinstance(cond, HasAny | HasAll):
                raise ValidationError(
                    f"{etype.name}.{field} is a set: filter it with HasAny or HasAll", field=field
                )
            values = list(dict.fromkeys(etype.value(self.converter, field, v) for v in cond.values))
            if not values:
                clauses.append("0" if isinstance(cond, HasAny) else "1")
            else:
                sets[field] = values, isinstance(cond, HasAny)
        set_drives = drive is not None and drive[0] in sets
        # First, as a lookup in one index costs less than a set probe (one per value). Where
        # the columns' conditions lead, SQLite starts from their own indexes instead.
        tested: set[str] = set()
        if set_drives or walked is not None:
            entity_id = "h.entity_id" if set_drives else f"[{etype.name}].id"
            for conditions, head, tail in self._covered(etype, where):
                if not set_drives and set(conditions) & set(walked or ()):
                    continue
                clauses.append(f"{head}{entity_id}{tail}")
                tested.update(conditions)
        if set_drives:
            assert drive is not None
            holding, holding_params = self._holding(etype, sets, *drive)
            clauses += holding  # of the side table's rows `h` (see `_source`)
            params += holding_params
            sets = {}
        elif probe or drive is not None:  # another index drives, or the columns' conditions
            probes, probed = self._probes(etype, sets, f"[{etype.name}].id")
            clauses += probes
            params += probed
            sets = {}
        for field, (values, any_) in sets.items():
            side = f"[{etype.name}__{field}]"
            marks = ", ".join("?" * len(values))
            holders = f"[{etype.name}].id IN (SELECT entity_id FROM {side} WHERE value IN ({marks})"
            having = "" if any_ else f" GROUP BY entity_id HAVING count(*) = {len(values)}"
            clauses.append(f"{holders}{having})")
            params += values
        for field, cond in where.items():
            if field in etype.members or field in tested:
                continue
            unindexed = set_drives or (drive is not None and drive[0] not in ("", field))
            col = f"{'+' if unindexed else ''}[{etype.name}].[{field}]"
            if isinstance(cond, In):
                values = [etype.value(self.converter, field, v) for v in cond.values]
                present = [v for v in values if v is not None]
                either = [f"{col} IN ({', '.join('?' * len(present))})"] if present else []
                if len(present) < len(values):
                    either.append(f"{col} IS NULL")
                clauses.append("(" + " OR ".join(either) + ")" if either else "0")
                params += present
            elif isinstance(cond, IdOf) and drive is not None and drive[0] == field:
                found_clauses, found = self._found(cond)  # of the rows `_source` joins
                clauses += found_clauses
                params += found
            elif isinstance(cond, IdOf):
                clause, found = self._id_of(etype, col, cond, probe=probe or drive is not None)
                clauses.append(clause)
                params += found
            elif isinstance(cond, Not):
                if cond.value is None:
                    clauses.append(f"{col} IS NOT NULL")
                else:
                    clauses.append(f"({col} IS NULL OR {col} != ?)")
                    params.append(etype.value(self.converter, field, cond.value))
            elif isinstance(cond, Range):
                for op, bound in cond.bounds():
                    clauses.append(f"{col} {op} ?")
                    params.append(etype.value(self.converter, field, bound))
            elif cond is None:
                clauses.append(f"{col} IS NULL")
            else:
                clauses.append(f"{col} = ?")
                params.append(etype.value(self.converter, field, cond))
        return clauses, params

    def _scope(self, cond: IdOf) -> tuple[EntityType, str, list[Any]] | None:
        """(the type, the set field, its values) when `cond` finds the holders of any of some
        values of one set, as an operator's scope does: their ids are in its side table, which
        answers alone (they are ids of stored entities). Else None."""
        inner = self.tables.of(cond.cls)
        if len(cond.where) != 1:
            return None
        ((field, only),) = cond.where.items()
        if field not in inner.members or not isinstance(only, HasAny) or not only.values:
            return None
        values = dict.fromkeys(inner.value(self.converter, field, v) for v in only.values)
        return inner, field, list(values)

    def _found(self, cond: IdOf) -> tuple[list[str], list[Any]]:
        """The conditions on the rows that `_source` joins when `cond` leads, and their
        parameters: the side table's `h.value` for a scope, else the inner type's filter."""
        scope = self._scope(cond)
        if scope is None:
            return self._where(self.tables.of(cond.cls), cond.where)
        _, _, values = scope
        return [f"h.value IN ({', '.join('?' * len(values))})"], values

    def _ids(self, cond: IdOf) -> tuple[str, list[Any]]:
        """The SELECT of the ids `cond` finds, with its parameters."""
        scope = self._scope(cond)
        if scope is not None:
            inner, field, values = scope
            return self._holders(inner, field, values, once=False)
        inner = self.tables.of(cond.cls)
        clauses, params = self._where(inner, cond.where)
        found = f"SELECT [{inner.name}].id FROM [{inner.name}]"
        if clauses:
            found += " WHERE " + " AND ".join(clauses)
        return found, params

    def _id_of(
        self, etype: EntityType, col: str, cond: IdOf, *, probe: bool
    ) -> tuple[str, list[Any]]:
        """`col` (of `etype`) holds the id of an entity that `cond` finds, with the parameters:
        `IN` the ids, which SQLite may start from; with `probe` (another condition leads), a
        correlated EXISTS that looks the id up instead (~1 us a row)."""
        inner = self.tables.of(cond.cls)
        outer = col.lstrip("+")
        # The same type's table would clash with `col`'s in the correlation.
        if not probe or inner is etype:
            found, params = self._ids(cond)
            return f"{col} IN ({found})", params
        scope = self._scope(cond)
        if scope is not None:
            _, field, values = scope
            (clause,), params = self._probes(inner, {field: (values, True)}, outer)
            return clause, params
        table = f"[{inner.name}]"
        clauses, params = self._where(inner, cond.where, probe=True)
        clauses.insert(0, f"{table}.id = {outer}")
        return f"EXISTS (SELECT 1 FROM {table} WHERE {' AND '.join(clauses)})", params

    def _holding(
        self, etype: EntityType, sets: Mapping[str, tuple[list[Any], bool]], field: str, lead: Any
    ) -> tuple[list[str], list[Any]]:
        """The conditions on `field`'s side table rows `h` that find the ids meeting every one
        of `sets` (as `_where` gathers them) from the side tables alone: the holders of the
        field's values (of `lead` alone when it is one of a HasAll's values), each probed for
        the other sets. With their parameters."""
        values, any_ = sets[field]
        others = {f: v for f, v in sets.items() if f != field}
        if any_:
            head, params = f"h.value IN ({', '.join('?' * len(values))})", list(values)
        else:  # HasAll, led by one of its values; the others are probed like other sets
            head, params = "h.value = ?", [lead]
            rest = [v for v in values if v != lead]
            others = {field: (rest, False), **others} if rest else others
        probes, probed = self._probes(etype, others, "h.entity_id")
        return [head, *probes], [*params, *probed]

    def _source(
        self, etype: EntityType, where: Where | None, drive: tuple[str, Any] | None
    ) -> tuple[str, bool]:
        """The FROM of a listing whose conditions `_where` made with `drive`, and whether an
        entity may come from it more than once. When a set drives, its side table's rows `h`
        lead and each holder's row is joined by its id: 2.8x faster than `id IN (holders)`
        over 20,000 holders, which SQLite first lists and sorts. A holder of several of a
        HasAny's values comes once for each of them."""
        table = f"[{etype.name}]"
        if drive is None or drive[0] == "" or where is None:
            return table, False
        cond = where[drive[0]]
        if isinstance(cond, IdOf):  # the ids found lead, and each one's entities are joined
            col = f"{table}.[{drive[0]}]"
            scope = self._scope(cond)
            if scope is not None:
                inner, field, values = scope
                side = f"[{inner.name}__{field}]"
                return f"{side} AS h CROSS JOIN {table} ON {col} = h.entity_id", len(values) > 1
            inner_table = f"[{self.tables.of(cond.cls).name}]"
            return f"{inner_table} CROSS JOIN {table} ON {col} = {inner_table}.id", False
        side = f"[{etype.name}__{drive[0]}]"
        repeats = isinstance(cond, HasAny) and len(set(cond.values)) > 1
        return f"{side} AS h CROSS JOIN {table} ON {table}.id = h.entity_id", repeats

    @staticmethod
    def _probes(
        etype: EntityType, sets: Mapping[str, tuple[list[Any], bool]], entity_id: str
    ) -> tuple[list[str], list[Any]]:
        """The set conditions `sets` (field: (values, any of them)) as EXISTS tests of the
        entity `entity_id`, with their parameters. Each looks the entity up in the side table's
        (value, entity_id) index rather than its (entity_id, value) key: a value's holders lie
        together there, so the probes of a listing stay within a few pages (3.5x faster over
        24,000 probes on a 1M-client file, where the key spreads them over all of it)."""
        clauses: list[str] = []
        params: list[Any] = []
        for field, (values, any_) in sets.items():
            side = f"[{etype.name}__{field}]"
            exists = (
                f"EXISTS (SELECT 1 FROM {side} AS s INDEXED BY [{_value_index(etype, field)}] "
                f"WHERE s.entity_id = {entity_id} AND s.value"
            )
            if any_:
                clauses.append(f"{exists} IN ({', '.join('?' * len(values))}))")
            else:
                clauses += [f"{exists} = ?)"] * len(values)
            params += values
        return clauses, params

    def _covered(
        self, etype: EntityType, where: Where | None
    ) -> list[tuple[Mapping[str, Any], str, str]]:
        """The partial indexes of the id alone (`_Tables.probes`) whose conditions `where`
        holds, the same conditions: an entity is tested for them by one lookup in the index
        instead of reading its row. A tag's 21,000 holders narrowed to the 1,800 with open deals
        in 8 ms, where reading each holder's row took 40 (1M clients)."""
        if not where:
            return []
        return [
            probe
            for probe in self.tables.probes[etype.name]
            if all(f in where and where[f] == c for f, c in probe[0].items())
        ]

    def _covered_fields(self, etype: EntityType, where: Where | None) -> set[str]:
        """The fields whose conditions in `where` partial indexes hold (`_covered`)."""
        return {f for conditions, _, _ in self._covered(etype, where) for f in conditions}

    def _after(
        self,
        etype: EntityType,
        parsed: list[tuple[str, bool]],
        values: list[Any],
        *,
        table: str | None = None,
    ) -> tuple[str, list[Any]]:
        """The rows after the key `values` in the listing's order. In one direction over fields
        that are never NULL, a row value, which SQLite seeks in an index; otherwise (a, b, id)
        after (x, y, z) spelt out for mixed directions, with NULL first ascending and last
        descending, as SQLite orders it."""
        table = table or f"[{etype.name}]"
        if self._ordered(etype, parsed) and None not in values:
            cols = ", ".join(f"{table}.[{n}]" for n, _ in parsed)
            return f"({cols}) {'<' if parsed[0][1] else '>'} ({', '.join('?' * len(values))})", [
                *values
            ]
        ors, params = [], []
        for i, (name, desc) in enumerate(parsed):
            col = f"{table}.[{name}]"
            if values[i] is None:
                beyond = "0" if desc else f"{col} IS NOT NULL"
            else:
                beyond = f"({col} < ? OR {col} IS NULL)" if desc else f"{col} > ?"
            eqs = [f"{table}.[{n}] IS ?" for n, _ in parsed[:i]]
            ors.append("(" + " AND ".join([*eqs, beyond]) + ")")
            params += [*values[:i], *([] if values[i] is None else [values[i]])]
        return "(" + " OR ".join(ors) + ")", params

    def _ordered(self, etype: EntityType, parsed: list[tuple[str, bool]]) -> bool:
        """Whether the order runs one way over fields that are never NULL."""
        optional = self.tables.optional[etype.name]
        return len({d for _, d in parsed}) == 1 and not any(n in optional for n, _ in parsed)

    def _query(
        self,
        etype: EntityType,
        where: Where | None,
        parsed: list[tuple[str, bool]],
        after: list[Any] | None,
        limit: int | None,
        walk: tuple[str, list[Any] | None] | None = None,
    ) -> tuple[str, list[Any]]:
        """The listing's SELECT, of the rows after the key `after`. With `walk` (an index, and
        the key of the last entry to read or None), SQLite walks that index in the listing's
        order and tests the filter on each row, reading no further than that entry."""
        drive = None if walk is not None else self._drive(etype, where)
        walked = None if walk is None else self.tables.fields[walk[0]]
        clauses, params = self._where(
            etype, where, probe=walk is not None, drive=drive, walked=walked
        )
        if after is not None:
            clause, values = self._after(etype, parsed, after)
            clauses.append(clause)
            params += values
        source, repeats = self._source(etype, where, drive)
        distinct = "DISTINCT " if repeats else ""
        sql = f"SELECT {distinct}{self.tables.columns[etype.name]} FROM {source}"
        if walk is not None:
            index, last = walk
            sql += f" INDEXED BY [{index}]"
            if last is not None:
                cols = ", ".join(f"[{etype.name}].[{n}]" for n, _ in parsed)
                marks = ", ".join("?" * len(last))
                clauses.append(f"({cols}) {'>=' if parsed[0][1] else '<='} ({marks})")
                params += last
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY " + ", ".join(
            f"[{etype.name}].[{n}]{' DESC' if d else ''}" for n, d in parsed
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, params

    def _rows(
        self,
        etype: EntityType,
        where: Where | None,
        parsed: list[tuple[str, bool]],
        after: str | None,
        limit: int,
    ) -> list[Any]:
        """The first `limit` matches after `after`, walking an index in the listing's order
        where one fits, else found through the filter's indexes and sorted.

        An index lists the matches in order when its columns are fields `where` holds equal,
        then the order's fields, in one direction. When the filter tests more than those
        equalities, walking pays off only if matches are dense: it reads ~limit * N / m
        entries for m matches among N rows, where finding and sorting them reads m. So the
        walk is tried on the next sqrt(N * limit) entries (a reach: ~7,000 for pages of 50
        among 1M rows, which costs a few ms), goes on while the matches it met say the page
        ends within a few reaches, and otherwise the matches are found and sorted.
        """
        key = None if after is None else read_cursor(after, parsed)
        walk = self._walkable(etype, where, parsed)
        if walk is None:
            sql, params = self._query(etype, where, parsed, key, limit)
            return self.conn.execute(sql, params).fetchall()
        index, equal = walk
        rest = set(where or {}) - equal
        first = parsed[0][0]
        if not rest or (rest == {first} and isinstance((where or {})[first], Range)):
            # Every entry walked is a match: the index holds the equalities, and a range of
            # the order's first field is where the walk starts and stops.
            sql, params = self._query(etype, where, parsed, key, limit, (index, None))
            return self.conn.execute(sql, params).fetchall()
        rows_ = self.conn.execute(f"SELECT max(rowid) FROM [{etype.name}]").fetchone()[0] or 0
        reach = math.isqrt(rows_ * limit) + 1
        # How far walking pays: the matches found through a set lead cost a row read each
        # (~2 us), about what a walked entry costs at most, so no walk reads more entries than
        # the lead has holders; and six reaches in all, where probes fail most entries early.
        lead = self._lead(etype, where)
        bound = self._bound(etype)
        counted = lead is not None and lead[1] != "" and lead[0] < bound
        cap = min(6 * reach, lead[0]) if counted and lead is not None else 6 * reach
        # Set conditions (each value of a HasAll one), and conditions a partial index of the
        # id holds, narrow each other in their side tables and those indexes before any row is
        # read: then finding every match from a counted lead costs about what a walk that
        # comes back short does, and counts them too.
        sets = [c for f, c in (where or {}).items() if f in etype.members]
        narrowed = (
            sum(len(c.values) if isinstance(c, HasAll) else 1 for c in sets)
            + len(self._covered(etype, where))
            > 1
        )
        if cap < reach or (narrowed and counted) or self._rare(etype, where, reach):
            return self._sorted(etype, where, parsed, key, limit)
        rows, last = self._walk(etype, where, parsed, (index, equal), key, reach, limit)
        walked = reach
        # The matches met so far tell how far on the rest of the page lies: the walk goes on
        # while that is (with half again to spare) within the cap.
        while rows and last is not None and len(rows) < limit:
            further = 3 * (limit - len(rows)) * walked // (2 * len(rows)) + 1
            if walked + further > cap:
                break
            more, last = self._walk(
                etype, where, parsed, (index, equal), last, further, limit - len(rows)
            )
            rows += more
            walked += further
        if len(rows) == limit or last is None:
            return rows
        return self._sorted(etype, where, parsed, key, limit)

    def _walk(
        self,
        etype: EntityType,
        where: Where | None,
        parsed: list[tuple[str, bool]],
        walk: tuple[str, set[str]],
        after: list[Any] | None,
        reach: int,
        limit: int,
    ) -> tuple[list[Any], list[Any] | None]:
        """The first `limit` matches among the next `reach` entries of the index after the key
        `after`, and the key of the last entry read (None: the index ended within reach)."""
        index, equal = walk
        # The key of the last entry within reach, read from the index alone.
        clauses, params = self._where(etype, {f: (where or {})[f] for f in equal})
        if after is not None:
            clause, values = self._after(etype, parsed, after)
            clauses.append(clause)
            params += values
        cols = ", ".join(f"[{etype.name}].[{n}]" for n, _ in parsed)
        sql = f"SELECT {cols} FROM [{etype.name}] INDEXED BY [{index}]"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY " + ", ".join(
            f"[{etype.name}].[{n}]{' DESC' if d else ''}" for n, d in parsed
        )
        last = self.conn.execute(f"{sql} LIMIT 1 OFFSET {reach - 1}", params).fetchone()
        last_key = None if last is None else list(last)
        sql, params = self._query(etype, where, parsed, after, limit, (index, last_key))
        return self.conn.execute(sql, params).fetchall(), last_key

    def _sorted(
        self,
        etype: EntityType,
        where: Where | None,
        parsed: list[tuple[str, bool]],
        after: list[Any] | None,
        limit: int,
    ) -> list[Any]:
        """The first `limit` matches after `after`, found through the filter's indexes and
        sorted by their order keys alone; only the page's rows are then read whole. How many
        match in all comes with them, and `count` takes it from there in this transaction
        instead of finding them all again (a listing asks for both)."""
        table = f"[{etype.name}]"
        drive = self._drive(etype, where)
        clauses, params = self._where(etype, where, drive=drive)
        source, repeats = self._source(etype, where, drive)
        keys = ", ".join(f"{table}.[{n}]" for n, _ in parsed)
        order = ", ".join(f"[{n}]{' DESC' if d else ''}" for n, d in parsed)
        distinct = "DISTINCT " if repeats else ""
        matches = f"SELECT {distinct}{table}.rowid AS _row, {keys} FROM {source}"
        if clauses:
            matches += " WHERE " + " AND ".join(clauses)
        page = "SELECT * FROM m"
        rest: list[Any] = []
        if after is not None:
            clause, rest = self._after(etype, parsed, after, table="m")
            page += f" WHERE {clause}"
        sql = (
            f"WITH m AS MATERIALIZED ({matches}) "
            f"SELECT {self.tables.columns[etype.name]}, (SELECT count(*) FROM m) "
            f"FROM ({page} ORDER BY {order} LIMIT {int(limit)}) AS p "
            f"CROSS JOIN {table} ON {table}.rowid = p._row ORDER BY "
            + ", ".join(f"p.[{n}]{' DESC' if d else ''}" for n, d in parsed)
        )
        rows = self.conn.execute(sql, [*params, *rest]).fetchall()  # then the total
        if rows:
            total = int(rows[0][-1])
            if len(self._totals) >= self._SEEN:
                self._totals.clear()
            key = (etype.name, tuple(clauses), tuple(params))
            self._totals[key] = (total, self.conn.total_changes)
        return rows

    def _rare(self, etype: EntityType, where: Where | None, bound: int) -> bool:
        """Whether a set condition of `where` has fewer than `bound` holders (for HasAll, one
        of its values does), counted from its side table: then its holders, sorted, cost less
        than a walk that would not fill the page."""
        for field, cond in (where or {}).items():
            if field not in etype.members or not isinstance(cond, HasAny | HasAll):
                continue
            values = [etype.value(self.converter, field, v) for v in cond.values]
            groups = [values] if isinstance(cond, HasAny) else [[v] for v in values]
            for group in groups:
                holders = self._holders(etype, field, group, once=False)
                if group and self._bounded(*holders, bound) < bound:
                    return True
        return False

    @staticmethod
    def _holders(
        etype: EntityType, field: str, values: list[Any], *, once: bool = True
    ) -> tuple[str, list[Any]]:
        """The ids holding any of `values` in `field`, from its side table, once each; with
        `once` False, a holder of several of the values once for each of them: counted, an
        upper bound found without sorting them (a tenth of the time for 28,000 holders of two
        tags), which is all choosing where to start from needs."""
        distinct = "DISTINCT " if once and len(values) > 1 else ""
        marks = ", ".join("?" * len(values))
        side = f"[{etype.name}__{field}]"
        return f"SELECT {distinct}entity_id FROM {side} WHERE value IN ({marks})", values

    def _walkable(
        self, etype: EntityType, where: Where | None, parsed: list[tuple[str, bool]]
    ) -> tuple[str, set[str]] | None:
        """The index that lists `where`'s matches in `parsed` order (see `_rows`), with the
        fields of `where` it holds equal; None if there is none, or the order may hold NULL."""
        if not self._ordered(etype, parsed):
            return None
        names = tuple(name for name, _ in parsed)
        equal = {
            field
            for field, cond in (where or {}).items()
            if field not in etype.members
            and not isinstance(cond, Not | Range | IdOf)
            and not (isinstance(cond, In) and len(set(cond.values)) != 1)
        }
        best: tuple[int, str, set[str]] | None = None
        for index, fields in self.tables.indexes[etype.name]:
            k = len(fields) - len(names)
            fits = k >= 0 and fields[k:] == names and set(fields[:k]) <= equal
            if fits and (best is None or k > best[0]):
                best = (k, index, set(fields[:k]))
        return None if best is None else (best[1], best[2])

    def _drive(self, etype: EntityType, where: Where | None) -> tuple[str, Any] | None:
        """The condition to find the matches of `where` from (see `_lead`)."""
        lead = self._lead(etype, where)
        return None if lead is None else (lead[1], lead[2])

    def _lead(self, etype: EntityType, where: Where | None) -> tuple[int, str, Any] | None:
        """How many entities hold the condition to find the matches of `where` from (counted
        up to `_bound`), and that condition, when `where` combines a set condition with others
        (or is all of several values): (a set field, None), (a set field, one value of its
        HasAll), or ("", None) for the conditions on the entity's own columns, with SQLite
        choosing among their indexes; None leaves every choice to SQLite. Its statistics know
        only the average set value, so a tag held by 20% of the clients would lead as readily
        as one held by 0.1%: instead the columns' conditions are counted together, then each
        candidate set up to the best count so far, each from its own index, and the smallest
        leads."""
        where = where or {}
        leading = {fields[0] for _, fields in self.tables.indexes[etype.name]}
        sets = [
            f
            for f, c in where.items()
            if (f in etype.members and isinstance(c, HasAny | HasAll) and c.values)
            or (isinstance(c, IdOf) and f in leading and self.tables.of(c.cls) is not etype)
        ]
        if not sets or (len(where) < 2 and not isinstance(where[sets[0]], HasAll)):
            return None
        columns = {
            f: c for f, c in where.items() if f not in etype.members and not isinstance(c, IdOf)
        }
        candidates: list[tuple[str, list[Any], str, Any]] = []  # sql, params, field, value
        if any(f in leading and not isinstance(c, Not) for f, c in columns.items()):
            # Counted on the fields that indexes hold, as SQLite would start from them: one
            # that none holds would be tested on each row read, ~5 us where an index entry
            # costs 0.05 (open deals of a stage without an index for stages, up to the bound:
            # 61 -> 0.5 ms).
            held = {f for _, fields in self.tables.indexes[etype.name] for f in fields}
            clauses, params = self._where(etype, {f: c for f, c in columns.items() if f in held})
            if clauses:  # none when they are all `Range()`, which is no condition
                sql = f"SELECT 1 FROM [{etype.name}] WHERE {' AND '.join(clauses)}"
                candidates.append((sql, params, "", None))
        for field in sets:
            cond = where[field]
            if isinstance(cond, IdOf):
                candidates.append((*self._ids(cond), field, None))
                continue
            values = [etype.value(self.converter, field, v) for v in cond.values]
            if isinstance(cond, HasAll):
                candidates += [(*self._holders(etype, field, [v]), field, v) for v in values]
            else:
                candidates.append((*self._holders(etype, field, values, once=False), field, None))
        bound = self._bound(etype)
        # The columns' conditions (listed first) lead when nothing is counted under the
        # bound; without an index for them, any set does. When both are counted up to the
        # bound, so does a set when partial indexes hold every column condition: its holders
        # are then narrowed without reading a row (a count of 1,000 clients with a tag and
        # open deals, 15 -> 5 ms); and so do the ids of an IdOf, each looked up in the field's
        # index (an operator's 24,000 clients for 1,000 of their open deals among 90,000:
        # 9 ms, where testing each open deal took 20).
        ties = bool(columns) and columns.keys() <= self._covered_fields(etype, where)
        best: tuple[int, str, Any] = (bound + 1, "", None)
        for sql, params, field, value in candidates:
            count = self._bounded(sql, params, min(best[0], bound))
            tied = count == best[0] == bound and field and not best[1]
            if count < best[0] or (tied and (ties or isinstance(where[field], IdOf))):
                best = (count, field, value)
        return best

    def _bound(self, etype: EntityType) -> int:
        """How far `_lead` counts: four walks' reach for pages of 50 (see `_rows`)."""
        rows = self.conn.execute(f"SELECT max(rowid) FROM [{etype.name}]").fetchone()[0] or 0
        return 4 * math.isqrt(rows * 51) + 1

    def _bounded(self, sql: str, params: list[Any], bound: int) -> int:
        """How many rows `sql` selects, up to `bound`. Such counts only choose a plan, never
        an answer, so the connection keeps them across transactions until a write (its own,
        or one another connection commits): listings of an operator's clients or a common tag
        count them once, not each time (~1.5 ms each on 1M clients)."""
        if self._stamp is None:  # once per transaction
            version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
            self._stamp = (version, self.conn.total_changes)
        elif self.write:
            self._stamp = (self._stamp[0], self.conn.total_changes)
        key = (sql, tuple(params), bound)
        known = self._counted.get(key)
        if known is not None and known[1] == self._stamp:
            return known[0]
        count = int(
            self.conn.execute(f"SELECT count(*) FROM ({sql} LIMIT {bound})", params).fetchone()[0]
        )
        if len(self._counted) >= self._SEEN:
            self._counted.clear()
        self._counted[key] = (count, self._stamp)
        return count

    def select(
        self,
        cls: type[T],
        where: Where | None = None,
        *,
        order: Sequence[str] = ("id",),
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[T]:
        etype = self.tables.of(cls)
        parsed = parse_order(etype, order)
        if limit is not None:
            rows = self._rows(etype, where, parsed, after, limit)
            return (self._decode(etype, row) for row in rows)
        key = None if after is None else read_cursor(after, parsed)
        sql, params = self._query(etype, where, parsed, key, limit)
        return self._stream(etype, sql, params)

    def _stream(self, etype: EntityType, sql: str, params: list[Any]) -> Iterator[Any]:
        cursor = self.conn.execute(sql, params)
        while rows := cursor.fetchmany(200):
            for row in rows:
                yield self._decode(etype, row)

    def page(
        self,
        cls: type[T],
        where: Where | None = None,
        *,
        order: Sequence[str] = ("id",),
        after: str | None = None,
        limit: int = 50,
    ) -> Page[T]:
        check_page_size(limit)
        etype = self.tables.of(cls)
        parsed = parse_order(etype, order)
        rows = self._rows(etype, where, parsed, after, limit + 1)
        items = [self._decode(etype, row) for row in rows]
        more = len(items) > limit
        items = items[:limit]
        cursor = make_cursor(self.converter, etype, items[-1], parsed) if more else None
        return Page(tuple(items), cursor)

    def count(self, cls: type[Any], where: Where | None = None, *, limit: int | None = None) -> int:
        if limit is not None and limit < 0:
            raise ValidationError(f"a count stops at a number of 0 or more, not {limit}")
        etype = self.tables.of(cls)
        drive = self._drive(etype, where)
        clauses, params = self._where(etype, where, drive=drive)
        known = self._totals.get((etype.name, tuple(clauses), tuple(params)))
        if known is not None and known[1] == self.conn.total_changes:
            return known[0] if limit is None else min(known[0], limit)
        field, cond = next(iter(where.items())) if where and len(where) == 1 else ("", None)
        source, repeats = self._source(etype, where, drive)
        probed = self._covered_fields(etype, where)
        if field in etype.members and isinstance(cond, HasAny) and params:
            # One set condition: its side table's (value, entity_id) index answers alone.
            sql, params = self._holders(etype, field, params)
        elif (
            drive is not None
            and drive[0]
            and all(f in etype.members or f in probed for f in where or {})
        ):
            # Only sets, one leading, and conditions partial indexes hold: their side tables
            # and those indexes answer alone.
            side = f"[{etype.name}__{drive[0]}]"
            sql = f"SELECT {'DISTINCT h.entity_id' if repeats else '1'} FROM {side} AS h"
            sql += " WHERE " + " AND ".join(clauses)
        else:
            sql = f"SELECT {f'DISTINCT [{etype.name}].rowid' if repeats else '1'} FROM {source}"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return int(self.conn.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0])

    def search(
        self, cls: type[T], text: str, where: Where | None = None, *, limit: int = 50
    ) -> list[T]:
        etype = self.tables.of(cls)
        etype.check_searchable()
        words = search_words(text)
        if not words:
            return []
        match = _fts_match(words)
        clauses, params = self._where(etype, where)
        sql = (
            f"SELECT {self.tables.columns[etype.name]} FROM [{etype.name}_fts] "
            f"JOIN [{etype.name}] ON [{etype.name}].rowid = [{etype.name}_fts].rowid "
            f"WHERE [{etype.name}_fts] MATCH ?"
        )
        if clauses:
            sql += " AND " + " AND ".join(clauses)
        sql += f" ORDER BY [{etype.name}_fts].rank LIMIT {int(limit)}"
        rows = self.conn.execute(sql, [match, *params]).fetchall()
        return [self._decode(etype, row) for row in rows]

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
        etype = self.tables.of(cls)
        etype.check_searchable()
        check_page_size(limit, window)
        parsed = parse_order(etype, order)
        words = search_words(text)
        if not words:
            return Page((), None), 0
        match = _fts_match(words)
        table, fts = f"[{etype.name}]", f"[{etype.name}_fts]"
        # The full-text index drives: the filter's sets are probed per match.
        clauses, params = self._where(etype, where, probe=True)
        hits = (
            f"WITH hits AS (SELECT {table}.rowid AS _row FROM {fts} CROSS JOIN {table} "
            f"ON {table}.rowid = {fts}.rowid WHERE {fts} MATCH ?"
            + "".join(f" AND {c}" for c in clauses)
            + f" ORDER BY {fts}.rank LIMIT {int(window)}) "
        )
        params = [match, *params]
        # Only the window's order keys are sorted; only the page's rows are read and decoded.
        sql = (
            f"{hits}SELECT {self.tables.columns[etype.name]}, (SELECT count(*) FROM hits) AS _n "
            f"FROM hits CROSS JOIN {table} ON {table}.rowid = hits._row"
        )
        rest: list[Any] = []
        if after is not None:
            clause, rest = self._after(etype, parsed, read_cursor(after, parsed))
            sql += f" WHERE {clause}"
        sql += " ORDER BY " + ", ".join(f"{table}.[{n}]{' DESC' if d else ''}" for n, d in parsed)
        rows = self.conn.execute(f"{sql} LIMIT {int(limit) + 1}", [*params, *rest]).fetchall()
        if rows:
            count = int(rows[0]["_n"])
        else:  # past the last page
            count = int(self.conn.execute(f"{hits}SELECT count(*) FROM hits", params).fetchone()[0])
        items = [self._decode(etype, row) for row in rows[:limit]]
        more = len(rows) > limit
        cursor = make_cursor(self.converter, etype, items[-1], parsed) if more else None
        return Page(tuple(items), cursor), count

    # writes -------------------------------------------------------------------------------

    def add(self, entity: T) -> T:
        cls = type(entity)
        etype = self.tables.of(cls)
        if entity.version != 0:  # type: ignore[attr-defined]
            raise ValidationError(
                f"{cls.__name__} {entity.id} was already stored (version "  # type: ignore[attr-defined]
                f"{entity.version}); update it instead",  # type: ignore[attr-defined]
            )
        stored = attrs.evolve(entity, version=1)  # type: ignore[misc]
        row = etype.encode(self.converter, stored)
        try:
            self.conn.execute(self.tables.insert[cls], row)
        except (sqlite3.Error, OverflowError) as exc:
            raise _translate(exc, f"cannot add {cls.__name__} {row['id']}") from exc
        self._index(etype, row, None)
        self._saw(etype, row)
        return stored

    def update(self, entity: T) -> T:
        cls = type(entity)
        etype = self.tables.of(cls)
        row = etype.encode(self.converter, entity)
        old = self._seen.get((etype.name, row["id"]))
        if old is None or old["version"] != row["version"]:
            old = None
            changed = tuple(c for c in etype.columns if c not in ("id", "version"))
        else:
            changed = tuple(c for c in etype.columns if c != "version" and row[c] != old[c])
        params = {c: row[c] for c in changed}
        params.update(id=row["id"], version=row["version"])
        try:
            updated = self.conn.execute(self.tables.update(etype, changed), params).rowcount
        except (sqlite3.Error, OverflowError) as exc:
            raise _translate(exc, f"cannot update {cls.__name__} {row['id']}") from exc
        if not updated:
            self._missed(etype, entity)
        stored = attrs.evolve(entity, version=entity.version + 1)  # type: ignore[attr-defined, misc]
        row["version"] += 1
        self._index(etype, row, old)
        self._saw(etype, row)
        return stored

    def delete(self, entity: T) -> None:
        etype = self.tables.of(type(entity))
        entity_id, version = entity.id, entity.version  # type: ignore[attr-defined]
        try:
            for field in etype.members:
                self.conn.execute(
                    f"DELETE FROM [{etype.name}__{field}] WHERE entity_id = ?", (entity_id,)
                )
            if etype.searchable:
                self.conn.execute(
                    f"DELETE FROM [{etype.name}_fts] WHERE rowid = "
                    f"(SELECT rowid FROM [{etype.name}] WHERE id = ?)",
                    (entity_id,),
                )
            gone = self.conn.execute(
                f"DELETE FROM [{etype.name}] WHERE id = ? AND version = ?", (entity_id, version)
            ).rowcount
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot delete {etype.cls.__name__} {entity_id}") from exc
        if not gone:
            self._missed(etype, entity)
        self._seen.pop((etype.name, entity_id), None)

    def upsert_many(self, cls: type[T], entities: Iterable[T], *, key: Sequence[str]) -> int:
        etype = self.tables.of(cls)
        etype.key(key)
        written = 0
        for entity in entities:
            where = {k: getattr(entity, k) for k in key}
            existing = next(self.select(cls, where, limit=1), None)
            if existing is None:
                self.add(attrs.evolve(entity, version=0))  # type: ignore[misc]
            else:
                self.update(attrs.evolve(entity, id=existing.id, version=existing.version))  # type: ignore[attr-defined, misc]
            written += 1
        return written

    def _missed(self, etype: EntityType, entity: Any) -> None:
        row = self.conn.execute(
            f"SELECT version FROM [{etype.name}] WHERE id = ?", (entity.id,)
        ).fetchone()
        name = etype.cls.__name__
        if row is None:
            raise NotFoundError(
                f"no {name.lower()} with id {entity.id!r}", entity=name, id=entity.id
            )
        raise ConflictError(
            f"{name} {entity.id} was changed by someone else (now version {row[0]}, "
            f"this change was made on version {entity.version}); reload it and try again",
            entity=name,
            id=entity.id,
            expected=entity.version,
            actual=row[0],
        )

    def _index(
        self, etype: EntityType, row: Mapping[str, Any], old: Mapping[str, Any] | None
    ) -> None:
        """Keep the side tables and the full-text index in step with `row`, which replaced
        `old` (None: a new row, or one whose previous values this transaction did not see)."""
        entity_id = row["id"]
        for field in etype.members:
            if old is not None and old[field] == row[field]:
                continue
            side = f"[{etype.name}__{field}]"
            values = set(json.loads(row[field]))
            if old is None:
                self.conn.execute(f"DELETE FROM {side} WHERE entity_id = ?", (entity_id,))
                gone, new = set(), values
            else:
                before = set(json.loads(old[field]))
                gone, new = before - values, values - before
            if gone:
                self.conn.executemany(
                    f"DELETE FROM {side} WHERE entity_id = ? AND value = ?",
                    [(entity_id, v) for v in gone],
                )
            if new:
                self.conn.executemany(
                    f"INSERT INTO {side} (entity_id, value) VALUES (?, ?)",
                    [(entity_id, v) for v in new],
                )
        if etype.searchable and (old is None or any(old[c] != row[c] for c in etype.searchable)):
            fts = f"[{etype.name}_fts]"
            rowid = self.conn.execute(
                f"SELECT rowid FROM [{etype.name}] WHERE id = ?", (entity_id,)
            ).fetchone()[0]
            self.conn.execute(f"DELETE FROM {fts} WHERE rowid = ?", (rowid,))
            cols = ", ".join(f"[{c}]" for c in etype.searchable)
            marks = ", ".join("?" * len(etype.searchable))
            self.conn.execute(
                f"INSERT INTO {fts} (rowid, {cols}) VALUES (?, {marks})",
                [rowid, *(row[c] or "" for c in etype.searchable)],
            )

    # search documents ---------------------------------------------------------------------
    # `<table>__documents` maps each entity to the key it is filed under (its date, see
    # jivocore.document_key) and `<table>__documents_fts` (FTS5, rowid = key) holds the text.
    # A date-ordered search walks the FTS index newest key first and stops at the page's end.

    def _documents(self, etype: EntityType, *, create: bool) -> bool:
        """Whether the type's document tables exist; with `create`, make them first."""
        docs = f"{etype.name}__documents"
        if create:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS [{docs}] (key INTEGER PRIMARY KEY, "
                "entity_id TEXT NOT NULL UNIQUE, at TEXT NOT NULL)"
            )
            self.conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS [{docs}_fts] USING fts5(text)")
            return True
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = ?", (f"{docs}_fts",)
        ).fetchone()
        return found is not None

    def put_documents(self, cls: type[Any], documents: Iterable[Document]) -> int:
        etype = self.tables.of(cls)
        docs = f"[{etype.name}__documents]"
        written = 0
        try:
            self._documents(etype, create=True)
            for document in documents:
                self._drop_document(etype, document.id)
                base = document_key(document.at)
                taken = self.conn.execute(
                    f"SELECT max(key) FROM {docs} WHERE key BETWEEN ? AND ?", (base, base + 1023)
                ).fetchone()[0]
                key = document_key(document.at, 0 if taken is None else taken - base + 1)
                at = self.converter.unstructure(document.at)
                self.conn.execute(
                    f"INSERT INTO {docs} (key, entity_id, at) VALUES (?, ?, ?)",
                    (key, document.id, at),
                )
                self.conn.execute(
                    f"INSERT INTO [{etype.name}__documents_fts] (rowid, text) VALUES (?, ?)",
                    (key, document.text),
                )
                written += 1
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot index {etype.name}") from exc
        return written

    def _drop_document(self, etype: EntityType, entity_id: str) -> bool:
        docs = f"[{etype.name}__documents]"
        row = self.conn.execute(f"SELECT key FROM {docs} WHERE entity_id = ?", (entity_id,))
        found = row.fetchone()
        if found is None:
            return False
        self.conn.execute(f"DELETE FROM [{etype.name}__documents_fts] WHERE rowid = ?", found)
        self.conn.execute(f"DELETE FROM {docs} WHERE key = ?", found)
        return True

    def delete_documents(self, cls: type[Any], ids: Iterable[str]) -> int:
        etype = self.tables.of(cls)
        if not self._documents(etype, create=False):
            return 0
        try:
            return sum(self._drop_document(etype, i) for i in ids)
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot delete {etype.name} documents") from exc

    def document_dates(self, cls: type[Any], ids: Iterable[str]) -> dict[str, datetime]:
        etype = self.tables.of(cls)
        wanted = list(dict.fromkeys(ids))
        if not wanted or not self._documents(etype, create=False):
            return {}
        found: dict[str, datetime] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self.conn.execute(
                f"SELECT entity_id, at FROM [{etype.name}__documents] "
                f"WHERE entity_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for entity_id, at in rows:
                found[entity_id] = datetime.fromisoformat(at)
        return found

    def newest_document(self, cls: type[Any]) -> datetime | None:
        etype = self.tables.of(cls)
        if not self._documents(etype, create=False):
            return None
        row = self.conn.execute(
            f"SELECT at FROM [{etype.name}__documents] ORDER BY key DESC LIMIT 1"
        ).fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

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
        etype = self.tables.of(cls)
        check_document_order(by)
        check_page_size(limit, window)
        words = search_words(text)
        clauses, params = self._where(etype, where, probe=True)
        low, high = Document.key_range(at)
        cursor = read_document_cursor(after, by)
        if by == "date" and cursor is not None:
            high = min(high, cursor[1])
        if not words:
            return Page((), None)
        match = _fts_match(words)
        resume = () if cursor is None or by == "date" else (cursor[0], cursor[0], cursor[1])
        params = [match, low, high, *params, *resume]
        sql = _search_sql(
            etype.name,
            self.tables.columns[etype.name],
            tuple(clauses),
            by,
            limit,
            window,
            bool(resume),
        )
        try:
            # Rows are read by position: plain tuples, not the connection's sqlite3.Row.
            found = self.conn.cursor()
            found.row_factory = None
            rows = found.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            # Asked only when the search fails: a lookup per search costs a tenth of it.
            if not self._documents(etype, create=False):
                return Page((), None)  # nothing indexed yet
            raise _translate(exc, f"cannot search {etype.name}") from exc
        decode = etype.decoder(self.converter, by_position=True)
        items = tuple(map(decode, rows[:limit]))
        if len(rows) <= limit:
            return Page(items, None)
        last = rows[limit - 1]  # then its key and score
        return Page(items, make_document_cursor(by, float(last[-1]), int(last[-2])))


@functools.lru_cache(maxsize=256)
def _search_sql(
    name: str,
    columns: str,
    clauses: tuple[str, ...],
    by: str,
    limit: int,
    window: int,
    resume: bool,
) -> str:
    """`search_documents`' SQL for a type, filter shape and order, made once: a search is
    quick enough that writing it out again would be a tenth of its time. Parameters: the
    MATCH text, the key range, the filter's values, and with `resume` the score and key to
    resume a relevance listing after."""
    table, fts = f"[{name}]", f"[{name}__documents_fts]"
    # CROSS JOIN fixes the join order: the FTS index drives, newest key first, from the top
    # of the date range down to its bottom (FTS5 seeks to the rowid bounds; a bound on an
    # entity column would be tested on every match walked instead).
    hits = (
        f"FROM {fts} CROSS JOIN [{name}__documents] AS d ON d.key = {fts}.rowid "
        f"CROSS JOIN {table} ON {table}.id = d.entity_id WHERE {fts} MATCH ? "
        f"AND {fts}.rowid >= ? AND {fts}.rowid < ?" + "".join(f" AND {c}" for c in clauses)
    )
    # The entity's columns, then the key and score.
    if by == "date":
        return (
            f"SELECT {columns}, {fts}.rowid AS _key, 0.0 AS _score {hits} "
            f"ORDER BY {fts}.rowid DESC LIMIT {int(limit) + 1}"
        )
    # Rank only the newest `window` matches: bm25 over every match of a common word would
    # read its whole posting list.
    sql = (
        f"WITH hits AS (SELECT {table}.rowid AS _row, {fts}.rowid AS _key, "
        f"bm25({fts}) AS _score {hits} ORDER BY {fts}.rowid DESC LIMIT {int(window)}) "
        f"SELECT {columns}, hits._key, hits._score FROM hits "
        f"CROSS JOIN {table} ON {table}.rowid = hits._row"
    )
    if resume:
        sql += " WHERE (hits._score > ? OR (hits._score = ? AND hits._key < ?))"
    return sql + f" ORDER BY hits._score, hits._key DESC LIMIT {int(limit) + 1}"


def _fts_match(words: Sequence[str]) -> str:
    """An FTS5 query for every one of `words`, each quoted: user text never reaches FTS5's
    query syntax."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _by_id(fields: Sequence[str]) -> tuple[str, ...]:
    """A declared index's columns, then the id unless it ends with it. Side tables are keyed
    by the entity's id, so a set condition is probed from any index's entries alone, without
    reading the row: the clients with open deals that carry a tag are counted from the
    `open_deals` index (15 ms for 1,000 of them among 1M clients, 34 with the row read)."""
    return tuple(fields) if fields and fields[-1] == "id" else (*fields, "id")


def _index_name(table: str, fields: Sequence[str]) -> str:
    return f"idx_{table}_{'_'.join(fields)}"


def _value_index(etype: EntityType, field: str) -> str:
    """The side table's (value, entity_id) index, as `_create` names it."""
    return f"idx_{etype.name}__{field}_value_entity_id"


class _Connection(sqlite3.Connection):
    """A connection that can be referred to weakly (sqlite3.Connection cannot), and keeps the
    bounded counts its listings made (`SQLiteTransaction._bounded`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted: dict[_Counted, tuple[int, tuple[int, int]]] = {}


_Counted = tuple[str, tuple[Any, ...], int]  # a bounded count's SQL, parameters and bound


class SQLiteStorage:
    """SQLite storage. A file gets one connection per thread, in WAL mode; memory gets one
    connection that transactions take turns on."""

    def __init__(
        self, path: str = ":memory:", *, synchronous: str = "NORMAL", mmap_size: int = 2**30
    ) -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValidationError(
                f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        if isinstance(mmap_size, bool) or not isinstance(mmap_size, int) or mmap_size < 0:
            raise ValidationError(f"mmap_size is a number of bytes, 0 or more, not {mmap_size!r}")
        # Reads of the file's first `mmap_size` bytes go through memory shared with the OS's
        # page cache instead of a read() into each connection's 2 MB cache, which listings
        # that probe across a large file thrash: walking 7,000 clients in name order with a
        # tag probe each, 18 -> 9 ms at 1M clients (bench/README.md, crm.py).
        self.mmap_size = mmap_size
        self.memory = path == ":memory:" or path == ""
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        self._memory_lock = threading.RLock()
        # Writers of this storage queue here, in turn, rather than in SQLite's busy handler,
        # which sleeps (1, 2, 5 ... 100 ms) and may leave the file free while all of them wait:
        # with 20 threads writing, p99 234 ms instead of ~the queue's (bench/README.md, webchat).
        self._writer = threading.Lock()
        self._in_flight = 0  # transactions open in any thread: close() waits for them
        self._idle = threading.Condition()
        # Held weakly: a thread's connections live in its thread-local and close when it ends.
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._tables = _Tables(())
        self._converter: cattrs.Converter | None = None

    def _connect(self, *, write: bool = True) -> sqlite3.Connection:
        """The connection for a transaction in this thread. A file gives each thread one for
        writing and one, read-only from the start, for reading: switching `query_only` on one
        connection would throw away its prepared statements at every read."""
        if self.memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        name = "conn" if write else "reader"
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = self._open()
            if not write:
                conn.execute("PRAGMA query_only = ON")
            setattr(self._local, name, conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path or ":memory:",
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
                factory=_Connection,
            )
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open SQLite database {self.path!r}: {exc}", retriable=False
            ) from exc
        conn.row_factory = sqlite3.Row
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA mmap_size = {int(self.mmap_size)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA busy_timeout = 30000")
        self._connections.add(conn)
        return conn

    def setup(self, entity_types: Sequence[EntityType], converter: cattrs.Converter) -> None:
        self._tables = _Tables(entity_types, converter)
        self._converter = converter
        conn = self._connect()
        with self._memory_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._create(sqlite_utils.Database(conn), entity_types, converter)
                # Statistics let SQLite pick the selective index of a combined filter (one
                # operator's clients of a status: the operator's index, not the status's).
                # Sampled (~0.4 s on 1M clients), refreshed each time the storage is set up; a
                # smaller sample sees one status only and takes it for a selective one.
                conn.execute("PRAGMA analysis_limit = 100000")
                conn.execute("ANALYZE")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _create(
        db: sqlite_utils.Database, entity_types: Sequence[EntityType], converter: cattrs.Converter
    ) -> None:
        for etype in entity_types:
            table = db.table(etype.name)
            columns = {name: _SQL_TYPES[col] for name, col in etype.columns.items()}
            if table.exists():
                # A plugin's entity may gain fields: old rows get the field's default.
                for name, tp in columns.items():
                    if name in table.columns_dict:
                        continue
                    has_default, value = etype.default(converter, name)
                    if not has_default and table.count:
                        raise ConfigurationError(
                            f"{etype.cls.__name__} gained the field {name!r}, which has no "
                            f"default to give the {table.count} stored {etype.name}"
                        )
                    table.add_column(name, tp)
                    db.execute(f"UPDATE [{etype.name}] SET [{name}] = ?", [value])
            else:
                table.create(columns, pk="id", not_null={"version"})
            for index in etype.indexes:
                fields = _by_id(index.fields)
                if index.where:
                    name = _partial_name(etype, converter, index)
                    cols = ", ".join(f"[{f}]" for f in fields)
                    where = " AND ".join(_literal_where(etype, converter, index.where))
                    db.execute(
                        f"CREATE INDEX IF NOT EXISTS [{name}] ON [{etype.name}] ({cols}) "
                        f"WHERE {where}"
                    )
                    continue
                table.create_index(
                    fields, index_name=_index_name(etype.name, fields), if_not_exists=True
                )
                if fields != index.fields:  # made before indexes ended with the id
                    db.execute(f"DROP INDEX IF EXISTS [{_index_name(etype.name, index.fields)}]")
            for unique in etype.unique:
                name = f"{etype.name}_unique_{'_'.join(unique.fields)}"
                cols = ", ".join(f"[{f}]" for f in unique.fields)
                where = " AND ".join(_literal_where(etype, converter, unique.where))
                db.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS [{name}] ON [{etype.name}] ({cols})"
                    + (f" WHERE {where}" if where else "")
                )
            for field in etype.members:
                side = db.table(f"{etype.name}__{field}")
                if not side.exists():
                    side.create({"entity_id": str, "value": str}, pk=("entity_id", "value"))
                    side.create_index(
                        ["value", "entity_id"],
                        index_name=_value_index(etype, field),
                        if_not_exists=True,
                    )
            if etype.searchable and not db[f"{etype.name}_fts"].exists():
                cols = ", ".join(f"[{c}]" for c in etype.searchable)
                db.execute(f"CREATE VIRTUAL TABLE [{etype.name}_fts] USING fts5({cols})")
                # A type that became searchable: index the rows it already has.
                values = ", ".join(f"coalesce([{c}], '')" for c in etype.searchable)
                db.execute(
                    f"INSERT INTO [{etype.name}_fts] (rowid, {cols}) "
                    f"SELECT rowid, {values} FROM [{etype.name}]"
                )

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[SQLiteTransaction]:
        if self._converter is None:
            raise StorageError("the storage was used before setup()", retriable=False)
        with self._memory_lock if self.memory else _NO_LOCK:
            outer: sqlite3.Connection | None = getattr(self._local, "active", None)
            if outer is not None:
                # Nested: a savepoint inside the transaction already open in this thread.
                depth = self._local.depth
                name = f"jivocore_{depth}"
                outer.execute(f"SAVEPOINT {name}")
                self._local.depth = depth + 1
                try:
                    yield SQLiteTransaction(outer, self._tables, self._converter, write=True)
                except BaseException:
                    outer.execute(f"ROLLBACK TO {name}")
                    outer.execute(f"RELEASE {name}")
                    raise
                else:
                    outer.execute(f"RELEASE {name}")
                finally:
                    self._local.depth = depth
                return
            with self._idle:
                self._in_flight += 1
            try:
                conn = self._connect(write=write)
                toggle = self.memory and not write  # memory has one connection for both
                queued = write and not self.memory
                if queued and not self._writer.acquire(timeout=30):
                    raise StorageError("the database stayed busy for 30 s", retriable=True)
                try:
                    if toggle:
                        conn.execute("PRAGMA query_only = ON")
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                except sqlite3.Error as exc:
                    if queued:
                        self._writer.release()
                    raise _translate(exc, "cannot begin a transaction") from exc
                self._local.active, self._local.depth = conn, 1
                try:
                    yield SQLiteTransaction(conn, self._tables, self._converter, write=write)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.Error as exc:
                        conn.execute("ROLLBACK")
                        raise _translate(exc, "cannot commit") from exc
                finally:
                    self._local.active, self._local.depth = None, 0
                    if queued:
                        self._writer.release()
                    if toggle:
                        conn.execute("PRAGMA query_only = OFF")
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def close(self) -> None:
        """Close every connection, once the transactions other threads have open are over
        (closing a connection another thread is using crashes the process)."""
        mine = 1 if getattr(self._local, "active", None) is not None else 0
        with self._idle:  # held while closing: no transaction starts meanwhile
            self._idle.wait_for(lambda: self._in_flight <= mine, timeout=30)
            for conn in list(self._connections):
                conn.close()
            self._connections.clear()
            self._shared = None
            self._local = threading.local()


def _literal_where(
    etype: EntityType, converter: cattrs.Converter, where: Mapping[str, Any], table: str = ""
) -> list[str]:
    """A partial index's conditions, of the columns of `table` if named: SQLite takes no
    parameters there, so values are quoted. A query may use the index when it holds these
    very conditions, spelt alike (SQLite compares them as written)."""

    def quote(field: str, value: Any) -> str:
        value = etype.value(converter, field, value)
        if isinstance(value, bool | int | float):
            return str(int(value) if isinstance(value, bool) else value)
        return "'" + str(value).replace("'", "''") + "'"

    clauses = []
    for field, cond in where.items():
        col = f"{table}.[{field}]" if table else f"[{field}]"
        if cond is None:
            clauses.append(f"{col} IS NULL")
        elif isinstance(cond, In):
            values = [quote(field, v) for v in cond.values]
            clauses.append(f"{col} IN ({', '.join(values)})")
        elif isinstance(cond, Range):
            for op, bound in cond.bounds():
                clauses.append(f"{col} {op} {quote(field, bound)}")
        else:
            clauses.append(f"{col} = {quote(field, cond)}")
    return clauses


def _partial_name(etype: EntityType, converter: cattrs.Converter, index: Index) -> str:
    """A partial index's name: its fields, its condition's fields and a digest of the condition,
    so that a changed condition makes a new index rather than finding the old one."""
    where = " AND ".join(_literal_where(etype, converter, index.where))
    digest = hashlib.sha1(where.encode()).hexdigest()[:8]
    return f"{_index_name(etype.name, _by_id(index.fields))}_where_{'_'.join(index.where)}_{digest}"


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()
