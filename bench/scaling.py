"""Benchmark: how throughput scales with processes, on PostgreSQL and on one SQLite file.

    JIVOCORE_TEST_POSTGRES=postgresql://... python bench/scaling.py [--lives N] [--rounds R]
        [--processes 1,2,4] [--synchronous-commit off]

Each run is P processes (spawned once, reused) that start together and live conversations
(receive -> accept -> reply -> close, four commands, four transactions) on one database, each
process as its own online operator with its own visitors. Three sides, each on a fresh
database per run:

- ``postgres``: the engine on PostgreSQL (`HelpDesk.open(url)`, a schema of its own);
- ``raw-pg``: the raw limit: plain psycopg 3 with hand-written SQL writing the same rows (one
  READ COMMITTED transaction per command, compare-and-set updates, side-table rows, events and
  the same NOTIFY at commit);
- ``sqlite``: the engine on one SQLite file (WAL, BEGIN IMMEDIATE), for comparison.

PostgreSQL commits with the server's settings (`synchronous_commit = on`: each commit waits for
its WAL flush, so it survives a power loss). SQLite's default (`synchronous = NORMAL` in WAL)
survives a process crash but not a power loss; `--synchronous-commit off` gives PostgreSQL the
same bargain, in a database of the benchmark's own (made, set and dropped by it).

A run's rate is all its commands over the time from the common start to the last process's
end. Every round runs every side at every process count (sides alternate their order), and
the figures are medians over the rounds. It prints the rates, engine/raw ratios and how each
side scales (rate at P / rate at 1). Exits 2 if the engine and raw sides did not write the
same rows (row counts and sums of versions per table, checked in round 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from jivocore import HelpDesk
from jivocore.testing import RecordingChannel, channel_plugin

CHANNEL = "web"
CLIENT_TEXT = "Hello, my order has not arrived yet"
OPERATOR_TEXT = "Hi! Let me look into that for you."
SIDES = ("postgres", "raw-pg", "sqlite")
START_SLACK = 0.3  # seconds between the go and the common start, so every process is waiting


def open_desk(database: str, schema: str | None) -> HelpDesk:
    settings = {"postgres_schema": schema, "postgres_pool_size": 2} if schema else {}
    return HelpDesk.open(
        database, settings=settings, plugins=[channel_plugin(RecordingChannel(CHANNEL))]
    )


# --- the raw limit --------------------------------------------------------------------------------


class RawPostgres:
    """The four commands by hand on psycopg 3: the rows the engine writes (same columns, same
    values, JSON as text), the reads the guards need, one transaction per command, and the
    engine's NOTIFY of the transaction's events. Ids are a counter of the engine's width."""

    def __init__(self, url: str, schema: str, prefix: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}")
        self.channel = f"jivocore_events_{schema}"
        self._ids = (f"{prefix:04d}{n:022d}" for n in itertools.count(1))
        self._events: list[str] = []

    def _begin(self) -> str:
        self.conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        self._events = []
        return datetime.now(UTC).isoformat(timespec="microseconds")

    def _commit(self) -> None:
        payload = json.dumps({"events": self._events})
        self.conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
        self.conn.execute("COMMIT")

    def _event(
        self,
        type: str,
        at: str,
        actor_id: str | None,
        conversation_id: str | None,
        client_id: str | None,
        data: dict[str, Any],
    ) -> None:
        event_id = next(self._ids)
        self.conn.execute(
            "INSERT INTO events (id, version, type, at, actor_id, conversation_id, client_id, "
            "data) VALUES (%s, 1, %s, %s, %s, %s, %s, %s)",
            (
                event_id,
                type,
                at,
                actor_id,
                conversation_id,
                client_id,
                json.dumps(data, separators=(",", ":")),
            ),
        )
        self._events.append(event_id)

    def _cas(self, query: str, params: Sequence[Any]) -> None:
        if self.conn.execute(query, params).rowcount != 1:
            raise RuntimeError("the raw benchmark never races on one row")

    def receive(self, external_client_id: str, text: str) -> str:
        conn, now = self.conn, self._begin()
        row = conn.execute(
            "SELECT client_id FROM client_identities WHERE channel = %s AND external_id = %s",
            (CHANNEL, external_client_id),
        ).fetchone()
        if row is not None:
            raise RuntimeError("the raw benchmark's visitors are all new")
        client_id, conversation_id, message_id = next(self._ids), next(self._ids), next(self._ids)
        conn.execute(
            "INSERT INTO clients (id, version, name, emails, phones, status, responsible_id, "
            "involved, tags, custom, block, created) "
            "VALUES (%s, 1, '', '[]', '[]', 'new', NULL, '[]', '[]', '{}', 'null', %s)",
            (client_id, now),
        )
        conn.execute(
            "INSERT INTO client_identities (id, version, channel, external_id, client_id, "
            "created) VALUES (%s, 1, %s, %s, %s, %s)",
            (next(self._ids), CHANNEL, external_client_id, client_id, now),
        )
        self._event("client_added", now, None, None, client_id, {"channel": CHANNEL})
        conn.execute(
            "INSERT INTO conversations (id, version, channel, kind, client_id, state, owner_id, "
            "participants, involved, tags, ignores, created, accepted, closed, outcome, episode, "
            "message_count, last_message_at) VALUES (%s, 1, %s, 'chat', %s, 'inbox', NULL, "
            "'[]', '[]', '[]', '[]', %s, NULL, NULL, NULL, 1, 1, %s)",
            (conversation_id, CHANNEL, client_id, now, now),
        )
        conn.execute(
            "INSERT INTO messages (id, version, conversation_id, seq, channel, author, "
            "author_id, text, at, episode, external_id) "
            "VALUES (%s, 1, %s, 1, %s, 'client', %s, %s, %s, 1, NULL)",
            (message_id, conversation_id, CHANNEL, client_id, text, now),
        )
        self._event(
            "received",
            now,
            None,
            conversation_id,
            client_id,
            {"message_id": message_id, "seq": 1, "opened": True, "state": "inbox"},
        )
        self._commit()
        return conversation_id

    def accept(self, conversation_id: str, operator_id: str) -> None:
        conn, now = self.conn, self._begin()
        state, version, client_id, episode = conn.execute(
            "SELECT state, version, client_id, episode FROM conversations WHERE id = %s",
            (conversation_id,),
        ).fetchone()
        presence, capacity = conn.execute(
            "SELECT presence, capacity FROM operators WHERE id = %s", (operator_id,)
        ).fetchone()
        if state != "inbox" or presence != "online" or capacity is not None:
            raise RuntimeError("the raw benchmark accepts inbox chats, uncapped, online")
        members = json.dumps([operator_id])
        self._cas(
            "UPDATE conversations SET state = 'active', owner_id = %s, participants = %s, "
            "involved = %s, ignores = '[]', accepted = %s, version = version + 1 "
            "WHERE id = %s AND version = %s",
            (operator_id, members, members, now, conversation_id, version),
        )
        for side in ("conversations__participants", "conversations__involved"):
            conn.execute(
                f"INSERT INTO {side} (entity_id, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
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
            "SELECT responsible_id, version FROM clients WHERE id = %s", (client_id,)
        ).fetchone()
        if responsible_id is not None:
            raise RuntimeError("the raw benchmark's clients are all new")
        self._event(
            "responsible_set",
            now,
            operator_id,
            None,
            client_id,
            {"responsible_id": operator_id},
        )
        self._cas(
            "UPDATE clients SET responsible_id = %s, involved = %s, version = version + 1 "
            "WHERE id = %s AND version = %s",
            (operator_id, members, client_id, client_version),
        )
        conn.execute(
            "INSERT INTO clients__involved (entity_id, value) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (client_id, operator_id),
        )
        self._commit()

    def reply(self, conversation_id: str, operator_id: str, text: str) -> None:
        conn, now = self.conn, self._begin()
        state, version, client_id, episode, count, participants = conn.execute(
            "SELECT state, version, client_id, episode, message_count, participants "
            "FROM conversations WHERE id = %s",
            (conversation_id,),
        ).fetchone()
        if state != "active" or operator_id not in json.loads(participants):
            raise RuntimeError("the raw benchmark replies to its own active chats")
        seq, message_id = count + 1, next(self._ids)
        self._cas(
            "UPDATE conversations SET message_count = %s, last_message_at = %s, "
            "version = version + 1 WHERE id = %s AND version = %s",
            (seq, now, conversation_id, version),
        )
        self._event(
            "replied",
            now,
            operator_id,
            conversation_id,
            client_id,
            {"state": "active", "episode": episode, "message_id": message_id, "seq": seq},
        )
        conn.execute(
            "INSERT INTO messages (id, version, conversation_id, seq, channel, author, "
            "author_id, text, at, episode, external_id) "
            "VALUES (%s, 1, %s, %s, %s, 'operator', %s, %s, %s, %s, NULL)",
            (message_id, conversation_id, seq, CHANNEL, operator_id, text, now, episode),
        )
        conn.execute(
            "INSERT INTO deliveries (id, version, message_id, conversation_id, channel, status, "
            "attempts, due, error) VALUES (%s, 1, %s, %s, %s, 'pending', 0, %s, NULL)",
            (next(self._ids), message_id, conversation_id, CHANNEL, now),
        )
        self._commit()

    def close(self, conversation_id: str, operator_id: str) -> None:
        conn, now = self.conn, self._begin()
        state, version, client_id, owner_id, episode = conn.execute(
            "SELECT state, version, client_id, owner_id, episode FROM conversations WHERE id = %s",
            (conversation_id,),
        ).fetchone()
        if state != "active" or owner_id != operator_id:
            raise RuntimeError("the raw benchmark closes its own active chats")
        self._cas(
            "UPDATE conversations SET state = 'closed', owner_id = NULL, participants = '[]', "
            "ignores = '[]', closed = %s, outcome = 'answered', version = version + 1 "
            "WHERE id = %s AND version = %s",
            (now, conversation_id, version),
        )
        conn.execute(
            "DELETE FROM conversations__participants WHERE entity_id = %s", (conversation_id,)
        )
        self._event(
            "closed",
            now,
            operator_id,
            conversation_id,
            client_id,
            {"state": "closed", "episode": episode},
        )
        self._commit()

    def shutdown(self) -> None:
        self.conn.close()


