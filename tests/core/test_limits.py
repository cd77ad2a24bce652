"""Tests of the engine's configurable limits, each at its edge."""

from __future__ import annotations

import tracemalloc
from ipaddress import IPv4Address

import pytest

from helpers import codes, drain, feed, new_connection
from smtpproto import (
    ConnectionClosed,
    Ehlo,
    Noop,
    ProxyHeader,
    RcptTo,
    ServerConnection,
)

LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def noop_line(length: int) -> bytes:
    """Return a NOOP command line of exactly ``length`` octets, CRLF included."""
    return b"NOOP " + b"x" * (length - 7) + b"\r\n"


# Command line length


@pytest.mark.parametrize(
    ("options", "limit"),
    [
        pytest.param({}, 512 + 26, id="size"),
        pytest.param({"enable_smtputf8": True}, 512 + 26 + 10, id="utf8"),
        pytest.param({"auth_mechanisms": ("PLAIN",)}, 512 + 26 + 500, id="auth"),
        pytest.param({"enable_dsn": True}, 512 + 26 + 640, id="dsn"),
        pytest.param({"max_command_line": 2048}, 2048 + 26, id="custom"),
    ],
)
def test_command_line_limit_edge(options: dict[str, object], limit: int) -> None:
    conn = new_connection(**options)
    _, out = feed(conn, noop_line(limit))
    assert out == b"250 2.0.0 OK\r\n"
    _, out = feed(conn, noop_line(limit + 1))
    assert out == LINE_TOO_LONG


def test_command_line_limit_not_growing_per_ehlo() -> None:
    conn = new_connection(auth_mechanisms=("PLAIN",))
    for _ in range(5):
        feed(conn, b"EHLO client.example\r\n")
    _, out = feed(conn, noop_line(1039))
    assert out == LINE_TOO_LONG


def test_command_line_allowance_unlimited_size() -> None:
    # RFC 1870, section 3: SIZE lengthens the MAIL command line by 26 octets,
    # and SIZE is advertised (without a value) when the size is unlimited.
    conn = new_connection(max_message_size=None)
    assert "SIZE" in conn.extensions
    _, out = feed(conn, noop_line(538))
    assert out == b"250 2.0.0 OK\r\n"


def test_command_line_too_long_recovers() -> None:
    conn = new_connection()
    events, out = feed(conn, b"MAIL FROM:<" + b"a" * 1000 + b"@example.org>\r\n")
    assert events == []
    assert out == LINE_TOO_LONG
    events, out = feed(conn, b"EHLO client.example\r\n")
    assert [type(e) for e in events] == [Ehlo]
    assert codes(out) == [250]


def test_command_line_too_long_split() -> None:
    # The rest of the over-long line, in later reads, is skipped as well.
    conn = new_connection()
    _, out = feed(conn, b"NOOP " + b"x" * 600)
    assert out == LINE_TOO_LONG
    events, out = feed(conn, b"y" * 300)
    assert events == []
    assert out == b""
    events, out = feed(conn, b"z\r\nNOOP\r\n")
    assert [type(e) for e in events] == [Noop]
    assert out == b"250 2.0.0 OK\r\n"


def test_endless_line_bounded() -> None:
    conn = new_connection(max_errors=None)
    piece = b"x" * 65536
    replies = []
    tracemalloc.start()
    try:
        for _ in range(200):
            conn.receive_data(piece)
            drain(conn)
            replies.append(conn.data_to_send())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 12.5 MiB went in; the engine keeps no more than a read or two of it.
    assert peak < 4 * len(piece)
    assert replies[0] == LINE_TOO_LONG
    assert replies[1:] == [b""] * 199
    events, out = feed(conn, b"\r\nNOOP\r\n")
    assert [type(e) for e in events] == [Noop]
    assert out == b"250 2.0.0 OK\r\n"


def test_command_line_limit_minimum() -> None:
    with pytest.raises(ValueError, match="512"):
        ServerConnection("mx.example.com", max_command_line=511)


# Recipients


def test_max_recipients_edge() -> None:
    conn = new_connection(max_recipients=3)
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    events, out = feed(
        conn, b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(3))
    )
    assert [type(e) for e in events] == [RcptTo] * 3
    assert codes(out) == [250] * 3
    events, out = feed(conn, b"RCPT TO:<r3@example.com>\r\n")
    assert events == []
    assert out == b"452 4.5.3 Error: too many recipients\r\n"
    assert len(conn.envelope.rcpt_tos) == 3


