"""A CRM extension: notes operators keep on a client. An entity type, a command that runs as the
built-in ones do (one transaction, an event, notifications), a query, and a CLI command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime

import attrs
import click

from jivocore import (
    Client,
    EntityType,
    HelpDesk,
    Operator,
    PermissionDenied,
    ValidationError,
    Work,
    hookimpl,
    new_id,
)


@attrs.frozen(kw_only=True)
class Note:
    id: str
    version: int = 0
    client_id: str
    author_id: str
    text: str
    at: datetime


NOTES = EntityType(name="notes", cls=Note, indexes=(("client_id", "at"),), searchable=("text",))


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    register(NOTES)


def add_note(desk: HelpDesk, client_id: str, operator_id: str, text: str) -> Note:
    """The operator notes something about a client they may see."""
    if not text.strip():
        raise ValidationError("a note needs some text")

    def change(work: Work) -> Note:
        operator = work.tx.get(Operator, operator_id)
        client = work.tx.get(Client, client_id)
        if not desk.sees_client(operator, client):
            raise PermissionDenied(f"{operator.name} may not see client {client_id}")
        note = work.tx.add(
            Note(id=new_id(work.now), client_id=client.id, author_id=operator.id, text=text,
                 at=work.now)
        )  # fmt: skip
        work.record("note_added", actor_id=operator.id, client_id=client.id, note_id=note.id)
        return note

    return desk.run(change)


def notes(desk: HelpDesk, client_id: str) -> list[Note]:
    """The client's notes, oldest first."""
    with desk.reading() as tx:
        return list(tx.select(Note, {"client_id": client_id}, order=("at", "id")))


@click.command("notes")
@click.argument("client_id")
@click.option("--database", default="helpdesk.db", show_default=True)
def notes_command(client_id: str, database: str) -> None:
    """Print a client's notes."""
    # This module, whether or not it is installed (the installed copy is then not loaded twice).
    with HelpDesk.open(database, plugins=[sys.modules[__name__]]) as desk:
        for note in notes(desk, client_id):
            click.echo(f"{note.at:%Y-%m-%d %H:%M}  {note.text}")


@hookimpl
def jivocore_register_commands(register: Callable[[click.Command], None]) -> None:
    register(notes_command)
