"""Every refused command raises a precise JivoError and leaves the database as it was.

Each case runs against the same small world on a SQLite file; the file is dumped (through a
connection of its own, not the desk's) before and after the refused command.
"""

from __future__ import annotations

import sqlite3
import types
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from typing import Any

import attrs
import pytest

from jivocore import (
    ClientBlocked,
    ConflictError,
    Conversation,
    HelpDesk,
    InvalidTransition,
    JivoError,
    NotFoundError,
    Operator,
    PermissionDenied,
    State,
    ValidationError,
    Vetoed,
    hookimpl,
)
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

VETO_PLUGIN = "jivocore_no_accepts_today"
VETO_REASON = "the help desk is closed for stocktaking"


def _veto_plugin() -> types.ModuleType:
    """A plugin, shaped as a module is, that refuses every accept."""
    plugin = types.ModuleType(VETO_PLUGIN)

    @hookimpl
    def jivocore_veto_transition(command: str) -> str | None:
        return VETO_REASON if command == "accept" else None

    plugin.jivocore_veto_transition = jivocore_veto_transition  # type: ignore[attr-defined]
    return plugin


def dump(path: str) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return "\n".join(conn.iterdump())


@attrs.define
class World:
    """A desk with one conversation in each state and operators of every kind."""

    desk: HelpDesk
    vetoing: HelpDesk  # a second desk on the same file, with the veto plugin
    path: str
    ann: Operator  # online; owns `active`, closed `closed`
    bob: Operator  # online; invited into `active`
    cara: Operator  # online; has never taken part in anything
    stale_cara: Operator  # Cara as first stored, before her presence changed twice
    dan: Operator  # offline
    eve: Operator  # away
    fay: Operator  # online, capacity 1, which `full` uses up
    inbox: Conversation
    active: Conversation
    closed: Conversation
    full: Conversation
    blocked_client_id: str


def _build(path: str, clock: FakeClock, channel: RecordingChannel) -> World:
    desk = HelpDesk.open(path, clock=clock, plugins=[channel_plugin(channel)])
    op = desk.add_operator
    ann, bob, stale_cara = (op(n, presence="online") for n in ("Ann", "Bob", "Cara"))
    desk.set_presence(stale_cara.id, "away")
    cara = desk.set_presence(stale_cara.id, "online")
    dan, eve = op("Dan", presence="offline"), op("Eve", presence="away")
    fay = op("Fay", presence="online", capacity=1)

    inbox = desk.receive("web", "visitor-inbox", "is anyone there?").conversation_id
    active = desk.receive("web", "visitor-active", "my order is late").conversation_id
    desk.accept(active, ann.id)
    desk.reply(active, ann.id, "let me look")
    desk.invite(active, ann.id, bob.id)
    closed = desk.receive("web", "visitor-closed", "thanks, all done").conversation_id
    desk.accept(closed, ann.id)
    desk.close(closed, ann.id)
    full = desk.receive("web", "visitor-full", "hello").conversation_id
    desk.accept(full, fay.id)
    blocked = desk.receive("web", "visitor-blocked", "spam spam spam")
    blocked_client_id = desk.conversation(blocked.conversation_id).client_id
    desk.block(blocked_client_id, ann.id)
    clock.advance(1)

    vetoing = HelpDesk.open(path, clock=clock, plugins=[channel_plugin(channel), _veto_plugin()])
    return World(
        desk=desk,
        vetoing=vetoing,
        path=path,
        ann=ann,
        bob=bob,
        cara=cara,
        stale_cara=stale_cara,
        dan=dan,
        eve=eve,
        fay=fay,
        inbox=desk.conversation(inbox),
        active=desk.conversation(active),
        closed=desk.conversation(closed),
        full=desk.conversation(full),
        blocked_client_id=blocked_client_id,
    )


@pytest.fixture
def world(tmp_path, clock, channel) -> Iterator[World]:
    w = _build(str(tmp_path / "refusals.db"), clock, channel)
    try:
        yield w
    finally:
        w.vetoing.shutdown()
        w.desk.shutdown()


