"""smtpproto_anyio: an anyio SMTP/LMTP server with aiosmtpd-style handler hooks.

It runs the :mod:`smtpproto` engine over anyio sockets, so it works on asyncio and
trio. Start with :class:`SMTPServer` or the threaded :class:`Controller`.
"""

from __future__ import annotations

from smtpproto import Envelope, Session

from ._controller import Controller
from ._hooks import MISSING, AuthExchange, AuthResult, LoginPassword
from ._server import Authenticator, SMTPServer, __version__, serve
from .handlers import AsyncMessage, Debugging, Mailbox, Maildir, Message, Proxy, Sink

__all__ = [
    "MISSING",
    "AsyncMessage",
    "AuthExchange",
    "AuthResult",
    "Authenticator",
    "Controller",
    "Debugging",
    "Envelope",
    "LoginPassword",
    "Mailbox",
    "Maildir",
    "Message",
    "Proxy",
    "SMTPServer",
    "Session",
    "Sink",
    "__version__",
    "serve",
]
