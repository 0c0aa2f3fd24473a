"""Importing clients from a CSV file: headers, normalisation, matching, the plan and its batches.

A file is read twice. The first pass only reads: it refuses what cannot be imported at all
(empty, binary, no recognisable column, a field or record over its limit, too many rows, an
unterminated quote) before anything is written. The second pass plans and, unless it is a dry
run, applies: a batch of rows at a time, each batch one `desk.run` transaction, so a batch is
written whole or not at all. Matching goes through key identities the import keeps beside each
client (docs/csv.md), so running the same file again finds what the last run wrote.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import sqlite3
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import IO, Any

import attrs
import phonenumbers

from jivocore import (
    Client,
    ClientIdentity,
    ConfigurationError,
    HelpDesk,
    In,
    Operator,
    PluginError,
    Work,
    neutralise,
    new_id,
)
from jivocore_crm import statuses

from .reading import CsvRefused, Format, Record, detect, records

SETTINGS: Mapping[str, Any] = {
    "csv_batch_size": 1000,  # rows per transaction
    "csv_max_rows": 1_000_000,  # the most data rows a file may have
    "csv_max_field_chars": 100_000,  # the longest field
    "csv_max_record_chars": 1_000_000,  # the longest record (bounds an unterminated quote)
    "csv_phone_region": None,  # region of phone numbers written without +country, e.g. "BR"
    "csv_match": ("external_id", "email", "phone"),  # the keys that find an existing client
    "csv_duplicates": "merge",  # rows of one file sharing a key: "merge" or "report"
}

# The channels of the key identities an import keeps (ClientIdentity: channel, external_id).
KEY_CHANNELS = {
    "jivocore_id": "csv:jivocore",  # another desk's client id, from its export
    "external_id": "csv",
    "email": "csv:email",
    "phone": "csv:phone",
    "fingerprint": "csv:row",
}
MATCH_KEYS = ("external_id", "email", "phone")
DUPLICATE_POLICIES = ("merge", "report")

# The fields a column can hold, and the headers that name them (accents, case and punctuation
# are ignored: "E-mail", "Teléfono", "Responsável" match).
IDENTIFYING = ("jivocore_id", "external_id", "name", "first_name", "last_name", "email", "phone")
FIELDS = (*IDENTIFYING, "status", "responsible", "ignore")
ALIASES: Mapping[str, tuple[str, ...]] = {
    "jivocore_id": ("jivocore id",),
    "external_id": (
        "external id",
        "id",
        "client id",
        "customer id",
        "contact id",
        "id externo",
        "codigo",
        "codigo cliente",
        "identificador",
        "id cliente",
    ),
    "name": (
        "name",
        "full name",
        "client",
        "client name",
        "contact",
        "contact name",
        "display name",
        "customer",
        "customer name",
        "nome",
        "nome completo",
        "cliente",
        "nombre",
        "nombre completo",
        "contato",
        "contacto",
    ),
    "first_name": (
        "first name",
        "given name",
        "firstname",
        "primeiro nome",
        "nome proprio",
        "nombre de pila",
        "prenome",
    ),
    "last_name": (
        "last name",
        "surname",
        "family name",
        "lastname",
        "sobrenome",
        "ultimo nome",
        "apellido",
        "apellidos",
        "apelido",
    ),
    "email": (
        "email",
        "e mail",
        "mail",
        "email address",
        "e mail address",
        "correo",
        "correo electronico",
        "endereco de email",
        "endereco de e mail",
        "emails",
    ),
    "phone": (
        "phone",
        "telephone",
        "phone number",
        "mobile",
        "mobile phone",
        "cell",
        "cell phone",
        "business phone",
        "home phone",
        "telefone",
        "telefono",
        "celular",
        "movil",
        "tel",
        "fone",
        "whatsapp",
        "phones",
        "numero de telefone",
        "numero de telefono",
    ),
    "status": ("status", "estado", "situacao", "estatus"),
    "responsible": (
        "owner",
        "responsible",
        "responsible operator",
        "assigned to",
        "operator",
        "agent",
        "responsavel",
        "responsable",
        "operador",
        "agente",
    ),
    "ignore": ("error", "created", "criado", "creado", "created at"),
}
CUSTOM_PREFIX = "custom:"
_DECORATION = re.compile(r"(?: \d+)?(?: value| valor)?$")  # Google's "E-mail 1 - Value"
_EMAIL = re.compile(r"[^@\s,;<>()\[\]\"]{1,64}@[^@\s,;<>()\[\]\"]+\.[^@\s,;<>()\[\]\".]+")
_EMAILS_SPLIT = re.compile(r"[,;\s]+")
_PHONES_SPLIT = re.compile(r"[,;/]+")
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_TRIGGERS = tuple(c for c in map(chr, range(128)) if neutralise(c) != c)
_ESCAPED = re.compile("'+[" + re.escape("".join(_TRIGGERS)) + "]")


def header_key(text: str) -> str:
    """A header as recognition compares it: accents, case and punctuation removed."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", plain).split())


