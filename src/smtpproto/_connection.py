"""ServerConnection: the SMTP/LMTP server state machine, bytes in and events out."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Final, Literal

from . import _replies as replies
from ._errors import LocalProtocolError
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
from ._parser import (
    CommandError,
    is_valid_domain_argument,
    is_valid_xtext,
    parse_params,
    parse_path_argument,
    split_path,
)
from ._proxy import ProxyHeaderError, parse_proxy_header
from ._replies import Reply, lines_of
from ._session import Envelope, Session
from ._state import (
    ALLOWED_BEFORE_AUTH,
    ALLOWED_BEFORE_STARTTLS,
    HTTP_VERBS,
    ServerState,
)

__all__ = ["NEED_DATA", "PAUSED", "ServerConnection"]


class _Wait(Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


#: ``next_event()`` needs more bytes from the peer: call ``receive_data()``.
NEED_DATA: Final = _Wait.NEED_DATA
#: ``next_event()`` waits for the application: a reply, the greeting or a TLS handshake.
PAUSED: Final = _Wait.PAUSED

BareLineEndingPolicy = Literal["reject", "normalize", "allow"]

# Extra command-line octets that extensions allow on top of RFC 5321's 512:
# SIZE (RFC 1870, section 3) 26, SMTPUTF8 (RFC 6531, section 3.4) 10, AUTH=
# (RFC 4954, section 5) 500, DSN (RFC 3461, section 4) 500 for ORCPT plus room
# for RET, ENVID and NOTIFY. BODY (RFC 6152) fits in the SIZE allowance.
_ALLOWANCE_SIZE: Final = 26
_ALLOWANCE_SMTPUTF8: Final = 10
_ALLOWANCE_AUTH: Final = 500
_ALLOWANCE_DSN: Final = 640

_CONTROL: Final = re.compile(rb"[\x00-\x1f\x7f]")
_NOT_PRINTABLE_ASCII: Final = re.compile(rb"[^\x20-\x7e]")
_BARE_LINE_ENDING: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")

_BUILTIN_SASL: Final = frozenset({"PLAIN", "LOGIN", "CRAM-MD5"})
_LOGIN_USERNAME: Final = b"334 " + base64.b64encode(b"Username:") + b"\r\n"
_LOGIN_PASSWORD: Final = b"334 " + base64.b64encode(b"Password:") + b"\r\n"

_HELP_SYNTAX: Final = {
    "AUTH": "AUTH <mechanism> [<initial-response>]",
    "BDAT": "BDAT <chunk-size> [LAST]",
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "LHLO": "LHLO hostname",
    "MAIL": "MAIL FROM:<address> [SP <mail-parameters>]",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO:<address> [SP <rcpt-parameters>]",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}

# Events without fields are immutable and equal to each other, so one instance
# each serves every connection and saves an allocation per command.
_DATA: Final = Data()
_RSET: Final = Rset()
_QUIT: Final = Quit()
_STARTTLS: Final = StartTLS()
_CONNECTION_CLOSED: Final = ConnectionClosed()

_GREETING_PENDING: Final = "greeting"

# Events that need no reply; every other event leaves the connection paused.
_NOTIFICATIONS: Final = frozenset(
    {Bdat, DataChunk, DataRejected, AuthAborted, ConnectionClosed}
)


class ServerConnection:
    """The server side of one SMTP or LMTP connection, without any I/O.

    Feed received bytes to :meth:`receive_data`, take events from
    :meth:`next_event`, reply to each command event with :meth:`send_reply` or
    :meth:`accept`, and write :meth:`data_to_send` to the peer. The greeting is the
    application's first reply.

    :param hostname: the server's name in the greeting and the EHLO reply.
    :param lmtp: speak LMTP (RFC 2033): LHLO instead of HELO/EHLO, and one reply
        per accepted recipient after the message content.
    :param max_message_size: the SIZE limit in octets (RFC 1870), checked against
        the declared size at MAIL and the received size; ``None`` for no limit.
    :param bare_line_ending: what to do with a CR or LF that is not part of CRLF:
        ``"reject"`` (command lines get ``500``, messages ``550 5.5.2`` at their
        end), ``"normalize"`` (treat as CRLF) or ``"allow"`` (pass through).
        Only CRLF.CRLF ever ends message content.
    :param max_command_line: the command line limit in octets including CRLF,
        before the allowance of enabled extensions (RFC 5321, section 4.5.3.1.4).
    :param max_text_line: the message line limit in octets including CRLF
        (RFC 5321, section 4.5.3.1.6); ``None`` for no limit. One stuffing dot
        is allowed on top.
    :param max_recipients: accepted RCPT commands per transaction before ``452``.
    :param max_errors: client errors (replies 500-504) before ``421`` and close.
    :param max_unauthenticated_commands: commands before AUTH succeeds, when
        ``auth_required`` is set, before ``421`` and close.
    :param max_sasl_response: the SASL response line limit in octets
        (RFC 4954, section 4: at least 12288).
    :param proxy_protocol: read a PROXY protocol v1/v2 header before the greeting.
    :param max_proxy_header: the PROXY header limit in octets.
    :param reject_unsynchronized: answer a client that talks before the greeting,
        or pipelines commands without having negotiated PIPELINING, with
        ``554 5.5.0`` and close, as Postfix's ``smtpd_forbid_unauth_pipelining``.
    """

    # Slots keep an idle connection small: a server may hold many thousands.
    __slots__ = (
        "_accepted",
        "_auth_challenge",
        "_auth_mechanism",
        "_auth_step",
        "_auth_username",
        "_bare_line_ending",
        "_bdat_active",
        "_bdat_discard",
        "_bdat_error",
        "_bdat_failed",
        "_bdat_last",
        "_bdat_remaining",
        "_bdat_size",
        "_buffer",
        "_commands",
        "_discarding_line",
        "_early_talker",
        "_errors",
        "_esc",
        "_greeted",
        "_has_sender",
        "_held_cr",
        "_hello",
        "_line_dot",
        "_line_length",
        "_line_start",
        "_line_too_long",
        "_lmtp_replies",
        "_message_error",
        "_message_size",
        "_out",
        "_peer_closed",
        "_pending",
        "_plain_accept",
        "_pos",
        "_queued",
        "_rcpt_attempted",
        "_refusal",
        "_shutdown_requested",
        "_smtputf8",
        "_snapshot",
        "_state",
        "_strict_lines",
        "_tls_active",
        "_unauthenticated_commands",
        "auth_mechanisms",
        "auth_require_tls",
        "auth_required",
        "bare_line_ending",
        "enable_8bitmime",
        "enable_chunking",
        "enable_dsn",
        "enable_enhanced_status_codes",
        "enable_help",
        "enable_pipelining",
        "enable_smtputf8",
        "envelope",
        "hostname",
        "lmtp",
        "max_command_line",
        "max_errors",
        "max_message_size",
        "max_proxy_header",
        "max_recipients",
        "max_sasl_response",
        "max_text_line",
        "max_unauthenticated_commands",
        "proxy_protocol",
        "reject_unsynchronized",
        "require_starttls",
        "session",
        "tls_available",
    )

    def __init__(
        self,
        hostname: str,
        *,
        lmtp: bool = False,
        max_message_size: int | None = 33_554_432,
        enable_8bitmime: bool = True,
        enable_smtputf8: bool = False,
        enable_pipelining: bool = True,
        enable_enhanced_status_codes: bool = True,
        enable_chunking: bool = True,
        enable_dsn: bool = False,
        enable_help: bool = True,
        tls_available: bool = False,
        tls_active: bool = False,
        auth_mechanisms: Sequence[str] = (),
        auth_require_tls: bool = True,
        auth_required: bool = False,
        require_starttls: bool = False,
        bare_line_ending: BareLineEndingPolicy = "reject",
        max_command_line: int = 512,
        max_text_line: int | None = 1000,
        max_recipients: int | None = 1000,
        max_errors: int | None = 10,
        max_unauthenticated_commands: int | None = 10,
        max_sasl_response: int = 12288,
        proxy_protocol: bool = False,
        max_proxy_header: int = 4096,
        reject_unsynchronized: bool = False,
    ) -> None:
        if bare_line_ending not in ("reject", "normalize", "allow"):
            raise ValueError(
                f"bare_line_ending must be 'reject', 'normalize' or 'allow', "
                f"not {bare_line_ending!r}"
            )
        if max_command_line < 512:
            raise ValueError(
                f"max_command_line {max_command_line} is below RFC 5321's minimum 512"
            )
        if max_text_line is not None and max_text_line < 1000:
            raise ValueError(
                f"max_text_line {max_text_line} is below RFC 5321's minimum 1000"
            )
        if max_sasl_response < 12288:
            raise ValueError(
                f"max_sasl_response {max_sasl_response} is below RFC 4954's "
                "minimum 12288"
            )
        self.hostname = hostname
        self.lmtp = lmtp
        self.max_message_size = max_message_size
        self.enable_8bitmime = enable_8bitmime
        self.enable_smtputf8 = enable_smtputf8
        self.enable_pipelining = enable_pipelining
        self.enable_enhanced_status_codes = enable_enhanced_status_codes
        self.enable_chunking = enable_chunking
        self.enable_dsn = enable_dsn
        self.enable_help = enable_help
        self.tls_available = tls_available
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.auth_require_tls = auth_require_tls
        self.auth_required = auth_required
        self.require_starttls = require_starttls
        self.bare_line_ending = bare_line_ending
        self.max_text_line = max_text_line
        self.max_recipients = max_recipients
        self.max_errors = max_errors
        self.max_unauthenticated_commands = max_unauthenticated_commands
        self.max_sasl_response = max_sasl_response
        self.proxy_protocol = proxy_protocol
        self.max_proxy_header = max_proxy_header
        self.reject_unsynchronized = reject_unsynchronized

        allowance = 0
        # SIZE is always offered (bare when there is no limit).
        allowance += _ALLOWANCE_SIZE
        if enable_smtputf8:
            allowance += _ALLOWANCE_SMTPUTF8
        if auth_mechanisms:
            allowance += _ALLOWANCE_AUTH
        if enable_dsn:
            allowance += _ALLOWANCE_DSN
        #: The command line limit in force, extension allowance included. It is
        #: fixed for the connection, so repeated EHLOs cannot raise it.
        self.max_command_line = max_command_line + allowance

        #: State of the connection; replaced after STARTTLS.
        self.session = Session()
        #: State of the current mail transaction.
        self.envelope = Envelope()

        self._state = ServerState.GREETING
        self._tls_active = tls_active
        self._buffer: bytes | bytearray = b""
        self._pos = 0
        self._out: list[bytes] = []
        self._queued: list[Event] = []
        self._pending: Event | str | None = _GREETING_PENDING
        self._snapshot: object = None
        self._refusal: Reply | None = None
        self._hello = False
        self._peer_closed = False
        self._greeted = False
        self._early_talker = False
        self._shutdown_requested = False
        self._errors = 0
        self._unauthenticated_commands = 0
        self._discarding_line = False
        self._esc = enable_enhanced_status_codes
        self._strict_lines = bare_line_ending == "reject"
        # Rendered default replies of the commands whose success changes no
        # state: accept() sends them without building a Reply.
        self._plain_accept = _PLAIN_ACCEPT[enable_enhanced_status_codes]
        # Command handlers by upper-cased verb; shared by connections that
        # have the same options.
        self._commands = _command_table(lmtp=lmtp, chunking=enable_chunking)

        # Transaction state, set by _reset_transaction().
        self._has_sender = False
        self._smtputf8 = False
        self._accepted: list[str] = []
        self._rcpt_attempted = False
        self._bdat_active = False
        self._bdat_failed = False
        self._lmtp_replies = 0
        self._message_size = 0
        self._message_error: Reply | None = None
        self._line_too_long = False
        self._bare_line_ending = False
        self._held_cr = False
        self._line_length = 0
        self._line_dot = False
        self._line_start = True
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_discard = False
        self._bdat_error: Reply | None = None
        self._reset_transaction()
        self._auth_mechanism = ""
        self._auth_step = ""
        self._auth_username = ""
        self._auth_challenge = b""

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ServerState:
        """What the engine reads next (see :class:`ServerState`)."""
        return self._state

    @property
    def pending(self) -> Event | None:
        """The event that awaits the application's reply, if any."""
        pending = self._pending
        return pending if isinstance(pending, Event) else None

    @property
    def awaiting_greeting(self) -> bool:
        """True until the application sends the greeting (its first reply)."""
        return not self._greeted

    @property
    def closed(self) -> bool:
        """True once the session is over: write :meth:`data_to_send`, then close."""
        return self._state is ServerState.CLOSED

    @property
    def tls_active(self) -> bool:
        """True when the connection is encrypted (implicit TLS or after STARTTLS)."""
        return self._tls_active

    @property
    def extensions(self) -> tuple[str, ...]:
        """The EHLO keyword lines the engine advertises in the current state."""
        return self._extensions()

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed its side.

        :raises LocalProtocolError: while a STARTTLS handshake is pending, because
            plaintext must not reach the engine then.
        """
        if self._state is ServerState.CLOSED:
            return
        if self._state is ServerState.TLS_HANDSHAKE:
            raise LocalProtocolError(
                "receive_data() called during the STARTTLS handshake; call "
                "tls_established() first"
            )
        if not data:
            self._peer_closed = True
            return
        if not self._greeted and (
            not self.proxy_protocol or isinstance(self._pending, ProxyHeader)
        ):
            # Bytes before the greeting. After a PROXY header, only bytes of a
            # later read are distinguishable from the header's own packet.
            self._early_talker = True
        if type(data) is not bytes:
            data = bytes(data)
        buffer = self._buffer
        pos = self._pos
        if pos >= len(buffer):
            # Keep the caller's bytes object as the buffer: a large read of
            # message content is then sliced once instead of copied twice.
            self._buffer = data
            self._pos = 0
            return
        if not isinstance(buffer, bytearray):
            buffer = bytearray(memoryview(buffer)[pos:])
            self._pos = 0
        elif pos >= len(buffer) // 2:
            del buffer[:pos]
            self._pos = 0
        buffer += data
        self._buffer = buffer

    def next_event(self) -> Event | Literal[_Wait.NEED_DATA, _Wait.PAUSED]:
        """Return the next event, :data:`NEED_DATA` or :data:`PAUSED`."""
        while True:
            if self._queued:
                event = self._queued.pop(0)
                if type(event) not in _NOTIFICATIONS:
                    self._pending = event
                return event
            if self._pending is not None:
                if self._pending is _GREETING_PENDING and self.proxy_protocol:
                    return self._next_proxy_header()
                return PAUSED

            state = self._state
            result: Event | _Wait | None
            if state is ServerState.COMMAND:
                result = self._next_command()
            elif state is ServerState.DATA:
                result = self._next_data()
            elif state is ServerState.BDAT:
                result = self._next_bdat()
            elif state is ServerState.AUTH:
                result = self._next_auth_response()
            elif state is ServerState.TLS_HANDSHAKE:
                return PAUSED
            else:
                return _CONNECTION_CLOSED

            if result is None:
                # The reader changed state without an event: read on in the new one.
                continue
            if result is NEED_DATA:
                return self._need_data()
            assert isinstance(result, Event)
            if type(result) not in _NOTIFICATIONS:
                self._pending = result
            return result

    def _need_data(self) -> Event | Literal[_Wait.NEED_DATA]:
        if self._pos:
            self._discard_consumed()
        if self._state is ServerState.CLOSED:
            return _CONNECTION_CLOSED
        if self._peer_closed:
            self._close()
            return _CONNECTION_CLOSED
        return NEED_DATA

    def _discard_consumed(self) -> None:
        buffer = self._buffer
        pos = self._pos
        if pos >= len(buffer):
            self._buffer = b""
        elif isinstance(buffer, bytearray):
            del buffer[:pos]
        else:
            self._buffer = buffer[pos:]
        self._pos = 0

    def data_to_send(self) -> bytes:
        """Return and clear everything queued for the peer, in order."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def send_reply(
        self,
        code: int,
        text: str | Sequence[str] | None = None,
        *,
        enhanced: str | None = None,
    ) -> None:
        """Reply to the pending command (or send the greeting).

        :param code: the reply code, 200 to 599.
        :param text: one line, several lines, or ``None`` for a generic text.
        :param enhanced: the enhanced status code (RFC 3463); when ``None`` and
            ENHANCEDSTATUSCODES is on, the engine picks a default for 2xx, 4xx and
            5xx replies.
        :raises LocalProtocolError: if nothing awaits a reply, or the code does
            not fit the pending command.
        :raises ValueError: if the reply itself is invalid (see :class:`Reply`).
        """
        lines = lines_of(text)
        if lines is None:
            if code == 354:
                lines = replies.START_DATA.lines
            elif code < 400:
                lines = ("OK",)
            else:
                lines = ("Requested action not taken",)
        self.send_reply_object(Reply(code, enhanced, lines))

    def send_reply_object(self, reply: Reply) -> None:
        """Reply to the pending command with a ready :class:`Reply`."""
        pending = self._pending
        if pending is None:
            raise LocalProtocolError(
                f"no command awaits a reply in state {self._state.name}; "
                "call next_event() first"
            )
        self._check_code(pending, reply.code)
        if reply.enhanced is None and self._esc and not self._is_plain_reply(pending):
            reply = Reply(
                reply.code, self._default_enhanced(pending, reply.code), reply.lines
            )
        self._apply_reply(pending, reply)

    def accept(self) -> None:
        """Send the RFC's default success reply for the pending command.

        For :class:`DataComplete` in LMTP mode, this sends one success reply for
        each accepted recipient that has none yet.
        """
        pending = self._pending
        if pending is None:
            raise LocalProtocolError(
                f"no command awaits a reply in state {self._state.name}; "
                "call next_event() first"
            )
        kind = type(pending)
        wire = self._plain_accept.get(kind)
        if wire is not None and not self._shutdown_requested:
            self._out.append(wire)
            self._pending = None
            return
        if kind in _FIXED_DEFAULTS and not (self.lmtp and kind is DataComplete):
            # Fixed default replies skip building and rendering a Reply.
            reply, wire = _FIXED_DEFAULTS[kind][self._esc]
            self._apply_reply(pending, reply, wire)
            return
        self._apply_reply(pending, self._default_reply(pending))
        if self.lmtp and self._pending is pending and isinstance(pending, DataComplete):
            while self._pending is pending:
                self._apply_reply(pending, self._default_reply(pending))

    def send_challenge(self, data: bytes) -> None:
        """Send a SASL challenge (``334`` and base64) for an application-run mechanism.

        The client's answer arrives as an :class:`AuthResponse` event.

        :raises LocalProtocolError: unless an :class:`Auth` or :class:`AuthResponse`
            event is pending.
        """
        pending = self._pending
        if not isinstance(pending, (Auth, AuthResponse)):
            raise LocalProtocolError(
                "send_challenge() needs a pending Auth or AuthResponse event"
            )
        self._out.append(b"334 " + base64.b64encode(data) + b"\r\n")
        self._pending = None
        self._auth_mechanism = pending.mechanism
        self._auth_step = "custom"
        self._state = ServerState.AUTH

    def tls_established(self) -> None:
        """Tell the engine the STARTTLS handshake succeeded.

        The session starts over as after the greeting (RFC 3207, section 4.2): a new
        :class:`Session` with only ``peer`` and ``proxy_data`` kept, a new envelope,
        and EHLO needed again.

        :raises LocalProtocolError: unless a STARTTLS handshake is pending.
        """
        if self._state is not ServerState.TLS_HANDSHAKE:
            raise LocalProtocolError(
                f"tls_established() called in state {self._state.name}; it must "
                "follow a 220 reply to STARTTLS"
            )
        old = self.session
        self.session = Session()
        self.session.peer = old.peer
        self.session.proxy_data = old.proxy_data
        self._tls_active = True
        self._hello = False
        self._reset_transaction()
        self._state = ServerState.COMMAND

    def timeout(self) -> None:
        """Queue ``421 4.4.2`` and close: the peer was silent or slow for too long.

        Before the greeting (waiting for a PROXY header) there is no SMTP
        session to answer in, so the engine closes without a reply.
        """
        if self._state is ServerState.CLOSED:
            return
        if self._greeted:
            self._out.append(self._wire(replies.TIMEOUT))
        self._close()

    def refuse_commands(
        self, code: int, text: str, *, enhanced: str | None = None
    ) -> None:
        """Answer every later command but QUIT with this reply.

        For a session the application will not serve further but keeps open
        until the client leaves, such as aiosmtpd's ``handle_STARTTLS`` hook
        returning False (``554 Command refused due to lack of security``).
        """
        self._refusal = Reply(code, enhanced, (text,))

    def shutdown(self) -> bool:
        """Start a graceful stop of this session.

        Between commands, ``421 4.3.2`` is queued and the session closes at once.
        While a message is being received or a reply is pending, the session
        closes with ``421`` after the reply to that command or message.

        :return: True if the session closed at once.
        """
        if self._state is ServerState.CLOSED:
            return True
        if not self._greeted and self._state is ServerState.GREETING:
            # No greeting yet (a PROXY header is awaited): no session to answer.
            self._close()
            return True
        in_message = self._state in (ServerState.DATA, ServerState.BDAT) or (
            self._bdat_active
        )
        if self._pending is None and not in_message:
            self._out.append(self._wire(replies.SHUTTING_DOWN))
            self._close()
            return True
        self._shutdown_requested = True
        return False

    # ------------------------------------------------------------------ replies

    def _wire(self, reply: Reply) -> bytes:
        return _render(reply, self._esc)

    def _queue(self, reply: Reply) -> None:
        self._out.append(_render(reply, self._esc))
        if 500 <= reply.code <= 504:
            self._count_error()

    def _count_error(self) -> None:
        self._errors += 1
        limit = self.max_errors
        if limit is not None and self._errors > limit and not self.closed:
            self._out.append(self._wire(replies.TOO_MANY_ERRORS))
            self._close()

    def _close(self) -> None:
        self._state = ServerState.CLOSED
        self._pending = None
        self._queued.clear()
        self._buffer = b""
        self._pos = 0

    @staticmethod
    def _is_plain_reply(pending: Event | str) -> bool:
        # RFC 2034, section 3: no enhanced codes in the greeting and the replies
        # to HELO and EHLO.
        return pending is _GREETING_PENDING or isinstance(
            pending, (Helo, Ehlo, ProxyHeader)
        )

    @staticmethod
    def _default_enhanced(pending: Event | str, code: int) -> str | None:
        if code < 200 or 300 <= code < 400:
            return None
        cls = str(code)[0]
        if isinstance(pending, MailFrom):
            return f"{cls}.1.0"
        if isinstance(pending, RcptTo):
            return f"{cls}.1.5"
        if isinstance(pending, (AuthCredentials, Auth, AuthResponse)):
            return f"{cls}.7.0" if cls != "5" else "5.7.8"
        if isinstance(pending, UnknownCommand) and cls == "5":
            return "5.5.1"
        return f"{cls}.0.0"

    def _check_code(self, pending: Event | str, code: int) -> None:
        if code == 421:
            return
        if pending is _GREETING_PENDING or isinstance(pending, ProxyHeader):
            allowed = code in (220, 554) or 400 <= code < 600
        elif isinstance(pending, Data):
            allowed = code == 354 or code >= 400
        elif isinstance(pending, StartTLS):
            allowed = code == 220 or code >= 400
        elif isinstance(pending, UnknownCommand):
            # Extension commands define their own codes (Postfix's XCLIENT
            # answers 220, for example).
            allowed = 200 <= code < 300 or code >= 400
        else:
            allowed = 200 <= code < 300 and code != 220 or code >= 400
        if not allowed:
            name = "greeting" if isinstance(pending, str) else type(pending).__name__
            raise LocalProtocolError(f"reply code {code} does not fit {name}")

    def _default_reply(self, pending: Event | str) -> Reply:
        if pending is _GREETING_PENDING or isinstance(pending, ProxyHeader):
            protocol = "LMTP" if self.lmtp else "ESMTP"
            return Reply(220, None, (f"{self.hostname} {protocol}",))
        if isinstance(pending, Ehlo):
            return Reply(250, None, (self.hostname, *pending.extensions))
        if isinstance(pending, Helo):
            return Reply(250, None, (self.hostname,))
        if isinstance(pending, Help):
            return self._help_reply(pending.argument)
        if isinstance(pending, DataComplete) and self.lmtp:
            recipient = self._accepted[self._lmtp_replies]
            return Reply(250, "2.1.5", (f"<{recipient}> OK",))
        if isinstance(pending, UnknownCommand):
            return Reply(
                500, "5.5.1", (f'Error: command "{pending.verb}" not recognized',)
            )
        assert isinstance(pending, Event)
        return _DEFAULT_REPLIES[type(pending)]

    def _help_reply(self, argument: str | None) -> Reply:
        # List only what this session can use: STARTTLS while it is offered,
        # AUTH when mechanisms exist; EXPN is never implemented.
        unusable = {"EXPN"}
        if not self.tls_available or self._tls_active:
            unusable.add("STARTTLS")
        if not self.auth_mechanisms:
            unusable.add("AUTH")
        verbs = sorted(v for v in self._commands if v not in unusable)
        if argument is None:
            return Reply(214, "2.0.0", ("Supported commands: " + " ".join(verbs),))
        topic = argument.upper()
        syntax = _HELP_SYNTAX.get(topic)
        if syntax is None or topic not in verbs:
            return replies.HELP_UNKNOWN_TOPIC
        return Reply(214, "2.0.0", ("Syntax: " + syntax,))

    def _apply_reply(
        self, pending: Event | str, reply: Reply, wire: bytes | None = None
    ) -> None:
        """Queue ``reply`` and make the state change it causes for ``pending``.

        ``wire`` is the reply already rendered, when the caller has it.
        """
        code = reply.code
        self._out.append(_render(reply, self._esc) if wire is None else wire)
        self._pending = None
        success = 200 <= code < 300

        if pending is _GREETING_PENDING or isinstance(pending, ProxyHeader):
            self._greeted = True
            if code == 554:
                # RFC 5321, section 3.1: after a 554 greeting the server waits
                # for QUIT and answers every other command with 503.
                self._state = ServerState.COMMAND
                self._refusal = replies.NO_SERVICE
            elif code == 220:
                self._state = ServerState.COMMAND
            else:
                self._close()
            return

        if isinstance(pending, (Helo, Ehlo)):
            if success:
                if self.session.host_name is self._snapshot:
                    self.session.host_name = pending.hostname
                self.session.extended_smtp = isinstance(pending, Ehlo)
                self._hello = True
                self._reset_transaction()
        elif isinstance(pending, MailFrom):
            if success:
                envelope = self.envelope
                if envelope.mail_from is None:
                    envelope.mail_from = pending.address
                    envelope.mail_options.extend(_format_params(pending.params))
                envelope.smtp_utf8 = self._smtputf8
                self._has_sender = True
            else:
                self._smtputf8 = False
        elif isinstance(pending, RcptTo):
            self._rcpt_attempted = True
            if success:
                envelope = self.envelope
                if len(envelope.rcpt_tos) == self._snapshot:
                    envelope.rcpt_tos.append(pending.address)
                    envelope.rcpt_options.extend(_format_params(pending.params))
                self._accepted.append(pending.address)
        elif isinstance(pending, Data):
            if code == 354:
                self._start_data()
        elif isinstance(pending, DataComplete):
            if self.lmtp:
                self._lmtp_replies += 1
                if self._lmtp_replies < len(self._accepted):
                    self._pending = pending
                    return
            self._reset_transaction()
        elif isinstance(pending, (AuthCredentials, Auth, AuthResponse)):
            if success:
                self.session.authenticated = True
            elif self.session.authenticated is None or not self.session.authenticated:
                self.session.authenticated = False
            self._state = ServerState.COMMAND
        elif isinstance(pending, StartTLS):
            if code == 220:
                # RFC 3207, section 4.2 (CVE-2011-0411): bytes that arrived after
                # the STARTTLS line came in plaintext and must never be run as
                # commands of the TLS session.
                self._buffer = b""
                self._pos = 0
                self._state = ServerState.TLS_HANDSHAKE
                return
        elif isinstance(pending, Quit):
            self._close()
            return

        if 500 <= code <= 504:
            self._count_error()
        if code == 421:
            self._close()
        elif (
            self._shutdown_requested
            and self._state is ServerState.COMMAND
            and not self._bdat_active
        ):
            self._out.append(self._wire(replies.SHUTTING_DOWN))
            self._close()

    # ------------------------------------------------------------------ transactions

    def _reset_transaction(self) -> None:
        self.envelope = Envelope()
        self._has_sender = False
        self._smtputf8 = False
        self._accepted = []
        self._rcpt_attempted = False
        self._bdat_active = False
        self._bdat_failed = False
        self._lmtp_replies = 0
        self._message_size = 0
        self._message_error = None
        self._line_too_long = False
        self._bare_line_ending = False
        self._held_cr = False
        self._line_length = 0
        self._line_start = True

    def _extensions(self) -> tuple[str, ...]:
        lines = []
        if self.max_message_size is not None:
            lines.append(f"SIZE {self.max_message_size}")
        else:
            # RFC 1870, section 4: SIZE without a value means no fixed limit.
            lines.append("SIZE")
        if self.enable_8bitmime:
            lines.append("8BITMIME")
        if self.enable_smtputf8:
            lines.append("SMTPUTF8")
        if self.enable_pipelining:
            lines.append("PIPELINING")
        if self._esc:
            lines.append("ENHANCEDSTATUSCODES")
        if self.enable_chunking:
            lines.append("CHUNKING")
        if self.enable_dsn:
            lines.append("DSN")
        if self.tls_available and not self._tls_active:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH " + " ".join(self.auth_mechanisms))
        if self.enable_help:
            lines.append("HELP")
        return tuple(lines)

    def _auth_offered(self) -> bool:
        return bool(self.auth_mechanisms) and (
            self._tls_active or not self.auth_require_tls
        )

    # ------------------------------------------------------------------ command lines

    def _next_command(self) -> Event | Literal[_Wait.NEED_DATA] | None:
        while self._state is ServerState.COMMAND:
            # Fast path: a whole CRLF line within the limit.
            buffer = self._buffer
            pos = self._pos
            end = buffer.find(b"\r\n", pos)
            if (
                0 <= end <= pos + self.max_command_line - 2
                and self._strict_lines
                and not self._discarding_line
            ):
                self._pos = end + 2
                event = self._dispatch(buffer[pos:end])
                if event is not None:
                    return event
                continue
            line = self._read_line(self.max_command_line, replies.LINE_TOO_LONG)
            if line is None:
                return NEED_DATA
            if line is False:
                continue
            event = self._dispatch(line)
            if event is not None:
                return event
        return None

    def _read_line(
        self, limit: int, too_long: Reply
    ) -> bytes | bytearray | None | Literal[False]:
        """Take one line off the buffer, without its line ending.

        :return: the line, ``None`` when more data is needed, or ``False`` when
            a line was rejected (the reply is queued) or skipped.
        """
        buffer = self._buffer
        pos = self._pos
        strict = self._strict_lines
        end = buffer.find(b"\r\n" if strict else b"\n", pos)

        if self._discarding_line:
            # The start of an over-long line was answered already; drop the rest.
            if end < 0:
                self._pos = _discard_end(buffer, strict)
                return None
            self._pos = end + (2 if strict else 1)
            self._discarding_line = False
            return False

        # The limit counts the line ending: CRLF, or the LF alone when bare line
        # endings are accepted.
        if end < 0 or end - pos + (2 if strict else 1) > limit:
            if end < 0 and len(buffer) - pos <= limit:
                return None
            # RFC 5321, section 4.5.3.1.4: the line is too long. Answer now and
            # skip to its end, so the buffer never grows past the limit.
            self._queue(too_long)
            if end < 0:
                self._pos = _discard_end(buffer, strict)
                self._discarding_line = True
                return False
            self._pos = end + (2 if strict else 1)
            return False

        if strict:
            self._pos = end + 2
            line = buffer[pos:end]
            if b"\n" in line:
                self._queue(replies.BARE_LF_IN_COMMAND)
                return False
            return line
        self._pos = end + 1
        if end > pos and buffer[end - 1] == 13:
            end -= 1
        return buffer[pos:end]

    def _dispatch(self, raw: bytes | bytearray) -> Event | None:
        if self.reject_unsynchronized and self._unsynchronized():
            self._out.append(self._wire(replies.PIPELINING_REFUSED))
            self._close()
            return None

        if _NOT_PRINTABLE_ASCII.search(raw) is None:
            line = raw.decode("ascii")
        elif _CONTROL.search(raw) is not None:
            self._queue(replies.CONTROL_CHARACTER)
            return None
        elif not self.enable_smtputf8:
            self._queue(replies.NOT_ASCII)
            return None
        else:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._queue(replies.NOT_UTF8)
                return None

        verb, _, argument = line.partition(" ")
        # Only ASCII verbs are folded: str.upper() maps some non-ASCII letters
        # to ASCII ones ("\u0131" to "I"), which would turn "MA\u0131L" into MAIL.
        if verb.isascii():
            verb = verb.upper()
        argument = argument.strip(" ")
        handler = self._commands.get(verb)
        if handler is None:
            if not verb:
                self._queue(replies.BAD_SYNTAX)
                return None
            if verb in HTTP_VERBS or verb.endswith(":"):
                self._out.append(self._wire(replies.HTTP_FORBIDDEN))
                self._close()
                return None
        if self._refusal is not None and verb != "QUIT":
            self._queue(self._refusal)
            return None
        if (self.require_starttls or self.auth_required) and self._gate_refuses(verb):
            return None
        if handler is None:
            return UnknownCommand(verb=verb, argument=argument or None)
        return handler(self, argument or None)

    def _gate_refuses(self, verb: str) -> bool:
        """Apply the STARTTLS and AUTH requirements; return True if refused."""
        if (
            self.require_starttls
            and not self._tls_active
            and verb not in ALLOWED_BEFORE_STARTTLS
        ):
            self._queue(replies.STARTTLS_REQUIRED)
            return True
        if self.auth_required and not self.session.authenticated:
            self._unauthenticated_commands += 1
            limit = self.max_unauthenticated_commands
            if limit is not None and self._unauthenticated_commands > limit:
                self._out.append(self._wire(replies.TOO_MANY_UNAUTHENTICATED))
                self._close()
                return True
            if verb not in ALLOWED_BEFORE_AUTH:
                self._queue(replies.AUTH_REQUIRED)
                return True
        return False

    def _unsynchronized(self) -> bool:
        """Check for early talk or pipelining the client has not negotiated."""
        if self._early_talker:
            return True
        if self.session.extended_smtp and self.enable_pipelining:
            return False
        return self._pos < len(self._buffer)

    def _reject(self, reply: Reply) -> None:
        self._queue(reply)

    # ------------------------------------------------------------------ commands

    def _hello_argument(self, argument: str | None, syntax: Reply) -> str | None:
        if argument is None:
            self._queue(syntax)
            return None
        if not is_valid_domain_argument(argument):
            self._queue(replies.INVALID_DOMAIN)
            return None
        return argument

    def _command_helo(self, argument: str | None) -> Event | None:
        hostname = self._hello_argument(argument, replies.HELO_SYNTAX)
        if hostname is None:
            return None
        self._snapshot = self.session.host_name
        return self._end_bdat_before(Helo(hostname=hostname))

    def _command_ehlo(self, argument: str | None) -> Event | None:
        hostname = self._hello_argument(argument, replies.EHLO_SYNTAX)
        if hostname is None:
            return None
        self._snapshot = self.session.host_name
        return self._end_bdat_before(
            Ehlo(hostname=hostname, extensions=self._extensions())
        )

    def _command_lhlo(self, argument: str | None) -> Event | None:
        hostname = self._hello_argument(argument, replies.LHLO_SYNTAX)
        if hostname is None:
            return None
        self._snapshot = self.session.host_name
        return self._end_bdat_before(
            Ehlo(hostname=hostname, extensions=self._extensions())
        )

    def _command_mail(self, argument: str | None) -> Event | None:
        if not self._hello:
            self._queue(replies.NEED_HELO)
            return None
        if self._has_sender:
            self._queue(replies.NESTED_MAIL)
            return None
        extended = self.session.extended_smtp
        syntax = replies.MAIL_SYNTAX_ESMTP if extended else replies.MAIL_SYNTAX
        try:
            if argument is None:
                raise CommandError(syntax)
            inner, param_text = split_path(argument, "FROM", syntax)
            if param_text and not extended:
                raise CommandError(replies.PARAMS_NEED_EHLO)
            params = parse_params(param_text, utf8=self.enable_smtputf8)
            self._check_mail_params(params)
            # Parse with UTF-8 allowed when the server offers SMTPUTF8, so that a
            # missing SMTPUTF8 parameter gets its own reply below (RFC 6531,
            # section 3.5) instead of "malformed address".
            address = parse_path_argument(
                inner,
                utf8=self.enable_smtputf8,
                null_allowed=True,
                postmaster_allowed=False,
            )
        except CommandError as error:
            self._smtputf8 = False
            self._queue(error.reply)
            return None
        if not address.isascii() and not self._smtputf8:
            self._queue(replies.SENDER_NEEDS_SMTPUTF8)
            return None
        return MailFrom(address=address, params=params)

    def _check_mail_params(self, params: tuple[tuple[str, str | None], ...]) -> None:
        self._smtputf8 = False
        for keyword, value in params:
            if keyword == "SIZE":
                if value is None or not _is_decimal(value) or len(value) > 20:
                    raise CommandError(replies.SIZE_INVALID)
                # RFC 1870, section 6: refuse a declared size over the limit now.
                limit = self.max_message_size
                if limit is not None and int(value) > limit:
                    raise CommandError(replies.SIZE_TOO_BIG)
            elif keyword == "BODY" and self.enable_8bitmime:
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise CommandError(replies.BODY_INVALID)
            elif keyword == "SMTPUTF8" and self.enable_smtputf8:
                if value is not None:
                    raise CommandError(replies.SMTPUTF8_HAS_VALUE)
                self._smtputf8 = True
            elif keyword == "RET" and self.enable_dsn:
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    raise CommandError(replies.DSN_INVALID)
            elif keyword == "ENVID" and self.enable_dsn:
                if value is None or len(value) > 100 or not is_valid_xtext(value):
                    raise CommandError(replies.DSN_INVALID)
            elif keyword == "AUTH" and self.auth_mechanisms:
                # RFC 4954, section 5: an xtext mailbox or "<>"; the server may
                # ignore it, so only its syntax is checked.
                if value is None or not (value == "<>" or is_valid_xtext(value)):
                    raise CommandError(replies.AUTH_PARAM_INVALID)
            else:
                raise CommandError(replies.MAIL_PARAM_UNKNOWN)

    def _command_rcpt(self, argument: str | None) -> Event | None:
        if not self._has_sender:
            self._queue(replies.NEED_MAIL)
            return None
        extended = self.session.extended_smtp
        syntax = replies.RCPT_SYNTAX_ESMTP if extended else replies.RCPT_SYNTAX
        try:
            if argument is None:
                raise CommandError(syntax)
            inner, param_text = split_path(argument, "TO", syntax)
            if param_text and not extended:
                raise CommandError(replies.PARAMS_NEED_EHLO)
            params = parse_params(param_text, utf8=self.enable_smtputf8)
            self._check_rcpt_params(params)
            address = parse_path_argument(
                inner,
                utf8=self.enable_smtputf8,
                null_allowed=False,
                postmaster_allowed=True,
            )
        except CommandError as error:
            self._rcpt_attempted = True
            self._queue(error.reply)
            return None
        if not address.isascii() and not self._smtputf8:
            self._rcpt_attempted = True
            self._queue(replies.RECIPIENT_NEEDS_SMTPUTF8)
            return None
        limit = self.max_recipients
        if limit is not None and len(self._accepted) >= limit:
            # RFC 5321, section 4.5.3.1.10: 452 asks the client to send the
            # remaining recipients in a later transaction.
            self._rcpt_attempted = True
            self._out.append(self._wire(replies.TOO_MANY_RECIPIENTS))
            return None
        self._snapshot = len(self.envelope.rcpt_tos)
        return RcptTo(address=address, params=params)

    def _check_rcpt_params(self, params: tuple[tuple[str, str | None], ...]) -> None:
        for keyword, value in params:
            if keyword == "NOTIFY" and self.enable_dsn:
                words = (value or "").upper().split(",")
                valid = {"SUCCESS", "FAILURE", "DELAY"}
                if words != ["NEVER"] and not (words and set(words) <= valid):
                    raise CommandError(replies.DSN_INVALID)
            elif keyword == "ORCPT" and self.enable_dsn:
                addr_type, _, address = (value or "").partition(";")
                if not addr_type or not address or not is_valid_xtext(address):
                    raise CommandError(replies.DSN_INVALID)
            else:
                raise CommandError(replies.RCPT_PARAM_UNKNOWN)

    def _command_data(self, argument: str | None) -> Event | None:
        if argument is not None:
            self._queue(replies.DATA_SYNTAX)
        elif not self._has_sender:
            self._queue(replies.NEED_MAIL)
        elif self._bdat_active or self._bdat_failed:
            # RFC 3030, section 2: DATA and BDAT cannot be mixed in a transaction.
            self._queue(replies.DATA_AFTER_BDAT)
        elif not self._accepted:
            # RFC 2920, section 3.1: a pipelined DATA after failed recipients
            # gets 554 "no valid recipients", never 354. LMTP has its own rule
            # (RFC 2033, section 4.2): 503 whenever no RCPT succeeded.
            if self._rcpt_attempted and not self.lmtp:
                self._out.append(self._wire(replies.NO_VALID_RECIPIENTS))
            else:
                self._queue(replies.NEED_RCPT)
        else:
            return _DATA
        return None

    def _command_bdat(self, argument: str | None) -> Event | None:
        words = (argument or "").split()
        valid = (
            1 <= len(words) <= 2
            and _is_decimal(words[0])
            and len(words[0]) <= 18
            and (len(words) == 1 or words[1].upper() == "LAST")
        )
        if not valid:
            # Without a chunk size the chunk cannot be skipped; what follows is
            # read as commands (RFC 3030, section 2 leaves no other choice).
            self._queue(replies.BDAT_SYNTAX)
            return None
        size = int(words[0])
        last = len(words) == 2

        error = None
        if not self._has_sender:
            error = replies.NEED_MAIL
        elif self._bdat_failed:
            error = replies.BDAT_AFTER_FAILURE
        elif not self._accepted:
            error = replies.NEED_RCPT
        self._bdat_remaining = size
        self._bdat_size = size
        self._bdat_last = last
        self._state = ServerState.BDAT
        if error is not None:
            # RFC 3030, section 2: the chunk is read and discarded before the
            # error reply, so the octets are never taken for commands.
            self._bdat_discard = True
            self._bdat_error = error
            return None
        self._bdat_discard = self._message_error is not None or self._bare_line_ending
        self._bdat_error = None
        self._bdat_active = True
        return Bdat(size=size, last=last)

    def _command_rset(self, argument: str | None) -> Event | None:
        if argument is not None:
            self._queue(replies.RSET_SYNTAX)
            return None
        event = self._end_bdat_before(_RSET)
        self._reset_transaction()
        return event

    def _end_bdat_before(self, event: Event) -> Event:
        """Drop an open BDAT transaction before a command that ends it.

        The application learns of it first, from a DataRejected event, so that
        it drops the chunks it holds (RFC 3030, section 2: the transaction is
        reset like after RSET).
        """
        if not self._bdat_active:
            return event
        self._reset_transaction()
        self._queued.append(event)
        return DataRejected(code=250, enhanced="2.0.0", text="transaction reset")

    def _command_noop(self, argument: str | None) -> Event | None:
        return Noop(argument=argument)

    def _command_quit(self, argument: str | None) -> Event | None:
        if argument is not None:
            self._queue(replies.QUIT_SYNTAX)
            return None
        return _QUIT

    def _command_vrfy(self, argument: str | None) -> Event | None:
        if argument is None:
            self._queue(replies.VRFY_SYNTAX)
            return None
        return Vrfy(argument=argument)

    def _command_expn(self, argument: str | None) -> Event | None:
        self._queue(replies.EXPN_NOT_IMPLEMENTED)
        return None

    def _command_help(self, argument: str | None) -> Event | None:
        return Help(argument=argument)

    def _command_starttls(self, argument: str | None) -> Event | None:
        if argument is not None:
            # RFC 3207, section 4: STARTTLS takes no parameters.
            self._queue(replies.STARTTLS_SYNTAX)
        elif self._tls_active:
            self._queue(replies.STARTTLS_ALREADY_ACTIVE)
        elif not self.tls_available:
            self._out.append(self._wire(replies.STARTTLS_UNAVAILABLE))
        else:
            return self._end_bdat_before(_STARTTLS)
        return None

    # ------------------------------------------------------------------ AUTH

    def _command_auth(self, argument: str | None) -> Event | None:
        if not self.auth_mechanisms:
            self._queue(replies.AUTH_NOT_AVAILABLE)
            return None
        if argument is None:
            self._queue(replies.AUTH_SYNTAX)
            return None
        # RFC 4954, section 4: AUTH needs EHLO, is refused once authenticated and
        # during a mail transaction.
        if not self.session.extended_smtp:
            self._queue(replies.NEED_EHLO)
            return None
        if self.session.authenticated:
            self._queue(replies.AUTH_ALREADY_DONE)
            return None
        if self._has_sender:
            self._queue(replies.AUTH_IN_TRANSACTION)
            return None
        if self.auth_require_tls and not self._tls_active:
            self._out.append(self._wire(replies.AUTH_NEEDS_TLS))
            return None
        words = argument.split(" ")
        if len(words) > 2:
            self._queue(replies.AUTH_SYNTAX)
            return None
        mechanism = words[0].upper()
        if mechanism not in self.auth_mechanisms:
            self._queue(replies.AUTH_UNKNOWN_MECHANISM)
            return None

        initial: bytes | None = None
        if len(words) == 2:
            # RFC 4954, section 4: "=" is an initial response of zero length.
            decoded = _decode_base64(words[1])
            if decoded is None:
                self._queue(replies.AUTH_BAD_BASE64)
                return None
            initial = decoded

        self._auth_mechanism = mechanism
        if mechanism not in _BUILTIN_SASL:
            return Auth(mechanism=mechanism, initial_response=initial)
        if mechanism == "PLAIN":
            if initial is None:
                return self._challenge_and_wait("plain", b"334 \r\n")
            return self._plain_credentials(initial)
        if mechanism == "LOGIN":
            if initial is None:
                return self._challenge_and_wait("login-username", _LOGIN_USERNAME)
            self._auth_username = initial.decode("utf-8", "surrogateescape")
            return self._challenge_and_wait("login-password", _LOGIN_PASSWORD)
        # CRAM-MD5 (RFC 2195) has no initial response.
        if initial is not None:
            self._queue(replies.AUTH_SYNTAX)
            return None
        nonce = secrets.token_hex(8)
        self._auth_challenge = f"<{nonce}@{self.hostname}>".encode(
            "utf-8", "surrogateescape"
        )
        line = b"334 " + base64.b64encode(self._auth_challenge) + b"\r\n"
        return self._challenge_and_wait("cram-md5", line)

    def _challenge(self, step: str, line: bytes) -> None:
        self._out.append(line)
        self._auth_step = step
        self._state = ServerState.AUTH

    def _challenge_and_wait(self, step: str, line: bytes) -> Event | None:
        self._challenge(step, line)
        return None

    def _plain_credentials(self, data: bytes) -> Event | None:
        parts = data.split(b"\0")
        if len(parts) != 3:
            self._queue(replies.AUTH_BAD_PLAIN)
            return None
        authzid, username, password = (
            p.decode("utf-8", "surrogateescape") for p in parts
        )
        return AuthCredentials(
            mechanism="PLAIN",
            username=username,
            password=password,
            authorization_id=authzid,
        )

    def _next_auth_response(self) -> Event | Literal[_Wait.NEED_DATA] | None:
        line = self._read_line(self.max_sasl_response, replies.AUTH_LINE_TOO_LONG)
        if line is None:
            return NEED_DATA
        self._state = ServerState.COMMAND
        if line is False:
            # RFC 4954, section 4: an over-long response ends the exchange (500).
            return None
        mechanism = self._auth_mechanism
        if line == b"*":
            self._out.append(self._wire(replies.AUTH_ABORTED))
            return AuthAborted(mechanism=mechanism)
        decoded = _decode_base64(line.decode("ascii", "replace"))
        if decoded is None:
            self._queue(replies.AUTH_BAD_BASE64)
            return None

        step = self._auth_step
        event: Event | None
        if step == "custom":
            event = AuthResponse(mechanism=mechanism, data=decoded)
        elif step == "plain":
            event = self._plain_credentials(decoded)
        elif step == "login-username":
            self._auth_username = decoded.decode("utf-8", "surrogateescape")
            self._challenge("login-password", _LOGIN_PASSWORD)
            return None
        elif step == "login-password":
            event = AuthCredentials(
                mechanism="LOGIN",
                username=self._auth_username,
                password=decoded.decode("utf-8", "surrogateescape"),
            )
        else:
            username, _, digest = decoded.decode("utf-8", "surrogateescape").rpartition(
                " "
            )
            if not username or len(digest) != 32:
                self._queue(replies.AUTH_BAD_PLAIN)
                return None
            event = AuthCredentials(
                mechanism="CRAM-MD5",
                username=username,
                password=digest,
                challenge=self._auth_challenge,
            )
        return event

    # ------------------------------------------------------------------ PROXY

    def _next_proxy_header(self) -> Event | Literal[_Wait.NEED_DATA, _Wait.PAUSED]:
        if self._state is ServerState.CLOSED:
            return _CONNECTION_CLOSED
        if isinstance(self._pending, ProxyHeader):
            return PAUSED
        try:
            result = parse_proxy_header(self._buffer, self.max_proxy_header)
        except ProxyHeaderError:
            # An invalid header means the peer is not the trusted proxy: close
            # without a reply, as there is no SMTP session to answer in.
            self._close()
            return _CONNECTION_CLOSED
        if result is None:
            if self._peer_closed:
                self._close()
                return _CONNECTION_CLOSED
            return NEED_DATA
        header, consumed = result
        self._pos = consumed
        self._discard_consumed()
        self.session.proxy_data = header
        self._pending = header
        return header

    # ------------------------------------------------------------------ DATA

    def _start_data(self) -> None:
        self._state = ServerState.DATA
        self._message_size = 0
        self._message_error = None
        self._line_too_long = False
        self._bare_line_ending = False
        self._line_length = 0
        self._line_start = True

    def _next_data(self) -> Event | Literal[_Wait.NEED_DATA] | None:
        buffer = self._buffer
        pos = self._pos
        size = len(buffer)
        if pos >= size:
            return NEED_DATA

        stuffed = False
        if self._line_start and buffer[pos] == 0x2E:  # "." at the start of a line
            if size - pos < 3:
                if buffer[pos:size] == b".\r\n"[: size - pos]:
                    return NEED_DATA
            elif buffer[pos + 1] == 0x0D and buffer[pos + 2] == 0x0A:
                self._pos = pos + 3
                return self._finish_message(b"")
            stuffed = True

        content_end = size
        end_of_data = -1
        # Only "\r\n." can start the end of data or a stuffed line, and large
        # bodies (base64) often contain no dot at all: one memchr settles that.
        if buffer.find(b".", pos) >= 0:
            found = buffer.find(b"\r\n.", pos)
            while found >= 0:
                after = found + 3
                if after + 2 <= size:
                    if buffer[after] == 0x0D and buffer[after + 1] == 0x0A:
                        end_of_data = found
                        content_end = found + 2
                        break
                    stuffed = True
                elif after == size or buffer[after] == 0x0D:
                    # Maybe the start of CRLF.CRLF: keep it for the next read.
                    content_end = found
                    break
                else:
                    stuffed = True
                found = buffer.find(b"\r\n.", after)
        if end_of_data < 0 and buffer[content_end - 1] == 0x0D:
            # Never cut between CR and LF, so every piece contains whole CRLFs.
            content_end -= 1
        if content_end <= pos:
            return NEED_DATA

        raw = _slice(buffer, pos, content_end)
        if end_of_data >= 0:
            self._pos = end_of_data + 5
            return self._finish_message(self._process_content(raw, stuffed))
        self._pos = content_end
        chunk = self._process_content(raw, stuffed)
        return DataChunk(data=chunk) if chunk else None

    def _finish_message(self, chunk: bytes) -> Event | None:
        self._state = ServerState.COMMAND
        self._queued.append(self._end_of_message())
        return DataChunk(data=chunk) if chunk else None

    def _process_content(self, raw: bytes, stuffed: bool) -> bytes:
        """Unstuff, check and count one piece of DATA content; return what to emit.

        Every check runs on every piece, and the reply at the end is chosen by a
        fixed order, so the outcome never depends on how reads split the input.
        """
        line_start = self._line_start
        self._line_start = raw.endswith(b"\r\n")

        policy = self.bare_line_ending
        bare = policy != "allow" and _has_bare_line_ending(raw)
        if bare and policy == "reject":
            self._bare_line_ending = True
        if self.max_text_line is not None and not self._line_too_long:
            self._line_too_long = not self._lines_within_limit(raw)

        # RFC 5321, section 4.5.2: a line that starts with "." lost its first dot.
        # Before the end of data every CRLF "." is such a line start.
        chunk = raw
        if stuffed:
            if line_start and chunk[:1] == b".":
                chunk = chunk[1:]
            chunk = chunk.replace(b"\r\n.", b"\r\n")
        if bare and policy == "normalize":
            chunk = _BARE_LINE_ENDING.sub(b"\r\n", chunk)

        self._message_size += len(chunk)
        limit = self.max_message_size
        if limit is not None and self._message_size > limit:
            self._message_error = replies.MESSAGE_TOO_BIG
        if self._message_error or self._line_too_long or self._bare_line_ending:
            return b""
        return chunk

    def _lines_within_limit(self, raw: bytes) -> bool:
        """Check that no line exceeds ``max_text_line``, across chunk boundaries.

        The per-octet work stays in C (``find`` and ``rfind``); Python only hops
        over runs of lines.
        """
        assert self.max_text_line is not None
        # The limit counts octets before LF, CR included. A line that starts
        # with a stuffing dot may have one more, because RFC 5321, section
        # 4.5.3.1.6 counts the line as the sender wrote it, before stuffing.
        base = self.max_text_line - 1
        if self._line_length == 0:
            self._line_dot = raw[:1] == b"."
        first = raw.find(b"\n")
        if first < 0:
            self._line_length += len(raw)
            return self._line_length <= base + self._line_dot
        if self._line_length + first > base + self._line_dot:
            return False
        last = raw.rfind(b"\n")
        self._line_length = len(raw) - last - 1
        self._line_dot = raw[last + 1 : last + 2] == b"."
        if self._line_length > base + self._line_dot:
            return False
        # Hop from line start to line start: the last LF within one line's
        # allowance of ``start`` ends a run of lines that are all short enough,
        # and no LF there means the line at ``start`` is too long.
        start = first + 1
        while start <= last:
            allowed = base + (raw[start] == 0x2E)
            found = raw.rfind(b"\n", start, start + allowed + 1)
            if found < 0:
                return False
            start = found + 1
        return True

    def _end_of_message(self) -> Event:
        error = self._message_error
        if error is None and self._line_too_long:
            error = replies.MESSAGE_LINE_TOO_LONG
        if error is None and self._bare_line_ending:
            error = replies.MESSAGE_BARE_LINE_ENDING
        if error is None:
            return DataComplete(size=self._message_size)
        return self._reject_message(error)

    def _reject_message(self, error: Reply) -> Event:
        wire = self._wire(error)
        # LMTP (RFC 2033, section 4.2): one reply per accepted recipient.
        self._out.extend([wire] * (len(self._accepted) if self.lmtp else 1))
        event = DataRejected(code=error.code, enhanced=error.enhanced, text=error.text)
        self._reset_transaction()
        if self._shutdown_requested:
            self._out.append(self._wire(replies.SHUTTING_DOWN))
            self._close()
        return event

    # ------------------------------------------------------------------ BDAT

    def _next_bdat(self) -> Event | Literal[_Wait.NEED_DATA] | None:
        buffer = self._buffer
        pos = self._pos
        take = min(len(buffer) - pos, self._bdat_remaining)
        chunk = b""
        if take > 0:
            self._bdat_remaining -= take
            if not self._bdat_discard:
                chunk = _slice(buffer, pos, pos + take)
            self._pos = pos + take
        elif self._bdat_remaining:
            return NEED_DATA

        if self.bare_line_ending != "allow" and not self._bdat_discard:
            chunk = self._check_chunk_line_endings(chunk)
        if chunk:
            self._message_size += len(chunk)
            limit = self.max_message_size
            if limit is not None and self._message_size > limit:
                self._message_error = replies.MESSAGE_TOO_BIG
        if self._message_error is not None or self._bare_line_ending:
            self._bdat_discard = True
            chunk = b""
        if self._bdat_remaining == 0:
            self._state = ServerState.COMMAND
            self._queued.extend(self._end_of_chunk())
        if chunk:
            return DataChunk(data=chunk)
        return None

    def _check_chunk_line_endings(self, piece: bytes) -> bytes:
        """Apply the bare line ending policy to BDAT content.

        BDAT chunks carry no line structure, but text sent with BDAT still
        needs CRLF line endings (RFC 3030, section 2), and a relay that later
        forwards it with DATA would pass a bare LF on. A CR at the end of a
        piece waits for the next one, which may start with its LF.
        """
        text = piece
        if self._held_cr:
            text = b"\r" + text
            self._held_cr = False
        if text.endswith(b"\r"):
            self._held_cr = True
            text = text[:-1]
        last_piece = self._bdat_remaining == 0 and self._bdat_last
        if last_piece and self._held_cr:
            # The message ends with a CR that no LF follows.
            self._held_cr = False
            text += b"\r"
        if _has_bare_line_ending(text):
            if self.bare_line_ending == "reject":
                self._bare_line_ending = True
                return b""
            text = _BARE_LINE_ENDING.sub(b"\r\n", text)
        return text

    def _end_of_chunk(self) -> list[Event]:
        if self._bdat_error is not None:
            self._queue(self._bdat_error)
            self._bdat_error = None
            self._bdat_discard = False
            return []
        if self._message_error is None and self._bare_line_ending:
            self._message_error = replies.MESSAGE_BARE_LINE_ENDING
        if self._message_error is not None:
            error = self._message_error
            if self._bdat_last:
                # The reply to BDAT LAST is the final reply of the transaction,
                # as after DATA.
                return [self._reject_message(error)]
            # RFC 3030, section 2: after a failed BDAT the client must RSET.
            self._out.append(self._wire(error))
            self._bdat_failed = True
            self._bdat_active = False
            self._message_error = None
            self._bare_line_ending = False
            self._held_cr = False
            self._message_size = 0
            self._bdat_error = None
            return [
                DataRejected(code=error.code, enhanced=error.enhanced, text=error.text)
            ]
        if not self._bdat_last:
            reply = Reply(250, "2.0.0", (f"{self._bdat_size} octets received",))
            self._out.append(self._wire(reply))
            return []
        return [DataComplete(size=self._message_size)]


