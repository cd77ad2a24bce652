"""Tests of replies (Reply, parse_status, enhanced codes) and of error handling."""

from __future__ import annotations

import re
from typing import Any

import pytest

from helpers import codes, drain, feed, new_connection
from smtpproto import (
    PAUSED,
    AuthCredentials,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    Ehlo,
    Event,
    LocalProtocolError,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Reply,
    ServerConnection,
    StartTLS,
    UnknownCommand,
    parse_status,
)

ENHANCED_LINE = re.compile(rb"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
SYNC_ERROR = b"554 5.5.0 Error: SMTP protocol synchronization\r\n"


# Reply


def test_reply_to_bytes() -> None:
    reply = Reply(250, "2.0.0", ("first", "second"))
    assert reply.to_bytes() == b"250-2.0.0 first\r\n250 2.0.0 second\r\n"
    assert reply.to_bytes(with_enhanced=False) == b"250-first\r\n250 second\r\n"
    assert reply.text == "first\nsecond"


def test_reply_to_bytes_empty_text() -> None:
    assert Reply(250, None, ()).to_bytes() == b"250\r\n"
    assert Reply(250, None, ("",)).to_bytes() == b"250\r\n"


@pytest.mark.parametrize(
    ("code", "enhanced", "lines"),
    [
        pytest.param(199, None, ("x",), id="code-low"),
        pytest.param(600, None, ("x",), id="code-high"),
        pytest.param(250, "2.0", ("x",), id="enhanced-short"),
        pytest.param(250, "2.0.0.0", ("x",), id="enhanced-long"),
        pytest.param(250, "3.0.0", ("x",), id="enhanced-class-3"),
        pytest.param(250, "2.1000.0", ("x",), id="enhanced-subject-digits"),
        pytest.param(250, "5.0.0", ("x",), id="enhanced-class-mismatch"),
        pytest.param(550, "4.1.1", ("x",), id="enhanced-class-mismatch-5"),
        pytest.param(250, None, ("a\r\nb",), id="crlf-in-line"),
        pytest.param(250, None, ("a\nb",), id="lf-in-line"),
        pytest.param(250, None, ("ok", "a\rb"), id="cr-in-second-line"),
    ],
)
def test_reply_invalid(code: int, enhanced: str | None, lines: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, lines)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(
            "550 5.1.1 No such user",
            Reply(550, "5.1.1", ("No such user",)),
            id="enhanced",
        ),
        pytest.param("250 OK", Reply(250, None, ("OK",)), id="plain"),
        pytest.param("250", Reply(250, None, ("",)), id="code-only"),
        pytest.param("250 2.0.0", Reply(250, "2.0.0", ("",)), id="enhanced-only"),
        pytest.param(
            "250 5.0.0 odd",
            Reply(250, None, ("5.0.0 odd",)),
            id="mismatch-kept-as-text",
        ),
        pytest.param(
            "250-first\n250 second",
            Reply(250, None, ("first", "second")),
            id="multiline-codes",
        ),
        pytest.param(
            "250-2.0.0 first\r\n250 2.0.0 second",
            Reply(250, "2.0.0", ("first", "second")),
            id="multiline-enhanced",
        ),
        pytest.param(
            "250 first\nsecond\n",
            Reply(250, None, ("first", "second")),
            id="plain-newlines",
        ),
        pytest.param(
            "421 4.3.2 Shutting down", Reply(421, "4.3.2", ("Shutting down",)), id="421"
        ),
    ],
)
def test_parse_status(status: str, expected: Reply) -> None:
    assert parse_status(status) == expected


@pytest.mark.parametrize(
    "status",
    [
        pytest.param("", id="empty"),
        pytest.param("OK", id="no-code"),
        pytest.param("25 OK", id="short-code"),
        pytest.param("650 OK", id="code-class-6"),
        pytest.param("250OK", id="no-separator"),
    ],
)
def test_parse_status_invalid(status: str) -> None:
    with pytest.raises(ValueError):
        parse_status(status)


def test_send_reply_object_from_parse_status() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.send_reply_object(parse_status("451 4.7.1 Greylisted, try again later"))
    assert conn.data_to_send() == b"451 4.7.1 Greylisted, try again later\r\n"