def cell_text(value: Any) -> str:
    """A cell as an export writes it: `jivocore.neutralise`, and one more leading quote on text
    that already starts with quotes and a formula character, so `read_cell` undoes it exactly."""
    text = neutralise(value)
    if text is value and isinstance(value, str) and _ESCAPED.match(value):
        return "'" + value
    return text


def read_cell(cell: str) -> str:
    """A cell as it was before `cell_text`: one leading quote before quotes and a formula
    character is removed."""
    return cell[1:] if cell[:1] == "'" and _ESCAPED.match(cell) else cell


# --- settings and columns ---------------------------------------------------------------------


def setting(desk: HelpDesk, name: str) -> Any:
    return desk.settings.get(name, SETTINGS[name])


@attrs.frozen
class Column:
    """What one column of the file holds: a field (see `FIELDS`), a custom field (`key`), or a
    column a plugin registered (`plugin`)."""

    index: int
    header: str
    field: str  # a FIELDS name, "custom" or "plugin"
    key: str = ""  # the custom field's key, or the plugin column's name


def plugin_columns(desk: HelpDesk) -> dict[str, tuple[str, str]]:
    """header key -> (column name, plugin) for the columns plugins register with
    `jivocore_register_csv_columns`; a name or alias taken twice is a PluginError."""
    found: dict[str, tuple[str, str]] = {}
    taken = {header_key(a) for aliases in ALIASES.values() for a in aliases}
    for impl in reversed(desk.pm.hook.jivocore_register_csv_columns.get_hookimpls()):
        plugin = impl.plugin_name

        def register(name: str, aliases: Sequence[str] = (), plugin: str = plugin) -> None:
            if not isinstance(name, str) or not name or isinstance(aliases, str):
                raise PluginError(
                    f"plugin {plugin} registered a CSV column {name!r} with aliases "
                    f"{aliases!r}: give a name and a sequence of header aliases",
                    plugin=plugin,
                )
            for alias in (name, *aliases):
                key = header_key(alias)
                if key in taken or key in found:
                    owner = found[key][1] if key in found else "jivocore_csv"
                    raise PluginError(
                        f"plugin {plugin} registered the CSV header {alias!r}, which "
                        f"{owner} recognises already",
                        plugin=plugin,
                    )
                found[key] = (name, plugin)

        impl.function(register=register)
    return found


