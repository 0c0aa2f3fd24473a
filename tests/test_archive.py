"""Archive queries (`desk.archive`): full-text search over transcripts combined with filters,
newest first or by relevance, keyset-paginated, with visibility; each answer must be exactly
what a brute-force scan of the same generated desk gives. On SQLite, and on PostgreSQL when
JIVOCORE_TEST_POSTGRES is set (skipped without it, a failure under CI=true)."""

from __future__ import annotations

import random
import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgtest import URL, require_postgres

import jivocore_sqlite
from jivocore import (
    Client,
    ConfigurationError,
    Conversation,
    HelpDesk,
    Kind,
    Message,
    Outcome,
    Range,
    State,
    ValidationError,
    Work,
    archive,
)
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

WORDS = ("refund", "order", "Café", "late", "broken", "x42", "hello")
TAGS = ("vip", "b2b", "spam")


def _backends() -> list[Any]:
    return ["sqlite", "postgres"]


def tokens(text: str) -> list[str]:
    """docs/archive.md's tokenisation, in plain Python."""
    folded = "".join(
        c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
    ).lower()
    return re.findall(r"[^\W_]+", folded)


def holds(transcript: list[str], text: str) -> bool:
    words = [w for w in (tokens(word) for word in text.split()) if w]
    return bool(words) and all(
        any(transcript[i : i + len(w)] == w for i in range(len(transcript) - len(w) + 1))
        for w in words
    )


def open_desk(backend: str, clock: FakeClock) -> HelpDesk:
    channels = [channel_plugin(RecordingChannel("web")), channel_plugin(RecordingChannel("mail"))]
    if backend == "sqlite":
        return HelpDesk(plugins=[jivocore_sqlite, *channels], clock=clock)
    url = require_postgres()
    import jivocore_postgres

    schema = f"test_{uuid.uuid4().hex[:12]}"
    settings = {"database": url, "postgres_schema": schema}
    return HelpDesk(plugins=[jivocore_postgres, *channels], clock=clock, settings=settings)


def drop(desk: HelpDesk) -> None:
    schema = getattr(desk.storage, "schema", None)
    desk.shutdown()
    if schema:
        import psycopg

        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def set_tags(desk: HelpDesk, conversation_id: str, tags: frozenset[str]) -> None:
    def change(work: Work) -> None:
        c = work.tx.get(Conversation, conversation_id)
        work.tx.update(attrs.evolve(c, tags=tags))

    desk.run(change)


def generate(desk: HelpDesk, clock: FakeClock, seed: int) -> dict[str, str]:
    """A desk's worth of history: chats and calls on two channels, answered, missed, transferred,
    reopened (and closed again, or left open), tagged, and a client blocked at the end."""
    rnd = random.Random(seed)
    ops = {n: desk.add_operator(n, presence="online").id for n in ("ann", "bob", "cat")}
    ops["boss"] = desk.add_operator("boss", role="manager", presence="online").id
    ops["seer"] = desk.add_operator("seer", sees_all=True).id
    plain = [ops["ann"], ops["bob"], ops["cat"]]
    for n in range(40):
        clock.advance(rnd.choice([0, 1, 30, 600]))
        channel = rnd.choice(["web", "mail"])
        visitor = f"v{rnd.randrange(6)}"

        def say() -> str:
            return " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(1, 5)))

        kind = rnd.choice([Kind.CHAT, Kind.CALL])
        cid = desk.receive(channel, visitor, say(), kind=kind).conversation_id
        conversation = desk.conversation(cid)
        if conversation.state is not State.INBOX:
            continue
        if rnd.random() < 0.2:
            desk.client_left(cid)
            continue
        owner = rnd.choice(plain)
        desk.accept(cid, owner)
        for _ in range(rnd.randrange(3)):
            desk.reply(cid, owner, say())
            desk.receive(channel, visitor, say())
        if rnd.random() < 0.3:
            to = rnd.choice([o for o in plain if o != owner])
            desk.transfer(cid, owner, to)
            owner = to
        if rnd.random() < 0.3:
            set_tags(desk, cid, frozenset(rnd.sample(TAGS, rnd.randrange(1, 3))))
        clock.advance(rnd.choice([0, 5, 60]))
        desk.close(cid, owner)
        if rnd.random() < 0.3:
            joiner = rnd.choice([o for o in plain if o in desk.conversation(cid).involved])
            clock.advance(1)
            desk.join(cid, joiner)
            desk.reply(cid, joiner, say())
            if rnd.random() < 0.7:
                clock.advance(2)
                desk.close(cid, joiner)
        if n == 20:
            while desk.index_archive(limit=3):  # a pass midway: later ones re-index reopens
                pass
    with desk.reading() as tx:
        answered = next(tx.select(Conversation, {"outcome": Outcome.ANSWERED}))
    desk.join(answered.id, ops["boss"])  # reopened, and left open: out of the archive
    desk.reply(answered.id, ops["boss"], "refund order hello")
    blocked = desk.receive("web", "v5", "spam spam refund")
    desk.block(desk.conversation(blocked.conversation_id).client_id, ops["boss"], duration=None)
    while desk.index_archive(limit=7):
        pass
    return ops