def test_send_reply_invalid_text() -> None:
    conn = new_connection()
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    with pytest.raises(ValueError):
        conn.send_reply(250, ["fine", "bad\r\nline"])
    # The failed call changed nothing: a valid reply is still expected.
    conn.accept()
    assert conn.data_to_send() == b"250 2.0.0 OK\r\n"


# Enhanced status codes


def full_session(conn: ServerConnection) -> bytes:
    """Drive a session through most commands and errors; return what was sent."""
    rejected_recipients = {"no@example.com"}

    def respond(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, RcptTo) and event.address in rejected_recipients:
            conn.send_reply(550, "No such user")
        elif isinstance(event, Noop) and event.argument == "multi":
            conn.send_reply(250, ["one", "two"])
        else:
            conn.accept()

    conn.receive_data(
        b"EHLO client.example\r\n"
        b"NOOP\r\n"
        b"NOOP multi\r\n"
        b"VRFY someone\r\n"
        b"HELP\r\n"
        b"HELP FROB\r\n"
        b"FROB\r\n"
        b"EXPN list\r\n"
        b"RCPT TO:<a@example.com>\r\n"
        b"MAIL FROM:<bad address>\r\n"
        b"MAIL FROM:<a@example.org> SIZE=999999999999\r\n"
        b"MAIL FROM:<a@example.org> FOO=bar\r\n"
        b"MAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<no@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"RCPT TO:bad\r\n"
        b"DATA\r\n"
        b"Subject: hi\r\n\r\n..dot\r\n.\r\n"
        b"MAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"BDAT 3\r\nabc"
        b"DATA\r\n"
        b"BDAT 1 LAST\r\nx"
        b"STARTTLS\r\n"
        b"AUTH PLAIN\r\n"
        b"\x01\r\n"
        b"\r\n" + b"NOOP " + b"x" * 600 + b"\r\n"
        b"RSET\r\n"
        b"QUIT\r\n"
    )
    drain(conn, respond)
    return conn.data_to_send()


def reply_lines(out: bytes) -> list[bytes]:
    return out.split(b"\r\n")[:-1]


def test_enhanced_codes_on_every_reply() -> None:
    conn = new_connection(max_message_size=1000)
    out = full_session(conn)
    lines = reply_lines(out)
    ehlo_lines = 1 + len(conn.extensions)
    assert all(not ENHANCED_LINE.match(line) for line in lines[:ehlo_lines])
    checked = 0
    for line in lines[ehlo_lines:]:
        if line[:3] in (b"354", b"334"):
            assert not ENHANCED_LINE.match(line), line
        else:
            assert ENHANCED_LINE.match(line), line
            checked += 1
    assert checked >= 25
    assert conn.closed


def test_enhanced_codes_off() -> None:
    conn = new_connection(max_message_size=1000, enable_enhanced_status_codes=False)
    out = full_session(conn)
    lines = reply_lines(out)
    assert len(lines) >= 30
    for line in lines:
        assert not ENHANCED_LINE.match(line), line
    assert b"550 No such user\r\n" in out


def test_enhanced_code_off_drops_explicit_code() -> None:
    conn = new_connection(enable_enhanced_status_codes=False)
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    conn.send_reply(250, "Fine", enhanced="2.0.0")
    assert conn.data_to_send() == b"250 Fine\r\n"


@pytest.mark.parametrize(
    "method",
    [pytest.param("timeout", id="timeout"), pytest.param("shutdown", id="shutdown")],
)
def test_enhanced_code_off_engine_421(method: str) -> None:
    conn = new_connection(enable_enhanced_status_codes=False)
    getattr(conn, method)()
    out = conn.data_to_send()
    assert out.startswith(b"421 ")
    assert not ENHANCED_LINE.match(out)


def test_enhanced_code_multiline_every_line() -> None:
    conn = new_connection()
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    conn.send_reply(250, ["first", "second", "third"])
    assert conn.data_to_send() == (
        b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n"
    )


