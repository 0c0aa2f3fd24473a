"""`jivocore tasks`: the tasks an operator may see, filtered."""

from __future__ import annotations

import click

from jivocore import HelpDesk
from jivocore.cli import pass_desk
from jivocore_crm.cli import echo_listing

from . import find_tasks


@click.command("tasks")
@click.option("--operator", "operator_id", required=True, help="Whose view: who may see what.")
@click.option("--client", "client_id", help="One client's tasks.")
@click.option("--assignee", "assignee_id", help="The assignee's id.")
@click.option("--due", type=click.Choice(["today", "overdue"]), help="Due today, or overdue.")
@click.option("--done/--not-done", default=False, show_default=True)
@click.option("--order", default="due", show_default=True, help="Fields, comma-separated.")
@click.option("--after", help="The cursor a previous page printed.")
@click.option("--limit", default=50, show_default=True)
@pass_desk
def tasks_command(
    desk: HelpDesk,
    operator_id: str,
    client_id: str | None,
    assignee_id: str | None,
    due: str | None,
    done: bool,
    order: str,
    after: str | None,
    limit: int,
) -> None:
    """List tasks, filtered, with how many match."""
    listing = find_tasks(
        desk,
        operator_id,
        client_id=client_id,
        assignee_id=assignee_id,
        done=done,
        due=due,
        order=tuple(order.split(",")),
        after=after,
        limit=limit,
    )
    echo_listing(
        listing,
        [
            f"{t.id}  {t.due:%Y-%m-%d %H:%M}  {t.title}  assignee={t.assignee_id}  "
            f"{'done' if t.done else 'open'}  client={t.client_id}"
            for t in listing.items
        ],
    )