def map_columns(
    header: Sequence[str],
    mapping: Mapping[str, str],
    registered: Mapping[str, tuple[str, str]],
) -> list[Column]:
    """The meaning of each column of `header`: an explicit `mapping` (header -> a field, a
    registered column, ``custom:<key>`` or ``ignore``) first, then the recognised headers, then
    a custom field named as the header. CsvRefused if nothing identifies a client."""
    recognised = {header_key(a): f for f, aliases in ALIASES.items() for a in aliases}
    plugin_names = {name for name, _ in registered.values()}
    columns = []
    for index, raw in enumerate(header):
        text = read_cell(raw)
        if text in mapping:
            target = mapping[text]
            if target.startswith(CUSTOM_PREFIX):
                columns.append(Column(index, text, "custom", target[len(CUSTOM_PREFIX) :]))
            elif target in FIELDS:
                columns.append(Column(index, text, target))
            elif target in plugin_names:
                columns.append(Column(index, text, "plugin", target))
            else:
                choices = ", ".join([*FIELDS, *sorted(plugin_names), "custom:<key>"])
                raise CsvRefused(
                    f"the mapping sends column {text!r} to {target!r}; map it to one of: {choices}",
                    column=text,
                )
            continue
        if text.startswith(CUSTOM_PREFIX):
            columns.append(Column(index, text, "custom", text[len(CUSTOM_PREFIX) :]))
            continue
        key = header_key(text)
        plain = _DECORATION.sub("", key)
        if key in recognised or plain in recognised:
            columns.append(Column(index, text, recognised.get(key) or recognised[plain]))
        elif key in registered or plain in registered:
            columns.append(
                Column(index, text, "plugin", (registered.get(key) or registered[plain])[0])
            )
        elif text.strip():
            columns.append(Column(index, text, "custom", text.strip()))
    unknown = set(mapping) - {read_cell(h) for h in header}
    if unknown:
        raise CsvRefused(
            f"the mapping names columns the file does not have: {', '.join(sorted(unknown))}"
        )
    if not any(c.field in IDENTIFYING for c in columns):
        raise CsvRefused(
            "no recognisable column: none of the headers "
            f"({', '.join(repr(read_cell(h)) for h in header)}) names a client's name, email, "
            "phone or id; rename them, or map them (--map 'Header=email')",
        )
    return columns


# --- values -----------------------------------------------------------------------------------