@pytest.mark.parametrize(
    ("setup", "line", "code", "enhanced"),
    [
        pytest.param(
            b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n", 550, "5.1.0", id="mail"
        ),
        pytest.param(
            b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.com>\r\n",
            450,
            "4.1.5",
            id="rcpt",
        ),
        pytest.param(b"", b"NOOP\r\n", 250, "2.0.0", id="noop"),
        pytest.param(b"", b"VRFY x\r\n", 550, "5.0.0", id="vrfy"),
        pytest.param(b"", b"FROB\r\n", 502, "5.5.1", id="unknown-command"),
        pytest.param(b"", b"FROB\r\n", 421, "4.0.0", id="unknown-421"),
    ],
)
def test_default_enhanced_code(
    setup: bytes, line: bytes, code: int, enhanced: str
) -> None:
    conn = new_connection()
    if setup:
        feed(conn, setup)
    conn.receive_data(line)
    conn.next_event()
    conn.send_reply(code, "Text")
    assert conn.data_to_send() == f"{code} {enhanced} Text\r\n".encode()


def test_default_enhanced_code_auth() -> None:
    conn = new_connection(auth_mechanisms=("PLAIN",), tls_active=True)
    feed(conn, b"EHLO c.example\r\n")
    conn.receive_data(b"AUTH PLAIN AGEAYg==\r\n")
    assert isinstance(conn.next_event(), AuthCredentials)
    conn.send_reply(535, "No")
    assert conn.data_to_send() == b"535 5.7.8 No\r\n"


def test_no_enhanced_code_on_greeting_and_hello() -> None:
    conn = ServerConnection("mx.example.com")
    conn.send_reply(220, "ready")
    assert conn.data_to_send() == b"220 ready\r\n"
    conn.receive_data(b"HELO c.example\r\n")
    conn.next_event()
    conn.send_reply(250, "hello")
    assert conn.data_to_send() == b"250 hello\r\n"
    conn.receive_data(b"EHLO c.example\r\n")
    conn.next_event()
    conn.send_reply(250, ["hello", "PIPELINING"])
    assert conn.data_to_send() == b"250-hello\r\n250 PIPELINING\r\n"


# LocalProtocolError


def test_reply_with_nothing_pending() -> None:
    conn = new_connection()
    with pytest.raises(LocalProtocolError):
        conn.send_reply(250, "OK")
    with pytest.raises(LocalProtocolError):
        conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.send_reply_object(Reply(250, None, ("OK",)))
    assert conn.data_to_send() == b""


def test_reply_twice() -> None:
    conn = new_connection()
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.accept()


