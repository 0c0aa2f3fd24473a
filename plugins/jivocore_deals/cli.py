"""`jivocore deals`: the deals an operator may see, filtered."""

from __future__ import annotations

import click

from jivocore import HelpDesk
from jivocore.cli import pass_desk
from jivocore_crm.cli import echo_listing

from . import find_deals


@click.command("deals")
@click.option("--operator", "operator_id", required=True, help="Whose view: who may see what.")
@click.option("--client", "client_id", help="One client's deals.")
@click.option("--status", type=click.Choice(["open", "won", "lost"]))
@click.option("--stage", "stages", multiple=True, help="Any of these stages (repeat).")
@click.option("--responsible", "responsible_id", help="The responsible operator's id.")
@click.option("--order", default="-updated", show_default=True, help="Fields, comma-separated.")
@click.option("--after", help="The cursor a previous page printed.")
@click.option("--limit", default=50, show_default=True)
@pass_desk
def deals_command(
    desk: HelpDesk,
    operator_id: str,
    client_id: str | None,
    status: str | None,
    stages: tuple[str, ...],
    responsible_id: str | None,
    order: str,
    after: str | None,
    limit: int,
) -> None:
    """List deals, filtered, with how many match."""
    listing = find_deals(
        desk,
        operator_id,
        client_id=client_id,
        status=status,
        stages=stages,
        responsible_id=responsible_id,
        order=tuple(order.split(",")),
        after=after,
        limit=limit,
    )
    echo_listing(
        listing,
        [
            f"{d.id}  {d.title}  {d.amount} {d.currency}  {d.stage}  {d.status}  "
            f"responsible={d.responsible_id or '-'}  client={d.client_id}"
            for d in listing.items
        ],
    )
