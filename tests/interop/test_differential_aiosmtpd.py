"""Differential test: the same dialogues against aiosmtpd 1.4.6 and against us.

Both servers run with their Controller's defaults and the same handler, which
accepts every message. Each dialogue is a list of steps: bytes to send and the
number of replies to read. The test compares the reply codes of every step,
whether the server closed the connection, and the envelope and content of each
message that reached the handler. Every dialogue whose results differ must be
listed in KNOWN_DIFFERENCES with the reason, so a new difference fails the test,
and so does an entry whose difference has gone.

``python tests/interop/test_differential_aiosmtpd.py`` prints every dialogue
that differs, step by step, with the reason.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if __name__ == "__main__":  # run as a script: make interop_support importable
    sys.path.insert(0, str(Path(__file__).parent))

from interop_support import Recorder, free_port

from smtpproto_anyio import Controller

aiosmtpd_controller = pytest.importorskip(
    "aiosmtpd.controller", reason="aiosmtpd is not installed (pip install aiosmtpd)"
)

# Seconds to wait for each expected reply, and the silence after which a
# server is taken to have sent all its replies.
REPLY_TIMEOUT = 3.0
QUIET_TIME = 0.5


@dataclass(frozen=True)
class Step:
    """Bytes to send, then how many replies to read before the next step.

    With ``settle`` the client also reads further replies until the server is
    quiet for QUIET_TIME, for input that the two servers may split into a
    different number of commands.
    """

    data: bytes
    replies: int = 1
    settle: bool = False


def cmd(line: str | bytes, replies: int = 1) -> Step:
    """Return a step that sends one command line with CRLF."""
    if isinstance(line, str):
        line = line.encode("utf-8")
    return Step(line + b"\r\n", replies)


def raw(data: bytes, replies: int, *, settle: bool = False) -> Step:
    return Step(data, replies, settle)


@dataclass(frozen=True)
class Dialog:
    id: str
    steps: tuple[Step, ...]


EHLO = cmd("EHLO client.test")
HELO = cmd("HELO client.test")
MAIL = cmd("MAIL FROM:<alice@example.org>")
RCPT = cmd("RCPT TO:<bob@example.com>")
DATA = cmd("DATA")
QUIT = cmd("QUIT")
RSET = cmd("RSET")

BODY = b"Subject: differential\r\n\r\nbody\r\n"
DOTTED_BODY = (
    b"Subject: dots\r\n"
    b"\r\n"
    b"..one leading dot after unstuffing\r\n"
    b"...two leading dots after unstuffing\r\n"
    b"..\r\n"
    b"a . in the middle\r\n"
)


def long_mail(octets: int) -> str:
    """Return a MAIL command that is ``octets`` long with its CRLF."""
    prefix = "MAIL FROM:<"
    suffix = "@example.org>"
    local_part = "a" * (octets - 2 - len(prefix) - len(suffix))
    return prefix + local_part + suffix


def mail_with_local_part(octets: int) -> str:
    return "MAIL FROM:<" + "a" * octets + "@example.org>"


def dialog(dialog_id: str, *steps: Step) -> Dialog:
    return Dialog(dialog_id, steps)


def transaction(*steps: Step) -> tuple[Step, ...]:
    """Return EHLO, MAIL and RCPT followed by ``steps``."""
    return (EHLO, MAIL, RCPT, *steps)


DIALOGS = [
    # Greeting and HELO/EHLO.
    dialog("greeting_then_quit", QUIT),
    dialog("ehlo", EHLO, QUIT),
    dialog("helo", HELO, QUIT),
    dialog("ehlo_lowercase_verb", cmd("ehlo client.test"), QUIT),
    dialog("ehlo_without_domain", cmd("EHLO"), QUIT),
    dialog("helo_without_domain", cmd("HELO"), QUIT),
    dialog("ehlo_address_literal", cmd("EHLO [127.0.0.1]"), QUIT),
    dialog("ehlo_ipv6_literal", cmd("EHLO [IPv6:::1]"), QUIT),
    dialog("ehlo_invalid_domain", cmd("EHLO client_test!"), QUIT),
    dialog("ehlo_two_words", cmd("EHLO client.test extra"), QUIT),
    dialog("ehlo_twice_resets_transaction", EHLO, MAIL, EHLO, RCPT, QUIT),
    dialog("helo_then_ehlo", HELO, EHLO, QUIT),
    # Command sequence.
    dialog("mail_before_hello", MAIL, QUIT),
    dialog("rcpt_before_mail", EHLO, RCPT, QUIT),
    dialog("data_before_mail", EHLO, DATA, QUIT),
    dialog("data_before_rcpt", EHLO, MAIL, DATA, QUIT),
    dialog("mail_twice", EHLO, MAIL, MAIL, QUIT),
    dialog("rset_ends_transaction", EHLO, MAIL, RSET, RCPT, QUIT),
    dialog("data_after_message", *transaction(DATA, raw(BODY + b".\r\n", 1), DATA)),
    # MAIL syntax and parameters.
    dialog("mail_null_sender", EHLO, cmd("MAIL FROM:<>"), RCPT, QUIT),
    dialog(
        "mail_rcpt_lowercase",
        EHLO,
        cmd("mail from:<alice@example.org>"),
        cmd("rcpt to:<bob@example.com>"),
        QUIT,
    ),
    dialog("mail_without_brackets", EHLO, cmd("MAIL FROM:alice@example.org"), QUIT),
    dialog("mail_space_after_colon", EHLO, cmd("MAIL FROM: <alice@example.org>"), QUIT),
    dialog("mail_without_from", EHLO, cmd("MAIL <alice@example.org>"), QUIT),
    dialog("mail_without_argument", EHLO, cmd("MAIL"), QUIT),
    dialog("mail_unclosed_bracket", EHLO, cmd("MAIL FROM:<alice@example.org"), QUIT),
    dialog("mail_display_name", EHLO, cmd("MAIL FROM:Alice <alice@example.org>"), QUIT),
    dialog("mail_size_within_limit", EHLO, cmd(MAIL.data[:-2] + b" SIZE=1000"), QUIT),
    dialog("mail_size_over_limit", EHLO, cmd(MAIL.data[:-2] + b" SIZE=40000000"), QUIT),
    dialog("mail_size_not_a_number", EHLO, cmd(MAIL.data[:-2] + b" SIZE=big"), QUIT),
    dialog("mail_size_lowercase", EHLO, cmd(MAIL.data[:-2] + b" size=1000"), QUIT),
    dialog("mail_body_8bitmime", EHLO, cmd(MAIL.data[:-2] + b" BODY=8BITMIME"), QUIT),
    dialog(
        "mail_body_binarymime", EHLO, cmd(MAIL.data[:-2] + b" BODY=BINARYMIME"), QUIT
    ),
    dialog("mail_body_invalid", EHLO, cmd(MAIL.data[:-2] + b" BODY=9BIT"), QUIT),
    dialog("mail_unknown_parameter", EHLO, cmd(MAIL.data[:-2] + b" FOO=BAR"), QUIT),
    dialog("mail_dsn_without_dsn", EHLO, cmd(MAIL.data[:-2] + b" RET=HDRS"), QUIT),
    dialog("mail_parameter_after_helo", HELO, cmd(MAIL.data[:-2] + b" SIZE=10"), QUIT),
    dialog(
        "mail_utf8_with_smtputf8",
        EHLO,
        cmd("MAIL FROM:<ålice@example.org> SMTPUTF8"),
        QUIT,
    ),
    dialog(
        "mail_utf8_without_smtputf8", EHLO, cmd("MAIL FROM:<ålice@example.org>"), QUIT
    ),
    # RCPT syntax and parameters.
    dialog("rcpt_without_brackets", EHLO, MAIL, cmd("RCPT TO:bob@example.com"), QUIT),
    dialog("rcpt_postmaster", EHLO, MAIL, cmd("RCPT TO:<postmaster>"), QUIT),
    dialog("rcpt_null_path", EHLO, MAIL, cmd("RCPT TO:<>"), QUIT),
    dialog(
        "rcpt_source_route",
        EHLO,
        MAIL,
        cmd("RCPT TO:<@relay.example:bob@example.com>"),
        QUIT,
    ),
    dialog(
        "rcpt_unknown_parameter",
        EHLO,
        MAIL,
        cmd("RCPT TO:<bob@example.com> FOO=1"),
        QUIT,
    ),
    dialog(
        "rcpt_notify_without_dsn",
        EHLO,
        MAIL,
        cmd("RCPT TO:<bob@example.com> NOTIFY=NEVER"),
        QUIT,
    ),
    # DATA.
    dialog("data_message", *transaction(DATA, raw(BODY + b".\r\n", 1), QUIT)),
    dialog("data_empty_message", *transaction(DATA, raw(b".\r\n", 1), QUIT)),
    dialog(
        "data_dot_stuffing", *transaction(DATA, raw(DOTTED_BODY + b".\r\n", 1), QUIT)
    ),
    dialog(
        "data_line_too_long",
        *transaction(DATA, raw(b"x" * 1100 + b"\r\n.\r\n", 1), QUIT),
    ),
    dialog(
        "data_bare_lf_in_content",
        *transaction(DATA, raw(b"Subject: x\n\nbody\r\n.\r\n", 1), QUIT),
    ),
    dialog(
        "data_lf_dot_lf_does_not_end",
        *transaction(
            DATA,
            raw(b"body\n.\n", 0, settle=True),
            raw(b"\r\n.\r\n", 1, settle=True),
            QUIT,
        ),
    ),
    dialog(
        "data_pipelined_transaction",
        EHLO,
        raw(MAIL.data + RCPT.data + DATA.data, 3),
        raw(BODY + b".\r\n", 1),
        QUIT,
    ),
    dialog(
        "data_pipelined_after_helo",
        HELO,
        raw(MAIL.data + RCPT.data, 2, settle=True),
        QUIT,
    ),
    dialog(
        "bdat_last_chunk",
        *transaction(raw(b"BDAT 7 LAST\r\nhello\r\n", 1, settle=True), QUIT),
    ),
    # Other commands.
    dialog("rset_with_argument", EHLO, cmd("RSET now"), QUIT),
    dialog("noop", cmd("NOOP"), QUIT),
    dialog("noop_with_argument", EHLO, cmd("NOOP hello there"), QUIT),
    dialog("vrfy_without_argument", EHLO, cmd("VRFY"), QUIT),
    dialog("vrfy_address", EHLO, cmd("VRFY <bob@example.com>"), QUIT),
    dialog("vrfy_before_hello", cmd("VRFY bob"), QUIT),
    dialog("expn", EHLO, cmd("EXPN staff"), QUIT),
    dialog("help", cmd("HELP"), QUIT),
    dialog("help_mail", cmd("HELP MAIL"), QUIT),
    dialog("help_unknown_topic", cmd("HELP FOO"), QUIT),
    dialog("quit_with_argument", cmd("QUIT now"), QUIT),
    dialog("unknown_command", EHLO, cmd("FOO bar"), QUIT),
    dialog("empty_line", cmd(""), QUIT),
    dialog("spaces_only_line", cmd("   "), QUIT),
    dialog("auth_before_ehlo", cmd("AUTH PLAIN"), QUIT),
    dialog("auth_without_tls", EHLO, cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA=="), QUIT),
    dialog("starttls_not_offered", EHLO, cmd("STARTTLS"), QUIT),
    dialog("http_request", cmd("GET / HTTP/1.1"), QUIT),
    # Line limits, line endings and bytes outside ASCII.
    dialog("command_line_600_octets", EHLO, cmd("NOOP " + "x" * 595), QUIT),
    dialog("command_line_5000_octets", EHLO, cmd("NOOP " + "x" * 4995), QUIT),
    dialog("bare_lf_after_command", EHLO, raw(b"NOOP\n", 0, settle=True), QUIT),
    dialog("bare_cr_in_command", EHLO, raw(b"NOOP\rQUIT\r\n", 1, settle=True)),
    dialog("nul_in_command", EHLO, raw(b"NOOP \x00\r\n", 1), QUIT),
    dialog("utf8_in_noop_argument", EHLO, cmd("NOOP grüße"), QUIT),
    dialog("invalid_utf8_in_argument", EHLO, raw(b"NOOP \xff\xfe\r\n", 1), QUIT),
    dialog("utf8_in_verb", EHLO, cmd("NÖOP"), QUIT),
    dialog("noop_line_512_octets", EHLO, cmd("NOOP " + "x" * 505), QUIT),
    dialog("noop_line_513_octets", EHLO, cmd("NOOP " + "x" * 506), QUIT),
    dialog("noop_line_548_octets", EHLO, cmd("NOOP " + "x" * 541), QUIT),
    dialog("mail_line_549_octets", EHLO, cmd(long_mail(549)), QUIT),
    dialog("mail_local_part_64_octets", EHLO, cmd(mail_with_local_part(64)), QUIT),
    dialog("mail_local_part_65_octets", EHLO, cmd(mail_with_local_part(65)), QUIT),
    dialog(
        "data_line_1000_octets",
        *transaction(DATA, raw(b"x" * 998 + b"\r\n.\r\n", 1), QUIT),
    ),
    dialog(
        "data_line_1001_octets",
        *transaction(DATA, raw(b"x" * 999 + b"\r\n.\r\n", 1), QUIT),
    ),
    dialog(
        "data_stuffed_line_1001_octets",
        *transaction(DATA, raw(b"." + b"x" * 998 + b"\r\n.\r\n", 1), QUIT),
    ),
    dialog(
        "data_nul_in_content",
        *transaction(DATA, raw(b"Subject: x\r\n\r\na\x00b\r\n.\r\n", 1), QUIT),
    ),
    dialog(
        "data_8bit_without_body_parameter",
        *transaction(DATA, raw("Subject: é\r\n\r\nçà\r\n.\r\n".encode(), 1), QUIT),
    ),
    dialog(
        "data_content_in_same_write",
        *transaction(raw(DATA.data + BODY + b".\r\n" + QUIT.data, 3, settle=True)),
    ),
    dialog(
        "data_rejected_then_next_message",
        *transaction(DATA, raw(b"x" * 1100 + b"\r\n.\r\n", 1)),
        MAIL,
        RCPT,
        DATA,
        raw(BODY + b".\r\n", 1),
        QUIT,
    ),
    dialog("noop_keeps_transaction", EHLO, MAIL, cmd("NOOP"), RCPT, QUIT),
    dialog("vrfy_keeps_transaction", EHLO, MAIL, cmd("VRFY bob"), RCPT, QUIT),
    dialog("data_with_argument", EHLO, MAIL, RCPT, cmd("DATA now"), QUIT),
    dialog(
        "data_envelope_with_parameters",
        EHLO,
        cmd(MAIL.data[:-2] + b" SIZE=100 BODY=8BITMIME"),
        RCPT,
        cmd("RCPT TO:<carol@example.com>"),
        DATA,
        raw(BODY + b".\r\n", 1),
        QUIT,
    ),
    dialog(
        "data_two_transactions",
        *transaction(DATA, raw(BODY + b".\r\n", 1)),
        cmd("MAIL FROM:<>"),
        cmd("RCPT TO:<postmaster>"),
        DATA,
        raw(DOTTED_BODY + b".\r\n", 1),
        QUIT,
    ),
    dialog(
        "three_recipients", EHLO, MAIL, RCPT, RCPT, cmd("RCPT TO:<c@d.example>"), QUIT
    ),
    dialog(
        "rcpt_quoted_local_part",
        EHLO,
        MAIL,
        cmd('RCPT TO:<"bob smith"@example.com>'),
        QUIT,
    ),
    dialog("mail_address_literal", EHLO, cmd("MAIL FROM:<alice@[127.0.0.1]>"), QUIT),
    dialog(
        "mail_repeated_parameter",
        EHLO,
        cmd(MAIL.data[:-2] + b" SIZE=10 SIZE=20"),
        QUIT,
    ),
    dialog("mail_auth_parameter", EHLO, cmd(MAIL.data[:-2] + b" AUTH=<>"), QUIT),
    dialog(
        "rcpt_utf8_without_smtputf8", EHLO, MAIL, cmd("RCPT TO:<bøb@example.com>"), QUIT
    ),
    dialog("starttls_with_argument", EHLO, cmd("STARTTLS now"), QUIT),
    dialog("lhlo_in_smtp", cmd("LHLO client.test"), QUIT),
    dialog("pipelined_ehlo_and_mail", raw(EHLO.data + MAIL.data, 2), QUIT),
    dialog("ten_unknown_commands", *[cmd("FOO")] * 10, QUIT),
    dialog(
        "eleven_unknown_commands",
        *[cmd("FOO")] * 10,
        raw(b"FOO\r\n", 1, settle=True),
        QUIT,
    ),
]

# Why our replies differ from aiosmtpd 1.4.6's in each dialogue that differs.
# Line lengths count the CRLF.
KNOWN_DIFFERENCES: dict[str, str] = {
    "ehlo_two_words": (
        "RFC 5321 4.1.1.1: EHLO takes one domain or address literal, so text "
        "after it gets 501 5.5.4. aiosmtpd ignores the extra word."
    ),
    "mail_without_brackets": (
        "RFC 5321 4.1.2: a reverse-path needs angle brackets, so we reply 501. "
        "aiosmtpd accepts a bare address."
    ),
    "mail_unclosed_bracket": (
        "RFC 5321 4.1.2: '<alice@example.org' without '>' is not a path, so we "
        "reply 501. aiosmtpd accepts it."
    ),
    "mail_utf8_without_smtputf8": (
        "RFC 6531 3.4: a non-ASCII address needs the SMTPUTF8 parameter, so we "
        "reply 553 5.6.7. aiosmtpd accepts it."
    ),
    "rcpt_without_brackets": (
        "RFC 5321 4.1.2: a forward-path needs angle brackets, so we reply 501. "
        "aiosmtpd accepts a bare address."
    ),
    "rcpt_null_path": (
        "RFC 5321 4.1.1.3: the null path <> is valid in MAIL only, so RCPT TO:<> "
        "gets 501 5.1.3. aiosmtpd accepts it."
    ),
    "data_bare_lf_in_content": (
        "Deliberate: RFC 5321 2.3.8 forbids a bare LF, and with the default "
        "bare_line_ending='reject' the message gets 550 5.5.2 at its end, which "
        "blocks SMTP smuggling. bare_line_ending='allow' accepts it as aiosmtpd does."
    ),
    "data_lf_dot_lf_does_not_end": (
        "Neither server ends the message at LF.LF. For the bare LFs, we reject the "
        "message at CRLF.CRLF with 550 5.5.2 (bare_line_ending='reject'), and "
        "aiosmtpd accepts it."
    ),
    "bdat_last_chunk": (
        "We offer CHUNKING (RFC 3030) and accept BDAT. aiosmtpd 1.4.6 has no BDAT "
        "and replies 500 to it and to the chunk. enable_chunking=False turns BDAT off."
    ),
    "help": ("RFC 5321 4.2.2: the reply to HELP is 214. aiosmtpd replies 250."),
    "help_mail": "RFC 5321 4.2.2: the reply to HELP is 214. aiosmtpd replies 250.",
    "help_unknown_topic": (
        "An unknown HELP topic gets 504 5.5.1 (parameter not implemented). "
        "aiosmtpd replies 501 with the command list."
    ),
    "auth_before_ehlo": (
        "Without an authenticator or handle_AUTH we offer no AUTH, so AUTH gets "
        "502 5.5.1. aiosmtpd replies 503 (EHLO first), as we do when AUTH is "
        "configured."
    ),
    "auth_without_tls": (
        "Without an authenticator or handle_AUTH we offer no AUTH, so AUTH gets "
        "502 5.5.1. aiosmtpd replies 538 5.7.11 (TLS required), as we do when "
        "AUTH is configured."
    ),
    "http_request": (
        "Deliberate: an HTTP request line (a cross-protocol attack) gets 421 and "
        "the connection closes, as in Postfix. aiosmtpd replies 500 and goes on."
    ),
    "bare_lf_after_command": (
        "RFC 5321 2.3.8: only CRLF ends a command line. 'NOOP<LF>' is not a line "
        "for us, so the next CRLF ends 'NOOP<LF>QUIT', which gets 500 5.5.2 and "
        "leaves the connection open. aiosmtpd takes the LF as a line end."
    ),
    "nul_in_command": (
        "Deliberate: a control character in a command line gets 500 5.5.2. "
        "aiosmtpd passes the NUL to NOOP and replies 250."
    ),
    "invalid_utf8_in_argument": (
        "A command line must be ASCII, or UTF-8 with SMTPUTF8 (RFC 6531 3.3), so "
        "invalid UTF-8 gets 500 5.5.2. aiosmtpd replies 250."
    ),
    "noop_line_548_octets": (
        "Our command line limit is 512 octets plus the allowances of the offered "
        "extensions (SIZE 26, SMTPUTF8 10: 548) for every command. aiosmtpd adds "
        "them for MAIL only and limits NOOP to 514 octets."
    ),
    "mail_line_549_octets": (
        "RFC 5321 4.5.3.1.4 counts the CRLF, so 549 octets exceed our 548 and get "
        "500 5.5.2. aiosmtpd does not count the CRLF and accepts up to 550."
    ),
    "data_line_1001_octets": (
        "RFC 5321 4.5.3.1.6: a text line has at most 1000 octets with CRLF (plus "
        "one stuffing dot), so 1001 octets get 500 5.5.2 at the end of the "
        "message. aiosmtpd accepts up to 1001. max_text_line=None lifts the limit."
    ),
    "mail_repeated_parameter": (
        "A MAIL parameter given twice (SIZE=10 SIZE=20) is ambiguous and gets "
        "501 5.5.4. aiosmtpd accepts it after EHLO."
    ),
    "rcpt_utf8_without_smtputf8": (
        "RFC 6531 3.4: a non-ASCII recipient in a transaction without SMTPUTF8 "
        "gets 553 5.6.7. aiosmtpd accepts it."
    ),
    "ten_unknown_commands": (
        "aiosmtpd closes with 502 after the fifth unrecognized command. We allow "
        "max_errors=10 error replies (500-504) of any kind before 421."
    ),
    "eleven_unknown_commands": (
        "The eleventh error reply exceeds max_errors=10, so we send 500, then "
        "421 4.7.0, and close. aiosmtpd closed after the fifth."
    ),
}


@dataclass
class Transcript:
    """What one server sent in one dialogue."""

    # Reply codes and first reply lines after the greeting and each step.
    codes: list[list[int]] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)
    closed: bool = False
    # What reached the handler: envelope, HELO name and content of each message.
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)

    def comparable(self) -> tuple[Any, ...]:
        return (self.codes, self.closed, self.deliveries)


class ReplyReader:
    """Reads SMTP replies from a blocking socket, with time limits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:  # a reset counts as closed
                data = b""
            if not data:
                self.eof = True
                continue
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_reply(self, timeout: float) -> tuple[int, str] | None:
        """Return the code and first line of the next reply, or ``None``."""
        deadline = time.monotonic() + timeout
        first: bytes | None = None
        while True:
            line = self._read_line(deadline)
            if line is None:
                return None
            if first is None:
                first = line
            if line[3:4] != b"-":
                break
        code = int(first[:3]) if first[:3].isdigit() else -1
        return code, first.decode("utf-8", "backslashreplace")


