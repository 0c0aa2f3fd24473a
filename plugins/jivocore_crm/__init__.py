"""jivocore_crm: the client side of the CRM: statuses, responsible operator, custom fields,
client filters with counts, merging two clients, and the daily work list (`today`).

Clients are core entities (see docs/decisions.md); this plugin adds the commands and queries a
CRM needs on top of them. Deals and tasks come from `jivocore_deals` and `jivocore_tasks`, which
keep `Client.open_deals` and `Client.next_task_due` current, so every client filter here is one
indexed query on every backend. See docs/crm.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, time, timedelta
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

import attrs
import click

from jivocore import (
    Client,
    HasAll,
    HasAny,
    HelpDesk,
    IdOf,
    In,
    Operator,
    Page,
    PermissionDenied,
    Range,
    State,
    Transaction,
    ValidationError,
    Where,
    Work,
    hookimpl,
)

T = TypeVar("T")
BATCH = 500  # entities moved per batch by a merge
_OPEN = (State.INBOX, State.ACTIVE)

DEFAULT_STATUSES = ("new", "lead", "customer", "inactive")
SETTINGS: Mapping[str, Any] = {
    "client_statuses": DEFAULT_STATUSES,  # the statuses a client may have; the first is a new one's
    "crm_timezone": "UTC",  # where "today" starts and ends
    "crm_search_limit": 1000,  # the most clients a free-text filter considers
    "crm_count_limit": 1000,  # a listing's count stops here (then it is a floor)
    "crm_stale_days": 7.0,  # an open deal untouched this long needs action
    "crm_new_hours": 24.0,  # a client assigned this recently is "newly assigned"
}


def setting(desk: HelpDesk, name: str) -> Any:
    return desk.settings.get(name, SETTINGS[name])


@attrs.frozen
class Listing(Generic[T]):
    """One page of a filtered listing, with how many match in all. `next` resumes after it.
    `exact` is False when `count` is a floor: counting stopped at `crm_count_limit`, or a
    free-text filter met `crm_search_limit`."""

    items: tuple[T, ...]
    next: str | None
    count: int
    exact: bool = True


# --- who sees what ----------------------------------------------------------------------------


def sees_all(operator: Operator) -> bool:
    """Whether the operator sees every client (`HelpDesk.sees_client` for any client)."""
    return operator.is_manager or operator.sees_all


def scope(operator: Operator) -> dict[str, Any]:
    """The condition that keeps a client query to the clients the operator may see: the query
    form of `HelpDesk.sees_client`."""
    return {} if sees_all(operator) else {"involved": HasAny({operator.id})}


def visible_client(tx: Transaction, operator: Operator, client_id: str) -> Client:
    """The client, or PermissionDenied unless `HelpDesk.sees_client` allows it."""
    client = tx.get(Client, client_id)
    if not HelpDesk.sees_client(operator, client):
        raise PermissionDenied(
            f"{operator.name} ({operator.id}) may not see client {client_id}",
            operator_id=operator.id,
            client_id=client_id,
        )
    return client


def client_scope(operator: Operator) -> dict[str, Any]:
    """The condition that keeps a query of what belongs to clients (deals, tasks: a `client_id`
    field) to the clients the operator may see: one query, however many clients those are."""
    return {} if sees_all(operator) else {"client_id": IdOf(Client, scope(operator))}


def involve(work: Work, client: Client, operator_id: str | None) -> Client:
    """Make the operator one who may see the client (a deal or task given to them): as the core
    does for the responsible operator."""
    if operator_id is None or operator_id in client.involved:
        return client
    work.operator(operator_id)
    return work.tx.update(attrs.evolve(client, involved=client.involved | {operator_id}))


def day_bounds(desk: HelpDesk, now: datetime) -> tuple[datetime, datetime]:
    """Where the day holding `now` starts and ends (UTC), in the desk's `crm_timezone`."""
    zone = ZoneInfo(str(setting(desk, "crm_timezone")))
    local = now.astimezone(zone).date()
    start = datetime.combine(local, time(), tzinfo=zone)
    end = datetime.combine(local + timedelta(days=1), time(), tzinfo=zone)
    return start.astimezone(now.tzinfo), end.astimezone(now.tzinfo)


# --- statuses, responsible, custom fields -----------------------------------------------------


