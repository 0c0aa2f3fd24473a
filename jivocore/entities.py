"""The help desk's entities: operators, clients, their identities, conversations, messages, events.

Every entity is frozen; change is `attrs.evolve`. `version` is the version that was read from
storage (0 for one never stored); storage writes are a compare-and-set on it.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

import attrs


def _utc(instance: Any, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is not None and value.utcoffset() != timedelta(0):
        raise ValueError(f"{attribute.name} must be a timezone-aware UTC datetime, not {value!r}")


class Role(enum.StrEnum):
    OPERATOR = "operator"
    MANAGER = "manager"
    ADMIN = "admin"


class Presence(enum.StrEnum):
    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class State(enum.StrEnum):
    INBOX = "inbox"
    ACTIVE = "active"
    CLOSED = "closed"


class Kind(enum.StrEnum):
    CHAT = "chat"
    CALL = "call"


class Outcome(enum.StrEnum):
    ANSWERED = "answered"
    MISSED = "missed"
    BLOCKED = "blocked"


class Author(enum.StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"
    SYSTEM = "system"


@attrs.frozen(kw_only=True)
class Operator:
    id: str
    version: int = 0
    name: str
    email: str = ""
    role: Role = Role.OPERATOR
    presence: Presence = Presence.OFFLINE
    capacity: int | None = None  # most active chats they own at once; None: no limit
    sees_all: bool = False  # an operator sees only their own clients and chats unless granted
    created: datetime = attrs.field(validator=_utc)

    @property
    def is_manager(self) -> bool:
        return self.role in (Role.MANAGER, Role.ADMIN)


@attrs.frozen(kw_only=True)
class Block:
    by: str  # the operator who blocked
    at: datetime = attrs.field(validator=_utc)
    until: datetime | None = attrs.field(default=None, validator=_utc)  # None: indefinitely

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until


@attrs.frozen(kw_only=True)
class Client:
    id: str
    version: int = 0
    name: str = ""
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    status: str = "new"
    responsible_id: str | None = None
    # Every operator who was responsible for the client or took part in their conversations:
    # who may see the client (with managers and operators who see all).
    involved: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()  # tag names; a tags plugin manages the tags themselves
    custom: dict[str, str] = attrs.field(factory=dict)
    block: Block | None = None
    created: datetime = attrs.field(validator=_utc)
    # Kept by CRM plugins in the same transaction as the deals and tasks they summarise, so
    # client filters answer "has open deals" / "has tasks due" from an index, without joins.
    open_deals: int = 0  # how many of the client's deals are open
    next_task_due: datetime | None = attrs.field(default=None, validator=_utc)  # earliest undone
    # When `responsible_set` last gave the client to `responsible_id` (a first accept, an edit):
    # "newly assigned" is then an indexed range, not a scan of the event log.
    responsible_at: datetime | None = attrs.field(default=None, validator=_utc)

    def blocked(self, now: datetime) -> bool:
        return self.block is not None and self.block.active(now)

    def given_to(self, operator_id: str | None, now: datetime) -> Client:
        """The client with `operator_id` responsible for it from `now` (None: nobody), who is
        then involved with it, as a responsible operator always is. Every way a client gets a
        responsible operator (a first accept, an edit, an import) goes through here, so
        `responsible_at` always says since when."""
        if operator_id is None:
            return attrs.evolve(self, responsible_id=None, responsible_at=None)
        return attrs.evolve(
            self,
            responsible_id=operator_id,
            responsible_at=now,
            involved=self.involved | {operator_id},
        )


@attrs.frozen(kw_only=True)
class ClientIdentity:
    """Who the client is on one channel: (channel, external id) -> client."""

    id: str
    version: int = 0
    channel: str
    external_id: str
    client_id: str
    created: datetime = attrs.field(validator=_utc)


@attrs.frozen(kw_only=True)
class Ignore:
    operator_id: str
    until: datetime = attrs.field(validator=_utc)


@attrs.frozen(kw_only=True)
class Conversation:
    id: str
    version: int = 0
    channel: str
    kind: Kind = Kind.CHAT
    client_id: str
    state: State = State.INBOX
    owner_id: str | None = None
    participants: frozenset[str] = frozenset()
    involved: frozenset[str] = frozenset()  # every operator who ever took part: who may see it
    tags: frozenset[str] = frozenset()
    ignores: tuple[Ignore, ...] = ()
    created: datetime = attrs.field(validator=_utc)
    accepted: datetime | None = attrs.field(default=None, validator=_utc)
    closed: datetime | None = attrs.field(default=None, validator=_utc)
    outcome: Outcome | None = None
    episode: int = 1  # a join from the archive starts a new episode
    message_count: int = 0
    last_message_at: datetime | None = attrs.field(default=None, validator=_utc)

    @property
    def open(self) -> bool:
        return self.state is not State.CLOSED

    def ignored_by(self, operator_id: str, now: datetime) -> bool:
        return any(i.operator_id == operator_id and now < i.until for i in self.ignores)


@attrs.frozen(kw_only=True)
class Message:
    id: str
    version: int = 0
    conversation_id: str
    seq: int  # 1..n per conversation, without gaps
    channel: str
    author: Author
    author_id: str | None = None  # operator id for operators, client id for clients
    text: str
    at: datetime = attrs.field(validator=_utc)
    episode: int = 1
    external_id: str | None = None  # the channel's id for it: a redelivery is stored once


@attrs.frozen(kw_only=True)
class Event:
    """One thing that happened; the log is append-only and is the source of statistics."""

    id: str
    version: int = 0
    type: str  # past tense: "received", "accepted", ...
    at: datetime = attrs.field(validator=_utc)
    actor_id: str | None = None
    conversation_id: str | None = None
    client_id: str | None = None
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Delivery:
    """An operator's message waiting to go out through its channel (the transactional outbox)."""

    id: str
    version: int = 0
    message_id: str
    conversation_id: str
    channel: str
    status: str = "pending"  # pending -> sent | dead
    attempts: int = 0
    due: datetime = attrs.field(validator=_utc)
    error: str | None = None
