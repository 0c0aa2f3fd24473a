"""The tags column of a client CSV import: ``tags`` / ``etiquetas`` -> `Client.tags`, with a tag
record for every new name, through the hooks of jivocore_csv (docs/csv.md)."""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from jivocore import HelpDesk, In, ValidationError, Work, hookimpl, new_id

_SPLIT = re.compile(r"[,;]")


@hookimpl
def jivocore_register_csv_columns(register: Callable[[str, Sequence[str]], None]) -> None:
    register("tags", ("tag", "etiquetas", "etiqueta", "labels", "label", "marcadores"))


@hookimpl
def jivocore_prepare_csv_rows(
    desk: HelpDesk, work: Work | None, rows: Sequence[MutableMapping[str, Any]]
) -> None:
    from . import DEFAULT_COLOUR, Tag, tag_name

    names: set[str] = set()
    for row in rows:
        cell = row["cells"].get("tags")
        if not cell:
            continue
        try:
            tags = {tag_name(t) for t in _SPLIT.split(cell) if t.strip()}
        except ValidationError as exc:
            row["errors"].append(("tags", exc.message))
            continue
        row["client"]["tags"] |= tags
        names |= tags
    if work is None or not names:
        return
    known = {t.name for t in work.tx.select(Tag, {"name": In(sorted(names))})}
    for name in sorted(names - known):
        work.tx.add(Tag(id=new_id(work.now), name=name, created=work.now))
        work.record("tag_created", tag=name, colour=DEFAULT_COLOUR)