# --- the processes --------------------------------------------------------------------------------


def live(side: Any, visitor: str, operator_id: str, raw: bool) -> None:
    if raw:
        conversation_id = side.receive(visitor, CLIENT_TEXT)
    else:
        conversation_id = side.receive(CHANNEL, visitor, CLIENT_TEXT).conversation_id
    side.accept(conversation_id, operator_id)
    side.reply(conversation_id, operator_id, OPERATOR_TEXT)
    side.close(conversation_id, operator_id)


def worker(index: int, tasks: Any, answers: Any) -> None:
    """One process: for each task, open its side, say ready, wait for the common start, live
    its share of conversations, report its start and end (time.monotonic is system-wide)."""
    while (task := tasks.get()) is not None:
        kind, database, schema, operator_id, lives, run = task
        raw = kind == "raw-pg"
        side: Any = (
            RawPostgres(database, schema, index) if raw else open_desk(database, schema or None)
        )
        try:
            answers.put(("ready", index))
            at = tasks.get()
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            start, cpu = time.monotonic(), time.process_time()
            for i in range(lives):
                live(side, f"r{run}-p{index}-visitor-{i}", operator_id, raw)
            answers.put(("done", index, start, time.monotonic(), time.process_time() - cpu))
        except BaseException as exc:
            answers.put(("failed", index, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            side.shutdown()


class Pool:
    """Worker processes (spawned once) that run one side together."""

    def __init__(self, size: int) -> None:
        context = mp.get_context("spawn")
        self.answers: Any = context.Queue()
        self.tasks: list[Any] = [context.Queue() for _ in range(size)]
        self.processes = [
            context.Process(target=worker, args=(i, self.tasks[i], self.answers), daemon=True)
            for i in range(size)
        ]
        for process in self.processes:
            process.start()

    def _wait(self, what: str, count: int) -> list[tuple[Any, ...]]:
        got = []
        while len(got) < count:
            answer = self.answers.get(timeout=600)
            if answer[0] == "failed":
                raise RuntimeError(f"process {answer[1]} failed: {answer[2]}")
            assert answer[0] == what, answer
            got.append(answer)
        return got

    def run(self, tasks: Sequence[tuple[Any, ...]]) -> tuple[float, float]:
        """Run one task per process; return (commands per second, CPU seconds per command)."""
        for queue, task in zip(self.tasks, tasks, strict=False):
            queue.put(task)
        self._wait("ready", len(tasks))
        at = time.monotonic() + START_SLACK
        for queue in self.tasks[: len(tasks)]:
            queue.put(at)
        done = self._wait("done", len(tasks))
        commands = 4 * sum(task[4] for task in tasks)
        elapsed = max(d[3] for d in done) - min(d[2] for d in done)
        return commands / elapsed, sum(d[4] for d in done) / commands

    def stop(self) -> None:
        for queue in self.tasks:
            queue.put(None)
        for process in self.processes:
            process.join(timeout=30)


# --- databases ------------------------------------------------------------------------------------


class Databases:
    """A fresh database for each run: a PostgreSQL schema or a SQLite file, made by opening a
    desk on it (so both engine and raw sides have the engine's schema), with P operators."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schemas: list[str] = []
        self.directory = tempfile.mkdtemp(prefix="jivocore-scaling-")

    def make(self, kind: str, processes: int) -> tuple[str, str, list[str]]:
        if kind == "sqlite":
            database, schema = os.path.join(self.directory, f"{uuid.uuid4().hex}.db"), ""
        else:
            database, schema = self.url, f"bench_{uuid.uuid4().hex[:12]}"
            self.schemas.append(schema)
        desk = open_desk(database, schema or None)
        try:
            operators = [
                desk.add_operator(f"Op{n}", presence="online").id for n in range(processes)
            ]
        finally:
            desk.shutdown()
        return database, schema, operators

    def summary(self, schema: str) -> dict[str, tuple[int, int]]:
        """Per table: rows, and the sum of versions (0 for side tables)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT table_name, bool_or(column_name = 'version') FROM "
                "information_schema.columns WHERE table_schema = %s GROUP BY table_name",
                (schema,),
            ).fetchall()
            summary = {}
            for table, versioned in tables:
                versions = "sum(version)" if versioned else "0"
                count, total = conn.execute(
                    f'SELECT count(*), {versions} FROM "{schema}"."{table}"'
                ).fetchone()
                summary[table] = (count, int(total or 0))
            return summary

    def drop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(self.directory, ignore_errors=True)


def database_without_flush_wait(url: str) -> tuple[str, str]:
    """A new database on the same server whose sessions do not wait for the WAL flush at
    commit; returns its URL and name."""
    name = f"jivocore_scaling_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl(), name


# --- the run --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lives", type=int, default=200, help="conversations per run, shared by its processes"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; default 5")
    parser.add_argument("--processes", default="1,2,4", help="process counts; default 1,2,4")
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="PostgreSQL: wait for each commit's WAL flush (on, the default) or not (off)",
    )
    args = parser.parse_args(argv)
    url = os.environ.get("JIVOCORE_TEST_POSTGRES", "")
    if not url:
        print(
            'set JIVOCORE_TEST_POSTGRES=postgresql://... (eval "$(.ci/postgres start)")',
            file=sys.stderr,
        )
        return 1
    counts = [int(p) for p in args.processes.split(",")]
    own_database = None
    if args.synchronous_commit == "off":
        url, own_database = database_without_flush_wait(url)
    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        flush = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    print(
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, PostgreSQL {server} "
        f"(synchronous_commit = {flush}); {args.lives} conversations (x4 commands) per run, "
        f"{args.rounds} rounds",
        flush=True,
    )

    databases = Databases(url)
    pool = Pool(max(counts))
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    status = 0
    try:
        for round_ in range(args.rounds):
            began = time.monotonic()
            for c, processes in enumerate(counts):
                order = list(SIDES) if (round_ + c) % 2 == 0 else list(reversed(SIDES))
                schemas: dict[str, str] = {}
                for kind in order:
                    database, schema, operators = databases.make(kind, processes)
                    schemas[kind] = schema
                    share = [args.lives // processes] * processes
                    share[0] += args.lives - sum(share)
                    tasks = [
                        (kind, database, schema, operators[p], share[p], round_)
                        for p in range(processes)
                    ]
                    rate, cpu_per_command = pool.run(tasks)
                    rates.setdefault((kind, processes), []).append(rate)
                    cpu.setdefault((kind, processes), []).append(cpu_per_command)
                if round_ == 0:
                    engine = databases.summary(schemas["postgres"])
                    raw = databases.summary(schemas["raw-pg"])
                    if engine != raw:
                        differ = {t: (engine.get(t), raw.get(t)) for t in {*engine, *raw}}
                        differ = {t: v for t, v in differ.items() if v[0] != v[1]}
                        print(f"engine and raw wrote different rows: {differ}", file=sys.stderr)
                        status = 2
            print(f"round {round_ + 1}: {time.monotonic() - began:.1f} s", flush=True)
    finally:
        pool.stop()
        databases.drop()
        if own_database:
            with psycopg.connect(os.environ["JIVOCORE_TEST_POSTGRES"], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{own_database}"')

    med = {key: statistics.median(values) for key, values in rates.items()}
    print()
    print("commands/s (median of rounds; x = rate at P processes / rate at 1 process)")
    print()
    header = f"| {'processes':>9} |" + "".join(f" {k:>16} |" for k in SIDES)
    header += f" {'engine/raw (pg)':>15} | {'pg/sqlite':>9} |"
    print(header)
    print("|" + "---:|" * (len(SIDES) + 3))
    for processes in counts:
        cells = []
        for kind in SIDES:
            scale = med[kind, processes] / med[kind, counts[0]]
            cells.append(f"{med[kind, processes]:>8,.0f} ({scale:.2f}x)")
        ratio = med["postgres", processes] / med["raw-pg", processes]
        versus = med["postgres", processes] / med["sqlite", processes]
        print(
            f"| {processes:>9} |"
            + "".join(f" {c:>16} |" for c in cells)
            + f" {ratio:>15.0%} | {versus:>9.2f} |"
        )
    print()
    print("CPU time per command, all processes (median, µs):")
    for kind in SIDES:
        line = ", ".join(f"{p} proc {statistics.median(cpu[kind, p]) * 1e6:,.0f}" for p in counts)
        print(f"  {kind:>8}: {line}")
    print()
    print("engine/raw (pg) per round:")
    for processes in counts:
        ratios = [
            e / r
            for e, r in zip(rates["postgres", processes], rates["raw-pg", processes], strict=True)
        ]
        print(f"  {processes} proc: " + ", ".join(f"{r:.0%}" for r in ratios))
    return status


if __name__ == "__main__":
    sys.exit(main())
