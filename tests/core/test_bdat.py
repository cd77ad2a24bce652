"""Tests of BDAT (RFC 3030 CHUNKING): chunks, LAST, failures and size limits."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from helpers import body, codes, drain, feed, feed_pieces, merge_chunks, new_connection
from smtpproto import (
    NEED_DATA,
    Bdat,
    DataChunk,
    DataComplete,
    DataRejected,
    Event,
    MailFrom,
    Noop,
    Rset,
    ServerConnection,
    UnknownCommand,
)

TOO_BIG = b"552 5.3.4 Error: Too much mail data\r\n"
AFTER_FAILURE = b"503 5.5.1 Error: previous BDAT failed, send RSET first\r\n"


def in_transaction(**options: Any) -> ServerConnection:
    """Return a connection with an accepted sender and recipient."""
    conn = new_connection(**options)
    _, out = feed(
        conn,
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:<rcpt@example.com>\r\n",
    )
    assert codes(out) == [250, 250, 250]
    return conn


def kinds(events: list[Event]) -> list[type[Event]]:
    return [type(e) for e in merge_chunks(events)]


def completed(events: list[Event]) -> list[DataComplete]:
    return [e for e in events if isinstance(e, DataComplete)]


# Chunks


def test_bdat_single_last_chunk() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 5 LAST\r\nhello")
    assert merge_chunks(events) == [
        Bdat(size=5, last=True),
        DataChunk(data=b"hello"),
        DataComplete(size=5),
    ]
    assert out == b"250 2.0.0 OK\r\n"


def test_bdat_several_chunks() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 6\r\nHello BDAT 6\r\nworld!BDAT 2 LAST\r\n\r\n")
    assert merge_chunks(events) == [
        Bdat(size=6, last=False),
        DataChunk(data=b"Hello "),
        Bdat(size=6, last=False),
        DataChunk(data=b"world!"),
        Bdat(size=2, last=True),
        DataChunk(data=b"\r\n"),
        DataComplete(size=14),
    ]
    assert out == (
        b"250 2.0.0 6 octets received\r\n"
        b"250 2.0.0 6 octets received\r\n"
        b"250 2.0.0 OK\r\n"
    )


def test_bdat_every_split() -> None:
    wire = b"BDAT 7\r\nab\r\n.\r\nBDAT 3 LAST\r\nxyz"
    for split in range(1, len(wire)):
        conn = in_transaction()
        events, out = feed_pieces(conn, [wire[:split], wire[split:]])
        assert body(events) == b"ab\r\n.\r\nxyz", f"split at {split}"
        assert completed(events) == [DataComplete(size=10)], f"split at {split}"
        assert codes(out) == [250, 250], f"split at {split}"


def test_bdat_byte_by_byte() -> None:
    wire = b"BDAT 4\r\nabcdBDAT 2 LAST\r\nef"
    conn = in_transaction()
    events, out = feed_pieces(conn, [bytes([octet]) for octet in wire])
    assert body(events) == b"abcdef"
    assert completed(events) == [DataComplete(size=6)]
    assert codes(out) == [250, 250]


def test_bdat_last_case_insensitive() -> None:
    conn = in_transaction()
    events, _ = feed(conn, b"bdat 1 last\r\nx")
    assert events[0] == Bdat(size=1, last=True)
    assert completed(events) == [DataComplete(size=1)]


def test_bdat_zero_last() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 3\r\nabcBDAT 0 LAST\r\n")
    assert kinds(events) == [Bdat, DataChunk, Bdat, DataComplete]
    assert completed(events) == [DataComplete(size=3)]
    assert codes(out) == [250, 250]


def test_bdat_zero_last_empty_message() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 0 LAST\r\n")
    assert events == [Bdat(size=0, last=True), DataComplete(size=0)]
    assert out == b"250 2.0.0 OK\r\n"


def test_bdat_zero_not_last() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 0\r\n")
    assert events == [Bdat(size=0, last=False)]
    assert out == b"250 2.0.0 0 octets received\r\n"


def test_bdat_no_reply_before_chunk_complete() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 10\r\n12345")
    assert kinds(events) == [Bdat, DataChunk]
    assert out == b""
    assert conn.next_event() is NEED_DATA


def test_bdat_chunk_content_is_opaque() -> None:
    # A chunk is counted octets, not text: no dot-unstuffing, no end of data,
    # no line limit; under "allow", bare line endings pass through too.
    chunk = b".\r\n..x\r\na\nb\rc" + b"y" * 5000 + b"\r\n.\r\nQUIT\r\n"
    conn = in_transaction(bare_line_ending="allow")
    events, out = feed(conn, b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert body(events) == chunk
    assert completed(events) == [DataComplete(size=len(chunk))]
    assert out == b"250 2.0.0 OK\r\n"
    assert not conn.closed


def test_bdat_commands_follow_chunk() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 4 LAST\r\nNOOPNOOP\r\n")
    assert kinds(events) == [Bdat, DataChunk, DataComplete, Noop]
    assert body(events) == b"NOOP"
    assert codes(out) == [250, 250]


def test_bdat_envelope_reset_after_last() -> None:
    conn = in_transaction()
    old = conn.envelope
    feed(conn, b"BDAT 1 LAST\r\nx")
    assert conn.envelope is not old
    assert conn.envelope.mail_from is None
    events, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert kinds(events) == [MailFrom]
    assert codes(out) == [250]


def test_bdat_last_rejected_by_application() -> None:
    conn = in_transaction()
    conn.receive_data(b"BDAT 3 LAST\r\nabc")
    assert isinstance(conn.next_event(), Bdat)
    assert isinstance(conn.next_event(), DataChunk)
    assert isinstance(conn.next_event(), DataComplete)
    conn.send_reply(554, "Rejected")
    assert conn.data_to_send() == b"554 5.0.0 Rejected\r\n"
    assert conn.envelope.mail_from is None


def test_bdat_after_helo() -> None:
    # BDAT is not refused after HELO: the engine reads chunks the same way.
    conn = new_connection()
    feed(
        conn,
        b"HELO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n",
    )
    events, out = feed(conn, b"BDAT 2 LAST\r\nok")
    assert completed(events) == [DataComplete(size=2)]
    assert codes(out) == [250]


# Syntax and sequence errors


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"BDAT\r\n", id="missing-size"),
        pytest.param(b"BDAT x\r\n", id="not-a-number"),
        pytest.param(b"BDAT -1\r\n", id="negative"),
        pytest.param(b"BDAT 1 MORE\r\n", id="bad-keyword"),
        pytest.param(b"BDAT 1 LAST X\r\n", id="extra-word"),
        pytest.param(b"BDAT 1234567890123456789\r\n", id="size-too-many-digits"),
    ],
)
def test_bdat_syntax_error(line: bytes) -> None:
    conn = in_transaction()
    events, out = feed(conn, line)
    assert events == []
    assert out == b"501 5.5.4 Syntax: BDAT <chunk-size> [LAST]\r\n"
    # Without a size the chunk cannot be skipped, so the next line is a command.
    events, out = feed(conn, b"NOOP\r\n")
    assert kinds(events) == [Noop]


def test_bdat_disabled() -> None:
    conn = in_transaction(enable_chunking=False)
    events, out = feed(conn, b"BDAT 1 LAST\r\n")
    assert events == [UnknownCommand(verb="BDAT", argument="1 LAST")]
    assert codes(out) == [500]


@pytest.mark.parametrize(
    ("setup", "reply"),
    [
        pytest.param(b"", b"503 5.5.1 Error: need MAIL command\r\n", id="no-mail"),
        pytest.param(
            b"MAIL FROM:<a@example.org>\r\n",
            b"503 5.5.1 Error: need RCPT command\r\n",
            id="no-rcpt",
        ),
    ],
)
def test_bdat_refused_chunk_consumed(setup: bytes, reply: bytes) -> None:
    # RFC 3030, section 2: the chunk is read and discarded even when the BDAT
    # command fails, so its octets are never taken for commands.
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n" + setup)
    events, out = feed(conn, b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert kinds(events) == [Noop]
    assert out == reply + b"250 2.0.0 OK\r\n"
    assert not conn.closed


def test_bdat_refused_reply_after_chunk() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    _, out = feed(conn, b"BDAT 10\r\n12345")
    assert out == b""
    _, out = feed(conn, b"67890")
    assert codes(out) == [503]


def test_data_after_bdat() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"BDAT 2\r\nabDATA\r\n")
    assert kinds(events) == [Bdat, DataChunk]
    assert out == (
        b"250 2.0.0 2 octets received\r\n503 5.5.1 Error: DATA cannot follow BDAT\r\n"
    )
    # The BDAT transaction goes on.
    events, _ = feed(conn, b"BDAT 1 LAST\r\nc")
    assert completed(events) == [DataComplete(size=3)]


def test_rset_during_bdat_transaction() -> None:
    conn = in_transaction()
    feed(conn, b"BDAT 3\r\nabc")
    events, out = feed(conn, b"RSET\r\n")
    assert kinds(events) == [DataRejected, Rset]
    assert out == b"250 2.0.0 OK\r\n"
    assert conn.envelope.mail_from is None
    _, out = feed(conn, b"BDAT 1 LAST\r\nx")
    assert codes(out) == [503]


# Failed BDAT


def failed_bdat(**options: Any) -> ServerConnection:
    """Return a transaction whose first BDAT chunk went over a 10-octet limit."""
    conn = in_transaction(max_message_size=10, **options)
    events, out = feed(conn, b"BDAT 20\r\n" + b"x" * 20)
    assert kinds(events) == [Bdat, DataRejected]
    assert out == TOO_BIG
    return conn


def test_bdat_failed_then_503_until_rset() -> None:
    conn = failed_bdat()
    for _ in range(3):
        events, out = feed(conn, b"BDAT 3\r\nabc")
        assert events == []
        assert out == AFTER_FAILURE
    events, out = feed(conn, b"BDAT 2 LAST\r\nde")
    assert events == []
    assert out == AFTER_FAILURE
    _, out = feed(conn, b"DATA\r\n")
    assert codes(out) == [503]
    events, out = feed(conn, b"RSET\r\n")
    assert kinds(events) == [Rset]
    assert codes(out) == [250]
    feed(conn, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    events, out = feed(conn, b"BDAT 2 LAST\r\nok")
    assert completed(events) == [DataComplete(size=2)]
    assert codes(out) == [250]


def test_bdat_failed_chunk_bytes_consumed() -> None:
    conn = failed_bdat()
    # The refused chunk's octets look like commands but must be skipped.
    events, out = feed(conn, b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert kinds(events) == [Noop]
    assert out == AFTER_FAILURE + b"250 2.0.0 OK\r\n"
    assert not conn.closed


def test_bdat_size_over_limit_across_chunks() -> None:
    conn = in_transaction(max_message_size=10)
    events, out = feed(conn, b"BDAT 6\r\n123456BDAT 6 LAST\r\n789012")
    assert body(events) == b"123456"
    assert completed(events) == []
    assert [e for e in events if isinstance(e, DataRejected)] == [
        DataRejected(code=552, enhanced="5.3.4", text="Error: Too much mail data")
    ]
    assert out == b"250 2.0.0 6 octets received\r\n" + TOO_BIG


def test_bdat_size_at_limit() -> None:
    conn = in_transaction(max_message_size=10)
    events, out = feed(conn, b"BDAT 4\r\n1234BDAT 6 LAST\r\n567890")
    assert completed(events) == [DataComplete(size=10)]
    assert codes(out) == [250, 250]


def test_bdat_failed_last_ends_transaction() -> None:
    # The reply to the last chunk is the final reply of the transaction, as
    # after DATA; DataRejected documents that the transaction is over.
    conn = in_transaction(max_message_size=3)
    events, out = feed(conn, b"BDAT 5 LAST\r\nhello")
    assert out == TOO_BIG
    events, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert kinds(events) == [MailFrom]
    assert codes(out) == [250]


def test_bdat_huge_declared_size_streams() -> None:
    limit = 1_000_000
    piece = b"z" * 1_048_576
    pieces = 40
    conn = in_transaction(max_message_size=limit)
    events, out = feed(conn, b"BDAT %d LAST\r\n" % (len(piece) * pieces))
    assert events == [Bdat(size=len(piece) * pieces, last=True)]
    delivered = 0
    replies = []
    tracemalloc.start()
    try:
        for _ in range(pieces):
            conn.receive_data(piece)
            events = drain(conn)
            delivered += len(body(events))
            assert completed(events) == []
            replies.append(conn.data_to_send())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivered <= limit
    # The engine keeps at most a read or two in memory, never the 40 MiB chunk.
    assert peak < 4 * len(piece)
    assert replies[:-1] == [b""] * (pieces - 1)
    assert replies[-1] == TOO_BIG
    events, out = feed(conn, b"NOOP\r\n")
    assert kinds(events) == [Noop]
    assert codes(out) == [250]


def test_bdat_huge_size_gets_552_at_end() -> None:
    limit = 1000
    conn = in_transaction(max_message_size=limit)
    chunk_size = 50_000
    events, out = feed(conn, b"BDAT %d LAST\r\n" % chunk_size)
    assert out == b""
    for _ in range(chunk_size // 5000 - 1):
        events, out = feed(conn, b"q" * 5000)
        assert out == b""
        assert not any(isinstance(e, DataChunk) for e in events)
    events, out = feed(conn, b"q" * 5000)
    assert out == TOO_BIG
    assert any(isinstance(e, DataRejected) for e in events)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"EHLO client.example\r\n", id="ehlo"),
        pytest.param(b"HELO client.example\r\n", id="helo"),
        pytest.param(b"STARTTLS\r\n", id="starttls"),
    ],
)
def test_bdat_transaction_reset_notifies(line: bytes) -> None:
    # As on RSET, the application must learn that the chunks it collected
    # belong to a dropped transaction, or they end up in the next message.
    conn = in_transaction(tls_available=True)
    feed(conn, b"BDAT 3\r\nabc")
    events, _ = feed(conn, line)
    assert isinstance(events[0], DataRejected)


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(b"a\nb\r\n", id="lf"),
        pytest.param(b"a\rb\r\n", id="cr"),
        pytest.param(b"a\r\n\r", id="final-cr"),
    ],
)
def test_bdat_bare_line_ending_rejected(chunk: bytes) -> None:
    conn = in_transaction(bare_line_ending="reject")
    events, out = feed(conn, b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert body(events) == b""
    assert codes(out) == [550]
    assert any(isinstance(e, DataRejected) for e in events)


def test_bdat_cr_lf_across_chunks_accepted() -> None:
    # The CR ends one chunk and its LF starts the next: a CRLF, not bare.
    conn = in_transaction(bare_line_ending="reject")
    events, out = feed(conn, b"BDAT 2\r\na\rBDAT 4 LAST\r\n\nb\r\n")
    assert codes(out) == [250, 250]
    assert body(events) == b"a\r\nb\r\n"


def test_bdat_bare_line_ending_normalized() -> None:
    conn = in_transaction(bare_line_ending="normalize")
    chunk = b"a\nb\rc\r\n"
    events, out = feed(conn, b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert body(events) == b"a\r\nb\r\nc\r\n"
    assert codes(out) == [250]
