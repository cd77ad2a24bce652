"""Protocol types of the handler hooks, for type checkers and editor completion.

A handler needs no base class: any object whose methods have these names is a
handler. Annotate your methods the same way, or list the protocols of the hooks
you implement as base classes so that an editor completes their signatures::

    from smtpproto_anyio.hook_types import HandleDATA, HandleRCPT

    class Relay(HandleRCPT, HandleDATA):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            ...

Only list the hooks you define: an inherited hook is still a hook, and a hook
that exists takes over its command's reply (``handle_DATA_CHUNK`` also switches
the server to streamed message content).

Every hook may be a plain function or a coroutine function, so the return
types below include ``Awaitable``. A status string is an SMTP reply such as
``"250 OK"`` or ``"550 5.1.1 No such user"``; ``MISSING`` or ``None`` asks for
the engine's default reply.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from smtpproto import Envelope, ProxyHeader, Session

from ._hooks import _Missing

if TYPE_CHECKING:
    from ._server import SMTPServer

__all__ = [
    "HandleAUTH",
    "HandleDATA",
    "HandleDATA_ABORT",
    "HandleDATA_CHUNK",
    "HandleEHLO",
    "HandleException",
    "HandleHELO",
    "HandleMAIL",
    "HandleNOOP",
    "HandlePROXY",
    "HandleQUIT",
    "HandleRCPT",
    "HandleRSET",
    "HandleSTARTTLS",
    "HandleVRFY",
    "Status",
]

#: Return value of a status hook: a reply string, or ``None`` or ``MISSING`` for
#: the engine's default reply.
Status: TypeAlias = "str | _Missing | None"


@runtime_checkable
class HandleHELO(Protocol):
    """Hook ``handle_HELO``: the reply to HELO.

    On a 2xx reply the server sets ``session.host_name`` unless the hook did.
    """

    def handle_HELO(
        self, server: SMTPServer, session: Session, envelope: Envelope, hostname: str
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleEHLO(Protocol):
    """``handle_EHLO``: return the EHLO reply lines (``"250-..."``, last ``"250 ..."``).

    The older four-argument form without ``responses`` returns one status string
    and is accepted as well.
    """

    def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str] | Awaitable[list[str]]: ...


@runtime_checkable
class HandleMAIL(Protocol):
    """Hook ``handle_MAIL``: the reply to MAIL FROM, options as ``KEY=value``."""

    def handle_MAIL(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleRCPT(Protocol):
    """Hook ``handle_RCPT``: the reply to RCPT TO for one forward-path."""

    def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleDATA(Protocol):
    """``handle_DATA``: take the message; ``250`` means the handler has it.

    In LMTP mode it may return a list with one status per accepted recipient.
    """

    def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> Status | list[str] | Awaitable[Status | list[str]]: ...


@runtime_checkable
class HandleDATA_CHUNK(Protocol):
    """``handle_DATA_CHUNK``: receive the message content piece by piece.

    Defining it makes the server stream the content: ``envelope.content`` stays
    ``None`` and ``handle_DATA`` is called after the last piece.
    """

    def handle_DATA_CHUNK(
        self, server: SMTPServer, session: Session, envelope: Envelope, data: bytes
    ) -> None | Awaitable[None]: ...


@runtime_checkable
class HandleDATA_ABORT(Protocol):
    """Hook ``handle_DATA_ABORT``: a message ended without ``handle_DATA``.

    Called when the engine rejected the message, the client reset the
    transaction, or the connection ended during the message content.
    """

    def handle_DATA_ABORT(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> None | Awaitable[None]: ...


@runtime_checkable
class HandleRSET(Protocol):
    """Hook ``handle_RSET``: the reply to RSET, after the envelope was replaced."""

    def handle_RSET(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleNOOP(Protocol):
    """Hook ``handle_NOOP``: the reply to NOOP, whose text (or ``None``) is ``arg``."""

    def handle_NOOP(
        self, server: SMTPServer, session: Session, envelope: Envelope, arg: str | None
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleQUIT(Protocol):
    """Hook ``handle_QUIT``: the reply to QUIT, after which the connection closes."""

    def handle_QUIT(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleVRFY(Protocol):
    """Hook ``handle_VRFY``: the reply to VRFY for ``address``."""

    def handle_VRFY(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandleAUTH(Protocol):
    """Hook ``handle_AUTH``: check credentials when no ``authenticator`` is set.

    ``args`` is ``[mechanism, login, password]``. A 2xx status logs the client
    in and ``None`` counts as a failed login.
    """

    def handle_AUTH(
        self, server: SMTPServer, session: Session, envelope: Envelope, args: list[str]
    ) -> Status | Awaitable[Status]: ...


@runtime_checkable
class HandlePROXY(Protocol):
    """``handle_PROXY``: accept (True) or drop (False) a connection by its header."""

    def handle_PROXY(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        proxy_data: ProxyHeader,
    ) -> bool | Awaitable[bool]: ...


@runtime_checkable
class HandleSTARTTLS(Protocol):
    """``handle_STARTTLS``: judge the finished handshake (``session.ssl``).

    False makes the server answer every later command but QUIT with ``554``.
    """

    def handle_STARTTLS(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> bool | Awaitable[bool]: ...


@runtime_checkable
class HandleException(Protocol):
    """``handle_exception``: turn a failing hook's exception into a status."""

    def handle_exception(self, error: Exception) -> Status | Awaitable[Status]: ...
