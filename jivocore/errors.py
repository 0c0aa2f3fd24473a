"""The errors jivocore raises: one base class, one subclass for each thing that can go wrong."""

from __future__ import annotations

from typing import Any


class JivoError(Exception):
    """Base of every error jivocore raises on purpose."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for name, value in details.items():
            setattr(self, name, value)


class NotFoundError(JivoError, LookupError):
    """No entity of that kind has that id."""


class ValidationError(JivoError, ValueError):
    """Input that can never be accepted as it is: fix it and try again."""


class InvalidTransition(JivoError):
    """The command does not apply to the conversation in its current state."""


class ConflictError(JivoError):
    """Someone else changed or created the same thing first; reload and retry."""


class PermissionDenied(JivoError):
    """The operator may not do this."""


class ClientBlocked(JivoError):
    """The client is blocked; their messages are refused until the block ends."""


class Vetoed(JivoError):
    """A plugin refused the command."""


class Undeliverable(JivoError):
    """A channel can never send this message (no such address, refused for good): no retry."""


class StorageError(JivoError):
    """The storage backend failed; `retriable` says whether trying again may succeed."""


class ConfigurationError(JivoError):
    """The desk is composed or configured in a way that cannot work."""


class PluginError(JivoError):
    """A plugin misbehaved; `plugin` names it."""