def normalise_email(text: str) -> str:
    """An email address trimmed, with its domain in lower case; ValueError with the reason if it
    is not one."""
    value = text.strip()
    if not _EMAIL.fullmatch(value) or ".." in value or len(value) > 254:
        raise ValueError(f"{text!r} is not an email address")
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_phone(text: str, region: str | None) -> str:
    """A phone number in E.164 (``+5511987654321``); ValueError with the reason if it is not a
    valid number. Numbers without ``+country`` are read in `region`."""
    value = text.strip()
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            raise ValueError(
                f"{text!r} has no country code (+...); give the region of such numbers "
                "(--region, setting csv_phone_region)"
            ) from None
        raise ValueError(f"{text!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{text!r} is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _stored_phone(text: str, region: str | None) -> str | None:
    """A phone already on a client as its key: as it is when in E.164, else normalised."""
    if _E164.fullmatch(text):
        return text
    try:
        return normalise_phone(text, region)
    except ValueError:
        return None


# --- the result -------------------------------------------------------------------------------


@attrs.frozen
class RowError:
    """Why one row was rejected: its record number (the header is record 0), the physical
    line it starts on, the column (header text; empty when it is the whole row) and the reason."""

    record: int
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"record {self.record} (line {self.line})"
        return f"{where}{', column ' + repr(self.column) if self.column else ''}: {self.reason}"


@attrs.define
class ImportReport:
    """What an import did, or (`dry_run`) would do. Counted in rows: `created` rows made a new
    client, `updated` rows changed an existing client, `unchanged` rows matched one and changed
    nothing (skipped), `merged` rows repeated an earlier row of the file and were merged into
    its client, `rejected` rows were not imported (each with its `errors`). `indexed` counts
    key identities the import added for clients it found without them."""

    dry_run: bool
    format: Format | None = None
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    rejected: int = 0
    indexed: int = 0
    errors: list[RowError] = attrs.Factory(list)

    def summary(self) -> str:
        verb = "would" if self.dry_run else "did"
        return (
            f"{self.rows} rows: {verb} create {self.created}, update {self.updated}, skip "
            f"{self.unchanged} unchanged, merge {self.merged} duplicates, reject {self.rejected}"
        )


# --- file-level duplicates: the keys seen so far, kept on disk --------------------------------


class _Seen:
    """The keys of the rows accepted so far (key -> first record, client id): in a temporary
    SQLite file, so memory stays flat however long the file is. In a dry run it also holds the
    keys existing clients would be given (record 0)."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="jivocore-csv-", suffix=".db")
        os.close(fd)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
            "CREATE TABLE seen (key TEXT PRIMARY KEY, record INTEGER, client TEXT) WITHOUT ROWID;"
        )

    def find(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        wanted = list(set(keys))
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for key, record, client in self.db.execute(
                f"SELECT key, record, client FROM seen WHERE key IN ({marks})", chunk
            ):
                found[key] = (record, client)
        return found

    def add(self, entries: Iterable[tuple[str, int, str]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", entries)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
        os.unlink(self.path)


def _key(channel: str, value: str) -> str:
    return f"{channel}\x1f{value}"


# --- one row ----------------------------------------------------------------------------------


class _Context:
    """What every row of one import needs, worked out once."""

    def __init__(
        self,
        desk: HelpDesk,
        columns: list[Column],
        *,
        region: str | None,
        match: Sequence[str],
        duplicates: str,
    ) -> None:
        self.desk = desk
        self.columns = columns
        self.region = region
        self.match = tuple(match)
        self.duplicates = duplicates
        self.statuses = statuses(desk)
        self.status_of = {s.casefold(): s for s in self.statuses}
        self.operators = self._operators(desk)

    @staticmethod
    def _operators(desk: HelpDesk) -> dict[str, str | None]:
        """Operator id, email (case-insensitive) or name -> id (None when two share it)."""
        with desk.reading() as tx:
            found: dict[str, str | None] = {}
            for operator in tx.select(Operator):
                found[operator.id] = operator.id
                for alias in {operator.email.casefold(), operator.name}:
                    if alias and alias != operator.id:
                        found[alias] = None if alias in found else operator.id
            return found


def parse_row(ctx: _Context, record: Record) -> dict[str, Any]:
    """A record as a row of the import: the client's values from its cells, normalised, with
    the errors found (column, reason). The row is a plain dict: it is what
    `jivocore_prepare_csv_rows` hands to plugins (docs/hooks.md)."""
    cells = record.cells
    errors: list[tuple[str, str]] = []
    client: dict[str, Any] = {
        "name": None,
        "emails": [],
        "phones": [],
        "status": None,
        "responsible_id": None,
        "custom": {},
        "tags": set(),
    }
    plugin_cells: dict[str, str] = {}
    first = last = ""
    jivocore_id = external_id = ""
    if len(cells) > len(ctx.columns) and any(c.strip() for c in cells[len(ctx.columns) :]):
        errors.append(("", f"{len(cells)} fields, but the header has {len(ctx.columns)}"))
    for column in ctx.columns:
        raw = cells[column.index] if column.index < len(cells) else ""
        if not raw:
            continue
        if "\x00" in raw:
            errors.append((column.header, "contains a NUL character (0x00)"))
            continue
        if any("\udc80" <= c <= "\udcff" for c in raw):
            errors.append((column.header, "holds bytes that are not text in the file's encoding"))
            continue
        value = read_cell(raw)
        field = column.field
        if field == "name":
            if client["name"] is None:
                client["name"] = value
        elif field == "first_name":
            first = first or value.strip()
        elif field == "last_name":
            last = last or value.strip()
        elif field == "email":
            for part in _EMAILS_SPLIT.split(value):
                if part:
                    try:
                        email = normalise_email(part)
                    except ValueError as exc:
                        errors.append((column.header, str(exc)))
                    else:
                        if email not in client["emails"]:
                            client["emails"].append(email)
        elif field == "phone":
            for part in _PHONES_SPLIT.split(value):
                if part.strip():
                    try:
                        phone = normalise_phone(part, ctx.region)
                    except ValueError as exc:
                        errors.append((column.header, str(exc)))
                    else:
                        if phone not in client["phones"]:
                            client["phones"].append(phone)
        elif field == "status":
            status = ctx.status_of.get(value.strip().casefold())
            if status is None:
                errors.append(
                    (
                        column.header,
                        f"{value!r} is not a client status; choose one of: "
                        f"{', '.join(ctx.statuses)}",
                    )
                )
            client["status"] = status
        elif field == "responsible":
            wanted = value.strip()
            operator_id = ctx.operators.get(wanted, ctx.operators.get(wanted.casefold()))
            if operator_id is None:
                reason = "names two operators" if wanted in ctx.operators else "is no operator"
                errors.append((column.header, f"{wanted!r} {reason} (give an id or email)"))
            client["responsible_id"] = operator_id
        elif field == "external_id":
            external_id = external_id or value.strip()
        elif field == "jivocore_id":
            jivocore_id = jivocore_id or value.strip()
        elif field == "custom":
            client["custom"].setdefault(column.key, value)
        elif field == "plugin":
            plugin_cells.setdefault(column.key, value)
    if client["name"] is None and (first or last):
        client["name"] = " ".join(p for p in (first, last) if p)
    keys: list[tuple[str, str]] = []
    if jivocore_id:
        keys.append(("jivocore_id", jivocore_id))
    if external_id:
        keys.append(("external_id", external_id))
    keys += [("email", e) for e in client["emails"]]
    keys += [("phone", p) for p in client["phones"]]
    return {
        "record": record.number,
        "line": record.line,
        "cells": plugin_cells,
        "client": client,
        "jivocore_id": jivocore_id,
        "keys": keys,
        "errors": errors,
        "_raw": cells,
    }


def _fresh(row: dict[str, Any]) -> dict[str, Any]:
    """A copy a batch attempt may change: a retried batch starts again from the file's row."""
    client = row["client"]
    return {
        **row,
        "cells": dict(row["cells"]),
        "client": {
            **client,
            "emails": list(client["emails"]),
            "phones": list(client["phones"]),
            "custom": dict(client["custom"]),
            "tags": set(client["tags"]),
        },
        "errors": list(row["errors"]),
    }


def _fingerprint(row: Mapping[str, Any]) -> str:
    """The key of a row with no id, email or phone: its content, so running the file again
    finds the client it made."""
    client = row["client"]
    content = repr(
        (
            client["name"],
            client["status"],
            client["responsible_id"],
            sorted(client["custom"].items()),
            sorted(client["tags"]),
            sorted(row["cells"].items()),
        )
    )
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


def _apply(client: Client, values: Mapping[str, Any], now: datetime) -> Client:
    """`client` with a row's values: given fields set, contacts, tags and custom fields added
    (an import adds and sets, it never removes); a new responsible operator is stamped `now`."""
    edits: dict[str, Any] = {}
    if values["name"]:
        edits["name"] = values["name"]
    emails = tuple(dict.fromkeys([*client.emails, *values["emails"]]))
    if emails != client.emails:
        edits["emails"] = emails
    phones = tuple(dict.fromkeys([*client.phones, *values["phones"]]))
    if phones != client.phones:
        edits["phones"] = phones
    if values["status"] is not None:
        edits["status"] = values["status"]
    if values["tags"] and not values["tags"] <= client.tags:
        edits["tags"] = client.tags | frozenset(values["tags"])
    if values["custom"]:
        custom = {**client.custom, **values["custom"]}
        if custom != client.custom:
            edits["custom"] = custom
    edited = attrs.evolve(client, **edits) if edits else client
    responsible = values["responsible_id"]
    if responsible is not None and responsible != client.responsible_id:
        edited = edited.given_to(responsible, now)
    return edited


# --- one batch --------------------------------------------------------------------------------


@attrs.define
class _Outcome:
    actions: list[tuple[dict[str, Any], str, str]]  # (row, action, error or "")
    seen: list[tuple[str, int, str]]


def _batch(ctx: _Context, seen: _Seen, parsed: list[dict[str, Any]], work: Work | None) -> _Outcome:
    """Plan (and with `work`, write) one batch; pure apart from `work.tx`, so `desk.run` may
    run it again after a conflict."""
    desk = ctx.desk
    actions: list[tuple[dict[str, Any], str, str]] = []
    rows = []
    for row in parsed:
        if row["errors"]:
            actions.append((row, "reject", ""))
        else:
            rows.append(_fresh(row))
    if rows:
        desk.pm.hook.jivocore_prepare_csv_rows(desk=desk, work=work, rows=rows)
    live = []
    for row in rows:
        if row["errors"]:
            actions.append((row, "reject", ""))
        else:
            if not row["keys"] and not row["jivocore_id"]:
                row["keys"] = [("fingerprint", _fingerprint(row))]
            live.append(row)
    order = ["jivocore_id", *(k for k in ctx.match if k in KEY_CHANNELS), "fingerprint"]
    keyed = {_key(KEY_CHANNELS[kind], value) for row in live for kind, value in row["keys"]}
    earlier = seen.find(keyed)
    owners: dict[str, str] = {}  # key -> client id, from the stored key identities
    clients: dict[str, Client] = {}
    with ExitStack() as stack:
        tx = work.tx if work is not None else stack.enter_context(desk.reading())
        if keyed:
            values = {v for row in live for _, v in row["keys"]}
            channels = sorted({KEY_CHANNELS[k] for row in live for k, _ in row["keys"]})
            for identity in tx.select(
                ClientIdentity, {"channel": In(channels), "external_id": In(values)}
            ):
                key = _key(identity.channel, identity.external_id)
                if key in keyed:
                    owners[key] = identity.client_id
        wanted = set(owners.values()) | {c for _, c in earlier.values() if c}
        wanted |= {row["jivocore_id"] for row in live if row["jivocore_id"]}
        if wanted:
            clients = {c.id: c for c in tx.select(Client, {"id": In(wanted)})}
            earlier.update(seen.find(_key("client", c) for c in clients))
        now = work.now if work is not None else desk.clock.now()
        first_status = ctx.statuses[0]
        drafts: dict[str, Client] = {}  # client id -> as this batch leaves it
        made: set[str] = set()  # ids of clients this batch creates
        batch_keys: dict[str, tuple[int, str]] = {}
        new_seen: list[tuple[str, int, str]] = []
        identities: dict[str, tuple[str, str, str]] = {}  # key -> (channel, value, client)
        targets: dict[int, str] = {}  # record -> the client it went to
        for row in live:
            target: str | None = None
            duplicate_of: tuple[int, str] | None = None
            if row["jivocore_id"] and row["jivocore_id"] in clients:
                target = row["jivocore_id"]
            for kind in order:
                if target is not None or duplicate_of is not None:
                    break
                for k, value in row["keys"]:
                    if k != kind:
                        continue
                    key = _key(KEY_CHANNELS[k], value)
                    hit = batch_keys.get(key) or earlier.get(key)
                    if hit is not None and hit[0] > 0:
                        duplicate_of = (hit[0], f"{k.replace('_', ' ')} {value}")
                        # In a dry run the earlier row's client exists only as a plan.
                        target = hit[1] if hit[1] in clients or hit[1] in drafts else None
                        break
                    owner = hit[1] if hit is not None else owners.get(key)
                    if owner is not None and owner in clients:
                        target = owner
                        break
            if duplicate_of is None and target is not None:
                # Another row of the file reached the same client by another key.
                hit = batch_keys.get(_key("client", target)) or earlier.get(_key("client", target))
                if hit is not None and hit[0] > 0:
                    duplicate_of = (hit[0], "client")
            if duplicate_of is not None and ctx.duplicates == "report":
                actions.append(
                    (
                        row,
                        "reject",
                        f"duplicate of record {duplicate_of[0]} (same {duplicate_of[1]})",
                    )
                )
                continue
            values = row["client"]
            if target is None and duplicate_of is not None:
                # A dry run: the earlier row's client is not stored; merging changes no count.
                action = "merge"
            elif target is None:
                client = Client(
                    id=new_id(now),
                    name=values["name"] or "",
                    status=values["status"] or first_status,
                    created=now,
                )
                client = _apply(client, values, now)
                target = client.id
                drafts[target] = client
                made.add(target)
                action = "create"
            else:
                before = drafts.get(target) or clients[target]
                after = _apply(before, values, now)
                drafts[target] = after
                if duplicate_of is not None:
                    action = "merge"
                else:
                    action = "update" if after != before else "unchanged"
            if target is not None:
                targets[row["record"]] = target
            record = duplicate_of[0] if duplicate_of is not None else row["record"]
            if target and _key("client", target) not in batch_keys:
                batch_keys[_key("client", target)] = (record, target)
                new_seen.append((_key("client", target), record, target))
            for kind, value in row["keys"]:
                key = _key(KEY_CHANNELS[kind], value)
                if key not in batch_keys:
                    batch_keys[key] = (record, target or "")
                    new_seen.append((key, record, target or ""))
                if target and key not in owners and key not in identities and value != target:
                    identities[key] = (KEY_CHANNELS[kind], value, target)
            actions.append((row, action, ""))
        # A row counts as an update only if its client ends the batch changed (a later
        # duplicate may set back what it set).
        for i, (row, action, error) in enumerate(actions):
            target = targets.get(row["record"])
            if action == "update" and target is not None and drafts[target] == clients[target]:
                actions[i] = (row, "unchanged", error)
        if work is not None:
            for client_id, draft in drafts.items():
                if client_id in made:
                    work.tx.add(draft)
                elif draft != clients[client_id]:
                    work.tx.update(draft)
            for channel, value, client_id in identities.values():
                work.tx.add(
                    ClientIdentity(
                        id=new_id(now),
                        channel=channel,
                        external_id=value,
                        client_id=client_id,
                        created=now,
                    )
                )
            counts = {a: sum(1 for _, x, _ in actions if x == a) for a in ("create", "update")}
            if counts["create"] or counts["update"]:
                work.record("clients_imported", created=counts["create"], updated=counts["update"])
    return _Outcome(actions, new_seen)


# --- key identities for clients that have none ------------------------------------------------


def _index_existing(desk: HelpDesk, seen: _Seen, region: str | None, *, write: bool) -> int:
    """Give every client the email and phone key identities it lacks (a client added by hand,
    or edited since), a page at a time; in a dry run, note them in `seen` instead. A key that
    another client holds stays with it. Returns how many were (or would be) added."""
    added = 0
    after: str | None = None
    while True:
        with desk.reading() as tx:
            page = tx.page(Client, order=("id",), after=after, limit=500)
            wanted: dict[str, tuple[str, str, str]] = {}
            for client in page.items:
                for email in client.emails:
                    try:
                        value = normalise_email(email)
                    except ValueError:
                        continue
                    wanted.setdefault(_key("csv:email", value), ("csv:email", value, client.id))
                for phone in client.phones:
                    stored = _stored_phone(phone, region)
                    if stored is not None:
                        wanted.setdefault(
                            _key("csv:phone", stored), ("csv:phone", stored, client.id)
                        )
            if wanted:
                values = {v for _, v, _ in wanted.values()}
                for identity in tx.select(
                    ClientIdentity,
                    {"channel": In(["csv:email", "csv:phone"]), "external_id": In(values)},
                ):
                    wanted.pop(_key(identity.channel, identity.external_id), None)
        if wanted:
            if write:
                missing = list(wanted.values())

                def change(work: Work, missing: list[tuple[str, str, str]] = missing) -> None:
                    for channel, value, client_id in missing:
                        if (
                            next(
                                work.tx.select(
                                    ClientIdentity,
                                    {"channel": channel, "external_id": value},
                                    limit=1,
                                ),
                                None,
                            )
                            is None
                        ):
                            work.tx.add(
                                ClientIdentity(
                                    id=new_id(work.now),
                                    channel=channel,
                                    external_id=value,
                                    client_id=client_id,
                                    created=work.now,
                                )
                            )

                desk.run(change)
            else:
                seen.add((key, 0, client_id) for key, (_, _, client_id) in wanted.items())
            added += len(wanted)
        if page.next is None:
            return added
        after = page.next


# --- the whole file ---------------------------------------------------------------------------


def _rejected_writer(
    stack: ExitStack, path: str | os.PathLike[str] | None, header: Sequence[str], fmt: Format
) -> Callable[[Sequence[str], str], None] | None:
    if path is None:
        return None
    out: IO[str] = stack.enter_context(
        open(path, "w", encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
    )
    writer = csv.writer(out, delimiter=fmt.delimiter)
    columns = [read_cell(h) for h in header]
    at = next((i for i, h in enumerate(columns) if header_key(h) == "error"), None)
    if at is None:
        columns.append("error")
    writer.writerow([cell_text(c) for c in columns])

    def write(cells: Sequence[str], error: str) -> None:
        row = [read_cell(c) for c in cells]
        row += [""] * (len(columns) - len(row))
        row[at if at is not None else len(columns) - 1] = error
        writer.writerow([cell_text(c) for c in row])

    return write


@contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal, nothing otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    import click

    with click.progressbar(length=total, label="Importing", file=sys.stderr) as bar:
        yield bar.update


def import_clients(
    desk: HelpDesk,
    path: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    encoding: str | None = None,
    delimiter: str | None = None,
    mapping: Mapping[str, str] | None = None,
    region: str | None = None,
    match: Sequence[str] | None = None,
    duplicates: str | None = None,
    rejected: str | os.PathLike[str] | None = None,
    progress: bool | None = False,
    on_error: Callable[[RowError], None] | None = None,
) -> ImportReport:
    """Import the clients of a CSV file (docs/csv.md); with `dry_run`, only say what would be
    done. Returns the report; rejected rows go to `rejected` (a CSV of the original columns and
    an ``error`` column) and to `on_error` as they are found. Raises CsvRefused (a
    ValidationError), having written nothing, for a file that cannot be imported at all."""
    path = os.fspath(path)
    region = region if region is not None else setting(desk, "csv_phone_region")
    match = tuple(match if match is not None else setting(desk, "csv_match"))
    duplicates = duplicates or setting(desk, "csv_duplicates")
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigurationError(f"duplicates are 'merge' or 'report', not {duplicates!r}")
    for key in match:
        if key not in MATCH_KEYS:
            raise ConfigurationError(
                f"{key!r} is not a match key; choose from: {', '.join(MATCH_KEYS)}"
            )
    if region is not None and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(f"{region!r} is not a phone region such as 'US', 'BR', 'ES'")
    region = region.upper() if region else None
    max_field = int(setting(desk, "csv_max_field_chars"))
    max_record = int(setting(desk, "csv_max_record_chars"))
    max_rows = int(setting(desk, "csv_max_rows"))
    batch_size = int(setting(desk, "csv_batch_size"))
    registered = plugin_columns(desk)
    recognised = {header_key(a) for aliases in ALIASES.values() for a in aliases}
    recognised |= set(registered)

    def known(header: str) -> bool:
        return header_key(read_cell(header)) in recognised

    fmt = detect(path, encoding=encoding, delimiter=delimiter, known=known)

    # First pass: refuse the file before anything is written.
    rows = 0
    header: list[str] = []
    for record in records(path, fmt, max_field=max_field, max_record=max_record):
        if record.number == 0:
            header = record.cells
            columns = map_columns(header, mapping or {}, registered)
        else:
            rows += 1
            if rows > max_rows:
                raise CsvRefused(
                    f"the file has more than {max_rows:,} rows (setting csv_max_rows); split it",
                    record=record.number,
                    line=record.line,
                )
    if not header:
        raise CsvRefused("the file is empty: there is no header and no row to import")

    ctx = _Context(desk, columns, region=region, match=match, duplicates=duplicates)
    report = ImportReport(dry_run=dry_run, format=fmt, rows=rows)
    seen = _Seen()
    with ExitStack() as stack:
        stack.callback(seen.close)
        report.indexed = _index_existing(desk, seen, region, write=not dry_run)
        reject = _rejected_writer(stack, rejected, header, fmt)
        counted = {
            "create": "created",
            "update": "updated",
            "unchanged": "unchanged",
            "merge": "merged",
        }

        def run(batch: list[dict[str, Any]]) -> None:
            if dry_run:
                outcome = _batch(ctx, seen, batch, None)
            else:
                outcome = desk.run(lambda work: _batch(ctx, seen, batch, work))
            seen.add(outcome.seen)
            for row, action, error in sorted(outcome.actions, key=lambda a: a[0]["record"]):
                if action != "reject":
                    setattr(report, counted[action], getattr(report, counted[action]) + 1)
                    continue
                report.rejected += 1
                found = [(c, r) for c, r in row["errors"]] or [("", error)]
                errors = [RowError(row["record"], row["line"], c, r) for c, r in found]
                report.errors.extend(errors)
                if on_error is not None:
                    for e in errors:
                        on_error(e)
                if reject is not None:
                    reject(row["_raw"], "; ".join((f"{c}: {r}" if c else r) for c, r in found))

        size = os.path.getsize(path)
        bar = stack.enter_context(_progress(size, progress))
        batch: list[dict[str, Any]] = []
        for record in records(path, fmt, max_field=max_field, max_record=max_record, progress=bar):
            if record.number == 0:
                continue
            batch.append(parse_row(ctx, record))
            if len(batch) >= batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    return report


__all__ = [
    "ALIASES",
    "FIELDS",
    "KEY_CHANNELS",
    "SETTINGS",
    "Column",
    "ImportReport",
    "RowError",
    "cell_text",
    "header_key",
    "import_clients",
    "map_columns",
    "normalise_email",
    "normalise_phone",
    "parse_row",
    "read_cell",
]
