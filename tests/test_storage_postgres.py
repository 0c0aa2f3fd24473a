"""The storage contract suite on PostgreSQL, and what only PostgreSQL has: a lost connection,
the core's constraints in the database, events across processes.

Needs a server: JIVOCORE_TEST_POSTGRES=postgresql://... (`eval "$(.ci/postgres start)"` starts
one). Without it these tests are skipped, except under CI=true, where that is a failure.
Each test gets a schema of its own, dropped at the end of the module.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgtest import require_postgres

import jivocore_postgres
from jivocore import (
    CORE_ENTITY_TYPES,
    ConflictError,
    Conversation,
    Event,
    HelpDesk,
    StorageError,
    make_converter,
)
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin
from jivocore.testing.storage import ENTITY_TYPES, Item, StorageContract
from jivocore_postgres import PostgresStorage, tokens

URL = require_postgres()

SCHEMAS: list[str] = []


def new_schema() -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    SCHEMAS.append(name)
    return name


@pytest.fixture(scope="module", autouse=True)
def drop_schemas() -> Iterator[None]:
    yield
    with psycopg.connect(URL, autocommit=True) as conn:
        for name in SCHEMAS:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class TestPostgres(StorageContract):
    def make_storage(self, tmp_path: Path) -> PostgresStorage:
        return PostgresStorage(URL, schema=new_schema(), pool_size=4)


@pytest.fixture
def storage() -> Iterator[PostgresStorage]:
    storage = PostgresStorage(URL, schema=new_schema(), pool_size=4)
    storage.setup(ENTITY_TYPES, make_converter())
    yield storage
    storage.close()


def test_the_hook_answers_for_postgresql_urls_only() -> None:
    answer = jivocore_postgres.jivocore_get_storage
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        storage = answer(settings={"database": url})
        assert isinstance(storage, PostgresStorage)
        storage.close()
    for database in (":memory:", "desk.db", "sqlite:///desk.db", "mysql://h/db", ""):
        assert answer(settings={"database": database}) is None


def test_a_lost_connection_is_retriable_and_a_retry_stores_once(storage: PostgresStorage) -> None:
    def kill(pid: int) -> None:
        with psycopg.connect(URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with pytest.raises(StorageError) as raised, storage.transaction() as tx:
        tx.add(Item(id="a"))
        kill(tx.conn.info.backend_pid)
        tx.add(Item(id="b"))
    assert raised.value.details["retriable"] is True
    with storage.transaction() as tx:  # a fresh connection from the pool
        tx.add(Item(id="a"))
        tx.add(Item(id="b"))
    with storage.transaction(write=False) as tx:
        assert [i.id for i in tx.select(Item)] == ["a", "b"]


def test_an_unreachable_server_is_a_retriable_storage_error() -> None:
    storage = PostgresStorage("postgresql://nobody@127.0.0.1:1/none", timeout=1)
    try:
        with pytest.raises(StorageError) as raised:
            storage.setup(ENTITY_TYPES, make_converter())
        assert raised.value.details["retriable"] is True
    finally:
        storage.close()


def test_search_tokens_follow_sqlites_unicode61() -> None:
    assert tokens("Café, au-lait! ann@example.com x_y 42nd") == [
        "cafe",
        "au",
        "lait",
        "ann",
        "example",
        "com",
        "x",
        "y",
        "42nd",
    ]
    assert tokens("ÉCOLE straße 東京 Ünï") == ["ecole", "straße", "東京", "uni"]


@pytest.fixture
def desk() -> Iterator[HelpDesk]:
    settings = {"database": URL, "postgres_schema": new_schema()}
    with HelpDesk(
        plugins=[jivocore_postgres, channel_plugin(RecordingChannel("web"))],
        clock=FakeClock(),
        settings=settings,
    ) as desk:
        yield desk


def test_a_desk_runs_on_postgresql(desk: HelpDesk) -> None:
    ann = desk.add_operator("Ann", presence="online")
    message = desk.receive("web", "visitor-1", "hello", message_id="m1")
    again = desk.receive("web", "visitor-1", "hello", message_id="m1")
    assert again == message
    assert [c.id for c in desk.inbox(ann.id)] == [message.conversation_id]
    desk.accept(message.conversation_id, ann.id)
    assert [c.id for c in desk.chats(ann.id)] == [message.conversation_id]


def test_the_core_constraints_are_in_the_database(desk: HelpDesk) -> None:
    storage = desk.storage
    assert isinstance(storage, PostgresStorage)
    with storage.transaction(write=False) as tx:
        indexes = {
            row["indexname"]: row["indexdef"]
            for row in tx.conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            )
        }
    open_one = indexes["conversations_unique_client_id_channel"]
    assert "UNIQUE" in open_one
    assert "WHERE" in open_one and "inbox" in open_one and "active" in open_one
    assert "UNIQUE" in indexes["messages_unique_channel_external_id"]
    assert "UNIQUE" in indexes["messages_unique_conversation_id_seq"]
    message = desk.receive("web", "visitor-1", "hello")
    with storage.transaction(write=False) as tx:
        opened = tx.get(Conversation, message.conversation_id)
    with pytest.raises(ConflictError), storage.transaction() as tx:
        tx.add(
            Conversation(
                id="second",
                channel="web",
                client_id=opened.client_id,
                created=opened.created,
            )
        )


LISTENER = """
import json, sys
from jivocore_postgres import PostgresStorage
from jivocore import CORE_ENTITY_TYPES, make_converter
storage = PostgresStorage(sys.argv[1], schema=sys.argv[2])
storage.setup(CORE_ENTITY_TYPES, make_converter())
print("listening", flush=True)
for event in storage.listen(timeout=20):
    print(json.dumps([event.type, event.conversation_id]), flush=True)
    if event.type == "accepted":
        break
"""


def test_events_reach_another_process(desk: HelpDesk) -> None:
    storage = desk.storage
    assert isinstance(storage, PostgresStorage)
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, URL, str(storage.schema)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        time.sleep(0.2)  # LISTEN has run before "listening" was printed; this is slack only
        ann = desk.add_operator("Ann", presence="online")
        message = desk.receive("web", "visitor-1", "hello")
        desk.accept(message.conversation_id, ann.id)
        out, _ = listener.communicate(timeout=30)
    finally:
        listener.kill()
    heard = [line for line in out.splitlines() if line]
    assert any('"accepted"' in line and message.conversation_id in line for line in heard)
    assert any('"received"' in line or '"opened"' in line for line in heard), heard


def test_listen_in_this_process_sees_only_committed_events(storage: PostgresStorage) -> None:
    storage.setup((*ENTITY_TYPES, *CORE_ENTITY_TYPES), make_converter())
    heard: list[Event] = []
    stop = threading.Event()
    thread = threading.Thread(target=lambda: heard.extend(storage.listen(stop=stop)))
    thread.start()
    time.sleep(0.5)
    now = FakeClock().now()
    with pytest.raises(RuntimeError), storage.transaction() as tx:
        tx.add(Event(id="rolled-back", type="x", at=now))
        raise RuntimeError("rolled back: never announced")
    with storage.transaction() as tx:
        tx.add(Event(id="e1", type="x", at=now))
        tx.add(Event(id="e2", type="y", at=now))
    deadline = time.monotonic() + 10
    while len(heard) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=5)
    assert [e.id for e in heard] == ["e1", "e2"]
