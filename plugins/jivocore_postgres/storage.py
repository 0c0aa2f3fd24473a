"""The storage contract on PostgreSQL: a connection pool, READ COMMITTED writes made safe by
compare-and-set, and full-text search on a maintained tsvector column.

Values are stored exactly as on SQLite (the contract's shared encoding): text in the "C"
collation (code-point order, as SQLite's BINARY), times as fixed-width UTC text, JSON as text.
So ordering, ranges and cursors agree byte for byte between the two backends.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, TypeVar

import attrs
import cattrs
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from jivocore import (
    RELEVANCE_WINDOW,
    Column,
    ConflictError,
    Document,
    EntityType,
    Event,
    HasAll,
    HasAny,
    IdOf,
    In,
    JivoError,
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
Connection = psycopg.Connection[DictRow]

SEARCH = "jivocore_search"  # the maintained tsvector column of a type with searchable fields
EVENTS_CHANNEL = "jivocore_events"
_SQL_TYPES = {
    Column.TEXT: 'text COLLATE "C"',
    Column.INTEGER: "bigint",
    Column.BOOLEAN: "boolean",
    Column.REAL: "double precision",
    Column.TIME: 'text COLLATE "C"',
    Column.JSON: "text",
}
_STREAM_BATCH = 200


def q(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def _index_name(table: str, kind: str, fields: Sequence[str]) -> str:
    """An index name within PostgreSQL's 63 bytes, distinct for distinct field lists."""
    name = f"{table}_{kind}_{'_'.join(fields)}"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}"


def _translate(exc: Exception, what: str) -> JivoError:
    """A psycopg (or pool) error as the jivocore error it means."""
    if isinstance(exc, JivoError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.UniqueViolation):
        diag = exc.diag.constraint_name or ""
        return ConflictError(f"{what}: another record already has the same values ({diag})")
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return ConflictError(f"{what}: PostgreSQL said: {text}; try again", retriable=True)
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return StorageError(f"{what}: this transaction is read-only", retriable=False)
    if isinstance(exc, psycopg.DataError):
        return ValidationError(f"{what}: PostgreSQL cannot store this value: {text}")
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        # A lost connection, a server shutting down, no connection free in time.
        return StorageError(f"{what}: PostgreSQL is unreachable: {text}", retriable=True)
    return StorageError(f"{what}: PostgreSQL said: {text}", retriable=False)


# --- full-text search -------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")
_MAX_POSITION = 16383  # PostgreSQL keeps positions up to this
_MAX_LEXEME_BYTES = 2000


def tokens(text: str) -> list[str]:
    """The words of `text` as search matches them, the rules of SQLite's unicode61 tokenizer:
    runs of letters and digits (anything else separates), lower-cased, accents removed."""
    decomposed = unicodedata.normalize("NFD", text)
    folded = "".join(c for c in decomposed if unicodedata.category(c) != "Mn").lower()
    return [t for t in _TOKEN.findall(folded) if len(t.encode()) <= _MAX_LEXEME_BYTES]


def _lexeme(token: str) -> str:
    return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"


def _tsvector(texts: Iterable[str | None]) -> str:
    """A tsvector literal with positions; a gap between fields so a phrase never spans two."""
    positions: dict[str, list[int]] = {}
    position = 0
    for text in texts:
        for token in tokens(text or ""):
            position += 1
            found = positions.setdefault(token, [])
            if len(found) < 255:
                found.append(min(position, _MAX_POSITION))
        position += 1
    return " ".join(f"{_lexeme(t)}:{','.join(map(str, p))}" for t, p in positions.items())


def _index_existing_rows(conn: Connection, etype: EntityType) -> None:
    """A type that became searchable: give the rows it already has their tsvector, streamed."""
    cols = ", ".join(q(c) for c in etype.searchable)
    table = q(etype.name)
    with conn.cursor(name=f"jivocore_index_{etype.name}") as rows:
        rows.itersize = 1000
        rows.execute(f"SELECT id, {cols} FROM {table}")
        batch: list[tuple[str, str]] = []
        for row in rows:
            batch.append((_tsvector(row[c] for c in etype.searchable), row["id"]))
            if len(batch) == 1000:
                _set_search(conn, table, batch)
                batch = []
        _set_search(conn, table, batch)


def _set_search(conn: Connection, table: str, batch: list[tuple[str, str]]) -> None:
    if batch:
        with conn.cursor() as cur:
            cur.executemany(f"UPDATE {table} SET {SEARCH} = %s::tsvector WHERE id = %s", batch)


def _tsquery(text: str) -> str | None:
    """Every whitespace-separated word ANDed; a word of several tokens ("foo-bar") is a phrase.
    The query is built from tokens, so user text never reaches tsquery syntax."""
    parts = []
    for word in text.split():
        found = tokens(word)
        if found:
            parts.append("(" + " <-> ".join(_lexeme(t) for t in found) + ")")
    return " & ".join(parts) or None


