"""Tests of command pipelining (RFC 2920): order, batching and replies in a batch."""

from __future__ import annotations

import pytest

from helpers import (
    Responder,
    codes,
    drain,
    feed,
    feed_pieces,
    merge_chunks,
    new_connection,
)
from smtpproto import (
    PAUSED,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    Ehlo,
    Event,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rset,
    ServerConnection,
)

BATCH = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<sender@example.org>\r\n"
    b"RCPT TO:<one@example.com>\r\n"
    b"RCPT TO:<two@example.com>\r\n"
    b"DATA\r\n"
)


def reject_addresses(*addresses: str) -> Responder:
    """Return a responder that rejects RCPT for ``addresses`` and accepts the rest."""

    def respond(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, RcptTo) and event.address in addresses:
            conn.send_reply(550, "No such user here")
        else:
            conn.accept()

    return respond


def test_batch_events_in_order() -> None:
    conn = new_connection()
    events, out = feed(conn, BATCH + b"Hi\r\n.\r\nQUIT\r\n")
    assert [type(e) for e in merge_chunks(events)] == [
        Ehlo,
        MailFrom,
        RcptTo,
        RcptTo,
        Data,
        DataChunk,
        DataComplete,
        Quit,
        ConnectionClosed,
    ]
    assert [e.address for e in events if isinstance(e, RcptTo)] == [
        "one@example.com",
        "two@example.com",
    ]
    assert codes(out) == [250, 250, 250, 250, 354, 250, 221]


def test_batch_one_write() -> None:
    conn = new_connection()
    conn.receive_data(BATCH)
    drain(conn)
    out = conn.data_to_send()
    assert out.count(b"\r\n") == 1 + len(conn.extensions) + 4
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert conn.data_to_send() == b""


def test_batch_reply_waits_for_application() -> None:
    conn = new_connection()
    feed(conn, b"EHLO client.example\r\n")
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    # Until the application replies to MAIL, the engine does not read RCPT.
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.accept()
    assert isinstance(conn.next_event(), RcptTo)
    conn.accept()
    assert conn.data_to_send() == b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n"


def test_batch_any_split_same_replies() -> None:
    wire = BATCH + b"line\r\n.\r\nRSET\r\nNOOP\r\n"
    whole = new_connection()
    _, expected = feed(whole, wire)
    for split in range(1, len(wire)):
        conn = new_connection()
        _, out = feed_pieces(conn, [wire[:split], wire[split:]])
        assert out == expected, f"split at {split}"


def test_batch_with_rejected_rcpt() -> None:
    conn = new_connection()
    respond = reject_addresses("two@example.com")
    events, out = feed(
        conn,
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:<one@example.com>\r\n"
        b"RCPT TO:<two@example.com>\r\n"
        b"RCPT TO:<three@example.com>\r\n"
        b"DATA\r\n",
        respond,
    )
    assert codes(out) == [250, 250, 250, 550, 250, 354]
    assert b"550 5.1.5 No such user here\r\n" in out
    assert conn.envelope.rcpt_tos == ["one@example.com", "three@example.com"]
    assert isinstance(events[-1], Data)


def test_batch_engine_and_application_replies_interleaved() -> None:
    # Engine replies (syntax errors) and application replies keep command order.
    conn = new_connection()
    respond = reject_addresses("bad@example.com")
    _, out = feed(
        conn,
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:no-brackets@example.com\r\n"
        b"RCPT TO:<bad@example.com>\r\n"
        b"FROB\r\n"
        b"RCPT TO:<good@example.com>\r\n"
        b"VRFY x\r\n"
        b"RCPT TO:<>\r\n"
        b"NOOP\r\n",
        respond,
    )
    assert codes(out) == [250, 250, 501, 550, 500, 250, 252, 501, 250]


def test_data_after_all_rcpt_failed() -> None:
    # RFC 2920, section 3.1: DATA after only failed recipients gets 554, not 354.
    conn = new_connection()
    respond = reject_addresses("one@example.com", "two@example.com")
    events, out = feed(conn, BATCH, respond)
    assert not any(isinstance(e, Data) for e in events)
    assert codes(out) == [250, 250, 550, 550, 554]
    assert out.endswith(b"554 5.5.1 Error: no valid recipients\r\n")


def test_data_after_rcpt_syntax_errors() -> None:
    conn = new_connection()
    _, out = feed(
        conn,
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:<bad address>\r\n"
        b"DATA\r\n",
    )
    assert codes(out) == [250, 250, 501, 554]


def test_data_after_rcpt_over_limit() -> None:
    conn = new_connection(max_recipients=1)
    events, out = feed(
        conn,
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:<one@example.com>\r\n"
        b"RCPT TO:<two@example.com>\r\n"
        b"DATA\r\n",
    )
    assert codes(out) == [250, 250, 250, 452, 354]
    assert isinstance(events[-1], Data)


def test_data_without_rcpt_attempt() -> None:
    # With no RCPT at all the reply is the sequence error, not 554.
    conn = new_connection()
    _, out = feed(
        conn,
        b"EHLO client.example\r\nMAIL FROM:<sender@example.org>\r\nDATA\r\n",
    )
    assert codes(out) == [250, 250, 503]


def test_data_after_failed_rcpt_then_rset() -> None:
    conn = new_connection()
    respond = reject_addresses("one@example.com")
    feed(
        conn,
        b"EHLO client.example\r\nMAIL FROM:<s@example.org>\r\n"
        b"RCPT TO:<one@example.com>\r\nRSET\r\nMAIL FROM:<s@example.org>\r\n",
        respond,
    )
    _, out = feed(conn, b"DATA\r\n")
    assert out == b"503 5.5.1 Error: need RCPT command\r\n"


def test_batch_two_transactions() -> None:
    conn = new_connection()
    message = (
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.com>\r\nDATA\r\nbody\r\n.\r\n"
    )
    events, out = feed(conn, b"EHLO client.example\r\n" + message * 2 + b"QUIT\r\n")
    assert sum(isinstance(e, DataComplete) for e in events) == 2
    assert codes(out) == [250] + [250, 250, 354, 250] * 2 + [221]


@pytest.mark.parametrize(
    "verb",
    [
        pytest.param(b"RSET", id="rset"),
        pytest.param(b"NOOP", id="noop"),
    ],
)
def test_batch_ends_with_non_transaction_command(verb: bytes) -> None:
    conn = new_connection()
    events, out = feed(conn, BATCH[:-6] + verb + b"\r\n")
    assert type(events[-1]) in (Rset, Noop)
    assert codes(out)[-1] == 250


def test_batch_without_pipelining_still_served() -> None:
    # Without reject_unsynchronized, a client that pipelines anyway is served.
    conn = new_connection(enable_pipelining=False)
    _, out = feed(conn, BATCH)
    assert codes(out) == [250, 250, 250, 250, 354]
