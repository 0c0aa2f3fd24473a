"""The channel contract suite: a base class of tests that every channel adapter's test module
subclasses, as `jivocore.testing.storage.StorageContract` is for storage backends.

The suite drives the adapter from both of its ends: the desk's (commands, ``deliver``) and the
far side's (a client writing in over the real transport, what the client receives). An
adapter's test module says how to reach the far side::

    from jivocore.testing.channels import ChannelContract

    class TestMyChannel(ChannelContract):
        def make_channel(self, tmp_path):
            return MyChannel(...)            # not started; the suite starts it with the desk

        def deliver_inbound(self, channel, client_id, text, message_id):
            ...                              # the client writes in; False if refused
            return True

        def received_outbound(self, channel):
            return [(client_id, text), ...]  # what clients received, in order

        def set_outbound_down(self, channel, down):
            ...                              # the far side stops (and starts) taking messages

Each test gets a fresh instance of the class, so a subclass may keep its far side (a sink
server, ...) on ``self``. `make_channel` is called a second time with the same ``tmp_path``
when a test restarts the host: the new channel must reach the same far side.

It checks: inbound opens a conversation and a redelivery is stored once; replies go out once,
are retried with back-off while the far side is down, are dead after the last attempt and can
be retried by hand; a conversation's replies go out in order; a blocked client is refused; and
a host that stops loses nothing it acknowledged or queued.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from ..channels import Channel, DeliveryStatus
from ..clock import FakeClock
from ..desk import HelpDesk
from ..entities import Author, ClientIdentity, Conversation, Message, Operator, State
from ..errors import ClientBlocked
from . import channel_plugin

__all__ = ["ChannelContract", "Rig"]

BACKOFF = 5.0  # seconds before the first retry in the suite's desks
ATTEMPTS = 3  # sends before a delivery is dead in the suite's desks


@attrs.define
class Rig:
    """A started desk (on a SQLite file, with a fake clock) and the channel under test."""

    desk: HelpDesk
    channel: Channel
    clock: FakeClock
    operator: Operator

    def conversation_of(self, client_id: str) -> Conversation:
        """The client's latest conversation on the channel."""
        with self.desk.reading() as tx:
            identity = next(
                tx.select(ClientIdentity, {"channel": self.channel.name, "external_id": client_id})
            )
            return next(
                tx.select(
                    Conversation,
                    {"client_id": identity.client_id, "channel": self.channel.name},
                    order=("-created",),
                    limit=1,
                )
            )

    def messages_of(self, client_id: str) -> list[Message]:
        with self.desk.reading() as tx:
            identity = next(
                tx.select(ClientIdentity, {"channel": self.channel.name, "external_id": client_id}),
                None,
            )
            if identity is None:
                return []
            return [
                m
                for c in tx.select(Conversation, {"client_id": identity.client_id})
                for m in tx.select(Message, {"conversation_id": c.id}, order=("seq",))
            ]


