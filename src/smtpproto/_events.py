"""Events that :meth:`ServerConnection.next_event` returns.

Events marked "needs a reply" leave the connection paused until the application
answers with :meth:`ServerConnection.send_reply` or :meth:`ServerConnection.accept`.
The others are notifications and need nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

__all__ = [
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
    "Event",
    "Helo",
    "Help",
    "MailFrom",
    "Noop",
    "ProxyHeader",
    "Quit",
    "RcptTo",
    "Rset",
    "StartTLS",
    "UnknownCommand",
    "Vrfy",
]

#: ESMTP parameters of MAIL or RCPT: (keyword upper-cased, value or None), in order.
Parameters = tuple[tuple[str, "str | None"], ...]


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader(Event):
    """PROXY protocol header read before the greeting (needs the greeting as reply).

    Both versions use version 2's names: ``family`` is ``"INET"``, ``"INET6"``,
    ``"UNIX"`` or ``"UNSPEC"`` (a version 1 ``TCP4`` header gives ``"INET"``, and
    ``UNKNOWN`` gives ``"UNSPEC"``), ``protocol`` is ``"STREAM"``, ``"DGRAM"`` or
    ``"UNSPEC"``. The addresses and ports are ``None`` for ``LOCAL`` and
    ``UNSPEC`` headers.
    """

    version: int
    command: str
    family: str
    protocol: str
    source_address: str | None = None
    source_port: int | None = None
    destination_address: str | None = None
    destination_port: int | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    raw: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Helo(Event):
    """HELO command (needs a reply)."""

    hostname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ehlo(Event):
    """EHLO command, or LHLO in LMTP mode (needs a reply).

    ``extensions`` are the keyword lines that :meth:`ServerConnection.accept` sends
    after the first line, for example ``("SIZE 33554432", "8BITMIME", "HELP")``.
    """

    hostname: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MailFrom(Event):
    """MAIL FROM command with a valid reverse-path (needs a reply).

    ``address`` is ``"<>"`` for the null reverse-path, as aiosmtpd stores it.
    """

    address: str
    params: Parameters = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RcptTo(Event):
    """RCPT TO command with a valid forward-path (needs a reply)."""

    address: str
    params: Parameters = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Data(Event):
    """DATA command in a transaction with recipients (needs a reply, 354 to go on)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bdat(Event):
    """Start of a BDAT chunk of ``size`` octets; the chunk follows as DataChunk events.

    A notification. The engine itself replies ``250`` to a chunk that is not the
    last one, and the last chunk ends with :class:`DataComplete`.
    """

    size: int
    last: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DataChunk(Event):
    """Piece of the message content, dot-unstuffed (a notification)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DataComplete(Event):
    """End of the message content (needs a reply; in LMTP one per accepted recipient).

    ``size`` is the number of content octets delivered in DataChunk events.
    """

    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRejected(Event):
    """The message in progress was dropped (a notification).

    Either the engine rejected it at its end and has queued the reply ``code``
    (one per accepted recipient in LMTP), or a command that resets the
    transaction (RSET, HELO, EHLO, LHLO, STARTTLS) arrived during a BDAT
    transaction: then ``code`` is 250 and the command's own event follows.
    Either way, discard the collected DataChunk data; the transaction is over.
    """

    code: int
    enhanced: str | None
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rset(Event):
    """RSET command; the envelope is already reset (needs a reply)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Noop(Event):
    """NOOP command (needs a reply)."""

    argument: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Vrfy(Event):
    """VRFY command (needs a reply)."""

    argument: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Help(Event):
    """HELP command (needs a reply)."""

    argument: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Event):
    """QUIT command (needs a reply; the connection closes after it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTLS(Event):
    """STARTTLS command (needs a reply).

    After a ``220`` reply, flush :meth:`ServerConnection.data_to_send`, run the TLS
    handshake, then call :meth:`ServerConnection.tls_established`.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthCredentials(Event):
    """Credentials from a PLAIN, LOGIN or CRAM-MD5 exchange (needs a reply, 235 or 535).

    For CRAM-MD5, ``password`` is the client's hex digest and ``challenge`` the
    challenge it was computed over; check it with :meth:`verify_cram_md5`.
    :meth:`ServerConnection.accept` accepts the credentials (235): call it only
    after checking them, and answer ``send_reply(535)`` otherwise.
    """

    mechanism: str
    username: str
    password: str
    authorization_id: str = ""
    challenge: bytes = b""

    def verify_cram_md5(self, secret: str | bytes) -> bool:
        """Return whether a CRAM-MD5 response matches ``secret`` (RFC 2195)."""
        key = secret.encode() if isinstance(secret, str) else secret
        expected = hmac.new(key, self.challenge, hashlib.md5).hexdigest().encode()
        # Compare bytes: compare_digest refuses str with non-ASCII characters.
        given = self.password.lower().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(expected, given)


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(Event):
    """AUTH with a mechanism the application runs itself (needs a reply).

    Answer with :meth:`ServerConnection.send_challenge` to continue the exchange, or
    with a final reply (235, 535, ...).
    """

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResponse(Event):
    """Client's decoded answer to a challenge from ``send_challenge`` (needs a reply)."""

    mechanism: str
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthAborted(Event):
    """The client cancelled an AUTH exchange with ``*``; the engine replied 501."""

    mechanism: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownCommand(Event):
    """Command verb the engine does not implement (needs a reply; default 500)."""

    verb: str
    argument: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The peer closed its side, or the engine closed the session (a notification)."""
