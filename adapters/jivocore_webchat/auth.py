"""Who is who on the web: operator logins with scrypt-hashed passwords, revocable operator
tokens, and HMAC-signed visitor tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from datetime import datetime

import attrs

from jivocore import (
    ConflictError,
    HelpDesk,
    NotFoundError,
    Operator,
    PermissionDenied,
    Role,
    ValidationError,
    Work,
    new_id,
)

SECRET_ID = "visitor-secret"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class Unauthorized(PermissionDenied):
    """No credentials, or credentials that are wrong, expired or revoked."""

    http_status = 401


@attrs.frozen(kw_only=True)
class WebLogin:
    """An operator's credentials for the console: a login name and a password hash."""

    id: str
    version: int = 0
    operator_id: str
    login: str
    password_hash: str
    created: datetime


@attrs.frozen(kw_only=True)
class WebToken:
    """A console session. Only the token's SHA-256 digest is stored."""

    id: str
    version: int = 0
    operator_id: str
    digest: str
    created: datetime
    revoked: datetime | None = None


@attrs.frozen(kw_only=True)
class WebSecret:
    """The key visitor tokens are signed with, when the settings give none."""

    id: str
    version: int = 0
    value: str


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), from the standard library's scrypt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + f"{b64(salt).decode()}${b64(digest).decode()}"


# scrypt holds 128 * r * n bytes (16 MiB) while it runs: logins arriving together (or a flood
# of wrong passwords) take turns, two at a time, instead of each holding its own 16 MiB.
_CHECKING = threading.BoundedSemaphore(2)


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        with _CHECKING:
            found = hashlib.scrypt(
                password.encode(),
                salt=base64.b64decode(salt),
                n=int(n),
                r=int(r),
                p=int(p),
                dklen=32,
            )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, base64.b64decode(digest))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_login(desk: HelpDesk, operator_id: str, login: str, password: str) -> WebLogin:
    """Give an operator a console login (a login name taken already is a ConflictError)."""
    login = login.strip().lower()
    if not login or len(password) < 8:
        raise ValidationError("a login needs a name and a password of 8 characters or more")
    hashed = hash_password(password)

    def change(work: Work) -> WebLogin:
        work.operator(operator_id)
        if list(work.tx.select(WebLogin, {"login": login}, limit=1)):
            raise ConflictError(f"the login {login!r} is taken", login=login)
        saved = work.tx.add(
            WebLogin(
                id=new_id(work.now),
                operator_id=operator_id,
                login=login,
                password_hash=hashed,
                created=work.now,
            )
        )
        work.record("web_login_added", actor_id=operator_id)
        return saved

    return desk.run(change)


def log_in(desk: HelpDesk, login: str, password: str) -> tuple[str, WebToken]:
    """A new token for the operator whose login and password these are; Unauthorized if not."""
    with desk.reading() as tx:
        found = list(tx.select(WebLogin, {"login": login.strip().lower()}, limit=1))
    if not found or not check_password(password, found[0].password_hash):
        raise Unauthorized("wrong login or password")
    token = secrets.token_urlsafe(32)

    def change(work: Work) -> WebToken:
        saved = work.tx.add(
            WebToken(
                id=new_id(work.now),
                operator_id=found[0].operator_id,
                digest=_digest(token),
                created=work.now,
            )
        )
        work.record("web_logged_in", actor_id=found[0].operator_id)
        return saved

    return token, desk.run(change)


def authenticate(desk: HelpDesk, token: str | None) -> tuple[Operator, WebToken]:
    """The operator a bearer token belongs to; Unauthorized if it is unknown or revoked."""
    if not token:
        raise Unauthorized("log in first: no token")
    with desk.reading() as tx:
        found = list(tx.select(WebToken, {"digest": _digest(token)}, limit=1))
        if not found or found[0].revoked is not None:
            raise Unauthorized("the token is unknown or revoked")
        return tx.get(Operator, found[0].operator_id), found[0]


def revoke(desk: HelpDesk, actor: Operator, operator_id: str) -> list[str]:
    """Revoke every live token of the operator (their own, or anyone's for an admin); returns
    the ids revoked."""
    if actor.id != operator_id and actor.role != Role.ADMIN:
        raise PermissionDenied("only an admin revokes another operator's tokens")

    def change(work: Work) -> list[str]:
        work.operator(operator_id)
        ids = []
        for token in work.tx.select(WebToken, {"operator_id": operator_id, "revoked": None}):
            work.tx.update(attrs.evolve(token, revoked=work.now))
            ids.append(token.id)
        work.record("web_tokens_revoked", actor_id=actor.id, operator_id=operator_id)
        return ids

    return desk.run(change)


def revoke_token(desk: HelpDesk, token: WebToken) -> None:
    """Revoke one token (log out)."""

    def change(work: Work) -> None:
        current = work.tx.get(WebToken, token.id)
        if current.revoked is None:
            work.tx.update(attrs.evolve(current, revoked=work.now))
            work.record("web_logged_out", actor_id=token.operator_id)

    desk.run(change)


def visitor_secret(desk: HelpDesk) -> bytes:
    """The ``webchat_secret`` setting, or a key generated once and stored in the database."""
    configured = desk.settings.get("webchat_secret")
    if configured:
        return str(configured).encode()

    def change(work: Work) -> str:
        try:
            return work.tx.get(WebSecret, SECRET_ID).value
        except NotFoundError:
            return work.tx.add(WebSecret(id=SECRET_ID, value=secrets.token_hex(32))).value

    return desk.run(change).encode()


def sign_visitor(secret: bytes, visitor_id: str) -> str:
    mac = hmac.new(secret, b"visitor:" + visitor_id.encode(), hashlib.sha256).hexdigest()
    return f"{visitor_id}.{mac}"


def new_visitor(secret: bytes) -> tuple[str, str]:
    """A fresh visitor id and its signed token."""
    visitor_id = "v" + secrets.token_hex(12)
    return visitor_id, sign_visitor(secret, visitor_id)


def visitor_of(secret: bytes, token: str | None) -> str:
    """The visitor id a token was signed for; Unauthorized if the signature is wrong."""
    visitor_id, _, _ = (token or "").partition(".")
    if not visitor_id or not hmac.compare_digest(sign_visitor(secret, visitor_id), token or ""):
        raise Unauthorized("the visitor token is not valid")
    return visitor_id
