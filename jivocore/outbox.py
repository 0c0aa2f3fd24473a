"""The transactional outbox: operator messages leave through their channels, retried until sent.

A reply commits with a `Delivery` row; `deliver` sends the due ones. Each is claimed first with a
compare-and-set lease, so of two workers only one sends it; a worker that dies mid-send leaves it
to be retried when the lease runs out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import attrs

from .channels import Outbound
from .entities import Client, ClientIdentity, Conversation, Delivery, Message
from .errors import ConflictError
from .storage import Range

if TYPE_CHECKING:
    from .desk import HelpDesk, Work


def deliver(desk: HelpDesk, *, limit: int = 100) -> int:
    """Send up to `limit` due deliveries; returns how many went out."""
    with desk.reading() as tx:
        due = list(
            tx.select(
                Delivery,
                {"status": "pending", "due": Range(le=desk.clock.now())},
                order=("due",),
                limit=limit,
            )
        )
    return sum(_deliver_one(desk, delivery) for delivery in due)


def _deliver_one(desk: HelpDesk, delivery: Delivery) -> int:
    attempt = delivery.attempts + 1
    lease = timedelta(seconds=float(desk.settings["delivery_lease"]))
    try:
        delivery = desk.run(
            lambda work: work.tx.update(
                attrs.evolve(delivery, attempts=attempt, due=work.now + lease)
            ),
            retry=False,
        )
    except ConflictError:
        return 0  # another worker claimed it
    with desk.reading() as tx:
        message = tx.get(Message, delivery.message_id)
        conversation = tx.get(Conversation, delivery.conversation_id)
        client = tx.get(Client, conversation.client_id)
        identity = next(
            tx.select(ClientIdentity, {"client_id": client.id, "channel": delivery.channel}),
            None,
        )
    channel = desk.channels.get(delivery.channel)
    error: str | None = None
    external_id: str | None = None
    if channel is None:
        error = f"channel {delivery.channel!r} is not installed"
    else:
        try:
            external_id = channel.send(
                Outbound(
                    message=message,
                    conversation=conversation,
                    client=client,
                    identity=identity,
                    attempt=attempt,
                )
            )
        except Exception as exc:  # a channel's failure is retried, never lost
            error = f"{type(exc).__name__}: {exc}"

    def change(work: Work) -> int:
        if error is None:
            work.tx.update(attrs.evolve(delivery, status="sent", error=None))
            work.record(
                "delivered",
                conversation=conversation,
                message_id=message.id,
                external_id=external_id,
            )
            return 1
        dead = attempt >= int(desk.settings["delivery_attempts"])
        backoff = float(desk.settings["delivery_backoff"]) * 2 ** (attempt - 1)
        work.tx.update(
            attrs.evolve(
                delivery,
                error=error,
                status="dead" if dead else "pending",
                due=work.now + timedelta(seconds=backoff),
            )
        )
        work.record(
            "delivery_dead" if dead else "delivery_failed",
            conversation=conversation,
            message_id=message.id,
            error=error,
            attempt=attempt,
        )
        return 0

    return desk.run(change, retry=False)