def test_reply_to_notification() -> None:
    conn = new_connection()
    feed(
        conn,
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    conn.receive_data(b"some content\r\n")
    assert isinstance(conn.next_event(), DataChunk)
    with pytest.raises(LocalProtocolError):
        conn.send_reply(250, "OK")


WRONG_CODES = [
    pytest.param(b"MAIL FROM:<a@example.org>\r\n", MailFrom, 354, id="354-to-mail"),
    pytest.param(b"MAIL FROM:<a@example.org>\r\n", MailFrom, 220, id="220-to-mail"),
    pytest.param(b"MAIL FROM:<a@example.org>\r\n", MailFrom, 334, id="334-to-mail"),
    pytest.param(b"RCPT TO:<b@example.com>\r\n", RcptTo, 354, id="354-to-rcpt"),
    pytest.param(b"DATA\r\n", Data, 250, id="250-to-data"),
    pytest.param(b"NOOP\r\n", Noop, 354, id="354-to-noop"),
    pytest.param(b"QUIT\r\n", Quit, 354, id="354-to-quit"),
    pytest.param(b"STARTTLS\r\n", StartTLS, 250, id="250-to-starttls"),
    pytest.param(b"EHLO c.example\r\n", Ehlo, 220, id="220-to-ehlo"),
    pytest.param(b"EHLO c.example\r\n", Ehlo, 354, id="354-to-ehlo"),
]


@pytest.mark.parametrize(("line", "kind", "code"), WRONG_CODES)
def test_reply_code_wrong_for_command(
    line: bytes, kind: type[Event], code: int
) -> None:
    conn = new_connection(tls_available=True)
    if kind in (MailFrom, RcptTo, Data):
        feed(conn, b"EHLO c.example\r\n")
    if kind in (RcptTo, Data):
        feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    if kind is Data:
        feed(conn, b"RCPT TO:<b@example.com>\r\n")
    conn.receive_data(line)
    event = conn.next_event()
    assert isinstance(event, kind)
    with pytest.raises(LocalProtocolError):
        conn.send_reply(code, "Text")
    assert conn.pending is event
    assert conn.data_to_send() == b""


def test_reply_354_to_data_complete() -> None:
    conn = new_connection()
    feed(
        conn,
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    conn.receive_data(b".\r\n")
    assert isinstance(conn.next_event(), DataComplete)
    with pytest.raises(LocalProtocolError):
        conn.send_reply(354)


def test_reply_421_always_fits() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    conn.next_event()
    conn.send_reply(421, "Going down")
    assert conn.data_to_send() == b"421 4.1.0 Going down\r\n"
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_tls_established_out_of_place() -> None:
    conn = new_connection(tls_available=True)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


def test_send_challenge_out_of_place() -> None:
    conn = new_connection()
    with pytest.raises(LocalProtocolError):
        conn.send_challenge(b"x")


# timeout() and shutdown()


def test_timeout_closes() -> None:
    conn = new_connection()
    conn.timeout()
    assert conn.data_to_send() == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)
    conn.timeout()
    assert conn.data_to_send() == b""


def test_timeout_with_pending_command() -> None:
    conn = new_connection()
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    conn.timeout()
    assert codes(conn.data_to_send()) == [421]
    assert conn.pending is None
    with pytest.raises(LocalProtocolError):
        conn.accept()


def test_timeout_in_data() -> None:
    conn = new_connection()
    feed(
        conn,
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    feed(conn, b"partial content")
    conn.timeout()
    assert codes(conn.data_to_send()) == [421]
    assert conn.closed


def test_shutdown_idle() -> None:
    conn = new_connection()
    assert conn.shutdown() is True
    assert conn.data_to_send() == (
        b"421 4.3.2 Service shutting down, closing connection\r\n"
    )
    assert conn.closed


def test_shutdown_in_data() -> None:
    conn = new_connection()
    feed(
        conn,
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    first_events, _ = feed(conn, b"first line\r\n")
    assert conn.shutdown() is False
    assert conn.data_to_send() == b""
    assert not conn.closed
    events, out = feed(conn, b"last line\r\n.\r\nNOOP\r\n")
    assert body_of(first_events + events) == b"first line\r\nlast line\r\n"
    assert out == (
        b"250 2.0.0 OK\r\n421 4.3.2 Service shutting down, closing connection\r\n"
    )
    assert conn.closed
    assert not any(isinstance(e, Noop) for e in events)


def test_shutdown_in_data_rejected_message() -> None:
    conn = new_connection(max_message_size=5)
    feed(
        conn,
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    assert conn.shutdown() is False
    _, out = feed(conn, b"too long for the limit\r\n.\r\n")
    assert codes(out) == [552, 421]
    assert conn.closed


def test_shutdown_with_pending_command() -> None:
    conn = new_connection()
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    assert conn.shutdown() is False
    conn.accept()
    assert codes(conn.data_to_send()) == [250, 421]
    assert conn.closed


def test_shutdown_in_bdat_transaction() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    feed(conn, b"BDAT 3\r\nabc")
    assert conn.shutdown() is False
    _, out = feed(conn, b"BDAT 1 LAST\r\nd")
    assert codes(out) == [250, 421]
    assert conn.closed


def test_shutdown_after_closed() -> None:
    conn = new_connection()
    feed(conn, b"QUIT\r\n")
    assert conn.shutdown() is True
    assert conn.data_to_send() == b""


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


# Unknown commands and junk


def test_unknown_command_event() -> None:
    conn = new_connection()
    events, out = feed(conn, b"xfrob some argument\r\n")
    assert events == [UnknownCommand(verb="XFROB", argument="some argument")]
    assert out == b'500 5.5.1 Error: command "XFROB" not recognized\r\n'


def test_unknown_command_without_argument() -> None:
    conn = new_connection()
    events, _ = feed(conn, b"TURN\r\n")
    assert events == [UnknownCommand(verb="TURN", argument=None)]


def test_unknown_command_application_reply() -> None:
    conn = new_connection()
    conn.receive_data(b"XCLIENT ADDR=192.0.2.1\r\n")
    event = conn.next_event()
    assert event == UnknownCommand(verb="XCLIENT", argument="ADDR=192.0.2.1")
    conn.send_reply(250, "XCLIENT accepted")
    assert conn.data_to_send() == b"250 2.0.0 XCLIENT accepted\r\n"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: mx.example.com\r\n\r\n", id="get"),
        pytest.param(b"POST /submit HTTP/1.1\r\n", id="post"),
        pytest.param(b"CONNECT mx.example.com:25 HTTP/1.1\r\n", id="connect"),
        pytest.param(b"Host: mx.example.com\r\n", id="header-line"),
        pytest.param(b"User-Agent: curl/8.0\r\n", id="user-agent"),
    ],
)
def test_http_request_closes(data: bytes) -> None:
    conn = new_connection()
    events, out = feed(conn, data)
    assert out == b"421 4.7.0 HTTP requests are not accepted here\r\n"
    assert conn.closed
    assert events == [ConnectionClosed()]


def test_http_request_after_ehlo() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    _, out = feed(conn, b"GET / HTTP/1.0\r\n")
    assert codes(out) == [421]
    assert conn.closed


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        pytest.param(
            b"NO\x00OP\r\n",
            b"500 5.5.2 Control character in command line\r\n",
            id="nul",
        ),
        pytest.param(
            b"NOOP\x1b[2J\r\n",
            b"500 5.5.2 Control character in command line\r\n",
            id="esc",
        ),
        pytest.param(
            b"NOOP\x7f\r\n",
            b"500 5.5.2 Control character in command line\r\n",
            id="del",
        ),
        pytest.param(
            b"NOOP\tx\r\n", b"500 5.5.2 Control character in command line\r\n", id="tab"
        ),
        pytest.param(
            b"NOOP \xc3\xa9\r\n", b"500 5.5.2 Error: strict ASCII mode\r\n", id="utf8"
        ),
        pytest.param(
            b"\xff\xfe\r\n", b"500 5.5.2 Error: strict ASCII mode\r\n", id="binary"
        ),
        pytest.param(b"\r\n", b"500 5.5.2 Error: bad syntax\r\n", id="empty"),
        pytest.param(b"   \r\n", b"500 5.5.2 Error: bad syntax\r\n", id="spaces"),
    ],
)
def test_junk_line_rejected(line: bytes, reply: bytes) -> None:
    conn = new_connection()
    events, out = feed(conn, line)
    assert events == []
    assert out == reply
    assert not conn.closed
    events, out = feed(conn, b"NOOP\r\n")
    assert [type(e) for e in events] == [Noop]
    assert out == b"250 2.0.0 OK\r\n"


