"""Benchmark: a conversation's life on a SQLite file, and notification dispatch.

    python bench/lifecycle.py [--conversations N] [--rounds R] [--block B] [--dispatch-calls K]

1. Lifecycle. N conversations each live receive -> accept -> reply -> close (4 commands) on a
   fresh SQLite file with the default settings (WAL, synchronous=NORMAL) and one operator
   online. The raw limit writes the same rows to a fresh file with the same schema (made by
   opening a HelpDesk on it) with hand-written SQL through plain `sqlite3`, one
   `BEGIN IMMEDIATE ... COMMIT` per command, with the reads a careful hand-written
   implementation needs. Target: the engine reaches at least 50% of the raw rate.
2. Dispatch. `desk._notify(events)` with the events of one command, with 10 listener plugins
   registered and with none, beside a direct Python call of the same 10 functions.
   Target: under 20 microseconds per command for 10 plugins.

Machines are shared and noisy: engine and raw run interleaved in blocks (alternating which goes
first) and every figure is the median over the rounds.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import jivocore_sqlite
from jivocore import HelpDesk, hookimpl
from jivocore.testing import RecordingChannel, channel_plugin

CHANNEL = "web"
COMMANDS = ("receive", "accept", "reply", "close")
CLIENT_TEXT = "Hello, my order has not arrived yet"
OPERATOR_TEXT = "Hi! Let me look into that for you."
LIFECYCLE_TARGET = 0.50  # engine / raw
DISPATCH_TARGET_US = 20.0
LISTENERS = 10


def open_desk(path: str, *plugins: object) -> HelpDesk:
    """A desk on `path`: the core with jivocore_sqlite, a web channel and `plugins`, default
    settings. Composed explicitly, so installed CRM or channel plugins do not change what the
    engine is measured on."""
    return HelpDesk(
        plugins=[jivocore_sqlite, channel_plugin(RecordingChannel(CHANNEL)), *plugins],
        settings={"database": path},
    )


def prepare(path: str) -> str:
    """Create the schema on a fresh file by opening a desk on it; add one online operator;
    return the operator's id."""
    desk = open_desk(path)
    try:
        return desk.add_operator("Ann", presence="online").id
    finally:
        desk.shutdown()


# --- the engine ---------------------------------------------------------------------------------


class EngineLives:
    """The engine side: a desk on a fresh file, lives run through its public commands."""

    def __init__(self, path: str) -> None:
        self.operator_id = prepare(path)
        self.desk = open_desk(path)

    def life(self, i: int, spent: dict[str, float]) -> None:
        desk, operator_id, clock = self.desk, self.operator_id, time.perf_counter
        t0 = clock()
        conversation_id = desk.receive(CHANNEL, f"visitor-{i}", CLIENT_TEXT).conversation_id
        t1 = clock()
        desk.accept(conversation_id, operator_id)
        t2 = clock()
        desk.reply(conversation_id, operator_id, OPERATOR_TEXT)
        t3 = clock()
        desk.close(conversation_id, operator_id)
        t4 = clock()
        spent["receive"] += t1 - t0
        spent["accept"] += t2 - t1
        spent["reply"] += t3 - t2
        spent["close"] += t4 - t3

    def close(self) -> None:
        self.desk.shutdown()


# --- the raw limit ------------------------------------------------------------------------------


