"""Tests of LMTP mode (RFC 2033): LHLO and one reply per recipient after the message."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import Responder, codes, feed, new_connection
from smtpproto import (
    DataComplete,
    DataRejected,
    Ehlo,
    Event,
    LocalProtocolError,
    Noop,
    RcptTo,
    ServerConnection,
    UnknownCommand,
)


def rejecting(*addresses: str) -> Responder:
    """Return a responder that rejects RCPT for ``addresses`` and accepts the rest."""

    def respond(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, RcptTo) and event.address in addresses:
            conn.send_reply(550, "No such mailbox")
        else:
            conn.accept()

    return respond


def with_recipients(
    *recipients: str, respond: Responder | None = None, **options: Any
) -> ServerConnection:
    """Return an LMTP connection after LHLO, MAIL and RCPT for ``recipients``."""
    conn = new_connection(lmtp=True, **options)
    wire = b"LHLO client.example\r\nMAIL FROM:<sender@example.org>\r\n"
    wire += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients)
    if respond is None:
        feed(conn, wire)
    else:
        feed(conn, wire, respond)
    return conn


# LHLO


def test_lhlo_event_and_reply() -> None:
    conn = new_connection(lmtp=True)
    events, out = feed(conn, b"LHLO client.example\r\n")
    assert len(events) == 1
    assert isinstance(events[0], Ehlo)
    assert events[0].hostname == "client.example"
    assert out.startswith(b"250-mx.example.com\r\n")
    assert conn.session.extended_smtp is True
    assert conn.session.host_name == "client.example"


def test_lhlo_missing_argument() -> None:
    conn = new_connection(lmtp=True)
    events, out = feed(conn, b"LHLO\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: LHLO hostname\r\n"


@pytest.mark.parametrize(
    "verb",
    [pytest.param(b"HELO", id="helo"), pytest.param(b"EHLO", id="ehlo")],
)
def test_smtp_hello_unknown_in_lmtp(verb: bytes) -> None:
    conn = new_connection(lmtp=True)
    events, out = feed(conn, verb + b" client.example\r\n")
    assert events == [UnknownCommand(verb=verb.decode(), argument="client.example")]
    assert codes(out) == [500]
    assert conn.session.host_name is None


def test_lhlo_unknown_in_smtp() -> None:
    conn = new_connection()
    events, out = feed(conn, b"LHLO client.example\r\n")
    assert events == [UnknownCommand(verb="LHLO", argument="client.example")]
    assert codes(out) == [500]


def test_lmtp_help_lists_lhlo() -> None:
    conn = new_connection(lmtp=True)
    _, out = feed(conn, b"HELP\r\n")
    verbs = out.decode().split(": ", 1)[1].split()
    assert "LHLO" in verbs
    assert "HELO" not in verbs
    assert "EHLO" not in verbs


# Replies after the message


def test_one_reply_per_recipient() -> None:
    conn = with_recipients("one@example.com", "two@example.com", "three@example.com")
    events, out = feed(conn, b"DATA\r\nHello\r\n.\r\n")
    assert [e for e in events if isinstance(e, DataComplete)] == [DataComplete(size=7)]
    assert out == (
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.1.5 <one@example.com> OK\r\n"
        b"250 2.1.5 <two@example.com> OK\r\n"
        b"250 2.1.5 <three@example.com> OK\r\n"
    )


def test_rejected_recipients_get_no_reply() -> None:
    respond = rejecting("two@example.com")
    conn = with_recipients(
        "one@example.com", "two@example.com", "three@example.com", respond=respond
    )
    _, out = feed(conn, b"DATA\r\nHello\r\n.\r\n")
    assert out == (
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.1.5 <one@example.com> OK\r\n"
        b"250 2.1.5 <three@example.com> OK\r\n"
    )


def test_syntax_rejected_recipient_gets_no_reply() -> None:
    conn = with_recipients("one@example.com", "bad address", "two@example.com")
    _, out = feed(conn, b"DATA\r\nx\r\n.\r\n")
    assert codes(out) == [354, 250, 250]


def test_replies_one_by_one() -> None:
    conn = with_recipients("one@example.com", "two@example.com", "three@example.com")
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"Hi\r\n.\r\nNOOP\r\n")
    conn.next_event()  # DataChunk
    event = conn.next_event()
    assert isinstance(event, DataComplete)
    conn.send_reply(250, "delivered to one")
    assert conn.pending is event
    conn.send_reply(452, "mailbox of two is full")
    assert conn.pending is event
    # The next command waits until every recipient has its reply.
    assert not isinstance(conn.next_event(), Noop)
    conn.send_reply(550, "three is gone")
    assert conn.pending is None
    assert conn.data_to_send() == (
        b"250 2.0.0 delivered to one\r\n"
        b"452 4.0.0 mailbox of two is full\r\n"
        b"550 5.0.0 three is gone\r\n"
    )
    assert isinstance(conn.next_event(), Noop)


def test_accept_sends_remaining_replies() -> None:
    conn = with_recipients("one@example.com", "two@example.com", "three@example.com")
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"Hi\r\n.\r\n")
    conn.next_event()
    assert isinstance(conn.next_event(), DataComplete)
    conn.send_reply(451, "one later")
    conn.accept()
    assert conn.pending is None
    assert conn.data_to_send() == (
        b"451 4.0.0 one later\r\n"
        b"250 2.1.5 <two@example.com> OK\r\n"
        b"250 2.1.5 <three@example.com> OK\r\n"
    )


def test_extra_reply_raises() -> None:
    conn = with_recipients("one@example.com")
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    conn.accept()
    conn.receive_data(b"Hi\r\n.\r\n")
    conn.next_event()
    conn.next_event()
    conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.send_reply(250, "one too many")


def test_envelope_reset_after_last_reply() -> None:
    conn = with_recipients("one@example.com", "two@example.com")
    feed(conn, b"DATA\r\nHi\r\n.\r\n")
    assert conn.envelope.mail_from is None
    assert conn.envelope.rcpt_tos == []
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [250]


def test_bdat_last_one_reply_per_recipient() -> None:
    conn = with_recipients("one@example.com", "two@example.com")
    _, out = feed(conn, b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
    assert out == (
        b"250 2.0.0 3 octets received\r\n"
        b"250 2.1.5 <one@example.com> OK\r\n"
        b"250 2.1.5 <two@example.com> OK\r\n"
    )


def test_data_without_accepted_recipients() -> None:
    # RFC 2033, section 4.2: with no successful RCPT, DATA fails with 503.
    respond = rejecting("one@example.com")
    conn = with_recipients("one@example.com", respond=respond)
    _, out = feed(conn, b"DATA\r\n")
    assert codes(out) == [503]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"DATA\r\n" + b"x" * 50 + b"\r\n.\r\n", id="data-too-big"),
        pytest.param(b"DATA\r\na\nb\r\n.\r\n", id="data-bare-lf"),
        pytest.param(b"BDAT 50 LAST\r\n" + b"x" * 50, id="bdat-too-big"),
    ],
)
def test_engine_rejection_per_recipient(wire: bytes) -> None:
    # RFC 2033, section 4.2: after the message every accepted recipient gets a
    # reply, failures included, or the client waits for the missing ones.
    conn = with_recipients("one@example.com", "two@example.com", max_message_size=10)
    events, out = feed(conn, wire)
    final = [code for code in codes(out) if code != 354]
    rejection = next(e for e in events if isinstance(e, DataRejected))
    assert final == [rejection.code, rejection.code]
    assert rejection.code in (550, 552)
    assert conn.pending is None
