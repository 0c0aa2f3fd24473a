"""The durable scheduler: timers commit with their command, run in due order however late,
survive a restart, and a failing handler is retried with back-off, never lost."""

from __future__ import annotations

import logging
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jivocore_sqlite
from jivocore import FakeClock, HelpDesk, PluginError, hookimpl
from jivocore.scheduler import Timer, cancel, schedule


def timers_plugin(name: str = "jivocore_alarms", **handlers: Any) -> types.ModuleType:
    @hookimpl
    def jivocore_register_timers(register):
        for kind, handler in handlers.items():
            register(kind, handler)

    module = types.ModuleType(name)
    module.jivocore_register_timers = jivocore_register_timers  # type: ignore[attr-defined]
    return module


def open_desk(path: Path, clock: FakeClock, *plugins: object, **settings: Any) -> HelpDesk:
    return HelpDesk(
        plugins=[jivocore_sqlite, *plugins],
        settings={"database": str(path), **settings},
        clock=clock,
    )


def add_timer(desk: HelpDesk, kind: str, after: timedelta, key: str | None = None, **data: Any):
    return desk.run(
        lambda work: schedule(work, kind, work.now + after, key=key, data=data), retry=False
    )


def pending(desk: HelpDesk) -> list[Timer]:
    with desk.reading() as tx:
        return list(tx.select(Timer, order=("run_at", "id")))


def test_hook_register_timers(tmp_path):
    clock = FakeClock()
    ran: list[tuple[str, dict[str, Any]]] = []
    plugin = timers_plugin(ring=lambda desk, timer: ran.append((timer.kind, timer.data)))
    with open_desk(tmp_path / "desk.db", clock, plugin) as desk:
        add_timer(desk, "ring", timedelta(minutes=5), who="ann")
        assert desk.run_due() == 0  # not due yet
        assert ran == []
        clock.advance(timedelta(minutes=5))
        assert desk.run_due() == 1
        assert ran == [("ring", {"who": "ann"})]
        assert pending(desk) == []  # a timer that ran is gone
        assert desk.run_due() == 0


def test_hook_register_timers_a_kind_registered_twice_is_a_plugin_error(tmp_path):
    first = timers_plugin("jivocore_first", ring=lambda desk, timer: None)
    second = timers_plugin("jivocore_second", ring=lambda desk, timer: None)
    with pytest.raises(PluginError, match="'ring'") as caught:  # at start-up, not at run_due
        open_desk(tmp_path / "desk.db", FakeClock(), first, second)
    assert caught.value.plugin in {"jivocore_first", "jivocore_second"}
    assert "jivocore_first" in str(caught.value) and "jivocore_second" in str(caught.value)


def test_hook_register_timers_a_handler_must_be_callable(tmp_path):
    plugin = timers_plugin(ring="not callable")
    with pytest.raises(PluginError, match="jivocore_alarms"):
        open_desk(tmp_path / "desk.db", FakeClock(), plugin)


def test_a_timer_commits_with_its_command_or_not_at_all(tmp_path):
    with open_desk(tmp_path / "desk.db", FakeClock()) as desk:

        def change(work):
            schedule(work, "ring", work.now)
            raise RuntimeError("the command fails after scheduling")

        with pytest.raises(RuntimeError):
            desk.run(change)
        assert pending(desk) == []


def test_timers_survive_a_restart_and_run_late_in_due_order(tmp_path):
    clock = FakeClock()
    ran: list[str] = []
    plugin = timers_plugin(ring=lambda desk, timer: ran.append(timer.data["name"]))
    with open_desk(tmp_path / "desk.db", clock, plugin) as desk:
        # Scheduled out of order; one due in the past is due at once.
        for name, minutes in [("c", 30), ("a", 10), ("d", 90), ("b", 20), ("z", -5)]:
            add_timer(desk, "ring", timedelta(minutes=minutes), name=name)
        assert desk.run_due(limit=10) == 1
        assert ran == ["z"]
    # The process is down for a day; a new desk on the same file catches up, in due order.
    clock.advance(timedelta(days=1))
    with open_desk(tmp_path / "desk.db", clock, plugin) as desk:
        assert desk.run_due(limit=2) == 2
        assert ran == ["z", "a", "b"]
        assert desk.run_due(limit=10) == 2
        assert ran == ["z", "a", "b", "c", "d"]
        assert pending(desk) == []


