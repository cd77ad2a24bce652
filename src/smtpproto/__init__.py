"""smtpproto: a sans-I/O SMTP and LMTP server engine.

Bytes from the client go in through :meth:`ServerConnection.receive_data`, events
come out of :meth:`ServerConnection.next_event`, and the replies to send come out
of :meth:`ServerConnection.data_to_send`. Nothing here does I/O.
"""

from __future__ import annotations

from ._connection import NEED_DATA, PAUSED, ServerConnection
from ._errors import LocalProtocolError, SMTPProtocolError
from ._events import (
    Auth,
    AuthAborted,
    AuthCredentials,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    DataRejected,
    Ehlo,
    Event,
    Helo,
    Help,
    MailFrom,
    Noop,
    ProxyHeader,
    Quit,
    RcptTo,
    Rset,
    StartTLS,
    UnknownCommand,
    Vrfy,
)
from ._replies import Reply, parse_status
from ._session import Envelope, Session
from ._state import ServerState

__version__ = "0.1.0"

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Auth",
    "AuthAborted",
    "AuthCredentials",
    "AuthResponse",
    "Bdat",
    "ConnectionClosed",
    "Data",
    "DataChunk",
    "DataComplete",
    "DataRejected",
    "Ehlo",
    "Envelope",
    "Event",
    "Helo",
    "Help",
    "LocalProtocolError",
    "MailFrom",
    "Noop",
    "ProxyHeader",
    "Quit",
    "RcptTo",
    "Reply",
    "Rset",
    "SMTPProtocolError",
    "ServerConnection",
    "ServerState",
    "Session",
    "StartTLS",
    "UnknownCommand",
    "Vrfy",
    "parse_status",
]
