"""Tests of DATA: end of data, dot-unstuffing, bare line endings and message limits."""

from __future__ import annotations

import random
import re
from itertools import pairwise
from typing import Any

import pytest

from helpers import body, codes, feed, feed_pieces, merge_chunks, new_connection
from smtpproto import (
    NEED_DATA,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    DataRejected,
    Event,
    MailFrom,
    Noop,
    ServerConnection,
)

OK = b"250 2.0.0 OK\r\n"
BARE_LINE_ENDING = (
    b"550 5.5.2 Error: bare <CR> or <LF> received, use CRLF line endings\r\n"
)
TOO_BIG = b"552 5.3.4 Error: Too much mail data\r\n"
LINE_TOO_LONG = b"500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)\r\n"

# A message with a stuffed first line, a stuffed line in the middle, a dot that
# is not at a line start, a line that is only a stuffed dot and a blank last line.
WIRE = b"..first\r\nmid.dle\r\n..\r\n...three\r\n\r\n.\r\n"
CONTENT = b".first\r\nmid.dle\r\n.\r\n..three\r\n\r\n"


def in_data(**options: Any) -> ServerConnection:
    """Return a connection that has accepted DATA and waits for the content."""
    conn = new_connection(**options)
    _, out = feed(
        conn,
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.org>\r\n"
        b"RCPT TO:<rcpt@example.com>\r\n"
        b"DATA\r\n",
    )
    assert codes(out)[-1] == 354
    return conn


def pieces_of(data: bytes, *splits: int) -> list[bytes]:
    """Cut ``data`` at ``splits``, dropping empty pieces (b"" would mean EOF)."""
    bounds = [0, *splits, len(data)]
    pieces = [data[start:end] for start, end in pairwise(bounds)]
    return [piece for piece in pieces if piece]


def kinds(events: list[Event]) -> list[type[Event]]:
    return [type(e) for e in merge_chunks(events)]


def completed(events: list[Event]) -> list[DataComplete]:
    return [e for e in events if isinstance(e, DataComplete)]


def rejected(events: list[Event]) -> list[DataRejected]:
    return [e for e in events if isinstance(e, DataRejected)]


# Starting DATA


def test_data_354_reply() -> None:
    conn = new_connection()
    events, out = feed(
        conn,
        b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
        b"DATA\r\n",
    )
    assert isinstance(events[-1], Data)
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")