@pytest.fixture(scope="module", params=_backends())
def world(request: pytest.FixtureRequest) -> Iterator[tuple[HelpDesk, dict[str, str], Any]]:
    clock = FakeClock()
    desk = open_desk(request.param, clock)
    try:
        ops = generate(desk, clock, seed=7)
        with desk.reading() as tx:
            conversations = list(tx.select(Conversation))
            transcripts = {
                c.id: tokens(
                    "\n".join(
                        m.text
                        for m in tx.select(Message, {"conversation_id": c.id}, order=("seq",))
                    )
                )
                for c in conversations
            }
            clients = {c.id: c for c in tx.select(Client)}
        yield desk, ops, (conversations, transcripts, clients, clock.now())
    finally:
        drop(desk)


_texts = st.lists(st.sampled_from([*WORDS, "cafe", "order-late", "!!"]), max_size=2).map(" ".join)
# A period's bound: the nth close (of the matches, so that it decides), or a microsecond either
# side of it; `at` resolves it. Boundaries are then met exactly.
_closes = st.tuples(st.integers(0, 99), st.sampled_from([-1, 0, 0, 1]))
_queries = st.fixed_dictionaries(
    {},
    optional={
        "text": _texts,
        "since": _closes,
        "until": _closes,
        "operator": st.sampled_from(["ann", "bob", "cat"]),
        "channel": st.sampled_from(["web", "mail"]),
        "kind": st.sampled_from(list(Kind)),
        "outcome": st.sampled_from(list(Outcome)),
        "tags": st.lists(st.sampled_from(TAGS), max_size=2),
        "client": st.integers(0, 5),
        "blocked": st.booleans(),
    },
)


def at(instant: tuple[int, int], closes: Iterable[datetime | None]) -> datetime:
    """The instant a drawn `_closes` names among these closes."""
    n, micros = instant
    times = sorted({c for c in closes if c is not None})
    return times[n % len(times)] + timedelta(microseconds=micros)


def expected(world: Any, ops: dict[str, str], viewer: str, query: dict[str, Any]) -> list[str]:
    conversations, transcripts, clients, now = world
    visible = ops[viewer] if viewer in ("ann", "bob", "cat") else None
    client_ids = sorted(clients)
    found = []
    for c in conversations:
        if c.state is not State.CLOSED or (visible and visible not in c.involved):
            continue
        assert c.closed is not None
        checks = [
            "text" not in query or holds(transcripts[c.id], query["text"]),
            "since" not in query or c.closed >= query["since"],
            "until" not in query or c.closed < query["until"],
            "operator" not in query or ops[query["operator"]] in c.involved,
            "channel" not in query or c.channel == query["channel"],
            "kind" not in query or c.kind is query["kind"],
            "outcome" not in query or c.outcome is query["outcome"],
            set(query.get("tags", ())) <= c.tags,
            "client" not in query or c.client_id == client_ids[query["client"]],
            not query.get("blocked") or clients[c.client_id].blocked(now),
        ]
        if all(checks):
            found.append(c)
    found.sort(key=lambda c: (c.closed, c.id), reverse=True)
    return [c.id for c in found]


