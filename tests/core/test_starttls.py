"""Tests of STARTTLS (RFC 3207): the handshake pause, plaintext injection and reset."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import codes, drain, feed, new_connection
from smtpproto import (
    PAUSED,
    Ehlo,
    Event,
    LocalProtocolError,
    MailFrom,
    ServerConnection,
    ServerState,
    StartTLS,
)

READY = b"220 2.0.0 Ready to start TLS\r\n"
INJECTED = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.com>\r\n"


def after_ehlo(**options: Any) -> ServerConnection:
    conn = new_connection(tls_available=True, **options)
    _, out = feed(conn, b"EHLO client.example\r\n")
    assert codes(out) == [250]
    return conn


def start_tls(conn: ServerConnection) -> list[Event]:
    """Send STARTTLS, accept it and finish the handshake; return the events."""
    events, out = feed(conn, b"STARTTLS\r\n")
    assert out == READY
    conn.tls_established()
    return list(events)


def ehlo_keywords(conn: ServerConnection) -> list[str]:
    events, _ = feed(conn, b"EHLO client.example\r\n")
    assert isinstance(events[0], Ehlo)
    return [line.split(" ")[0] for line in events[0].extensions]


# The STARTTLS exchange


def test_starttls_event_and_reply() -> None:
    conn = after_ehlo()
    events, out = feed(conn, b"STARTTLS\r\n")
    assert events == [StartTLS()]
    assert out == READY
    assert conn.state is ServerState.TLS_HANDSHAKE
    assert not conn.tls_active


def test_starttls_paused_during_handshake() -> None:
    conn = after_ehlo()
    feed(conn, b"STARTTLS\r\n")
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""


def test_starttls_receive_data_during_handshake() -> None:
    conn = after_ehlo()
    feed(conn, b"STARTTLS\r\n")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"EHLO client.example\r\n")


def test_starttls_established_state() -> None:
    conn = after_ehlo()
    conn.session.peer = ("192.0.2.7", 40000)
    conn.session.proxy_data = "proxy header"
    old_session = conn.session
    start_tls(conn)
    assert conn.tls_active
    assert conn.state is ServerState.COMMAND
    assert conn.session is not old_session
    assert conn.session.peer == ("192.0.2.7", 40000)
    assert conn.session.proxy_data == "proxy header"
    assert conn.session.host_name is None
    assert conn.session.extended_smtp is False
    assert conn.session.authenticated is None


def test_starttls_requires_ehlo_again() -> None:
    # RFC 3207, section 4.2: the server discards what it learned before TLS.
    conn = after_ehlo()
    start_tls(conn)
    events, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert events == []
    assert codes(out) == [503]
    _, out = feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [250, 250]


def test_starttls_discards_transaction() -> None:
    conn = after_ehlo()
    feed(conn, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    start_tls(conn)
    assert conn.envelope.mail_from is None
    assert conn.envelope.rcpt_tos == []
    feed(conn, b"EHLO client.example\r\n")
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\n")
    assert codes(out) == [503]


def test_starttls_rejected_by_application() -> None:
    conn = after_ehlo()
    conn.receive_data(b"STARTTLS\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), StartTLS)
    conn.send_reply(454, "TLS not available due to temporary reason")
    assert codes(conn.data_to_send()) == [454]
    assert conn.state is ServerState.COMMAND
    # Without a handshake, the engine reads the next line as a command.
    events = drain(conn)
    assert len(events) == 1
    assert not conn.tls_active


# Plaintext sent after STARTTLS (command injection)


def test_starttls_discards_pipelined_plaintext() -> None:
    conn = after_ehlo()
    events, out = feed(conn, b"STARTTLS\r\n" + INJECTED)
    assert events == [StartTLS()]
    assert out == READY
    conn.tls_established()
    events, out = feed(conn, b"EHLO client.example\r\n")
    assert [type(e) for e in events] == [Ehlo]
    assert codes(out) == [250]
    assert conn.envelope.mail_from is None


def test_starttls_discards_plaintext_any_split() -> None:
    wire = b"STARTTLS\r\n" + INJECTED
    for split in range(1, len(wire)):
        conn = after_ehlo()
        # Both reads arrive before the engine looks at the buffer.
        conn.receive_data(wire[:split])
        conn.receive_data(wire[split:])
        events = drain(conn)
        assert events == [StartTLS()], f"split at {split}"
        assert conn.data_to_send() == READY, f"split at {split}"
        conn.tls_established()
        events, out = feed(conn, b"EHLO client.example\r\n")
        assert [type(e) for e in events] == [Ehlo], f"split at {split}"
        assert codes(out) == [250], f"split at {split}"


def test_starttls_discards_plaintext_after_line_split() -> None:
    # The STARTTLS line arrives in two reads, and the injected commands come
    # in the second one.
    wire = b"STARTTLS\r\n" + INJECTED
    for split in range(1, len(b"STARTTLS\r\n")):
        conn = after_ehlo()
        events, out = feed(conn, wire[:split])
        assert events == []
        assert out == b""
        events, out = feed(conn, wire[split:])
        assert events == [StartTLS()], f"split at {split}"
        assert out == READY
        conn.tls_established()
        events, _ = feed(conn, b"EHLO client.example\r\n")
        assert not any(isinstance(e, MailFrom) for e in events), f"split at {split}"


# STARTTLS errors


def test_starttls_with_argument() -> None:
    conn = after_ehlo()
    events, out = feed(conn, b"STARTTLS now\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: STARTTLS\r\n"
    assert conn.state is ServerState.COMMAND


def test_starttls_not_offered() -> None:
    conn = new_connection()
    feed(conn, b"EHLO client.example\r\n")
    events, out = feed(conn, b"STARTTLS\r\n")
    assert events == []
    assert out == b"454 4.7.0 TLS not available\r\n"


def test_starttls_second_time() -> None:
    conn = after_ehlo()
    start_tls(conn)
    feed(conn, b"EHLO client.example\r\n")
    events, out = feed(conn, b"STARTTLS\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: TLS already active\r\n"


def test_starttls_on_implicit_tls() -> None:
    conn = after_ehlo(tls_active=True)
    events, out = feed(conn, b"STARTTLS\r\n")
    assert events == []
    assert codes(out) == [503]


def test_tls_established_without_starttls() -> None:
    conn = after_ehlo()
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    assert not conn.tls_active


def test_tls_established_before_reply() -> None:
    conn = after_ehlo()
    conn.receive_data(b"STARTTLS\r\n")
    assert isinstance(conn.next_event(), StartTLS)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


def test_tls_established_twice() -> None:
    conn = after_ehlo()
    start_tls(conn)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


# Advertised extensions


def test_starttls_not_advertised_after_tls() -> None:
    conn = after_ehlo()
    assert "STARTTLS" in conn.extensions
    start_tls(conn)
    assert "STARTTLS" not in ehlo_keywords(conn)


def test_auth_advertised_only_after_tls() -> None:
    conn = after_ehlo(auth_mechanisms=("PLAIN", "LOGIN"))
    assert not any(line.startswith("AUTH") for line in conn.extensions)
    start_tls(conn)
    feed(conn, b"EHLO client.example\r\n")
    assert "AUTH PLAIN LOGIN" in conn.extensions


def test_auth_advertised_without_tls_when_allowed() -> None:
    conn = after_ehlo(auth_mechanisms=("PLAIN",), auth_require_tls=False)
    assert "AUTH PLAIN" in conn.extensions


# require_starttls


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"MAIL FROM:<a@example.org>\r\n", id="mail"),
        pytest.param(b"RCPT TO:<a@example.org>\r\n", id="rcpt"),
        pytest.param(b"DATA\r\n", id="data"),
        pytest.param(b"VRFY a\r\n", id="vrfy"),
        pytest.param(b"HELP\r\n", id="help"),
        pytest.param(b"AUTH PLAIN\r\n", id="auth"),
        pytest.param(b"BDAT 0 LAST\r\n", id="bdat"),
    ],
)
def test_require_starttls_gate(line: bytes) -> None:
    conn = after_ehlo(require_starttls=True)
    events, out = feed(conn, line)
    assert events == []
    assert out == b"530 5.7.0 Must issue a STARTTLS command first\r\n"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"NOOP\r\n", id="noop"),
        pytest.param(b"RSET\r\n", id="rset"),
        pytest.param(b"EHLO client.example\r\n", id="ehlo"),
        pytest.param(b"HELO client.example\r\n", id="helo"),
        pytest.param(b"QUIT\r\n", id="quit"),
    ],
)
def test_require_starttls_allowed(line: bytes) -> None:
    conn = after_ehlo(require_starttls=True)
    events, out = feed(conn, line)
    assert len(events) >= 1
    assert codes(out)[0] in (221, 250)


def test_require_starttls_lifted_after_tls() -> None:
    conn = after_ehlo(require_starttls=True)
    start_tls(conn)
    _, out = feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [250, 250]


def test_require_starttls_implicit_tls() -> None:
    conn = after_ehlo(require_starttls=True, tls_active=True)
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [250]
