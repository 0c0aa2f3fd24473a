"""`jivocore import-clients` and `jivocore export-clients`."""

from __future__ import annotations

import sys

import click

from jivocore import HelpDesk
from jivocore.cli import pass_desk
from jivocore_crm import ClientFilter
from jivocore_crm.cli import client_filter_options

from .exporting import ENCODINGS, export_clients
from .importing import DUPLICATE_POLICIES, MATCH_KEYS, RowError, import_clients

_DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    return _DELIMITERS.get(value, "\t" if value == "\\t" else value)


@click.command("import-clients")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--encoding", help="The file's encoding (detected when not given), e.g. cp1252.")
@click.option("--delimiter", help="The delimiter (sniffed when not given): , ; tab | ...")
@click.option(
    "--map",
    "mappings",
    multiple=True,
    metavar="HEADER=FIELD",
    help="Read a column as a field (name, email, phone, status, responsible, external_id, "
    "first_name, last_name, ignore, tags, custom:<key>). Repeat.",
)
@click.option("--region", help="Region of phone numbers written without +country, e.g. BR.")
@click.option(
    "--match",
    help=f"Keys that find an existing client, in order, comma-separated "
    f"(default external_id,email,phone; from {', '.join(MATCH_KEYS)}).",
)
@click.option(
    "--duplicates",
    type=click.Choice(DUPLICATE_POLICIES),
    help="Rows sharing a key with an earlier row: merged (default) or reported as errors.",
)
@click.option(
    "--rejected",
    type=click.Path(dir_okay=False),
    help="Write the rejected rows here, with an `error` column (default PATH.rejected.csv).",
)
@pass_desk
def import_command(
    desk: HelpDesk,
    path: str,
    dry_run: bool,
    encoding: str | None,
    delimiter: str | None,
    mappings: tuple[str, ...],
    region: str | None,
    match: str | None,
    duplicates: str | None,
    rejected: str | None,
) -> None:
    """Import clients from a CSV file (docs/csv.md)."""
    mapping = {}
    for item in mappings:
        header, sep, field = item.rpartition("=")
        if not sep or not header:
            raise click.BadParameter(f"{item!r} is not HEADER=FIELD", param_hint="--map")
        mapping[header] = field
    rejected_path = rejected or f"{path}.rejected.csv"

    def echo_error(error: RowError) -> None:
        click.echo(f"error: {error}")

    report = import_clients(
        desk,
        path,
        dry_run=dry_run,
        encoding=encoding,
        delimiter=_delimiter(delimiter),
        mapping=mapping,
        region=region,
        match=[m.strip() for m in match.split(",") if m.strip()] if match else None,
        duplicates=duplicates,
        rejected=rejected_path,
        progress=None,
        on_error=echo_error,
    )
    fmt = report.format
    if fmt is not None:
        click.echo(f"read as {fmt.encoding}, delimiter {fmt.delimiter!r}")
    click.echo(report.summary())
    if report.rejected:
        click.echo(f"rejected rows: {rejected_path} (fix them and import that file)")
    elif not dry_run:
        import os

        os.unlink(rejected_path)


@click.command("export-clients")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--operator", "operator_id", required=True, help="Whose view: who may see what.")
@client_filter_options
@click.option("--delimiter", default=",", show_default=True, help=", ; tab | ...")
@click.option(
    "--encoding",
    type=click.Choice(ENCODINGS),
    default="utf-8-sig",
    show_default=True,
    help="utf-8-sig has the byte order mark Excel needs to read UTF-8.",
)
@pass_desk
def export_command(
    desk: HelpDesk,
    path: str,
    operator_id: str,
    filter: ClientFilter,
    delimiter: str,
    encoding: str,
) -> None:
    """Export the clients an operator may see, filtered as `jivocore clients` filters, to CSV
    (PATH, or - for standard output)."""
    out = sys.stdout.buffer if path == "-" else path
    count = export_clients(
        desk, out, operator_id, filter, delimiter=_delimiter(delimiter) or ",", encoding=encoding
    )
    if path != "-":
        click.echo(f"{count} clients written to {path}")
