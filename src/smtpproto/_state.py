"""The engine's input states and the command gates that depend on session state."""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = ["ServerState"]


class ServerState(Enum):
    """Input state: the kind of client input the engine reads next."""

    #: Before the greeting: waiting for a PROXY header or for the application to greet.
    GREETING = "GREETING"
    #: Reading command lines.
    COMMAND = "COMMAND"
    #: Reading message content after ``354``, up to ``<CRLF>.<CRLF>``.
    DATA = "DATA"
    #: Reading the octets of a BDAT chunk.
    BDAT = "BDAT"
    #: Reading one SASL response line of an AUTH exchange.
    AUTH = "AUTH"
    #: STARTTLS was accepted; the I/O layer is running the TLS handshake.
    TLS_HANDSHAKE = "TLS_HANDSHAKE"
    #: The session is over; nothing more is read.
    CLOSED = "CLOSED"


# RFC 3207, section 4: before STARTTLS a server that requires TLS should answer
# every other command with 530. These commands stay usable so the client can
# greet, ask for TLS, or leave.
ALLOWED_BEFORE_STARTTLS: Final = frozenset(
    {"EHLO", "HELO", "LHLO", "NOOP", "RSET", "STARTTLS", "QUIT"}
)

# RFC 4954, section 6: with authentication required, the server answers 530 to
# mail commands until AUTH succeeds; these are what a client needs to get there.
ALLOWED_BEFORE_AUTH: Final = frozenset(
    {"AUTH", "EHLO", "HELO", "LHLO", "NOOP", "RSET", "STARTTLS", "QUIT"}
)

# Verbs of HTTP requests and proxy probes. Such a client is not speaking SMTP, so
# the session ends at once instead of answering every header line (Postfix's
# smtpd_forbidden_commands does the same).
HTTP_VERBS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"}
)