def statuses(desk: HelpDesk) -> tuple[str, ...]:
    """The client statuses this desk allows (setting ``client_statuses``)."""
    return tuple(setting(desk, "client_statuses"))


def _status(desk: HelpDesk, status: str) -> str:
    allowed = statuses(desk)
    if status not in allowed:
        raise ValidationError(
            f"{status!r} is not a client status; choose one of: {', '.join(allowed)}",
            field="status",
            value=status,
        )
    return status


def add_client(
    desk: HelpDesk,
    operator_id: str,
    name: str,
    *,
    emails: Sequence[str] = (),
    phones: Sequence[str] = (),
    status: str | None = None,
    custom: Mapping[str, str] | None = None,
    responsible_id: str | None = None,
) -> Client:
    """A client added by hand by an operator, who becomes responsible unless another is named."""
    desk.operator(operator_id)
    return desk.add_client(
        name,
        emails=emails,
        phones=phones,
        status=_status(desk, status or statuses(desk)[0]),
        custom=custom,
        responsible_id=responsible_id or operator_id,
    )


_UNSET: Any = object()


def edit_client(
    desk: HelpDesk,
    client_id: str,
    operator_id: str,
    *,
    name: str = _UNSET,
    emails: Sequence[str] = _UNSET,
    phones: Sequence[str] = _UNSET,
    status: str = _UNSET,
    responsible_id: str | None = _UNSET,
    custom: Mapping[str, str | None] = _UNSET,
) -> Client:
    """Change a client's fields; `custom` sets fields (None removes one). A new responsible
    operator is recorded as ``responsible_set``, as the first accept records it."""
    if status is not _UNSET:
        _status(desk, status)

    def change(work: Work) -> Client:
        operator = work.operator(operator_id)
        client = visible_client(work.tx, operator, client_id)
        edits: dict[str, Any] = {}
        if name is not _UNSET:
            edits["name"] = str(name)
        if emails is not _UNSET:
            edits["emails"] = tuple(emails)
        if phones is not _UNSET:
            edits["phones"] = tuple(phones)
        if status is not _UNSET:
            edits["status"] = status
        if custom is not _UNSET:
            fields = dict(client.custom)
            for key, value in custom.items():
                if value is None:
                    fields.pop(key, None)
                else:
                    fields[str(key)] = str(value)
            edits["custom"] = fields
        edited = attrs.evolve(client, **edits)
        if responsible_id is not _UNSET and responsible_id != client.responsible_id:
            edits["responsible_id"] = responsible_id
            edited = edited.given_to(responsible_id, work.now)
            if responsible_id is not None:
                work.operator(responsible_id)
                work.record(
                    "responsible_set",
                    actor_id=operator_id,
                    client_id=client_id,
                    responsible_id=responsible_id,
                )
        if edited == client:
            return client
        saved = work.tx.update(edited)
        work.record(
            "client_updated", actor_id=operator_id, client_id=client_id, fields=sorted(edits)
        )
        return saved

    return desk.run(change)


# --- filters ----------------------------------------------------------------------------------


def _strings(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


@attrs.frozen(kw_only=True)
class ClientFilter:
    """Which clients to list; every condition given must hold.

    :param responsible_id: the responsible operator.
    :param statuses: any of these statuses.
    :param tags: tags the client carries: any of them, or all with `all_tags`.
    :param open_deals: only clients with at least one open deal.
    :param tasks_due: only clients with an undone task due today (in ``crm_timezone``) or
        overdue.
    :param text: every word appears in the name, an email or a phone (whole words).
    """

    responsible_id: str | None = None
    statuses: frozenset[str] = attrs.field(default=frozenset(), converter=_strings)
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_strings)
    all_tags: bool = False
    open_deals: bool = False
    tasks_due: bool = False
    text: str = ""

    def where(self, desk: HelpDesk, now: datetime) -> dict[str, Any]:
        """The filter in the storage contract's language."""
        where: dict[str, Any] = {}
        if self.responsible_id is not None:
            where["responsible_id"] = self.responsible_id
        if self.statuses:
            where["status"] = In(self.statuses)
        if self.tags:
            where["tags"] = HasAll(self.tags) if self.all_tags else HasAny(self.tags)
        if self.open_deals:
            where["open_deals"] = Range(gt=0)
        if self.tasks_due:
            where["next_task_due"] = Range(lt=day_bounds(desk, now)[1])
        return where


