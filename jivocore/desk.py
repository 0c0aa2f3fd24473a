"""HelpDesk: the engine and composition root. Every command is one transaction.

A command runs: load -> pure transition -> veto hooks -> compare-and-set save -> events (and
outbox rows) in the same transaction -> commit -> notify plugins, each isolated.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs
import cattrs
import pluggy

from . import archive as archive_queries
from . import outbox, scheduler
from .channels import Channel
from .clock import Clock, SystemClock
from .convert import make_converter
from .entities import (
    Author,
    Block,
    Client,
    ClientIdentity,
    Conversation,
    Delivery,
    Event,
    Kind,
    Message,
    Operator,
    Outcome,
    Presence,
    Role,
    State,
)
from .errors import (
    ClientBlocked,
    ConfigurationError,
    ConflictError,
    InvalidTransition,
    PermissionDenied,
    PluginError,
    ValidationError,
    Vetoed,
)
from .ids import new_id
from .lifecycle import OPEN, Act, rule_for, start, transition
from .plugins import collect, implementations, make_plugin_manager
from .statistics import ConversationStatistics, Report
from .statistics import statistics as conversation_statistics
from .storage import (
    RELEVANCE_WINDOW,
    EntityType,
    HasAny,
    In,
    Index,
    Page,
    Range,
    Storage,
    Transaction,
    Unique,
    Where,
)

log = logging.getLogger("jivocore")
T = TypeVar("T")

CORE_ENTITY_TYPES: tuple[EntityType, ...] = (
    EntityType(name="operators", cls=Operator, indexes=(("presence",),)),
    EntityType(
        name="clients",
        cls=Client,
        # The listings' orders (created, name) with `id` to break ties, so a page walks an index
        # and stops; the common equalities before them, so those walk one too.
        indexes=(
            ("created", "id"),
            ("name", "id"),
            ("responsible_id", "created", "id"),
            ("responsible_id", "name", "id"),
            ("status", "created", "id"),
            ("open_deals",),
            # The clients with open deals, as a set: "has open deals" combined with a tag is
            # tested by a lookup here rather than by reading each tag holder's row.
            Index(("id",), where={"open_deals": Range(gt=0)}),
            ("next_task_due",),
            ("responsible_id", "responsible_at", "id"),
        ),
        members=("involved", "tags"),
        searchable=("name", "emails", "phones"),
    ),
    EntityType(
        name="client_identities",
        cls=ClientIdentity,
        unique=(("channel", "external_id"),),
        indexes=(("client_id",),),
    ),
    EntityType(
        name="conversations",
        cls=Conversation,
        indexes=(("state", "created"), ("client_id", "channel", "state"), ("state", "closed")),
        # The database itself keeps a client to one open conversation per channel.
        unique=(Unique(("client_id", "channel"), where={"state": In(OPEN)}),),
        members=("participants", "involved", "tags"),
    ),
    EntityType(
        name="messages",
        cls=Message,
        unique=(("conversation_id", "seq"), ("channel", "external_id")),
    ),
    EntityType(name="events", cls=Event, indexes=(("conversation_id",), ("type", "at"))),
    EntityType(
        name="deliveries",
        cls=Delivery,
        indexes=(("status", "due"), ("message_id",), ("conversation_id", "status")),
    ),
    EntityType(
        name="timers", cls=scheduler.Timer, unique=(("kind", "key"),), indexes=(("run_at",),)
    ),
)

DEFAULT_SETTINGS: Mapping[str, Any] = {
    "database": ":memory:",
    "ignore_cooldown": 60.0,  # seconds an ignored conversation stays hidden from that operator
    "block_hours": 24.0,  # how long a block lasts unless the operator says otherwise
    "max_message_chars": 20_000,
    "delivery_attempts": 8,  # then a delivery is dead
    "delivery_backoff": 5.0,  # seconds before the first retry; doubles with each attempt
    "delivery_lease": 60.0,  # seconds a worker has to send a delivery it claimed
    "timer_lease": 60.0,  # seconds a worker has to run a timer it claimed
    "timer_backoff": 5.0,  # seconds before a failed timer runs again; doubles per attempt
    "timer_backoff_max": 3600.0,  # the longest wait between two attempts
}


# The commands that can bring an operator to a client: they update the client's `involved`.
_BRING_OPERATORS = frozenset({"accept", "transfer", "invite", "join"})


class _Default(enum.Enum):
    """The sentinel for "the desk's setting applies" (as sqlite-utils' DEFAULT)."""

    DEFAULT = "default"


DEFAULT = _Default.DEFAULT
_ATTEMPTS = 5


E = TypeVar("E", bound=enum.Enum)


def _check_no_nul(value: str | None, what: str) -> None:
    """NUL characters are refused at the edge: PostgreSQL cannot store them, and nothing a
    person typed contains one."""
    if value is not None and "\x00" in value:
        raise ValidationError(f"{what} contains a NUL character (0x00)", field=what)


def _choice(cls: type[E], value: object, what: str) -> E:
    """`value` as a member of the enum `cls`, or a ValidationError listing the choices."""
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)
        raise ValidationError(
            f"{value!r} is not a {what}; choose one of: {choices}", field=what, value=value
        ) from None


