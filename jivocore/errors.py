"""The errors jivocore raises: one base class, one subclass for each thing that can go wrong.

Each carries `http_status`, the answer an HTTP adapter gives for it, so every adapter (and a
host's own API) answers the same error with the same status; a plugin's own error class sets
its own."""

from __future__ import annotations

from typing import Any


class JivoError(Exception):
    """Base of every error jivocore raises on purpose."""

    http_status = 400  # the desk refused the request

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for name, value in details.items():
            setattr(self, name, value)


class NotFoundError(JivoError, LookupError):
    """No entity of that kind has that id."""

    http_status = 404


class ValidationError(JivoError, ValueError):
    """Input that can never be accepted as it is: fix it and try again."""

    http_status = 422


class InvalidTransition(JivoError):
    """The command does not apply to the conversation in its current state."""

    http_status = 409


class ConflictError(JivoError):
    """Someone else changed or created the same thing first; reload and retry."""

    http_status = 409


class PermissionDenied(JivoError):
    """The operator may not do this."""

    http_status = 403


class ClientBlocked(JivoError):
    """The client is blocked; their messages are refused until the block ends."""

    http_status = 403


class Vetoed(JivoError):
    """A plugin refused the command."""

    http_status = 409


class Undeliverable(JivoError):
    """A channel can never send this message (no such address, refused for good): no retry."""

    http_status = 422


class StorageError(JivoError):
    """The storage backend failed; `retriable` says whether trying again may succeed."""

    @property
    def http_status(self) -> int:  # type: ignore[override]
        """The service failed, not the request: 503 (try again) if retriable, else 500."""
        return 503 if getattr(self, "retriable", False) else 500


class ConfigurationError(JivoError):
    """The desk is composed or configured in a way that cannot work."""

    http_status = 500


class PluginError(JivoError):
    """A plugin misbehaved; `plugin` names it."""

    http_status = 500
