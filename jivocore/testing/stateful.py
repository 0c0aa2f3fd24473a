"""A Hypothesis state machine over HelpDesk's whole command set, checked against a plain model.

`HelpDeskMachine` drives a real desk and, in lock-step, `HelpDeskModel`: the rules of DESIGN
section 4 restated in simple Python, written apart from `jivocore.lifecycle` so that the two can
disagree. After each command it checks that the desk did what the model says (or refused with the
error the model predicts and changed nothing), and after every step that the invariants hold and
that Inbox, Chats and All show each operator what the model shows.

Run it as a test::

    from jivocore.testing.stateful import HelpDeskMachine

    TestHelpDesk = HelpDeskMachine.TestCase

A storage backend runs the same machine on its own storage by overriding `make_desk`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from ..clock import FakeClock
from ..desk import HelpDesk
from ..entities import Client, ClientIdentity, Conversation, Delivery, Event, Message, Operator
from ..errors import (
    ClientBlocked,
    InvalidTransition,
    JivoError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from . import RecordingChannel, channel_plugin
from .strategies import texts

__all__ = ["HelpDeskMachine", "HelpDeskModel", "Refused"]

T = TypeVar("T")
Added = str | MultipleResults[str]  # what a rule adds to a bundle: an id, or nothing
R = TypeVar("R")

CHANNEL = "web"
UNKNOWN = "no-such-id"
MANAGERS = ("manager", "admin")
OPEN = ("inbox", "active")
INBOX_PAGE = ARCHIVE_PAGE = 50  # what desk.inbox and desk.archive show by default


# --- the model ---------------------------------------------------------------------------------


class Refused(Exception):
    """The model's verdict: the command must fail with `error`, because `why`."""

    def __init__(self, error: type[JivoError], why: str) -> None:
        super().__init__(f"{error.__name__}: {why}")
        self.error = error
        self.why = why


@dataclasses.dataclass
class ModelOperator:
    id: str
    name: str
    role: str
    presence: str
    capacity: int | None
    sees_all: bool

    @property
    def is_manager(self) -> bool:
        return self.role in MANAGERS


@dataclasses.dataclass
class ModelBlock:
    by: str
    at: datetime
    until: datetime | None


@dataclasses.dataclass
class ModelClient:
    id: str
    external_id: str
    name: str
    responsible_id: str | None = None
    block: ModelBlock | None = None

    def blocked(self, now: datetime) -> bool:
        return self.block is not None and (self.block.until is None or now < self.block.until)


@dataclasses.dataclass
class ModelMessage:
    id: str
    conversation_id: str
    seq: int
    author: str
    author_id: str
    text: str
    at: datetime
    episode: int
    external_id: str | None = None


@dataclasses.dataclass
class ModelConversation:
    id: str
    client_id: str
    kind: str
    created: datetime
    state: str = "inbox"
    owner: str | None = None
    participants: set[str] = dataclasses.field(default_factory=set)
    involved: set[str] = dataclasses.field(default_factory=set)
    ignored_until: dict[str, datetime] = dataclasses.field(default_factory=dict)
    accepted: datetime | None = None
    closed: datetime | None = None
    outcome: str | None = None
    episode: int = 1
    messages: list[ModelMessage] = dataclasses.field(default_factory=list)
    last_message_at: datetime | None = None

    def shut(self, outcome: str, now: datetime) -> None:
        self.state, self.outcome, self.closed = "closed", outcome, now
        self.owner = None
        self.participants = set()
        self.ignored_until = {}