def test_bare_lf_in_command_rejected() -> None:
    conn = new_connection(bare_line_ending="reject")
    events, out = feed(conn, b"NOOP\nNOOP\r\nNOOP\r\n")
    assert [type(e) for e in events] == [Noop]
    assert codes(out) == [500, 250]
    assert not conn.closed


@pytest.mark.parametrize("policy", ["normalize", "allow"])
def test_bare_lf_ends_command_when_lenient(policy: str) -> None:
    conn = new_connection(bare_line_ending=policy)
    events, out = feed(conn, b"NOOP\nNOOP\r\n")
    assert [type(e) for e in events] == [Noop, Noop]
    assert codes(out) == [250, 250]


def test_non_ascii_command_with_smtputf8() -> None:
    conn = new_connection(enable_smtputf8=True)
    events, out = feed(conn, "NOOP café\r\n".encode())
    assert events == [Noop(argument="café")]
    _, out = feed(conn, b"NOOP \xff\r\n")
    assert out == b"500 5.5.2 Error: command line is not valid UTF-8\r\n"


# QUIT and closing


def test_quit_closes() -> None:
    conn = new_connection()
    events, out = feed(conn, b"QUIT\r\nNOOP\r\n")
    assert events == [Quit(), ConnectionClosed()]
    assert out == b"221 2.0.0 Bye\r\n"
    assert conn.closed
    conn.receive_data(b"NOOP\r\n")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.data_to_send() == b""


def test_quit_with_argument() -> None:
    conn = new_connection()
    events, out = feed(conn, b"QUIT now\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: QUIT\r\n"
    assert not conn.closed


def test_quit_in_transaction() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
    _, out = feed(conn, b"QUIT\r\n")
    assert codes(out) == [221]
    assert conn.closed


def test_peer_close_idle() -> None:
    conn = new_connection()
    events, out = feed(conn, b"")
    assert events == [ConnectionClosed()]
    assert out == b""
    assert conn.closed


def test_peer_close_after_complete_command() -> None:
    # A command that arrived before EOF is still served.
    conn = new_connection()
    conn.receive_data(b"NOOP\r\n")
    conn.receive_data(b"")
    events = drain(conn)
    assert [type(e) for e in events] == [Noop, ConnectionClosed]
    assert conn.data_to_send() == b"250 2.0.0 OK\r\n"


def test_paused_until_reply() -> None:
    conn = new_connection()
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Noop)
    assert conn.next_event() is PAUSED


