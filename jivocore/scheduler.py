"""The durable scheduler: timers stored with the change that wants them, run when due.

A command schedules a timer inside its own `Work` (`schedule(work, "task_due", due, key=...)`),
so the timer commits or vanishes with that change. `HelpDesk.run_due` runs the timers whose time
has come, oldest due first, however late it is called: a timer due while no process ran is
simply due on the next call. Each run claims its timer with a compare-and-set lease (of two
workers only one runs it), calls the handler a plugin registered for the timer's kind through
`jivocore_register_timers` outside any transaction, then deletes the timer in a transaction of
its own. A handler that raises is logged and its timer retried with back-off; nothing drops it.

Handlers run at least once: a worker that dies after its handler's commands committed but
before the timer was deleted leaves the timer to run again when its lease runs out, so a
handler checks whether its work is already done.

This module is public (as `jivocore.cli` is): plugins import `Timer`, `schedule` and `cancel`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from .entities import _utc
from .errors import ConflictError, NotFoundError, PluginError, ValidationError
from .ids import new_id
from .plugins import implementations
from .storage import Range

if TYPE_CHECKING:
    from .desk import HelpDesk, Work

log = logging.getLogger("jivocore.scheduler")

TimerHandler = Callable[["HelpDesk", "Timer"], None]
"""What runs a timer: ``handler(desk, timer)``. It runs outside any transaction and changes
things through desk commands (`desk.run(...)`, `desk.join(...)`), each committing on its own."""


@attrs.frozen(kw_only=True)
class Timer:
    """Something to do at `due`: a plugin's handler for `kind` runs it."""

    id: str
    version: int = 0
    kind: str  # which handler runs it, e.g. "task_due"
    key: str | None = None  # what it is about (a task id): one timer per (kind, key)
    due: datetime = attrs.field(validator=_utc)
    run_at: datetime = attrs.field(validator=_utc)  # the next attempt: due, later on failure
    data: dict[str, Any] = attrs.field(factory=dict)
    attempts: int = 0
    error: str | None = None  # why the last attempt failed
    created: datetime = attrs.field(validator=_utc)


def schedule(
    work: Work,
    kind: str,
    due: datetime,
    *,
    key: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Timer:
    """Have the handler of `kind` run at `due`, once this command commits. With `key`, a timer
    already scheduled for (`kind`, `key`) moves to `due` instead of a second one being made."""
    if not isinstance(kind, str) or not kind:
        raise ValidationError(f"a timer's kind is a non-empty string, not {kind!r}")
    if not isinstance(due, datetime) or due.utcoffset() != timedelta(0):
        raise ValidationError(f"a timer is due at a timezone-aware UTC datetime, not {due!r}")
    existing = _find(work, kind, key)
    if existing is not None:
        return work.tx.update(
            attrs.evolve(
                existing, due=due, run_at=due, data=dict(data or {}), attempts=0, error=None
            )
        )
    return work.tx.add(
        Timer(
            id=new_id(work.now),
            kind=kind,
            key=key,
            due=due,
            run_at=due,
            data=dict(data or {}),
            created=work.now,
        )
    )


def cancel(work: Work, kind: str, key: str) -> bool:
    """Drop the timer scheduled for (`kind`, `key`) with this command; False if there was none."""
    existing = _find(work, kind, key)
    if existing is None:
        return False
    work.tx.delete(existing)
    return True


def _find(work: Work, kind: str, key: str | None) -> Timer | None:
    if key is None:
        return None
    return next(work.tx.select(Timer, {"kind": kind, "key": key}, limit=1), None)


# --- running --------------------------------------------------------------------------------------


def handlers(desk: HelpDesk) -> Mapping[str, TimerHandler]:
    """The handler of each timer kind the desk's plugins registered; the desk collects them at
    start-up. A kind registered twice, or a handler that is not callable, is a PluginError
    naming the plugin."""
    found: dict[str, TimerHandler] = {}
    owners: dict[str, str] = {}
    for impl in implementations(desk.pm, "jivocore_register_timers"):

        def register(kind: str, handler: TimerHandler, plugin: str = impl.plugin) -> None:
            if not isinstance(kind, str) or not kind or not callable(handler):
                raise PluginError(
                    f"plugin {plugin} registered a timer handler ({kind!r}, {handler!r}); "
                    "register(kind, handler) takes a non-empty kind and a callable",
                    plugin=plugin,
                )
            if kind in owners:
                raise PluginError(
                    f"plugin {plugin} registered a handler for timers of kind {kind!r}, which "
                    f"{owners[kind]} already registered",
                    plugin=plugin,
                )
            owners[kind] = plugin
            found[kind] = handler

        impl(register=register)
    return found


def _setting(desk: HelpDesk, name: str) -> float:
    return float(desk.settings[name])


def run_due(desk: HelpDesk, *, limit: int = 100) -> int:
    """Run up to `limit` timers that are due, in the order they fell due; returns how many
    ran to completion."""
    registered = desk.timer_handlers
    with desk.reading() as tx:
        due = list(
            tx.select(
                Timer, {"run_at": Range(le=desk.clock.now())}, order=("run_at", "id"), limit=limit
            )
        )
    return sum(_run_one(desk, registered, timer) for timer in due)


def _run_one(desk: HelpDesk, registered: Mapping[str, TimerHandler], timer: Timer) -> int:
    lease = timedelta(seconds=_setting(desk, "timer_lease"))
    try:
        claimed = desk.run(
            lambda work: work.tx.update(
                attrs.evolve(timer, attempts=timer.attempts + 1, run_at=work.now + lease)
            ),
            retry=False,
        )
    except (ConflictError, NotFoundError):
        return 0  # another worker claimed it, or its command cancelled or moved it
    handler = registered.get(claimed.kind)
    try:
        if handler is None:
            raise LookupError(f"no plugin handles timers of kind {claimed.kind!r}")
        handler(desk, claimed)
    except Exception as exc:  # a handler's failure is retried, never lost
        log.exception(
            "timer %s (%s, key %s) failed on attempt %d; it will run again",
            claimed.id,
            claimed.kind,
            claimed.key,
            claimed.attempts,
        )
        _failed(desk, claimed, f"{type(exc).__name__}: {exc}")
        return 0

    def done(work: Work) -> None:
        current = work.tx.find(Timer, claimed.id)
        # A handler that rescheduled its own timer changed its version: keep the new schedule.
        if current is not None and current.version == claimed.version:
            work.tx.delete(current)

    desk.run(done)
    return 1


def _failed(desk: HelpDesk, claimed: Timer, error: str) -> None:
    backoff = min(
        _setting(desk, "timer_backoff") * 2 ** (claimed.attempts - 1),
        _setting(desk, "timer_backoff_max"),
    )

    def change(work: Work) -> None:
        current = work.tx.find(Timer, claimed.id)
        if current is None or current.version != claimed.version:
            return  # cancelled or rescheduled while it ran
        work.tx.update(
            attrs.evolve(current, error=error, run_at=work.now + timedelta(seconds=backoff))
        )
        work.record(
            "timer_failed",
            timer_id=current.id,
            kind=current.kind,
            key=current.key,
            attempt=current.attempts,
            error=error,
        )

    desk.run(change)


__all__ = ["Timer", "TimerHandler", "cancel", "handlers", "run_due", "schedule"]
