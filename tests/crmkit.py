"""Shared by the CRM plugins' tests: desks with every CRM plugin, on SQLite and PostgreSQL.

PostgreSQL is gated as tests/test_storage_postgres.py gates it: skipped without
JIVOCORE_TEST_POSTGRES, a failure under CI=true.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Iterator
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
