"""jivocore.testing: what a host or plugin author needs to test against jivocore.

- `FakeClock` and `RecordingChannel` for driving a desk by hand;
- the pytest plugin (`desk`, `clock`, `channel` fixtures), loaded automatically with jivocore;
- `jivocore.testing.strategies`: Hypothesis strategies for the entities;
- `jivocore.testing.stateful`: a state machine over the whole command set.
"""

from __future__ import annotations

import threading
from typing import Any

from ..channels import Outbound
from ..clock import FakeClock
from ..plugins import hookimpl

__all__ = ["FakeClock", "RecordingChannel", "channel_plugin"]


class RecordingChannel:
    """A channel that keeps what it sends; set `failures` to make the next sends raise."""

    def __init__(self, name: str = "web") -> None:
        self.name = name
        self.sent: list[Outbound] = []
        self.failures = 0
        self._lock = threading.Lock()

    def send(self, outbound: Outbound) -> str | None:
        with self._lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError(f"{self.name} is down (as the test asked)")
            self.sent.append(outbound)
            return f"{self.name}-{len(self.sent)}"


def channel_plugin(*channels: Any) -> object:
    """A plugin that registers `channels`, named after them (so several can be registered)."""

    class Channels:
        __name__ = "channels:" + ",".join(str(getattr(c, "name", c)) for c in channels)

        @hookimpl
        def jivocore_register_channels(self, register: Any) -> None:
            for channel in channels:
                register(channel)

    return Channels()
