"""Shared by the CSV tests: a desk with the CRM plugins and jivocore_csv, and clients by content."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crmkit import crm_desk

import jivocore_csv
from jivocore import Client, ClientIdentity, FakeClock, HelpDesk


@contextmanager
def csv_desk(tmp: Path, **settings: Any) -> Iterator[HelpDesk]:
    with crm_desk("sqlite", tmp, FakeClock(), **settings) as desk:
        desk.pm.register(jivocore_csv, name="jivocore_csv")
        yield desk


def content(desk: HelpDesk) -> list[tuple[Any, ...]]:
    """Every client by content (not id, version or time), sorted: what two imports of the same
    rows must agree on."""
    with desk.reading() as tx:
        ops = {o.id: o.email for o in tx.select(__import__("jivocore").Operator)}
        found = [
            (
                c.name,
                c.emails,
                c.phones,
                c.status,
                ops.get(c.responsible_id) if c.responsible_id else None,
                tuple(sorted(c.tags)),
                tuple(sorted(c.custom.items())),
            )
            for c in tx.select(Client)
        ]
    return sorted(found, key=repr)


def count(desk: HelpDesk, cls: type[Any] = Client) -> int:
    with desk.reading() as tx:
        return tx.count(cls)


def identities(desk: HelpDesk) -> int:
    return count(desk, ClientIdentity)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path