def test_data_with_argument() -> None:
    conn = new_connection()
    feed(
        conn,
        b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n",
    )
    events, out = feed(conn, b"DATA now\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: DATA\r\n"


def test_data_before_mail() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\n")
    events, out = feed(conn, b"DATA\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: need MAIL command\r\n"


def test_data_before_rcpt() -> None:
    conn = new_connection()
    feed(conn, b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
    events, out = feed(conn, b"DATA\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: need RCPT command\r\n"


def test_data_rejected_by_application() -> None:
    conn = new_connection()
    feed(
        conn,
        b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n",
    )
    conn.receive_data(b"DATA\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Data)
    conn.send_reply(451, "Try later")
    assert conn.data_to_send() == b"451 4.0.0 Try later\r\n"
    # The next line is a command again, not message content.
    assert isinstance(conn.next_event(), Noop)


# End of data


def test_end_of_data_every_split() -> None:
    for split in range(len(WIRE) + 1):
        conn = in_data()
        events, out = feed_pieces(conn, pieces_of(WIRE, split))
        assert body(events) == CONTENT, f"split at {split}"
        assert completed(events) == [DataComplete(size=len(CONTENT))], split
        assert out == OK, f"split at {split}"


def test_end_of_data_every_two_splits() -> None:
    for first in range(len(WIRE) + 1):
        for second in range(first, len(WIRE) + 1):
            conn = in_data()
            events, out = feed_pieces(conn, pieces_of(WIRE, first, second))
            assert body(events) == CONTENT, f"splits at {first}, {second}"
            assert len(completed(events)) == 1, f"splits at {first}, {second}"
            assert out == OK, f"splits at {first}, {second}"


def test_end_of_data_byte_by_byte() -> None:
    conn = in_data()
    events, out = feed_pieces(conn, [bytes([octet]) for octet in WIRE])
    assert body(events) == CONTENT
    assert completed(events) == [DataComplete(size=len(CONTENT))]
    assert out == OK


def test_no_reply_before_end_of_data() -> None:
    conn = in_data()
    events, out = feed(conn, b"line one\r\nline two\r\n.")
    assert out == b""
    assert completed(events) == []
    assert conn.next_event() is NEED_DATA


def test_commands_after_end_of_data() -> None:
    conn = in_data()
    events, out = feed(conn, b"hello\r\n.\r\nNOOP\r\n")
    assert kinds(events) == [DataChunk, DataComplete, Noop]
    assert out == OK + OK


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"a\r\n.x\r\n", id="dot-then-text"),
        pytest.param(b"a\r\n..\r\n", id="two-dots"),
        pytest.param(b"a\r\n. \r\n", id="dot-space"),
        pytest.param(b"a.\r\n", id="dot-at-line-end"),
        pytest.param(b"QUIT\r\n", id="command-text"),
    ],
)
def test_not_end_of_data(wire: bytes) -> None:
    conn = in_data()
    events, out = feed(conn, wire)
    assert completed(events) == []
    assert out == b""
    events, out = feed(conn, b"\r\n.\r\n")
    assert len(completed(events)) == 1
    assert out == OK


# Dot-unstuffing


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        pytest.param(b"..a\r\n.\r\n", b".a\r\n", id="first-line"),
        pytest.param(b"..\r\n.\r\n", b".\r\n", id="first-line-dot-only"),
        pytest.param(b"x\r\n..y\r\n.\r\n", b"x\r\n.y\r\n", id="middle-line"),
        pytest.param(b"x\r\n...\r\n.\r\n", b"x\r\n..\r\n", id="three-dots"),
        pytest.param(b"a.b\r\n.\r\n", b"a.b\r\n", id="inner-dot"),
        pytest.param(b".a\r\n.\r\n", b"a\r\n", id="unneeded-stuffing"),
        pytest.param(b"x\r\n..\r\n..\r\n.\r\n", b"x\r\n.\r\n.\r\n", id="repeated"),
    ],
)
def test_dot_unstuffing(wire: bytes, content: bytes) -> None:
    conn = in_data()
    events, out = feed(conn, wire)
    assert body(events) == content
    assert completed(events) == [DataComplete(size=len(content))]
    assert out == OK


def test_dot_unstuffing_after_chunk_ending_in_crlf() -> None:
    # The stuffed dot is the first octet of a new read.
    conn = in_data()
    events, _ = feed_pieces(conn, [b"a\r\n", b"..b\r\n", b".\r\n"])
    assert body(events) == b"a\r\n.b\r\n"


def test_empty_message() -> None:
    conn = in_data()
    events, out = feed(conn, b".\r\n")
    assert kinds(events) == [DataComplete]
    assert events[0] == DataComplete(size=0)
    assert out == OK


def test_blank_last_line() -> None:
    conn = in_data()
    events, out = feed(conn, b"text\r\n\r\n.\r\n")
    assert body(events) == b"text\r\n\r\n"
    assert out == OK


def test_only_blank_line() -> None:
    conn = in_data()
    events, out = feed(conn, b"\r\n.\r\n")
    assert body(events) == b"\r\n"
    assert completed(events) == [DataComplete(size=2)]
    assert out == OK


def test_binary_octets_pass_through() -> None:
    content = bytes(range(128, 256)) + b"\x00\x01\t\r\n"
    conn = in_data()
    events, out = feed(conn, content + b".\r\n")
    assert body(events) == content
    assert out == OK


def test_data_size_counts_unstuffed_octets() -> None:
    conn = in_data()
    events, _ = feed(conn, b"..\r\n..\r\n.\r\n")
    assert completed(events) == [DataComplete(size=6)]


# Bare CR and LF


BARE_CASES = [
    pytest.param(b"a\nb\r\n", b"a\r\nb\r\n", id="lf"),
    pytest.param(b"a\rb\r\n", b"a\r\nb\r\n", id="cr"),
    pytest.param(b"a\n\r\n", b"a\r\n\r\n", id="lf-before-crlf"),
    pytest.param(b"a\r\r\n", b"a\r\n\r\n", id="cr-before-crlf"),
    pytest.param(b"a\n\nb\r\n", b"a\r\n\r\nb\r\n", id="two-lf"),
    pytest.param(b"a\n.\nb\r\n", b"a\r\n.\r\nb\r\n", id="lf-dot-lf"),
    pytest.param(b"a\r.\rb\r\n", b"a\r\n.\r\nb\r\n", id="cr-dot-cr"),
]