@attrs.frozen
class Case:
    """A refused command, the error it must raise, the attributes that error carries (computed
    from the world) and the words its message must contain so a person can act on it."""

    name: str
    command: Callable[[World], object]
    error: type[JivoError]
    details: Callable[[World], dict[str, Any]] = lambda w: {}
    mentions: Callable[[World], list[str]] = lambda w: []


LONG = "x" * 20_001  # one more than the default max_message_chars

CASES = [
    # --- wrong state ---------------------------------------------------------------------
    Case(
        "accept a closed conversation",
        lambda w: w.desk.accept(w.closed.id, w.cara.id),
        InvalidTransition,
        lambda w: {"state": State.CLOSED, "command": "accept"},
        lambda w: ["closed", "inbox"],
    ),
    Case(
        "accept an active conversation",
        lambda w: w.desk.accept(w.active.id, w.cara.id),
        InvalidTransition,
        lambda w: {"owner_id": w.ann.id, "conversation_id": w.active.id, "state": State.ACTIVE},
        lambda w: [w.active.id, "Ann"],
    ),
    Case(
        "ignore an active conversation",
        lambda w: w.desk.ignore(w.active.id, w.cara.id),
        InvalidTransition,
        lambda w: {"state": State.ACTIVE, "command": "ignore"},
        lambda w: ["active", "inbox"],
    ),
    Case(
        "client_left on an active conversation",
        lambda w: w.desk.client_left(w.active.id),
        InvalidTransition,
        lambda w: {"state": State.ACTIVE, "command": "client_left"},
        lambda w: ["active", "inbox"],
    ),
    Case(
        "reply to an inbox conversation",
        lambda w: w.desk.reply(w.inbox.id, w.ann.id, "hello"),
        InvalidTransition,
        lambda w: {"state": State.INBOX, "command": "reply"},
        lambda w: ["inbox", "active"],
    ),
    Case(
        "close a closed conversation",
        lambda w: w.desk.close(w.closed.id, w.ann.id),
        InvalidTransition,
        lambda w: {"state": State.CLOSED, "command": "close"},
        lambda w: ["closed"],
    ),
    Case(
        "join an active conversation one already takes part in",
        lambda w: w.desk.join(w.active.id, w.bob.id),
        InvalidTransition,
        lambda w: {"conversation_id": w.active.id},
        lambda w: ["Bob", w.active.id],
    ),
    Case(
        "invite a colleague who already takes part",
        lambda w: w.desk.invite(w.active.id, w.ann.id, w.bob.id),
        InvalidTransition,
        lambda w: {"conversation_id": w.active.id},
        lambda w: ["Bob", w.active.id],
    ),
    Case(
        "unblock a client who is not blocked",
        lambda w: w.desk.unblock(w.inbox.client_id, w.ann.id),
        InvalidTransition,
        lambda w: {"client_id": w.inbox.client_id},
        lambda w: [w.inbox.client_id, "not blocked"],
    ),
    # --- who may -------------------------------------------------------------------------
    Case(
        "accept by an offline operator",
        lambda w: w.desk.accept(w.inbox.id, w.dan.id),
        PermissionDenied,
        lambda w: {"operator_id": w.dan.id, "command": "accept"},
        lambda w: ["Dan", "offline"],
    ),
    Case(
        "accept by an away operator",
        lambda w: w.desk.accept(w.inbox.id, w.eve.id),
        PermissionDenied,
        lambda w: {"operator_id": w.eve.id, "command": "accept"},
        lambda w: ["Eve", "away"],
    ),
    Case(
        "ignore by an offline operator",
        lambda w: w.desk.ignore(w.inbox.id, w.dan.id),
        PermissionDenied,
        lambda w: {"operator_id": w.dan.id, "command": "ignore"},
        lambda w: ["Dan", "offline"],
    ),
    Case(
        "accept over capacity",
        lambda w: w.desk.accept(w.inbox.id, w.fay.id),
        PermissionDenied,
        lambda w: {"operator_id": w.fay.id, "command": "accept"},
        lambda w: ["Fay", "capacity"],
    ),
    Case(
        "reply by a non-participant",
        lambda w: w.desk.reply(w.active.id, w.cara.id, "me too"),
        PermissionDenied,
        lambda w: {"operator_id": w.cara.id, "conversation_id": w.active.id},
        lambda w: ["Cara", w.active.id],
    ),
    Case(
        "leave by a non-participant",
        lambda w: w.desk.leave(w.active.id, w.cara.id),
        PermissionDenied,
        lambda w: {"operator_id": w.cara.id, "conversation_id": w.active.id},
        lambda w: ["Cara", w.active.id],
    ),
    Case(
        "invite by a non-participant",
        lambda w: w.desk.invite(w.active.id, w.cara.id, w.fay.id),
        PermissionDenied,
        lambda w: {"operator_id": w.cara.id, "conversation_id": w.active.id},
        lambda w: ["Cara", w.active.id],
    ),
    Case(
        "the owner leaves",
        lambda w: w.desk.leave(w.active.id, w.ann.id),
        PermissionDenied,
        lambda w: {"operator_id": w.ann.id, "conversation_id": w.active.id},
        lambda w: ["Ann", w.active.id, "transfer"],
    ),
    Case(
        "transfer to an offline colleague",
        lambda w: w.desk.transfer(w.active.id, w.ann.id, w.dan.id),
        PermissionDenied,
        lambda w: {"operator_id": w.dan.id, "command": "transfer"},
        lambda w: ["Dan", "offline"],
    ),
    Case(
        "transfer to an away colleague",
        lambda w: w.desk.transfer(w.active.id, w.ann.id, w.eve.id),
        PermissionDenied,
        lambda w: {"operator_id": w.eve.id, "command": "transfer"},
        lambda w: ["Eve", "away"],
    ),
    Case(
        "invite an offline colleague",
        lambda w: w.desk.invite(w.active.id, w.ann.id, w.dan.id),
        PermissionDenied,
        lambda w: {"operator_id": w.dan.id, "command": "invite"},
        lambda w: ["Dan", "offline"],
    ),
    Case(
        "transfer by a participant who is neither owner nor manager",
        lambda w: w.desk.transfer(w.active.id, w.bob.id, w.cara.id),
        PermissionDenied,
        lambda w: {"operator_id": w.bob.id, "conversation_id": w.active.id},
        lambda w: ["Ann", w.active.id, "transfer"],
    ),
    Case(
        "close by a participant who is not the owner",
        lambda w: w.desk.close(w.active.id, w.bob.id),
        PermissionDenied,
        lambda w: {"operator_id": w.bob.id, "conversation_id": w.active.id},
        lambda w: ["Ann", w.active.id, "close"],
    ),
    Case(
        "join an archived conversation one may not see",
        lambda w: w.desk.join(w.closed.id, w.cara.id),
        PermissionDenied,
        lambda w: {"operator_id": w.cara.id, "conversation_id": w.closed.id},
        lambda w: ["Cara", w.closed.id],
    ),
    Case(
        "join an active conversation one may not see",
        lambda w: w.desk.join(w.active.id, w.cara.id),
        PermissionDenied,
        lambda w: {"operator_id": w.cara.id, "conversation_id": w.active.id},
        lambda w: ["Cara", w.active.id],
    ),
    # --- blocked client: refused, nothing stored -----------------------------------------
    Case(
        "receive from a blocked client",
        lambda w: w.desk.receive("web", "visitor-blocked", "let me in"),
        ClientBlocked,
        lambda w: {"client_id": w.blocked_client_id},
        lambda w: [w.blocked_client_id, "blocked"],
    ),
    Case(
        "receive from a blocked client, with the channel's message id",
        lambda w: w.desk.receive("web", "visitor-blocked", "let me in", message_id="web-m-9"),
        ClientBlocked,
        lambda w: {"client_id": w.blocked_client_id},
        lambda w: [w.blocked_client_id, "blocked"],
    ),
    # --- unknown ids ---------------------------------------------------------------------
    Case(
        "accept an unknown conversation",
        lambda w: w.desk.accept("no-such-conversation", w.ann.id),
        NotFoundError,
        lambda w: {"id": "no-such-conversation", "entity": "Conversation"},
        lambda w: ["no-such-conversation", "conversation"],
    ),
    Case(
        "accept by an unknown operator",
        lambda w: w.desk.accept(w.inbox.id, "no-such-operator"),
        NotFoundError,
        lambda w: {"id": "no-such-operator", "entity": "Operator"},
        lambda w: ["no-such-operator", "operator"],
    ),
    Case(
        "reply by an unknown operator",
        lambda w: w.desk.reply(w.active.id, "no-such-operator", "hi"),
        NotFoundError,
        lambda w: {"id": "no-such-operator", "entity": "Operator"},
        lambda w: ["no-such-operator"],
    ),
    Case(
        "transfer to an unknown colleague",
        lambda w: w.desk.transfer(w.active.id, w.ann.id, "no-such-colleague"),
        NotFoundError,
        lambda w: {"id": "no-such-colleague", "entity": "Operator"},
        lambda w: ["no-such-colleague"],
    ),
    Case(
        "client_left on an unknown conversation",
        lambda w: w.desk.client_left("no-such-conversation"),
        NotFoundError,
        lambda w: {"id": "no-such-conversation", "entity": "Conversation"},
        lambda w: ["no-such-conversation"],
    ),
    Case(
        "block an unknown client",
        lambda w: w.desk.block("no-such-client", w.ann.id),
        NotFoundError,
        lambda w: {"id": "no-such-client", "entity": "Client"},
        lambda w: ["no-such-client", "client"],
    ),
    Case(
        "block by an unknown operator",
        lambda w: w.desk.block(w.inbox.client_id, "no-such-operator"),
        NotFoundError,
        lambda w: {"id": "no-such-operator", "entity": "Operator"},
        lambda w: ["no-such-operator"],
    ),
    Case(
        "unblock an unknown client",
        lambda w: w.desk.unblock("no-such-client", w.ann.id),
        NotFoundError,
        lambda w: {"id": "no-such-client", "entity": "Client"},
        lambda w: ["no-such-client"],
    ),
    # --- input that can never be accepted ------------------------------------------------
    Case(
        "receive an empty message",
        lambda w: w.desk.receive("web", "visitor-new", ""),
        ValidationError,
    ),
    Case(
        "receive a blank message",
        lambda w: w.desk.receive("web", "visitor-inbox", "  \n\t "),
        ValidationError,
    ),
    Case(
        "receive an over-long message",
        lambda w: w.desk.receive("web", "visitor-inbox", LONG),
        ValidationError,
        lambda w: {"limit": 20_000},
        lambda w: ["20000", "20001"],
    ),
    Case(
        "reply with an empty message",
        lambda w: w.desk.reply(w.active.id, w.ann.id, ""),
        ValidationError,
    ),
    Case(
        "reply with an over-long message",
        lambda w: w.desk.reply(w.active.id, w.ann.id, LONG),
        ValidationError,
        lambda w: {"limit": 20_000},
        lambda w: ["20000", "20001"],
    ),
    Case(
        "receive through an unknown channel",
        lambda w: w.desk.receive("carrier-pigeon", "visitor-inbox", "coo"),
        ValidationError,
        lambda w: {"channel": "carrier-pigeon"},
        lambda w: ["carrier-pigeon", "web"],
    ),
    Case(
        "block for a negative time",
        lambda w: w.desk.block(w.inbox.client_id, w.ann.id, duration=timedelta(hours=-1)),
        ValidationError,
    ),
    Case(
        "receive without the client's id on the channel",
        lambda w: w.desk.receive("web", "", "hello"),
        ValidationError,
    ),
    Case(
        "receive a conversation of an unknown kind",
        lambda w: w.desk.receive("web", "visitor-video", "hello", kind="video"),
        ValidationError,
        lambda w: {},
        lambda w: ["video"],
    ),
    Case(
        "set an unknown presence",
        lambda w: w.desk.set_presence(w.cara.id, "busy"),
        ValidationError,
        lambda w: {},
        lambda w: ["busy"],
    ),
    Case(
        "set the presence of an unknown operator",
        lambda w: w.desk.set_presence("no-such-operator", "online"),
        NotFoundError,
        lambda w: {"id": "no-such-operator", "entity": "Operator"},
        lambda w: ["no-such-operator"],
    ),
    Case(
        "add an operator with an unknown role",
        lambda w: w.desk.add_operator("Gus", role="boss"),
        ValidationError,
        lambda w: {},
        lambda w: ["boss"],
    ),
    Case(
        "add an operator without a name",
        lambda w: w.desk.add_operator("  "),
        ValidationError,
    ),
    # --- someone else changed it first ---------------------------------------------------
    Case(
        "save an operator edited from a stale copy",
        lambda w: w.desk.update_operator(attrs.evolve(w.stale_cara, name="Carla")),
        ConflictError,
        lambda w: {"id": w.cara.id, "expected": w.stale_cara.version, "actual": w.cara.version},
        lambda w: [w.cara.id, "reload"],
    ),
    # --- a plugin says no ----------------------------------------------------------------
    Case(
        "accept vetoed by a plugin",
        lambda w: w.vetoing.accept(w.inbox.id, w.ann.id),
        Vetoed,
        lambda w: {"plugin": VETO_PLUGIN, "command": "accept", "reason": VETO_REASON},
        lambda w: [VETO_PLUGIN, VETO_REASON, "accept"],
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_a_refused_command_raises_precisely_and_changes_nothing(world: World, case: Case):
    before = dump(world.path)

    with pytest.raises(JivoError) as caught:
        case.command(world)

    error = caught.value
    assert type(error) is case.error, f"{case.name}: {type(error).__name__}: {error}"
    for name, expected in case.details(world).items():
        assert getattr(error, name, "<missing>") == expected, (name, error)
    message = str(error)
    for words in case.mentions(world):
        assert words in message, f"{message!r} does not mention {words!r}"
    assert dump(world.path) == before, f"{case.name} changed the database"


def test_the_builtin_base_classes_fit():
    """NotFoundError is a LookupError and ValidationError a ValueError, so hosts may catch
    either family without knowing jivocore."""
    assert issubclass(NotFoundError, LookupError)
    assert issubclass(ValidationError, ValueError)
    for case in CASES:
        assert issubclass(case.error, JivoError)


def test_the_desk_still_works_after_each_kind_of_refusal(world: World):
    """A refusal leaves nothing half-done behind in the desk either (no open transaction on
    the thread's connection): the same desk carries on."""
    for case in CASES:
        with pytest.raises(Exception):  # noqa: B017 - which one is the test above's concern
            case.command(world)
    accepted = world.desk.accept(world.inbox.id, world.cara.id)
    assert accepted.owner_id == world.cara.id
    message = world.desk.reply(world.active.id, world.bob.id, "I'm here too")
    assert message.seq == world.active.message_count + 1


def test_a_blocked_client_leaves_no_trace(world: World):
    conversations = world.desk.archive(where={"client_id": world.blocked_client_id}).items
    events = world.desk.events({"client_id": world.blocked_client_id}).items
    with pytest.raises(ClientBlocked):
        world.desk.receive("web", "visitor-blocked", "it's me again")
    assert world.desk.archive(where={"client_id": world.blocked_client_id}).items == conversations
    assert world.desk.events({"client_id": world.blocked_client_id}).items == events
    assert all(c.state is State.CLOSED for c in conversations)


def test_every_error_names_the_http_status_an_api_answers_with():
    import jivocore.errors

    errors = [
        cls
        for cls in vars(jivocore.errors).values()
        if isinstance(cls, type) and issubclass(cls, JivoError)
    ]
    assert len(errors) == 12
    for cls in errors:
        status = cls("x", retriable=True).http_status
        assert isinstance(status, int) and 400 <= status <= 599, cls
    assert ValidationError("x").http_status == 422
    assert NotFoundError("x").http_status == 404
    assert jivocore.errors.StorageError("x", retriable=True).http_status == 503
    assert jivocore.errors.StorageError("x", retriable=False).http_status == 500
