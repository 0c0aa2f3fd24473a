"""Exporting clients to CSV: the clients matching the CRM filters, streamed a page at a time,
every cell neutralised, in a form `import_clients` reads back to the same clients."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from typing import IO, Any

from jivocore import Client, ClientIdentity, HelpDesk, In, Operator, Transaction, ValidationError
from jivocore_crm import ClientFilter, find_clients, scope

from .importing import (
    _DECORATION,
    ALIASES,
    CUSTOM_PREFIX,
    KEY_CHANNELS,
    cell_text,
    header_key,
    plugin_columns,
)

PAGE = 1000
ENCODINGS = ("utf-8-sig", "utf-8", "utf-16")
COLUMNS = ("jivocore_id", "external_id", "name", "email", "phone", "status", "responsible")


def custom_header(key: str, taken: set[str]) -> str:
    """The column a custom field is exported under: its key, or ``custom:<key>`` when the key
    alone would be read back as something else (a recognised header, blank, padded)."""
    plain = header_key(key)
    if (
        plain in taken
        or _DECORATION.sub("", plain) in taken
        or not key.strip()
        or key != key.strip()
        or key.startswith(CUSTOM_PREFIX)
    ):
        return CUSTOM_PREFIX + key
    return key


def _pages(
    desk: HelpDesk, tx: Transaction, operator: Operator, filter: ClientFilter
) -> Iterator[tuple[Client, ...]]:
    if filter.text.strip():
        after: str | None = None
        while True:
            listing = find_clients(
                desk, operator.id, filter, order=("id",), after=after, limit=PAGE
            )
            yield listing.items
            if listing.next is None:
                return
            after = listing.next
    where = {**filter.where(desk, desk.clock.now()), **scope(operator)}
    after = None
    while True:
        page = tx.page(Client, where, order=("id",), after=after, limit=PAGE)
        yield page.items
        if page.next is None:
            return
        after = page.next


def export_clients(
    desk: HelpDesk,
    out: str | os.PathLike[str] | IO[bytes],
    operator_id: str,
    filter: ClientFilter | None = None,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8-sig",
) -> int:
    """Write the clients `operator_id` may see that match `filter` to `out` (a path or a binary
    file) as CSV: UTF-8 with a byte order mark by default (Excel opens it as UTF-8), or
    ``"utf-8"`` / ``"utf-16"``; returns how many clients were written. Columns: jivocore_id,
    external_id, name, email, phone, status, responsible (the operator's email, else id), tags
    (with jivocore_tags), created, then one column per custom field."""
    if encoding not in ENCODINGS:
        raise ValidationError(f"export in one of {', '.join(ENCODINGS)}, not {encoding!r}")
    if len(delimiter) != 1 or delimiter in "\"'\r\n":
        raise ValidationError(f"a delimiter is one character other than a quote, not {delimiter!r}")
    filter = filter or ClientFilter()
    registered = plugin_columns(desk)
    tags = "tags" in {name for name, _ in registered.values()}
    taken = {header_key(a) for aliases in ALIASES.values() for a in aliases} | set(registered)
    with desk.reading() as tx:
        operator = tx.get(Operator, operator_id)
        emails: dict[str, str] = {}
        counts: dict[str, int] = {}
        for o in tx.select(Operator):
            if o.email:
                counts[o.email.casefold()] = counts.get(o.email.casefold(), 0) + 1
        for o in tx.select(Operator):
            unique = o.email and counts[o.email.casefold()] == 1 and o.email.casefold() != o.id
            emails[o.id] = o.email if unique else o.id
        keys: dict[str, None] = {}
        for page in _pages(desk, tx, operator, filter):
            for client in page:
                keys.update(dict.fromkeys(client.custom))
        custom = list(keys)
        header = [*COLUMNS, *(["tags"] if tags else []), "created"]
        header += [custom_header(k, taken) for k in custom]
        with _binary(out) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, newline="", write_through=True)
            writer = csv.writer(text, delimiter=delimiter)
            writer.writerow([cell_text(h) for h in header])
            written = 0
            for page in _pages(desk, tx, operator, filter):
                external = (
                    {
                        i.client_id: i.external_id
                        for i in tx.select(
                            ClientIdentity,
                            {
                                "channel": KEY_CHANNELS["external_id"],
                                "client_id": In([c.id for c in page]),
                            },
                        )
                    }
                    if page
                    else {}
                )
                rows = []
                for c in page:
                    row: list[Any] = [
                        c.id,
                        external.get(c.id, ""),
                        c.name,
                        ", ".join(c.emails),
                        ", ".join(c.phones),
                        c.status,
                        emails.get(c.responsible_id, c.responsible_id) if c.responsible_id else "",
                    ]
                    if tags:
                        row.append(", ".join(sorted(c.tags)))
                    row.append(c.created.isoformat())
                    row += [c.custom.get(k, "") for k in custom]
                    rows.append([cell_text(v) for v in row])
                writer.writerows(rows)
                written += len(rows)
            text.flush()
            text.detach()
    return written


class _binary:
    """`out` as a binary file: opened (and closed) here when it is a path."""

    def __init__(self, out: str | os.PathLike[str] | IO[bytes]) -> None:
        self.out = out
        self.opened: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if isinstance(self.out, str | os.PathLike):
            self.opened = open(self.out, "wb")
            return self.opened
        return self.out

    def __exit__(self, *exc: object) -> None:
        if self.opened is not None:
            self.opened.close()


__all__ = ["COLUMNS", "ENCODINGS", "custom_header", "export_clients"]