class RawDesk:
    """The same four commands, written by hand on plain sqlite3: the rows the engine writes
    (the same columns and values, JSON text included), the reads the guards need, one
    `BEGIN IMMEDIATE ... COMMIT` per command. Ids are a cheap counter of the engine's width
    (26 characters); times are fixed-width UTC text as the engine stores them."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._ids = itertools.count(1)

    def _id(self) -> str:
        return f"{next(self._ids):026d}"

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat(timespec="microseconds")

    def _event(
        self,
        type: str,
        at: str,
        actor_id: str | None,
        conversation_id: str | None,
        client_id: str | None,
        data: dict[str, Any],
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (id, version, type, at, actor_id, conversation_id, client_id, "
            "data) VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
            (
                self._id(),
                type,
                at,
                actor_id,
                conversation_id,
                client_id,
                json.dumps(data, separators=(",", ":")),
            ),
        )

    def receive(self, channel: str, external_client_id: str, text: str) -> str:
        conn = self.conn
        now = self._now()
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT client_id FROM client_identities WHERE channel = ? AND external_id = ?",
            (channel, external_client_id),
        ).fetchone()
        if row is None:
            client_id = self._id()
            conn.execute(
                "INSERT INTO clients (id, version, name, emails, phones, status, "
                "responsible_id, involved, tags, custom, block, created, open_deals, "
                "next_task_due) "
                "VALUES (?, 1, '', '[]', '[]', 'new', NULL, '[]', '[]', '{}', 'null', ?, 0, NULL)",
                (client_id, now),
            )
            # Clients are searchable by name, emails and phones.
            conn.execute(
                "INSERT INTO clients_fts (rowid, name, emails, phones) "
                "VALUES (last_insert_rowid(), '', '[]', '[]')"
            )
            conn.execute(
                "INSERT INTO client_identities (id, version, channel, external_id, client_id, "
                "created) VALUES (?, 1, ?, ?, ?, ?)",
                (self._id(), channel, external_client_id, client_id, now),
            )
            self._event("client_added", now, None, None, client_id, {"channel": channel})
        else:
            client_id = row[0]
            block = conn.execute("SELECT block FROM clients WHERE id = ?", (client_id,)).fetchone()
            if block[0] != "null":
                raise RuntimeError("the raw benchmark never blocks a client")
        open_ = conn.execute(
            "SELECT id, version, message_count, episode FROM conversations "
            "WHERE client_id = ? AND channel = ? AND state IN ('inbox', 'active') LIMIT 1",
            (client_id, channel),
        ).fetchone()
        if open_ is None:
            conversation_id, seq, episode, opened = self._id(), 1, 1, True
            conn.execute(
                "INSERT INTO conversations (id, version, channel, kind, client_id, state, "
                "owner_id, participants, involved, ignores, created, accepted, closed, outcome, "
                "episode, message_count, last_message_at) VALUES (?, 1, ?, 'chat', ?, 'inbox', "
                "NULL, '[]', '[]', '[]', ?, NULL, NULL, NULL, 1, 1, ?)",
                (conversation_id, channel, client_id, now, now),
            )
        else:
            conversation_id, version, count, episode = open_
            seq, opened = count + 1, False
            conn.execute(
                "UPDATE conversations SET message_count = ?, last_message_at = ?, "
                "version = version + 1 WHERE id = ? AND version = ?",
                (seq, now, conversation_id, version),
            )
        message_id = self._id()
        conn.execute(
            "INSERT INTO messages (id, version, conversation_id, seq, channel, author, "
            "author_id, text, at, episode, external_id) VALUES (?, 1, ?, ?, ?, 'client', ?, ?, "
            "?, ?, NULL)",
            (message_id, conversation_id, seq, channel, client_id, text, now, episode),
        )
        self._event(
            "received",
            now,
            None,
            conversation_id,
            client_id,
            {"message_id": message_id, "seq": seq, "opened": opened, "state": "inbox"},
        )
        conn.execute("COMMIT")
        return conversation_id

    def accept(self, conversation_id: str, operator_id: str) -> None:
        conn = self.conn
        now = self._now()
        conn.execute("BEGIN IMMEDIATE")
        state, version, client_id, episode = conn.execute(
            "SELECT state, version, client_id, episode FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        presence, capacity = conn.execute(
            "SELECT presence, capacity FROM operators WHERE id = ?", (operator_id,)
        ).fetchone()
        if state != "inbox" or presence != "online" or capacity is not None:
            raise RuntimeError("the raw benchmark accepts inbox chats, uncapped, online")
        members = json.dumps([operator_id])
        conn.execute(
            "UPDATE conversations SET state = 'active', owner_id = ?, participants = ?, "
            "involved = ?, ignores = '[]', accepted = ?, version = version + 1 "
            "WHERE id = ? AND version = ?",
            (operator_id, members, members, now, conversation_id, version),
        )
        conn.execute(
            "INSERT INTO conversations__participants (entity_id, value) VALUES (?, ?)",
            (conversation_id, operator_id),
        )
        conn.execute(
            "INSERT OR IGNORE INTO conversations__involved (entity_id, value) VALUES (?, ?)",
            (conversation_id, operator_id),
        )
        self._event(
            "accepted",
            now,
            operator_id,
            conversation_id,
            client_id,
            {"state": "active", "episode": episode},
        )
        responsible_id, client_version = conn.execute(
            "SELECT responsible_id, version FROM clients WHERE id = ?", (client_id,)
        ).fetchone()
        if responsible_id is None:
            # The operator becomes responsible, and one who may see the client (involved).
            conn.execute(
                "UPDATE clients SET responsible_id = ?, involved = ?, version = version + 1 "
                "WHERE id = ? AND version = ?",
                (operator_id, f'["{operator_id}"]', client_id, client_version),
            )
            conn.execute(
                "INSERT INTO clients__involved (entity_id, value) VALUES (?, ?)",
                (client_id, operator_id),
            )
            self._event(
                "responsible_set",
                now,
                operator_id,
                None,
                client_id,
                {"responsible_id": operator_id},
            )
        conn.execute("COMMIT")

    def reply(self, conversation_id: str, operator_id: str, text: str) -> None:
        conn = self.conn
        now = self._now()
        conn.execute("BEGIN IMMEDIATE")
        state, version, client_id, channel, episode, count = conn.execute(
            "SELECT state, version, client_id, channel, episode, message_count "
            "FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        taking_part = conn.execute(
            "SELECT 1 FROM conversations__participants WHERE entity_id = ? AND value = ?",
            (conversation_id, operator_id),
        ).fetchone()
        if state != "active" or taking_part is None:
            raise RuntimeError("the raw benchmark replies to its own active chats")
        seq = count + 1
        conn.execute(
            "UPDATE conversations SET message_count = ?, last_message_at = ?, "
            "version = version + 1 WHERE id = ? AND version = ?",
            (seq, now, conversation_id, version),
        )
        message_id = self._id()
        conn.execute(
            "INSERT INTO messages (id, version, conversation_id, seq, channel, author, "
            "author_id, text, at, episode, external_id) VALUES (?, 1, ?, ?, ?, 'operator', ?, ?, "
            "?, ?, NULL)",
            (message_id, conversation_id, seq, channel, operator_id, text, now, episode),
        )
        conn.execute(
            "INSERT INTO deliveries (id, version, message_id, conversation_id, channel, status, "
            "attempts, due, error) VALUES (?, 1, ?, ?, ?, 'pending', 0, ?, NULL)",
            (self._id(), message_id, conversation_id, channel, now),
        )
        # As the engine stores it: its `replied` row holds state and episode only (the
        # message id and seq reach the listeners' copy of the event, not the stored row).
        self._event(
            "replied",
            now,
            operator_id,
            conversation_id,
            client_id,
            {"state": "active", "episode": episode},
        )
        conn.execute("COMMIT")

    def close(self, conversation_id: str, operator_id: str) -> None:
        conn = self.conn
        now = self._now()
        conn.execute("BEGIN IMMEDIATE")
        state, version, client_id, owner_id, episode = conn.execute(
            "SELECT state, version, client_id, owner_id, episode FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if state != "active" or owner_id != operator_id:
            raise RuntimeError("the raw benchmark closes its own active chats")
        conn.execute(
            "UPDATE conversations SET state = 'closed', owner_id = NULL, participants = '[]', "
            "ignores = '[]', closed = ?, outcome = 'answered', version = version + 1 "
            "WHERE id = ? AND version = ?",
            (now, conversation_id, version),
        )
        conn.execute(
            "DELETE FROM conversations__participants WHERE entity_id = ?", (conversation_id,)
        )
        self._event(
            "closed",
            now,
            operator_id,
            conversation_id,
            client_id,
            {"state": "closed", "episode": episode},
        )
        conn.execute("COMMIT")


class RawLives:
    """The raw side: plain sqlite3 on a fresh file with the engine's schema and PRAGMAs."""

    def __init__(self, path: str) -> None:
        self.operator_id = prepare(path)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.raw = RawDesk(self.conn)

    def life(self, i: int, spent: dict[str, float]) -> None:
        raw, operator_id, clock = self.raw, self.operator_id, time.perf_counter
        t0 = clock()
        conversation_id = raw.receive(CHANNEL, f"visitor-{i}", CLIENT_TEXT)
        t1 = clock()
        raw.accept(conversation_id, operator_id)
        t2 = clock()
        raw.reply(conversation_id, operator_id, OPERATOR_TEXT)
        t3 = clock()
        raw.close(conversation_id, operator_id)
        t4 = clock()
        spent["receive"] += t1 - t0
        spent["accept"] += t2 - t1
        spent["reply"] += t3 - t2
        spent["close"] += t4 - t3

    def close(self) -> None:
        self.conn.close()