def run_dialog(port: int, steps: tuple[Step, ...], recorder: Recorder) -> Transcript:
    """Play ``steps`` against the server on ``port`` and return its replies."""
    transcript = Transcript()
    delivered_before = len(recorder.deliveries)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = ReplyReader(sock)
        for index, step in enumerate((Step(b"", 1), *steps)):
            if step.data and not reader.eof:
                try:
                    sock.sendall(step.data)
                except OSError:
                    reader.eof = True
            codes: list[int] = []
            texts: list[str] = []
            expected = step.replies
            # After the last step, read whatever else comes until EOF or quiet.
            last = index == len(steps)
            while True:
                timeout = REPLY_TIMEOUT if len(codes) < expected else QUIET_TIME
                if len(codes) >= expected and not (step.settle or last):
                    break
                reply = reader.read_reply(timeout)
                if reply is None:
                    break
                codes.append(reply[0])
                texts.append(reply[1])
            transcript.codes.append(codes)
            transcript.texts.append(texts)
        transcript.closed = reader.eof
    # handle_DATA runs before the server replies to the content, so every message
    # of this dialogue is recorded by now.
    transcript.deliveries = [
        (d.mail_from, d.rcpt_tos, d.mail_options, d.host_name, d.content)
        for d in recorder.deliveries[delivered_before:]
    ]
    return transcript