# --- a transaction ------------------------------------------------------------------------------


class _Tables:
    """Entity types by class, with the SQL each needs, made once."""

    def __init__(self, entity_types: Sequence[EntityType]) -> None:
        self.by_class: dict[type[Any], EntityType] = {}
        self.select: dict[type[Any], str] = {}
        self.insert: dict[type[Any], str] = {}
        self.update: dict[type[Any], str] = {}
        for etype in entity_types:
            cls = etype.cls
            self.by_class[cls] = etype
            cols = list(etype.columns)
            self.select[cls] = ", ".join(f"{q(etype.name)}.{q(c)}" for c in cols)
            stored = [*cols, *([SEARCH] if etype.searchable else [])]
            marks = [
                "%s::tsvector" if c == SEARCH else "%s" for c in stored
            ]  # parameters in `stored` order
            self.insert[cls] = (
                f"INSERT INTO {q(etype.name)} ({', '.join(q(c) for c in stored)}) "
                f"VALUES ({', '.join(marks)}) ON CONFLICT DO NOTHING"
            )
            sets = [
                f"{q(c)} = {m}"
                for c, m in zip(stored, marks, strict=True)
                if c not in ("id", "version")
            ]
            self.update[cls] = (
                f"UPDATE {q(etype.name)} SET {', '.join(sets)}, version = version + 1 "
                "WHERE id = %s AND version = %s"
            )

    def of(self, cls: type[Any]) -> EntityType:
        try:
            return self.by_class[cls]
        except KeyError:
            raise ValidationError(
                f"{cls.__name__} is not a registered entity type; register it with "
                "jivocore_register_entity_types",
                entity=cls.__name__,
            ) from None


def _member(value: Any) -> str:
    """A set member as its side table holds it."""
    return value if isinstance(value, str) else json.dumps(value)


