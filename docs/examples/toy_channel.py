"""A toy channel adapter: clients who live in memory. It is complete (inbound, outbound, start,
stop, a client leaving) and passes jivocore's channel contract suite: tests/test_plugin_guide.py.
"""

from __future__ import annotations

import threading

from jivocore import ClientBlocked, HelpDesk, Outbound, Undeliverable, hookimpl


class FarSide:
    """The clients' end of the wire: what they received, and whether it can be reached."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.down = False

    def take(self, client_id: str, text: str) -> str:
        if self.down:
            raise ConnectionError("the far side is down")
        self.received.append((client_id, text))
        return f"toy-{len(self.received)}"


class ToyChannel:
    """A channel named `name` whose clients are on `far_side`; it registers itself."""

    def __init__(self, name: str = "toy", far_side: FarSide | None = None) -> None:
        self.name = name
        self.__name__ = f"toy-channel:{name}"  # the plugin's name
        self.far_side = far_side or FarSide()
        self._desk: HelpDesk | None = None
        self._lock = threading.Lock()  # stop() waits for a message in flight

    @hookimpl
    def jivocore_register_channels(self, register: object) -> None:
        register(self)  # type: ignore[operator]

    def start(self, desk: HelpDesk) -> None:
        with self._lock:
            self._desk = desk

    def stop(self) -> None:
        with self._lock:
            self._desk = None

    def incoming(self, client_id: str, text: str, message_id: str) -> bool:
        """A client writes in. True once stored; False if refused (blocked, or stopped)."""
        with self._lock:
            if self._desk is None:
                return False
            try:
                self._desk.receive(self.name, client_id, text, message_id=message_id)
            except ClientBlocked:
                return False
            return True

    def left(self, client_id: str) -> None:
        """The client closed the window: a conversation nobody accepted yet is missed."""
        with self._lock:
            if self._desk is not None:
                self._desk.client_gone(self.name, client_id)

    def send(self, outbound: Outbound) -> str | None:
        if outbound.identity is None:
            raise Undeliverable("the client has no identity on this channel")
        return self.far_side.take(outbound.identity.external_id, outbound.message.text)
