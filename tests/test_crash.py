"""A process writing messages is killed with SIGKILL; whatever a command had returned survives.

A child process (`WRITER`, run with this interpreter) writes through a desk on a SQLite file
with the default settings (WAL, synchronous NORMAL) and prints each message id once the command
that stored it has returned. The parent kills it at varying points, then checks the file: every
printed id is there, SQLite finds the file sound, sequence numbers have no gaps, and a new desk
carries on where the dead one stopped.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from jivocore import Conversation, HelpDesk, State
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

WRITER = """
import sys
from datetime import UTC, datetime, timedelta

from jivocore import HelpDesk, State
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

path, run = sys.argv[1], int(sys.argv[2])
# Each run starts later than the one before, so time never goes backwards across runs.
clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC) + timedelta(days=run))
desk = HelpDesk.open(path, clock=clock, plugins=[channel_plugin(RecordingChannel("web"))])
ann = next((o for o in desk.operators() if o.name == "Ann"), None)
if ann is None:
    ann = desk.add_operator("Ann", presence="online")
print("ready", flush=True)
turn = 0
while True:
    turn += 1
    clock.advance(1)
    for client in range(5):
        message = desk.receive("web", f"visitor-{client}", f"run {run}, turn {turn}")
        print(message.id, flush=True)
        conversation = desk.conversation(message.conversation_id)
        if conversation.state is State.INBOX:
            desk.accept(conversation.id, ann.id)
        reply = desk.reply(conversation.id, ann.id, f"answer to turn {turn}")
        print(reply.id, flush=True)
        if (turn + client) % 7 == 0:
            desk.close(conversation.id, ann.id)
"""

# Where to kill: after so many printed message ids ("ids"), or after a random delay of up to
# so many seconds from the start ("start": perhaps while it is still opening the file) or from
# the moment the desk was ready ("ready": most likely in the middle of a command).
KILLS: list[tuple[str, float]] = [
    ("ids", 1),
    ("ids", 7),
    ("ids", 50),
    ("ids", 200),
    ("start", 0.6),
    ("ids", 2),
    ("ready", 0.05),
    ("ids", 13),
    ("ready", 0.2),
    ("ids", 120),
    ("start", 1.2),
    ("ids", 333),
    ("ready", 0.5),
]


class Writer:
    """The child process, its stdout read by a thread as it comes."""

    def __init__(self, script: Path, path: str, run: int) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.grew = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, str(script), path, str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.endswith("\n"):
                continue  # cut short by the kill: the id was never wholly printed
            with self.grew:
                if line == "ready\n":
                    self.ready.set()
                else:
                    self.lines.append(line.strip())
                self.grew.notify_all()

    def wait_until_ready(self, timeout: float = 60) -> None:
        assert self.ready.wait(timeout), f"the writer was not ready in {timeout}s"
        self._alive()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        with self.grew:
            assert self.grew.wait_for(
                lambda: len(self.lines) >= count or self.process.poll() is not None, timeout
            ), f"the writer printed {len(self.lines)} of {count} ids in {timeout}s"
        self._alive()

    def _alive(self) -> None:
        if self.process.poll() is not None:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            pytest.fail(f"the writer died by itself ({self.process.returncode}):\n{stderr}")

    def kill(self) -> list[str]:
        self._alive()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.process.returncode == -signal.SIGKILL
        if self.process.stderr:
            self.process.stderr.close()
        return list(self.lines)


def _check_file(path: str, printed: set[str]) -> int:
    """The file after a crash: sound, holding every printed message, without gaps."""
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "messages" not in tables:
            assert not printed, "messages were printed, but the file has no messages table"
            return 0  # killed while the first desk was still making the schema
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        stored = {row[0] for row in conn.execute("SELECT id FROM messages")}
        missing = printed - stored
        assert not missing, f"{len(missing)} messages whose command returned are lost"
        return len(stored)


def _check_invariants(desk: HelpDesk) -> None:
    with desk.reading() as tx:
        conversations = list(tx.select(Conversation))
    assert conversations
    for c in conversations:
        seqs = [m.seq for m in desk.messages(c.id)]
        assert seqs == list(range(1, len(seqs) + 1)), f"{c.id}: sequence {seqs}"
        assert c.message_count == len(seqs), c
        if c.state is State.INBOX:
            assert c.owner_id is None and not c.participants, c
        elif c.state is State.ACTIVE:
            assert c.owner_id in c.participants, c
        else:
            assert c.owner_id is None and not c.participants, c
    open_per_client: dict[tuple[str, str], int] = {}
    for c in conversations:
        if c.state is not State.CLOSED:
            key = (c.client_id, c.channel)
            open_per_client[key] = open_per_client.get(key, 0) + 1
    assert all(n == 1 for n in open_per_client.values()), open_per_client


def test_a_killed_writer_loses_nothing_it_returned(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = str(tmp_path / "crash.db")
    printed: set[str] = set()
    chance = random.Random(2026)

    for run, (when, point) in enumerate(KILLS, start=1):
        writer = Writer(script, path, run)
        if when == "ids":
            writer.wait_for(int(point))
        else:
            if when == "ready":
                writer.wait_until_ready()
            time.sleep(chance.uniform(0, point))
        lines = writer.kill()
        if when == "ids":
            assert len(lines) >= point
        printed.update(lines)

        if not Path(path).exists():
            assert not printed
            continue  # killed before the desk made the file
        stored = _check_file(path, printed)
        assert stored >= len(printed)

        with HelpDesk.open(
            path,
            clock=FakeClock(FakeClock().now().replace(year=2027)),
            plugins=[channel_plugin(RecordingChannel("web"))],
        ) as desk:
            _check_invariants(desk)

    assert len(printed) >= sum(p for when, p in KILLS if when == "ids")

    # A new desk keeps working on the file after the last crash.
    clock = FakeClock(FakeClock().now().replace(year=2027))
    with HelpDesk.open(
        path, clock=clock, plugins=[channel_plugin(RecordingChannel("web"))]
    ) as desk:
        message = desk.receive("web", "visitor-after", "are you still there?")
        assert [m.id for m in desk.messages(message.conversation_id)] == [message.id]
        ann = next(o for o in desk.operators() if o.name == "Ann")
        desk.accept(message.conversation_id, ann.id)
        desk.reply(message.conversation_id, ann.id, "we are")
        again = desk.receive("web", "visitor-0", "me again")
        assert again.seq == desk.conversation(again.conversation_id).message_count
        _check_invariants(desk)
    _check_file(path, printed | {message.id, again.id})