_NOT_LINE_ENDING: Final = bytes(c for c in range(256) if c not in (0x0D, 0x0A))
_CRLF_RUN: Final = b"\r\n" * 32768
_CR_NOT_BEFORE_LF: Final = re.compile(rb"\r[^\n]")


def _slice(buffer: bytes | bytearray, start: int, end: int) -> bytes:
    if type(buffer) is bytes:
        return buffer[start:end]
    with memoryview(buffer) as view:
        return bytes(view[start:end])


def _has_bare_line_ending(raw: bytes) -> bool:
    """Return whether ``raw`` has a CR or LF outside a CRLF pair.

    When every CR is followed by LF, there are as many CRLF pairs as CRs. When
    the line endings alone then read CRLF repeated, LFs are as many as CRs too,
    so every LF follows a CR. Both checks run in C: a regex with a literal first octet,
    and ``translate`` deleting every other octet.
    """
    if _CR_NOT_BEFORE_LF.search(raw) is not None or raw.endswith(b"\r"):
        return True
    endings = raw.translate(None, _NOT_LINE_ENDING)
    count = len(endings)
    if count & 1:
        return True
    if count <= len(_CRLF_RUN):
        return not _CRLF_RUN.startswith(endings)
    return endings.count(b"\r\n") * 2 != count


