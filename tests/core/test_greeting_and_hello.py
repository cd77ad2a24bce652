"""Tests of the greeting and of HELO/EHLO: replies, extensions and session state."""

from __future__ import annotations

import pytest

from helpers import codes, drain, feed, new_connection
from smtpproto import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Ehlo,
    Helo,
    LocalProtocolError,
    MailFrom,
    ServerConnection,
)

DEFAULT_EXTENSIONS = (
    "SIZE 33554432",
    "8BITMIME",
    "PIPELINING",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "HELP",
)


def ehlo_keywords(conn: ServerConnection) -> list[str]:
    """Send EHLO and return the keyword lines of the reply (first line excluded)."""
    _, out = feed(conn, b"EHLO client.example\r\n")
    lines = out.decode().split("\r\n")[:-1]
    return [line[4:] for line in lines[1:]]


# Greeting


def test_greeting_paused_until_application_greets() -> None:
    conn = ServerConnection("mx.example.com")
    assert conn.awaiting_greeting
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""


def test_greeting_accept_default() -> None:
    conn = ServerConnection("mx.example.com")
    conn.accept()
    assert conn.data_to_send() == b"220 mx.example.com ESMTP\r\n"
    assert not conn.awaiting_greeting
    assert not conn.closed
    assert conn.next_event() is NEED_DATA


def test_greeting_lmtp_default() -> None:
    conn = ServerConnection("lmtp.example.com", lmtp=True)
    conn.accept()
    assert conn.data_to_send() == b"220 lmtp.example.com LMTP\r\n"


def test_greeting_custom_multiline() -> None:
    conn = ServerConnection("mx.example.com")
    conn.send_reply(220, ["mx.example.com ESMTP ready", "no UCE"])
    assert conn.data_to_send() == (b"220-mx.example.com ESMTP ready\r\n220 no UCE\r\n")


def test_greeting_has_no_enhanced_code() -> None:
    conn = ServerConnection("mx.example.com", enable_enhanced_status_codes=True)
    conn.send_reply(220, "mx.example.com ESMTP")
    assert conn.data_to_send() == b"220 mx.example.com ESMTP\r\n"


def test_greeting_554_waits_for_quit() -> None:
    conn = ServerConnection("mx.example.com")
    conn.send_reply(554, "No service for you")
    assert conn.data_to_send() == b"554 No service for you\r\n"
    assert not conn.closed
    events, out = feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
    assert events == []
    assert codes(out) == [503, 503]
    events, out = feed(conn, b"QUIT\r\n")
    assert codes(out) == [221]
    assert conn.closed


def test_greeting_421_closes() -> None:
    conn = ServerConnection("mx.example.com")
    conn.send_reply(421, "Too busy")
    assert codes(conn.data_to_send()) == [421]
    assert conn.closed


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(250, id="250"),
        pytest.param(354, id="354"),
        pytest.param(221, id="221"),
    ],
)
def test_greeting_wrong_code_raises(code: int) -> None:
    conn = ServerConnection("mx.example.com")
    with pytest.raises(LocalProtocolError):
        conn.send_reply(code, "hello")
    assert conn.awaiting_greeting


def test_greeting_early_bytes_kept() -> None:
    # Without reject_unsynchronized an early talker is served after the greeting.
    conn = ServerConnection("mx.example.com")
    conn.receive_data(b"EHLO client.example\r\n")
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.accept()
    events = drain(conn)
    assert [type(e) for e in events] == [Ehlo]
    assert codes(conn.data_to_send()) == [220, 250]


def test_greeting_peer_closes_before() -> None:
    conn = ServerConnection("mx.example.com")
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.closed


# EHLO


def test_ehlo_event_and_reply() -> None:
    conn = new_connection()
    events, out = feed(conn, b"EHLO client.example\r\n")
    assert events == [Ehlo(hostname="client.example", extensions=DEFAULT_EXTENSIONS)]
    assert out == (
        b"250-mx.example.com\r\n"
        b"250-SIZE 33554432\r\n"
        b"250-8BITMIME\r\n"
        b"250-PIPELINING\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-CHUNKING\r\n"
        b"250 HELP\r\n"
    )


def test_ehlo_sets_session() -> None:
    conn = new_connection()
    feed(conn, b"EHLO client.example\r\n")
    assert conn.session.host_name == "client.example"
    assert conn.session.extended_smtp is True


def test_ehlo_verb_case_insensitive() -> None:
    conn = new_connection()
    events, out = feed(conn, b"eHlO client.example\r\n")
    assert [type(e) for e in events] == [Ehlo]
    assert codes(out) == [250]