def find_clients(
    desk: HelpDesk,
    operator_id: str,
    filter: ClientFilter | None = None,
    *,
    order: Sequence[str] = ("-created",),
    after: str | None = None,
    limit: int = 50,
) -> Listing[Client]:
    """A page of the clients the operator may see that match `filter`, in `order` (client
    fields, ``-`` for descending), with how many match (see `Listing` for when it is a floor)."""
    filter = filter or ClientFilter()
    now = desk.clock.now()
    with desk.reading() as tx:
        operator = tx.get(Operator, operator_id)
        where = {**filter.where(desk, now), **scope(operator)}
        if filter.text.strip():
            return _search(desk, tx, filter.text, where, order, after, limit)
        page = tx.page(Client, where, order=order, after=after, limit=limit)
        return counted(desk, tx, Client, where, page)


def counted(
    desk: HelpDesk, tx: Transaction, cls: type[T], where: Where, page: Page[T]
) -> Listing[T]:
    """`page` with the count of what matches `where`, which stops at `crm_count_limit`: counting
    every match of a broad filter would read an index entry per match (~25 ms for 250,000)."""
    bound = int(setting(desk, "crm_count_limit"))
    count = tx.count(cls, where, limit=bound)
    return Listing(page.items, page.next, count, exact=count < bound)


def _search(
    desk: HelpDesk,
    tx: Transaction,
    text: str,
    where: Where,
    order: Sequence[str],
    after: str | None,
    limit: int,
) -> Listing[Client]:
    """Free text with the other filters: the `crm_search_limit` best matches, in `order`."""
    bound = int(setting(desk, "crm_search_limit"))
    page, count = tx.search_page(
        Client, text, where, window=bound, order=order, after=after, limit=limit
    )
    return Listing(page.items, page.next, count, exact=count < bound)


__all__ = [
    "DEFAULT_STATUSES",
    "SETTINGS",
    "ClientFilter",
    "Listing",
    "Today",
    "add_client",
    "client_scope",
    "counted",
    "day_bounds",
    "edit_client",
    "find_clients",
    "involve",
    "merge_clients",
    "scope",
    "sees_all",
    "setting",
    "statuses",
    "today",
    "visible_client",
]


# --- merging two clients ----------------------------------------------------------------------


def _union(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *second]))


def merge_clients(desk: HelpDesk, survivor_id: str, merged_id: str, operator_id: str) -> Client:
    """Merge client `merged_id` into `survivor_id` in one transaction: identities,
    conversations (with the client's messages), deals, tasks, tags, contacts and custom fields
    move to the survivor; the merged client is deleted and the merge recorded as
    ``clients_merged``. Refused (InvalidTransition) while both have an open conversation on the
    same channel: close one first."""
    from jivocore import ClientIdentity, Conversation, InvalidTransition, Message

    if survivor_id == merged_id:
        raise ValidationError("a client cannot be merged into themselves")

    def change(work: Work) -> Client:
        operator = work.operator(operator_id)
        survivor = visible_client(work.tx, operator, survivor_id)
        merged = visible_client(work.tx, operator, merged_id)
        open_channels = {
            c.channel
            for c in work.tx.select(Conversation, {"client_id": survivor_id, "state": In(_OPEN)})
        }
        for conversation in work.tx.select(
            Conversation, {"client_id": merged_id, "state": In(_OPEN)}
        ):
            if conversation.channel in open_channels:
                raise InvalidTransition(
                    f"both clients have an open conversation on {conversation.channel}; close "
                    "one before merging",
                    channel=conversation.channel,
                )
        moved: dict[str, int] = {}
        moved["identities"] = _move(work, ClientIdentity, merged_id, survivor_id)
        moved["conversations"] = 0
        moved["messages"] = 0
        while batch := list(work.tx.select(Conversation, {"client_id": merged_id}, limit=BATCH)):
            for conversation in batch:
                work.tx.update(attrs.evolve(conversation, client_id=survivor_id))
                while messages := list(
                    work.tx.select(
                        Message,
                        {"conversation_id": conversation.id, "author_id": merged_id},
                        limit=BATCH,
                    )
                ):
                    for message in messages:
                        work.tx.update(attrs.evolve(message, author_id=survivor_id))
                    moved["messages"] += len(messages)
            moved["conversations"] += len(batch)
        if "deals" in desk.entity_types:
            import jivocore_deals

            moved["deals"] = jivocore_deals.move_deals(work, merged_id, survivor_id)
        if "tasks" in desk.entity_types:
            import jivocore_tasks

            moved["tasks"] = jivocore_tasks.move_tasks(work, merged_id, survivor_id)
        dues = [d for d in (survivor.next_task_due, merged.next_task_due) if d is not None]
        responsible = survivor if survivor.responsible_id else merged
        combined = attrs.evolve(
            survivor,
            name=survivor.name or merged.name,
            emails=_union(survivor.emails, merged.emails),
            phones=_union(survivor.phones, merged.phones),
            responsible_id=responsible.responsible_id,
            responsible_at=responsible.responsible_at,
            involved=survivor.involved | merged.involved,
            tags=survivor.tags | merged.tags,
            custom={**merged.custom, **survivor.custom},
            block=survivor.block or merged.block,
            created=min(survivor.created, merged.created),
            open_deals=survivor.open_deals + merged.open_deals,
            next_task_due=min(dues) if dues else None,
        )
        work.tx.delete(merged)
        saved = work.tx.update(combined)
        work.record(
            "clients_merged",
            actor_id=operator_id,
            client_id=survivor_id,
            merged_id=merged_id,
            merged_name=merged.name,
            moved=moved,
        )
        return saved

    return desk.run(change)


