"""A storage plugin: each tenant's desk in a SQLite file of its own, for ``tenant://<name>``.

It answers `jivocore_get_storage` only for its own URLs, so the built-in backend still opens
everything else; it passes jivocore's storage contract suite (tests/test_plugin_guide.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jivocore import ValidationError, hookimpl
from jivocore_sqlite import SQLiteStorage

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@hookimpl
def jivocore_get_storage(settings: Mapping[str, Any]) -> SQLiteStorage | None:
    database = str(settings.get("database") or "")
    if not database.startswith("tenant://"):
        return None  # not ours: let another plugin answer
    tenant = database.removeprefix("tenant://")
    if not _TENANT.fullmatch(tenant):
        raise ValidationError(f"{tenant!r} is not a tenant name", tenant=tenant)
    root = Path(settings.get("tenant_root", "tenants"))
    root.mkdir(parents=True, exist_ok=True)
    return SQLiteStorage(str(root / f"{tenant}.db"))