Side = EngineLives | RawLives


class Result(NamedTuple):
    rate: float  # commands per second, wall clock
    cpu_rate: float  # commands per second of this thread's CPU time (user + system)
    per_command: dict[str, float]  # mean wall-clock microseconds of each command


def lifecycle_round(
    engine_path: str, raw_path: str, n: int, block: int, flip: bool
) -> dict[str, Result]:
    """One round: `n` lives on each side, interleaved in blocks of `block` lives (the side
    that goes first alternates), so both see the same load on a shared machine."""
    sides: dict[str, Side] = {"engine": EngineLives(engine_path), "raw": RawLives(raw_path)}
    spent = {name: dict.fromkeys(COMMANDS, 0.0) for name in sides}
    elapsed = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    clock, cpu_clock = time.perf_counter, time.thread_time
    try:
        order = list(sides)
        if flip:
            order.reverse()
        for first in range(0, n, block):
            for name in order:
                side, costs = sides[name], spent[name]
                start, cpu_start = clock(), cpu_clock()
                for i in range(first, min(first + block, n)):
                    side.life(i, costs)
                elapsed[name] += clock() - start
                cpu[name] += cpu_clock() - cpu_start
            order.reverse()
    finally:
        for side in sides.values():
            side.close()
    commands = len(COMMANDS) * n
    return {
        name: Result(
            commands / elapsed[name],
            commands / cpu[name],
            {c: t / n * 1e6 for c, t in spent[name].items()},
        )
        for name in sides
    }