class PostgresTransaction:
    """A transaction on one pooled connection."""

    def __init__(
        self,
        conn: Connection,
        tables: _Tables,
        converter: cattrs.Converter,
        notify: list[str],
    ) -> None:
        self.conn = conn
        self.tables = tables
        self.converter = converter
        self._notify = notify  # ids of events added, announced just before COMMIT
        self._cursors = itertools.count()

    def _execute(
        self, query: str, params: Sequence[Any] = (), *, what: str
    ) -> psycopg.Cursor[DictRow]:
        try:
            return self.conn.execute(query, params)
        except psycopg.Error as exc:
            raise _translate(exc, what) from exc

    # reads --------------------------------------------------------------------------------

    def find(self, cls: type[T], id: str) -> T | None:
        etype = self.tables.of(cls)
        row = self._execute(
            f"SELECT {self.tables.select[cls]} FROM {q(etype.name)} WHERE id = %s",
            (id,),
            what=f"cannot read {cls.__name__} {id}",
        ).fetchone()
        return None if row is None else etype.decode(self.converter, row)

    def get(self, cls: type[T], id: str) -> T:
        found = self.find(cls, id)
        if found is None:
            raise NotFoundError(
                f"no {cls.__name__.lower()} with id {id!r}", entity=cls.__name__, id=id
            )
        return found

    def _value(self, etype: EntityType, field: str, value: Any) -> Any:
        if etype.columns[field] is Column.JSON and field not in etype.members:
            raise ValidationError(
                f"{etype.name}.{field} holds structured data and cannot be filtered on",
                entity=etype.name,
                field=field,
            )
        return etype.value(self.converter, field, value)

    def _where(self, etype: EntityType, where: Where | None) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if not where:
            return clauses, params
        etype.check_fields(where)
        table = q(etype.name)
        for field, cond in where.items():
            col = f"{table}.{q(field)}"
            if field in etype.members:
                if not isinstance(cond, HasAny | HasAll):
                    raise ValidationError(
                        f"{etype.name}.{field} is a set: filter it with HasAny or HasAll",
                        field=field,
                    )
                values = sorted({_member(self._value(etype, field, v)) for v in cond.values})
                if not values:
                    clauses.append("FALSE" if isinstance(cond, HasAny) else "TRUE")
                    continue
                side = q(f"{etype.name}__{field}")
                if isinstance(cond, HasAny):
                    clauses.append(
                        f"EXISTS (SELECT 1 FROM {side} s WHERE s.entity_id = {table}.id "
                        "AND s.value = ANY(%s))"
                    )
                else:
                    clauses.append(
                        f"(SELECT count(*) FROM {side} s WHERE s.entity_id = {table}.id "
                        f"AND s.value = ANY(%s)) = {len(values)}"
                    )
                params.append(values)
                continue
            if isinstance(cond, HasAny | HasAll):
                raise ValidationError(f"{etype.name}.{field} is not a set field", field=field)
            if isinstance(cond, In):
                values = [self._value(etype, field, v) for v in cond.values]
                present = [v for v in values if v is not None]
                ors = [f"{col} = ANY(%s)"] if present else []
                params += [present] if present else []
                if len(present) < len(values):
                    ors.append(f"{col} IS NULL")
                clauses.append("(" + " OR ".join(ors) + ")" if ors else "FALSE")
            elif isinstance(cond, IdOf):
                self._value(etype, field, None)
                inner = self.tables.of(cond.cls)
                found, found_params = self._where(inner, cond.where)
                ids = f"SELECT {q(inner.name)}.id FROM {q(inner.name)}"
                if found:
                    ids += " WHERE " + " AND ".join(found)
                clauses.append(f"{col} IN ({ids})")
                params += found_params
            elif isinstance(cond, Not):
                if cond.value is None:
                    self._value(etype, field, None)
                    clauses.append(f"{col} IS NOT NULL")
                else:
                    clauses.append(f"{col} IS DISTINCT FROM %s")
                    params.append(self._value(etype, field, cond.value))
            elif isinstance(cond, Range):
                self._value(etype, field, None)
                for op, bound in cond.bounds():
                    clauses.append(f"{col} {op} %s")
                    params.append(self._value(etype, field, bound))
            elif cond is None:
                self._value(etype, field, None)
                clauses.append(f"{col} IS NULL")
            else:
                clauses.append(f"{col} = %s")
                params.append(self._value(etype, field, cond))
        return clauses, params

    def _query(
        self,
        cls: type[Any],
        where: Where | None,
        order: Sequence[str],
        after: str | None,
        limit: int | None,
        also: Sequence[str] = (),
    ) -> tuple[EntityType, list[tuple[str, bool]], str, list[Any]]:
        etype = self.tables.of(cls)
        parsed = parse_order(etype, order)
        clauses, params = self._where(etype, where)
        clauses += also
        if after is not None:
            values = read_cursor(after, parsed)
            # Rows after the cursor in the listing's own order, where None sorts before every
            # value: (a, b, id) > (x, y, z) spelt out, each comparison aware of NULL.
            ors = []
            for i, (name, desc) in enumerate(parsed):
                value = values[i]
                if value is None and desc:
                    continue  # nothing comes after None, descending
                terms = []
                for (prior, _), equal in zip(parsed[:i], values[:i], strict=True):
                    if equal is None:
                        terms.append(f"{q(prior)} IS NULL")
                    else:
                        terms.append(f"{q(prior)} = %s")
                        params.append(equal)
                if value is None:
                    terms.append(f"{q(name)} IS NOT NULL")
                elif desc:
                    terms.append(f"({q(name)} < %s OR {q(name)} IS NULL)")
                    params.append(value)
                else:
                    terms.append(f"{q(name)} > %s")
                    params.append(value)
                ors.append("(" + " AND ".join(terms) + ")")
            clauses.append("(" + " OR ".join(ors) + ")" if ors else "FALSE")
        query = f"SELECT {self.tables.select[cls]} FROM {q(etype.name)}"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY " + ", ".join(
            f"{q(n)} DESC NULLS LAST" if d else f"{q(n)} ASC NULLS FIRST" for n, d in parsed
        )
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return etype, parsed, query, params

    def select(
        self,
        cls: type[T],
        where: Where | None = None,
        *,
        order: Sequence[str] = ("id",),
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[T]:
        etype, _, query, params = self._query(cls, where, order, after, limit)
        what = f"cannot list {cls.__name__}"
        if limit is not None and limit <= _STREAM_BATCH:
            rows = self._execute(query, params, what=what).fetchall()
            return (etype.decode(self.converter, row) for row in rows)
        return self._stream(etype, query, params, what)

    def _stream(self, etype: EntityType, query: str, params: list[Any], what: str) -> Iterator[Any]:
        """A server-side cursor: a listing of any length in bounded memory."""
        cursor = self.conn.cursor(name=f"jivocore_{next(self._cursors)}")
        try:
            cursor.execute(query, params)
            while rows := cursor.fetchmany(_STREAM_BATCH):
                for row in rows:
                    yield etype.decode(self.converter, row)
        except psycopg.Error as exc:
            raise _translate(exc, what) from exc
        finally:
            with suppress(psycopg.Error):  # the transaction ended first, and its cursors
                cursor.close()

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
        etype, parsed, query, params = self._query(cls, where, order, after, limit + 1)
        rows = self._execute(query, params, what=f"cannot list {cls.__name__}").fetchall()
        items = [etype.decode(self.converter, row) for row in rows]
        more = len(items) > limit
        items = items[:limit]
        cursor = make_cursor(self.converter, etype, items[-1], parsed) if more else None
        return Page(tuple(items), cursor)

    def count(self, cls: type[Any], where: Where | None = None, *, limit: int | None = None) -> int:
        if limit is not None and limit < 0:
            raise ValidationError(f"a count stops at a number of 0 or more, not {limit}")
        etype = self.tables.of(cls)
        clauses, params = self._where(etype, where)
        query = f"SELECT 1 FROM {q(etype.name)}"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        row = self._execute(
            f"SELECT count(*) AS n FROM ({query}) AS matches",
            params,
            what=f"cannot count {cls.__name__}",
        ).fetchone()
        return int(row["n"]) if row else 0

    def search(
        self, cls: type[T], text: str, where: Where | None = None, *, limit: int = 50
    ) -> list[T]:
        etype = self.tables.of(cls)
        etype.check_searchable()
        tsquery = _tsquery(text)
        if tsquery is None:
            return []
        clauses, params = self._where(etype, where)
        query = (
            f"SELECT {self.tables.select[cls]} FROM {q(etype.name)} "
            f"WHERE {q(SEARCH)} @@ %s::tsquery"
        )
        if clauses:
            query += " AND " + " AND ".join(clauses)
        query += f" ORDER BY ts_rank({q(SEARCH)}, %s::tsquery) DESC, id LIMIT {int(limit)}"
        rows = self._execute(
            query, [tsquery, *params, tsquery], what=f"cannot search {cls.__name__}"
        ).fetchall()
        return [etype.decode(self.converter, row) for row in rows]

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
        parse_order(etype, order)
        tsquery = _tsquery(text)
        if tsquery is None:
            return Page((), None), 0
        clauses, params = self._where(etype, where)
        # The window as `search` ranks it; only the page's rows are read and decoded.
        hits = (
            f"WITH hits AS (SELECT id FROM {q(etype.name)} WHERE {q(SEARCH)} @@ %s::tsquery"
            + "".join(f" AND {c}" for c in clauses)
            + f" ORDER BY ts_rank({q(SEARCH)}, %s::tsquery) DESC, id LIMIT {int(window)}) "
        )
        params = [tsquery, *params, tsquery]
        _, parsed, listing, rest = self._query(
            cls, None, order, after, limit + 1, also=("id IN (SELECT id FROM hits)",)
        )
        what = f"cannot search {cls.__name__}"
        rows = self._execute(hits + listing, [*params, *rest], what=what).fetchall()
        count = self._execute(f"{hits}SELECT count(*) AS n FROM hits", params, what=what)
        items = [etype.decode(self.converter, row) for row in rows[:limit]]
        more = len(rows) > limit
        cursor = make_cursor(self.converter, etype, items[-1], parsed) if more else None
        return Page(tuple(items), cursor), int(count.fetchone()["n"])

    # writes -------------------------------------------------------------------------------

    def _params(self, etype: EntityType, row: Mapping[str, Any]) -> list[Any]:
        params = [row[c] for c in etype.columns]
        if etype.searchable:
            params.append(_tsvector(row[c] for c in etype.searchable))
        return params

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
        what = f"cannot add {cls.__name__} {row['id']}"
        # ON CONFLICT DO NOTHING: a taken key is reported without aborting the transaction.
        if not self._execute(self.tables.insert[cls], self._params(etype, row), what=what).rowcount:
            raise self._taken(etype, row, what)
        self._index(etype, stored, new=True)
        if cls is Event:
            self._notify.append(row["id"])
        return stored

    def _taken(self, etype: EntityType, row: Mapping[str, Any], what: str) -> ConflictError:
        """Which unique key of `row` another record holds."""
        name = etype.cls.__name__
        for fields, where in ((("id",), {}), *((u.fields, u.where) for u in etype.unique)):
            if any(row[f] is None for f in fields):
                continue  # NULLs never collide
            clauses, params = self._where(etype, where)
            clauses = [*(f"{q(f)} = %s" for f in fields), *clauses]
            query = f"SELECT 1 FROM {q(etype.name)} WHERE " + " AND ".join(clauses)
            if self._execute(query, [*(row[f] for f in fields), *params], what=what).fetchone():
                names = ", ".join(fields)
                return ConflictError(
                    f"{what}: another {name.lower()} already has the same {names}",
                    entity=name,
                    fields=names,
                )
        return ConflictError(f"{what}: another record holds one of its unique keys", entity=name)

    def update(self, entity: T) -> T:
        cls = type(entity)
        etype = self.tables.of(cls)
        row = etype.encode(self.converter, entity)
        what = f"cannot update {cls.__name__} {row['id']}"
        params = [*self._params(etype, row)[2:], row["id"], row["version"]]
        if etype.unique:
            # A unique violation aborts a PostgreSQL transaction; inside a savepoint it costs
            # only this write, as on SQLite.
            self._execute("SAVEPOINT jivocore_write", what=what)
            try:
                changed = self._execute(self.tables.update[cls], params, what=what).rowcount
            except ConflictError:
                self._execute("ROLLBACK TO SAVEPOINT jivocore_write", what=what)
                raise
            self._execute("RELEASE SAVEPOINT jivocore_write", what=what)
        else:
            changed = self._execute(self.tables.update[cls], params, what=what).rowcount
        if not changed:
            self._missed(etype, entity)
        stored = attrs.evolve(entity, version=entity.version + 1)  # type: ignore[attr-defined, misc]
        self._index(etype, stored, new=False)
        return stored

    def delete(self, entity: T) -> None:
        etype = self.tables.of(type(entity))
        id = entity.id  # type: ignore[attr-defined]
        what = f"cannot delete {etype.cls.__name__} {id}"
        gone = self._execute(
            f"DELETE FROM {q(etype.name)} WHERE id = %s AND version = %s",
            (id, entity.version),  # type: ignore[attr-defined]
            what=what,
        ).rowcount
        if not gone:
            self._missed(etype, entity)
        for field in etype.members:
            self._execute(
                f"DELETE FROM {q(f'{etype.name}__{field}')} WHERE entity_id = %s", (id,), what=what
            )

    def upsert_many(self, cls: type[T], entities: Iterable[T], *, key: Sequence[str]) -> int:
        etype = self.tables.of(cls)
        etype.key(key)
        stored = [*etype.columns, *([SEARCH] if etype.searchable else [])]
        marks = ["%s::tsvector" if c == SEARCH else "%s" for c in stored]
        sets = [f"{q(c)} = EXCLUDED.{q(c)}" for c in stored if c not in ("id", "version", *key)]
        upsert = (
            f"INSERT INTO {q(etype.name)} AS t ({', '.join(q(c) for c in stored)}) "
            f"VALUES ({', '.join(marks)}) ON CONFLICT ({', '.join(q(k) for k in key)}) "
            f"DO UPDATE SET {', '.join([*sets, 'version = t.version + 1'])} RETURNING t.id"
        )
        what = f"cannot upsert {cls.__name__}"
        written = 0
        batch: list[Any] = []
        for entity in itertools.chain(entities, [None]):
            if entity is not None:
                batch.append(entity)
            if batch and (entity is None or len(batch) == 500):
                rows = [etype.encode(self.converter, attrs.evolve(e, version=1)) for e in batch]
                try:
                    with self.conn.cursor() as cursor:
                        cursor.executemany(
                            upsert,
                            [self._params(etype, r) for r in rows],
                            returning=True,
                        )
                        ids = []
                        while True:
                            found = cursor.fetchone()
                            ids.append(found["id"] if found else None)
                            if not cursor.nextset():
                                break
                except psycopg.Error as exc:
                    raise _translate(exc, what) from exc
                kept = {id: e for id, e in zip(ids, batch, strict=True)}  # a later row wins
                for id, entity_ in kept.items():
                    self._index(etype, attrs.evolve(entity_, id=id), new=False)
                written += len(batch)
                batch = []
        return written

    def _missed(self, etype: EntityType, entity: Any) -> None:
        row = self._execute(
            f"SELECT version FROM {q(etype.name)} WHERE id = %s",
            (entity.id,),
            what=f"cannot read {etype.cls.__name__} {entity.id}",
        ).fetchone()
        name = etype.cls.__name__
        if row is None:
            raise NotFoundError(
                f"no {name.lower()} with id {entity.id!r}", entity=name, id=entity.id
            )
        raise ConflictError(
            f"{name} {entity.id} was changed by someone else (now version {row['version']}, "
            f"this change was made on version {entity.version}); reload it and try again",
            entity=name,
            id=entity.id,
            expected=entity.version,
            actual=row["version"],
        )

    def _index(self, etype: EntityType, entity: Any, *, new: bool) -> None:
        """Bring the member side tables in line with the entity's sets: one statement each."""
        for field in etype.members:
            side = q(f"{etype.name}__{field}")
            values = sorted(
                {_member(etype.value(self.converter, field, v)) for v in getattr(entity, field)}
            )
            what = f"cannot index {etype.cls.__name__}.{field}"
            if new and not values:
                continue
            if new:
                query = (
                    f"INSERT INTO {side} (entity_id, value) SELECT %s, unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING"
                )
                self._execute(query, (entity.id, values), what=what)
            else:
                query = (
                    f"WITH gone AS (DELETE FROM {side} WHERE entity_id = %s "
                    "AND NOT (value = ANY(%s::text[]))) "
                    f"INSERT INTO {side} (entity_id, value) SELECT %s, unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING"
                )
                self._execute(query, (entity.id, values, entity.id, values), what=what)

    # search documents ---------------------------------------------------------------------
    # `<table>__documents` holds each entity's document: the key it is filed under (its date,
    # see jivocore.document_key), the date, and a tsvector of the text (GIN-indexed) made by
    # `tokens`, so documents tokenise exactly as on SQLite.

    def _documents(self, etype: EntityType, *, create: bool) -> str | None:
        """The quoted name of the type's document table, or None when it does not exist yet
        (with `create`, it is made: once, under an advisory lock, as setup does)."""
        name = f"{etype.name}__documents"
        what = f"cannot prepare {etype.name} documents"
        exists = self._execute("SELECT to_regclass(%s) AS t", (q(name),), what=what).fetchone()
        if exists and exists["t"] is not None:
            return q(name)
        if not create:
            return None
        self._execute("SELECT pg_advisory_xact_lock(hashtext('jivocore setup'))", what=what)
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {q(name)} (key bigint PRIMARY KEY, "
            'entity_id text COLLATE "C" NOT NULL UNIQUE, at text COLLATE "C" NOT NULL, '
            "document tsvector NOT NULL)",
            what=what,
        )
        index = _index_name(name, "gin", ("document",))
        self._execute(
            f"CREATE INDEX IF NOT EXISTS {q(index)} ON {q(name)} USING gin (document)", what=what
        )
        return q(name)

    def put_documents(self, cls: type[Any], documents: Iterable[Document]) -> int:
        etype = self.tables.of(cls)
        table = self._documents(etype, create=True)
        what = f"cannot index {etype.name}"
        written = 0
        for document in documents:
            self._execute(f"DELETE FROM {table} WHERE entity_id = %s", (document.id,), what=what)
            base = document_key(document.at)
            taken = self._execute(
                f"SELECT max(key) AS k FROM {table} WHERE key BETWEEN %s AND %s",
                (base, base + 1023),
                what=what,
            ).fetchone()
            slot = 0 if taken is None or taken["k"] is None else taken["k"] - base + 1
            self._execute(
                f"INSERT INTO {table} (key, entity_id, at, document) "
                "VALUES (%s, %s, %s, %s::tsvector)",
                (
                    document_key(document.at, slot),
                    document.id,
                    self.converter.unstructure(document.at),
                    _tsvector([document.text]),
                ),
                what=what,
            )
            written += 1
        return written

    def delete_documents(self, cls: type[Any], ids: Iterable[str]) -> int:
        etype = self.tables.of(cls)
        table = self._documents(etype, create=False)
        wanted = list(dict.fromkeys(ids))
        if table is None or not wanted:
            return 0
        cursor = self._execute(
            f"DELETE FROM {table} WHERE entity_id = ANY(%s)",
            (wanted,),
            what=f"cannot delete {etype.name} documents",
        )
        return cursor.rowcount

    def document_dates(self, cls: type[Any], ids: Iterable[str]) -> dict[str, datetime]:
        etype = self.tables.of(cls)
        table = self._documents(etype, create=False)
        wanted = list(dict.fromkeys(ids))
        if table is None or not wanted:
            return {}
        rows = self._execute(
            f"SELECT entity_id, at FROM {table} WHERE entity_id = ANY(%s)",
            (wanted,),
            what=f"cannot read {etype.name} documents",
        )
        return {row["entity_id"]: datetime.fromisoformat(row["at"]) for row in rows}

    def newest_document(self, cls: type[Any]) -> datetime | None:
        etype = self.tables.of(cls)
        table = self._documents(etype, create=False)
        if table is None:
            return None
        row = self._execute(
            f"SELECT at FROM {table} ORDER BY key DESC LIMIT 1",
            what=f"cannot read {etype.name} documents",
        ).fetchone()
        return None if row is None else datetime.fromisoformat(row["at"])

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
        clauses, params = self._where(etype, where)
        if at is not None:  # the documents of a period: a range of the key's btree
            clauses.append("d.key >= %s AND d.key < %s")
            params += Document.key_range(at)
        cursor = read_document_cursor(after, by)
        tsquery = _tsquery(" ".join(search_words(text)))
        table = self._documents(etype, create=False)
        if tsquery is None or table is None:
            return Page((), None)
        entity = q(etype.name)
        hits = (
            f"FROM {table} d JOIN {entity} ON {entity}.id = d.entity_id "
            "WHERE d.document @@ %s::tsquery" + "".join(f" AND {c}" for c in clauses)
        )
        columns = self.tables.select[cls]
        if by == "date":
            query = f"SELECT {columns}, d.key AS _key, 0.0::float8 AS _score {hits}"
            args: list[Any] = [tsquery, *params]
            if cursor is not None:
                query += " AND d.key < %s"
                args.append(cursor[1])
            query += f" ORDER BY d.key DESC LIMIT {int(limit) + 1}"
        else:
            # Rank only the newest `window` matches (ts_rank reads each match's tsvector).
            query = (
                f"WITH hits AS (SELECT {entity}.id AS _id, d.key AS _key, d.document AS _doc "
                f"{hits} ORDER BY d.key DESC LIMIT {int(window)}), "
                "ranked AS (SELECT _id, _key, ts_rank(_doc, %s::tsquery)::float8 AS _score "
                f"FROM hits) SELECT {columns}, ranked._key, ranked._score FROM ranked "
                f"JOIN {entity} ON {entity}.id = ranked._id"
            )
            args = [tsquery, *params, tsquery]
            if cursor is not None:
                query += " WHERE (ranked._score < %s OR (ranked._score = %s AND ranked._key < %s))"
                args += [cursor[0], cursor[0], cursor[1]]
            query += f" ORDER BY ranked._score DESC, ranked._key DESC LIMIT {int(limit) + 1}"
        rows = self._execute(query, args, what=f"cannot search {etype.name}").fetchall()
        items = []
        last: tuple[float, int] = (0.0, 0)
        for row in rows[:limit]:
            values = dict(row)
            last = (float(values.pop("_score")), int(values.pop("_key")))
            items.append(etype.decode(self.converter, values))
        more = len(rows) > limit
        return Page(tuple(items), make_document_cursor(by, *last) if more else None)


# --- the storage ----------------------------------------------------------------------------------


class PostgresStorage:
    """PostgreSQL storage: a pool of connections shared by the threads of one process.

    A write transaction runs at READ COMMITTED: every write is a compare-and-set on the version
    and every invariant that must hold under concurrency is a (partial) unique index, so a lost
    race surfaces as ConflictError, which the engine retries on fresh data. A read-only
    transaction runs at REPEATABLE READ READ ONLY: one consistent snapshot.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        schema: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.schema = schema
        options = f"-c search_path={q(schema)}" if schema else ""
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if options:
            kwargs["options"] = options
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=kwargs,
            timeout=timeout,
            open=False,
            name="jivocore",
        )
        self._opened = False
        self._local = threading.local()
        self._tables: _Tables | None = None
        self._converter: cattrs.Converter | None = None
        self.channel = EVENTS_CHANNEL + (f"_{schema}" if schema else "")

    def _open(self) -> None:
        if not self._opened:
            self._pool.open()
            self._opened = True

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        self._open()
        try:
            conn = self._pool.getconn()
        except (psycopg.Error, PoolTimeout) as exc:
            raise _translate(exc, "cannot connect") from exc
        try:
            yield conn
        finally:
            self._pool.putconn(conn)  # a broken connection is discarded, not reused

    # schema -----------------------------------------------------------------------------------

    def setup(self, entity_types: Sequence[EntityType], converter: cattrs.Converter) -> None:
        with self._connection() as conn:
            try:
                with conn.transaction():
                    # Several processes may start at once: one of them creates the schema.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('jivocore setup'))")
                    if self.schema:
                        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q(self.schema)}")
                    for etype in entity_types:
                        self._create(conn, etype, converter)
            except psycopg.Error as exc:
                raise _translate(exc, "cannot create the schema") from exc
        self._tables = _Tables(entity_types)
        self._converter = converter

    @staticmethod
    def _create(conn: Connection, etype: EntityType, converter: cattrs.Converter) -> None:
        table = q(etype.name)
        columns = {name: _SQL_TYPES[col] for name, col in etype.columns.items()}
        if etype.searchable:
            columns[SEARCH] = "tsvector"
        defs = [
            f"{q(name)} {tp}"
            + (" PRIMARY KEY" if name == "id" else " NOT NULL" if name == "version" else "")
            for name, tp in columns.items()
        ]
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
        existing = {
            row["column_name"]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (etype.name,),
            )
        }
        for name, tp in columns.items():
            if name in existing:
                continue
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {q(name)} {tp}")
            if name == SEARCH:
                _index_existing_rows(conn, etype)
                continue
            # A plugin's entity gained a field: old rows get the field's default.
            default = _default(etype, converter, name)
            if default is not None:
                conn.execute(f"UPDATE {table} SET {q(name)} = %s", (default,))
        for index in etype.indexes:
            where = _literal_where(conn, etype, converter, index.where)
            name = _index_name(etype.name, "idx", index.fields)
            if where:  # named by its condition too: a changed one makes a new index
                digest = hashlib.sha1(where.encode()).hexdigest()[:8]
                name = _index_name(etype.name, "idx", (*index.fields, "where", digest))
            cols = ", ".join(q(f) for f in index.fields)
            conn.execute(f"CREATE INDEX IF NOT EXISTS {q(name)} ON {table} ({cols}){where}")
        for unique in etype.unique:
            name = _index_name(etype.name, "unique", unique.fields)
            cols = ", ".join(q(f) for f in unique.fields)
            where = _literal_where(conn, etype, converter, unique.where)
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {q(name)} ON {table} ({cols}){where}")
        for field in etype.members:
            side = f"{etype.name}__{field}"
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS {q(side)} (entity_id text COLLATE "C" NOT NULL, '
                'value text COLLATE "C" NOT NULL, PRIMARY KEY (entity_id, value))'
            )
            name = _index_name(side, "idx", ("value", "entity_id"))
            conn.execute(f"CREATE INDEX IF NOT EXISTS {q(name)} ON {q(side)} (value, entity_id)")
        if etype.searchable:
            name = _index_name(etype.name, "gin", (SEARCH,))
            conn.execute(f"CREATE INDEX IF NOT EXISTS {q(name)} ON {table} USING gin ({SEARCH})")

    # transactions -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[PostgresTransaction]:
        if self._tables is None or self._converter is None:
            raise StorageError("the storage was used before setup()", retriable=False)
        outer: PostgresTransaction | None = getattr(self._local, "tx", None)
        if outer is not None:
            yield from self._savepoint(outer)
            return
        with self._connection() as conn:
            notify: list[str] = []
            tx = PostgresTransaction(conn, self._tables, self._converter, notify)
            begin = (
                "BEGIN ISOLATION LEVEL READ COMMITTED"
                if write
                else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            )
            tx._execute(begin, what="cannot begin a transaction")
            self._local.tx = tx
            self._local.depth = 1
            try:
                yield tx
            except BaseException:
                self._local.tx = None
                with suppress(psycopg.Error):  # the connection is gone, and the transaction
                    conn.execute("ROLLBACK")
                raise
            self._local.tx = None
            try:
                if notify:
                    # NOTIFY is transactional: the other processes hear of committed events only.
                    for start in range(0, len(notify), 100):
                        payload = json.dumps({"events": notify[start : start + 100]})
                        conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise _translate(exc, "cannot commit") from exc

    def _savepoint(self, outer: PostgresTransaction) -> Iterator[PostgresTransaction]:
        depth: int = self._local.depth
        name = f"jivocore_{depth}"
        outer._execute(f"SAVEPOINT {name}", what="cannot begin a nested transaction")
        self._local.depth = depth + 1
        try:
            yield outer
        except BaseException:
            try:
                outer.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                outer.conn.execute(f"RELEASE SAVEPOINT {name}")
            except psycopg.Error:
                pass  # the connection is gone: the outer transaction fails with it
            raise
        else:
            outer._execute(f"RELEASE SAVEPOINT {name}", what="cannot end a nested transaction")
        finally:
            self._local.depth = depth

    # events across processes ---------------------------------------------------------------------

    def listen(
        self, *, timeout: float | None = None, stop: threading.Event | None = None
    ) -> Iterator[Event]:
        """The events other processes (and this one) commit from now on, in commit order, as
        they are committed: ``for event in storage.listen(): ...``.

        A dedicated connection LISTENs; each notification names the events one transaction
        committed, which are then read from the events table. Ends after `timeout` seconds
        without a notification, or once `stop` is set (checked at least once a second).
        """
        if self._tables is None or self._converter is None:
            raise StorageError("the storage was used before setup()", retriable=False)
        try:
            conn = psycopg.connect(self.url, autocommit=True, **self._listen_options())
        except psycopg.Error as exc:
            raise _translate(exc, "cannot listen for events") from exc
        try:
            conn.execute(f"LISTEN {q(self.channel)}")
            quiet = 0.0
            while not (stop is not None and stop.is_set()):
                wait = 1.0 if timeout is None else min(1.0, max(timeout - quiet, 0.0))
                heard = [n.payload for n in conn.notifies(timeout=wait, stop_after=100)]
                if not heard:
                    quiet += wait
                    if timeout is not None and quiet >= timeout:
                        return
                    continue
                quiet = 0.0
                ids = [i for payload in heard for i in json.loads(payload)["events"]]
                with self.transaction(write=False) as tx:
                    found = {e.id: e for e in tx.select(Event, {"id": In(ids)})}
                yield from (found[i] for i in ids if i in found)
        except psycopg.Error as exc:
            raise _translate(exc, "lost the event listener's connection") from exc
        finally:
            conn.close()

    def _listen_options(self) -> dict[str, Any]:
        return {"options": f"-c search_path={q(self.schema)}"} if self.schema else {}

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False


def _default(etype: EntityType, converter: cattrs.Converter, name: str) -> Any:
    """The column value of a field's default, or None when it has none (or needs the entity)."""
    field = attrs.fields_dict(etype.cls)[name]
    default: Any = field.default
    if default is attrs.NOTHING:
        return None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return None
        default = default.factory()
    value = converter.unstructure(default)
    if etype.columns[name] is Column.JSON:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _literal_where(
    conn: Connection, etype: EntityType, converter: cattrs.Converter, where: Mapping[str, Any]
) -> str:
    """A partial index's WHERE clause; index predicates take no parameters, so values are quoted
    literals (typed as the column is: a boolean as true/false)."""

    def literal(field: str, value: Any) -> str:
        encoded = etype.value(converter, field, value)
        return sql.Literal(encoded).as_string(conn)

    clauses = []
    for field, cond in where.items():
        if cond is None:
            clauses.append(f"{q(field)} IS NULL")
        elif isinstance(cond, In):
            values = ", ".join(literal(field, v) for v in cond.values)
            clauses.append(f"{q(field)} IN ({values})" if values else "FALSE")
        elif isinstance(cond, Range):
            for op, bound in cond.bounds():
                clauses.append(f"{q(field)} {op} {literal(field, bound)}")
        else:
            clauses.append(f"{q(field)} = {literal(field, cond)}")
    return " WHERE " + " AND ".join(clauses) if clauses else ""
