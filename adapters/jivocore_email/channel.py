"""EmailChannel: inbound over an SMTP server the host starts, outbound through an SMTP server."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import threading
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from typing import Any

from jivocore import (
    Channel,
    ClientBlocked,
    ClientIdentity,
    Conversation,
    HelpDesk,
    In,
    JivoError,
    Operator,
    Outbound,
    Undeliverable,
    ValidationError,
    Work,
    hookimpl,
    new_id,
)

from .entities import Email
from .parse import Inbound, address_or_none, clean, message_ids, parse_email
from .server import SMTPServer

log = logging.getLogger("jivocore_email")


class EmailChannel:
    """The email channel: a plugin that registers itself.

    :param address: the desk's address; replies come from it and clients write to it.
    :param name: the channel's name (``"email"``); two desks' addresses need two names.
    :param smtp_host, smtp_port: the SMTP server replies leave through.
    :param smtp_starttls: upgrade that connection with STARTTLS first.
    :param smtp_login: (user, password) to log in with, if the server asks.
    :param listen_host, listen_port: where `start` serves SMTP for inbound mail (port 0: any
        free port, read ``channel.port``); ``listen_host=None`` serves nothing (the host feeds
        raw emails to `take` itself, e.g. from IMAP or a webhook).
    :param timeout: seconds an SMTP conversation with the outbound server may take.
    """

    def __init__(
        self,
        address: str,
        *,
        name: str = "email",
        smtp_host: str = "localhost",
        smtp_port: int = 25,
        smtp_starttls: bool = False,
        smtp_login: tuple[str, str] | None = None,
        listen_host: str | None = "127.0.0.1",
        listen_port: int = 8025,
        timeout: float = 30.0,
    ) -> None:
        checked = address_or_none(address)
        if checked is None:
            raise ValidationError(f"{address!r} is not an email address", address=address)
        self.name = name
        self.__name__ = f"jivocore_email:{name}"  # the plugin's name: one per channel
        self.address = checked
        self.domain = checked.rpartition("@")[2]
        self.smtp_host, self.smtp_port = smtp_host, smtp_port
        self.smtp_starttls, self.smtp_login = smtp_starttls, smtp_login
        self.timeout = timeout
        self._desk: HelpDesk | None = None
        self._server = SMTPServer(_Handler(self), listen_host, listen_port) if listen_host else None
        self._gate = threading.Condition()
        self._in_flight = 0

    @hookimpl
    def jivocore_register_channels(self, register: Callable[[Channel], None]) -> None:
        register(self)

    @property
    def port(self) -> int:
        """The port inbound SMTP is served on."""
        if self._server is None:
            raise RuntimeError("this email channel serves no SMTP (listen_host=None)")
        return self._server.port

    # --- start and stop ------------------------------------------------------------------------

    def start(self, desk: HelpDesk) -> None:
        if "email_messages" not in desk.entity_types:
            raise RuntimeError(
                "the jivocore_email plugin is not registered (it stores the email threads): "
                "install jivocore[email], or pass the jivocore_email module in plugins"
            )
        with self._gate:
            self._desk = desk
        if self._server is not None:
            self._server.start()

    def stop(self) -> None:
        """Refuse new mail (421, so senders retry), let the emails being stored finish, close."""
        with self._gate:
            self._desk = None
            self._gate.wait_for(lambda: self._in_flight == 0, timeout=30)
        if self._server is not None:
            self._server.stop()

    # --- inbound -------------------------------------------------------------------------------

    def take(self, data: bytes, envelope_sender: str = "") -> str:
        """Store one inbound email (its raw bytes); returns the SMTP answer to give the sender:
        ``250`` once it is committed, ``5xx`` if it can never be taken, ``4xx`` to retry."""
        with self._gate:
            desk = self._desk
            if desk is None:
                return "421 4.3.2 the help desk is not taking mail now; try again later"
            self._in_flight += 1
        try:
            return self._take(desk, data, envelope_sender)
        except JivoError as exc:
            log.warning("inbound email deferred: %s", exc)
            return "451 4.3.0 the help desk could not store this message; try again later"
        except Exception:
            log.exception("inbound email deferred")
            return "451 4.3.0 the help desk could not store this message; try again later"
        finally:
            with self._gate:
                self._in_flight -= 1
                self._gate.notify_all()

    def _take(self, desk: HelpDesk, data: bytes, envelope_sender: str) -> str:
        try:
            mail = parse_email(data)
        except Exception:
            return "554 5.6.0 this message cannot be read"
        sender = mail.sender or address_or_none(envelope_sender)
        if sender is None:
            return "550 5.1.7 this message has no sender address"
        client_address = self._thread_client(desk, mail) or sender
        limit = int(desk.settings["max_message_chars"])
        text = mail.text or mail.subject or _attachment_note(mail) or "(an empty email)"
        if len(text) > limit:
            text = text[: limit - 20].rstrip() + "\n[... cut short]"
        try:
            message = desk.receive(
                self.name, client_address, text, message_id=mail.header_id, name=mail.name or None
            )
        except ClientBlocked:
            return "550 5.7.1 the help desk does not take mail from this sender"
        except ValidationError as exc:
            return f"554 5.6.0 {clean(exc.message, 200)}"

        def record(work: Work) -> None:
            taken = work.tx.select(
                Email, {"channel": self.name, "header_id": mail.header_id}, limit=1
            )
            if next(taken, None) is None:
                work.tx.add(
                    Email(
                        id=new_id(work.now),
                        channel=self.name,
                        header_id=mail.header_id,
                        conversation_id=message.conversation_id,
                        message_id=message.id,
                        direction="in",
                        address=sender,
                        subject=mail.subject,
                        attachments=mail.attachments,
                        at=work.now,
                    )
                )

        desk.run(record)
        return f"250 2.0.0 stored as {message.id}"

    def _thread_client(self, desk: HelpDesk, mail: Inbound) -> str | None:
        """The address of the client whose conversation the email answers, by its references."""
        if not mail.references:
            return None
        with desk.reading() as tx:
            known = list(tx.select(Email, {"channel": self.name, "header_id": In(mail.references)}))
            if not known:
                return None
            rank = {ref: i for i, ref in enumerate(mail.references)}
            newest = min(known, key=lambda e: rank[e.header_id])
            conversation = tx.get(Conversation, newest.conversation_id)
            identity = next(
                tx.select(
                    ClientIdentity, {"client_id": conversation.client_id, "channel": self.name}
                ),
                None,
            )
            return identity.external_id if identity else None

    # --- outbound ------------------------------------------------------------------------------

    def send(self, outbound: Outbound) -> str | None:
        desk = self._desk
        if desk is None:
            raise RuntimeError("the email channel is not started; the reply waits")
        to = address_or_none(outbound.identity.external_id) if outbound.identity else None
        if to is None:
            raise Undeliverable("the client has no email address on this channel")
        message, conversation = outbound.message, outbound.conversation
        header_id = f"<{message.id}.{conversation.id}@{self.domain}>"
        with desk.reading() as tx:
            thread = list(
                tx.select(
                    Email,
                    {"channel": self.name, "conversation_id": conversation.id},
                    order=("-at",),
                    limit=20,
                )
            )
            author = tx.find(Operator, message.author_id) if message.author_id else None
        subject = next((e.subject for e in thread if e.direction == "in" and e.subject), "")
        if not subject:
            subject = "Your conversation with us"
        elif not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"
        sender = clean(author.name) if author else ""
        mail = EmailMessage(policy=SMTP_POLICY)
        mail["From"] = Address(display_name=sender, addr_spec=self.address)
        mail["To"] = Address(display_name=clean(outbound.client.name), addr_spec=to)
        mail["Subject"] = clean(subject, 500)
        mail["Message-ID"] = header_id
        mail["Date"] = format_datetime(message.at)
        if thread:
            mail["In-Reply-To"] = thread[0].header_id
            mail["References"] = " ".join(
                ref for e in reversed(thread) for ref in message_ids(e.header_id)
            )
        mail.set_content(message.text)
        self._submit(mail, to)

        def record(work: Work) -> None:
            taken = work.tx.select(Email, {"channel": self.name, "header_id": header_id}, limit=1)
            if next(taken, None) is None:
                work.tx.add(
                    Email(
                        id=new_id(work.now),
                        channel=self.name,
                        header_id=header_id,
                        conversation_id=conversation.id,
                        message_id=message.id,
                        direction="out",
                        address=to,
                        subject=str(mail["Subject"]),
                        at=work.now,
                    )
                )

        desk.run(record)
        return header_id

    def _submit(self, mail: EmailMessage, to: str) -> None:
        try:
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout) as smtp:
                if self.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.smtp_login:
                    smtp.login(*self.smtp_login)
                smtp.send_message(mail, from_addr=self.address, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(code >= 500 for code in codes):
                raise Undeliverable(f"{to} refused: {exc.recipients[to]!r}") from exc
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500 and exc.smtp_code != 530:  # 530: a login problem
                raise Undeliverable(f"the server refused the email: {exc}") from exc
            raise


def _attachment_note(mail: Inbound) -> str:
    names = ", ".join(a.filename or a.content_type for a in mail.attachments)
    return f"[attachments: {names}]" if names else ""


class _Handler:
    """aiosmtpd's side: each DATA is stored in a worker thread, off the server's event loop."""

    def __init__(self, channel: EmailChannel) -> None:
        self.channel = channel

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        sender = envelope.mail_from or ""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.channel.take, data, sender
        )
