"""jivocore_postgres: the storage contract on PostgreSQL (psycopg 3, psycopg_pool), for hosts that
run several processes on one database.

It answers `jivocore_get_storage` when ``settings["database"]`` is a ``postgresql://`` or
``postgres://`` URL, and leaves every other database to another plugin. Optional settings:
``postgres_pool_size`` (connections per process, 10 by default) and ``postgres_schema`` (a schema
to keep the tables in, made if missing). Events reach other processes through LISTEN/NOTIFY:
`PostgresStorage.listen()`. docs/storage.md describes the schema and the choices made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jivocore import hookimpl

from .storage import PostgresStorage, PostgresTransaction, tokens

__all__ = ["PostgresStorage", "PostgresTransaction", "jivocore_get_storage", "tokens"]

SCHEMES = ("postgresql://", "postgres://")


@hookimpl
def jivocore_get_storage(settings: Mapping[str, Any]) -> PostgresStorage | None:
    database = str(settings.get("database") or "")
    if not database.startswith(SCHEMES):
        return None
    return PostgresStorage(
        database,
        pool_size=int(settings.get("postgres_pool_size", 10)),
        schema=settings.get("postgres_schema"),
    )
