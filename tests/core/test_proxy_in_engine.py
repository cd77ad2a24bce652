"""Tests of the PROXY protocol header as the engine reads it before the greeting."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest

from helpers import codes, drain, feed, feed_pieces
from smtpproto import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Ehlo,
    LocalProtocolError,
    ProxyHeader,
    ServerConnection,
)

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_tcp6() -> bytes:
    block = (
        IPv6Address("2001:db8::1").packed
        + IPv6Address("2001:db8::2").packed
        + (40000).to_bytes(2, "big")
        + (587).to_bytes(2, "big")
    )
    return V2_SIGNATURE + bytes([0x21, 0x21]) + len(block).to_bytes(2, "big") + block


def proxied() -> ServerConnection:
    return ServerConnection("mx.example.com", proxy_protocol=True)


def test_proxy_waits_for_header() -> None:
    conn = proxied()
    assert conn.next_event() is NEED_DATA
    assert conn.awaiting_greeting
    assert conn.data_to_send() == b""


def test_proxy_header_event_before_greeting() -> None:
    conn = proxied()
    conn.receive_data(V1)
    event = conn.next_event()
    assert event == ProxyHeader(
        version=1,
        command="PROXY",
        family="INET",
        protocol="STREAM",
        source_address="192.0.2.1",
        source_port=40000,
        destination_address="198.51.100.2",
        destination_port=25,
        raw=V1,
    )
    assert conn.pending is event
    assert conn.session.proxy_data is event
    # Nothing is sent until the application greets.
    assert conn.data_to_send() == b""
    assert conn.next_event() is PAUSED


def test_proxy_accept_sends_greeting() -> None:
    conn = proxied()
    conn.receive_data(V1)
    conn.next_event()
    conn.accept()
    assert conn.data_to_send() == b"220 mx.example.com ESMTP\r\n"
    assert not conn.awaiting_greeting
    assert conn.next_event() is NEED_DATA


def test_proxy_custom_greeting() -> None:
    conn = proxied()
    conn.receive_data(V1)
    conn.next_event()
    conn.send_reply(220, "mx.example.com ready")
    assert conn.data_to_send() == b"220 mx.example.com ready\r\n"


def test_proxy_refused_greeting_refuses_commands() -> None:
    conn = proxied()
    conn.receive_data(V1)
    conn.next_event()
    conn.send_reply(554, "Your address is blocked")
    assert conn.data_to_send() == b"554 Your address is blocked\r\n"
    _, out = feed(conn, b"HELO client.example\r\n")
    assert codes(out) == [503]


def test_proxy_wrong_reply_code() -> None:
    conn = proxied()
    conn.receive_data(V1)
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send_reply(250, "hello")


def test_proxy_header_and_ehlo_in_one_piece() -> None:
    conn = proxied()
    conn.receive_data(V1 + b"EHLO client.example\r\n")
    assert isinstance(conn.next_event(), ProxyHeader)
    conn.accept()
    events = drain(conn)
    assert [type(e) for e in events] == [Ehlo]
    assert codes(conn.data_to_send()) == [220, 250]


def test_proxy_header_byte_by_byte() -> None:
    conn = proxied()
    events: list[object] = []
    for octet in V1:
        conn.receive_data(bytes([octet]))
        event = conn.next_event()
        if event is not NEED_DATA:
            events.append(event)
            break
    assert len(events) == 1
    assert isinstance(events[0], ProxyHeader)


def test_proxy_v2_header() -> None:
    conn = proxied()
    conn.receive_data(v2_tcp6() + b"EHLO client.example\r\n")
    event = conn.next_event()
    assert isinstance(event, ProxyHeader)
    assert event.version == 2
    assert event.source_address == "2001:db8::1"
    assert event.destination_port == 587
    conn.accept()
    assert [type(e) for e in drain(conn)] == [Ehlo]


def test_proxy_unknown_header() -> None:
    conn = proxied()
    conn.receive_data(b"PROXY UNKNOWN\r\n")
    event = conn.next_event()
    assert isinstance(event, ProxyHeader)
    assert event.source_address is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"EHLO client.example\r\n", id="smtp-instead"),
        pytest.param(b"PROXY TCP4 300.0.0.1 198.51.100.2 1 25\r\n", id="bad-address"),
        pytest.param(b"PROXY TCP9 192.0.2.1 198.51.100.2 1 25\r\n", id="bad-family"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(
            V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12, id="v2-version"
        ),
    ],
)
def test_proxy_invalid_header_closes(data: bytes) -> None:
    conn = proxied()
    conn.receive_data(data)
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.closed
    assert conn.data_to_send() == b""
    assert conn.session.proxy_data is None


def test_proxy_invalid_header_split() -> None:
    # The engine rejects the header as soon as a byte makes it invalid.
    conn = proxied()
    events, out = feed_pieces(conn, [b"PRO", b"XY TCP4 x"])
    assert isinstance(events[-1], ConnectionClosed)
    assert out == b""


def test_proxy_peer_closes_before_header() -> None:
    conn = proxied()
    conn.receive_data(b"PROXY TCP4 192.0.2.1")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.data_to_send() == b""


def test_proxy_data_kept_after_starttls() -> None:
    conn = ServerConnection("mx.example.com", proxy_protocol=True, tls_available=True)
    conn.receive_data(V1)
    header = conn.next_event()
    conn.accept()
    conn.receive_data(b"EHLO client.example\r\nSTARTTLS\r\n")
    drain(conn)
    conn.tls_established()
    assert conn.session.proxy_data is header


def test_proxy_off_header_is_command() -> None:
    conn = ServerConnection("mx.example.com")
    conn.accept()
    conn.data_to_send()
    conn.receive_data(V1)
    event = conn.next_event()
    assert not isinstance(event, ProxyHeader)


def test_proxy_early_talker_rejected() -> None:
    # reject_unsynchronized: a client that talks before the greeting gets
    # 554 5.5.0. Behind a proxy that is a command arriving after the header
    # and before the application greets.
    conn = ServerConnection(
        "mx.example.com", proxy_protocol=True, reject_unsynchronized=True
    )
    conn.receive_data(V1)
    assert isinstance(conn.next_event(), ProxyHeader)
    conn.receive_data(b"EHLO client.example\r\n")
    conn.accept()
    events = drain(conn)
    out = conn.data_to_send()
    assert codes(out) == [220, 554]
    assert isinstance(events[-1], ConnectionClosed)