@pytest.mark.parametrize(("wire", "normalized"), BARE_CASES)
def test_bare_line_ending_reject(wire: bytes, normalized: bytes) -> None:
    conn = in_data(bare_line_ending="reject")
    events, out = feed(conn, wire)
    assert out == b""  # The error waits for the end of the message.
    events, out = feed(conn, b".\r\n")
    assert out == BARE_LINE_ENDING
    assert completed(events) == []
    assert len(rejected(events)) == 1
    assert rejected(events)[0].code == 550


@pytest.mark.parametrize(("wire", "normalized"), BARE_CASES)
def test_bare_line_ending_normalize(wire: bytes, normalized: bytes) -> None:
    conn = in_data(bare_line_ending="normalize")
    events, out = feed(conn, wire + b".\r\n")
    assert body(events) == normalized
    assert completed(events) == [DataComplete(size=len(normalized))]
    assert out == OK


@pytest.mark.parametrize(("wire", "normalized"), BARE_CASES)
def test_bare_line_ending_allow(wire: bytes, normalized: bytes) -> None:
    conn = in_data(bare_line_ending="allow")
    events, out = feed(conn, wire + b".\r\n")
    assert body(events) == wire
    assert out == OK


@pytest.mark.parametrize("policy", ["reject", "normalize", "allow"])
@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(b"\n.\n", id="lf-dot-lf"),
        pytest.param(b"\r\n.\n", id="crlf-dot-lf"),
        pytest.param(b"\n.\r\n", id="lf-dot-crlf"),
        pytest.param(b"\r.\r", id="cr-dot-cr"),
        pytest.param(b"\r.\r\n", id="cr-dot-crlf"),
        pytest.param(b"\r\n.\r", id="crlf-dot-cr"),
    ],
)
def test_bare_ending_never_ends_data(policy: str, ending: bytes) -> None:
    # Only CRLF.CRLF ends the content, or SMTP smuggling becomes possible.
    wire = b"text" + ending + b"MAIL FROM:<evil@example.net>\r\n"
    for split in range(len(wire) + 1):
        conn = in_data(bare_line_ending=policy)
        events, out = feed_pieces(conn, pieces_of(wire, split))
        assert completed(events) == [], f"split at {split}"
        assert rejected(events) == [], f"split at {split}"
        assert not any(isinstance(e, MailFrom) for e in events), f"split at {split}"
        assert out == b"", f"split at {split}"


def test_bare_lf_reject_discards_later_content() -> None:
    conn = in_data(bare_line_ending="reject")
    events, _ = feed(conn, b"a\nb\r\nmore text\r\n.\r\n")
    assert body(events) == b""


# Reference model

BARE_PATTERN = re.compile(rb"\r(?!\n)|(?<!\r)\n")
PIECES = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n..", b".."]


def expected_content(wire: bytes, policy: str) -> bytes | None:
    """Return the content the engine must deliver for ``wire``, or None for 550.

    The content ends at the first CRLF.CRLF, counting the CRLF of the DATA
    command line, so "." alone on the first line ends it too. Unstuffing
    removes the dot after every CRLF, and "normalize" then turns each bare CR
    or LF into CRLF.
    """
    framed = b"\r\n" + wire
    end = framed.find(b"\r\n.\r\n")
    content = framed[2 : end + 2] if end > 0 else b""
    unstuffed = (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]
    if policy == "reject":
        return None if BARE_PATTERN.search(content) else unstuffed
    if policy == "normalize":
        return BARE_PATTERN.sub(b"\r\n", unstuffed)
    return unstuffed