class HelpDeskModel:
    """The lifecycle of DESIGN section 4, in plain dicts. Each command either raises `Refused`
    before touching anything, or changes the model as the desk must change."""

    def __init__(self, *, cooldown: timedelta, block_for: timedelta, max_chars: int) -> None:
        self.cooldown = cooldown
        self.block_for = block_for
        self.max_chars = max_chars
        self.operators: dict[str, ModelOperator] = {}
        self.clients: dict[str, ModelClient] = {}
        self.identities: dict[str, str] = {}  # the client's id on the channel -> client id
        self.conversations: dict[str, ModelConversation] = {}
        self.by_message_id: dict[str, ModelMessage] = {}  # the channel's message id -> message
        self.undelivered: list[str] = []  # operator messages waiting in the outbox, in order

    # -- looking things up ------------------------------------------------------------------

    def operator(self, operator_id: str) -> ModelOperator:
        if operator_id not in self.operators:
            raise Refused(NotFoundError, f"no operator {operator_id}")
        return self.operators[operator_id]

    def conversation(self, conversation_id: str) -> ModelConversation:
        if conversation_id not in self.conversations:
            raise Refused(NotFoundError, f"no conversation {conversation_id}")
        return self.conversations[conversation_id]

    def client(self, client_id: str) -> ModelClient:
        if client_id not in self.clients:
            raise Refused(NotFoundError, f"no client {client_id}")
        return self.clients[client_id]

    def open_conversation(self, client_id: str) -> ModelConversation | None:
        found = [
            c for c in self.conversations.values() if c.client_id == client_id and c.state in OPEN
        ]
        assert len(found) <= 1, f"the model let client {client_id} have two open conversations"
        return found[0] if found else None

    @staticmethod
    def require(condition: bool, error: type[JivoError], why: str) -> None:
        if not condition:
            raise Refused(error, why)

    def _state(self, conversation: ModelConversation, command: str, *states: str) -> None:
        self.require(
            conversation.state in states,
            InvalidTransition,
            f"{command} applies to {' or '.join(states)}, not {conversation.state}",
        )

    def _text(self, text: str) -> None:
        self.require(bool(text.strip()), ValidationError, "a message needs some text")
        self.require("\x00" not in text, ValidationError, "NUL in the message")
        self.require(len(text) <= self.max_chars, ValidationError, "the message is too long")

    def _online(self, operator: ModelOperator, what: str) -> None:
        self.require(operator.presence == "online", PermissionDenied, f"{what} is not online")

    def _participant(self, conversation: ModelConversation, operator: ModelOperator) -> None:
        self.require(
            operator.id in conversation.participants, PermissionDenied, "not a participant"
        )

    def _owner_or_manager(self, conversation: ModelConversation, operator: ModelOperator) -> None:
        self.require(
            operator.id == conversation.owner or operator.is_manager,
            PermissionDenied,
            "neither the owner nor a manager",
        )

    def _may_see(self, conversation: ModelConversation, operator: ModelOperator) -> None:
        self.require(
            operator.is_manager or operator.sees_all or operator.id in conversation.involved,
            PermissionDenied,
            "may not see the conversation",
        )

    def _colleague(self, conversation: ModelConversation, colleague: ModelOperator) -> None:
        self._online(colleague, "the colleague")
        self.require(
            colleague.id not in conversation.participants,
            InvalidTransition,
            "the colleague already takes part",
        )

    # -- queries ----------------------------------------------------------------------------

    def inbox(self, operator_id: str, now: datetime) -> list[str]:
        """Inbox conversations, oldest first, less the ones this operator ignored until later."""
        shown = [
            c
            for c in self.conversations.values()
            if c.state == "inbox" and not now < c.ignored_until.get(operator_id, now)
        ]
        shown.sort(key=lambda c: (c.created, c.id))
        return [c.id for c in shown[:INBOX_PAGE]]

    def chats(self, operator_id: str) -> list[str]:
        """Active conversations the operator takes part in, latest message first."""
        mine = [
            c
            for c in self.conversations.values()
            if c.state == "active" and operator_id in c.participants
        ]
        mine.sort(key=lambda c: (c.last_message_at, c.id), reverse=True)
        return [c.id for c in mine]

    def archive(self, operator_id: str) -> list[str]:
        """Closed conversations the operator may see, last closed first."""
        operator = self.operators[operator_id]
        seen = [
            c
            for c in self.conversations.values()
            if c.state == "closed"
            and (operator.is_manager or operator.sees_all or operator_id in c.involved)
        ]
        seen.sort(key=lambda c: (c.closed, c.id), reverse=True)
        return [c.id for c in seen[:ARCHIVE_PAGE]]

    # -- operators --------------------------------------------------------------------------

    def check_add_operator(self, name: str, capacity: int | None) -> None:
        self.require(bool(name.strip()), ValidationError, "an operator needs a name")
        self.require("\x00" not in name, ValidationError, "NUL in the name")
        self.require(capacity is None or capacity >= 0, ValidationError, "negative capacity")

    def add_operator(self, operator: ModelOperator) -> ModelOperator:
        assert operator.id not in self.operators, f"operator id {operator.id} given twice"
        self.operators[operator.id] = operator
        return operator

    def set_presence(self, operator_id: str, presence: str) -> ModelOperator:
        operator = self.operator(operator_id)
        operator.presence = presence
        return operator

    # -- the lifecycle ----------------------------------------------------------------------

    def check_receive(
        self,
        channel: str,
        external_id: str,
        text: str,
        message_id: str | None,
        now: datetime,
        name: str | None = None,
    ) -> ModelMessage | None:
        """Refused, or the stored message a redelivery gives back, or None: a new message."""
        self.require(channel == CHANNEL, ValidationError, f"no channel {channel!r}")
        self.require(bool(external_id), ValidationError, "no client id")
        self.require("\x00" not in external_id, ValidationError, "NUL in the client id")
        self.require("\x00" not in (message_id or ""), ValidationError, "NUL in the message id")
        self.require("\x00" not in (name or ""), ValidationError, "NUL in the client's name")
        self._text(text)
        if message_id is not None and message_id in self.by_message_id:
            return self.by_message_id[message_id]
        client_id = self.identities.get(external_id)
        if client_id is not None:
            self.require(
                not self.clients[client_id].blocked(now), ClientBlocked, "the client is blocked"
            )
        return None

    def receive(
        self,
        external_id: str,
        text: str,
        *,
        message_id: str | None,
        kind: str,
        name: str | None,
        now: datetime,
        ids: Message,
    ) -> ModelMessage:
        """Store a new client message; the desk's message `ids` name what it made."""
        client_id = self.identities.get(external_id)
        if client_id is None:
            client_id = ids.author_id or ""
            assert client_id not in self.clients, f"client id {client_id} given twice"
            self.clients[client_id] = ModelClient(client_id, external_id, name or "")
            self.identities[external_id] = client_id
        conversation = self.open_conversation(client_id)
        if conversation is None:
            assert ids.conversation_id not in self.conversations, "conversation id given twice"
            conversation = ModelConversation(ids.conversation_id, client_id, kind, created=now)
            self.conversations[conversation.id] = conversation
        message = self._append(conversation, "client", client_id, text, now, ids.id)
        message.external_id = message_id
        if message_id is not None:
            self.by_message_id[message_id] = message
        return message

    def _append(
        self,
        conversation: ModelConversation,
        author: str,
        author_id: str,
        text: str,
        now: datetime,
        message_id: str,
    ) -> ModelMessage:
        message = ModelMessage(
            id=message_id,
            conversation_id=conversation.id,
            seq=len(conversation.messages) + 1,
            author=author,
            author_id=author_id,
            text=text,
            at=now,
            episode=conversation.episode,
        )
        conversation.messages.append(message)
        conversation.last_message_at = now
        return message

    def ignore(self, conversation_id: str, operator_id: str, now: datetime) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        self._state(conversation, "ignore", "inbox")
        self._online(operator, "the operator")
        conversation.ignored_until[operator.id] = now + self.cooldown
        return conversation

    def accept(self, conversation_id: str, operator_id: str, now: datetime) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        self._state(conversation, "accept", "inbox")
        self._online(operator, "the operator")
        owned = sum(
            1 for c in self.conversations.values() if c.state == "active" and c.owner == operator.id
        )
        self.require(
            operator.capacity is None or owned < operator.capacity,
            PermissionDenied,
            f"the operator owns {owned} active chats, their capacity",
        )
        conversation.state, conversation.owner, conversation.accepted = "active", operator.id, now
        conversation.participants = {operator.id}
        conversation.involved.add(operator.id)
        conversation.ignored_until = {}
        client = self.clients[conversation.client_id]
        if client.responsible_id is None:
            client.responsible_id = operator.id
        return conversation

    def reply(
        self, conversation_id: str, operator_id: str, text: str, now: datetime
    ) -> ModelConversation:
        """Check a reply and return its conversation; `replied` then stores the message."""
        self._text(text)
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        self._state(conversation, "reply", "active")
        self._participant(conversation, operator)
        return conversation

    def replied(
        self, conversation: ModelConversation, operator_id: str, text: str, now: datetime, id: str
    ) -> ModelMessage:
        message = self._append(conversation, "operator", operator_id, text, now, id)
        self.undelivered.append(message.id)
        return message

    def transfer(
        self, conversation_id: str, operator_id: str, to_id: str, now: datetime
    ) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        colleague = self.operator(to_id)
        self._state(conversation, "transfer", "active")
        self._owner_or_manager(conversation, operator)
        self._online(colleague, "the colleague")
        self.require(
            colleague.id != conversation.owner, InvalidTransition, "the colleague owns it already"
        )
        # An invited participant may take it over.
        conversation.participants.discard(conversation.owner or "")
        conversation.participants.add(colleague.id)
        conversation.involved.add(colleague.id)
        conversation.owner = colleague.id
        return conversation

    def invite(
        self, conversation_id: str, operator_id: str, colleague_id: str, now: datetime
    ) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        colleague = self.operator(colleague_id)
        self._state(conversation, "invite", "active")
        self._participant(conversation, operator)
        self._colleague(conversation, colleague)
        conversation.participants.add(colleague.id)
        conversation.involved.add(colleague.id)
        return conversation

    def leave(self, conversation_id: str, operator_id: str, now: datetime) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        self._state(conversation, "leave", "active")
        self._participant(conversation, operator)
        self.require(operator.id != conversation.owner, PermissionDenied, "the owner cannot leave")
        conversation.participants.discard(operator.id)
        return conversation

    def close(self, conversation_id: str, operator_id: str, now: datetime) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        self._state(conversation, "close", "active")
        self._owner_or_manager(conversation, operator)
        conversation.shut("answered", now)
        return conversation

    def client_left(self, conversation_id: str, now: datetime) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        self._state(conversation, "client_left", "inbox")
        conversation.shut("missed", now)
        return conversation

    def join(self, conversation_id: str, operator_id: str, now: datetime) -> ModelConversation:
        conversation = self.conversation(conversation_id)
        operator = self.operator(operator_id)
        self._state(conversation, "join", "closed", "active")
        self._may_see(conversation, operator)
        if conversation.state == "active":
            self.require(
                operator.id not in conversation.participants,
                InvalidTransition,
                "already takes part",
            )
            conversation.participants.add(operator.id)
            conversation.involved.add(operator.id)
            return conversation
        # DESIGN section 4: "a blocked client has no open conversation", so the archive cannot
        # reopen one; and a client has one open conversation per channel at a time.
        client = self.clients[conversation.client_id]
        self.require(not client.blocked(now), ClientBlocked, "the client is blocked")
        self.require(
            self.open_conversation(client.id) is None,
            InvalidTransition,
            "the client has another open conversation",
        )
        conversation.state, conversation.owner, conversation.accepted = "active", operator.id, now
        conversation.participants = {operator.id}
        conversation.involved.add(operator.id)
        conversation.episode += 1
        conversation.closed = conversation.outcome = None
        return conversation

    def block(
        self, client_id: str, operator_id: str, duration: timedelta | str | None, now: datetime
    ) -> ModelClient:
        """Block a client for `duration` (None: indefinitely; "default": the desk's setting)."""
        if duration == "default":
            duration = self.block_for
        assert not isinstance(duration, str)
        self.require(
            duration is None or duration > timedelta(0), ValidationError, "not a positive duration"
        )
        operator = self.operator(operator_id)
        client = self.client(client_id)
        client.block = ModelBlock(operator.id, now, None if duration is None else now + duration)
        for conversation in self.conversations.values():
            if conversation.client_id == client.id and conversation.state in OPEN:
                conversation.shut("blocked", now)
        return client

    def unblock(self, client_id: str, operator_id: str, now: datetime) -> ModelClient:
        self.operator(operator_id)
        client = self.client(client_id)
        self.require(client.blocked(now), InvalidTransition, "the client is not blocked")
        client.block = None
        return client

    def deliver(self, limit: int = 100) -> list[str]:
        sent, self.undelivered = self.undelivered[:limit], self.undelivered[limit:]
        return sent