# reject_unsynchronized


def test_early_talker_rejected() -> None:
    conn = ServerConnection("mx.example.com", reject_unsynchronized=True)
    conn.receive_data(b"EHLO client.example\r\n")
    conn.accept()
    events = drain(conn)
    assert events == [ConnectionClosed()]
    assert conn.data_to_send() == b"220 mx.example.com ESMTP\r\n" + SYNC_ERROR
    assert conn.closed


def test_early_talker_allowed_by_default() -> None:
    conn = ServerConnection("mx.example.com")
    conn.receive_data(b"EHLO client.example\r\n")
    conn.accept()
    assert [type(e) for e in drain(conn)] == [Ehlo]


@pytest.mark.parametrize(
    ("hello", "options"),
    [
        pytest.param(b"", {}, id="before-hello"),
        pytest.param(b"HELO client.example\r\n", {}, id="after-helo"),
        pytest.param(
            b"EHLO client.example\r\n", {"enable_pipelining": False}, id="not-offered"
        ),
    ],
)
def test_unsynchronized_pipelining_rejected(
    hello: bytes, options: dict[str, Any]
) -> None:
    conn = new_connection(reject_unsynchronized=True, **options)
    if hello:
        _, out = feed(conn, hello)
        assert codes(out) == [250]
    events, out = feed(
        conn, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
    )
    assert events == [ConnectionClosed()]
    assert out == SYNC_ERROR
    assert conn.closed


def test_unsynchronized_ehlo_batch_rejected() -> None:
    conn = new_connection(reject_unsynchronized=True)
    events, out = feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert events == [ConnectionClosed()]
    assert out == SYNC_ERROR


def test_pipelining_allowed_after_ehlo() -> None:
    conn = new_connection(reject_unsynchronized=True)
    feed(conn, b"EHLO client.example\r\n")
    _, out = feed(
        conn,
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    )
    assert codes(out) == [250, 250, 354]
    assert not conn.closed


def test_one_command_at_a_time_allowed() -> None:
    conn = new_connection(reject_unsynchronized=True)
    for line in (
        b"HELO client.example\r\n",
        b"MAIL FROM:<a@example.org>\r\n",
        b"NOOP\r\n",
    ):
        _, out = feed(conn, line)
        assert codes(out) == [250]
    assert not conn.closed


# Envelope and session updates made by the application (hooks)


def test_hook_sets_mail_from() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    conn.receive_data(b"MAIL FROM:<a@example.org> SIZE=10\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.envelope.mail_from = "rewritten@example.org"
    conn.envelope.mail_options = ["SIZE=10", "X-HOOK"]
    conn.accept()
    assert conn.data_to_send() == b"250 2.1.0 OK\r\n"
    assert conn.envelope.mail_from == "rewritten@example.org"
    assert conn.envelope.mail_options == ["SIZE=10", "X-HOOK"]
    # The transaction is open: RCPT is accepted, MAIL is nested.
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\nMAIL FROM:<c@example.org>\r\n")
    assert codes(out) == [250, 503]


def test_hook_appends_recipient() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
    conn.receive_data(b"RCPT TO:<b@example.com>\r\n")
    event = conn.next_event()
    assert isinstance(event, RcptTo)
    conn.envelope.rcpt_tos.append(event.address.upper())
    conn.accept()
    assert conn.envelope.rcpt_tos == ["B@EXAMPLE.COM"]


def test_engine_sets_envelope_without_hook() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    feed(
        conn, b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@example.com>\r\n"
    )
    assert conn.envelope.mail_from == "a@example.org"
    assert conn.envelope.mail_options == ["BODY=8BITMIME"]
    assert conn.envelope.rcpt_tos == ["b@example.com"]


def test_envelope_extra_attributes_allowed() -> None:
    conn = new_connection()
    conn.session.greylisted = True  # type: ignore[attr-defined]
    conn.envelope.spam_score = 1.5  # type: ignore[attr-defined]
    assert conn.session.greylisted is True  # type: ignore[attr-defined]
    assert conn.envelope.spam_score == 1.5  # type: ignore[attr-defined]
