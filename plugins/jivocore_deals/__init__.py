"""jivocore_deals: deals on a client: title, amount and currency, a stage in a configurable
pipeline, a responsible operator, open/won/lost, timestamps; "create deal" from a conversation.

Each command keeps the client's `open_deals` count in the same transaction, so client filters
answer "has open deals" from an index. An operator sees the deals of the clients they see.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import cattrs

from jivocore import (
    Client,
    EntityType,
    HelpDesk,
    In,
    InvalidTransition,
    Operator,
    ValidationError,
    Work,
    hookimpl,
    new_id,
)
from jivocore_crm import Listing, client_scope, counted, involve, visible_client

DEFAULT_PIPELINE = ("new", "qualified", "proposal", "negotiation")


class DealStatus(enum.StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


@attrs.frozen(kw_only=True)
class Deal:
    id: str
    version: int = 0
    client_id: str
    title: str
    amount: Decimal = Decimal(0)
    currency: str = "USD"  # ISO 4217
    stage: str
    status: DealStatus = DealStatus.OPEN
    responsible_id: str | None = None
    conversation_id: str | None = None  # the conversation it was created from
    created: datetime
    updated: datetime
    closed: datetime | None = None  # when it was won or lost


@hookimpl
def jivocore_prepare_converter(converter: cattrs.Converter) -> None:
    # Exact: "12.50" is stored as written, never 12.5000001.
    converter.register_unstructure_hook(Decimal, str)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(str(value)))


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    register(
        EntityType(
            name="deals",
            cls=Deal,
            # Listings' order (-updated), for each status, a stage of the pipeline, and all.
            indexes=(
                ("client_id", "status"),
                ("responsible_id", "status", "updated"),
                ("status", "updated"),
                ("status", "stage", "updated"),
                ("updated",),
            ),
        )
    )


@hookimpl
def jivocore_register_commands(register: Callable[[Any], None]) -> None:
    from .cli import deals_command

    register(deals_command)


def pipeline(desk: HelpDesk) -> tuple[str, ...]:
    """The stages of an open deal, in order (setting ``deal_pipeline``)."""
    return tuple(desk.settings.get("deal_pipeline", DEFAULT_PIPELINE))


def _stage(desk: HelpDesk, stage: str | None) -> str:
    stages = pipeline(desk)
    if stage is None:
        return stages[0]
    if stage not in stages:
        raise ValidationError(
            f"{stage!r} is not a stage of the pipeline; choose one of: {', '.join(stages)}",
            field="stage",
        )
    return stage


def _amount(amount: Decimal | int | str) -> Decimal:
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValidationError(f"an amount is a number, not {amount!r}", field="amount") from None
    if not value.is_finite() or value < 0:
        raise ValidationError(f"an amount is zero or more, not {amount!r}", field="amount")
    return value


def _currency(currency: str) -> str:
    code = str(currency).strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise ValidationError(f"a currency is an ISO 4217 code, not {currency!r}")
    return code


def _recount(work: Work, client_id: str) -> None:
    client = work.tx.get(Client, client_id)
    count = work.tx.count(Deal, {"client_id": client_id, "status": DealStatus.OPEN})
    if client.open_deals != count:
        work.tx.update(attrs.evolve(client, open_deals=count))


def _deal_for(work: Work, operator_id: str, deal_id: str) -> Deal:
    deal = work.tx.get(Deal, deal_id)
    visible_client(work.tx, work.operator(operator_id), deal.client_id)
    return deal


def create_deal(
    desk: HelpDesk,
    client_id: str,
    operator_id: str,
    title: str,
    *,
    amount: Decimal | int | str = 0,
    currency: str = "USD",
    stage: str | None = None,
    responsible_id: str | None = None,
    conversation_id: str | None = None,
) -> Deal:
    """A new open deal on the client, at the pipeline's first stage unless `stage` is given;
    its responsible operator is `responsible_id` or the operator creating it, who may then see
    the client."""
    if not title.strip():
        raise ValidationError("a deal needs a title", field="title")
    value, code, at = _amount(amount), _currency(currency), _stage(desk, stage)

    def change(work: Work) -> Deal:
        client = visible_client(work.tx, work.operator(operator_id), client_id)
        responsible = responsible_id or operator_id
        involve(work, client, responsible)
        deal = work.tx.add(
            Deal(
                id=new_id(work.now),
                client_id=client_id,
                title=title.strip(),
                amount=value,
                currency=code,
                stage=at,
                responsible_id=responsible,
                conversation_id=conversation_id,
                created=work.now,
                updated=work.now,
            )
        )
        _recount(work, client_id)
        work.record(
            "deal_created",
            actor_id=operator_id,
            client_id=client_id,
            deal_id=deal.id,
            amount=str(value),
            currency=code,
        )
        return deal

    return desk.run(change)


def deal_from_conversation(
    desk: HelpDesk, conversation_id: str, operator_id: str, title: str, **details: Any
) -> Deal:
    """ "Create deal" from a conversation's info panel: a deal on its client, linked to it."""
    conversation = desk.conversation(conversation_id)
    return create_deal(
        desk,
        conversation.client_id,
        operator_id,
        title,
        conversation_id=conversation_id,
        **details,
    )


