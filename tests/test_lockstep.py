"""The state machine of jivocore.testing.stateful on PostgreSQL, and in lock-step on SQLite and
PostgreSQL at once.

- `TestOnPostgres`: `HelpDeskMachine` as it is, its desk on PostgreSQL.
- `TestSqliteAndPostgresInLockStep`: the same machine, whose desk is a pair (`Twins`): every
  command and query runs on a SQLite desk and on a PostgreSQL desk, which must answer alike
  (the same result or the same refusal); the machine checks the SQLite desk's answers against
  the model, and after every step both desks must hold the same rows. Ids differ between the
  desks: `Twins` pairs them as the desks return them, and compares everything else through
  that pairing.

Each example gets a PostgreSQL schema of its own, dropped at the end of the module. Needs
JIVOCORE_TEST_POSTGRES (as tests/test_storage_postgres.py): without it these tests are skipped,
except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings
from hypothesis.stateful import invariant
from pgtest import require_postgres

from jivocore import (
    Client,
    ClientIdentity,
    Conversation,
    Delivery,
    Event,
    FakeClock,
    HelpDesk,
    JivoError,
    Message,
    Operator,
    Page,
)
from jivocore.testing import RecordingChannel, channel_plugin
from jivocore.testing.stateful import HelpDeskMachine

URL = require_postgres()

SCHEMAS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def drop_schemas() -> Iterator[None]:
    yield
    with psycopg.connect(URL, autocommit=True) as conn:
        for name in SCHEMAS:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def postgres_desk(channel: RecordingChannel, clock: FakeClock) -> HelpDesk:
    """A desk on a new schema, as the machine's default desk is on a new SQLite file."""
    schema = f"machine_{uuid.uuid4().hex[:12]}"
    SCHEMAS.append(schema)
    return HelpDesk.open(
        URL,
        clock=clock,
        plugins=[channel_plugin(channel)],
        settings={"postgres_schema": schema, "postgres_pool_size": 2},
    )


# --- the machine on PostgreSQL ------------------------------------------------------------------


class PostgresMachine(HelpDeskMachine):
    def make_desk(self, clock: FakeClock) -> HelpDesk:
        return postgres_desk(self.channel, clock)


TestOnPostgres = PostgresMachine.TestCase
TestOnPostgres.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


# --- SQLite and PostgreSQL in lock-step -----------------------------------------------------------

# What the machine calls on its desk; each runs on both desks. Anything else (settings, reading,
# clock) is the SQLite desk's.
MIRRORED = frozenset(
    {
        "receive",
        "ignore",
        "accept",
        "reply",
        "transfer",
        "invite",
        "leave",
        "close",
        "client_left",
        "join",
        "block",
        "unblock",
        "add_operator",
        "set_presence",
        "add_client",
        "deliver",
        "inbox",
        "chats",
        "archive",
        "messages",
        "conversation",
        "client",
        "operator",
        "operators",
    }
)
# Entities whose ids no command returns, so they are compared without them.
UNPAIRED = (ClientIdentity, Event, Delivery)