@pytest.mark.parametrize(
    ("options", "present", "absent"),
    [
        pytest.param({"max_message_size": None}, ["SIZE"], [], id="size-unlimited"),
        pytest.param({"max_message_size": 1000}, ["SIZE 1000"], [], id="size-value"),
        pytest.param({"enable_8bitmime": False}, [], ["8BITMIME"], id="no-8bitmime"),
        pytest.param({"enable_smtputf8": True}, ["SMTPUTF8"], [], id="smtputf8"),
        pytest.param(
            {"enable_pipelining": False}, [], ["PIPELINING"], id="no-pipelining"
        ),
        pytest.param(
            {"enable_enhanced_status_codes": False},
            [],
            ["ENHANCEDSTATUSCODES"],
            id="no-esc",
        ),
        pytest.param({"enable_chunking": False}, [], ["CHUNKING"], id="no-chunking"),
        pytest.param({"enable_dsn": True}, ["DSN"], [], id="dsn"),
        pytest.param({"enable_help": False}, [], ["HELP"], id="no-help"),
        pytest.param({"tls_available": True}, ["STARTTLS"], [], id="starttls"),
        pytest.param(
            {"tls_available": True, "tls_active": True},
            [],
            ["STARTTLS"],
            id="implicit-tls-no-starttls",
        ),
        pytest.param(
            {"auth_mechanisms": ("PLAIN", "LOGIN"), "auth_require_tls": False},
            ["AUTH PLAIN LOGIN"],
            [],
            id="auth",
        ),
        pytest.param(
            {"auth_mechanisms": ("plain",), "tls_active": True},
            ["AUTH PLAIN"],
            [],
            id="auth-upper-cased",
        ),
        pytest.param(
            {"auth_mechanisms": ("PLAIN",)}, [], ["AUTH"], id="auth-needs-tls"
        ),
    ],
)
def test_ehlo_extensions(
    options: dict[str, object], present: list[str], absent: list[str]
) -> None:
    conn = new_connection(**options)
    keywords = ehlo_keywords(conn)
    for line in present:
        assert line in keywords
    for keyword in absent:
        assert not any(k.split(" ")[0] == keyword for k in keywords)


def test_ehlo_event_extensions_match_reply() -> None:
    conn = new_connection(enable_dsn=True, tls_available=True)
    conn.receive_data(b"EHLO client.example\r\n")
    event = conn.next_event()
    assert isinstance(event, Ehlo)
    assert event.extensions == conn.extensions
    conn.accept()
    lines = conn.data_to_send().decode().split("\r\n")[1:-1]
    assert tuple(line[4:] for line in lines) == event.extensions


def test_ehlo_custom_reply() -> None:
    conn = new_connection()
    conn.receive_data(b"EHLO client.example\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    conn.send_reply(250, ["mx.example.com greets you", "8BITMIME"])
    assert conn.data_to_send() == (b"250-mx.example.com greets you\r\n250 8BITMIME\r\n")
    assert conn.session.extended_smtp


def test_ehlo_rejected_keeps_session() -> None:
    conn = new_connection()
    conn.receive_data(b"EHLO client.example\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    conn.send_reply(550, "Not you")
    assert codes(conn.data_to_send()) == [550]
    assert conn.session.host_name is None
    assert conn.session.extended_smtp is False
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [503]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        pytest.param(b"EHLO\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n", id="missing"),
        pytest.param(b"EHLO  \r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n", id="blank"),
        pytest.param(
            b"EHLO a.example b\r\n", b"501 5.5.4 Invalid domain name\r\n", id="two"
        ),
        pytest.param(
            b"EHLO [192.0.2.300]\r\n",
            b"501 5.5.4 Invalid domain name\r\n",
            id="bad-ipv4-literal",
        ),
        pytest.param(
            b"EHLO [IPv6:1::2::3]\r\n",
            b"501 5.5.4 Invalid domain name\r\n",
            id="bad-ipv6-literal",
        ),
        pytest.param(
            b"EHLO [192.0.2.1\r\n",
            b"501 5.5.4 Invalid domain name\r\n",
            id="unclosed-literal",
        ),
    ],
)
def test_ehlo_invalid_argument(line: bytes, reply: bytes) -> None:
    conn = new_connection()
    events, out = feed(conn, line)
    assert events == []
    assert out == reply
    assert conn.session.host_name is None


@pytest.mark.parametrize(
    "hostname",
    [
        pytest.param("client.example", id="domain"),
        pytest.param("localhost", id="bare-name"),
        pytest.param("bad_name.example", id="underscore"),
        pytest.param("[192.0.2.1]", id="ipv4-literal"),
        pytest.param("[IPv6:2001:db8::1]", id="ipv6-literal"),
        pytest.param("[ipv6:2001:db8::1]", id="ipv6-tag-lower"),
    ],
)
def test_ehlo_valid_argument(hostname: str) -> None:
    conn = new_connection()
    events, out = feed(conn, b"EHLO " + hostname.encode() + b"\r\n")
    assert [type(e) for e in events] == [Ehlo]
    assert codes(out) == [250]
    assert conn.session.host_name == hostname


