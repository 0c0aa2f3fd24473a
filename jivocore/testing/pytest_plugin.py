"""The pytest plugin jivocore installs: fixtures `clock`, `channel` and `desk`.

`desk` is a HelpDesk on a fresh SQLite file in the test's temporary directory, with the
installed plugins, a `FakeClock` and a `RecordingChannel` named "web".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..desk import HelpDesk
from . import FakeClock, RecordingChannel, channel_plugin


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock, at 2026-01-05 09:00 UTC until the test advances it."""
    return FakeClock()


@pytest.fixture
def channel() -> RecordingChannel:
    """The "web" channel the `desk` fixture has; it records what the desk sends."""
    return RecordingChannel("web")


@pytest.fixture
def desk(tmp_path: Path, clock: FakeClock, channel: RecordingChannel) -> Iterator[HelpDesk]:
    """A desk on a new SQLite file, with the installed plugins, the fake clock and the
    recording "web" channel."""
    with HelpDesk.open(
        str(tmp_path / "desk.db"), clock=clock, plugins=[channel_plugin(channel)]
    ) as d:
        yield d
