"""Tests of AUTH (RFC 4954): built-in PLAIN/LOGIN/CRAM-MD5, custom mechanisms, gates."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from helpers import Responder, codes, feed, new_connection
from smtpproto import (
    Auth,
    AuthAborted,
    AuthCredentials,
    AuthResponse,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    MailFrom,
    Noop,
    ServerConnection,
)

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XTOKEN")
AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
BAD_BASE64 = b"501 5.5.2 Can't decode base64\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def greeted(**options: Any) -> ServerConnection:
    """Return a connection after EHLO, with TLS active and AUTH offered."""
    options.setdefault("auth_mechanisms", MECHANISMS)
    options.setdefault("tls_active", True)
    conn = new_connection(**options)
    _, out = feed(conn, b"EHLO client.example\r\n")
    assert codes(out) == [250]
    return conn


def check_password(secret: str) -> Responder:
    """Return a responder that accepts credentials only with ``secret``."""

    def respond(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, AuthCredentials):
            if event.mechanism == "CRAM-MD5":
                valid = event.verify_cram_md5(secret)
            else:
                valid = event.password == secret
            if valid:
                conn.accept()
            else:
                conn.send_reply(535, "Authentication credentials invalid")
        else:
            conn.accept()

    return respond


# PLAIN


def test_plain_initial_response() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n")
    assert events == [
        AuthCredentials(mechanism="PLAIN", username="alice", password="s3cret")
    ]
    assert out == AUTH_OK
    assert conn.session.authenticated is True


def test_plain_authorization_identity() -> None:
    conn = greeted()
    events, _ = feed(conn, b"AUTH PLAIN " + b64(b"admin\0alice\0pw") + b"\r\n")
    assert events[0].authorization_id == "admin"  # type: ignore[attr-defined]
    assert events[0].username == "alice"  # type: ignore[attr-defined]


def test_plain_without_initial_response() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH PLAIN\r\n")
    assert events == []
    assert out == b"334 \r\n"
    events, out = feed(conn, b64(b"\0alice\0s3cret") + b"\r\n")
    assert events == [
        AuthCredentials(mechanism="PLAIN", username="alice", password="s3cret")
    ]
    assert out == AUTH_OK


def test_plain_mechanism_case_insensitive() -> None:
    conn = greeted()
    _, out = feed(conn, b"auth plain " + b64(b"\0alice\0pw") + b"\r\n")
    assert out == AUTH_OK


def test_plain_wrong_password() -> None:
    conn = greeted()
    respond = check_password("right")
    events, out = feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n", respond)
    assert len(events) == 1
    assert out == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert conn.session.authenticated is False


@pytest.mark.parametrize(
    "decoded",
    [
        pytest.param(b"alice\0pw", id="one-nul"),
        pytest.param(b"alicepw", id="no-nul"),
        pytest.param(b"a\0b\0c\0d", id="three-nul"),
    ],
)
def test_plain_malformed(decoded: bytes) -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH PLAIN " + b64(decoded) + b"\r\n")
    assert events == []
    assert out == b"501 5.5.2 Can't split auth value\r\n"
    assert conn.session.authenticated is None


def test_plain_empty_initial_response() -> None:
    # RFC 4954, section 4: "=" is an initial response of zero length, which
    # PLAIN cannot split into three fields.
    conn = greeted()
    events, out = feed(conn, b"AUTH PLAIN =\r\n")
    assert events == []
    assert out == b"501 5.5.2 Can't split auth value\r\n"


# LOGIN


def test_login_exchange() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH LOGIN\r\n")
    assert events == []
    assert out == b"334 " + b64(b"Username:") + b"\r\n"
    events, out = feed(conn, b64(b"alice") + b"\r\n")
    assert events == []
    assert out == b"334 " + b64(b"Password:") + b"\r\n"
    events, out = feed(conn, b64(b"s3cret") + b"\r\n")
    assert events == [
        AuthCredentials(mechanism="LOGIN", username="alice", password="s3cret")
    ]
    assert out == AUTH_OK
    assert conn.session.authenticated is True


def test_login_initial_response() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH LOGIN " + b64(b"alice") + b"\r\n")
    assert events == []
    assert out == b"334 " + b64(b"Password:") + b"\r\n"
    events, out = feed(conn, b64(b"s3cret") + b"\r\n")
    assert events == [
        AuthCredentials(mechanism="LOGIN", username="alice", password="s3cret")
    ]


def test_login_exchange_in_one_read() -> None:
    conn = greeted()
    events, out = feed(
        conn, b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"pw") + b"\r\n"
    )
    assert [type(e) for e in events] == [AuthCredentials]
    assert codes(out) == [334, 334, 235]


# CRAM-MD5


def challenge_of(out: bytes) -> bytes:
    assert out.startswith(b"334 ")
    assert out.endswith(b"\r\n")
    return base64.b64decode(out[4:-2])


def test_cram_md5_exchange() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH CRAM-MD5\r\n")
    assert events == []
    challenge = challenge_of(out)
    # RFC 2195, section 2: the challenge looks like a msg-id, <...@host>.
    assert challenge.startswith(b"<")
    assert challenge.endswith(b"@mx.example.com>")
    digest = hmac.new(b"tanstaaf", challenge, hashlib.md5).hexdigest()
    respond = check_password("tanstaaf")
    events, out = feed(conn, b64(b"alice " + digest.encode()) + b"\r\n", respond)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, AuthCredentials)
    assert event.mechanism == "CRAM-MD5"
    assert event.username == "alice"
    assert event.challenge == challenge
    assert event.verify_cram_md5("tanstaaf")
    assert event.verify_cram_md5(b"tanstaaf")
    assert not event.verify_cram_md5("wrong")
    assert out == AUTH_OK


def test_cram_md5_wrong_secret() -> None:
    conn = greeted()
    _, out = feed(conn, b"AUTH CRAM-MD5\r\n")
    digest = hmac.new(b"guess", challenge_of(out), hashlib.md5).hexdigest()
    respond = check_password("tanstaaf")
    _, out = feed(conn, b64(b"alice " + digest.encode()) + b"\r\n", respond)
    assert codes(out) == [535]
    assert conn.session.authenticated is False


def test_cram_md5_upper_case_digest() -> None:
    conn = greeted()
    _, out = feed(conn, b"AUTH CRAM-MD5\r\n")
    digest = hmac.new(b"k", challenge_of(out), hashlib.md5).hexdigest().upper()
    events, _ = feed(conn, b64(b"alice " + digest.encode()) + b"\r\n")
    assert events[0].verify_cram_md5("k")  # type: ignore[attr-defined]


def test_cram_md5_fresh_challenge() -> None:
    first = greeted()
    _, out_first = feed(first, b"AUTH CRAM-MD5\r\n")
    second = greeted()
    _, out_second = feed(second, b"AUTH CRAM-MD5\r\n")
    assert challenge_of(out_first) != challenge_of(out_second)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"nodigest", id="no-space"),
        pytest.param(b"alice 1234", id="short-digest"),
        pytest.param(b" " + b"0" * 32, id="no-username"),
    ],
)
def test_cram_md5_malformed_response(response: bytes) -> None:
    conn = greeted()
    feed(conn, b"AUTH CRAM-MD5\r\n")
    events, out = feed(conn, b64(response) + b"\r\n")
    assert events == []
    assert codes(out) == [501]


def test_cram_md5_initial_response_rejected() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH CRAM-MD5 " + b64(b"x") + b"\r\n")
    assert events == []
    assert codes(out) == [501]


# Aborting and malformed responses


@pytest.mark.parametrize(
    ("command", "mechanism"),
    [
        pytest.param(b"AUTH PLAIN\r\n", "PLAIN", id="plain"),
        pytest.param(b"AUTH LOGIN\r\n", "LOGIN", id="login"),
        pytest.param(b"AUTH CRAM-MD5\r\n", "CRAM-MD5", id="cram-md5"),
    ],
)
def test_abort_with_star(command: bytes, mechanism: str) -> None:
    # RFC 4954, section 4: "*" cancels the exchange and gets 501.
    conn = greeted()
    feed(conn, command)
    events, out = feed(conn, b"*\r\n")
    assert events == [AuthAborted(mechanism=mechanism)]
    assert out == b"501 5.7.0 Auth aborted\r\n"
    assert conn.session.authenticated is None
    # The connection is back in command mode.
    events, out = feed(conn, b"NOOP\r\n")
    assert [type(e) for e in events] == [Noop]


def test_abort_login_second_step() -> None:
    conn = greeted()
    feed(conn, b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n")
    events, out = feed(conn, b"*\r\n")
    assert events == [AuthAborted(mechanism="LOGIN")]
    assert codes(out) == [501]


def test_bad_base64_initial_response() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH PLAIN not*base64\r\n")
    assert events == []
    assert out == BAD_BASE64


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"!!!!", id="symbols"),
        pytest.param(b"abc", id="bad-padding"),
        pytest.param(b"YWJj ZA==", id="space"),
    ],
)
def test_bad_base64_response(line: bytes) -> None:
    conn = greeted()
    feed(conn, b"AUTH PLAIN\r\n")
    events, out = feed(conn, line + b"\r\n")
    assert events == []
    assert out == BAD_BASE64
    events, _ = feed(conn, b"NOOP\r\n")
    assert [type(e) for e in events] == [Noop]


def test_response_line_split_across_reads() -> None:
    conn = greeted()
    feed(conn, b"AUTH PLAIN\r\n")
    line = b64(b"\0alice\0pw") + b"\r\n"
    events, out = feed(conn, line[:5])
    assert events == []
    assert out == b""
    events, out = feed(conn, line[5:])
    assert [type(e) for e in events] == [AuthCredentials]
    assert out == AUTH_OK


# Refusals


def test_unknown_mechanism() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH GSSAPI\r\n")
    assert events == []
    assert out == b"504 5.5.4 Unrecognized authentication type\r\n"


def test_auth_without_argument() -> None:
    conn = greeted()
    _, out = feed(conn, b"AUTH\r\n")
    assert out == b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"


def test_auth_too_many_words() -> None:
    conn = greeted()
    _, out = feed(conn, b"AUTH PLAIN abcd efgh\r\n")
    assert codes(out) == [501]


def test_auth_not_configured() -> None:
    conn = greeted(auth_mechanisms=())
    _, out = feed(conn, b"AUTH PLAIN\r\n")
    assert out == b"502 5.5.1 Error: AUTH not available\r\n"


def test_auth_before_ehlo() -> None:
    conn = new_connection(auth_mechanisms=MECHANISMS, tls_active=True)
    events, out = feed(conn, b"AUTH PLAIN\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: send EHLO first\r\n"


def test_auth_after_helo() -> None:
    conn = new_connection(auth_mechanisms=MECHANISMS, tls_active=True)
    feed(conn, b"HELO client.example\r\n")
    _, out = feed(conn, b"AUTH PLAIN\r\n")
    assert codes(out) == [503]


def test_auth_in_transaction() -> None:
    conn = greeted()
    feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    events, out = feed(conn, b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: AUTH not allowed during a mail transaction\r\n"


def test_auth_already_authenticated() -> None:
    conn = greeted()
    feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    events, out = feed(conn, b"AUTH PLAIN " + b64(b"\0bob\0pw") + b"\r\n")
    assert events == []
    assert out == b"503 5.5.1 Already authenticated\r\n"
    assert conn.session.authenticated is True


def test_auth_needs_tls() -> None:
    conn = greeted(tls_active=False, tls_available=True)
    events, out = feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    assert events == []
    assert out == (
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    )


def test_auth_without_tls_allowed() -> None:
    conn = greeted(tls_active=False, auth_require_tls=False)
    _, out = feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    assert out == AUTH_OK


def test_retry_after_failure() -> None:
    conn = greeted()
    respond = check_password("right")
    _, out = feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n", respond)
    assert codes(out) == [535]
    assert conn.session.authenticated is False
    _, out = feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0right") + b"\r\n", respond)
    assert out == AUTH_OK
    assert conn.session.authenticated is True


def test_authenticated_survives_rset() -> None:
    conn = greeted()
    feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    feed(conn, b"RSET\r\n")
    assert conn.session.authenticated is True


def test_session_authenticated_none_before_auth() -> None:
    conn = greeted()
    assert conn.session.authenticated is None


def test_credentials_reply_334_raises() -> None:
    conn = greeted()
    conn.receive_data(b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    assert isinstance(conn.next_event(), AuthCredentials)
    with pytest.raises(LocalProtocolError):
        conn.send_reply(334, "more")


# auth_required


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"MAIL FROM:<a@example.org>\r\n", id="mail"),
        pytest.param(b"RCPT TO:<a@example.org>\r\n", id="rcpt"),
        pytest.param(b"DATA\r\n", id="data"),
        pytest.param(b"VRFY alice\r\n", id="vrfy"),
        pytest.param(b"BDAT 0 LAST\r\n", id="bdat"),
    ],
)
def test_auth_required_gate(line: bytes) -> None:
    conn = greeted(auth_required=True)
    events, out = feed(conn, line)
    assert events == []
    assert out == b"530 5.7.0 Authentication required\r\n"


def test_auth_required_lifted_after_auth() -> None:
    conn = greeted(auth_required=True)
    feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    events, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert [type(e) for e in events] == [MailFrom]
    assert codes(out) == [250]


def test_auth_required_still_after_failure() -> None:
    conn = greeted(auth_required=True)
    respond = check_password("right")
    feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n", respond)
    _, out = feed(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert codes(out) == [530]


def test_unauthenticated_command_limit() -> None:
    # EHLO in greeted() is the first command before authentication.
    conn = greeted(auth_required=True, max_unauthenticated_commands=5)
    for _ in range(4):
        _, out = feed(conn, b"NOOP\r\n")
        assert codes(out) == [250]
    events, out = feed(conn, b"NOOP\r\n")
    assert out == (
        b"421 4.7.0 Too many commands before authentication, closing connection\r\n"
    )
    assert conn.closed
    assert isinstance(events[-1], ConnectionClosed)


def test_unauthenticated_limit_stops_after_auth() -> None:
    conn = greeted(auth_required=True, max_unauthenticated_commands=3)
    feed(conn, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    _, out = feed(conn, b"NOOP\r\n" * 10)
    assert codes(out) == [250] * 10
    assert not conn.closed


def test_unauthenticated_limit_none() -> None:
    conn = greeted(auth_required=True, max_unauthenticated_commands=None)
    _, out = feed(conn, b"NOOP\r\n" * 50)
    assert codes(out) == [250] * 50


def test_unauthenticated_limit_without_auth_required() -> None:
    conn = greeted(max_unauthenticated_commands=2)
    _, out = feed(conn, b"NOOP\r\n" * 10)
    assert codes(out) == [250] * 10


# SASL response line limit


def test_sasl_response_at_limit() -> None:
    # 12286 octets plus CRLF is exactly the 12288-octet limit; it is not valid
    # base64, so the reply shows that the line was read and decoded.
    conn = greeted()
    feed(conn, b"AUTH PLAIN\r\n")
    _, out = feed(conn, b"A" * 12286 + b"\r\n")
    assert out == BAD_BASE64


def test_sasl_response_over_limit() -> None:
    conn = greeted()
    feed(conn, b"AUTH PLAIN\r\n")
    events, out = feed(conn, b"A" * 12287 + b"\r\n")
    assert events == []
    assert out == b"500 5.5.6 Authentication exchange line is too long\r\n"
    events, out = feed(conn, b"NOOP\r\n")
    assert [type(e) for e in events] == [Noop]


def test_sasl_response_endless_line() -> None:
    conn = greeted()
    feed(conn, b"AUTH PLAIN\r\n")
    _, out = feed(conn, b"A" * 20_000)
    assert codes(out) == [500]
    for _ in range(10):
        _, out = feed(conn, b"A" * 20_000)
        assert out == b""
    events, out = feed(conn, b"AAAA\r\nNOOP\r\n")
    assert [type(e) for e in events] == [Noop]
    assert codes(out) == [250]


def test_sasl_response_limit_custom() -> None:
    conn = greeted(max_sasl_response=20_000)
    feed(conn, b"AUTH PLAIN\r\n")
    _, out = feed(conn, b"A" * 19_998 + b"\r\n")
    assert out == BAD_BASE64
    feed(conn, b"AUTH PLAIN\r\n")
    _, out = feed(conn, b"A" * 19_999 + b"\r\n")
    assert codes(out) == [500]


def test_sasl_response_limit_minimum() -> None:
    with pytest.raises(ValueError, match="12288"):
        new_connection(max_sasl_response=12287)


# Mechanisms run by the application


def challenge_twice(conn: ServerConnection, event: Event) -> None:
    """Run a two-round custom mechanism: challenge, challenge, then decide."""
    if isinstance(event, Auth):
        conn.send_challenge(b"round one")
    elif isinstance(event, AuthResponse) and event.data == b"answer one":
        conn.send_challenge(b"round two")
    elif isinstance(event, AuthResponse) and event.data == b"answer two":
        conn.send_reply(235, "Welcome")
    elif isinstance(event, AuthResponse):
        conn.send_reply(535, "Wrong answer")
    else:
        conn.accept()


def test_custom_mechanism_exchange() -> None:
    conn = greeted()
    events, out = feed(conn, b"AUTH XTOKEN\r\n", challenge_twice)
    assert events == [Auth(mechanism="XTOKEN", initial_response=None)]
    assert out == b"334 " + b64(b"round one") + b"\r\n"
    events, out = feed(conn, b64(b"answer one") + b"\r\n", challenge_twice)
    assert events == [AuthResponse(mechanism="XTOKEN", data=b"answer one")]
    assert out == b"334 " + b64(b"round two") + b"\r\n"
    events, out = feed(conn, b64(b"answer two") + b"\r\n", challenge_twice)
    assert events == [AuthResponse(mechanism="XTOKEN", data=b"answer two")]
    assert out == b"235 2.7.0 Welcome\r\n"
    assert conn.session.authenticated is True


def test_custom_mechanism_initial_response() -> None:
    conn = greeted()
    events, _ = feed(conn, b"AUTH XTOKEN " + b64(b"token") + b"\r\n", challenge_twice)
    assert events == [Auth(mechanism="XTOKEN", initial_response=b"token")]


def test_custom_mechanism_empty_initial_response() -> None:
    conn = greeted()
    events, _ = feed(conn, b"AUTH XTOKEN =\r\n", challenge_twice)
    assert events == [Auth(mechanism="XTOKEN", initial_response=b"")]


def test_custom_mechanism_empty_response_line() -> None:
    conn = greeted()
    feed(conn, b"AUTH XTOKEN\r\n", challenge_twice)
    events, out = feed(conn, b"\r\n", challenge_twice)
    assert events == [AuthResponse(mechanism="XTOKEN", data=b"")]
    assert codes(out) == [535]


def test_custom_mechanism_rejected() -> None:
    conn = greeted()
    feed(conn, b"AUTH XTOKEN\r\n", challenge_twice)
    _, out = feed(conn, b64(b"nonsense") + b"\r\n", challenge_twice)
    assert out == b"535 5.7.8 Wrong answer\r\n"
    assert conn.session.authenticated is False


def test_custom_mechanism_abort() -> None:
    conn = greeted()
    feed(conn, b"AUTH XTOKEN\r\n", challenge_twice)
    events, out = feed(conn, b"*\r\n", challenge_twice)
    assert events == [AuthAborted(mechanism="XTOKEN")]
    assert codes(out) == [501]


def test_custom_mechanism_accept_is_failure() -> None:
    # accept() has no credentials to judge, so its default reply is 535.
    conn = greeted()
    _, out = feed(conn, b"AUTH XTOKEN\r\n")
    assert codes(out) == [535]
    assert conn.session.authenticated is False


def test_send_challenge_without_auth_event() -> None:
    conn = greeted()
    conn.receive_data(b"NOOP\r\n")
    assert isinstance(conn.next_event(), Noop)
    with pytest.raises(LocalProtocolError):
        conn.send_challenge(b"x")


def test_send_challenge_for_builtin_credentials() -> None:
    conn = greeted()
    conn.receive_data(b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    assert isinstance(conn.next_event(), AuthCredentials)
    with pytest.raises(LocalProtocolError):
        conn.send_challenge(b"x")
