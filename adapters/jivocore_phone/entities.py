"""The phone channel's entities: the facts of a call, and the webhooks already taken."""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen(kw_only=True)
class Call:
    """One call, as the phone system reported it; its conversation has kind ``call``."""

    id: str
    version: int = 0
    channel: str
    call_id: str  # the phone system's id for the call
    conversation_id: str
    phone: str  # the client's number
    direction: str = "inbound"  # or "outbound"
    state: str = "ringing"  # ringing -> answered -> ended, or missed
    operator_id: str | None = None  # who answered
    started: datetime
    answered: datetime | None = None
    ended: datetime | None = None
    duration: float | None = None  # seconds of talk, as the phone system counted them
    recording_url: str | None = None


@attrs.frozen(kw_only=True)
class PhoneWebhook:
    """A webhook request taken, by its signature: the same request again is a replay."""

    id: str
    version: int = 0
    channel: str
    signature: str
    event: str
    at: datetime