def test_max_recipients_counts_accepted_only() -> None:
    conn = new_connection(max_recipients=2)
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")

    def respond(conn: ServerConnection, event: object) -> None:
        if isinstance(event, RcptTo) and event.address.startswith("bad"):
            conn.send_reply(550, "No")
        else:
            conn.accept()

    _, out = feed(
        conn,
        b"RCPT TO:<bad1@example.com>\r\nRCPT TO:<bad2@example.com>\r\n"
        b"RCPT TO:<one@example.com>\r\nRCPT TO:<two@example.com>\r\n"
        b"RCPT TO:<three@example.com>\r\n",
        respond,
    )
    assert codes(out) == [550, 550, 250, 250, 452]


def test_max_recipients_per_transaction() -> None:
    conn = new_connection(max_recipients=1)
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    feed(conn, b"RCPT TO:<one@example.com>\r\nRSET\r\nMAIL FROM:<a@example.org>\r\n")
    _, out = feed(conn, b"RCPT TO:<two@example.com>\r\n")
    assert codes(out) == [250]


def test_max_recipients_none() -> None:
    conn = new_connection(max_recipients=None)
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    _, out = feed(conn, b"RCPT TO:<r@example.com>\r\n" * 1500)
    assert codes(out) == [250] * 1500


def test_max_recipients_not_an_error() -> None:
    # 452 is a transient refusal, so it does not count against max_errors.
    conn = new_connection(max_recipients=0, max_errors=1)
    feed(conn, b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    _, out = feed(conn, b"RCPT TO:<r@example.com>\r\n" * 5)
    assert codes(out) == [452] * 5
    assert not conn.closed


# Errors


def test_max_errors_edge() -> None:
    conn = new_connection(max_errors=3)
    events, out = feed(conn, b"FOO\r\nBAR\r\nBAZ\r\n")
    assert codes(out) == [500, 500, 500]
    assert not conn.closed
    events, out = feed(conn, b"QUX\r\nNOOP\r\n")
    assert out == b'500 5.5.1 Error: command "QUX" not recognized\r\n' + TOO_MANY_ERRORS
    assert conn.closed
    assert isinstance(events[-1], ConnectionClosed)
    assert not any(isinstance(e, Noop) for e in events)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"FROB\r\n", id="unknown-500"),
        pytest.param(b"HELO\r\n", id="syntax-501"),
        pytest.param(b"EXPN x\r\n", id="not-implemented-502"),
        pytest.param(b"RCPT TO:<a@example.com>\r\n", id="sequence-503"),
        pytest.param(b"\x01\r\n", id="control-500"),
        pytest.param(b"\r\n", id="empty-500"),
        pytest.param(noop_line(600), id="too-long-500"),
    ],
)
def test_max_errors_counts(line: bytes) -> None:
    conn = new_connection(max_errors=2)
    _, out = feed(conn, line * 2)
    assert not conn.closed
    _, out = feed(conn, line)
    assert out.endswith(TOO_MANY_ERRORS)
    assert conn.closed


@pytest.mark.parametrize(
    ("setup", "line"),
    [
        pytest.param(b"", b"STARTTLS\r\n", id="tls-unavailable-454"),
        pytest.param(
            b"EHLO c.example\r\n",
            b"MAIL FROM:<a@example.org> SIZE=99999999999\r\n",
            id="552",
        ),
        pytest.param(b"EHLO c.example\r\n", b"MAIL FROM:<bad address>\r\n", id="553"),
    ],
)
def test_max_errors_ignores_other_codes(setup: bytes, line: bytes) -> None:
    conn = new_connection(max_errors=1)
    if setup:
        feed(conn, setup)
    _, out = feed(conn, line * 5)
    assert len(codes(out)) == 5
    assert not conn.closed


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        pytest.param(b"HELP FROB\r\n", None, id="help-default-504"),
        pytest.param(b"VRFY x\r\n", 502, id="vrfy-502"),
        pytest.param(b"NOOP x\r\n", 501, id="noop-501"),
    ],
)
def test_max_errors_counts_event_replies(line: bytes, reply: int | None) -> None:
    # max_errors counts client errors, which are replies 500 to 504, whoever
    # sends them.
    conn = new_connection(max_errors=2)

    def respond(conn: ServerConnection, event: object) -> None:
        if reply is None:
            conn.accept()
        else:
            conn.send_reply(reply, "Error")

    feed(conn, line * 2, respond)
    assert not conn.closed
    _, out = feed(conn, line, respond)
    assert out.endswith(TOO_MANY_ERRORS)
    assert conn.closed


