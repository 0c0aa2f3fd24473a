"""The hook specifications: everything a plugin can contribute to or learn from a desk.

Verb families: ``jivocore_register_<things>(register)`` contributes, ``jivocore_prepare_<thing>``
adjusts in place, ``jivocore_get_storage`` provides, ``jivocore_veto_transition`` may refuse, and
past-tense hooks notify after commit. Implementations may take fewer arguments than the spec.
Every hook here is documented in docs/hooks.md with its exact signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import cattrs
import pluggy

if TYPE_CHECKING:
    import click

    from .channels import Channel
    from .desk import HelpDesk, Work
    from .entities import Conversation, Event, Operator
    from .scheduler import Timer
    from .storage import EntityType, Storage

hookspec = pluggy.HookspecMarker("jivocore")


@hookspec(firstresult=True)
def jivocore_get_storage(settings: Mapping[str, Any]) -> Storage | None:
    """Provide the desk's storage backend for these settings, or None to let another answer.

    The built-in SQLite backend answers last (``trylast``). Stops at first non-None result.

    :param settings: the desk's settings; ``settings["database"]`` names the database.
    """


@hookspec
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    """Register the entity types the plugin stores, each with ``register(EntityType(...))``.

    :param register: call once per entity type; a name or class registered twice is an error.
    """


@hookspec
def jivocore_register_channels(register: Callable[[Channel], None]) -> None:
    """Register channel adapters, each with ``register(channel)``.

    :param register: call once per channel; a channel name registered twice is an error.
    """


@hookspec
def jivocore_register_commands(register: Callable[[click.Command], None]) -> None:
    """Register commands for the ``jivocore`` command line, each with ``register(command)``.

    :param register: call with a ``click.Command``; a command name taken twice is an error.
    """


@hookspec
def jivocore_prepare_converter(converter: cattrs.Converter) -> None:
    """Adjust the desk's converter in place, e.g. to add hooks for a plugin's own value types.

    :param converter: the one converter the desk and its storage use.
    """


@hookspec
def jivocore_veto_transition(
    desk: HelpDesk,
    command: str,
    before: Conversation | None,
    after: Conversation,
    actor: Operator | None,
) -> str | None:
    """Refuse a conversation command before it is saved by returning the reason, or None.

    Runs inside the command's transaction, after the lifecycle's own guards; a reason makes the
    command raise ``Vetoed`` naming the plugin, and nothing is stored.

    :param desk: the desk running the command.
    :param command: the lifecycle command, e.g. ``"accept"``.
    :param before: the conversation as it was (None when ``receive`` opens a new one).
    :param after: the conversation as the command would leave it.
    :param actor: the operator who gave the command; None for the client or the system.
    """


@hookspec
def jivocore_events_committed(desk: HelpDesk, events: Sequence[Event]) -> None:
    """Learn what happened, after it was committed.

    Each implementation runs isolated: one that raises is logged with the plugin's name and the
    others still run; the command has succeeded either way.

    :param desk: the desk whose command committed.
    :param events: the events the command appended, in order.
    """


@hookspec
def jivocore_register_timers(
    register: Callable[[str, Callable[[HelpDesk, Timer], None]], None],
) -> None:
    """Register what runs each kind of timer, each with ``register(kind, handler)``.

    ``handler(desk, timer)`` runs when a timer of that kind falls due (``desk.run_due``), outside
    any transaction; a handler that raises is logged and its timer retried with back-off.

    :param register: call once per timer kind; a kind registered twice is an error.
    """


@hookspec
def jivocore_register_csv_columns(register: Callable[[str, Sequence[str]], None]) -> None:
    """Register columns a client CSV import recognises, each with ``register(name, aliases)``.

    A column whose header is `name` or one of `aliases` (accents, case and punctuation ignored)
    reaches `jivocore_prepare_csv_rows` as ``row["cells"][name]``; an export writes a column
    registered under a core field's name (``"tags"``) from that field.

    :param register: call once per column; a header another column recognises is an error.
    """


@hookspec
def jivocore_prepare_csv_rows(
    desk: HelpDesk, work: Work | None, rows: Sequence[MutableMapping[str, Any]]
) -> None:
    """Adjust the rows of one batch of a client CSV import in place, before they are matched
    and written: called once per batch (never per row).

    Each row is a dict: ``record`` and ``line`` (where it is in the file), ``cells`` (the
    registered columns' text), ``client`` (the values to set: ``name``, ``emails``, ``phones``,
    ``status``, ``responsible_id``, ``custom``, ``tags``) and ``errors``: append
    ``(column, reason)`` to reject the row.

    :param desk: the desk importing.
    :param work: the batch's transaction in a real import (write what the rows need there, e.g.
        tag records); None in a dry run.
    :param rows: the batch's rows that no one has rejected yet.
    """