@dataclass
class Servers:
    aiosmtpd_port: int
    ours_port: int
    aiosmtpd_recorder: Recorder
    ours_recorder: Recorder
    pool: ThreadPoolExecutor

    def run(self, dialog: Dialog) -> tuple[Transcript, Transcript]:
        """Play ``dialog`` against both servers at once."""
        theirs = self.pool.submit(
            run_dialog, self.aiosmtpd_port, dialog.steps, self.aiosmtpd_recorder
        )
        ours = run_dialog(self.ours_port, dialog.steps, self.ours_recorder)
        return theirs.result(), ours


def start_servers() -> tuple[Servers, Any, Controller]:
    aiosmtpd_recorder = Recorder()
    ours_recorder = Recorder()
    # aiosmtpd 1.4.6's Controller cannot report the port that port 0 picked.
    theirs = aiosmtpd_controller.Controller(
        aiosmtpd_recorder,
        hostname="127.0.0.1",
        port=free_port(),
        server_hostname="mx.test",
    )
    theirs.start()
    ours = Controller(
        ours_recorder, hostname="127.0.0.1", port=0, server_hostname="mx.test"
    )
    ours.start()
    servers = Servers(
        aiosmtpd_port=theirs.port,
        ours_port=ours.port,
        aiosmtpd_recorder=aiosmtpd_recorder,
        ours_recorder=ours_recorder,
        pool=ThreadPoolExecutor(max_workers=1),
    )
    return servers, theirs, ours


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    started, theirs, ours = start_servers()
    try:
        yield started
    finally:
        started.pool.shutdown()
        theirs.stop()
        ours.stop()


