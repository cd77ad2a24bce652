"""Minimal reproductions of engine bugs found by fuzzing and property tests.

Each test feeds the smallest input found and checks the behavior the engine
should have. Mark a test for a bug that is still open with
``@pytest.mark.xfail(strict=True, reason=...)``: the strict mark makes the fix
visible as a failure until the mark is removed.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from helpers import body, codes, feed, feed_pieces, merge_chunks, new_connection
from smtpproto import AuthCredentials, DataComplete, DataRejected, MailFrom

OPENING = (
    b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
)


def deliver(pieces: list[bytes], **options: Any) -> tuple[list[Any], bytes]:
    """Send the opening, DATA and ``pieces``; return merged events and output."""
    conn = new_connection(**options)
    feed(conn, OPENING + b"DATA\r\n")
    events, out = feed_pieces(conn, pieces)
    return merge_chunks(events), out


def test_bdat_unicode_digit_size() -> None:
    # "²" passed str.isdigit(), then int() raised ValueError out of the engine.
    conn = new_connection(enable_smtputf8=True)
    feed(conn, OPENING)
    _, out = feed(conn, "BDAT ²\r\n".encode())
    assert codes(out) == [501]


def test_mail_size_unicode_digit() -> None:
    # "²" passed str.isdigit(), then int() raised ValueError out of the engine.
    conn = new_connection(enable_smtputf8=True)
    feed(conn, b"EHLO client.example\r\n")
    _, out = feed(conn, "MAIL FROM:<a@example.com> SIZE=²\r\n".encode())
    assert codes(out) == [501]


def test_mail_size_arabic_digit() -> None:
    # RFC 1870 allows ASCII digits only, but "١" was once taken as 1.
    conn = new_connection(enable_smtputf8=True)
    feed(conn, b"EHLO client.example\r\n")
    events, out = feed(conn, "MAIL FROM:<a@example.com> SIZE=١\r\n".encode())
    assert not any(isinstance(e, MailFrom) for e in events)
    assert codes(out) == [501]


@pytest.mark.parametrize("policy", ["reject", "normalize"])
def test_bare_cr_lf_pair_detected(policy: str) -> None:
    # A bare CR and a bare LF with other octets between them once passed as
    # one CRLF pair, so "\n.\r\n" got through the reject policy.
    events, _ = deliver([b"a\rb\n.\r\nc\r\n.\r\n"], bare_line_ending=policy)
    ends = [e for e in events if isinstance(e, (DataComplete, DataRejected))]
    assert len(ends) == 1
    if policy == "reject":
        assert isinstance(ends[0], DataRejected)
    else:
        assert body(events) == b"a\r\nb\r\n.\r\nc\r\n"


def test_bare_reply_read_independent() -> None:
    # The reply once named CR or LF depending on which came in the first read.
    _, whole = deliver([b"\r.\n\r\n.\r\n"])
    _, split = deliver([b"\r.", b"\n\r\n.\r\n"])
    assert codes(whole) == [550]
    assert split == whole


def test_normalize_unstuffing_read_independent() -> None:
    # A dot after a bare LF was once unstuffed only when a CRLF-dot line
    # came in the same read.
    content = b"a\n..b\r\n..c\r\n.\r\n"
    whole, _ = deliver([content], bare_line_ending="normalize")
    split, _ = deliver([content[:5], content[5:]], bare_line_ending="normalize")
    alone, _ = deliver([b"a\n..b\r\n.\r\n"], bare_line_ending="normalize")
    assert body(split) == body(whole)
    # The line after the bare LF reads the same with or without a later line.
    assert body(alone).split(b"\r\n")[:2] == body(whole).split(b"\r\n")[:2]


@pytest.mark.parametrize("policy", ["normalize", "allow"])
def test_command_line_exact_limit(policy: str) -> None:
    # Under normalize and allow the LF was once counted twice, so a CRLF line of
    # exactly max_command_line octets got 500 Line too long.
    conn = new_connection(bare_line_ending=policy, max_message_size=None)
    line = b"NOOP " + b"x" * (conn.max_command_line - 7) + b"\r\n"
    assert len(line) == conn.max_command_line
    _, out = feed(conn, line)
    assert codes(out) == [250]


def test_verb_non_ascii_not_folded() -> None:
    # str.upper() folds "ı" to "I", so "MAıL" once ran as MAIL.
    conn = new_connection(enable_smtputf8=True)
    feed(conn, b"EHLO client.example\r\n")
    events, _ = feed(conn, "MAıL FROM:<a@example.com>\r\n".encode())
    assert not any(isinstance(e, MailFrom) for e in events)


def test_cram_md5_non_ascii_digest() -> None:
    # hmac.compare_digest() raised TypeError on a non-ASCII str digest.
    conn = new_connection(auth_mechanisms=("CRAM-MD5",), auth_require_tls=False)
    feed(conn, b"EHLO client.example\r\nAUTH CRAM-MD5\r\n")
    response = base64.b64encode(b"user " + "é".encode() * 32)
    conn.receive_data(response + b"\r\n")
    credentials = conn.next_event()
    assert isinstance(credentials, AuthCredentials)
    assert credentials.verify_cram_md5("secret") is False


@pytest.mark.parametrize("state", ["command", "auth"])
def test_long_line_crlf_across_reads(state: str) -> None:
    # After an over-long line, a read that ended between CR and LF once hid the
    # line end, so the next command was discarded.
    conn = new_connection(auth_mechanisms=("PLAIN",), auth_require_tls=False)
    limit = conn.max_command_line
    if state == "auth":
        feed(conn, b"EHLO client.example\r\nAUTH PLAIN\r\n")
        limit = conn.max_sasl_response
    long_line = b"A" * (limit + 100)
    _, whole = feed(conn, long_line + b"\r\nNOOP\r\n")
    assert codes(whole) == [500, 250]
    if state == "auth":
        feed(conn, b"AUTH PLAIN\r\n")
    _, split = feed_pieces(conn, [long_line + b"\r", b"\nNOOP\r\n"])
    assert codes(split) == [500, 250]