class Twins:
    """Two desks driven as one: `first` (SQLite) answers, `second` (PostgreSQL) must agree.

    `ids` pairs the second desk's ids with the first's, learnt from what commands return (an
    operator, a message with its conversation and client, ...); every comparison reads the
    second desk's answer through it."""

    def __init__(self, first: HelpDesk, second: HelpDesk) -> None:
        self.first = first
        self.second = second
        self.ids: dict[str, str] = {}  # second desk's id -> first desk's id
        self.back: dict[str, str] = {}  # first desk's id -> second desk's id

    def __getattr__(self, name: str) -> Any:
        if name not in MIRRORED:
            return getattr(self.first, name)
        one, two = getattr(self.first, name), getattr(self.second, name)

        def both(*args: Any, **kwargs: Any) -> Any:
            first = _outcome(lambda: one(*args, **kwargs))
            second = _outcome(lambda: two(*self._to_second(args), **self._to_second(kwargs)))
            if isinstance(first, JivoError) or isinstance(second, JivoError):
                told = (type(first).__name__, str(first))
                heard = (type(second).__name__, self._to_first_text(str(second)))
                assert told == heard, f"{name}: SQLite answered {told}, PostgreSQL {heard}"
                raise first
            self._pair(first, second)
            got, want = self.canonical(second, mapped=True), self.canonical(first)
            assert got == want, f"{name}: SQLite answered {want}, PostgreSQL {got}"
            return first

        return both

    def shutdown(self) -> None:
        self.first.shutdown()
        self.second.shutdown()

    # -- ids ----------------------------------------------------------------------------------

    def _to_second(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.back.get(value, value)
        if isinstance(value, tuple | list):
            return type(value)(self._to_second(v) for v in value)
        if isinstance(value, dict):
            return {k: self._to_second(v) for k, v in value.items()}
        return value

    def _to_first_text(self, text: str) -> str:
        for second, first in self.ids.items():
            text = text.replace(second, first)
        return text

    def _pair(self, first: Any, second: Any) -> None:
        """Learn id pairs from two answers of the same shape: the ids of new things."""
        one, two = self._plain(first), self._plain(second)
        for a, b in zip(_entities(one), _entities(two), strict=True):
            for key in a:
                if (
                    (key == "id" or key.endswith("_id"))
                    and isinstance(a[key], str)
                    and isinstance(b.get(key), str)
                    and b[key] not in self.ids
                ):
                    self.ids[b[key]] = a[key]
                    self.back[a[key]] = b[key]

    # -- comparison ---------------------------------------------------------------------------

    def _plain(self, value: Any) -> Any:
        if isinstance(value, Page):
            return [self._plain(v) for v in value.items]
        if isinstance(value, list | tuple):
            return [self._plain(v) for v in value]
        return self.first.converter.unstructure(value)

    def canonical(self, value: Any, *, mapped: bool = False, drop_id: bool = False) -> Any:
        """`value` as plain data (the second desk's ids read as the first's when `mapped`), with
        the members of each entity's collections in a fixed order."""

        def walk(v: Any, top: bool) -> Any:
            if isinstance(v, str):
                return self.ids.get(v, v) if mapped else v
            if isinstance(v, dict):
                return {k: walk(x, False) for k, x in v.items() if not (drop_id and k == "id")}
            if isinstance(v, list):
                items = [walk(x, top) for x in v]
                # A list inside an entity is a set or a short tuple: order it. A listing (the
                # answer itself) keeps its order, which is part of the answer.
                return items if top else sorted(items, key=_key)
            return v

        return walk(self._plain(value), True)

    def everything(self, desk: HelpDesk, *, mapped: bool) -> dict[str, list[Any]]:
        """Every row the desk holds, entity by entity, in a fixed order."""
        held = {}
        with desk.reading() as tx:
            for cls in (Operator, Client, ClientIdentity, Conversation, Message, Delivery, Event):
                rows = [
                    self.canonical(e, mapped=mapped, drop_id=cls in UNPAIRED)
                    for e in tx.select(cls, order=("id",))
                ]
                # Events keep their order (ids sort as they were made); the rest are a set.
                held[cls.__name__] = rows if cls is Event else sorted(rows, key=_key)
        return held


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except JivoError as exc:
        return exc


def _entities(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _entities(item)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class LockStepMachine(HelpDeskMachine):
    """HelpDeskMachine on `Twins` of a SQLite desk and a PostgreSQL desk."""

    def make_desk(self, clock: FakeClock) -> HelpDesk:
        self._tmp = tempfile.TemporaryDirectory(prefix="jivocore-lockstep-")
        sqlite = HelpDesk.open(
            str(Path(self._tmp.name) / "desk.db"),
            clock=clock,
            plugins=[channel_plugin(self.channel)],
            settings={"sqlite_synchronous": "OFF"},
        )
        # Each desk sends through its own channel: the machine checks the SQLite desk's sends
        # against the model, and the invariant below the PostgreSQL desk's against those.
        self.second_channel = RecordingChannel("web")
        return Twins(sqlite, postgres_desk(self.second_channel, clock))  # type: ignore[return-value]

    @invariant()
    def sqlite_and_postgres_hold_the_same(self) -> None:
        twins: Twins = self.desk  # type: ignore[assignment]
        want = twins.everything(twins.first, mapped=False)
        got = twins.everything(twins.second, mapped=True)
        for kind in want:
            assert got[kind] == want[kind], _difference(kind, got[kind], want[kind])
        sent = [(o.message.seq, o.message.text) for o in self.channel.sent]
        assert [(o.message.seq, o.message.text) for o in self.second_channel.sent] == sent


def _difference(kind: str, got: list[Any], want: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"{kind} #{i}: PostgreSQL holds {a}, SQLite {b}"
    return f"{kind}: PostgreSQL holds {len(got)}, SQLite {len(want)}"


TestSqliteAndPostgresInLockStep = LockStepMachine.TestCase
TestSqliteAndPostgresInLockStep.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None
)
