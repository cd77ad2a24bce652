"""Exceptions raised to the application; client mistakes never raise."""

from __future__ import annotations

__all__ = ["LocalProtocolError", "SMTPProtocolError"]


class SMTPProtocolError(Exception):
    """Base class of the engine's exceptions."""


class LocalProtocolError(SMTPProtocolError):
    """The application used the engine in a way the protocol does not allow.

    Examples: a reply when no command awaits one, a reply code that does not fit the
    pending command, or data fed after the connection was closed.
    """
