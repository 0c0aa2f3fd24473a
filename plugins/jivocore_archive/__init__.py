"""jivocore_archive: the archive and reports on the command line, as a built-in plugin.

``jivocore archive search "refund" --operator ID --since 2026-01-01`` searches closed
conversations; ``jivocore archive index`` runs the indexing pass; ``jivocore report --since ...
--until ... [--csv FILE]`` prints or exports a period's report. docs/archive.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime

import click

from jivocore import REPORT_COLUMNS, HelpDesk, Kind, Outcome, hookimpl, write_report_csv
from jivocore.cli import pass_desk

__all__ = ["archive", "jivocore_register_commands", "report"]


def _moment(value: str | None) -> datetime | None:
    """A date or datetime from the command line, in UTC unless it names its zone."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (2026-01-31) or datetime") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@click.group("archive")
def archive() -> None:
    """Closed conversations: search them, and index their transcripts."""


@archive.command("search")
@click.argument("text", required=False)
@click.option("--as", "viewer", help="Whose view (an operator id): who may see what.")
@click.option("--operator", help="Only conversations this operator (id) took part in.")
@click.option("--since", help="Closed at or after (date or ISO datetime, UTC by default).")
@click.option("--until", help="Closed before.")
@click.option("--channel", multiple=True, help="Any of these channels (repeat).")
@click.option("--kind", type=click.Choice([k.value for k in Kind]))
@click.option("--outcome", type=click.Choice([o.value for o in Outcome]), multiple=True)
@click.option("--tag", "tags", multiple=True, help="Every one of these tags (repeat).")
@click.option("--client", "client_id", help="One client's conversations (id).")
@click.option("--blocked", is_flag=True, help="Only clients blocked now.")
@click.option("--by", type=click.Choice(["date", "relevance"]), default="date", show_default=True)
@click.option("--after", help="The cursor a previous page printed.")
@click.option("--limit", default=20, show_default=True)
@pass_desk
def search(
    desk: HelpDesk,
    text: str | None,
    viewer: str | None,
    operator: str | None,
    since: str | None,
    until: str | None,
    channel: tuple[str, ...],
    kind: str | None,
    outcome: tuple[str, ...],
    tags: tuple[str, ...],
    client_id: str | None,
    blocked: bool,
    by: str,
    after: str | None,
    limit: int,
) -> None:
    """Search closed conversations' transcripts (every word must match), with filters."""
    page = desk.archive(
        viewer,
        text=text,
        by=by,
        since=_moment(since),
        until=_moment(until),
        operator=operator,
        channel=channel or None,
        kind=kind,
        outcome=outcome or None,
        tags=tags,
        client_id=client_id,
        blocked=blocked,
        after=after,
        limit=limit,
    )
    for c in page.items:
        closed = c.closed.isoformat(timespec="seconds") if c.closed else ""
        outcome_ = c.outcome.value if c.outcome else ""
        click.echo(f"{c.id}  {closed}  {c.channel}/{c.kind.value}  {outcome_}  {c.client_id}")
    if page.next:
        click.echo(f"next page: --after {page.next}")


@archive.command("index")
@click.option("--limit", default=500, show_default=True, help="Conversations per transaction.")
@pass_desk
def index(desk: HelpDesk, limit: int) -> None:
    """Index the transcripts of conversations closed since the last pass (all, the first time)."""
    total = 0
    while written := desk.index_archive(limit=limit):
        total += written
    click.echo(f"indexed {total} conversations")


@click.command("report")
@click.option("--since", required=True, help="From (date or ISO datetime, UTC by default).")
@click.option("--until", required=True, help="Until, excluded.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), help="Write CSV here (- out).")
@pass_desk
def report(desk: HelpDesk, since: str, until: str, csv_file: str | None) -> None:
    """The report of a period: conversations accepted and missed, calls answered and missed,
    first response time and wait (median, 90th percentile), overall and per operator."""
    start, end = _moment(since), _moment(until)
    assert start is not None and end is not None
    result = desk.report(start, end)
    names = {o.id: o.name for o in desk.operators()}
    if csv_file == "-":
        write_report_csv(result, sys.stdout, names)
    elif csv_file:
        with open(csv_file, "w", newline="", encoding="utf-8") as out:
            write_report_csv(result, out, names)
        click.echo(f"wrote {csv_file}")
    else:
        for row in result.rows(names):
            label = row["operator"] or row["operator_id"]
            figures = "  ".join(
                f"{c}={'' if row[c] is None else row[c]}"
                for c in REPORT_COLUMNS[2:]
                if row[c] is not None
            )
            click.echo(f"{label}: {figures}")


@hookimpl
def jivocore_register_commands(register: Callable[[click.Command], None]) -> None:
    register(archive)
    register(report)