def test_ehlo_again_resets_transaction() -> None:
    conn = new_connection()
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    old_envelope = conn.envelope
    assert old_envelope.mail_from == "a@example.org"
    _, out = feed(conn, b"EHLO other.example\r\n")
    assert codes(out) == [250]
    assert conn.envelope is not old_envelope
    assert conn.envelope.mail_from is None
    assert conn.session.host_name == "other.example"
    events, out = feed(conn, b"MAIL FROM:<b@example.org>\r\n")
    assert [type(e) for e in events] == [MailFrom]
    assert codes(out) == [250]


def test_ehlo_rejected_keeps_transaction() -> None:
    # Only a 2xx reply to EHLO starts a new transaction.
    conn = new_connection()
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    conn.receive_data(b"EHLO other.example\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    conn.send_reply(550, "No")
    conn.data_to_send()
    assert conn.envelope.mail_from == "a@example.org"
    assert conn.session.host_name == "client.example"


def test_ehlo_host_name_set_by_application() -> None:
    conn = new_connection()
    conn.receive_data(b"EHLO client.example\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    conn.session.host_name = "chosen.example"
    conn.accept()
    assert conn.session.host_name == "chosen.example"


# HELO


def test_helo_event_and_reply() -> None:
    conn = new_connection()
    events, out = feed(conn, b"HELO client.example\r\n")
    assert events == [Helo(hostname="client.example")]
    assert out == b"250 mx.example.com\r\n"
    assert conn.session.host_name == "client.example"
    assert conn.session.extended_smtp is False


def test_helo_missing_argument() -> None:
    conn = new_connection()
    events, out = feed(conn, b"HELO\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: HELO hostname\r\n"


def test_helo_after_ehlo_clears_extended() -> None:
    conn = new_connection()
    feed(conn, b"EHLO client.example\r\n")
    feed(conn, b"HELO client.example\r\n")
    assert conn.session.extended_smtp is False


def test_helo_resets_transaction() -> None:
    conn = new_connection()
    feed(conn, b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert conn.envelope.mail_from == "a@example.org"
    feed(conn, b"HELO client.example\r\n")
    assert conn.envelope.mail_from is None


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b"MAIL FROM:<a@example.org>\r\n", id="mail"),
        pytest.param(b"RCPT TO:<a@example.org>\r\n", id="rcpt"),
        pytest.param(b"DATA\r\n", id="data"),
    ],
)
def test_transaction_before_hello(command: bytes) -> None:
    conn = new_connection()
    events, out = feed(conn, command)
    assert events == []
    assert codes(out) == [503]


def test_mail_before_hello_text() -> None:
    conn = new_connection()
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert out == b"503 5.5.1 Error: send HELO first\r\n"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(b"NOOP\r\n", id="noop"),
        pytest.param(b"RSET\r\n", id="rset"),
        pytest.param(b"VRFY postmaster\r\n", id="vrfy"),
        pytest.param(b"HELP\r\n", id="help"),
        pytest.param(b"QUIT\r\n", id="quit"),
    ],
)
def test_commands_allowed_before_hello(command: bytes) -> None:
    conn = new_connection()
    events, out = feed(conn, command)
    assert events
    assert codes(out)[0] in (214, 221, 250, 252)


# HELP, NOOP, VRFY, EXPN defaults


def test_help_lists_commands() -> None:
    conn = new_connection()
    _, out = feed(conn, b"HELP\r\n")
    assert out.startswith(b"214 2.0.0 Supported commands: ")
    verbs = out.decode().split(": ", 1)[1].split()
    assert "EHLO" in verbs
    assert "BDAT" in verbs
    assert "EXPN" not in verbs


def test_help_topic() -> None:
    conn = new_connection()
    _, out = feed(conn, b"HELP mail\r\n")
    assert out == b"214 2.0.0 Syntax: MAIL FROM:<address> [SP <mail-parameters>]\r\n"


def test_help_unknown_topic() -> None:
    conn = new_connection()
    _, out = feed(conn, b"HELP FROB\r\n")
    assert out == b"504 5.5.1 HELP topic not recognized\r\n"


def test_noop_with_argument() -> None:
    conn = new_connection()
    events, out = feed(conn, b"NOOP anything at all\r\n")
    assert len(events) == 1
    assert events[0].argument == "anything at all"  # type: ignore[attr-defined]
    assert out == b"250 2.0.0 OK\r\n"


def test_vrfy_default_252() -> None:
    conn = new_connection()
    _, out = feed(conn, b"VRFY someone\r\n")
    assert codes(out) == [252]


def test_vrfy_missing_argument() -> None:
    conn = new_connection()
    events, out = feed(conn, b"VRFY\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: VRFY <address>\r\n"


def test_expn_not_implemented() -> None:
    conn = new_connection()
    events, out = feed(conn, b"EXPN list\r\n")
    assert events == []
    assert out == b"502 5.5.1 EXPN not implemented\r\n"
