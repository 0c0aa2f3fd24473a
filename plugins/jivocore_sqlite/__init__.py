"""jivocore_sqlite: the built-in storage backend, SQLite through sqlite-utils.

It answers `jivocore_get_storage` last (`trylast`), so any other storage plugin that answers
takes precedence. Settings: ``database`` (a file path, ``sqlite:///path``, or ``:memory:``),
``sqlite_synchronous`` (``NORMAL`` by default; ``FULL`` survives power loss, not only crashes)
and ``sqlite_mmap_size`` (bytes of the file read through memory-mapping, 1 GiB by default; 0
reads it all through SQLite's own cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jivocore import hookimpl

from .storage import SQLiteStorage, SQLiteTransaction

__all__ = ["SQLiteStorage", "SQLiteTransaction"]


@hookimpl(trylast=True)
def jivocore_get_storage(settings: Mapping[str, Any]) -> SQLiteStorage | None:
    database = str(settings.get("database") or ":memory:")
    if "://" in database:
        scheme, _, rest = database.partition("://")
        if scheme != "sqlite":
            return None
        # As SQLAlchemy spells it: sqlite:///relative.db, sqlite:////absolute.db
        database = rest.removeprefix("/") or ":memory:"
    mmap_size = settings.get("sqlite_mmap_size", 2**30)
    if isinstance(mmap_size, str) and mmap_size.isdigit():  # as an environment gives it
        mmap_size = int(mmap_size)
    return SQLiteStorage(
        database,
        synchronous=str(settings.get("sqlite_synchronous", "NORMAL")),
        mmap_size=mmap_size,
    )
