"""SMTP replies: the :class:`Reply` type and every reply text the engine sends itself."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["Reply", "parse_status"]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_STATUS = re.compile(r"([2-5]\d\d)(?:([ -])(.*))?\Z", re.DOTALL)
_STATUS_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: (.*))?\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a code, an optional enhanced status code (RFC 3463) and text lines.

    :raises ValueError: if the code is outside 200..599, the enhanced code is malformed
        or its class differs from the first digit of the code, or a line contains
        CR or LF.
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code!r} is outside 200..599")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced):
                raise ValueError(f"invalid enhanced status code {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(
                    f"enhanced status code {self.enhanced!r} does not match the class "
                    f"of reply code {self.code}"
                )
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"reply line {line[:40]!r} contains CR or LF")

    def to_bytes(self, *, with_enhanced: bool = True) -> bytes:
        """Render the reply as it goes on the wire, CRLF after every line."""
        prefix = self.enhanced + " " if with_enhanced and self.enhanced else ""
        lines = self.lines or ("",)
        last = len(lines) - 1
        rendered = []
        for index, line in enumerate(lines):
            separator = " " if index == last else "-"
            rendered.append(f"{self.code}{separator}{prefix}{line}".rstrip(" "))
        return ("\r\n".join(rendered) + "\r\n").encode("utf-8", "surrogateescape")

    @property
    def text(self) -> str:
        """The reply lines joined with newlines."""
        return "\n".join(self.lines)


def parse_status(status: str) -> Reply:
    """Parse an aiosmtpd-style status string such as ``"550 5.1.1 No such user"``.

    Multi-line strings may use ``"250-first\\n250 last"`` or plain newlines after the
    first line's code. An enhanced status code right after the code on the first line
    is taken as the reply's enhanced code and removed from every line that repeats it.

    :raises ValueError: if the string does not start with a reply code.
    """
    raw_lines = status.replace("\r\n", "\n").split("\n")
    while len(raw_lines) > 1 and raw_lines[-1] == "":
        raw_lines.pop()
    first = _STATUS.match(raw_lines[0])
    if first is None:
        raise ValueError(f"status {status[:60]!r} does not start with a reply code")
    code = int(first.group(1))
    texts = [first.group(3) or ""]
    for line in raw_lines[1:]:
        match = _STATUS.match(line)
        if match is not None and int(match.group(1)) == code:
            texts.append(match.group(3) or "")
        else:
            texts.append(line)

    enhanced = None
    head = _STATUS_ENHANCED.match(texts[0])
    if head is not None and head.group(1)[0] == str(code)[0]:
        enhanced = head.group(1)
        prefix = enhanced + " "
        texts = [t.removeprefix(prefix) for t in texts]
        texts[0] = head.group(2) or ""
    return Reply(code, enhanced, tuple(texts))


def _reply(code: int, enhanced: str | None, *lines: str) -> Reply:
    return Reply(code, enhanced, lines)


def lines_of(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Turn a reply text argument into lines; ``None`` stays ``None``."""
    if text is None:
        return None
    if isinstance(text, str):
        return tuple(text.replace("\r\n", "\n").split("\n"))
    return tuple(text)


# Replies the engine sends without asking the application. The texts follow
# aiosmtpd where it has one, so clients and tests written against it still match.

