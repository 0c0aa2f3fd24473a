"""jivocore_email: the email channel. Clients write to an SMTP server the host starts (aiosmtpd);
operators' replies leave through any SMTP server (smtplib), threaded by Message-ID.

Installed (``jivocore[email]``), this plugin registers the `Email` entity type, which maps each
email's Message-ID to its conversation. The channel itself is configured by the host and
registers itself::

    desk = HelpDesk.open("helpdesk.db", plugins=[EmailChannel(address="support@example.com",
                                                              smtp_host="smtp.example.com")])
    desk.start_channels()  # listens on 127.0.0.1:8025 unless told otherwise

See docs/plugin-guide.md and EmailChannel's docstring.
"""

from __future__ import annotations

from collections.abc import Callable

from jivocore import EntityType, hookimpl

from .channel import EmailChannel
from .entities import Attachment, Email
from .parse import Inbound, html_to_text, parse_email
from .server import SMTPServer

__all__ = [
    "ENTITY_TYPE",
    "Attachment",
    "Email",
    "EmailChannel",
    "Inbound",
    "SMTPServer",
    "html_to_text",
    "parse_email",
]

ENTITY_TYPE = EntityType(
    name="email_messages",
    cls=Email,
    unique=(("channel", "header_id"),),
    indexes=(("conversation_id", "at"),),
)


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    register(ENTITY_TYPE)
