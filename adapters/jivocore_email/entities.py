"""The email channel's entity: one email in or out, by its Message-ID."""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen(kw_only=True)
class Attachment:
    """An attachment as metadata; the desk keeps no file."""

    filename: str
    content_type: str
    size: int  # bytes, decoded


@attrs.frozen(kw_only=True)
class Email:
    """An email the channel took in or sent: how a reply (In-Reply-To, References) finds its
    conversation, and what the Message has no field for (sender, subject, attachments)."""

    id: str
    version: int = 0
    channel: str
    header_id: str  # the Message-ID header, "<...>"
    conversation_id: str
    message_id: str  # the jivocore Message
    direction: str  # "in" or "out"
    address: str  # the sender of an inbound email, the recipient of an outbound one
    subject: str = ""
    attachments: tuple[Attachment, ...] = ()
    at: datetime
