"""jivocore_tags: named, coloured tags on clients and conversations.

Tag names live on the core's `Client.tags` and `Conversation.tags` set fields (filterable with
`HasAny` / `HasAll` through indexed side tables); this plugin keeps the tag records (name,
colour, created) and the commands that change tags everywhere at once: rename, recolour, delete.
Every command is one `desk.run` transaction, recorded as an event.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from jivocore import (
    Client,
    ConflictError,
    Conversation,
    EntityType,
    HasAny,
    HelpDesk,
    NotFoundError,
    Operator,
    PermissionDenied,
    State,
    Transaction,
    ValidationError,
    Work,
    hookimpl,
    new_id,
)

DEFAULT_COLOUR = "#9e9e9e"
BATCH = 500  # tagged entities rewritten per batch by rename and delete
_COLOUR = re.compile(r"#[0-9a-f]{6}")


@attrs.frozen(kw_only=True)
class Tag:
    id: str
    version: int = 0
    name: str
    colour: str = DEFAULT_COLOUR
    created: datetime


@attrs.frozen(kw_only=True)
class TagUse:
    """A tag with how many clients and conversations carry it."""

    tag: Tag
    clients: int
    conversations: int


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    register(EntityType(name="tags", cls=Tag, unique=(("name",),)))


# --- values -----------------------------------------------------------------------------------


def tag_name(name: str) -> str:
    """A tag's name as stored: trimmed, inner whitespace single; ValidationError if empty."""
    cleaned = " ".join(str(name).split())
    if not cleaned or len(cleaned) > 64:
        raise ValidationError(f"a tag's name has 1 to 64 characters, not {name!r}", field="name")
    return cleaned


def parse_colour(value: str) -> str:
    """A colour as ``#rrggbb`` (lower case); ValidationError otherwise."""
    cleaned = str(value).strip().lower()
    if not _COLOUR.fullmatch(cleaned):
        raise ValidationError(f"a colour is #rrggbb, not {value!r}", field="colour")
    return cleaned


# --- who may ----------------------------------------------------------------------------------


def _client_for(work: Work, operator_id: str, client_id: str) -> Client:
    operator = work.operator(operator_id)
    client = work.tx.get(Client, client_id)
    if not HelpDesk.sees_client(operator, client):
        raise PermissionDenied(
            f"{operator.name} ({operator.id}) may not see client {client_id}",
            operator_id=operator_id,
            client_id=client_id,
        )
    return client


def _conversation_for(work: Work, operator_id: str, conversation_id: str) -> Conversation:
    """The conversation, if the operator may see it: one waiting in the inbox (everyone's), one
    they took part in, or any for managers and operators who see all."""
    operator = work.operator(operator_id)
    conversation = work.tx.get(Conversation, conversation_id)
    if not (
        operator.is_manager
        or operator.sees_all
        or operator.id in conversation.involved
        or conversation.state is State.INBOX
    ):
        raise PermissionDenied(
            f"{operator.name} ({operator.id}) may not see conversation {conversation_id}",
            operator_id=operator_id,
            conversation_id=conversation_id,
        )
    return conversation


def _manager(work: Work, operator_id: str, what: str) -> Operator:
    operator = work.operator(operator_id)
    if not operator.is_manager:
        raise PermissionDenied(
            f"only managers and admins {what}; {operator.name} ({operator.id}) is an operator",
            operator_id=operator_id,
        )
    return operator


# --- tag records ------------------------------------------------------------------------------


def _find(tx: Transaction, name: str) -> Tag | None:
    return next(tx.select(Tag, {"name": name}, limit=1), None)


def _get(tx: Transaction, name: str) -> Tag:
    tag = _find(tx, name)
    if tag is None:
        raise NotFoundError(f"no tag named {name!r}", entity="Tag", name=name)
    return tag


def _ensure(work: Work, name: str, operator_id: str) -> Tag:
    tag = _find(work.tx, name)
    if tag is None:
        tag = work.tx.add(Tag(id=new_id(work.now), name=name, created=work.now))
        work.record("tag_created", actor_id=operator_id, tag=name, colour=tag.colour)
    return tag


def create_tag(desk: HelpDesk, name: str, operator_id: str, *, colour: str = DEFAULT_COLOUR) -> Tag:
    """A new tag; ConflictError if one has the name already."""
    name, chosen = tag_name(name), parse_colour(colour)

    def change(work: Work) -> Tag:
        work.operator(operator_id)
        if _find(work.tx, name) is not None:
            raise ConflictError(f"there is already a tag named {name!r}", name=name)
        tag = work.tx.add(Tag(id=new_id(work.now), name=name, colour=chosen, created=work.now))
        work.record("tag_created", actor_id=operator_id, tag=name, colour=chosen)
        return tag

    return desk.run(change)


def get_tag(desk: HelpDesk, name: str) -> Tag:
    with desk.reading() as tx:
        return _get(tx, tag_name(name))


def list_tags(desk: HelpDesk) -> list[TagUse]:
    """Every tag by name, with how many clients and conversations carry it."""
    with desk.reading() as tx:
        return [
            TagUse(
                tag=tag,
                clients=tx.count(Client, {"tags": HasAny({tag.name})}),
                conversations=tx.count(Conversation, {"tags": HasAny({tag.name})}),
            )
            for tag in tx.select(Tag, order=("name",))
        ]


def recolour_tag(desk: HelpDesk, name: str, new_colour: str, operator_id: str) -> Tag:
    name, chosen = tag_name(name), parse_colour(new_colour)

    def change(work: Work) -> Tag:
        _manager(work, operator_id, "recolour tags")
        tag = work.tx.update(attrs.evolve(_get(work.tx, name), colour=chosen))
        work.record("tag_recoloured", actor_id=operator_id, tag=name, colour=chosen)
        return tag

    return desk.run(change)


