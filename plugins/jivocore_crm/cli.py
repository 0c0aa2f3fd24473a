"""`jivocore clients` and `jivocore today`: the client filters and the daily work list."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from jivocore import HelpDesk
from jivocore.cli import pass_desk

from . import ClientFilter, find_clients, today


def echo_listing(listing: object, rows: list[str]) -> None:
    for row in rows:
        click.echo(row)
    count, exact, after = (getattr(listing, n) for n in ("count", "exact", "next"))
    click.echo(
        f"-- {count}{'' if exact else '+'} in all" + (f"; next: --after {after}" if after else "")
    )


_FILTER_OPTIONS = (
    click.option("--responsible", "responsible_id", help="The responsible operator's id."),
    click.option("--status", "statuses", multiple=True, help="Any of these statuses (repeat)."),
    click.option("--tag", "tags", multiple=True, help="Carrying any of these tags (repeat)."),
    click.option("--all-tags", is_flag=True, help="Carrying every --tag, not any."),
    click.option("--open-deals", is_flag=True, help="With at least one open deal."),
    click.option("--tasks-due", is_flag=True, help="With a task due today or overdue."),
    click.option("--text", default="", help="Words in the name, an email or a phone."),
)


_FILTER_FIELDS = (
    "responsible_id",
    "statuses",
    "tags",
    "all_tags",
    "open_deals",
    "tasks_due",
    "text",
)


def client_filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The client filter's options (`--responsible`, `--status`, `--tag`, ...), handed to the
    command as one `filter: ClientFilter`: every command that lists clients filters alike."""

    @functools.wraps(command)
    def with_filter(*args: Any, **kwargs: Any) -> Any:
        filter = ClientFilter(**{name: kwargs.pop(name) for name in _FILTER_FIELDS})
        return command(*args, filter=filter, **kwargs)

    for option in reversed(_FILTER_OPTIONS):  # listed in --help in this order
        with_filter = option(with_filter)
    return with_filter


@click.command("clients")
@click.option("--operator", "operator_id", required=True, help="Whose view: who may see what.")
@client_filter_options
@click.option("--order", default="-created", show_default=True, help="Fields, comma-separated.")
@click.option("--after", help="The cursor a previous page printed.")
@click.option("--limit", default=50, show_default=True)
@pass_desk
def clients_command(
    desk: HelpDesk,
    operator_id: str,
    filter: ClientFilter,
    order: str,
    after: str | None,
    limit: int,
) -> None:
    """List the clients an operator may see, filtered, with how many match."""
    listing = find_clients(
        desk,
        operator_id,
        filter,
        order=tuple(order.split(",")),
        after=after,
        limit=limit,
    )
    echo_listing(
        listing,
        [
            f"{c.id}  {c.name or '-'}  {c.status}  responsible={c.responsible_id or '-'}  "
            f"tags={','.join(sorted(c.tags)) or '-'}  open_deals={c.open_deals}"
            for c in listing.items
        ],
    )


@click.command("today")
@click.option("--operator", "operator_id", required=True, help="The operator's id.")
@click.option("--limit", default=50, show_default=True)
@pass_desk
def today_command(desk: HelpDesk, operator_id: str, limit: int) -> None:
    """An operator's work for the day: tasks due, deals needing action, new clients."""
    work = today(desk, operator_id, limit=limit)
    click.echo(f"Tasks due today or overdue ({len(work.tasks)}):")
    for task in work.tasks:
        click.echo(f"  {task.due:%Y-%m-%d %H:%M}  {task.title}  client={task.client_id}")
    click.echo(f"Open deals needing action ({len(work.deals)}):")
    for deal in work.deals:
        click.echo(
            f"  {deal.title}  {deal.amount} {deal.currency}  {deal.stage}  "
            f"untouched since {deal.updated:%Y-%m-%d}  client={deal.client_id}"
        )
    click.echo(f"Clients newly assigned ({len(work.clients)}):")
    for client in work.clients:
        click.echo(f"  {client.id}  {client.name or '-'}  {client.status}")