@pytest.mark.parametrize("policy", ["reject", "normalize", "allow"])
def test_content_matches_reference_model(policy: str) -> None:
    rng = random.Random(5321)
    for trial in range(400):
        middle = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        wire = middle + b"\r\n.\r\n"
        splits = sorted(rng.sample(range(1, len(wire)), min(3, len(wire) - 1)))
        conn = in_data(bare_line_ending=policy)
        events, out = feed_pieces(conn, pieces_of(wire, *splits))
        expected = expected_content(wire, policy)
        case = f"trial {trial}: {wire!r} split at {splits}"
        if expected is None:
            assert out.startswith(BARE_LINE_ENDING), case
            assert completed(events) == [], case
        else:
            assert out.startswith(OK), case
            assert body(events) == expected, case


# Size limit


def test_size_declared_over_limit_at_mail() -> None:
    conn = new_connection(max_message_size=100)
    feed(conn, b"EHLO c.example\r\n")
    events, out = feed(conn, b"MAIL FROM:<a@example.org> SIZE=101\r\n")
    assert events == []
    assert (
        out == b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n"
    )


def test_size_at_limit_accepted() -> None:
    content = b"x" * 98 + b"\r\n"
    conn = in_data(max_message_size=100)
    events, out = feed(conn, content + b".\r\n")
    assert body(events) == content
    assert completed(events) == [DataComplete(size=100)]
    assert out == OK


def test_size_over_limit_at_end() -> None:
    content = b"x" * 99 + b"\r\n"
    conn = in_data(max_message_size=100)
    events, out = feed(conn, content)
    assert out == b""
    events, out = feed(conn, b".\r\n")
    assert out == TOO_BIG
    assert completed(events) == []
    assert rejected(events) == [
        DataRejected(code=552, enhanced="5.3.4", text="Error: Too much mail data")
    ]


def test_size_nothing_emitted_after_limit() -> None:
    conn = in_data(max_message_size=100)
    pieces = [b"y" * 48 + b"\r\n"] * 5 + [b".\r\n"]
    events, out = feed_pieces(conn, pieces)
    delivered = body(events)
    assert len(delivered) <= 100
    assert delivered == b"".join(pieces)[: len(delivered)]
    chunk_positions = [i for i, e in enumerate(events) if isinstance(e, DataChunk)]
    rejection = next(i for i, e in enumerate(events) if isinstance(e, DataRejected))
    assert all(i < rejection for i in chunk_positions)
    assert out == TOO_BIG


def test_size_limit_none_unlimited() -> None:
    content = (b"z" * 998 + b"\r\n") * 50
    conn = in_data(max_message_size=None)
    events, out = feed(conn, content + b".\r\n")
    assert body(events) == content
    assert out == OK


def test_size_reply_waits_for_end() -> None:
    conn = in_data(max_message_size=100)
    _, out = feed(conn, b"x" * 200 + b"\r\n" + b"more\r\n")
    assert out == b""
    _, out = feed(conn, b".\r\n")
    assert out == TOO_BIG


# Line length limit


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        pytest.param(b"x" * 998 + b"\r\n", True, id="1000-octets"),
        pytest.param(b"." + b"x" * 998 + b"\r\n", True, id="1000-plus-stuffing-dot"),
        pytest.param(b"x" * 1000 + b"\r\n", False, id="1002-octets"),
        pytest.param(b"." + b"x" * 999 + b"\r\n", False, id="1001-plus-stuffing-dot"),
    ],
)
def test_text_line_limit_edge(line: bytes, accepted: bool) -> None:
    for prefix in (b"", b"first\r\n"):
        conn = in_data()
        events, out = feed(conn, prefix + line + b".\r\n")
        if accepted:
            assert out == OK, prefix
        else:
            assert out == LINE_TOO_LONG, prefix
            assert completed(events) == []


def test_text_line_limit_unstuffed_1001() -> None:
    # max_text_line counts CRLF, and only a stuffing dot may add one octet.
    conn = in_data()
    _, out = feed(conn, b"x" * 999 + b"\r\n.\r\n")
    assert out == LINE_TOO_LONG


@pytest.mark.parametrize(
    "piece",
    [pytest.param(1, id="1"), pytest.param(7, id="7"), pytest.param(500, id="500")],
)
def test_text_line_limit_across_reads(piece: int) -> None:
    wire = b"ok\r\n" + b"x" * 1500 + b"\r\n.\r\n"
    conn = in_data()
    pieces = [wire[i : i + piece] for i in range(0, len(wire), piece)]
    events, out = feed_pieces(conn, pieces)
    assert out == LINE_TOO_LONG
    assert completed(events) == []