def _discard_end(buffer: bytes | bytearray, strict: bool) -> int:
    """Return how far an over-long line can be dropped from ``buffer``.

    A final CR stays: the next read may start with its LF, and only the pair
    ends the line.
    """
    end = len(buffer)
    if strict and end and buffer[end - 1] == 0x0D:
        return end - 1
    return end


def _is_decimal(text: str) -> bool:
    # str.isdigit() alone accepts digits of other scripts and superscripts,
    # which int() then rejects or reads as numbers no client would send.
    return text.isascii() and text.isdigit()


def _decode_base64(text: str) -> bytes | None:
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _format_params(params: tuple[tuple[str, str | None], ...]) -> list[str]:
    return [key if value is None else f"{key}={value}" for key, value in params]


_RENDERED: dict[tuple[Reply, bool], bytes] = {}


def _render(reply: Reply, with_enhanced: bool) -> bytes:
    key = (reply, with_enhanced)
    wire = _RENDERED.get(key)
    if wire is None:
        wire = reply.to_bytes(with_enhanced=with_enhanced)
        if len(_RENDERED) < 4096:
            _RENDERED[key] = wire
    return wire


# Default replies to commands whose success changes no engine state.
_STATELESS_REPLIES: Final[dict[type[Event], Reply]] = {
    Rset: replies.OK,
    Noop: replies.OK,
    Vrfy: replies.VRFY_DEFAULT,
}