def _move(work: Work, cls: type[Any], from_id: str, to_id: str) -> int:
    moved = 0
    while batch := list(work.tx.select(cls, {"client_id": from_id}, limit=BATCH)):
        for entity in batch:
            work.tx.update(attrs.evolve(entity, client_id=to_id))
        moved += len(batch)
    return moved


# --- the daily work list ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Today:
    """An operator's work for the day.

    :param tasks: their undone tasks due today or overdue, most overdue first.
    :param deals: their open deals needing action: untouched for ``crm_stale_days`` (7) days,
        longest untouched first.
    :param clients: clients made their responsibility in the last ``crm_new_hours`` (24),
        newest first.
    """

    tasks: tuple[Any, ...]
    deals: tuple[Any, ...]
    clients: tuple[Client, ...]


def today(desk: HelpDesk, operator_id: str, *, limit: int = 50) -> Today:
    """The operator's daily work list (see `Today`); each part holds at most `limit`."""
    now = desk.clock.now()
    end = day_bounds(desk, now)[1]
    stale = now - timedelta(days=float(setting(desk, "crm_stale_days")))
    since = now - timedelta(hours=float(setting(desk, "crm_new_hours")))
    with desk.reading() as tx:
        operator = tx.get(Operator, operator_id)
        tasks: tuple[Any, ...] = ()
        deals: tuple[Any, ...] = ()
        if "tasks" in desk.entity_types:
            import jivocore_tasks

            tasks = tuple(
                tx.select(
                    jivocore_tasks.Task,
                    {"assignee_id": operator_id, "done": False, "due": Range(lt=end)},
                    order=("due",),
                    limit=limit,
                )
            )
        if "deals" in desk.entity_types:
            import jivocore_deals

            deals = tuple(
                tx.select(
                    jivocore_deals.Deal,
                    {
                        "responsible_id": operator_id,
                        "status": jivocore_deals.DealStatus.OPEN,
                        "updated": Range(le=stale),
                    },
                    order=("updated",),
                    limit=limit,
                )
            )
        # Responsibility is given by the first accept or an edit, each recorded as
        # responsible_set and stamped on the client as `responsible_at`: an indexed range.
        clients = tx.select(
            Client,
            {
                "responsible_id": operator_id,
                "responsible_at": Range(ge=since),
                **scope(operator),
            },
            order=("-responsible_at",),
            limit=limit,
        )
        return Today(tasks=tasks, deals=deals, clients=tuple(clients))


@hookimpl
def jivocore_register_commands(register: Callable[[click.Command], None]) -> None:
    from .cli import clients_command, today_command

    register(clients_command)
    register(today_command)