def ask(desk: HelpDesk, ops: dict[str, str], viewer: str, query: dict[str, Any], **kw: Any) -> Any:
    args = dict(query)
    if "operator" in args:
        args["operator"] = ops[args["operator"]]
    if "client" in args:
        with desk.reading() as tx:
            args["client_id"] = sorted(c.id for c in tx.select(Client))[args.pop("client")]
    return desk.archive(ops[viewer], **args, **kw)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    query=_queries,
    viewer=st.sampled_from(["ann", "bob", "cat", "boss", "seer"]),
    limit=st.integers(1, 7),
)
def test_search_and_filters_agree_with_a_scan(
    world: Any, query: dict[str, Any], viewer: str, limit: int
) -> None:
    desk, ops, data = world
    query = dict(query)
    period = {k: query.pop(k) for k in ("since", "until") if k in query}
    closes = {c.id: c.closed for c in data[0]}
    near = [closes[i] for i in expected(data, ops, viewer, query)] or closes.values()
    query |= {k: at(v, near) for k, v in period.items()}
    want = expected(data, ops, viewer, query)
    seen: list[str] = []
    after = None
    while True:
        page = ask(desk, ops, viewer, query, after=after, limit=limit)
        assert len(page.items) <= limit
        seen += [c.id for c in page.items]
        if page.next is None:
            break
        after = page.next
    assert seen == want
    if query.get("text"):
        best: list[str] = []
        after = None
        while True:
            page = ask(desk, ops, viewer, query, by="relevance", after=after, limit=limit, window=5)
            best += [c.id for c in page.items]
            if page.next is None:
                break
            after = page.next
        assert sorted(best) == sorted(want[:5])  # ranked among the newest 5 matches


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=_texts,
    bounds=st.fixed_dictionaries({}, optional=dict.fromkeys(["gt", "ge", "lt", "le"], _closes)),
    by=st.sampled_from(["date", "relevance"]),
    limit=st.integers(1, 7),
)
def test_a_document_search_keeps_to_its_period(
    world: Any, text: str, bounds: dict[str, Any], by: str, limit: int
) -> None:
    """The storage contract's `search_documents(at=Range(...))` alone (the archive also filters
    on the close): exactly the matches dated within every bound, at and beside a document's date."""
    desk, ops, data = world
    closes = {c.id: c.closed for c in data[0]}
    matches = expected(data, ops, "boss", {"text": text})
    near = [closes[i] for i in matches] or closes.values()
    period = Range(**{bound: at(instant, near) for bound, instant in bounds.items()})
    want = [
        i
        for i in matches
        if (period.gt is None or closes[i] > period.gt)
        and (period.ge is None or closes[i] >= period.ge)
        and (period.lt is None or closes[i] < period.lt)
        and (period.le is None or closes[i] <= period.le)
    ]
    found: list[str] = []
    after = None
    while True:
        with desk.reading() as tx:
            page = archive.documents(tx).search_documents(
                Conversation,
                text,
                {"state": State.CLOSED},
                by=by,
                after=after,
                limit=limit,
                window=5,
                at=period,
            )
        assert len(page.items) <= limit
        found += [c.id for c in page.items]
        if page.next is None:
            break
        after = page.next
    if by == "date":
        assert found == want
    else:
        assert sorted(found) == sorted(want[:5])  # ranked among the newest 5 matches


def test_a_document_period_takes_aware_datetimes(world: Any) -> None:
    desk, _ops, _data = world
    with desk.reading() as tx, pytest.raises(ValidationError, match="aware datetimes"):
        archive.documents(tx).search_documents(
            Conversation, "refund", at=Range(ge=datetime(2026, 1, 5, 9))
        )


def test_the_data_covers_what_the_filters_ask(world: Any) -> None:
    desk, _ops, (conversations, _, clients, now) = world
    closed = [c for c in conversations if c.state is State.CLOSED]
    with desk.reading() as tx:  # a transcript is dated by its close
        dates = archive.documents(tx).document_dates(Conversation, [c.id for c in closed])
    assert dates == {c.id: c.closed for c in closed}
    assert len(set(dates.values())) < len(dates)  # closes at the same instant
    assert {c.outcome for c in closed} == set(Outcome)
    assert {c.kind for c in closed} == set(Kind)
    assert any(c.episode > 1 for c in closed) and any(c.tags for c in closed)
    assert any(c.episode > 1 and c.state is State.ACTIVE for c in conversations)
    assert any(client.blocked(now) for client in clients.values())
    assert desk.index_archive() == 0  # everything is indexed


