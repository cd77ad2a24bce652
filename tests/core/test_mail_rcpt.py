"""Tests of MAIL FROM and RCPT TO: path syntax, ESMTP parameters and the envelope."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import codes, feed, new_connection
from smtpproto import MailFrom, RcptTo, ServerConnection

MAIL_SYNTAX_ESMTP = b"501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]\r\n"
RCPT_SYNTAX_ESMTP = b"501 5.5.4 Syntax: RCPT TO:<address> [SP <mail-parameters>]\r\n"
BAD_SENDER = b"553 5.1.7 Error: malformed sender address\r\n"
BAD_RECIPIENT = b"501 5.1.3 Error: malformed recipient address\r\n"
MAIL_PARAM_UNKNOWN = (
    b"555 5.5.4 MAIL FROM parameters not recognized or not implemented\r\n"
)
RCPT_PARAM_UNKNOWN = (
    b"555 5.5.4 RCPT TO parameters not recognized or not implemented\r\n"
)
PARAM_DUPLICATE = b"501 5.5.4 Error: parameter given twice\r\n"
PARAM_SYNTAX = b"501 5.5.4 Error: invalid parameter syntax\r\n"
DSN_INVALID = b"501 5.5.4 Error: invalid DSN parameter value\r\n"


def greeted(
    hello: bytes = b"EHLO client.example\r\n", **options: Any
) -> ServerConnection:
    conn = new_connection(**options)
    _, out = feed(conn, hello)
    assert codes(out) == [250]
    return conn


def in_transaction(**options: Any) -> ServerConnection:
    conn = greeted(**options)
    _, out = feed(conn, b"MAIL FROM:<sender@example.org>\r\n")
    assert codes(out) == [250]
    return conn


# Path syntax, shared by MAIL and RCPT


VALID_PATHS = [
    pytest.param("<user@example.com>", "user@example.com", id="plain"),
    pytest.param(
        "<first.last@sub.example.com>", "first.last@sub.example.com", id="dots"
    ),
    pytest.param("<a+tag@example.com>", "a+tag@example.com", id="plus"),
    pytest.param("<!#$%&'*/=?^_`{|}~-@example.com>", None, id="all-atext"),
    pytest.param(
        '<"john doe"@example.com>', '"john doe"@example.com', id="quoted-space"
    ),
    pytest.param('<"a@b"@example.com>', '"a@b"@example.com', id="quoted-at"),
    pytest.param('<"a\\"b"@example.com>', '"a\\"b"@example.com', id="quoted-pair"),
    pytest.param('<"a..b"@example.com>', '"a..b"@example.com', id="quoted-dots"),
    pytest.param('<""@example.com>', '""@example.com', id="quoted-empty"),
    pytest.param("<user@[192.0.2.1]>", "user@[192.0.2.1]", id="ipv4-literal"),
    pytest.param("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", id="ipv6"),
    pytest.param(
        "<user@[ipv6:2001:db8::1]>", "user@[ipv6:2001:db8::1]", id="ipv6-lower"
    ),
    pytest.param("<user@[IPV6:::1]>", "user@[IPV6:::1]", id="ipv6-upper"),
    pytest.param(
        "<user@[IPv6:::ffff:192.0.2.1]>", "user@[IPv6:::ffff:192.0.2.1]", id="ipv6-v4"
    ),
    pytest.param("<@relay.example:user@example.com>", "user@example.com", id="route"),
    pytest.param(
        "<@a.example,@b.example:user@example.com>", "user@example.com", id="route-two"
    ),
    pytest.param("<user@xn--bcher-kva.example>", None, id="a-label"),
    pytest.param("<user@a-b.example>", None, id="hyphen-domain"),
    pytest.param("<user@localhost>", None, id="one-label"),
    pytest.param("<" + "l" * 64 + "@example.com>", None, id="local-64"),
]

INVALID_PATHS = [
    pytest.param("<user example.com>", id="no-at"),
    pytest.param("<user@>", id="empty-domain"),
    pytest.param("<@example.com>", id="empty-local"),
    pytest.param("<a b@example.com>", id="space-local"),
    pytest.param("<.user@example.com>", id="leading-dot"),
    pytest.param("<user.@example.com>", id="trailing-dot"),
    pytest.param("<us..er@example.com>", id="double-dot"),
    pytest.param("<user@example..com>", id="domain-double-dot"),
    pytest.param("<user@-example.com>", id="domain-leading-hyphen"),
    pytest.param("<user@example-.com>", id="domain-trailing-hyphen"),
    pytest.param("<user@exa_mple.com>", id="domain-underscore"),
    pytest.param("<user@@example.com>", id="double-at"),
    pytest.param("<user@[192.0.2]>", id="ipv4-short"),
    pytest.param("<user@[192.0.2.256]>", id="ipv4-octet"),
    pytest.param("<user@[IPv6:2001:db8::g]>", id="ipv6-hex"),
    pytest.param("<user@[IPv6:1::2::3]>", id="ipv6-two-gaps"),
    pytest.param("<user@[]>", id="literal-empty"),
    pytest.param("<@:user@example.com>", id="route-empty"),
    pytest.param("<" + "a" * 250 + "@example.com>", id="path-over-256"),
]

# Syntax errors outside the angle brackets, which get the command's syntax reply.
MALFORMED_ARGUMENTS = [
    pytest.param("{verb}:user@example.com", id="no-brackets"),
    pytest.param("{verb}:<user@example.com", id="no-closing"),
    pytest.param("{verb}:<user@example.com>x", id="junk-after"),
    pytest.param('{verb}:<"unclosed@example.com>', id="unclosed-quote"),
    pytest.param("{verb} <user@example.com>", id="no-colon"),
    pytest.param("{verb}", id="no-path"),
    pytest.param("", id="no-argument"),
]


@pytest.mark.parametrize(("path", "expected"), VALID_PATHS)
def test_mail_valid_path(path: str, expected: str | None) -> None:
    conn = greeted()
    events, out = feed(conn, f"MAIL FROM:{path}\r\n".encode())
    address = expected if expected is not None else path[1:-1]
    assert events == [MailFrom(address=address)]
    assert out == b"250 2.1.0 OK\r\n"
    assert conn.envelope.mail_from == address


@pytest.mark.parametrize(("path", "expected"), VALID_PATHS)
def test_rcpt_valid_path(path: str, expected: str | None) -> None:
    conn = in_transaction()
    events, out = feed(conn, f"RCPT TO:{path}\r\n".encode())
    address = expected if expected is not None else path[1:-1]
    assert events == [RcptTo(address=address)]
    assert out == b"250 2.1.5 OK\r\n"
    assert conn.envelope.rcpt_tos == [address]


@pytest.mark.parametrize("path", INVALID_PATHS)
def test_mail_invalid_path(path: str) -> None:
    conn = greeted()
    events, out = feed(conn, f"MAIL FROM:{path}\r\n".encode())
    assert events == []
    assert out == BAD_SENDER
    assert conn.envelope.mail_from is None


@pytest.mark.parametrize("path", INVALID_PATHS)
def test_rcpt_invalid_path(path: str) -> None:
    conn = in_transaction()
    events, out = feed(conn, f"RCPT TO:{path}\r\n".encode())
    assert events == []
    assert out == BAD_RECIPIENT
    assert conn.envelope.rcpt_tos == []


@pytest.mark.parametrize("template", MALFORMED_ARGUMENTS)
def test_mail_malformed_argument(template: str) -> None:
    conn = greeted()
    argument = template.format(verb="FROM")
    events, out = feed(conn, f"MAIL {argument}".rstrip().encode() + b"\r\n")
    assert events == []
    assert out == MAIL_SYNTAX_ESMTP


@pytest.mark.parametrize("template", MALFORMED_ARGUMENTS)
def test_rcpt_malformed_argument(template: str) -> None:
    conn = in_transaction()
    argument = template.format(verb="TO")
    events, out = feed(conn, f"RCPT {argument}".rstrip().encode() + b"\r\n")
    assert events == []
    assert out == RCPT_SYNTAX_ESMTP


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"MAIL FROM:<user@[IPv6:fe80::1%eth0]>\r\n", id="mail"),
        pytest.param(b"EHLO [IPv6:fe80::1%eth0]\r\n", id="ehlo"),
    ],
)
def test_ipv6_literal_zone_rejected(line: bytes) -> None:
    # RFC 5321, section 4.1.3: IPv6-addr is hex groups, colons and an optional
    # dotted IPv4 tail; a "%zone" suffix is not part of the grammar.
    conn = new_connection()
    if line.startswith(b"MAIL"):
        feed(conn, b"EHLO client.example\r\n")
    events, out = feed(conn, line)
    assert events == []
    assert codes(out) in ([501], [553])


def test_syntax_reply_after_helo() -> None:
    conn = greeted(b"HELO client.example\r\n")
    _, out = feed(conn, b"MAIL FROM:user@example.com\r\n")
    assert out == b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
    feed(conn, b"MAIL FROM:<user@example.com>\r\n")
    _, out = feed(conn, b"RCPT TO:user@example.com\r\n")
    assert out == b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"


def test_verbs_and_keywords_case_insensitive() -> None:
    conn = greeted()
    events, out = feed(
        conn, b"mail from:<a@example.com>\r\nrcpt To:<b@example.com>\r\n"
    )
    assert [type(e) for e in events] == [MailFrom, RcptTo]
    assert codes(out) == [250, 250]


def test_space_after_colon_tolerated() -> None:
    conn = greeted()
    events, out = feed(
        conn, b"MAIL FROM: <a@example.com>\r\nRCPT TO: <b@example.com>\r\n"
    )
    assert [type(e) for e in events] == [MailFrom, RcptTo]
    assert codes(out) == [250, 250]


# Null reverse-path and Postmaster


def test_mail_null_path() -> None:
    conn = greeted()
    events, out = feed(conn, b"MAIL FROM:<>\r\n")
    assert events == [MailFrom(address="<>")]
    assert out == b"250 2.1.0 OK\r\n"
    assert conn.envelope.mail_from == "<>"


def test_rcpt_null_path_rejected() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"RCPT TO:<>\r\n")
    assert events == []
    assert out == BAD_RECIPIENT


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Postmaster", id="canonical"),
        pytest.param("postmaster", id="lower"),
        pytest.param("POSTMASTER", id="upper"),
    ],
)
def test_rcpt_postmaster_without_domain(name: str) -> None:
    # RFC 5321, section 4.1.1.3: <Postmaster> with no domain must be accepted.
    conn = in_transaction()
    events, out = feed(conn, f"RCPT TO:<{name}>\r\n".encode())
    assert events == [RcptTo(address=name)]
    assert codes(out) == [250]


def test_mail_postmaster_without_domain_rejected() -> None:
    conn = greeted()
    events, out = feed(conn, b"MAIL FROM:<Postmaster>\r\n")
    assert events == []
    assert out == BAD_SENDER


def test_rcpt_postmaster_with_route_rejected() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"RCPT TO:<@relay.example:Postmaster>\r\n")
    assert events == []
    assert out == BAD_RECIPIENT


# Non-ASCII addresses


def test_non_ascii_without_smtputf8_support() -> None:
    conn = greeted()
    events, out = feed(conn, "MAIL FROM:<josé@example.com>\r\n".encode())
    assert events == []
    assert out == b"500 5.5.2 Error: strict ASCII mode\r\n"


def test_non_ascii_sender_with_smtputf8() -> None:
    conn = greeted(enable_smtputf8=True)
    events, out = feed(conn, "MAIL FROM:<josé@example.com> SMTPUTF8\r\n".encode())
    assert events == [
        MailFrom(address="josé@example.com", params=(("SMTPUTF8", None),))
    ]
    assert codes(out) == [250]
    assert conn.envelope.smtp_utf8 is True
    events, out = feed(conn, "RCPT TO:<zoë@exämple.com>\r\n".encode())
    assert events == [RcptTo(address="zoë@exämple.com")]
    assert codes(out) == [250]


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["MAIL FROM:<josé@example.com>"], id="sender"),
        pytest.param(
            ["MAIL FROM:<a@example.com>", "RCPT TO:<josé@example.com>"], id="rcpt"
        ),
    ],
)
def test_non_ascii_needs_smtputf8_param(lines: list[str]) -> None:
    # RFC 6531, section 3.7.4.1: an SMTPUTF8-aware server rejects a non-ASCII
    # address in a transaction without the SMTPUTF8 parameter with 553 X.6.7.
    conn = greeted(enable_smtputf8=True)
    _, out = feed(conn, "".join(line + "\r\n" for line in lines).encode())
    assert out.split(b"\r\n")[-2].startswith(b"553 5.6.7 ")


def test_smtputf8_flag_cleared_by_rset() -> None:
    conn = greeted(enable_smtputf8=True)
    feed(conn, b"MAIL FROM:<a@example.com> SMTPUTF8\r\nRSET\r\n")
    assert conn.envelope.smtp_utf8 is False
    feed(conn, b"MAIL FROM:<a@example.com>\r\n")
    assert conn.envelope.smtp_utf8 is False
    events, out = feed(conn, "RCPT TO:<josé@example.com>\r\n".encode())
    assert events == []
    assert codes(out)[0] in (501, 553)


def test_smtputf8_flag_cleared_by_rejected_mail() -> None:
    conn = greeted(enable_smtputf8=True)
    conn.receive_data(b"MAIL FROM:<a@example.com> SMTPUTF8\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.send_reply(550, "Not you")
    conn.data_to_send()
    feed(conn, b"MAIL FROM:<a@example.com>\r\n")
    assert conn.envelope.smtp_utf8 is False


# ESMTP parameters of MAIL


@pytest.mark.parametrize(
    ("options", "params", "expected"),
    [
        pytest.param({}, "SIZE=1000", (("SIZE", "1000"),), id="size"),
        pytest.param({}, "size=1000", (("SIZE", "1000"),), id="size-lower"),
        pytest.param({}, "SIZE=0", (("SIZE", "0"),), id="size-zero"),
        pytest.param({}, "SIZE=33554432", (("SIZE", "33554432"),), id="size-at-limit"),
        pytest.param({}, "BODY=7BIT", (("BODY", "7BIT"),), id="body-7bit"),
        pytest.param({}, "BODY=8BITMIME", (("BODY", "8BITMIME"),), id="body-8bit"),
        pytest.param({}, "body=8bitmime", (("BODY", "8bitmime"),), id="body-lower"),
        pytest.param(
            {"enable_smtputf8": True}, "SMTPUTF8", (("SMTPUTF8", None),), id="smtputf8"
        ),
        pytest.param(
            {"enable_smtputf8": True},
            "smtputf8",
            (("SMTPUTF8", None),),
            id="utf8-lower",
        ),
        pytest.param(
            {"enable_dsn": True}, "RET=FULL", (("RET", "FULL"),), id="ret-full"
        ),
        pytest.param(
            {"enable_dsn": True}, "ret=hdrs", (("RET", "hdrs"),), id="ret-lower"
        ),
        pytest.param(
            {"enable_dsn": True}, "ENVID=QQ314159", (("ENVID", "QQ314159"),), id="envid"
        ),
        pytest.param(
            {"enable_dsn": True}, "ENVID=a+2Bb", (("ENVID", "a+2Bb"),), id="envid-xtext"
        ),
        pytest.param(
            {"auth_mechanisms": ("PLAIN",)},
            "AUTH=<>",
            (("AUTH", "<>"),),
            id="auth-null",
        ),
        pytest.param(
            {"auth_mechanisms": ("PLAIN",)},
            "AUTH=e+3Dmc2@example.com",
            (("AUTH", "e+3Dmc2@example.com"),),
            id="auth-xtext",
        ),
        pytest.param(
            {"enable_dsn": True},
            "SIZE=10  BODY=7BIT   RET=HDRS",
            (("SIZE", "10"), ("BODY", "7BIT"), ("RET", "HDRS")),
            id="several",
        ),
    ],
)
def test_mail_param_accepted(
    options: dict[str, Any], params: str, expected: tuple[tuple[str, str | None], ...]
) -> None:
    conn = greeted(**options)
    events, out = feed(conn, f"MAIL FROM:<a@example.com> {params}\r\n".encode())
    assert events == [MailFrom(address="a@example.com", params=expected)]
    assert codes(out) == [250]
    options_list = [k if v is None else f"{k}={v}" for k, v in expected]
    assert conn.envelope.mail_options == options_list


@pytest.mark.parametrize(
    ("options", "params", "reply"),
    [
        pytest.param({}, "FOO=1", MAIL_PARAM_UNKNOWN, id="unknown"),
        pytest.param({}, "XFORWARD", MAIL_PARAM_UNKNOWN, id="unknown-no-value"),
        pytest.param({}, "SMTPUTF8", MAIL_PARAM_UNKNOWN, id="smtputf8-disabled"),
        pytest.param({}, "RET=FULL", MAIL_PARAM_UNKNOWN, id="ret-dsn-disabled"),
        pytest.param({}, "ENVID=x", MAIL_PARAM_UNKNOWN, id="envid-dsn-disabled"),
        pytest.param({}, "AUTH=<>", MAIL_PARAM_UNKNOWN, id="auth-disabled"),
        pytest.param(
            {"enable_8bitmime": False},
            "BODY=8BITMIME",
            MAIL_PARAM_UNKNOWN,
            id="body-off",
        ),
        pytest.param(
            {},
            "SIZE=x",
            b"501 5.5.4 Error: SIZE must be a number of octets\r\n",
            id="size-nan",
        ),
        pytest.param(
            {},
            "SIZE",
            b"501 5.5.4 Error: SIZE must be a number of octets\r\n",
            id="size-none",
        ),
        pytest.param(
            {},
            "SIZE=-1",
            b"501 5.5.4 Error: SIZE must be a number of octets\r\n",
            id="size-neg",
        ),
        pytest.param(
            {},
            "SIZE=33554433",
            b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n",
            id="size-over",
        ),
        pytest.param(
            {"max_message_size": 100},
            "SIZE=101",
            b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n",
            id="size-over-custom",
        ),
        pytest.param(
            {},
            "BODY=BINARYMIME",
            b"501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME\r\n",
            id="body-binary",
        ),
        pytest.param(
            {},
            "BODY",
            b"501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME\r\n",
            id="body-none",
        ),
        pytest.param(
            {"enable_smtputf8": True},
            "SMTPUTF8=yes",
            b"501 5.5.4 Error: SMTPUTF8 takes no arguments\r\n",
            id="smtputf8-value",
        ),
        pytest.param({"enable_dsn": True}, "RET=ALL", DSN_INVALID, id="ret-value"),
        pytest.param({"enable_dsn": True}, "RET", DSN_INVALID, id="ret-none"),
        pytest.param({"enable_dsn": True}, "ENVID", DSN_INVALID, id="envid-none"),
        pytest.param({"enable_dsn": True}, "ENVID=a+0Ab", DSN_INVALID, id="envid-ctl"),
        pytest.param(
            {"enable_dsn": True}, "ENVID=a+zz", DSN_INVALID, id="envid-escape"
        ),
        pytest.param(
            {"enable_dsn": True}, "ENVID=" + "x" * 101, DSN_INVALID, id="envid-long"
        ),
        pytest.param(
            {"auth_mechanisms": ("PLAIN",)},
            "AUTH=a+0Db",
            b"501 5.5.4 Error: invalid AUTH parameter\r\n",
            id="auth-ctl",
        ),
        pytest.param(
            {"auth_mechanisms": ("PLAIN",)},
            "AUTH",
            b"501 5.5.4 Error: invalid AUTH parameter\r\n",
            id="auth-none",
        ),
        pytest.param({}, "SIZE=1 SIZE=2", PARAM_DUPLICATE, id="duplicate"),
        pytest.param({}, "SIZE=1 size=2", PARAM_DUPLICATE, id="duplicate-case"),
        pytest.param({}, "=1", PARAM_SYNTAX, id="no-keyword"),
        pytest.param({}, "-X=1", PARAM_SYNTAX, id="keyword-hyphen-first"),
        pytest.param({}, "SIZE=", PARAM_SYNTAX, id="empty-value"),
        pytest.param({}, "X=a=b", PARAM_SYNTAX, id="equals-in-value"),
    ],
)
def test_mail_param_rejected(
    options: dict[str, Any], params: str, reply: bytes
) -> None:
    conn = greeted(**options)
    events, out = feed(conn, f"MAIL FROM:<a@example.com> {params}\r\n".encode())
    assert events == []
    assert out == reply
    assert conn.envelope.mail_from is None
    # The transaction never started, so RCPT is out of sequence.
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\n")
    assert codes(out) == [503]


def test_mail_huge_size_value_rejected() -> None:
    conn = greeted(max_message_size=10**30)
    _, out = feed(conn, b"MAIL FROM:<a@example.com> SIZE=" + b"9" * 21 + b"\r\n")
    assert codes(out) == [501]


def test_size_unlimited_advertised_bare() -> None:
    # RFC 1870, section 4: SIZE with no value means no fixed maximum.
    conn = new_connection(max_message_size=None)
    events, _ = feed(conn, b"EHLO client.example\r\n")
    assert "SIZE" in events[0].extensions  # type: ignore[attr-defined]
    _, out = feed(conn, b"MAIL FROM:<a@example.com> SIZE=99999999999\r\n")
    assert codes(out) == [250]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"MAIL FROM:<a@example.com> SIZE=10\r\n", id="mail"),
        pytest.param(b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\n", id="mail-body"),
    ],
)
def test_mail_params_after_helo(line: bytes) -> None:
    conn = greeted(b"HELO client.example\r\n")
    events, out = feed(conn, line)
    assert events == []
    assert out == b"501 5.5.4 Parameters require EHLO\r\n"


def test_rcpt_params_after_helo() -> None:
    conn = greeted(b"HELO client.example\r\n", enable_dsn=True)
    feed(conn, b"MAIL FROM:<a@example.com>\r\n")
    events, out = feed(conn, b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\n")
    assert events == []
    assert out == b"501 5.5.4 Parameters require EHLO\r\n"


# ESMTP parameters of RCPT


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param("NOTIFY=NEVER", (("NOTIFY", "NEVER"),), id="never"),
        pytest.param("notify=never", (("NOTIFY", "never"),), id="never-lower"),
        pytest.param(
            "NOTIFY=SUCCESS,FAILURE", (("NOTIFY", "SUCCESS,FAILURE"),), id="list"
        ),
        pytest.param(
            "NOTIFY=delay,Success,FAILURE",
            (("NOTIFY", "delay,Success,FAILURE"),),
            id="list-mixed-case",
        ),
        pytest.param(
            "ORCPT=rfc822;user@example.com",
            (("ORCPT", "rfc822;user@example.com"),),
            id="orcpt",
        ),
        pytest.param(
            "orcpt=RFC822;a+2Bb@example.com",
            (("ORCPT", "RFC822;a+2Bb@example.com"),),
            id="orcpt-xtext",
        ),
        pytest.param(
            "NOTIFY=FAILURE ORCPT=rfc822;u@example.com",
            (("NOTIFY", "FAILURE"), ("ORCPT", "rfc822;u@example.com")),
            id="both",
        ),
    ],
)
def test_rcpt_param_accepted(
    params: str, expected: tuple[tuple[str, str | None], ...]
) -> None:
    conn = in_transaction(enable_dsn=True)
    events, out = feed(conn, f"RCPT TO:<b@example.com> {params}\r\n".encode())
    assert events == [RcptTo(address="b@example.com", params=expected)]
    assert codes(out) == [250]
    assert conn.envelope.rcpt_options == [f"{k}={v}" for k, v in expected]


@pytest.mark.parametrize(
    ("options", "params", "reply"),
    [
        pytest.param({}, "FOO=1", RCPT_PARAM_UNKNOWN, id="unknown"),
        pytest.param({}, "NOTIFY=NEVER", RCPT_PARAM_UNKNOWN, id="notify-dsn-off"),
        pytest.param({}, "ORCPT=rfc822;a@b", RCPT_PARAM_UNKNOWN, id="orcpt-dsn-off"),
        pytest.param({}, "SIZE=10", RCPT_PARAM_UNKNOWN, id="mail-param"),
        pytest.param({"enable_dsn": True}, "NOTIFY", DSN_INVALID, id="notify-none"),
        pytest.param(
            {"enable_dsn": True}, "NOTIFY=ALWAYS", DSN_INVALID, id="notify-word"
        ),
        pytest.param(
            {"enable_dsn": True}, "NOTIFY=NEVER,SUCCESS", DSN_INVALID, id="never-mixed"
        ),
        pytest.param(
            {"enable_dsn": True}, "NOTIFY=SUCCESS,", DSN_INVALID, id="notify-comma"
        ),
        pytest.param(
            {"enable_dsn": True}, "ORCPT=rfc822", DSN_INVALID, id="orcpt-no-addr"
        ),
        pytest.param(
            {"enable_dsn": True}, "ORCPT=;a@b", DSN_INVALID, id="orcpt-no-type"
        ),
        pytest.param(
            {"enable_dsn": True}, "ORCPT=rfc822;a+0Db", DSN_INVALID, id="orcpt-ctl"
        ),
        pytest.param(
            {"enable_dsn": True}, "NOTIFY=NEVER notify=NEVER", PARAM_DUPLICATE, id="dup"
        ),
        pytest.param({"enable_dsn": True}, "NOTIFY=", PARAM_SYNTAX, id="empty-value"),
    ],
)
def test_rcpt_param_rejected(
    options: dict[str, Any], params: str, reply: bytes
) -> None:
    conn = in_transaction(**options)
    events, out = feed(conn, f"RCPT TO:<b@example.com> {params}\r\n".encode())
    assert events == []
    assert out == reply
    assert conn.envelope.rcpt_tos == []


# Sequence and envelope


def test_rcpt_before_mail() -> None:
    conn = greeted()
    events, out = feed(conn, b"RCPT TO:<b@example.com>\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: need MAIL command\r\n"


def test_nested_mail() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"MAIL FROM:<other@example.com>\r\n")
    assert events == []
    assert out == b"503 5.5.1 Error: nested MAIL command\r\n"
    assert conn.envelope.mail_from == "sender@example.org"


def test_mail_rejected_by_application() -> None:
    conn = greeted()
    conn.receive_data(b"MAIL FROM:<a@example.com>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.send_reply(550, "Sender blocked")
    assert conn.data_to_send() == b"550 5.1.0 Sender blocked\r\n"
    assert conn.envelope.mail_from is None
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\n")
    assert codes(out) == [503]
    # A new MAIL is not nested: the rejected one started no transaction.
    events, out = feed(conn, b"MAIL FROM:<c@example.com>\r\n")
    assert [type(e) for e in events] == [MailFrom]
    assert codes(out) == [250]


def test_rcpt_rejected_by_application() -> None:
    conn = in_transaction()
    conn.receive_data(b"RCPT TO:<b@example.com>\r\n")
    assert isinstance(conn.next_event(), RcptTo)
    conn.send_reply(550, "No such user")
    assert conn.data_to_send() == b"550 5.1.5 No such user\r\n"
    assert conn.envelope.rcpt_tos == []


def test_envelope_collects_recipients_in_order() -> None:
    conn = in_transaction(enable_dsn=True)
    feed(
        conn,
        b"RCPT TO:<one@example.com> NOTIFY=NEVER\r\n"
        b"RCPT TO:<two@example.com>\r\n"
        b"RCPT TO:<three@example.com> ORCPT=rfc822;x@example.com\r\n",
    )
    assert conn.envelope.rcpt_tos == [
        "one@example.com",
        "two@example.com",
        "three@example.com",
    ]
    assert conn.envelope.rcpt_options == ["NOTIFY=NEVER", "ORCPT=rfc822;x@example.com"]


def test_duplicate_recipient_kept() -> None:
    conn = in_transaction()
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\nRCPT TO:<b@example.com>\r\n")
    assert codes(out) == [250, 250]
    assert conn.envelope.rcpt_tos == ["b@example.com", "b@example.com"]


def test_rset_clears_envelope() -> None:
    conn = in_transaction()
    feed(conn, b"RCPT TO:<b@example.com>\r\n")
    old = conn.envelope
    _, out = feed(conn, b"RSET\r\n")
    assert out == b"250 2.0.0 OK\r\n"
    assert conn.envelope is not old
    assert conn.envelope.mail_from is None
    assert conn.envelope.rcpt_tos == []
    _, out = feed(conn, b"RCPT TO:<b@example.com>\r\n")
    assert codes(out) == [503]


def test_rset_with_argument() -> None:
    conn = in_transaction()
    events, out = feed(conn, b"RSET now\r\n")
    assert events == []
    assert out == b"501 5.5.4 Syntax: RSET\r\n"
    assert conn.envelope.mail_from == "sender@example.org"