# --- what the desk shows, in the model's terms -------------------------------------------------


def view_conversation(c: Conversation, now: datetime) -> dict[str, Any]:
    return {
        "id": c.id,
        "client_id": c.client_id,
        "channel": c.channel,
        "kind": c.kind.value,
        "state": c.state.value,
        "owner": c.owner_id,
        "participants": set(c.participants),
        "involved": set(c.involved),
        # Only ignores still running are observable; lapsed ones may linger in storage.
        "ignored_until": {i.operator_id: i.until for i in c.ignores if now < i.until},
        "created": c.created,
        "accepted": c.accepted,
        "closed": c.closed,
        "outcome": c.outcome.value if c.outcome else None,
        "episode": c.episode,
        "message_count": c.message_count,
        "last_message_at": c.last_message_at,
    }


def model_conversation(c: ModelConversation, now: datetime) -> dict[str, Any]:
    return {
        "id": c.id,
        "client_id": c.client_id,
        "channel": CHANNEL,
        "kind": c.kind,
        "state": c.state,
        "owner": c.owner,
        "participants": set(c.participants),
        "involved": set(c.involved),
        "ignored_until": {op: until for op, until in c.ignored_until.items() if now < until},
        "created": c.created,
        "accepted": c.accepted,
        "closed": c.closed,
        "outcome": c.outcome,
        "episode": c.episode,
        "message_count": len(c.messages),
        "last_message_at": c.last_message_at,
    }