def describe(dialog: Dialog, theirs: Transcript, ours: Transcript) -> str:
    """Return the dialogue's steps side by side, marking the steps that differ."""
    lines = [f"dialog {dialog.id}:"]
    sent = ["(connect)"] + [
        step.data.decode("utf-8", "backslashreplace")[:60] for step in dialog.steps
    ]
    for index, text in enumerate(sent):
        mark = "*" if theirs.codes[index] != ours.codes[index] else " "
        lines.append(
            f" {mark} C: {text!r}\n"
            f"     aiosmtpd: {theirs.texts[index]}\n"
            f"     ours:     {ours.texts[index]}"
        )
    lines.append(f"   closed: aiosmtpd {theirs.closed}, ours {ours.closed}")
    if theirs.deliveries != ours.deliveries:
        lines.append(
            f" * delivered: aiosmtpd {theirs.deliveries!r:.300}\n"
            f"             ours     {ours.deliveries!r:.300}"
        )
    return "\n".join(lines)


def test_dialog_ids_unique() -> None:
    ids = [d.id for d in DIALOGS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


def test_known_differences_name_dialogs() -> None:
    unknown = set(KNOWN_DIFFERENCES) - {d.id for d in DIALOGS}
    assert not unknown, f"KNOWN_DIFFERENCES names no dialogue: {sorted(unknown)}"


@pytest.mark.parametrize("dialog", DIALOGS, ids=[d.id for d in DIALOGS])
def test_dialog(servers: Servers, dialog: Dialog) -> None:
    theirs, ours = servers.run(dialog)
    differs = theirs.comparable() != ours.comparable()
    if dialog.id in KNOWN_DIFFERENCES:
        assert differs, (
            f"no difference any more; remove {dialog.id!r} from KNOWN_DIFFERENCES\n"
            + describe(dialog, theirs, ours)
        )
    else:
        assert not differs, (
            "new difference; explain it in KNOWN_DIFFERENCES or fix it\n"
            + describe(dialog, theirs, ours)
        )


def help_text(port: int, recorder: Recorder) -> str:
    transcript = run_dialog(port, (cmd("HELP"), QUIT), recorder)
    [text] = transcript.texts[1]
    return text


def test_help_omits_starttls_without_tls(servers: Servers) -> None:
    ours = help_text(servers.ours_port, servers.ours_recorder)
    assert "STARTTLS" not in ours, ours


def test_help_omits_auth_without_mechanisms(servers: Servers) -> None:
    ours = help_text(servers.ours_port, servers.ours_recorder)
    assert " AUTH " not in f" {ours} ", ours


def main() -> None:
    """Print every dialogue that differs, for the migration guide."""
    servers, theirs_controller, ours_controller = start_servers()
    try:
        for dialog in DIALOGS:
            theirs, ours = servers.run(dialog)
            if theirs.comparable() == ours.comparable():
                continue
            reason = KNOWN_DIFFERENCES.get(dialog.id, "NOT LISTED")
            sys.stdout.write(describe(dialog, theirs, ours) + f"\n   => {reason}\n\n")
    finally:
        servers.pool.shutdown()
        theirs_controller.stop()
        ours_controller.stop()


if __name__ == "__main__":
    main()
