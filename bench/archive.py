"""bench/archive.py: archive search on a SQLite file of closed conversations.

Generates N messages in N/10 closed conversations in bulk (raw `executemany`, one transaction,
streamed; rows encoded exactly as the engine stores them), runs the engine's own indexing pass
(`desk.index_archive`) to build the transcripts' search documents, then times in the same run,
interleaved query by query, each engine case beside the same SQL run by plain sqlite3:

- engine:        desk.archive(manager, text=...)                     newest first, 20 a page
- engine+filter: the same with period (30 days), channel, kind and operator filters
- engine+rank:   by="relevance" (bm25 among the newest 1,000 matches)
- raw ...:       the engine's SQL for that case, by plain sqlite3, rows fetched (the raw limit)
- LIKE scan:     what a naive implementation does: messages LIKE '%word%', newest first

    python bench/archive.py                       # 1,000,000 messages (~2-3 min to build)
    python bench/archive.py --db /tmp/a.db        # keeps the database; reused when it exists
    python bench/archive.py --messages 100000     # a quicker look

Prints p50 and p99 (ms) per case over every timed query (each query `--rounds` times), in
wall-clock time and in the calling thread's CPU time (which leaves out the time other
processes of a shared machine take the CPU), and the engine/raw ratios; exits 1 if a target
is missed (wall-clock): every engine case p99 < 30 ms, and the engine's plain search within 2x
of the raw FTS5 query.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jivocore_sqlite
from jivocore import HelpDesk, Kind, Operator, Outcome, State, document_key
from jivocore.testing import RecordingChannel, channel_plugin

T0 = datetime(2025, 1, 1, tzinfo=UTC)
COMMON = ["hello", "thanks", "order", "please", "help"]  # in most conversations
MEDIUM = ["refund", "delivery", "invoice", "password", "broken"]  # in some percent
VOCABULARY = [f"w{n}" for n in range(20_000)]  # the long tail: rare words


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")  # the contract's fixed-width UTC text


def message_text(rnd: random.Random) -> str:
    words = [rnd.choice(COMMON)] if rnd.random() < 0.3 else []
    if rnd.random() < 0.02:
        words.append(rnd.choice(MEDIUM))
    words += [VOCABULARY[int(rnd.paretovariate(1.1)) % len(VOCABULARY)] for _ in range(8)]
    rnd.shuffle(words)
    return " ".join(words)


def generate(path: str, messages: int, operators: list[str], seed: int = 1) -> None:
    """Closed conversations of 10 messages each, written in one transaction by executemany."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conversations = messages // 10

    def conversation_rows() -> Iterator[dict[str, object]]:
        for n in range(conversations):
            created = T0 + timedelta(seconds=30 * n)
            owner = operators[n % len(operators)]
            yield {
                "id": f"c{n:09d}",
                "version": 3,
                "channel": "web" if n % 3 else "mail",
                "kind": (Kind.CALL if n % 7 == 0 else Kind.CHAT).value,
                "client_id": f"k{n % 40_000:09d}",
                "state": State.CLOSED.value,
                "owner_id": None,
                "participants": "[]",
                "involved": json.dumps([owner]),
                "tags": "[]",
                "ignores": "[]",
                "created": stamp(created),
                "accepted": stamp(created + timedelta(seconds=20)),
                "closed": stamp(created + timedelta(seconds=600)),
                "outcome": Outcome.ANSWERED.value,
                "episode": 1,
                "message_count": 10,
                "last_message_at": stamp(created + timedelta(seconds=590)),
            }

    def message_rows() -> Iterator[tuple[object, ...]]:
        for n in range(conversations):
            created = T0 + timedelta(seconds=30 * n)
            for seq in range(1, 11):
                author = "client" if seq % 2 else "operator"
                yield (
                    f"m{n:09d}{seq:02d}",
                    1,
                    f"c{n:09d}",
                    seq,
                    "web" if n % 3 else "mail",
                    author,
                    None,
                    message_text(rnd),
                    stamp(created + timedelta(seconds=50 * seq)),
                    1,
                    None,
                )

    conn.execute("BEGIN")
    columns = list(next(conversation_rows()))
    conn.executemany(
        f"INSERT INTO conversations ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)})",
        conversation_rows(),
    )
    conn.executemany(
        "INSERT INTO conversations__involved (entity_id, value) VALUES (?, ?)",
        ((f"c{n:09d}", operators[n % len(operators)]) for n in range(conversations)),
    )
    conn.executemany(
        "INSERT INTO messages (id, version, conversation_id, seq, channel, author, author_id, "
        "text, at, episode, external_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        message_rows(),
    )
    conn.execute("COMMIT")
    conn.close()


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU time (this thread's: no time waiting for another process) in ms."""
    start, cpu = time.perf_counter(), time.thread_time()
    run()
    return (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def open_database(path: str, messages: int, plugins: list[object]) -> tuple[list[str], str]:
    """The operators and the manager of the database at `path`, generated unless it already
    holds `messages` messages (a database kept with --db is reused)."""
    reuse = False
    if Path(path).exists():
        kept = sqlite3.connect(path)
        if kept.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone():
            if kept.execute("SELECT max(rowid) FROM messages").fetchone()[0] != messages:
                sys.exit(f"{path} holds another number of messages than {messages:,}")
            reuse = True
        kept.close()
    with HelpDesk(plugins=plugins, settings={"database": path}) as desk:
        if not reuse:
            for n in range(20):
                desk.add_operator(f"op{n}")
            desk.add_operator("boss", role="manager")
        with desk.reading() as tx:
            by_name = {o.name: o.id for o in tx.select(Operator)}
    operators = [by_name[f"op{n}"] for n in range(20)]
    if reuse:
        print(f"reusing {path}")
    else:
        started = time.perf_counter()
        generate(path, messages, operators)
        print(f"generated {messages:,} messages in {time.perf_counter() - started:.1f} s")
    return operators, by_name["boss"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="distinct queries per case")
    parser.add_argument("--rounds", type=int, default=3, help="times each query is timed")
    parser.add_argument("--like", type=int, default=10, help="timed LIKE scans (slow)")
    parser.add_argument("--db", help="keep the database here and reuse it (default: a temp file)")
    args = parser.parse_args()
    path = args.db or str(Path(tempfile.mkdtemp()) / "archive.db")
    plugins: list[object] = [jivocore_sqlite, channel_plugin(RecordingChannel("web"))]
    plugins.append(channel_plugin(RecordingChannel("mail")))
    operators, boss = open_database(path, args.messages, plugins)
    desk = HelpDesk(plugins=plugins, settings={"database": path})
    started = time.perf_counter()
    indexed = 0
    while written := desk.index_archive(limit=5_000):
        indexed += written
    indexing = time.perf_counter() - started
    size = Path(path).stat().st_size / 1e6
    print(
        f"{args.messages:,} messages in {args.messages // 10:,} closed conversations, file "
        f"{size:,.0f} MB; the engine's indexing pass wrote {indexed:,} transcripts in "
        f"{indexing:.1f} s"
    )

    rnd = random.Random(2)
    words = COMMON + MEDIUM + [VOCABULARY[n] for n in (1, 2, 5, 20, 100, 1000, 5000, 19_999)]
    queries = [" ".join(rnd.sample(words, rnd.choice([1, 1, 2]))) for _ in range(args.queries)]
    span = args.messages // 10 * 30
    periods = {q: T0 + timedelta(seconds=rnd.randrange(span)) for q in queries}
    raw = sqlite3.connect(path)
    raw.row_factory = sqlite3.Row
    raw.execute(f"PRAGMA mmap_size = {2**30}")  # as the engine's connections read the file
    # The engine's SQL (plugins/jivocore_sqlite/storage.py, search_documents), case by case.
    fts = "conversations__documents_fts"
    hits = (
        f"FROM {fts} CROSS JOIN conversations__documents AS d ON d.key = {fts}.rowid "
        f"CROSS JOIN conversations ON conversations.id = d.entity_id "
        f"WHERE {fts} MATCH ? AND {fts}.rowid >= ? AND {fts}.rowid < ? "
        "AND conversations.state = 'closed'"
    )
    by_date = f"ORDER BY {fts}.rowid DESC LIMIT 21"
    raw_sql = f"SELECT conversations.*, {fts}.rowid AS _key {hits} {by_date}"
    raw_filtered = (
        f"SELECT conversations.*, {fts}.rowid AS _key {hits} AND conversations.closed < ? "
        "AND conversations.closed >= ? AND conversations.channel = 'web' "
        "AND conversations.kind = 'chat' AND EXISTS (SELECT 1 FROM conversations__involved "
        "AS s INDEXED BY idx_conversations__involved_value_entity_id "
        f"WHERE s.entity_id = conversations.id AND s.value = ?) {by_date}"
    )
    raw_ranked = (
        f"WITH hits AS (SELECT conversations.rowid AS _row, {fts}.rowid AS _key, "
        f"bm25({fts}) AS _score {hits} ORDER BY {fts}.rowid DESC LIMIT 1000) "
        "SELECT conversations.*, hits._key, hits._score FROM hits CROSS JOIN conversations "
        "ON conversations.rowid = hits._row ORDER BY hits._score, hits._key DESC LIMIT 21"
    )
    everything = (-(2**62), 2**62)  # every key

    def match(q: str) -> str:
        return " ".join(f'"{w}"' for w in q.split())

    def filters(q: str) -> dict[str, Any]:
        return {
            "since": periods[q],
            "until": periods[q] + timedelta(days=30),
            "channel": "web",
            "kind": Kind.CHAT,
            "operator": operators[0],
        }

    def raw_filter_args(q: str) -> list[object]:
        since, until = periods[q], periods[q] + timedelta(days=30)
        keys = document_key(since), document_key(until)  # Document.key_range
        return [match(q), *keys, stamp(until), stamp(since), operators[0]]

    cases: dict[str, Callable[[str], Any]] = {
        "engine": lambda q: desk.archive(boss, text=q, limit=20),
        "raw FTS5": lambda q: raw.execute(raw_sql, [match(q), *everything]).fetchall(),
        "engine+filter": lambda q: desk.archive(boss, text=q, limit=20, **filters(q)),
        "raw+filter": lambda q: raw.execute(raw_filtered, raw_filter_args(q)).fetchall(),
        "engine+rank": lambda q: desk.archive(boss, text=q, by="relevance", limit=20),
        "raw+rank": lambda q: raw.execute(raw_ranked, [match(q), *everything]).fetchall(),
    }
    for q in queries:  # warm the page cache; the raw SQL must find what the engine finds
        for engine, raw_case in (("engine", "raw FTS5"), ("engine+filter", "raw+filter")):
            found = [c.id for c in cases[engine](q).items]
            assert found == [r["id"] for r in cases[raw_case](q)][:20], (engine, q)
        ranked = {c.id for c in cases["engine+rank"](q).items}
        assert ranked == {r["id"] for r in cases["raw+rank"](q)[:20]}, ("engine+rank", q)
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    pairs = [("engine", "raw FTS5"), ("engine+filter", "raw+filter"), ("engine+rank", "raw+rank")]
    for round_ in range(args.rounds):
        for n, q in enumerate(queries):
            for pair in pairs:
                # Which side of a pair goes first alternates: the second finds the query's
                # pages and the CPU's caches warmed by the first.
                for name in pair if (n + round_) % 2 == 0 else reversed(pair):
                    spent, used = timed(lambda run=cases[name], q=q: run(q))  # type: ignore[misc]
                    wall[name].append(spent)
                    cpu[name].append(used)
    wall["LIKE scan"], cpu["LIKE scan"] = [], []
    for word in [q.split()[0] for q in queries[: args.like]]:
        spent, used = timed(
            lambda w=word: raw.execute(  # type: ignore[misc]
                "SELECT DISTINCT m.conversation_id FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id WHERE m.text LIKE ? AND c.state = 'closed' "
                "ORDER BY c.closed DESC LIMIT 21",
                (f"%{w}%",),
            ).fetchall()
        )
        wall["LIKE scan"].append(spent)
        cpu["LIKE scan"].append(used)
    print(
        f"\n{len(queries)} queries (1-2 words: common, medium and rare; "
        f"{len(set(queries))} distinct) x {args.rounds} rounds, 20 a page; wall-clock and "
        "CPU time of the calling thread, ms:"
    )
    print(f"{'case':<16}{'p50':>9}{'p99':>9}{'mean':>9}{'cpu p50':>10}{'cpu p99':>10}")
    for name, values in wall.items():
        print(
            f"{name:<16}{pct(values, 0.5):>9.3f}{pct(values, 0.99):>9.3f}"
            f"{statistics.fmean(values):>9.3f}"
            f"{pct(cpu[name], 0.5):>10.3f}{pct(cpu[name], 0.99):>10.3f}"
        )
    print()
    ok = True
    for engine, raw_case in (
        ("engine", "raw FTS5"),
        ("engine+filter", "raw+filter"),
        ("engine+rank", "raw+rank"),
    ):
        p99 = pct(wall[engine], 0.99)
        ratios = [
            f"{stat} {pct(times[engine], q) / pct(times[raw_case], q):.2f}x"
            for stat, times, q in (
                ("p50", wall, 0.5),
                ("p99", wall, 0.99),
                ("cpu p50", cpu, 0.5),
                ("cpu p99", cpu, 0.99),
            )
        ]
        print(
            f"{engine:<14} p99 {p99:6.2f} ms: {'PASS' if p99 < 30 else 'MISS'} (< 30 ms); "
            f"/ {raw_case}: {', '.join(ratios)}"
        )
        ok = ok and p99 < 30
    for stat, times in (("p99", wall), ("cpu p99", cpu)):
        ratio = pct(times["engine"], 0.99) / pct(times["raw FTS5"], 0.99)
        print(f"engine {stat} / raw FTS5 {stat} = {ratio:.2f}x: {'PASS' if ratio <= 2 else 'MISS'}")
    within = pct(wall["engine"], 0.99) <= 2 * pct(wall["raw FTS5"], 0.99)
    desk.shutdown()
    ok = ok and within
    print("targets (p99 < 30 ms, within 2x of raw FTS5):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
