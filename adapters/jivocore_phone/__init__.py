"""jivocore_phone: the telephony channel. A phone system's call events arrive by HTTP webhook,
signed with HMAC-SHA256, and become conversations of kind ``call``; texts (SMS) arrive the same
way, and operators' replies leave as texts through the provider's HTTP API.

Installed, this plugin registers the `Call` entity type (the facts of each call) and
`PhoneWebhook` (the signatures already seen, so a replayed request is refused). The channel is
configured by the host and registers itself::

    desk = HelpDesk.open("helpdesk.db", plugins=[PhoneChannel(secret=..., listen_port=8026)])
    desk.start_channels()  # or mount channel.wsgi_app in the host's own WSGI server

No dependency beyond the standard library (wsgiref, urllib, hmac).
"""

from __future__ import annotations

from collections.abc import Callable

from jivocore import EntityType, hookimpl

from .channel import PhoneChannel, sign
from .entities import Call, PhoneWebhook

__all__ = ["ENTITY_TYPES", "Call", "PhoneChannel", "PhoneWebhook", "sign"]

ENTITY_TYPES = (
    EntityType(
        name="phone_calls",
        cls=Call,
        unique=(("channel", "call_id"),),
        indexes=(("conversation_id",), ("state", "started")),
    ),
    EntityType(
        name="phone_webhooks",
        cls=PhoneWebhook,
        unique=(("channel", "signature"),),
        indexes=(("at",),),
    ),
)


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    for entity_type in ENTITY_TYPES:
        register(entity_type)
