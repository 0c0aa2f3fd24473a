"""Notifications (`jivocore_events_committed`) come after commit, carry the command's events in
order, and one plugin that raises neither undoes the command nor silences the others."""

from __future__ import annotations

import logging
import sqlite3
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import Any

import pytest

from jivocore import Event, HelpDesk, InvalidTransition, State, hookimpl
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin


def listener(name: str, react: Callable[[Sequence[Event]], None]) -> types.ModuleType:
    """A notification plugin named `name`, shaped as a module is."""
    plugin = types.ModuleType(name)

    @hookimpl
    def jivocore_events_committed(events: Sequence[Event]) -> None:
        react(events)

    plugin.jivocore_events_committed = jivocore_events_committed  # type: ignore[attr-defined]
    return plugin


class Recorder:
    """Keeps each notification's events."""

    def __init__(self, name: str) -> None:
        self.calls: list[tuple[Event, ...]] = []
        self.plugin = listener(name, lambda events: self.calls.append(tuple(events)))


def _all_events(desk: HelpDesk) -> list[Event]:
    found: list[Event] = []
    after = None
    while True:
        page = desk.events(after=after, limit=500)
        found += page.items
        if page.next is None:
            return found
        after = page.next


def _stored_events_since(desk: HelpDesk, seen: Sequence[Event]) -> list[Event]:
    known = {e.id for e in seen}
    return [e for e in _all_events(desk) if e.id not in known]


class Broken(RuntimeError):
    pass


def _raise(events: Sequence[Event]) -> None:
    raise Broken(f"the listener broke on {events[0].type}")


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "notify.db")


@pytest.fixture
def channels() -> tuple[RecordingChannel, RecordingChannel]:
    return RecordingChannel("web"), RecordingChannel("mail")


def _open(path: str, clock: FakeClock, channels, *plugins: object) -> HelpDesk:
    return HelpDesk.open(path, clock=clock, plugins=[channel_plugin(*channels), *plugins])


@pytest.fixture
def broken_world(path, clock, channels) -> Iterator[tuple[HelpDesk, Recorder, Recorder]]:
    first, last = Recorder("jivocore_first_listener"), Recorder("jivocore_last_listener")
    broken = listener("jivocore_broken_listener", _raise)
    with _open(path, clock, channels, first.plugin, broken, last.plugin) as desk:
        yield desk, first, last


def test_a_raising_listener_neither_undoes_the_command_nor_silences_the_others(
    broken_world, path, clock, channels, caplog
):
    desk, first, last = broken_world
    ann = desk.add_operator("Ann", presence="online")
    caplog.clear()
    caplog.set_level(logging.ERROR, logger="jivocore")
    seen = _all_events(desk)

    message = desk.receive("web", "visitor-1", "hello")
    accepted = desk.accept(message.conversation_id, ann.id)

    # Committed: a fresh desk on the file sees both changes.
    with _open(path, clock, channels) as fresh:
        assert [m.id for m in fresh.messages(message.conversation_id)] == [message.id]
        conversation = fresh.conversation(message.conversation_id)
        assert conversation.state is State.ACTIVE
        assert conversation.owner_id == ann.id
        stored = _stored_events_since(fresh, seen)

    # Both other plugins, registered before and after the broken one, heard the same thing:
    # one notification per command, holding exactly the events that command committed.
    assert first.calls[-2:] == last.calls[-2:]
    received, accepting = last.calls[-2:]
    assert [e.type for e in received] == ["client_added", "received"]
    assert received[-1].data["message_id"] == message.id
    assert [e.type for e in accepting] == ["accepted", "responsible_set"]
    assert accepting[0].conversation_id == accepted.id
    assert [*received, *accepting] == stored

    # The failure is logged, once per command, naming the plugin, with its traceback.
    failures = [r for r in caplog.records if r.name == "jivocore" and r.levelno >= logging.ERROR]
    assert len(failures) == 2
    for record in failures:
        assert "jivocore_broken_listener" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], Broken)


def test_every_listener_hears_every_command_despite_a_broken_one(broken_world, caplog):
    desk, first, last = broken_world
    caplog.set_level(logging.CRITICAL, logger="jivocore")
    ann = desk.add_operator("Ann", presence="online")
    bob = desk.add_operator("Bob", presence="online")
    cara = desk.add_operator("Cara", presence="online")
    conversation_id = desk.receive("web", "visitor-1", "hi").conversation_id
    desk.accept(conversation_id, ann.id)
    desk.reply(conversation_id, ann.id, "hello, how can I help?")
    desk.invite(conversation_id, ann.id, cara.id)
    desk.transfer(conversation_id, ann.id, bob.id)
    desk.close(conversation_id, bob.id)

    assert len(first.calls) == len(last.calls) == 9
    assert first.calls == last.calls
    assert [e for call in last.calls for e in call] == _all_events(desk)