def table_summary(path: str) -> dict[str, tuple[int, int]]:
    """Per table: how many rows, and the sum of their versions (0 for side tables)."""
    conn = sqlite3.connect(path)
    try:
        summary = {}
        for (table,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall():
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info([{table}])")]
            versions = "sum(version)" if "version" in columns else "0"
            count, total = conn.execute(f"SELECT count(*), {versions} FROM [{table}]").fetchone()
            summary[table] = (count, total or 0)
        return summary
    finally:
        conn.close()


# --- dispatch -----------------------------------------------------------------------------------


class Listener:
    """A notification plugin that only counts: what is measured is the dispatch."""

    def __init__(self, name: str) -> None:
        self.__name__ = name  # the plugin's name (jivocore.plugins.plugin_name)
        self.calls = 0

    @hookimpl
    def jivocore_events_committed(self, desk: HelpDesk, events: Sequence[Any]) -> None:
        self.calls += 1


class Recorder:
    __name__ = "bench_recorder"

    def __init__(self) -> None:
        self.batches: list[Sequence[Any]] = []

    @hookimpl
    def jivocore_events_committed(self, events: Sequence[Any]) -> None:
        self.batches.append(events)


def one_commands_events() -> Sequence[Any]:
    """The events `accept` appends (accepted, responsible_set), as the listeners get them."""
    recorder = Recorder()
    desk = open_desk(":memory:", recorder)
    try:
        operator = desk.add_operator("Ann", presence="online")
        message = desk.receive(CHANNEL, "visitor", CLIENT_TEXT)
        recorder.batches.clear()
        desk.accept(message.conversation_id, operator.id)
        (events,) = recorder.batches
        return events
    finally:
        desk.shutdown()


def per_call_us(call: Callable[[], None], k: int) -> float:
    clock = time.perf_counter
    start = clock()
    for _ in range(k):
        call()
    return (clock() - start) / k * 1e6


def dispatch_round(
    desk0: HelpDesk,
    desk10: HelpDesk,
    listeners: Sequence[Listener],
    events: Sequence[Any],
    k: int,
    flip: bool,
) -> dict[str, float]:
    functions = [listener.jivocore_events_committed for listener in listeners]

    def direct() -> None:
        for function in functions:
            function(desk10, events)

    def engine10() -> None:
        desk10._notify(events)

    def engine0() -> None:
        desk0._notify(events)

    order = [("direct", direct), ("engine10", engine10), ("engine0", engine0)]
    if flip:
        order.reverse()
    return {name: per_call_us(call, k) for name, call in order}


# --- the run ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--conversations",
        type=int,
        default=500,
        help="conversations per round (4 commands each); default 500",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; default 5")
    parser.add_argument(
        "--block",
        type=int,
        default=50,
        help="lives per block when interleaving engine and raw; default 50",
    )
    parser.add_argument(
        "--dispatch-calls",
        type=int,
        default=20_000,
        help="dispatch calls per round and variant; default 20000",
    )
    args = parser.parse_args(argv)
    n, rounds = args.conversations, args.rounds

    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cpus; {n} conversations x {len(COMMANDS)} commands, "
        f"{rounds} rounds, engine and raw interleaved in blocks of {args.block}; medians"
    )

    workdir = tempfile.mkdtemp(prefix="jivocore-bench-")
    engine_rates: list[float] = []
    raw_rates: list[float] = []
    cpu_ratios: list[float] = []
    engine_cmd: dict[str, list[float]] = {c: [] for c in COMMANDS}
    raw_cmd: dict[str, list[float]] = {c: [] for c in COMMANDS}
    try:
        for r in range(rounds):
            engine_path = os.path.join(workdir, f"engine-{r}.db")
            raw_path = os.path.join(workdir, f"raw-{r}.db")
            gc.collect()
            result = lifecycle_round(engine_path, raw_path, n, args.block, flip=bool(r % 2))
            engine_rates.append(result["engine"].rate)
            raw_rates.append(result["raw"].rate)
            cpu_ratios.append(result["engine"].cpu_rate / result["raw"].cpu_rate)
            for c in COMMANDS:
                engine_cmd[c].append(result["engine"].per_command[c])
                raw_cmd[c].append(result["raw"].per_command[c])
            if r == 0:
                engine_rows, raw_rows = table_summary(engine_path), table_summary(raw_path)
                if engine_rows != raw_rows:
                    print(f"THE ROWS DIFFER: engine {engine_rows}\n                 raw {raw_rows}")
                    return 2
            for path in (engine_path, raw_path):
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.remove(path + suffix)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    engine_rate, raw_rate = median(engine_rates), median(raw_rates)
    # Both sides of a round saw the same load: the ratio is taken per round, then its median.
    ratios = [e / w for e, w in zip(engine_rates, raw_rates, strict=True)]
    ratio = median(ratios)
    print()
    print("lifecycle (receive, accept, reply, close; one transaction per command)")
    print(f"  {'':10} {'engine':>10} {'raw':>10} {'ratio':>7} {'extra':>9}")
    print(f"  {'cmd/s':10} {engine_rate:>10,.0f} {raw_rate:>10,.0f} {ratio:>7.0%}")
    for c in COMMANDS:
        e, w = median(engine_cmd[c]), median(raw_cmd[c])
        print(f"  {c + ' µs':10} {e:>10.1f} {w:>10.1f} {w / e:>7.0%} {e - w:>+8.1f}µs")
    print(f"  rounds: engine {', '.join(f'{x:,.0f}' for x in engine_rates)}")
    print(f"          raw    {', '.join(f'{x:,.0f}' for x in raw_rates)}")
    print(f"          ratio  {', '.join(f'{x:.0%}' for x in ratios)}")
    print(
        f"  ratio by CPU time (less sensitive to other load): {median(cpu_ratios):.0%} "
        f"[{', '.join(f'{x:.0%}' for x in cpu_ratios)}]"
    )
    print("  both sides wrote the same rows and version bumps (checked on round 1)")

    listeners = [Listener(f"bench_listener_{i}") for i in range(LISTENERS)]
    events = one_commands_events()
    desk0 = open_desk(":memory:")
    desk10 = open_desk(":memory:", *listeners)
    try:
        if len(desk10._listeners) != LISTENERS or desk0._listeners:
            print(
                f"expected {LISTENERS} listeners and none, got {len(desk10._listeners)} "
                f"and {len(desk0._listeners)}"
            )
            return 2
        samples: dict[str, list[float]] = {"direct": [], "engine10": [], "engine0": []}
        for r in range(rounds):
            gc.collect()
            for name, us in dispatch_round(
                desk0, desk10, listeners, events, args.dispatch_calls, flip=bool(r % 2)
            ).items():
                samples[name].append(us)
        if any(listener.calls == 0 for listener in listeners):
            print("a listener was never called")
            return 2
    finally:
        desk0.shutdown()
        desk10.shutdown()
    d10, d0, direct = (median(samples[k]) for k in ("engine10", "engine0", "direct"))
    print()
    print(f"dispatch of one command's events ({len(events)} events) to notification plugins")
    print(f"  desk._notify, {LISTENERS} plugins   {d10:8.2f} µs/command")
    print(f"  desk._notify, 0 plugins    {d0:8.2f} µs/command")
    print(f"  direct call of {LISTENERS} functions {direct:8.2f} µs/command (raw limit)")
    print(f"  engine / direct            {d10 / direct:8.1f}x")

    print()
    verdict = "PASS" if ratio >= LIFECYCLE_TARGET else "MISS"
    print(
        f"{verdict} lifecycle: engine {engine_rate:,.0f} cmd/s is {ratio:.0%} of raw "
        f"{raw_rate:,.0f} cmd/s (target >= {LIFECYCLE_TARGET:.0%})"
    )
    verdict = "PASS" if d10 < DISPATCH_TARGET_US else "MISS"
    print(
        f"{verdict} dispatch: {d10:.2f} µs per command to {LISTENERS} plugins "
        f"(target < {DISPATCH_TARGET_US:.0f} µs; direct call {direct:.2f} µs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