_UNSET: Any = object()


def update_deal(
    desk: HelpDesk,
    deal_id: str,
    operator_id: str,
    *,
    title: str = _UNSET,
    amount: Decimal | int | str = _UNSET,
    currency: str = _UNSET,
    stage: str = _UNSET,
    responsible_id: str = _UNSET,
) -> Deal:
    """Change an open deal's title, amount, currency, stage or responsible operator."""
    edits: dict[str, Any] = {}
    if title is not _UNSET:
        edits["title"] = title.strip()
    if amount is not _UNSET:
        edits["amount"] = _amount(amount)
    if currency is not _UNSET:
        edits["currency"] = _currency(currency)
    if stage is not _UNSET:
        edits["stage"] = _stage(desk, stage)

    def change(work: Work) -> Deal:
        deal = _deal_for(work, operator_id, deal_id)
        if deal.status is not DealStatus.OPEN:
            raise InvalidTransition(f"deal {deal_id} is {deal.status}; reopen it first")
        changes = dict(edits)
        if responsible_id is not _UNSET:
            involve(work, work.tx.get(Client, deal.client_id), responsible_id)
            changes["responsible_id"] = responsible_id
        saved = work.tx.update(attrs.evolve(deal, updated=work.now, **changes))
        work.record(
            "deal_updated",
            actor_id=operator_id,
            client_id=deal.client_id,
            deal_id=deal_id,
            fields=sorted(changes),
        )
        return saved

    return desk.run(change)


def set_status(desk: HelpDesk, deal_id: str, operator_id: str, status: DealStatus | str) -> Deal:
    """Win, lose or reopen a deal."""
    try:
        new = DealStatus(status)
    except ValueError:
        raise ValidationError(f"a deal is open, won or lost, not {status!r}") from None

    def change(work: Work) -> Deal:
        deal = _deal_for(work, operator_id, deal_id)
        if deal.status is new:
            raise InvalidTransition(f"deal {deal_id} is already {new}", deal_id=deal_id)
        saved = work.tx.update(
            attrs.evolve(
                deal,
                status=new,
                updated=work.now,
                closed=None if new is DealStatus.OPEN else work.now,
            )
        )
        _recount(work, deal.client_id)
        event = {"open": "deal_reopened", "won": "deal_won", "lost": "deal_lost"}[new.value]
        work.record(event, actor_id=operator_id, client_id=deal.client_id, deal_id=deal_id)
        return saved

    return desk.run(change)


def get_deal(desk: HelpDesk, deal_id: str, operator_id: str) -> Deal:
    with desk.reading() as tx:
        deal = tx.get(Deal, deal_id)
        visible_client(tx, tx.get(Operator, operator_id), deal.client_id)
        return deal


def find_deals(
    desk: HelpDesk,
    operator_id: str,
    *,
    client_id: str | None = None,
    status: DealStatus | str | None = None,
    stages: Sequence[str] = (),
    responsible_id: str | None = None,
    order: Sequence[str] = ("-updated",),
    after: str | None = None,
    limit: int = 50,
) -> Listing[Deal]:
    """A page of the deals of clients the operator may see, filtered, with their count."""
    where: dict[str, Any] = {}
    if status is not None:
        where["status"] = DealStatus(status)
    if stages:
        where["stage"] = In(stages)
    if responsible_id is not None:
        where["responsible_id"] = responsible_id
    with desk.reading() as tx:
        operator = tx.get(Operator, operator_id)
        if client_id is not None:
            visible_client(tx, operator, client_id)
            where["client_id"] = client_id
        else:
            where.update(client_scope(operator))
        page = tx.page(Deal, where, order=order, after=after, limit=limit)
        return counted(desk, tx, Deal, where, page)


def move_deals(work: Work, from_client_id: str, to_client_id: str) -> int:
    """Give every deal of one client to another, within a command (used by a client merge)."""
    moved = 0
    while batch := list(work.tx.select(Deal, {"client_id": from_client_id}, limit=500)):
        for deal in batch:
            work.tx.update(attrs.evolve(deal, client_id=to_client_id))
        moved += len(batch)
    return moved


__all__ = [
    "DEFAULT_PIPELINE",
    "Deal",
    "DealStatus",
    "create_deal",
    "deal_from_conversation",
    "find_deals",
    "get_deal",
    "move_deals",
    "pipeline",
    "set_status",
    "update_deal",
]