def test_notifications_carry_the_commands_events_in_order_after_commit(path, clock, channels):
    """Each notification holds the events of the command that just committed, in the order
    they were appended; a listener reading the file through a connection of its own finds
    them (and the change they describe) already there."""
    heard: list[tuple[Event, ...]] = []
    on_disk: list[dict[str, Any]] = []

    def look_at_the_file(events: Sequence[Event]) -> None:
        heard.append(tuple(events))
        with closing(sqlite3.connect(path)) as conn:
            marks = ", ".join("?" * len(events))
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM events WHERE id IN ({marks}) ORDER BY id",
                    [e.id for e in events],
                )
            ]
            states = {}
            for e in events:
                if e.conversation_id is not None:
                    row = conn.execute(
                        "SELECT state FROM conversations WHERE id = ?", (e.conversation_id,)
                    ).fetchone()
                    states[e.conversation_id] = row and row[0]
            messages = {
                e.data["message_id"]: conn.execute(
                    "SELECT count(*) FROM messages WHERE id = ?", (e.data["message_id"],)
                ).fetchone()[0]
                for e in events
                if "message_id" in e.data
            }
        on_disk.append({"event_ids": ids, "states": states, "messages": messages})

    with _open(path, clock, channels, listener("jivocore_file_reader", look_at_the_file)) as desk:
        ann = desk.add_operator("Ann", presence="online")
        web = desk.receive("web", "visitor-1", "hello", name="Vic")
        client_id = desk.conversation(web.conversation_id).client_id
        mail = desk.receive("mail", "someone@example.org", "by mail")
        desk.accept(web.conversation_id, ann.id)
        reply = desk.reply(web.conversation_id, ann.id, "hi Vic")
        clock.advance(5)
        blocked = desk.block(desk.conversation(mail.conversation_id).client_id, ann.id)

        commands = [
            ["operator_added"],
            ["client_added", "received"],
            ["client_added", "received"],
            ["accepted", "responsible_set"],
            ["replied"],
            ["blocked", "client_blocked"],
        ]
        assert [[e.type for e in call] for call in heard] == commands
        for call, disk in zip(heard, on_disk, strict=True):
            ids = [e.id for e in call]
            assert ids == sorted(ids), "events come in the order they were appended"
            assert disk["event_ids"] == ids, "a listener ran before its events were committed"
            assert all(disk["messages"].values()), disk
        assert on_disk[3]["states"] == {web.conversation_id: "active"}
        assert on_disk[4]["messages"] == {reply.id: 1}
        assert on_disk[5]["states"] == {mail.conversation_id: "closed"}
        assert heard[5][-1].client_id == blocked.id
        assert blocked.id != client_id
        assert desk.conversation(web.conversation_id).state is State.ACTIVE

        # What was heard is exactly what the log holds, event for event.
        assert [e for call in heard for e in call] == _all_events(desk)


def test_a_refused_command_notifies_nobody(path, clock, channels):
    first, last = Recorder("jivocore_first_listener"), Recorder("jivocore_last_listener")
    with _open(path, clock, channels, first.plugin, last.plugin) as desk:
        ann = desk.add_operator("Ann", presence="online")
        bob = desk.add_operator("Bob", presence="online")
        conversation_id = desk.receive("web", "visitor-1", "hi").conversation_id
        desk.accept(conversation_id, ann.id)
        heard = list(last.calls)
        assert first.calls == heard

        with pytest.raises(InvalidTransition):
            desk.accept(conversation_id, bob.id)
        with pytest.raises(InvalidTransition):
            desk.ignore(conversation_id, bob.id)
        with pytest.raises(LookupError):
            desk.close("no-such-conversation", ann.id)
        with pytest.raises(ValueError):
            desk.reply(conversation_id, ann.id, "")

        assert first.calls == last.calls == heard


def test_a_reply_is_heard_as_it_is_logged(path, clock, channels):
    """The "replied" event a listener hears is the one the log holds: the same data, the
    message id and sequence number included."""
    recorder = Recorder("jivocore_listener")
    with _open(path, clock, channels, recorder.plugin) as desk:
        ann = desk.add_operator("Ann", presence="online")
        conversation_id = desk.receive("web", "visitor-1", "hi").conversation_id
        desk.accept(conversation_id, ann.id)
        reply = desk.reply(conversation_id, ann.id, "hello")

        (heard,) = recorder.calls[-1]
        (logged,) = desk.events({"type": "replied", "conversation_id": conversation_id}).items
        assert heard.data["message_id"] == reply.id
        assert logged.data.get("message_id") == reply.id
        assert logged.data.get("seq") == reply.seq
        assert heard == logged
