"""The channel contract: how an adapter (web chat, email, phone, ...) meets the desk.

An adapter is an object with a ``name`` and a ``send(outbound)`` method, registered with the
``jivocore_register_channels`` hook. Optionally it has ``start(desk)`` and ``stop()``, which the
host calls through ``desk.start_channels()`` and ``desk.stop_channels()``.

- **Inbound**, the adapter calls ``desk.receive(name, external_client_id, text, message_id=...)``
  with the client's identity on the channel and the channel's id for the message, so a
  redelivery is stored once. It reports a client leaving with
  ``desk.client_gone(name, external_client_id)``. It acknowledges a message to the far side only
  once ``receive`` has returned: what was acknowledged is committed. A blocked client's message
  raises ``ClientBlocked``; the adapter refuses it on its transport.
- **Outbound**, operator replies wait in the transactional outbox (see `jivocore.outbox`), and
  ``desk.deliver()`` hands each to ``send`` in the conversation's message order. ``send``
  returns the channel's id for what it sent (or None); raising asks for a retry with back-off,
  and raising `Undeliverable` says a retry cannot help, so the delivery is dead at once.
- **Start and stop**: ``start(desk)`` opens the adapter's servers or connections and keeps the
  desk for inbound work; ``stop()`` stops taking inbound messages, finishes the ones in flight
  and returns. Both may be called on a channel in any state; ``stop()`` twice is harmless.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import attrs

from .entities import Client, ClientIdentity, Conversation, Message
from .errors import Undeliverable


class DeliveryStatus(enum.StrEnum):
    """Where an operator's message is on its way out (``Delivery.status``)."""

    PENDING = "pending"  # waiting, being sent, or backing off after a failure
    SENT = "sent"  # the channel took it
    DEAD = "dead"  # the last attempt failed, or a retry could not help; retried only by hand


@attrs.frozen(kw_only=True)
class Outbound:
    """An operator's message on its way to the client."""

    message: Message
    conversation: Conversation
    client: Client
    identity: ClientIdentity | None  # who the client is on this channel, when known
    attempt: int  # 1 for the first try


@runtime_checkable
class Channel(Protocol):
    """A channel adapter. ``send`` returns the channel's id for the sent message (or None) and
    raises to ask for a retry later (`Undeliverable`: never retry). It may also have
    ``start(desk)`` and ``stop()``; see the module's docstring."""

    name: str

    def send(self, outbound: Outbound) -> str | None: ...


__all__ = [
    "Channel",
    "DeliveryStatus",
    "Outbound",
    "Undeliverable",
]