_DEFAULT_REPLIES: Final[dict[type[Event], Reply]] = {
    MailFrom: replies.SENDER_OK,
    RcptTo: replies.RECIPIENT_OK,
    Data: replies.START_DATA,
    DataComplete: replies.MESSAGE_OK,
    Rset: replies.OK,
    Noop: replies.OK,
    Vrfy: replies.VRFY_DEFAULT,
    Quit: replies.BYE,
    StartTLS: replies.READY_FOR_TLS,
    AuthCredentials: replies.AUTH_OK,
    Auth: replies.AUTH_FAILED,
    AuthResponse: replies.AUTH_FAILED,
}


_FIXED_DEFAULTS: Final[dict[type[Event | str], dict[bool, tuple[Reply, bytes]]]] = {
    kind: {esc: (reply, _render(reply, esc)) for esc in (False, True)}
    for kind, reply in _DEFAULT_REPLIES.items()
}

_PLAIN_ACCEPT: Final[dict[bool, dict[type[Event | str], bytes]]] = {
    esc: {kind: _render(reply, esc) for kind, reply in _STATELESS_REPLIES.items()}
    for esc in (False, True)
}

_CommandHandler = Callable[[ServerConnection, "str | None"], "Event | None"]
_COMMAND_TABLES: dict[tuple[bool, bool], dict[str, _CommandHandler]] = {}


def _command_table(*, lmtp: bool, chunking: bool) -> dict[str, _CommandHandler]:
    """Return the verb table for these options, built once per combination."""
    key = (lmtp, chunking)
    table = _COMMAND_TABLES.get(key)
    if table is None:
        cls = ServerConnection
        table = {
            "MAIL": cls._command_mail,
            "RCPT": cls._command_rcpt,
            "DATA": cls._command_data,
            "RSET": cls._command_rset,
            "NOOP": cls._command_noop,
            "QUIT": cls._command_quit,
            "VRFY": cls._command_vrfy,
            "EXPN": cls._command_expn,
            "HELP": cls._command_help,
            "STARTTLS": cls._command_starttls,
            "AUTH": cls._command_auth,
        }
        if chunking:
            table["BDAT"] = cls._command_bdat
        if lmtp:
            table["LHLO"] = cls._command_lhlo
        else:
            table["HELO"] = cls._command_helo
            table["EHLO"] = cls._command_ehlo
        _COMMAND_TABLES[key] = table
    return table
