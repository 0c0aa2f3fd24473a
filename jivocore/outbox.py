"""The transactional outbox: operator messages leave through their channels, retried until sent.

A reply commits with a `Delivery` row (status ``pending``); `deliver` sends the due ones. Each is
claimed first with a compare-and-set lease, so of two workers only one sends it; a worker that
dies mid-send leaves it to be retried when the lease runs out. A failed send is retried with
exponential back-off; after ``delivery_attempts`` (or at once, for `Undeliverable`) it is
``dead`` until someone retries it by hand (`retry`).

Order: a conversation's deliveries go out in message order. One that is backing off, or that
another worker holds, holds back the later ones of its conversation; a dead one does not.
Blocking a client refuses what they send, not what was already said to them: replies committed
before the block still go out (often the operator's last word explains the block), and as a
blocked client has no open conversation, no new reply can be written to them. Retrying a dead
delivery by hand is a new decision, so it is refused while the client is blocked.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import attrs

from .channels import DeliveryStatus, Outbound
from .entities import Client, ClientIdentity, Conversation, Delivery, Message
from .errors import ClientBlocked, ConflictError, InvalidTransition, NotFoundError, Undeliverable
from .storage import Page, Range, Transaction, Where

if TYPE_CHECKING:
    from .desk import HelpDesk, Work

PENDING, SENT, DEAD = DeliveryStatus.PENDING, DeliveryStatus.SENT, DeliveryStatus.DEAD
_HELD = "held"  # another worker claimed it first


def deliver(desk: HelpDesk, *, limit: int = 100) -> int:
    """Send up to `limit` due deliveries, each conversation's in message order; returns how
    many went out."""
    now = desk.clock.now()
    with desk.reading() as tx:
        due = list(
            tx.select(
                Delivery,
                {"status": PENDING, "due": Range(le=now)},
                order=("due",),
                limit=limit,
            )
        )
    sent = 0
    done: set[str] = set()
    for delivery in due:
        if sent >= limit:
            break
        if delivery.conversation_id in done:
            continue
        done.add(delivery.conversation_id)
        sent += _deliver_conversation(desk, delivery.conversation_id, limit - sent)
    return sent


def _deliver_conversation(desk: HelpDesk, conversation_id: str, limit: int) -> int:
    """Send the conversation's pending deliveries in message order, up to the first that is not
    due or not sent: a later reply never overtakes an earlier one still on its way."""
    with desk.reading() as tx:
        waiting = sorted(
            (tx.get(Message, d.message_id).seq, d)
            for d in tx.select(Delivery, {"status": PENDING, "conversation_id": conversation_id})
        )
    sent = 0
    for _, delivery in waiting:
        if sent >= limit or delivery.due > desk.clock.now():
            break
        outcome = _deliver_one(desk, delivery)
        if outcome == SENT:
            sent += 1
        elif outcome != DEAD:  # backing off, or held by another worker: the rest wait
            break
    return sent


def _deliver_one(desk: HelpDesk, delivery: Delivery) -> str:
    """Claim, send and record one delivery; returns its status after, or ``_HELD``."""
    attempt = delivery.attempts + 1
    lease = timedelta(seconds=float(desk.settings["delivery_lease"]))

    def claim(work: Work) -> tuple[Delivery, Outbound]:
        tx = work.tx
        message = tx.get(Message, delivery.message_id)
        conversation = tx.get(Conversation, delivery.conversation_id)
        client = tx.get(Client, conversation.client_id)
        identity = next(
            tx.select(ClientIdentity, {"client_id": client.id, "channel": delivery.channel}),
            None,
        )
        claimed = tx.update(attrs.evolve(delivery, attempts=attempt, due=work.now + lease))
        return claimed, Outbound(
            message=message,
            conversation=conversation,
            client=client,
            identity=identity,
            attempt=attempt,
        )

    try:
        delivery, outbound = desk.run(claim, retry=False)
    except ConflictError:
        return _HELD
    channel = desk.channels.get(delivery.channel)
    error: str | None = None
    final = False
    external_id: str | None = None
    if channel is None:
        error = f"channel {delivery.channel!r} is not installed"
    else:
        try:
            external_id = channel.send(outbound)
        except Undeliverable as exc:
            error, final = f"undeliverable: {exc}", True
        except Exception as exc:  # a channel's failure is retried, never lost
            error = f"{type(exc).__name__}: {exc}"

    def record(work: Work) -> str:
        conversation = outbound.conversation
        if error is None:
            work.tx.update(attrs.evolve(delivery, status=SENT, error=None))
            work.record(
                "delivered",
                conversation=conversation,
                message_id=delivery.message_id,
                external_id=external_id,
                attempt=attempt,
            )
            return SENT
        dead = final or attempt >= int(desk.settings["delivery_attempts"])
        backoff = float(desk.settings["delivery_backoff"]) * 2 ** (attempt - 1)
        work.tx.update(
            attrs.evolve(
                delivery,
                error=error,
                status=DEAD if dead else PENDING,
                due=work.now + timedelta(seconds=backoff),
            )
        )
        work.record(
            "delivery_dead" if dead else "delivery_failed",
            conversation=conversation,
            message_id=delivery.message_id,
            error=error,
            attempt=attempt,
        )
        return DEAD if dead else PENDING

    return desk.run(record, retry=False)


def find(tx: Transaction, message_id: str) -> Delivery | None:
    """The delivery of an operator's message, or None (a client's message has none)."""
    return next(tx.select(Delivery, {"message_id": message_id}, limit=1), None)


def get(tx: Transaction, message_id: str) -> Delivery:
    """The delivery of an operator's message, or NotFoundError."""
    found = find(tx, message_id)
    if found is None:
        raise NotFoundError(
            f"message {message_id} has no delivery (only operators' messages go out)",
            entity="deliveries",
            id=message_id,
        )
    return found


def retry(desk: HelpDesk, message_id: str, operator_id: str) -> Delivery:
    """Put a dead delivery back in the outbox, due now, with its attempts counted afresh."""

    def change(work: Work) -> Delivery:
        operator = work.operator(operator_id)
        delivery = find(work.tx, message_id)
        if delivery is None:
            raise InvalidTransition(
                f"message {message_id} has no delivery (only operators' messages go out)",
                message_id=message_id,
            )
        if delivery.status != DEAD:
            raise InvalidTransition(
                f"the delivery of message {message_id} is {delivery.status}, not dead",
                message_id=message_id,
                status=delivery.status,
            )
        conversation = work.tx.get(Conversation, delivery.conversation_id)
        client = work.tx.get(Client, conversation.client_id)
        if client.blocked(work.now):
            raise ClientBlocked(
                f"client {client.name or client.id} is blocked; unblock them first",
                client_id=client.id,
            )
        saved = work.tx.update(
            attrs.evolve(delivery, status=PENDING, attempts=0, due=work.now, error=None)
        )
        work.record(
            "delivery_retried",
            actor_id=operator.id,
            conversation=conversation,
            message_id=message_id,
        )
        return saved

    return desk.run(change)


def page(desk: HelpDesk, where: Where | None, *, after: str | None, limit: int) -> Page[Delivery]:
    with desk.reading() as tx:
        return tx.page(Delivery, where, order=("id",), after=after, limit=limit)