OK: Final = _reply(250, "2.0.0", "OK")
SENDER_OK: Final = _reply(250, "2.1.0", "OK")
RECIPIENT_OK: Final = _reply(250, "2.1.5", "OK")
MESSAGE_OK: Final = _reply(250, "2.0.0", "OK")
START_DATA: Final = _reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE: Final = _reply(221, "2.0.0", "Bye")
READY_FOR_TLS: Final = _reply(220, "2.0.0", "Ready to start TLS")
VRFY_DEFAULT: Final = _reply(
    252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
AUTH_OK: Final = _reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED: Final = _reply(535, "5.7.8", "Authentication credentials invalid")

UNKNOWN_COMMAND: Final = _reply(500, "5.5.1", "Command not recognized")
BAD_SYNTAX: Final = _reply(500, "5.5.2", "Error: bad syntax")
LINE_TOO_LONG: Final = _reply(500, "5.5.2", "Line too long")
BARE_LF_IN_COMMAND: Final = _reply(500, "5.5.2", "Bare <LF> received in command line")
CONTROL_CHARACTER: Final = _reply(500, "5.5.2", "Control character in command line")
NOT_ASCII: Final = _reply(500, "5.5.2", "Error: strict ASCII mode")
NOT_UTF8: Final = _reply(500, "5.5.2", "Error: command line is not valid UTF-8")
EXPN_NOT_IMPLEMENTED: Final = _reply(502, "5.5.1", "EXPN not implemented")
TOO_MANY_ERRORS: Final = _reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_UNAUTHENTICATED: Final = _reply(
    421, "4.7.0", "Too many commands before authentication, closing connection"
)
HTTP_FORBIDDEN: Final = _reply(421, "4.7.0", "HTTP requests are not accepted here")
PIPELINING_REFUSED: Final = _reply(554, "5.5.0", "Error: SMTP protocol synchronization")
TIMEOUT: Final = _reply(421, "4.4.2", "Timeout exceeded, closing connection")
SHUTTING_DOWN: Final = _reply(421, "4.3.2", "Service shutting down, closing connection")

HELO_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: EHLO hostname")
LHLO_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: LHLO hostname")
INVALID_DOMAIN: Final = _reply(501, "5.5.4", "Invalid domain name")
MAIL_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
MAIL_SYNTAX_ESMTP: Final = _reply(
    501, "5.5.4", "Syntax: MAIL FROM:<address> [SP <mail-parameters>]"
)
RCPT_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
RCPT_SYNTAX_ESMTP: Final = _reply(
    501, "5.5.4", "Syntax: RCPT TO:<address> [SP <mail-parameters>]"
)
BAD_SENDER_ADDRESS: Final = _reply(553, "5.1.7", "Error: malformed sender address")
BAD_RECIPIENT_ADDRESS: Final = _reply(
    501, "5.1.3", "Error: malformed recipient address"
)
SENDER_NEEDS_SMTPUTF8: Final = _reply(
    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"
)
RECIPIENT_NEEDS_SMTPUTF8: Final = _reply(
    553, "5.6.7", "Non-ASCII address requires an SMTPUTF8 transaction"
)
PARAMS_NEED_EHLO: Final = _reply(501, "5.5.4", "Parameters require EHLO")
PARAM_SYNTAX: Final = _reply(501, "5.5.4", "Error: invalid parameter syntax")
PARAM_DUPLICATE: Final = _reply(501, "5.5.4", "Error: parameter given twice")
MAIL_PARAM_UNKNOWN: Final = _reply(
    555, "5.5.4", "MAIL FROM parameters not recognized or not implemented"
)
RCPT_PARAM_UNKNOWN: Final = _reply(
    555, "5.5.4", "RCPT TO parameters not recognized or not implemented"
)
BODY_INVALID: Final = _reply(
    501, "5.5.4", "Error: BODY can only be one of 7BIT, 8BITMIME"
)
SMTPUTF8_HAS_VALUE: Final = _reply(501, "5.5.4", "Error: SMTPUTF8 takes no arguments")
SIZE_INVALID: Final = _reply(501, "5.5.4", "Error: SIZE must be a number of octets")
SIZE_TOO_BIG: Final = _reply(
    552, "5.3.4", "Error: message size exceeds fixed maximum message size"
)
DSN_INVALID: Final = _reply(501, "5.5.4", "Error: invalid DSN parameter value")
AUTH_PARAM_INVALID: Final = _reply(501, "5.5.4", "Error: invalid AUTH parameter")

NO_SERVICE: Final = _reply(503, "5.5.1", "Error: no SMTP service here, send QUIT")
NEED_HELO: Final = _reply(503, "5.5.1", "Error: send HELO first")
NEED_EHLO: Final = _reply(503, "5.5.1", "Error: send EHLO first")
NESTED_MAIL: Final = _reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL: Final = _reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT: Final = _reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RECIPIENTS: Final = _reply(554, "5.5.1", "Error: no valid recipients")
DATA_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: DATA")
DATA_AFTER_BDAT: Final = _reply(503, "5.5.1", "Error: DATA cannot follow BDAT")
BDAT_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: BDAT <chunk-size> [LAST]")
BDAT_AFTER_FAILURE: Final = _reply(
    503, "5.5.1", "Error: previous BDAT failed, send RSET first"
)
TOO_MANY_RECIPIENTS: Final = _reply(452, "4.5.3", "Error: too many recipients")
RSET_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: RSET")
QUIT_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: QUIT")
VRFY_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: VRFY <address>")
HELP_UNKNOWN_TOPIC: Final = _reply(504, "5.5.1", "HELP topic not recognized")
STARTTLS_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: STARTTLS")
STARTTLS_UNAVAILABLE: Final = _reply(454, "4.7.0", "TLS not available")
STARTTLS_ALREADY_ACTIVE: Final = _reply(503, "5.5.1", "Error: TLS already active")
STARTTLS_REQUIRED: Final = _reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED: Final = _reply(530, "5.7.0", "Authentication required")

MESSAGE_TOO_BIG: Final = _reply(552, "5.3.4", "Error: Too much mail data")
MESSAGE_LINE_TOO_LONG: Final = _reply(
    500, "5.5.2", "Line too long (see RFC5321 4.5.3.1.6)"
)
MESSAGE_BARE_LINE_ENDING: Final = _reply(
    550, "5.5.2", "Error: bare <CR> or <LF> received, use CRLF line endings"
)

AUTH_NOT_AVAILABLE: Final = _reply(502, "5.5.1", "Error: AUTH not available")
AUTH_SYNTAX: Final = _reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_ALREADY_DONE: Final = _reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION: Final = _reply(
    503, "5.5.1", "Error: AUTH not allowed during a mail transaction"
)
AUTH_NEEDS_TLS: Final = _reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_UNKNOWN_MECHANISM: Final = _reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ABORTED: Final = _reply(501, "5.7.0", "Auth aborted")
AUTH_BAD_BASE64: Final = _reply(501, "5.5.2", "Can't decode base64")
AUTH_BAD_PLAIN: Final = _reply(501, "5.5.2", "Can't split auth value")
AUTH_LINE_TOO_LONG: Final = _reply(
    500, "5.5.6", "Authentication exchange line is too long"
)
