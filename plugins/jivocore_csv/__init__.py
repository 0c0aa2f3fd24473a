"""jivocore_csv: importing clients from the CSV files spreadsheets and other help desks write,
and exporting them, with `jivocore import-clients` and `jivocore export-clients`.

See docs/csv.md. Plugins add recognised columns and adjust rows a batch at a time through the
hooks `jivocore_register_csv_columns` and `jivocore_prepare_csv_rows` (docs/hooks.md).
"""

from __future__ import annotations

from collections.abc import Callable

import click

from jivocore import hookimpl

from .exporting import COLUMNS, ENCODINGS, export_clients
from .importing import (
    ALIASES,
    FIELDS,
    KEY_CHANNELS,
    SETTINGS,
    ImportReport,
    RowError,
    cell_text,
    import_clients,
    normalise_email,
    normalise_phone,
    read_cell,
)
from .reading import CsvRefused, Format, detect


@hookimpl
def jivocore_register_commands(register: Callable[[click.Command], None]) -> None:
    from .cli import export_command, import_command

    register(import_command)
    register(export_command)


__all__ = [
    "ALIASES",
    "COLUMNS",
    "ENCODINGS",
    "FIELDS",
    "KEY_CHANNELS",
    "SETTINGS",
    "CsvRefused",
    "Format",
    "ImportReport",
    "RowError",
    "cell_text",
    "detect",
    "export_clients",
    "import_clients",
    "normalise_email",
    "normalise_phone",
    "read_cell",
]