def test_a_reopened_conversation_is_found_by_its_new_words_once_closed_again(
    clock: FakeClock,
) -> None:
    with HelpDesk(plugins=[jivocore_sqlite, channel_plugin(RecordingChannel())], clock=clock) as d:
        ann = d.add_operator("ann", presence="online").id
        cid = d.receive("web", "v1", "my parcel").conversation_id
        d.accept(cid, ann)
        d.close(cid, ann)
        assert d.index_archive() == 1
        assert [c.id for c in d.archive(ann, text="parcel").items] == [cid]
        d.join(cid, ann)
        d.reply(cid, ann, "found your umbrella")
        assert d.archive(ann, text="parcel").items == ()  # open again: not in the archive
        clock.advance(10)
        d.close(cid, ann)
        assert d.archive(ann, text="umbrella").items == ()  # not indexed yet
        assert d.index_archive() == 1
        assert [c.id for c in d.archive(ann, text="parcel umbrella").items] == [cid]
        assert d.index_archive() == 0


def test_archive_refuses_what_it_cannot_answer(clock: FakeClock) -> None:
    with HelpDesk(plugins=[jivocore_sqlite, channel_plugin(RecordingChannel())], clock=clock) as d:
        ann = d.add_operator("ann").id
        with pytest.raises(ValidationError):
            d.archive(ann, by="relevance")
        with pytest.raises(ValidationError):
            d.archive(ann, text="x", by="newest")
        with pytest.raises(ValidationError):
            d.archive(ann, {"involved": frozenset()})


def test_a_backend_without_documents_is_a_configuration_error(clock: FakeClock) -> None:
    class Plain:
        """A transaction with no search documents (a third-party backend, say)."""

    with pytest.raises(ConfigurationError):
        archive.documents(Plain())  # type: ignore[arg-type]


def test_archive_without_text_is_as_before(clock: FakeClock) -> None:
    with HelpDesk(plugins=[jivocore_sqlite, channel_plugin(RecordingChannel())], clock=clock) as d:
        ann = d.add_operator("ann", presence="online").id
        bob = d.add_operator("bob", presence="online").id
        ids = []
        for n in range(3):
            cid = d.receive("web", f"v{n}", "hi").conversation_id
            d.accept(cid, ann if n else bob)
            clock.advance(1)
            d.close(cid, ann if n else bob)
            ids.append(cid)
        assert [c.id for c in d.archive(ann).items] == ids[:0:-1]
        assert [c.id for c in d.archive().items] == ids[::-1]
        assert [c.id for c in d.archive(ann, {"channel": "web"}, limit=1).items] == [ids[2]]
        since: datetime = d.conversation(ids[1]).closed  # type: ignore[assignment]
        assert [c.id for c in d.archive(since=since).items] == ids[:0:-1]


def test_the_command_line_searches_and_reports(tmp_path: Any) -> None:
    from click.testing import CliRunner

    import jivocore_archive
    from jivocore.cli import make_cli

    database = str(tmp_path / "desk.db")
    clock = FakeClock()
    with HelpDesk.open(database, clock=clock, plugins=[channel_plugin(RecordingChannel())]) as d:
        ann = d.add_operator("=cmd|calc", presence="online").id
        cid = d.receive("web", "v1", "I want a refund").conversation_id
        d.accept(cid, ann)
        d.reply(cid, ann, "done")
        d.close(cid, ann)
    cli = make_cli([jivocore_archive], entry_points=False)
    runner = CliRunner()
    indexed = runner.invoke(cli, ["--db", database, "archive", "index"])
    assert indexed.exit_code == 0, indexed.output
    assert "indexed 1 conversations" in indexed.output
    found = runner.invoke(cli, ["--db", database, "archive", "search", "refund", "--as", ann])
    assert found.exit_code == 0, found.output
    assert cid in found.output
    none = runner.invoke(cli, ["--db", database, "archive", "search", "refund", "--kind", "call"])
    assert none.exit_code == 0 and cid not in none.output
    since, until = "2026-01-01", "2026-02-01"
    out = runner.invoke(cli, ["--db", database, "report", "--since", since, "--until", until])
    assert out.exit_code == 0 and "chats_accepted=1" in out.output
    exported = runner.invoke(
        cli, ["--db", database, "report", "--since", since, "--until", until, "--csv", "-"]
    )
    assert exported.exit_code == 0
    assert "'=cmd|calc" in exported.output and "\n=cmd" not in exported.output
    bad = runner.invoke(cli, ["--db", database, "report", "--since", "x", "--until", until])
    assert bad.exit_code != 0