def test_max_errors_application_reply_counts() -> None:
    conn = new_connection(max_errors=1)
    conn.receive_data(b"FROB\r\nFROB\r\n")
    drain(conn, lambda c, e: c.send_reply(502, "Not here"))
    out = conn.data_to_send()
    assert out.endswith(TOO_MANY_ERRORS)
    assert conn.closed


def test_max_errors_none() -> None:
    conn = new_connection(max_errors=None)
    _, out = feed(conn, b"FROB\r\n" * 100)
    assert codes(out) == [500] * 100
    assert not conn.closed


# Message lines and size


def test_max_text_line_edge() -> None:
    prefix = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    conn = new_connection(max_text_line=1500)
    _, out = feed(conn, prefix + b"x" * 1498 + b"\r\n.\r\n")
    assert codes(out)[-1] == 250
    conn = new_connection(max_text_line=1500)
    _, out = feed(conn, prefix + b"x" * 1500 + b"\r\n.\r\n")
    assert codes(out)[-1] == 500


def test_max_text_line_minimum() -> None:
    with pytest.raises(ValueError, match="1000"):
        ServerConnection("mx.example.com", max_text_line=999)


def test_max_message_size_edge() -> None:
    prefix = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    conn = new_connection(max_message_size=1000)
    _, out = feed(conn, prefix + b"x" * 998 + b"\r\n.\r\n")
    assert codes(out)[-1] == 250
    conn = new_connection(max_message_size=1000)
    _, out = feed(conn, prefix + b"x" * 999 + b"\r\n.\r\n")
    assert codes(out)[-1] == 552


# SASL response


def test_max_sasl_response_edge() -> None:
    conn = new_connection(
        auth_mechanisms=("PLAIN",), tls_active=True, max_sasl_response=16384
    )
    feed(conn, b"EHLO c.example\r\nAUTH PLAIN\r\n")
    _, out = feed(conn, b"A" * 16382 + b"\r\n")
    assert codes(out) == [501]
    feed(conn, b"AUTH PLAIN\r\n")
    _, out = feed(conn, b"A" * 16383 + b"\r\n")
    assert out == b"500 5.5.6 Authentication exchange line is too long\r\n"


# PROXY header


def v2_header(total: int) -> bytes:
    """Return a valid PROXY v2 header of exactly ``total`` octets (padded with a TLV)."""
    addresses = (
        IPv4Address("192.0.2.1").packed
        + IPv4Address("198.51.100.2").packed
        + (40000).to_bytes(2, "big")
        + (25).to_bytes(2, "big")
    )
    padding = total - 16 - len(addresses) - 3
    assert padding >= 0
    tlv = bytes([0x04]) + padding.to_bytes(2, "big") + b"\x00" * padding
    block = addresses + tlv
    return V2_SIGNATURE + bytes([0x21, 0x11]) + len(block).to_bytes(2, "big") + block


def test_proxy_header_at_limit() -> None:
    conn = ServerConnection("mx.example.com", proxy_protocol=True, max_proxy_header=300)
    conn.receive_data(v2_header(300))
    event = conn.next_event()
    assert isinstance(event, ProxyHeader)
    assert event.source_address == "192.0.2.1"


def test_proxy_header_over_limit() -> None:
    conn = ServerConnection("mx.example.com", proxy_protocol=True, max_proxy_header=300)
    conn.receive_data(v2_header(301))
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.closed
    assert conn.data_to_send() == b""


def test_proxy_header_over_limit_rejected_early() -> None:
    # The announced length is enough: the engine does not wait for the block.
    conn = ServerConnection("mx.example.com", proxy_protocol=True, max_proxy_header=300)
    conn.receive_data(v2_header(5000)[:16])
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_proxy_v1_without_line_end() -> None:
    conn = ServerConnection("mx.example.com", proxy_protocol=True)
    conn.receive_data(b"PROXY TCP4 " + b"1" * 200)
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.data_to_send() == b""


# Options


def test_bare_line_ending_invalid_option() -> None:
    with pytest.raises(ValueError, match="bare_line_ending"):
        ServerConnection("mx.example.com", bare_line_ending="strip")  # type: ignore[arg-type]