def test_text_line_limit_custom() -> None:
    conn = in_data(max_text_line=2000)
    _, out = feed(conn, b"x" * 1998 + b"\r\n.\r\n")
    assert out == OK
    conn = in_data(max_text_line=2000)
    _, out = feed(conn, b"x" * 2000 + b"\r\n.\r\n")
    assert out == LINE_TOO_LONG


def test_text_line_limit_none() -> None:
    conn = in_data(max_text_line=None)
    events, out = feed(conn, b"x" * 100_000 + b"\r\n.\r\n")
    assert out == OK
    assert len(body(events)) == 100_002


def test_text_line_limit_many_short_lines() -> None:
    content = b"short line\r\n" * 2000
    conn = in_data()
    events, out = feed(conn, content + b".\r\n")
    assert body(events) == content
    assert out == OK


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        pytest.param(b"a\nb\r\n" + b"x" * 200 + b"\r\n", TOO_BIG, id="size-over-bare"),
        pytest.param(b"x" * 1100 + b"\r\n", TOO_BIG, id="size-over-line"),
        pytest.param(b"x" * 1100 + b"\r\na\nb\r\n", TOO_BIG, id="size-over-both"),
    ],
)
def test_error_order_size_first(wire: bytes, reply: bytes) -> None:
    conn = in_data(max_message_size=100)
    _, out = feed(conn, wire + b".\r\n")
    assert out == reply


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"a\nb\r\n" + b"x" * 1100 + b"\r\n", id="bare-then-long"),
        pytest.param(b"x" * 1100 + b"\r\na\nb\r\n", id="long-then-bare"),
    ],
)
def test_error_order_line_before_bare(wire: bytes) -> None:
    conn = in_data()
    _, out = feed(conn, wire + b".\r\n")
    assert out == LINE_TOO_LONG


def test_error_reply_split_invariant() -> None:
    # The reply must not depend on where the reads split the content.
    wire = b"a\nb\r\n" + b"x" * 1100 + b"\r\n" + b"y" * 300 + b"\r\n.\r\n"
    for split in range(1, len(wire), 7):
        conn = in_data(max_message_size=1200)
        _, out = feed_pieces(conn, pieces_of(wire, split))
        assert out == TOO_BIG, f"split at {split}"
    for split in range(1, len(wire), 7):
        conn = in_data()
        _, out = feed_pieces(conn, pieces_of(wire, split))
        assert out == LINE_TOO_LONG, f"split at {split}"


# After the message


def test_envelope_reset_after_message() -> None:
    conn = in_data()
    old = conn.envelope
    feed(conn, b"body\r\n.\r\n")
    assert conn.envelope is not old
    assert conn.envelope.mail_from is None
    assert conn.envelope.rcpt_tos == []
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\n")
    assert codes(out) == [503]
    events, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert kinds(events) == [MailFrom]
    assert codes(out) == [250]


def test_envelope_reset_after_application_rejects() -> None:
    conn = in_data()
    conn.receive_data(b"body\r\n.\r\n")
    assert isinstance(conn.next_event(), DataChunk)
    assert isinstance(conn.next_event(), DataComplete)
    conn.send_reply(554, "Content rejected")
    assert conn.data_to_send() == b"554 5.0.0 Content rejected\r\n"
    assert conn.envelope.mail_from is None
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [250]


def test_envelope_reset_after_engine_rejects() -> None:
    conn = in_data(max_message_size=10)
    feed(conn, b"x" * 20 + b"\r\n.\r\n")
    assert conn.envelope.mail_from is None
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [250]


def test_second_message_on_same_connection() -> None:
    conn = in_data()
    feed(conn, b"one\r\n.\r\n")
    events, out = feed(
        conn,
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\ntwo\r\n.\r\n",
    )
    assert body(events) == b"two\r\n"
    assert codes(out) == [250, 250, 354, 250]


def test_peer_closes_during_data() -> None:
    conn = in_data()
    events, _ = feed(conn, b"partial")
    assert completed(events) == []
    events, out = feed(conn, b"")
    assert isinstance(events[-1], ConnectionClosed)
    assert completed(events) == []
    assert out == b""
    assert conn.closed