def _retag(work: Work, old: str, new: str | None) -> tuple[int, int]:
    """Replace the tag `old` by `new` (None: remove it) on every client and conversation that
    carries it, a batch at a time: a rewritten entity no longer matches, so each batch is the
    next. Returns (clients, conversations) rewritten."""
    counts = []
    classes: tuple[type[Any], ...] = (Client, Conversation)
    for cls in classes:
        done = 0
        while batch := list(work.tx.select(cls, {"tags": HasAny({old})}, limit=BATCH)):
            for entity in batch:
                tags = entity.tags - {old} | ({new} if new is not None else set())
                work.tx.update(attrs.evolve(entity, tags=frozenset(tags)))
            done += len(batch)
        counts.append(done)
    return counts[0], counts[1]


def rename_tag(desk: HelpDesk, name: str, new_name: str, operator_id: str) -> Tag:
    """Rename a tag on its record and on every client and conversation carrying it, in one
    transaction, streaming them in batches. ConflictError if `new_name` is another tag's."""
    name, new_name = tag_name(name), tag_name(new_name)

    def change(work: Work) -> Tag:
        _manager(work, operator_id, "rename tags")
        tag = _get(work.tx, name)
        if new_name == name:
            return tag
        if _find(work.tx, new_name) is not None:
            raise ConflictError(f"there is already a tag named {new_name!r}", name=new_name)
        tag = work.tx.update(attrs.evolve(tag, name=new_name))
        clients, conversations = _retag(work, name, new_name)
        work.record(
            "tag_renamed",
            actor_id=operator_id,
            tag=new_name,
            old=name,
            clients=clients,
            conversations=conversations,
        )
        return tag

    return desk.run(change)


def delete_tag(desk: HelpDesk, name: str, operator_id: str) -> None:
    """Delete a tag: its record, and the tag from every client and conversation."""
    name = tag_name(name)

    def change(work: Work) -> None:
        _manager(work, operator_id, "delete tags")
        tag = _find(work.tx, name)
        clients, conversations = _retag(work, name, None)
        if tag is not None:
            work.tx.delete(tag)
        work.record(
            "tag_deleted",
            actor_id=operator_id,
            tag=name,
            clients=clients,
            conversations=conversations,
        )

    desk.run(change)


# --- tagging ----------------------------------------------------------------------------------


def _set_tag(work: Work, entity: Any, name: str, on: bool) -> Any:
    tags = entity.tags | {name} if on else entity.tags - {name}
    return entity if tags == entity.tags else work.tx.update(attrs.evolve(entity, tags=tags))


def tag_client(desk: HelpDesk, client_id: str, name: str, operator_id: str) -> Client:
    """Add a tag to a client (a new name makes the tag)."""
    name = tag_name(name)

    def change(work: Work) -> Client:
        client = _client_for(work, operator_id, client_id)
        _ensure(work, name, operator_id)
        saved: Client = _set_tag(work, client, name, True)
        if saved is not client:
            work.record("client_tagged", actor_id=operator_id, client_id=client_id, tag=name)
        return saved

    return desk.run(change)


def untag_client(desk: HelpDesk, client_id: str, name: str, operator_id: str) -> Client:
    name = tag_name(name)

    def change(work: Work) -> Client:
        client = _client_for(work, operator_id, client_id)
        saved: Client = _set_tag(work, client, name, False)
        if saved is not client:
            work.record("client_untagged", actor_id=operator_id, client_id=client_id, tag=name)
        return saved

    return desk.run(change)


def tag_conversation(
    desk: HelpDesk, conversation_id: str, name: str, operator_id: str
) -> Conversation:
    """ "Add tag" from a conversation's info panel: the conversation and its client get it."""
    name = tag_name(name)

    def change(work: Work) -> Conversation:
        conversation = _conversation_for(work, operator_id, conversation_id)
        _ensure(work, name, operator_id)
        saved: Conversation = _set_tag(work, conversation, name, True)
        client = work.tx.get(Client, conversation.client_id)
        _set_tag(work, client, name, True)
        work.record("conversation_tagged", actor_id=operator_id, conversation=saved, tag=name)
        return saved

    return desk.run(change)


def untag_conversation(
    desk: HelpDesk, conversation_id: str, name: str, operator_id: str
) -> Conversation:
    """Remove a tag from a conversation (its client keeps theirs)."""
    name = tag_name(name)

    def change(work: Work) -> Conversation:
        conversation = _conversation_for(work, operator_id, conversation_id)
        saved: Conversation = _set_tag(work, conversation, name, False)
        if saved is not conversation:
            work.record("conversation_untagged", actor_id=operator_id, conversation=saved, tag=name)
        return saved

    return desk.run(change)


__all__ = [
    "DEFAULT_COLOUR",
    "Tag",
    "TagUse",
    "create_tag",
    "delete_tag",
    "get_tag",
    "list_tags",
    "parse_colour",
    "recolour_tag",
    "rename_tag",
    "tag_client",
    "tag_conversation",
    "tag_name",
    "untag_client",
    "untag_conversation",
]

# The tags column of client CSV imports (jivocore_csv's hooks): implemented in csv_columns.py,
# registered with this plugin.
from . import csv_columns as _csv_columns  # noqa: E402

jivocore_register_csv_columns = _csv_columns.jivocore_register_csv_columns
jivocore_prepare_csv_rows = _csv_columns.jivocore_prepare_csv_rows