def view_message(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "channel": m.channel,
        "author": m.author.value,
        "author_id": m.author_id,
        "text": m.text,
        "at": m.at,
        "episode": m.episode,
        "external_id": m.external_id,
    }


def model_message(m: ModelMessage) -> dict[str, Any]:
    return {**dataclasses.asdict(m), "channel": CHANNEL}


def view_client(c: Client) -> dict[str, Any]:
    block = c.block and {"by": c.block.by, "at": c.block.at, "until": c.block.until}
    return {"id": c.id, "name": c.name, "responsible_id": c.responsible_id, "block": block}


def model_client(c: ModelClient) -> dict[str, Any]:
    block = c.block and dataclasses.asdict(c.block)
    return {"id": c.id, "name": c.name, "responsible_id": c.responsible_id, "block": block}


def view_operator(o: Operator) -> dict[str, Any]:
    return {
        "id": o.id,
        "name": o.name,
        "role": o.role.value,
        "presence": o.presence.value,
        "capacity": o.capacity,
        "sees_all": o.sees_all,
    }


def model_operator(o: ModelOperator) -> dict[str, Any]:
    return dataclasses.asdict(o)


def agree(what: str, got: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    """Fail naming every field where the desk (`got`) and the model (`want`) differ."""
    if got != want:
        keys = sorted(set(got) | set(want))
        diff = [
            f"  {k}: desk {got.get(k)!r}, model {want.get(k)!r}"
            for k in keys
            if got.get(k) != want.get(k)
        ]
        raise AssertionError(f"{what} differs from the model:\n" + "\n".join(diff))


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything a refused command must leave as it was, read in one transaction."""

    operators: tuple[Operator, ...]
    clients: tuple[Client, ...]
    identities: tuple[ClientIdentity, ...]
    conversations: tuple[Conversation, ...]
    messages: tuple[Message, ...]
    deliveries: tuple[Delivery, ...]
    events: int


# --- the machine ---------------------------------------------------------------------------------

names = st.sampled_from(["Ann", "Bob", "Cy", "Dee"]) | texts(max_size=4, nul=True)
presences = st.sampled_from(["online", "online", "online", "away", "offline"])
roles = st.sampled_from(["operator", "operator", "operator", "manager", "admin"])
visitors = st.sampled_from(["v1", "v2", "v3", "v4"]) | texts(max_size=3, nul=True)
message_ids = st.none() | st.sampled_from(["m1", "m2", "m3", "m4", "m5"])
words = st.sampled_from(["hello", "any news?", "thanks"]) | texts(max_size=20, nul=True)
pauses = st.sampled_from([0.001, 1, 30, 59.999, 60, 61, 600, 3600, 86_400, 90_000]) | st.floats(
    min_value=0, max_value=120
)
durations: st.SearchStrategy[timedelta | str | None] = st.sampled_from(
    ["default", None, timedelta(seconds=1), timedelta(seconds=45), timedelta(hours=2)]
) | st.sampled_from([timedelta(0), timedelta(seconds=-5)])
COMMANDS = (
    "ignore",
    "accept",
    "reply",
    "transfer",
    "invite",
    "leave",
    "close",
    "client_left",
    "join",
)


class HelpDeskMachine(RuleBasedStateMachine):
    """Drives a HelpDesk and the model in lock-step over the whole command set.

    Override `make_desk` to run it on another storage backend; the desk must register
    `self.channel` and use `clock`."""

    MAX_OPERATORS = 5

    operators = Bundle("operators")
    conversations = Bundle("conversations")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.channel = RecordingChannel(CHANNEL)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.desk = self.make_desk(self.clock)
        settings = self.desk.settings
        self.model = HelpDeskModel(
            cooldown=timedelta(seconds=float(settings["ignore_cooldown"])),
            block_for=timedelta(hours=float(settings["block_hours"])),
            max_chars=int(settings["max_message_chars"]),
        )
        self._steps = 0
        self._commands = 0
        self._observed: tuple[int, Observed] | None = None

    def make_desk(self, clock: FakeClock) -> HelpDesk:
        """The desk under test: by default a SQLite file in a temporary directory."""
        self._tmp = tempfile.TemporaryDirectory(prefix="jivocore-machine-")
        return HelpDesk.open(
            str(Path(self._tmp.name) / "desk.db"),
            clock=clock,
            plugins=[channel_plugin(self.channel)],
            settings={"sqlite_synchronous": "OFF"},
        )

    def teardown(self) -> None:
        event(f"commands run: {self._commands // 10 * 10}+")
        self.desk.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- the lock-step ----------------------------------------------------------------------

    def observe(self) -> Observed:
        """What the desk holds now (read once per step)."""
        if self._observed is not None and self._observed[0] == self._steps:
            return self._observed[1]
        with self.desk.reading() as tx:
            seen = Observed(
                operators=tuple(tx.select(Operator)),
                clients=tuple(tx.select(Client)),
                identities=tuple(tx.select(ClientIdentity)),
                conversations=tuple(tx.select(Conversation)),
                messages=tuple(tx.select(Message, order=("conversation_id", "seq"))),
                deliveries=tuple(tx.select(Delivery)),
                events=tx.count(Event),
            )
        self._observed = (self._steps, seen)
        return seen

    def step(
        self, command: str, model: Callable[[], T], desk: Callable[[], R]
    ) -> tuple[T, R] | None:
        """Run `command` on the model, then on the desk; None when both refused it alike."""
        self._steps += 1
        self._commands += 1
        try:
            expected = model()
        except Refused as refusal:
            before = self.observe()
            try:
                desk()
            except JivoError as exc:
                if type(exc) is not refusal.error:
                    raise AssertionError(
                        f"{command}: the desk raised {type(exc).__name__} ({exc}); the model "
                        f"expects {refusal}"
                    ) from exc
            else:
                raise AssertionError(f"{command}: the desk did it; the model expects {refusal}")
            self._steps += 1
            after = self.observe()
            assert after == before, f"{command} was refused ({refusal}) but changed the desk"
            event(f"{command}: refused with {refusal.error.__name__}")
            return None
        try:
            done = desk()
        except JivoError as exc:
            raise AssertionError(
                f"{command}: the desk refused with {type(exc).__name__} ({exc}); the model "
                "allows it"
            ) from exc
        event(f"{command}: done")
        return expected, done

    def lifecycle(
        self, command: str, conversation_id: str, operator_id: str, colleague_id: str
    ) -> None:
        """One conversation command (all but receive and reply), checked against the model."""
        now = self.clock.now()
        m, d = self.model, self.desk
        model_steps: dict[str, Callable[[], ModelConversation]] = {
            "ignore": lambda: m.ignore(conversation_id, operator_id, now),
            "accept": lambda: m.accept(conversation_id, operator_id, now),
            "transfer": lambda: m.transfer(conversation_id, operator_id, colleague_id, now),
            "invite": lambda: m.invite(conversation_id, operator_id, colleague_id, now),
            "leave": lambda: m.leave(conversation_id, operator_id, now),
            "close": lambda: m.close(conversation_id, operator_id, now),
            "client_left": lambda: m.client_left(conversation_id, now),
            "join": lambda: m.join(conversation_id, operator_id, now),
        }
        desk_steps: dict[str, Callable[[], Conversation]] = {
            "ignore": lambda: d.ignore(conversation_id, operator_id),
            "accept": lambda: d.accept(conversation_id, operator_id),
            "transfer": lambda: d.transfer(conversation_id, operator_id, colleague_id),
            "invite": lambda: d.invite(conversation_id, operator_id, colleague_id),
            "leave": lambda: d.leave(conversation_id, operator_id),
            "close": lambda: d.close(conversation_id, operator_id),
            "client_left": lambda: d.client_left(conversation_id),
            "join": lambda: d.join(conversation_id, operator_id),
        }
        if command == "reply":
            self.reply(conversation_id, operator_id, "a reply")
            return
        done = self.step(command, model_steps[command], desk_steps[command])
        if done is not None:
            want, got = done
            agree(
                f"{command}: the conversation",
                view_conversation(got, now),
                model_conversation(want, now),
            )

    # -- rules: operators -------------------------------------------------------------------

    @initialize(target=operators)
    def first_operator(self) -> Added:
        """Every run starts with an online operator, so there is someone to act."""
        return self.add_operator("Ann", "operator", "online", None, False)

    @initialize(target=operators, role=roles, presence=presences, sees_all=st.booleans())
    def second_operator(self, role: str, presence: str, sees_all: bool) -> Added:
        """And a colleague, to transfer to and invite."""
        return self.add_operator("Bob", role, presence, None, sees_all)

    @initialize(target=conversations)
    def first_conversation(self) -> Added:
        """Every run starts with a client waiting in the inbox."""
        return self.receive("v1", "hello", None, "chat", None, CHANNEL)

    @precondition(lambda self: len(self.model.operators) < self.MAX_OPERATORS)
    @rule(
        target=operators,
        name=names,
        role=roles,
        presence=presences,
        capacity=st.none() | st.integers(min_value=-1, max_value=3),
        sees_all=st.sampled_from([False, False, True]),
    )
    def add_operator(
        self, name: str, role: str, presence: str, capacity: int | None, sees_all: bool
    ) -> Added:
        done = self.step(
            "add_operator",
            lambda: self.model.check_add_operator(name, capacity),
            lambda: self.desk.add_operator(
                name, role=role, presence=presence, capacity=capacity, sees_all=sees_all
            ),
        )
        if done is None:
            return multiple()
        _, got = done
        want = self.model.add_operator(
            ModelOperator(got.id, name, role, presence, capacity, sees_all)
        )
        agree("add_operator: the operator", view_operator(got), model_operator(want))
        return got.id

    @rule(operator=operators, presence=presences)
    def set_presence(self, operator: str, presence: str) -> None:
        done = self.step(
            "set_presence",
            lambda: self.model.set_presence(operator, presence),
            lambda: self.desk.set_presence(operator, presence),
        )
        assert done is not None
        want, got = done
        agree("set_presence: the operator", view_operator(got), model_operator(want))

    # -- rules: the lifecycle ----------------------------------------------------------------

    @rule(
        target=conversations,
        visitor=visitors,
        text=words,
        message_id=message_ids,
        kind=st.sampled_from(["chat", "chat", "call"]),
        name=st.none() | names,
        channel=st.sampled_from([CHANNEL] * 9 + ["sms"]),
    )
    def receive(
        self,
        visitor: str,
        text: str,
        message_id: str | None,
        kind: str,
        name: str | None,
        channel: str,
    ) -> Added:
        now = self.clock.now()
        opened = set(self.model.conversations)
        done = self.step(
            "receive",
            lambda: self.model.check_receive(channel, visitor, text, message_id, now, name),
            lambda: self.desk.receive(
                channel, visitor, text, message_id=message_id, name=name, kind=kind
            ),
        )
        if done is None:
            return multiple()
        stored, got = done
        if stored is not None:
            event("receive: a redelivery")
            agree("receive: the redelivered message", view_message(got), model_message(stored))
            return multiple()
        want = self.model.receive(
            visitor, text, message_id=message_id, kind=kind, name=name, now=now, ids=got
        )
        agree("receive: the message", view_message(got), model_message(want))
        return multiple() if got.conversation_id in opened else got.conversation_id

    @rule(conversation=conversations, operator=operators, text=words)
    def reply(self, conversation: str, operator: str, text: str) -> None:
        now = self.clock.now()
        done = self.step(
            "reply",
            lambda: self.model.reply(conversation, operator, text, now),
            lambda: self.desk.reply(conversation, operator, text),
        )
        if done is not None:
            model_conv, got = done
            want = self.model.replied(model_conv, operator, text, now, got.id)
            agree("reply: the message", view_message(got), model_message(want))

    @rule(
        command=st.sampled_from(COMMANDS),
        conversation=conversations,
        operator=operators,
        colleague=operators,
        unknown=st.sampled_from([None, None, None, "conversation", "operator", "colleague"]),
    )
    def command(
        self, command: str, conversation: str, operator: str, colleague: str, unknown: str | None
    ) -> None:
        """Any conversation command with any arguments, sometimes an id nobody has."""
        ids = {"conversation": conversation, "operator": operator, "colleague": colleague}
        if unknown is not None:
            ids[unknown] = UNKNOWN
        self.lifecycle(command, ids["conversation"], ids["operator"], ids["colleague"])

    # Random arguments are mostly refused; these pick ones the model suggests will do, so runs
    # get deep into conversations' lives (the guards still decide).

    def _in(self, *states: str) -> list[ModelConversation]:
        return sorted(
            (c for c in self.model.conversations.values() if c.state in states),
            key=lambda c: c.id,
        )

    def _draw_conversation(self, data: st.DataObject, *states: str) -> ModelConversation:
        ids = [c.id for c in self._in(*states)]
        return self.model.conversations[data.draw(st.sampled_from(ids), "conversation")]

    def _pick(self, data: st.DataObject, label: str, *choices: Iterable[str]) -> str:
        """One of the first non-empty `choices`, else any operator."""
        for choice in (*choices, self.model.operators):
            options = sorted(choice)
            if options:
                return data.draw(st.sampled_from(options), label)
        raise AssertionError("the machine always has an operator")

    def _online(self) -> set[str]:
        return {o.id for o in self.model.operators.values() if o.presence == "online"}

    @precondition(lambda self: self._in("inbox"))
    @rule(command=st.sampled_from(["accept", "accept", "ignore", "client_left"]), data=st.data())
    def guided_inbox(self, command: str, data: st.DataObject) -> None:
        """An online operator accepts or ignores a waiting conversation, or its client leaves."""
        c = self._draw_conversation(data, "inbox")
        operator = self._pick(data, "operator", self._online())
        self.lifecycle(command, c.id, operator, operator)

    @precondition(lambda self: self._in("active"))
    @rule(
        command=st.sampled_from(
            ["reply", "transfer", "transfer", "invite", "invite", "leave", "close"]
        ),
        data=st.data(),
    )
    def guided_active(self, command: str, data: st.DataObject) -> None:
        """A participant replies, transfers, invites, leaves or closes."""
        c = self._draw_conversation(data, "active")
        managers = {o.id for o in self.model.operators.values() if o.is_manager}
        if command in ("transfer", "close"):
            operator = self._pick(data, "operator", {c.owner or ""} | managers)
        elif command == "leave":
            operator = self._pick(data, "operator", c.participants - {c.owner or ""})
        else:
            operator = self._pick(data, "operator", c.participants)
        others = c.participants if command == "invite" else {c.owner or ""}
        colleague = self._pick(data, "colleague", self._online() - others)
        if command == "reply":
            self.reply(c.id, operator, data.draw(words, "text"))
        else:
            self.lifecycle(command, c.id, operator, colleague)

    @precondition(lambda self: self._in("closed", "active"))
    @rule(data=st.data())
    def guided_join(self, data: st.DataObject) -> None:
        """Someone who may see a conversation joins it, from All or while it is active."""
        c = self._draw_conversation(data, "closed", "active")
        seers = {o.id for o in self.model.operators.values() if o.is_manager or o.sees_all}
        operator = self._pick(data, "operator", (c.involved | seers) - c.participants)
        self.lifecycle("join", c.id, operator, operator)

    @rule(
        conversation=conversations,
        operator=operators,
        duration=durations,
        unknown=st.sampled_from([False, False, False, True]),
    )
    def block(
        self, conversation: str, operator: str, duration: timedelta | str | None, unknown: bool
    ) -> None:
        """An operator blocks the client of a conversation (or a client nobody has)."""
        client_id = UNKNOWN if unknown else self.model.conversations[conversation].client_id
        now = self.clock.now()

        def desk_block() -> Client:
            if duration == "default":
                return self.desk.block(client_id, operator)
            assert not isinstance(duration, str)
            return self.desk.block(client_id, operator, duration=duration)

        done = self.step(
            "block", lambda: self.model.block(client_id, operator, duration, now), desk_block
        )
        if done is not None:
            want, got = done
            agree("block: the client", view_client(got), model_client(want))

    @rule(
        conversation=conversations,
        operator=operators,
        unknown=st.sampled_from([False, False, False, True]),
    )
    def unblock(self, conversation: str, operator: str, unknown: bool) -> None:
        """An operator lifts the block of a conversation's client (or of a client nobody has)."""
        client_id = UNKNOWN if unknown else self.model.conversations[conversation].client_id
        now = self.clock.now()
        done = self.step(
            "unblock",
            lambda: self.model.unblock(client_id, operator, now),
            lambda: self.desk.unblock(client_id, operator),
        )
        if done is not None:
            want, got = done
            agree("unblock: the client", view_client(got), model_client(want))

    # -- rules: time and the outbox ----------------------------------------------------------

    @rule(seconds=pauses)
    def time_passes(self, seconds: float) -> None:
        """Time moves on: ignores lapse, blocks expire."""
        self._steps += 1
        self.clock.advance(timedelta(seconds=seconds))

    @rule()
    def deliver(self) -> None:
        """The outbox sends the operators' replies through the channel, in order."""
        self._steps += 1
        before = len(self.channel.sent)
        sent = self.desk.deliver()
        expected = self.model.deliver()
        assert sent == len(expected), f"deliver sent {sent}, the model expects {len(expected)}"
        out = self.channel.sent[before:]
        # The same replies go out, and each conversation's in the order they were written;
        # the outbox promises no order between conversations.
        assert sorted(o.message.id for o in out) == sorted(expected)
        for conversation_id in {o.message.conversation_id for o in out}:
            mine = [o.message.id for o in out if o.message.conversation_id == conversation_id]
            assert mine == [m for m in expected if m in mine], f"out of order in {conversation_id}"
        for outbound in out:
            conversation = self.model.conversations[outbound.message.conversation_id]
            assert outbound.client.id == conversation.client_id
            assert outbound.identity is not None
            assert outbound.identity.client_id == conversation.client_id

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def states_are_consistent(self) -> None:
        """Inbox: no owner, no participants; active: one owner who takes part; closed: none."""
        for c in self.observe().conversations:
            if c.state == "inbox":
                assert c.owner_id is None and not c.participants, f"inbox {c.id} has people: {c}"
            elif c.state == "active":
                assert c.owner_id is not None and c.owner_id in c.participants, f"active {c}"
            else:
                assert c.owner_id is None and not c.participants, f"closed {c.id} has people: {c}"
                assert c.closed is not None and c.outcome is not None, f"closed {c}"

    @invariant()
    def times_are_ordered(self) -> None:
        """created <= accepted <= closed."""
        for c in self.observe().conversations:
            times = [t for t in (c.created, c.accepted, c.closed) if t is not None]
            assert times == sorted(times), (
                f"conversation {c.id}: {c.created=} {c.accepted=} {c.closed=}"
            )

    @invariant()
    def messages_are_numbered_without_gaps(self) -> None:
        seqs: dict[str, list[int]] = {}
        for m in self.observe().messages:
            seqs.setdefault(m.conversation_id, []).append(m.seq)
        for c in self.observe().conversations:
            assert seqs.get(c.id, []) == list(range(1, c.message_count + 1)), (
                f"conversation {c.id} has messages {seqs.get(c.id)} and count {c.message_count}"
            )

    @invariant()
    def every_conversation_is_still_there(self) -> None:
        held = {c.id for c in self.observe().conversations}
        assert held == set(self.model.conversations), (
            f"missing {set(self.model.conversations) - held}, unexpected "
            f"{held - set(self.model.conversations)}"
        )

    @invariant()
    def a_blocked_client_has_no_open_conversation(self) -> None:
        now = self.clock.now()
        seen = self.observe()
        blocked = {c.id for c in seen.clients if c.blocked(now)}
        open_ones = [c.id for c in seen.conversations if c.open and c.client_id in blocked]
        assert not open_ones, f"blocked clients have open conversations {open_ones}"

    @invariant()
    def the_desk_holds_what_the_model_holds(self) -> None:
        now = self.clock.now()
        seen = self.observe()
        for c in seen.conversations:
            agree(
                f"conversation {c.id}",
                view_conversation(c, now),
                model_conversation(self.model.conversations[c.id], now),
            )
        want = [model_message(m) for c in self.model.conversations.values() for m in c.messages]
        want.sort(key=lambda m: (m["conversation_id"], m["seq"]))
        got = [view_message(m) for m in seen.messages]
        assert got == want, _first_difference("messages", got, want)
        for client in seen.clients:
            agree(
                f"client {client.id}",
                view_client(client),
                model_client(self.model.clients[client.id]),
            )
        assert len(seen.clients) == len(self.model.clients)
        identities = {i.external_id: i.client_id for i in seen.identities}
        assert identities == self.model.identities
        operators = {o.id: view_operator(o) for o in seen.operators}
        assert operators == {o.id: model_operator(o) for o in self.model.operators.values()}
        pending = [
            d.message_id
            for d in sorted(seen.deliveries, key=lambda d: (d.due, d.id))
            if d.status == "pending"
        ]
        assert pending == self.model.undelivered

    @invariant()
    def each_operator_sees_their_inbox_chats_and_archive(self) -> None:
        now = self.clock.now()
        for operator_id in self.model.operators:
            inbox = [c.id for c in self.desk.inbox(operator_id)]
            assert inbox == self.model.inbox(operator_id, now), f"inbox of {operator_id}"
            chats = [c.id for c in self.desk.chats(operator_id)]
            assert chats == self.model.chats(operator_id), f"chats of {operator_id}"
            archive = [c.id for c in self.desk.archive(operator_id).items]
            assert archive == self.model.archive(operator_id), f"archive of {operator_id}"


def _first_difference(what: str, got: Iterable[Any], want: Iterable[Any]) -> str:
    got, want = list(got), list(want)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"{what} differ at {i}: desk {a!r}, model {b!r}"
    return f"{what}: desk has {len(got)}, model {len(want)}"
