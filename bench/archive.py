"""bench/archive.py: archive search on a SQLite file of closed conversations.

Generates N messages in N/10 closed conversations in bulk (raw `executemany`, one transaction,
streamed; rows encoded exactly as the engine stores them), runs the engine's own indexing pass
(`desk.index_archive`) to build the transcripts' search documents, then times in the same run,
interleaved query by query:

- engine:        desk.archive(manager, text=...)                     newest first, 20 a page
- engine+filter: the same with period, channel, kind and operator filters
- engine+rank:   by="relevance" (bm25 among the newest 1,000 matches)
- raw FTS5:      the engine's SQL for the first case, run by plain sqlite3 (the raw limit)
- LIKE scan:     what a naive implementation does: messages LIKE '%word%', newest first

    python bench/archive.py                       # 1,000,000 messages (~3 min to build)
    python bench/archive.py --messages 100000     # a quicker look

Prints p50 and p99 (ms) per case and engine/raw ratios; exits 1 if the targets (engine p99 <
30 ms, within 2x of raw FTS5) are missed.
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

import jivocore_sqlite
from jivocore import HelpDesk, Kind, Outcome, State
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


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="timed queries per case")
    parser.add_argument("--like", type=int, default=10, help="timed LIKE scans (slow)")
    parser.add_argument("--db", help="keep the database here (default: a temporary file)")
    args = parser.parse_args()
    path = args.db or str(Path(tempfile.mkdtemp()) / "archive.db")
    plugins = [jivocore_sqlite, channel_plugin(RecordingChannel("web"))]
    plugins.append(channel_plugin(RecordingChannel("mail")))
    with HelpDesk(plugins=plugins, settings={"database": path}) as desk:
        operators = [desk.add_operator(f"op{n}").id for n in range(20)]
        boss = desk.add_operator("boss", role="manager").id
    started = time.perf_counter()
    generate(path, args.messages, operators)
    built = time.perf_counter() - started
    desk = HelpDesk(plugins=plugins, settings={"database": path})
    started = time.perf_counter()
    indexed = 0
    while written := desk.index_archive(limit=5_000):
        indexed += written
    indexing = time.perf_counter() - started
    size = Path(path).stat().st_size / 1e6
    print(
        f"{args.messages:,} messages in {args.messages // 10:,} closed conversations: "
        f"generated in {built:.1f} s; the engine's indexing pass took {indexing:.1f} s "
        f"({indexed / indexing:,.0f} conversations/s); file {size:,.0f} MB"
    )

    rnd = random.Random(2)
    words = COMMON + MEDIUM + [VOCABULARY[n] for n in (1, 2, 5, 20, 100, 1000, 5000, 19_999)]
    queries = [" ".join(rnd.sample(words, rnd.choice([1, 1, 2]))) for _ in range(args.queries)]
    span = args.messages // 10 * 30
    raw = sqlite3.connect(path)
    raw.row_factory = sqlite3.Row
    fts = "conversations__documents_fts"
    raw_sql = (
        f"SELECT conversations.*, {fts}.rowid AS _key FROM {fts} "
        f"CROSS JOIN conversations__documents AS d ON d.key = {fts}.rowid "
        f"CROSS JOIN conversations ON conversations.id = d.entity_id "
        f"WHERE {fts} MATCH ? AND conversations.state = 'closed' "
        f"ORDER BY {fts}.rowid DESC LIMIT 21"
    )

    def filtered(text: str) -> object:
        since = T0 + timedelta(seconds=rnd.randrange(span))
        return desk.archive(
            boss,
            text=text,
            since=since,
            until=since + timedelta(days=30),
            channel="web",
            kind=Kind.CHAT,
            operator=operators[0],
            limit=20,
        )

    cases: dict[str, Callable[[str], object]] = {
        "engine": lambda q: desk.archive(boss, text=q, limit=20),
        "engine+filter": filtered,
        "engine+rank": lambda q: desk.archive(boss, text=q, by="relevance", limit=20),
        "raw FTS5": lambda q: raw.execute(
            raw_sql, [" ".join(f'"{w}"' for w in q.split())]
        ).fetchall(),
    }
    for run in cases.values():  # warm the page cache
        for q in queries[:20]:
            run(q)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for q in queries:
        for name, run in cases.items():
            times[name].append(timed(lambda run=run, q=q: run(q)))  # type: ignore[misc]
    like: list[float] = []
    for q in queries[: args.like]:
        word = q.split()[0]
        like.append(
            timed(
                lambda w=word: raw.execute(  # type: ignore[misc]
                    "SELECT DISTINCT m.conversation_id FROM messages m JOIN conversations c "
                    "ON c.id = m.conversation_id WHERE m.text LIKE ? AND c.state = 'closed' "
                    "ORDER BY c.closed DESC LIMIT 21",
                    (f"%{w}%",),
                ).fetchall()
            )
        )
    times["LIKE scan"] = like
    print(f"\n{len(queries)} queries (1-2 words: common, medium and rare), 20 a page:")
    print(f"{'case':<16}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, values in times.items():
        print(
            f"{name:<16}{pct(values, 0.5):>10.3f}{pct(values, 0.99):>10.3f}"
            f"{statistics.fmean(values):>10.3f}"
        )
    p99, raw99 = pct(times["engine"], 0.99), pct(times["raw FTS5"], 0.99)
    worst = max(pct(times[n], 0.99) for n in ("engine", "engine+filter", "engine+rank"))
    print(
        f"\nengine p99 / raw FTS5 p99 = {p99 / raw99:.2f}x; "
        f"engine p50 / raw p50 = {pct(times['engine'], 0.5) / pct(times['raw FTS5'], 0.5):.2f}x; "
        f"worst engine case p99 = {worst:.1f} ms"
    )
    desk.shutdown()
    ok = worst < 30 and p99 <= 2 * raw99
    print("targets (p99 < 30 ms, within 2x of raw FTS5):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