class Work:
    """What one command has in hand: its write transaction (`tx`), its moment (`now`), and the
    events it appends with `record`, which plugins hear about once it commits."""

    def __init__(self, desk: HelpDesk, tx: Transaction, now: datetime) -> None:
        self.desk = desk
        self.tx = tx
        self.now = now
        self.events: list[Event] = []

    def record(
        self,
        type: str,
        *,
        actor_id: str | None = None,
        conversation: Conversation | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> Event:
        """Append an event (past tense, e.g. "deal_created") to the log, in this transaction."""
        event = Event(
            id=new_id(self.now),
            type=type,
            at=self.now,
            actor_id=actor_id,
            conversation_id=conversation.id if conversation else None,
            client_id=client_id or (conversation.client_id if conversation else None),
            data=data,
        )
        stored = self.tx.add(event)
        self.events.append(stored)
        return stored

    def name_of(self, operator_id: str) -> str:
        operator = self.tx.find(Operator, operator_id)
        return f"{operator.name} ({operator_id})" if operator else operator_id

    def operator(self, operator_id: str) -> Operator:
        """The operator, or NotFoundError."""
        return self.tx.get(Operator, operator_id)


class HelpDesk:
    """A help desk composed from plugins.

    :param plugins: plugin modules or objects to register (built-in ones included, explicitly).
    :param clock: where time comes from; the system clock by default.
    :param settings: overrides of `DEFAULT_SETTINGS`; ``database`` names the database.
    :param entry_points: also load the plugins installed under the ``jivocore`` entry points.
    :param block: plugin names never to register.
    """

    def __init__(
        self,
        plugins: Iterable[object] = (),
        *,
        clock: Clock | None = None,
        settings: Mapping[str, Any] | None = None,
        entry_points: bool = False,
        block: Iterable[str] = (),
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.settings: Mapping[str, Any] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.pm: pluggy.PluginManager = make_plugin_manager(
            plugins, entry_points=entry_points, block=block
        )
        self.converter: cattrs.Converter = make_converter()
        for impl in implementations(self.pm, "jivocore_prepare_converter"):
            impl(converter=self.converter)
        self.entity_types: Mapping[str, EntityType] = self._collect_entity_types()
        self.channels: Mapping[str, Channel] = self._collect_channels()
        self._vetoes = implementations(self.pm, "jivocore_veto_transition")
        self._listeners = implementations(self.pm, "jivocore_events_committed")
        self.timer_handlers = scheduler.handlers(self)
        self.storage: Storage = self._get_storage()
        self.storage.setup(tuple(self.entity_types.values()), self.converter)

    @classmethod
    def open(cls, database: str = ":memory:", **kwargs: Any) -> HelpDesk:
        """A desk on `database` (a SQLite file by default) with the installed plugins."""
        settings = {**kwargs.pop("settings", {}), "database": database}
        return cls(settings=settings, entry_points=True, **kwargs)

    def shutdown(self) -> None:
        """Release the storage's connections. (`close` is the lifecycle command.)"""
        self.storage.close()

    def __enter__(self) -> HelpDesk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- composition -------------------------------------------------------------------------

    def _collect_entity_types(self) -> dict[str, EntityType]:
        def keys(etype: EntityType) -> tuple[str, str]:
            # A name is a table, and a class is stored in one table only.
            return etype.name, f"class {etype.cls.__module__}.{etype.cls.__qualname__}"

        registered = collect(
            self.pm,
            "jivocore_register_entity_types",
            what="an entity type (jivocore.EntityType)",
            valid=lambda t: isinstance(t, EntityType),
            keys=keys,
            taken=[k for t in CORE_ENTITY_TYPES for k in keys(t)],
        )
        return {**{t.name: t for t in CORE_ENTITY_TYPES}, **registered}

    def _collect_channels(self) -> dict[str, Channel]:
        return collect(
            self.pm,
            "jivocore_register_channels",
            what="a channel (an object with a `name` and a `send(outbound)` method)",
            valid=lambda c: (
                isinstance(c, Channel)
                and not isinstance(c, type)
                and isinstance(c.name, str)
                and bool(c.name)
            ),
            keys=lambda c: (str(c.name),),
        )

    def _get_storage(self) -> Storage:
        for impl in implementations(self.pm, "jivocore_get_storage"):
            storage = impl(settings=self.settings)
            if storage is None:
                continue
            if not all(
                callable(getattr(storage, m, None)) for m in ("setup", "transaction", "close")
            ):
                raise PluginError(
                    f"plugin {impl.plugin} answered jivocore_get_storage with {storage!r}, "
                    "which is not a storage backend (setup, transaction, close)",
                    plugin=impl.plugin,
                )
            self.storage_plugin = impl.plugin
            return storage  # type: ignore[no-any-return]
        raise ConfigurationError(
            f"no storage plugin can open {self.settings['database']!r}; register one, e.g. "
            "HelpDesk(plugins=[jivocore_sqlite]) or HelpDesk.open(path) for the installed plugins"
        )

    # --- the command pipeline ----------------------------------------------------------------

    def run(self, command: Callable[[Work], T], *, retry: bool = True) -> T:
        """Run one command: `command(work)` in a write transaction, then, once committed, the
        notifications of the events it recorded. Every built-in command runs this way, and so
        do plugins' own commands (create a deal, add a tag, ...).

        A command that lost a compare-and-set race (ConflictError) runs again on fresh data, so
        its caller gets the answer the winner's change implies (e.g. "already accepted by Ann")
        rather than a conflict. `retry=False` for writes of entities the caller loaded."""
        attempts = _ATTEMPTS if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                with self.storage.transaction() as tx:
                    work = Work(self, tx, self.clock.now())
                    result = command(work)
            except ConflictError:
                if attempt == attempts:
                    raise
                continue
            self._notify(work.events)
            return result
        raise AssertionError("unreachable")

    def _notify(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for listener in self._listeners:
            try:
                listener(desk=self, events=events)
            except Exception:
                log.exception(
                    "plugin %s failed in jivocore_events_committed; the command was committed "
                    "and the other plugins were notified",
                    listener.plugin,
                )

    def _veto(
        self, command: str, before: Conversation | None, after: Conversation, actor: Operator | None
    ) -> None:
        for veto in self._vetoes:
            reason = veto(desk=self, command=command, before=before, after=after, actor=actor)
            if reason is not None:
                raise Vetoed(
                    f"plugin {veto.plugin} refused to {command}: {reason}",
                    plugin=veto.plugin,
                    command=command,
                    reason=reason,
                )

    def _act(
        self,
        work: Work,
        conversation: Conversation,
        command: str,
        actor: Operator | None,
        colleague: Operator | None = None,
        *,
        message_id: str | None = None,
    ) -> Conversation:
        """Apply one lifecycle command to a loaded conversation, save it (compare-and-set) and
        record its event; `message_id` names the message a reply is about to add."""
        load = 0
        if command == "accept" and actor is not None and actor.capacity is not None:
            load = work.tx.count(Conversation, {"state": State.ACTIVE, "owner_id": actor.id})
        blocked, other_open = False, None
        if command == "join" and conversation.state is State.CLOSED:
            # Reopening: the client must be allowed to write, and have no other open one.
            blocked = work.tx.get(Client, conversation.client_id).blocked(work.now)
            other = next(
                work.tx.select(
                    Conversation,
                    {
                        "client_id": conversation.client_id,
                        "channel": conversation.channel,
                        "state": In(OPEN),
                    },
                    limit=1,
                ),
                None,
            )
            other_open = other.id if other else None
        act = Act(
            command=command,
            now=work.now,
            actor=actor,
            colleague=colleague,
            actor_load=load,
            cooldown=timedelta(seconds=float(self.settings["ignore_cooldown"])),
            client_blocked=blocked,
            other_open=other_open,
            name_of=work.name_of,
        )
        after = transition(conversation, act)
        self._veto(command, conversation, after, actor)
        saved = work.tx.update(after)
        event = rule_for(command, conversation.state).event
        data: dict[str, Any] = {"state": saved.state.value, "episode": saved.episode}
        if colleague is not None:
            data["colleague_id"] = colleague.id
        if command == "transfer":
            data["from_id"] = conversation.owner_id
        if message_id is not None:
            data.update(message_id=message_id, seq=saved.message_count)
        work.record(event, actor_id=actor.id if actor else None, conversation=saved, **data)
        return saved

    def _conversation_command(
        self, conversation_id: str, command: str, operator_id: str, colleague_id: str | None = None
    ) -> Conversation:
        def change(work: Work) -> Conversation:
            conversation = work.tx.get(Conversation, conversation_id)
            actor = work.operator(operator_id)
            colleague = work.operator(colleague_id) if colleague_id is not None else None
            saved = self._act(work, conversation, command, actor, colleague)
            if command not in _BRING_OPERATORS:
                return saved
            client = work.tx.get(Client, saved.client_id)
            edited = attrs.evolve(client, involved=client.involved | saved.involved)
            if command == "accept" and client.responsible_id is None:
                edited = edited.given_to(actor.id, work.now)
                work.record(
                    "responsible_set",
                    actor_id=actor.id,
                    client_id=client.id,
                    responsible_id=actor.id,
                )
            if edited != client:
                work.tx.update(edited)
            return saved

        return self.run(change)

    # --- commands: the conversation lifecycle ------------------------------------------------

    def receive(
        self,
        channel: str,
        external_client_id: str,
        text: str,
        *,
        message_id: str | None = None,
        name: str | None = None,
        kind: Kind | str = Kind.CHAT,
    ) -> Message:
        """A client's message arrives through `channel`. The client, their identity on the
        channel and an inbox conversation are made as needed. With `message_id` (the channel's
        id for the message) a redelivery returns the stored message and stores nothing."""
        if channel not in self.channels:
            known = ", ".join(sorted(self.channels)) or "none"
            raise ValidationError(
                f"no channel {channel!r} is installed (installed: {known})", channel=channel
            )
        if not external_client_id:
            raise ValidationError("a message needs the client's id on the channel")
        _check_no_nul(external_client_id, "the client's id on the channel")
        _check_no_nul(message_id, "the message id")
        _check_no_nul(name, "the client's name")
        self._check_text(text)
        kind = _choice(Kind, kind, "kind")

        def change(work: Work) -> Message:
            tx = work.tx
            if message_id is not None:
                stored = next(
                    tx.select(Message, {"channel": channel, "external_id": message_id}), None
                )
                if stored is not None:
                    return stored
            identity = next(
                tx.select(ClientIdentity, {"channel": channel, "external_id": external_client_id}),
                None,
            )
            new_client = identity is None
            if identity is None:
                client = tx.add(Client(id=new_id(work.now), name=name or "", created=work.now))
                identity = tx.add(
                    ClientIdentity(
                        id=new_id(work.now),
                        channel=channel,
                        external_id=external_client_id,
                        client_id=client.id,
                        created=work.now,
                    )
                )
                work.record("client_added", client_id=client.id, channel=channel)
            else:
                client = tx.get(Client, identity.client_id)
                if client.blocked(work.now):
                    until = client.block.until if client.block else None
                    raise ClientBlocked(
                        f"client {client.name or client.id} is blocked"
                        + (f" until {until.isoformat()}" if until else ""),
                        client_id=client.id,
                        until=until,
                    )
            before = (
                None  # a client made just now has no conversation yet
                if new_client
                else next(
                    tx.select(
                        Conversation,
                        {"client_id": client.id, "channel": channel, "state": In(OPEN)},
                        limit=1,
                    ),
                    None,
                )
            )
            act = Act(command="receive", now=work.now, name_of=work.name_of)
            if before is None:
                opened = start(
                    id=new_id(work.now),
                    channel=channel,
                    kind=kind,
                    client_id=client.id,
                    now=work.now,
                )
                after = transition(opened, act)
                self._veto("receive", None, after, None)
                conversation = tx.add(after)
            else:
                after = transition(before, act)
                self._veto("receive", before, after, None)
                conversation = tx.update(after)
            message = tx.add(
                Message(
                    id=new_id(work.now),
                    conversation_id=conversation.id,
                    seq=conversation.message_count,
                    channel=channel,
                    author=Author.CLIENT,
                    author_id=client.id,
                    text=text,
                    at=work.now,
                    episode=conversation.episode,
                    external_id=message_id,
                )
            )
            work.record(
                "received",
                conversation=conversation,
                message_id=message.id,
                seq=message.seq,
                opened=before is None,
                state=conversation.state.value,
            )
            return message

        return self.run(change)

    def ignore(self, conversation_id: str, operator_id: str) -> Conversation:
        """Hide an inbox conversation from the operator for the cooldown; it then reappears."""
        return self._conversation_command(conversation_id, "ignore", operator_id)

    def accept(self, conversation_id: str, operator_id: str) -> Conversation:
        """The operator takes an inbox conversation; it moves to their Chats."""
        return self._conversation_command(conversation_id, "accept", operator_id)

    def reply(self, conversation_id: str, operator_id: str, text: str) -> Message:
        """An operator's message to the client, queued for delivery through the channel."""
        self._check_text(text)

        def change(work: Work) -> Message:
            message_id = new_id(work.now)
            conversation = self._act(
                work,
                work.tx.get(Conversation, conversation_id),
                "reply",
                work.operator(operator_id),
                message_id=message_id,
            )
            message = work.tx.add(
                Message(
                    id=message_id,
                    conversation_id=conversation.id,
                    seq=conversation.message_count,
                    channel=conversation.channel,
                    author=Author.OPERATOR,
                    author_id=operator_id,
                    text=text,
                    at=work.now,
                    episode=conversation.episode,
                )
            )
            work.tx.add(
                Delivery(
                    id=new_id(work.now),
                    message_id=message.id,
                    conversation_id=conversation.id,
                    channel=conversation.channel,
                    due=work.now,
                )
            )
            return message

        return self.run(change)

    def transfer(self, conversation_id: str, operator_id: str, to_operator_id: str) -> Conversation:
        """Hand the conversation to an online colleague, who becomes its owner."""
        return self._conversation_command(conversation_id, "transfer", operator_id, to_operator_id)

    def invite(self, conversation_id: str, operator_id: str, colleague_id: str) -> Conversation:
        """Bring an online colleague into the conversation."""
        return self._conversation_command(conversation_id, "invite", operator_id, colleague_id)

    def leave(self, conversation_id: str, operator_id: str) -> Conversation:
        """An invited operator leaves the conversation."""
        return self._conversation_command(conversation_id, "leave", operator_id)

    def close(self, conversation_id: str, operator_id: str) -> Conversation:
        """End the chat: it moves to All with the outcome answered."""
        return self._conversation_command(conversation_id, "close", operator_id)

    def join(self, conversation_id: str, operator_id: str) -> Conversation:
        """Join a conversation: from All it reopens with the operator as owner (a new
        episode); an active one gains the operator as a participant."""
        return self._conversation_command(conversation_id, "join", operator_id)

    def client_left(self, conversation_id: str) -> Conversation:
        """The client left (or timed out) before anyone accepted: outcome missed."""

        def change(work: Work) -> Conversation:
            return self._act(work, work.tx.get(Conversation, conversation_id), "client_left", None)

        return self.run(change)

    def block(
        self, client_id: str, operator_id: str, *, duration: timedelta | _Default | None = DEFAULT
    ) -> Client:
        """Block a client: their open conversations close (outcome blocked) and new messages
        are refused until `duration` passes (``block_hours`` by default) or they are unblocked.
        ``duration=None`` blocks indefinitely."""
        if duration is DEFAULT:
            duration = timedelta(hours=float(self.settings["block_hours"]))
        if duration is not None and (
            not isinstance(duration, timedelta) or duration <= timedelta(0)
        ):
            raise ValidationError(f"a block lasts a positive timedelta or None, not {duration!r}")

        def change(work: Work) -> Client:
            actor = work.operator(operator_id)
            client = work.tx.get(Client, client_id)
            until = work.now + duration if isinstance(duration, timedelta) else None
            client = work.tx.update(
                attrs.evolve(client, block=Block(by=actor.id, at=work.now, until=until))
            )
            for conversation in list(
                work.tx.select(Conversation, {"client_id": client_id, "state": In(OPEN)})
            ):
                self._act(work, conversation, "block", actor)
            work.record(
                "client_blocked",
                actor_id=actor.id,
                client_id=client.id,
                until=until.isoformat() if until else None,
            )
            return client

        return self.run(change)

    def unblock(self, client_id: str, operator_id: str) -> Client:
        """Lift a client's block: their messages are accepted again."""

        def change(work: Work) -> Client:
            actor = work.operator(operator_id)
            client = work.tx.get(Client, client_id)
            if not client.blocked(work.now):
                raise InvalidTransition(
                    f"client {client.name or client.id} is not blocked", client_id=client.id
                )
            client = work.tx.update(attrs.evolve(client, block=None))
            work.record("client_unblocked", actor_id=actor.id, client_id=client.id)
            return client

        return self.run(change)

    def _check_text(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("a message needs some text")
        _check_no_nul(text, "the message")
        limit = int(self.settings["max_message_chars"])
        if len(text) > limit:
            raise ValidationError(
                f"a message holds at most {limit} characters; this one has {len(text)}",
                limit=limit,
            )

    # --- operators and clients ---------------------------------------------------------------

    def add_operator(
        self,
        name: str,
        *,
        email: str = "",
        role: Role | str = Role.OPERATOR,
        presence: Presence | str = Presence.OFFLINE,
        capacity: int | None = None,
        sees_all: bool = False,
    ) -> Operator:
        if not name.strip():
            raise ValidationError("an operator needs a name")
        if capacity is not None and capacity < 0:
            raise ValidationError(f"capacity is a number of chats, not {capacity}")

        def change(work: Work) -> Operator:
            operator = work.tx.add(
                Operator(
                    id=new_id(work.now),
                    name=name,
                    email=email,
                    role=_choice(Role, role, "role"),
                    presence=_choice(Presence, presence, "presence"),
                    capacity=capacity,
                    sees_all=sees_all,
                    created=work.now,
                )
            )
            work.record("operator_added", actor_id=operator.id)
            return operator

        return self.run(change)

    def update_operator(self, operator: Operator) -> Operator:
        """Save an edited operator (from `attrs.evolve`); ConflictError if it changed since."""

        def change(work: Work) -> Operator:
            saved = work.tx.update(operator)
            work.record("operator_updated", actor_id=saved.id)
            return saved

        return self.run(change, retry=False)

    def set_presence(self, operator_id: str, presence: Presence | str) -> Operator:
        presence = _choice(Presence, presence, "presence")

        def change(work: Work) -> Operator:
            operator = work.operator(operator_id)
            if operator.presence is presence:
                return operator
            saved = work.tx.update(attrs.evolve(operator, presence=presence))
            work.record("presence_changed", actor_id=saved.id, presence=presence.value)
            return saved

        return self.run(change)

    def add_client(
        self,
        name: str = "",
        *,
        emails: Sequence[str] = (),
        phones: Sequence[str] = (),
        status: str = "new",
        custom: Mapping[str, str] | None = None,
        responsible_id: str | None = None,
    ) -> Client:
        def change(work: Work) -> Client:
            if responsible_id is not None:
                work.operator(responsible_id)
            client = Client(
                id=new_id(work.now),
                name=name,
                emails=tuple(emails),
                phones=tuple(phones),
                status=status,
                custom=dict(custom or {}),
                created=work.now,
            )
            client = work.tx.add(client.given_to(responsible_id or None, work.now))
            work.record("client_added", client_id=client.id)
            if responsible_id:
                work.record("responsible_set", client_id=client.id, responsible_id=responsible_id)
            return client

        return self.run(change)

    def update_client(self, client: Client) -> Client:
        """Save an edited client (from `attrs.evolve`); ConflictError if it changed since."""

        def change(work: Work) -> Client:
            edited = client
            if client.responsible_id is not None:
                work.operator(client.responsible_id)
                edited = attrs.evolve(client, involved=client.involved | {client.responsible_id})
            stored = work.tx.get(Client, client.id)
            if client.responsible_id != stored.responsible_id:  # since when: for `today`
                edited = edited.given_to(client.responsible_id, work.now)
                if client.responsible_id is not None:
                    work.record(
                        "responsible_set", client_id=client.id, responsible_id=client.responsible_id
                    )
            saved = work.tx.update(edited)
            work.record("client_updated", client_id=saved.id)
            return saved

        return self.run(change, retry=False)

    # --- queries -----------------------------------------------------------------------------

    def reading(self) -> AbstractContextManager[Transaction]:
        """A consistent read-only view of the desk, for queries the methods below don't cover."""
        return self.storage.transaction(write=False)

    def get(self, cls: type[T], id: str) -> T:
        """Any stored entity by id, or NotFoundError."""
        with self.reading() as tx:
            return tx.get(cls, id)

    def conversation(self, conversation_id: str) -> Conversation:
        return self.get(Conversation, conversation_id)

    def operator(self, operator_id: str) -> Operator:
        return self.get(Operator, operator_id)

    def client(self, client_id: str, *, operator_id: str | None = None) -> Client:
        """The client; with `operator_id`, PermissionDenied unless that operator may see them."""
        with self.reading() as tx:
            client = tx.get(Client, client_id)
            if operator_id is not None:
                operator = tx.get(Operator, operator_id)
                if not self.sees_client(operator, client):
                    raise PermissionDenied(
                        f"{operator.name} ({operator.id}) may not see client {client_id}",
                        operator_id=operator_id,
                        client_id=client_id,
                    )
            return client

    @staticmethod
    def sees_client(operator: Operator, client: Client) -> bool:
        """An operator sees the clients they are or were responsible for or talked with;
        managers, admins and operators granted `sees_all` see every client."""
        return operator.is_manager or operator.sees_all or operator.id in client.involved

    def operators(self) -> list[Operator]:
        with self.reading() as tx:
            return list(tx.select(Operator, order=("name",)))

    def clients(
        self,
        where: Where | None = None,
        *,
        operator_id: str | None = None,
        order: Sequence[str] = ("-created",),
        after: str | None = None,
        limit: int = 50,
    ) -> Page[Client]:
        """A page of clients; with `operator_id`, only those the operator may see."""
        query = dict(where or {})
        with self.reading() as tx:
            if operator_id is not None:
                operator = tx.get(Operator, operator_id)
                if not (operator.is_manager or operator.sees_all):
                    if "involved" in query:
                        raise ValidationError(
                            "filter clients by responsible_id; `involved` is the visibility rule"
                        )
                    query["involved"] = HasAny({operator_id})
            return tx.page(Client, query, order=order, after=after, limit=limit)

    def inbox(self, operator_id: str, *, limit: int = 50) -> list[Conversation]:
        """Conversations waiting to be accepted, oldest first, less those the operator ignored
        and whose cooldown has not passed yet at the clock's current time."""
        now = self.clock.now()
        with self.reading() as tx:
            tx.get(Operator, operator_id)
            shown: list[Conversation] = []
            for conversation in tx.select(Conversation, {"state": State.INBOX}, order=("created",)):
                if not conversation.ignored_by(operator_id, now):
                    shown.append(conversation)
                    if len(shown) == limit:
                        break
            return shown

    def chats(self, operator_id: str) -> list[Conversation]:
        """The operator's open conversations, most recent message first."""
        with self.reading() as tx:
            tx.get(Operator, operator_id)
            return list(
                tx.select(
                    Conversation,
                    {"state": State.ACTIVE, "participants": HasAny({operator_id})},
                    order=("-last_message_at",),
                )
            )

    def archive(
        self,
        operator_id: str | None = None,
        where: Where | None = None,
        *,
        after: str | None = None,
        limit: int = 50,
        text: str | None = None,
        by: str = "date",
        since: datetime | None = None,
        until: datetime | None = None,
        operator: str | None = None,
        channel: str | Iterable[str] | None = None,
        kind: Kind | str | Iterable[Kind | str] | None = None,
        outcome: Outcome | str | Iterable[Outcome | str] | None = None,
        tags: Iterable[str] = (),
        client_id: str | None = None,
        blocked: bool = False,
        window: int = RELEVANCE_WINDOW,
    ) -> Page[Conversation]:
        """Closed conversations, newest closed first. With `operator_id`, only those the operator
        may see: the ones they took part in, or all for managers and operators who see all.

        `text` searches the transcripts (every word; docs/archive.md gives the rules) of the
        conversations indexed so far (see `index_archive`), newest first or, with
        ``by="relevance"``, best first among the newest `window` matches. Filters: closed in
        ``[since, until)``, `operator` took part, `channel`, `kind`, `outcome` (a value or
        several), every one of `tags`, `client_id`, and `blocked` (the client is blocked now).
        Pass the page's `next` as `after` for the following page, with the same arguments."""
        with self.reading() as tx:
            viewer = None
            if operator_id is not None:
                seer = tx.get(Operator, operator_id)
                if not (seer.is_manager or seer.sees_all):
                    viewer = operator_id
            query = archive_queries.archive_filter(
                tx,
                now=self.clock.now(),
                where=where,
                viewer=viewer,
                since=since,
                until=until,
                operator=operator,
                channel=channel,
                kind=kind,
                outcome=outcome,
                tags=tags,
                client_id=client_id,
                blocked=blocked,
            )
            if text is None:
                if by != "date":
                    raise ValidationError("only a text search can be ordered by relevance")
                if query is None:
                    return Page((), None)
                return tx.page(Conversation, query, order=("-closed",), after=after, limit=limit)
            archive_queries.documents(tx)  # ConfigurationError without search documents
            if query is None:
                return Page((), None)
            return archive_queries.search(
                tx,
                text,
                query,
                since=since,
                until=until,
                by=by,
                after=after,
                limit=limit,
                window=window,
            )

    def messages(
        self, conversation_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Message]:
        """The conversation's messages in order, after sequence number `after_seq`."""
        with self.reading() as tx:
            tx.get(Conversation, conversation_id)
            return list(
                tx.select(
                    Message,
                    {"conversation_id": conversation_id, "seq": Range(gt=after_seq)},
                    order=("seq",),
                    limit=limit,
                )
            )

    def events(
        self, where: Where | None = None, *, after: str | None = None, limit: int = 100
    ) -> Page[Event]:
        """The event log, oldest first."""
        with self.reading() as tx:
            return tx.page(Event, where, order=("id",), after=after, limit=limit)

    # --- the archive -------------------------------------------------------------------------

    def index_archive(self, *, limit: int = 500) -> int:
        """Index the transcripts of closed conversations for `archive(text=...)`: those closed
        (or closed again after a reopen) since the last pass, oldest first, up to `limit` in
        one transaction; returns how many. Call it from the host's worker loop, as `deliver`;
        on an existing database, until it returns 0 (the backfill)."""
        return self.run(lambda work: archive_queries.index_pending(work.tx, limit=limit))

    def statistics(
        self, conversation_id: str, *, operator_id: str | None = None
    ) -> ConversationStatistics:
        """The conversation's figures, episode by episode, from its event log (see
        jivocore.statistics). With `operator_id`, PermissionDenied unless they may see it."""
        with self.reading() as tx:
            conversation = tx.get(Conversation, conversation_id)
            if operator_id is not None:
                seer = tx.get(Operator, operator_id)
                if not (seer.is_manager or seer.sees_all or seer.id in conversation.involved):
                    raise PermissionDenied(
                        f"{seer.name} ({seer.id}) may not see conversation {conversation_id}",
                        operator_id=operator_id,
                        conversation_id=conversation_id,
                    )
            events = tx.select(Event, {"conversation_id": conversation_id}, order=("id",))
            return conversation_statistics(conversation, events)

    def report(self, since: datetime, until: datetime) -> Report:
        """The report over the episodes that began in ``[since, until)``, overall and per
        operator (see jivocore.statistics.Report); the log is streamed, never loaded whole."""
        if since.utcoffset() is None or until.utcoffset() is None:
            raise ValidationError("a report's period is given in timezone-aware datetimes")
        if until <= since:
            raise ValidationError(f"a report's period ends after it begins, not {since}..{until}")
        report = Report(since=since, until=until)
        with self.reading() as tx:
            for stats in archive_queries.period_statistics(tx, since, until):
                report.add(stats)
        return report

    def rate(self, conversation_id: str, rating: int, *, comment: str = "") -> Event:
        """The client rates the conversation's current episode (1 worst .. 5 best), once it
        was accepted; a later rating of the same episode replaces theirs in the statistics."""
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise ValidationError(f"a rating is a whole number from 1 to 5, not {rating!r}")
        if len(comment) > int(self.settings["max_message_chars"]):
            raise ValidationError("the rating's comment is too long")

        def change(work: Work) -> Event:
            conversation = work.tx.get(Conversation, conversation_id)
            if conversation.accepted is None:
                raise InvalidTransition(
                    f"conversation {conversation_id} was never accepted: nothing to rate",
                    conversation_id=conversation_id,
                    state=conversation.state,
                    command="rate",
                )
            return work.record(
                "rated",
                conversation=conversation,
                episode=conversation.episode,
                rating=rating,
                comment=comment,
            )

        return self.run(change)

    # --- the scheduler -----------------------------------------------------------------------

    def run_due(self, *, limit: int = 100) -> int:
        """Run the timers that are due (task due times, ...), oldest due first, however late
        this is called; returns how many ran. A handler that raises is logged and retried with
        back-off. Call it from the host's worker loop, as `deliver`. See jivocore/scheduler.py."""
        return scheduler.run_due(self, limit=limit)

    # --- channels ----------------------------------------------------------------------------

    def start_channels(self) -> None:
        """Start the channel adapters (their servers, connections) with the host: each channel
        that has ``start(desk)``, in registration order. Pair with `stop_channels`."""
        started: list[Channel] = []
        for name, channel in self.channels.items():
            start = getattr(channel, "start", None)
            if not callable(start):
                continue
            try:
                start(self)
            except Exception as exc:
                for other in reversed(started):
                    self._stop_channel(other)
                raise ConfigurationError(
                    f"channel {name!r} failed to start: {type(exc).__name__}: {exc}", channel=name
                ) from exc
            started.append(channel)

    def stop_channels(self) -> None:
        """Stop the channel adapters: each stops taking inbound messages and finishes the ones in
        flight. Replies not yet sent stay in the outbox for the next `deliver`."""
        for channel in reversed(list(self.channels.values())):
            self._stop_channel(channel)

    @staticmethod
    def _stop_channel(channel: Channel) -> None:
        stop = getattr(channel, "stop", None)
        if not callable(stop):
            return
        try:
            stop()
        except Exception:
            log.exception(
                "channel %r failed to stop; the other channels were stopped", channel.name
            )

    def client_gone(self, channel: str, external_client_id: str) -> Conversation | None:
        """A channel reports that the client (by their id on it) left: their conversation still
        waiting in the inbox closes as missed, and is returned. An accepted one is the
        operator's to close, so it stays open (None is returned), as when there is none."""
        with self.reading() as tx:
            identity = next(
                tx.select(ClientIdentity, {"channel": channel, "external_id": external_client_id}),
                None,
            )
            waiting = identity and next(
                tx.select(
                    Conversation,
                    {"client_id": identity.client_id, "channel": channel, "state": State.INBOX},
                    limit=1,
                ),
                None,
            )
        if not waiting:
            return None
        try:
            return self.client_left(waiting.id)
        except InvalidTransition:
            return None  # accepted (or gone) meanwhile

    def delivery(self, message_id: str) -> Delivery:
        """Where an operator's message is on its way out: its `Delivery`, whose ``status`` is
        pending, sent or dead (with ``attempts`` and the last ``error``). NotFoundError for a
        message that has none (a client's)."""
        with self.reading() as tx:
            return outbox.get(tx, message_id)

    def deliveries(
        self, where: Where | None = None, *, after: str | None = None, limit: int = 50
    ) -> Page[Delivery]:
        """A page of deliveries, oldest first: ``{"status": "dead"}`` is the dead letters,
        ``{"conversation_id": id}`` a conversation's."""
        return outbox.page(self, where, after=after, limit=limit)

    def retry_delivery(self, message_id: str, operator_id: str) -> Delivery:
        """Send a dead delivery again: it is pending, due now, with a fresh count of attempts.
        InvalidTransition unless it is dead; ClientBlocked while its client is blocked."""
        return outbox.retry(self, message_id, operator_id)

    # --- the outbox --------------------------------------------------------------------------

    def deliver(self, *, limit: int = 100) -> int:
        """Send the operator messages that are due through their channels; returns how many
        went out. A failed send is retried later with back-off, and after the last attempt the
        delivery is dead (its event says why). Call it from the host's worker loop."""
        return outbox.deliver(self, limit=limit)


__all__ = ["CORE_ENTITY_TYPES", "DEFAULT_SETTINGS", "HelpDesk", "Work"]
