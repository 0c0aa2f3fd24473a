"""Shared by the CRM plugins' tests: desks with every CRM plugin, on SQLite and PostgreSQL, and
how a listing orders and pages its items.

PostgreSQL is gated as tests/test_storage_postgres.py gates it: skipped without
JIVOCORE_TEST_POSTGRES, a failure under CI=true.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgtest import URL, require_postgres

import jivocore_crm
import jivocore_deals
import jivocore_sqlite
import jivocore_tags
import jivocore_tasks
from jivocore import FakeClock, HelpDesk, hookimpl
from jivocore.testing import RecordingChannel, channel_plugin
from jivocore_crm import Listing

CRM = [jivocore_crm, jivocore_tags, jivocore_deals, jivocore_tasks]
BACKENDS = ["sqlite", "postgres"]


def need_backend(backend: str) -> None:
    if backend == "postgres":
        require_postgres()


@contextmanager
def crm_desk(
    backend: str, tmp: Path, clock: FakeClock | None = None, **settings: Any
) -> Iterator[HelpDesk]:
    """A desk with the CRM plugins and a "web" channel on a fresh database of `backend`."""
    plugins: list[object] = [*CRM, channel_plugin(RecordingChannel("web"))]
    schema = None
    if backend == "postgres":
        from jivocore_postgres import PostgresStorage

        schema = f"test_{uuid.uuid4().hex[:12]}"

        @hookimpl(tryfirst=True)
        def jivocore_get_storage(settings: Any) -> PostgresStorage:
            return PostgresStorage(URL, schema=schema, pool_size=2)

        storage = types.ModuleType("test_postgres_schema")
        storage.jivocore_get_storage = jivocore_get_storage  # type: ignore[attr-defined]
        plugins += [storage]
        database = URL
    else:
        plugins += [jivocore_sqlite]
        database = str(tmp / f"desk-{uuid.uuid4().hex[:8]}.db")
    desk = HelpDesk(
        plugins=plugins, settings={"database": database, **settings}, clock=clock or FakeClock()
    )
    try:
        yield desk
    finally:
        desk.shutdown()
        if schema is not None:
            import psycopg

            with psycopg.connect(URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def in_listing_order(items: Iterable[Any], order: tuple[str, ...]) -> list[Any]:
    """`items` as a listing orders them (docs/storage.md): by each field of `order` (``-``:
    descending), unset values first ascending and last descending, then `id` in the last
    field's direction."""
    keys = [(o.lstrip("-"), o.startswith("-")) for o in order]
    keys.append(("id", keys[-1][1]))
    ordered = list(items)
    for name, descending in reversed(keys):  # stable sorts, last key first
        ordered.sort(key=lambda item, n=name: _unset_first(getattr(item, n)), reverse=descending)
    return ordered


def _unset_first(value: Any) -> tuple[bool, Any]:
    return (False, 0) if value is None else (True, value)


def every_page(listing: Callable[[str | None], Listing[Any]]) -> tuple[list[Any], int]:
    """The items of every page of a listing (`listing(after)`), following the cursors, and the
    count, which every page must agree on and give exactly."""
    found: list[Any] = []
    counts = set()
    after = None
    while True:
        page = listing(after)
        assert page.exact
        counts.add(page.count)
        found += page.items
        if page.next is None:
            break
        after = page.next
    assert len(counts) == 1, counts
    return found, counts.pop()