def test_a_failing_handler_is_logged_and_retried_with_back_off(tmp_path, caplog):
    clock = FakeClock()
    failures = [2]
    ran: list[int] = []

    def flaky(desk, timer):
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("the mail server is down")
        ran.append(timer.attempts)

    with open_desk(
        tmp_path / "desk.db", clock, timers_plugin(ring=flaky), timer_backoff=10.0
    ) as desk:
        add_timer(desk, "ring", timedelta(0))
        with caplog.at_level(logging.ERROR, logger="jivocore.scheduler"):
            assert desk.run_due() == 0
        assert "failed on attempt 1" in caplog.text
        [timer] = pending(desk)
        assert timer.attempts == 1
        assert timer.error == "ConnectionError: the mail server is down"
        assert timer.run_at == clock.now() + timedelta(seconds=10)
        clock.advance(9)
        assert desk.run_due() == 0  # still backing off
        clock.advance(1)
        assert desk.run_due() == 0  # second failure: 20 s now
        assert pending(desk)[0].run_at == clock.now() + timedelta(seconds=20)
        clock.advance(20)
        assert desk.run_due() == 1
        assert ran == [3]
        failed = [e for e in desk.events().items if e.type == "timer_failed"]
        assert [e.data["attempt"] for e in failed] == [1, 2]
        assert pending(desk) == []


def test_a_timer_no_plugin_handles_waits_for_one(tmp_path):
    clock = FakeClock()
    with open_desk(tmp_path / "desk.db", clock) as desk:
        add_timer(desk, "ring", timedelta(0))
        assert desk.run_due() == 0
        assert "no plugin handles timers of kind 'ring'" in (pending(desk)[0].error or "")
    ran: list[str] = []
    clock.advance(timedelta(hours=2))
    with open_desk(
        tmp_path / "desk.db", clock, timers_plugin(ring=lambda d, t: ran.append(t.id))
    ) as desk:
        assert desk.run_due() == 1
        assert len(ran) == 1


def test_a_key_moves_its_timer_and_cancel_drops_it(tmp_path):
    clock = FakeClock()
    ran: list[str] = []
    plugin = timers_plugin(ring=lambda desk, timer: ran.append(timer.key or ""))
    with open_desk(tmp_path / "desk.db", clock, plugin) as desk:
        first = add_timer(desk, "ring", timedelta(minutes=5), key="task-1")
        moved = add_timer(desk, "ring", timedelta(minutes=50), key="task-1")
        assert moved.id == first.id
        add_timer(desk, "ring", timedelta(minutes=5), key="task-2")
        assert desk.run(lambda work: cancel(work, "ring", "task-2")) is True
        assert desk.run(lambda work: cancel(work, "ring", "task-2")) is False
        clock.advance(timedelta(minutes=10))
        assert desk.run_due() == 0
        clock.advance(timedelta(minutes=40))
        assert desk.run_due() == 1
        assert ran == ["task-1"]


def test_a_claimed_timer_is_not_run_twice_until_its_lease_runs_out(tmp_path):
    clock = FakeClock()
    inner: list[int] = []

    def reentrant(desk, timer):
        # Another worker looking now finds the timer leased to this one.
        inner.append(desk.run_due())

    with open_desk(tmp_path / "desk.db", clock, timers_plugin(ring=reentrant)) as desk:
        add_timer(desk, "ring", timedelta(0))
        assert desk.run_due() == 1
        assert inner == [0]


def test_a_handler_that_reschedules_its_timer_keeps_the_new_time(tmp_path):
    clock = FakeClock()
    runs: list[int] = []

    def again(desk, timer):
        runs.append(len(runs))
        if len(runs) < 3:
            desk.run(lambda work: schedule(work, "ring", work.now + timedelta(hours=1), key="k"))

    with open_desk(tmp_path / "desk.db", clock, timers_plugin(ring=again)) as desk:
        add_timer(desk, "ring", timedelta(0), key="k")
        for _ in range(5):
            desk.run_due()
            clock.advance(timedelta(hours=1))
        assert runs == [0, 1, 2]
        assert pending(desk) == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dues=st.lists(st.integers(-60, 600), min_size=1, max_size=12),
    steps=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 5)), max_size=8),
    restart=st.integers(0, 8),
)
def test_every_timer_runs_once_in_due_order_never_early(tmp_path_factory, dues, steps, restart):
    path = tmp_path_factory.mktemp("sched") / "desk.db"
    clock = FakeClock()
    ran: list[tuple[Any, Any]] = []
    plugin = timers_plugin(ring=lambda desk, timer: ran.append((timer.due, clock.now())))
    desk = open_desk(path, clock, plugin)
    try:
        for minutes in dues:
            add_timer(desk, "ring", timedelta(minutes=minutes))
        for i, (minutes, limit) in enumerate(steps):
            if i == restart:
                desk.shutdown()
                desk = open_desk(path, clock, plugin)
            clock.advance(timedelta(minutes=minutes))
            desk.run_due(limit=limit)
        clock.advance(timedelta(days=1))
        while desk.run_due(limit=3):
            pass
    finally:
        desk.shutdown()
    assert len(ran) == len(dues)
    assert [due for due, _ in ran] == sorted(due for due, _ in ran)
    assert all(due <= at for due, at in ran)
