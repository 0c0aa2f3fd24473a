"""The channel contract: how an adapter (web chat, email, phone, ...) meets the desk.

Inbound, an adapter calls ``desk.receive(channel, external_client_id, text, message_id=...)``;
the channel's message id makes a redelivery land once. Outbound, operator replies wait in the
transactional outbox and ``desk.deliver()`` hands each to the channel's ``send``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

from .entities import Client, ClientIdentity, Conversation, Message


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
    raises to ask for a retry later."""

    name: str

    def send(self, outbound: Outbound) -> str | None: ...