class ChannelContract:
    """The channel contract, as tests. Subclass it and override the four methods that reach the
    far side; `client_id`, `desk_plugins` and `settings` have defaults."""

    # --- what an adapter's test module provides --------------------------------------------------

    def make_channel(self, tmp_path: Path) -> Channel:
        """A new, unstarted channel whose far side this test can reach."""
        raise NotImplementedError

    def deliver_inbound(self, channel: Channel, client_id: str, text: str, message_id: str) -> bool:
        """The client `client_id` writes `text` in over the channel's transport, with the far
        side's id `message_id` for the message. Returns once the adapter answered: True if it
        took the message, False if it refused it (a blocked client, a stopped adapter)."""
        raise NotImplementedError

    def received_outbound(self, channel: Channel) -> Sequence[tuple[str, str]]:
        """What clients received so far, in order: (client id, text) pairs."""
        raise NotImplementedError

    def set_outbound_down(self, channel: Channel, down: bool) -> None:
        """Make the far side refuse (``down=True``) or take again what the channel sends."""
        raise NotImplementedError

    def client_id(self, n: int) -> str:
        """The id of the n-th test client on this channel, as the adapter names clients."""
        return f"client-{n}"

    def desk_plugins(self, channel: Channel) -> list[object]:
        """The plugins that register `channel` (besides the installed ones)."""
        return [channel_plugin(channel)]

    def settings(self) -> dict[str, Any]:
        """Settings of the suite's desks; an adapter adds its own."""
        return {"delivery_backoff": BACKOFF, "delivery_attempts": ATTEMPTS}

    # --- the rig ---------------------------------------------------------------------------------

    def open_rig(self, tmp_path: Path, clock: FakeClock) -> Rig:
        channel = self.make_channel(tmp_path)
        desk = HelpDesk.open(
            str(tmp_path / "channel-contract.db"),
            clock=clock,
            plugins=self.desk_plugins(channel),
            settings=self.settings(),
        )
        try:
            desk.start_channels()
        except BaseException:
            desk.shutdown()
            raise
        operator = next((o for o in desk.operators() if o.name == "Ann"), None)
        if operator is None:
            operator = desk.add_operator("Ann", presence="online")
        return Rig(desk=desk, channel=channel, clock=clock, operator=operator)

    def close_rig(self, rig: Rig) -> None:
        try:
            rig.desk.stop_channels()
        finally:
            rig.desk.shutdown()

    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[Rig]:
        rig = self.open_rig(tmp_path, FakeClock())
        try:
            yield rig
        finally:
            self.close_rig(rig)

    def _write_in(self, rig: Rig, n: int, text: str, message_id: str) -> Conversation:
        client = self.client_id(n)
        assert self.deliver_inbound(rig.channel, client, text, message_id), (
            f"the adapter refused {client}'s message"
        )
        return rig.conversation_of(client)

    def _accepted(self, rig: Rig, n: int = 1) -> Conversation:
        conversation = self._write_in(rig, n, "hello", f"contract-{n}-hello")
        return rig.desk.accept(conversation.id, rig.operator.id)

    # --- inbound ---------------------------------------------------------------------------------

    def test_is_a_channel(self, rig: Rig) -> None:
        assert isinstance(rig.channel, Channel)
        assert rig.desk.channels[rig.channel.name] is rig.channel

    def test_inbound_opens_an_inbox_conversation(self, rig: Rig) -> None:
        conversation = self._write_in(rig, 1, "hello, is anyone there?", "contract-1")
        assert conversation.state is State.INBOX
        assert conversation.channel == rig.channel.name
        (message,) = rig.messages_of(self.client_id(1))
        assert message.author is Author.CLIENT
        assert message.text.strip() == "hello, is anyone there?"
        assert conversation.id in [c.id for c in rig.desk.inbox(rig.operator.id)]

    def test_inbound_redelivery_is_stored_once(self, rig: Rig) -> None:
        first = self._write_in(rig, 1, "hello", "contract-1")
        again = self._write_in(rig, 1, "hello", "contract-1")
        assert again.id == first.id
        assert [m.text.strip() for m in rig.messages_of(self.client_id(1))] == ["hello"]
        self._write_in(rig, 1, "anyone?", "contract-2")
        assert [(m.seq, m.text.strip()) for m in rig.messages_of(self.client_id(1))] == [
            (1, "hello"),
            (2, "anyone?"),
        ]
        assert rig.desk.conversation(first.id).message_count == 2

    def test_clients_are_told_apart(self, rig: Rig) -> None:
        one = self._write_in(rig, 1, "from one", "contract-1")
        two = self._write_in(rig, 2, "from two", "contract-2")
        assert one.id != two.id and one.client_id != two.client_id

    # --- outbound --------------------------------------------------------------------------------

    def test_reply_is_delivered_once(self, rig: Rig) -> None:
        conversation = self._accepted(rig)
        reply = rig.desk.reply(conversation.id, rig.operator.id, "Hi! How can I help?")
        assert rig.desk.delivery(reply.id).status == DeliveryStatus.PENDING
        assert rig.desk.deliver() == 1
        assert self._received(rig) == [(self.client_id(1), "Hi! How can I help?")]
        delivery = rig.desk.delivery(reply.id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.SENT, 1)
        rig.clock.advance(3600)
        assert rig.desk.deliver() == 0
        assert len(self._received(rig)) == 1

    def test_failed_send_is_retried_with_backoff(self, rig: Rig) -> None:
        conversation = self._accepted(rig)
        self.set_outbound_down(rig.channel, True)
        reply = rig.desk.reply(conversation.id, rig.operator.id, "are you still there?")
        assert rig.desk.deliver() == 0
        delivery = rig.desk.delivery(reply.id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
        assert delivery.error
        self.set_outbound_down(rig.channel, False)
        assert rig.desk.deliver() == 0, "a retry waits for its back-off"
        rig.clock.advance(BACKOFF)
        assert rig.desk.deliver() == 1
        assert self._received(rig) == [(self.client_id(1), "are you still there?")]
        rig.clock.advance(3600)
        assert rig.desk.deliver() == 0
        assert len(self._received(rig)) == 1
        assert rig.desk.delivery(reply.id).status == DeliveryStatus.SENT

    def test_dead_after_the_last_attempt_and_retried_by_hand(self, rig: Rig) -> None:
        conversation = self._accepted(rig)
        self.set_outbound_down(rig.channel, True)
        reply = rig.desk.reply(conversation.id, rig.operator.id, "one last try")
        for _ in range(ATTEMPTS):
            assert rig.desk.deliver() == 0
            rig.clock.advance(BACKOFF * 2**ATTEMPTS)
        delivery = rig.desk.delivery(reply.id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.DEAD, ATTEMPTS)
        dead = rig.desk.deliveries({"status": DeliveryStatus.DEAD}).items
        assert [d.message_id for d in dead] == [reply.id]
        self.set_outbound_down(rig.channel, False)
        rig.clock.advance(3600)
        assert rig.desk.deliver() == 0, "a dead delivery is retried only by hand"
        rig.desk.retry_delivery(reply.id, rig.operator.id)
        assert rig.desk.deliver() == 1
        assert self._received(rig) == [(self.client_id(1), "one last try")]

    def test_replies_go_out_in_order(self, rig: Rig) -> None:
        conversation = self._accepted(rig)
        self.set_outbound_down(rig.channel, True)
        rig.desk.reply(conversation.id, rig.operator.id, "first")
        assert rig.desk.deliver() == 0
        self.set_outbound_down(rig.channel, False)
        rig.desk.reply(conversation.id, rig.operator.id, "second")
        rig.desk.reply(conversation.id, rig.operator.id, "third")
        other = self._accepted(rig, 2)
        rig.desk.reply(other.id, rig.operator.id, "meanwhile")
        assert rig.desk.deliver() == 1, "only the other conversation's reply may go out"
        assert self._received(rig) == [(self.client_id(2), "meanwhile")]
        rig.clock.advance(BACKOFF)
        assert rig.desk.deliver() == 3
        mine = [text for client, text in self._received(rig) if client == self.client_id(1)]
        assert mine == ["first", "second", "third"]

    # --- blocked clients -------------------------------------------------------------------------

    def test_a_blocked_client_is_refused(self, rig: Rig) -> None:
        conversation = self._write_in(rig, 1, "hello", "contract-1")
        rig.desk.block(conversation.client_id, rig.operator.id)
        client = self.client_id(1)
        assert not self.deliver_inbound(rig.channel, client, "let me in", "contract-2")
        assert [m.text.strip() for m in rig.messages_of(client)] == ["hello"]
        with pytest.raises(ClientBlocked):
            rig.desk.receive(rig.channel.name, client, "directly")

    def test_a_reply_written_before_the_block_still_goes_out(self, rig: Rig) -> None:
        conversation = self._accepted(rig)
        rig.desk.reply(conversation.id, rig.operator.id, "you are blocked for abuse")
        rig.desk.block(conversation.client_id, rig.operator.id)
        assert rig.desk.deliver() == 1
        assert self._received(rig) == [(self.client_id(1), "you are blocked for abuse")]

    # --- start, stop, restart --------------------------------------------------------------------

    def test_stop_twice_and_restart(self, tmp_path: Path) -> None:
        rig = self.open_rig(tmp_path, FakeClock())
        self.close_rig(rig)
        rig.desk.stop_channels()  # again: harmless
        again = self.open_rig(tmp_path, rig.clock)
        try:
            self._write_in(again, 1, "back again", "contract-1")
        finally:
            self.close_rig(again)

    def test_shutdown_loses_nothing(self, tmp_path: Path) -> None:
        rig = self.open_rig(tmp_path, FakeClock())
        try:
            conversation = self._accepted(rig)
            self._write_in(rig, 1, "and one more thing", "contract-1-more")
            rig.desk.reply(conversation.id, rig.operator.id, "queued one")
            rig.desk.reply(conversation.id, rig.operator.id, "queued two")
        finally:
            self.close_rig(rig)
        assert not self.deliver_inbound(
            rig.channel, self.client_id(1), "while stopped", "contract-1-stopped"
        ), "a stopped adapter must refuse inbound messages, not take and drop them"
        rig.clock.advance(1)
        again = self.open_rig(tmp_path, rig.clock)
        try:
            texts = [m.text.strip() for m in again.messages_of(self.client_id(1))]
            assert texts == ["hello", "and one more thing", "queued one", "queued two"]
            assert again.desk.deliver() == 2
            assert self._received(again) == [
                (self.client_id(1), "queued one"),
                (self.client_id(1), "queued two"),
            ]
            again.clock.advance(timedelta(hours=1))
            assert again.desk.deliver() == 0
        finally:
            self.close_rig(again)

    def _received(self, rig: Rig) -> list[tuple[str, str]]:
        return [(client, text.strip()) for client, text in self.received_outbound(rig.channel)]
