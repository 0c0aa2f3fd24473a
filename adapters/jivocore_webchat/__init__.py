"""jivocore_webchat: the web chat channel and the operator console, as an ASGI app.

Installed, this plugin registers its entity types (console logins, tokens, the visitor-token
key) and the ``jivocore serve`` command. The channel is configured by the host and registers
itself; the app is mounted in the host's ASGI app or served by ``jivocore serve``::

    web = WebChat(allowed_origins=["https://shop.example"])
    desk = HelpDesk.open("helpdesk.db", plugins=[web])
    app = make_app(desk, web)

Needs the ``web`` extra (Starlette, uvicorn). See docs/webchat.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jivocore import EntityType, hookimpl

from .app import ENDPOINTS, make_app, openapi
from .auth import WebLogin, WebSecret, WebToken, add_login
from .channel import WebChat

__all__ = [
    "ENDPOINTS",
    "ENTITY_TYPES",
    "WebChat",
    "WebLogin",
    "WebSecret",
    "WebToken",
    "add_login",
    "make_app",
    "openapi",
]

ENTITY_TYPES = (
    EntityType(
        name="webchat_logins",
        cls=WebLogin,
        unique=(("login",),),
        indexes=(("operator_id",),),
    ),
    EntityType(
        name="webchat_tokens",
        cls=WebToken,
        unique=(("digest",),),
        indexes=(("operator_id", "revoked"),),
    ),
    EntityType(name="webchat_secrets", cls=WebSecret),
)


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    for entity_type in ENTITY_TYPES:
        register(entity_type)


@hookimpl
def jivocore_register_commands(register: Callable[[Any], None]) -> None:
    from .cli import serve

    register(serve)
