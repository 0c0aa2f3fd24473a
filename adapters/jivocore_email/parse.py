"""Reading an inbound email: its sender, thread, text (HTML reduced to text) and attachments."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from email.headerregistry import Address
from email.message import EmailMessage
from html.parser import HTMLParser

import attrs

from .entities import Attachment

_MSG_ID = re.compile(r"<[^<>\s\x00-\x1f\x7f]{1,900}>")
_ADDRESS = re.compile(r"[^@\s<>\x00-\x1f\x7f,;\"()\[\]\\]{1,64}@[A-Za-z0-9.\-\[\]:]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")


def clean(text: str, limit: int = 200) -> str:
    """One line of text fit for a header or a name: control characters (CR, LF, ...) become
    spaces, so nothing a client wrote can start a header of its own."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


def address_or_none(value: str) -> str | None:
    """A bare address, lowercased, or None when `value` is not one."""
    value = value.strip()
    return value.lower() if _ADDRESS.fullmatch(value) else None


def message_ids(value: str | None) -> list[str]:
    """The well-formed message ids in a Message-ID, In-Reply-To or References value."""
    return _MSG_ID.findall(value or "")


@attrs.frozen(kw_only=True)
class Inbound:
    header_id: str
    sender: str | None  # the From address, lowercased
    name: str  # the From display name, one clean line
    subject: str
    text: str
    references: tuple[str, ...]  # In-Reply-To first, then References, newest first
    attachments: tuple[Attachment, ...]


def parse_email(data: bytes) -> Inbound:
    """Read an email's bytes (RFC 5322)."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    ids = message_ids(str(msg.get("Message-ID", "")))
    header_id = ids[0] if ids else f"<{hashlib.sha256(data).hexdigest()}@jivocore.invalid>"
    sender, name = None, ""
    try:
        from_header = msg.get("From")
        addresses: tuple[Address, ...] = getattr(from_header, "addresses", ())
        if addresses:
            sender = address_or_none(addresses[0].addr_spec)
            name = clean(addresses[0].display_name)
    except (ValueError, IndexError, AttributeError):  # a From the parser cannot read
        pass
    refs = message_ids(str(msg.get("In-Reply-To", "")))
    refs += reversed(message_ids(str(msg.get("References", ""))))
    return Inbound(
        header_id=header_id,
        sender=sender,
        name=name,
        subject=clean(str(msg.get("Subject", "")), 500),
        text=_text_of(msg),
        references=tuple(dict.fromkeys(r for r in refs if r != header_id))[:50],
        attachments=tuple(_attachments(msg)),
    )


def _text_of(msg: EmailMessage) -> str:
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        content = body.get_content()
    except (LookupError, ValueError):  # an unknown charset: read what can be read
        payload = body.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    if body.get_content_subtype() == "html":
        content = html_to_text(content)
    return _without_quote(content.replace("\r\n", "\n")).strip()


def _without_quote(text: str) -> str:
    """The new part of a reply: the quoted trail ("On ... wrote:" and ">" lines) cut off."""
    lines = text.split("\n")
    end = len(lines)
    while end and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    if end < len(lines) and end and lines[end - 1].rstrip().endswith("wrote:"):
        end -= 1
    kept = "\n".join(lines[:end]).strip()
    return kept or text  # a message that is all quote keeps it


def _attachments(msg: EmailMessage) -> list[Attachment]:
    found = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        found.append(
            Attachment(
                filename=clean(part.get_filename() or "", 255),
                content_type=clean(part.get_content_type(), 100),
                size=len(payload) if isinstance(payload, bytes) else 0,
            )
        )
    return found


_BLOCKS = {
    "address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1", "h2",
    "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section", "table", "tr",
    "ul",
}  # fmt: skip
_HIDDEN = {"head", "script", "style", "template", "title"}


class _TextMaker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """HTML reduced to plain text with the standard library's parser: scripts, styles and the
    head dropped, blocks on lines of their own, entities decoded, spaces collapsed."""
    maker = _TextMaker()
    maker.feed(html)
    maker.close()
    lines = (" ".join(line.split()) for line in "".join(maker.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
