"""The storage contract suite on the built-in SQLite backend, on a file and in memory."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jivocore.testing.storage import StorageContract
from jivocore_sqlite import SQLiteStorage

# Contract tests jivocore_sqlite fails today, each a bug in the backend (or the core encoding it
# uses), not in the test. Strict: the day one is fixed, its XPASS fails the run, so remove it here.
KNOWN_BUGS = {
    "test_setup_gives_old_rows_a_new_fields_default": (
        "setup() adds a new column without the field's default: old rows read back NULL and "
        "fail to structure (int field)"
    ),
    "test_a_read_only_transaction_refuses_writes": (
        "transaction(write=False) is a plain BEGIN: writes in it succeed and commit"
    ),
    "test_in_with_none_matches_unset_fields": "In([None, x]) becomes `col IN (NULL, ?)`",
    "test_conditions_that_can_never_be_asked_are_refused": (
        "EntityType.value returns None before refusing a JSON field, so {'extra': Not(None)} "
        "filters a JSON column (stored as the text 'null') instead of raising"
    ),
    "test_pages_over_unset_fields": (
        "the keyset clause compares with `= ?` / `> ?`, never true for a NULL cursor value: "
        "pages stop at the first unset value"
    ),
    "test_search_with_a_filter_and_a_limit": (
        "ORDER BY rank picks the entity's own `rank` column over FTS5's rank"
    ),
    "test_a_value_the_database_cannot_hold_is_a_jivocore_error": (
        "an int beyond 64 bits raises sqlite3's OverflowError, not a JivoError"
    ),
}


def known_bugs(cls: type[StorageContract]) -> type[StorageContract]:
    for name, reason in KNOWN_BUGS.items():
        setattr(cls, name, _xfail(getattr(StorageContract, name), reason))
    return cls


def _xfail(test: Callable[..., Any], reason: str) -> Callable[..., Any]:
    @pytest.mark.xfail(strict=True, reason=f"jivocore_sqlite bug: {reason}")
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return test(*args, **kwargs)

    return wrapper


@known_bugs
class TestSQLiteFile(StorageContract):
    def make_storage(self, tmp_path: Path) -> SQLiteStorage:
        tmp_path.mkdir(parents=True, exist_ok=True)
        return SQLiteStorage(str(tmp_path / "contract.db"))


@known_bugs
class TestSQLiteMemory(StorageContract):
    def make_storage(self, tmp_path: Path) -> SQLiteStorage:
        return SQLiteStorage(":memory:")
