"""Hypothesis properties of the engine, driven directly with no sockets.

Read boundaries never change what the engine does. Random bytes never raise and
always get well-formed replies. Dot-stuffing round-trips any body, and no byte
sequence other than CRLF.CRLF ends a message. A line with no end never grows
the buffer.
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import NOTIFICATIONS, body, codes, drain, feed, merge_chunks
from smtpproto import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthCredentials,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    DataRejected,
    Event,
    MailFrom,
    ProxyHeader,
    Quit,
    RcptTo,
    ServerConnection,
    StartTLS,
)

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
POLICIES = ("reject", "normalize", "allow")

# A reply line: code, then "-" or " " and text, or the bare code when the
# text is empty (the trailing space is stripped).
REPLY_LINE = re.compile(rb"([2-5]\d\d)(?:([ -])([^\r\n]*))?\Z")


def connect(**options: Any) -> ServerConnection:
    conn = ServerConnection("mx.example.com", **options)
    conn.accept()
    conn.data_to_send()
    return conn


def run_pieces(
    options: dict[str, Any], pieces: list[bytes]
) -> tuple[list[Event], bytes]:
    """Feed ``pieces`` to a greeted connection, then EOF; accept every event."""
    conn = connect(**options)
    events: list[Event] = []
    out = b""
    for piece in pieces:
        more, sent = feed(conn, piece)
        events += more
        out += sent
    if not conn.closed:
        more, sent = feed(conn, b"")
        events += more
        out += sent
    return merge_chunks(events), out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def canonical_events(events: list[Event]) -> list[Event]:
    """Replace the DataChunk events of each message by one chunk of its content.

    Chunks of a message that does not complete are dropped: depending on read
    boundaries the engine may deliver a piece before it detects the error that
    rejects the message, and DataRejected tells the application to discard it.
    """
    result: list[Event] = []
    content = b""
    for event in events:
        if isinstance(event, DataChunk):
            content += event.data
            continue
        if isinstance(event, DataComplete):
            result.append(DataChunk(data=content))
        if not isinstance(event, Bdat):
            content = b""
        result.append(event)
    return result


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


def assert_well_formed(out: bytes) -> None:
    """Fail unless ``out`` is complete, well-formed SMTP reply lines."""
    if not out:
        return
    assert out.endswith(b"\r\n"), out[-60:]
    is_opencode = None
    for line in out[:-2].split(b"\r\n"):
        match = REPLY_LINE.match(line)
        assert match is not None, line
        if is_opencode is not None:
            assert match.group(1) == is_opencode, line
        if match.group(1) == b"334":
            assert match.group(2) == b" ", line
            base64.b64decode(match.group(3), validate=True)
        is_opencode = match.group(1) if match.group(2) == b"-" else None
    assert is_opencode is None, out[-60:]


# ------------------------------------------------------------ 1. read boundaries


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


AUTH_OPTIONS = {"auth_mechanisms": ("PLAIN", "LOGIN"), "auth_require_tls": False}

DIALOGS: dict[str, tuple[dict[str, Any], bytes]] = {
    "transaction": (
        {},
        (
            b"EHLO client.example\r\n"
            b"MAIL FROM:<sender@example.com> SIZE=20 BODY=8BITMIME\r\n"
            b"RCPT TO:<rcpt@example.com>\r\n"
            b"DATA\r\n"
            b"Subject: test\r\n\r\nHello\r\n.\r\n"
            b"QUIT\r\n"
        ),
    ),
    "pipelined": (
        {},
        (
            b"EHLO client.example\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<c@example.com>\r\nDATA\r\none\r\n.\r\n"
            b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\ntwo\r\n.\r\n"
            b"QUIT\r\n"
        ),
    ),
    "dot_stuffing": (
        {},
        (
            b"HELO client.example\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            b"..\r\n...\r\n..leading\r\n\r\n\r\nmiddle . dot\r\n.. \r\n\r\n.\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            b".\r\n"
            b"QUIT\r\n"
        ),
    ),
    "bdat": (
        {},
        (
            b"EHLO client.example\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"BDAT 7\r\nchunk\r\n"
            b"BDAT 0\r\n"
            b"BDAT 12 LAST\r\n.\r\nQUIT\r\n.\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"BDAT 0 LAST\r\nQUIT\r\n"
        ),
    ),
    "auth_plain": (
        AUTH_OPTIONS,
        b"EHLO client.example\r\n"
        b"AUTH PLAIN " + b64(b"\0user\0secret") + b"\r\n"
        b"MAIL FROM:<a@example.com> AUTH=<>\r\nRSET\r\n"
        b"QUIT\r\n",
    ),
    "auth_plain_continuation": (
        AUTH_OPTIONS,
        b"EHLO client.example\r\nAUTH PLAIN\r\n*\r\n"
        b"AUTH PLAIN\r\n" + b64(b"admin\0user\0secret") + b"\r\nQUIT\r\n",
    ),
    "auth_login": (
        AUTH_OPTIONS,
        b"EHLO client.example\r\n"
        b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\n" + b64(b"secret") + b"\r\n"
        b"QUIT\r\n",
    ),
    "auth_login_initial": (
        AUTH_OPTIONS,
        b"EHLO client.example\r\n"
        b"AUTH LOGIN " + b64(b"user") + b"\r\n" + b64(b"secret") + b"\r\n"
        b"QUIT\r\n",
    ),
    "lmtp": (
        {"lmtp": True},
        (
            b"LHLO client.example\r\n"
            b"MAIL FROM:<a@example.com>\r\n"
            b"RCPT TO:<one@example.com>\r\nRCPT TO:<two@example.com>\r\n"
            b"DATA\r\nline\r\n..dot\r\n.\r\n"
            b"MAIL FROM:<a@example.com>\r\n"
            b"RCPT TO:<one@example.com>\r\nRCPT TO:<two@example.com>\r\n"
            b"BDAT 4 LAST\r\nbody"
            b"QUIT\r\n"
        ),
    ),
    "commands": (
        {},
        (
            b"EHLO client.example\r\nRSET\r\nNOOP\r\nNOOP anything\r\nHELP\r\n"
            b"HELP MAIL\r\nHELP nothing\r\nVRFY user\r\nVRFY\r\nEXPN list\r\n"
            b"MAIL FROM:<a@example.com>\r\nRSET\r\nRCPT TO:<b@example.com>\r\n"
            b"XUNKNOWN arg\r\n\r\nQUIT\r\n"
        ),
    ),
}


REJECTING_DIALOG = (
    {},
    b"EHLO client.example\r\n"
    b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    + b"x" * 998
    + b"\r\n."
    + b"y" * 998
    + b"\r\n.\r\n"
    b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    + b"z" * 1200
    + b"\r\n.\r\n"
    + b"NOOP "
    + b"n" * 600
    + b"\r\nQUIT\r\n",
)


@pytest.mark.parametrize("name", DIALOGS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_split_same_events(name: str, data: st.DataObject) -> None:
    options, dialog = DIALOGS[name]
    cuts = data.draw(cuts_for(dialog))
    whole_events, whole_out = run_pieces(options, [dialog])
    split_events, split_out = run_pieces(options, split_at(dialog, cuts))
    assert split_events == whole_events
    assert split_out == whole_out


EVERY_CUT_CASES = [pytest.param(DIALOGS[name], id=name) for name in DIALOGS]
EVERY_CUT_CASES.append(pytest.param(REJECTING_DIALOG, id="rejecting"))


@pytest.mark.parametrize("case", EVERY_CUT_CASES)
def test_split_every_single_cut(case: tuple[dict[str, Any], bytes]) -> None:
    options, dialog = case
    whole_events, whole_out = run_pieces(options, [dialog])
    for cut in range(1, len(dialog)):
        pieces = [dialog[:cut], dialog[cut:]]
        split_events, split_out = run_pieces(options, pieces)
        assert canonical_events(split_events) == canonical_events(whole_events), cut
        assert split_out == whole_out, cut


@pytest.mark.parametrize("name", DIALOGS)
def test_dialog_policy_independent(name: str) -> None:
    options, dialog = DIALOGS[name]
    results = [
        run_pieces({**options, "bare_line_ending": policy}, [dialog])
        for policy in POLICIES
    ]
    assert results[1] == results[0]
    assert results[2] == results[0]


def test_dialogs_reach_message_end() -> None:
    # Guards the dialogs themselves: each message really completes.
    expected = {"transaction": 1, "pipelined": 2, "dot_stuffing": 2, "bdat": 2}
    expected["lmtp"] = 2
    for name, count in expected.items():
        options, dialog = DIALOGS[name]
        events, _ = run_pieces(options, [dialog])
        ends = [e for e in events if isinstance(e, DataComplete)]
        assert len(ends) == count, name
        assert not any(isinstance(e, DataRejected) for e in events), name


@PROPERTY_SETTINGS
@given(data=st.data())
def test_split_rejected_message(data: st.DataObject) -> None:
    options, dialog = REJECTING_DIALOG
    whole_events, whole_out = run_pieces(options, [dialog])
    cuts = data.draw(cuts_for(dialog))
    split_events, split_out = run_pieces(options, split_at(dialog, cuts))
    assert canonical_events(split_events) == canonical_events(whole_events)
    assert split_out == whole_out
    assert codes(whole_out)[-3:] == [500, 500, 221]


LINE_CONTENT = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b".", b"..", b". ", b".x", b"\r", b"\n", b"\r.", b"\n."]),
)


@pytest.mark.parametrize("policy", POLICIES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_split_bare_line_endings(policy: str, data: st.DataObject) -> None:
    lines = data.draw(st.lists(LINE_CONTENT, max_size=12))
    content = b"".join(lines).replace(b"\r\n.\r\n", b"\r\n..\r\n")
    dialog = (
        b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\nDATA\r\n" + content + b"\r\n.\r\nQUIT\r\n"
    )
    assume(dialog.count(b"\r\n.\r\n") == 1)
    options = {"bare_line_ending": policy}
    cuts = data.draw(cuts_for(dialog))
    whole_events, whole_out = run_pieces(options, [dialog])
    split_events, split_out = run_pieces(options, split_at(dialog, cuts))
    assert canonical_events(split_events) == canonical_events(whole_events)
    assert split_out == whole_out


def has_bare_line_ending(content: bytes) -> bool:
    return re.search(rb"\r(?!\n)|(?<!\r)\n", content) is not None


@pytest.mark.parametrize("policy", ["reject", "normalize"])
@PROPERTY_SETTINGS
@given(lines=st.lists(LINE_CONTENT, max_size=12), data=st.data())
def test_bare_line_ending_never_delivered(
    policy: str, lines: list[bytes], data: st.DataObject
) -> None:
    content = b"".join(lines).replace(b"\r\n.\r\n", b"\r\n..\r\n")
    assume(has_bare_line_ending(content))
    dialog = (
        b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\nDATA\r\n" + content + b"\r\n.\r\nQUIT\r\n"
    )
    assume(dialog.count(b"\r\n.\r\n") == 1)
    options = {"bare_line_ending": policy}
    events, _ = run_pieces(options, split_at(dialog, data.draw(cuts_for(dialog))))
    ends = [e for e in events if isinstance(e, (DataComplete, DataRejected))]
    assert len(ends) == 1
    if policy == "reject":
        assert isinstance(ends[0], DataRejected)
        assert ends[0].code == 550
    else:
        assert isinstance(ends[0], DataComplete)
        assert not has_bare_line_ending(body(events))


# ------------------------------------------------------------ 2. random bytes

GENERIC_CODES = (250, 252, 451, 452, 550, 553, 554, 421)
CODES_BY_EVENT: dict[type[Event], tuple[int, ...]] = {
    Data: (354, 451, 554, 421),
    StartTLS: (220, 454, 421),
    ProxyHeader: (220, 554, 421),
    DataComplete: (250, 550, 451, 421),
    AuthCredentials: (235, 535, 454),
    Auth: (235, 535),
    AuthResponse: (235, 535),
}


class RandomResponder:
    """Reply to each event with accept() or a valid reply drawn by Hypothesis."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def __call__(self, conn: ServerConnection, event: Event) -> None:
        if isinstance(event, Quit) or self.data.draw(st.booleans()):
            conn.accept()
        else:
            choices = CODES_BY_EVENT.get(type(event), GENERIC_CODES)
            code = self.data.draw(st.sampled_from(choices))
            text = self.data.draw(st.sampled_from([None, "text", ["one", "two"]]))
            conn.send_reply(code, text)
        while conn.pending is event:  # LMTP: one reply per accepted recipient
            conn.accept()


TOKENS = st.sampled_from(
    [
        b"EHLO client.example\r\n",
        b"HELO client.example\r\n",
        b"LHLO client.example\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"MAIL FROM:<\xc3\xa9@example.com> SMTPUTF8\r\n",
        b"RCPT TO:<b@example.com>\r\n",
        b"RCPT TO:<>\r\n",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 2 LAST\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"STARTTLS\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b".",
        b"\x00",
        b"\xff",
        b"=",
        b"*\r\n",
    ]
)
NOISE = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(TOKENS, st.binary(max_size=8)), max_size=30).map(b"".join),
)
VALID_PREFIX = (
    b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
    b"RCPT TO:<b@example.com>\r\nDATA\r\n"
)
PROXY_PREFIX = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n"
CONFIGS = st.fixed_dictionaries(
    {
        "bare_line_ending": st.sampled_from(POLICIES),
        "proxy_protocol": st.booleans(),
        "lmtp": st.booleans(),
        "enable_smtputf8": st.booleans(),
        "tls_available": st.booleans(),
        "auth_mechanisms": st.sampled_from([(), ("PLAIN", "LOGIN", "XTEST")]),
        "auth_require_tls": st.just(False),
        "max_errors": st.sampled_from([None, 3, 10]),
    }
)


def run_random_session(
    options: dict[str, Any], pieces: list[bytes], data: st.DataObject
) -> tuple[list[Event], bytes]:
    """Feed ``pieces`` and EOF with random replies; return events and output."""
    conn = ServerConnection("mx.example.com", **options)
    respond = RandomResponder(data)
    if not options["proxy_protocol"]:
        conn.accept()
    events: list[Event] = []
    out = conn.data_to_send()

    def take() -> bool:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return True
            if event is PAUSED:
                conn.tls_established()
                continue
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return False
            if not isinstance(event, NOTIFICATIONS):
                respond(conn, event)

    is_open = take()
    for piece in [*pieces, b""]:
        if not is_open:
            break
        conn.receive_data(piece)
        is_open = take()
        out += conn.data_to_send()
    assert not is_open
    assert conn.closed
    return events, out + conn.data_to_send()


@PROPERTY_SETTINGS
@given(options=CONFIGS, prefix=st.booleans(), noise=NOISE, data=st.data())
def test_random_bytes_never_raise(
    options: dict[str, Any], prefix: bool, noise: bytes, data: st.DataObject
) -> None:
    stream = noise
    if prefix:
        hello = b"LHLO" if options["lmtp"] else b"EHLO"
        stream = VALID_PREFIX.replace(b"EHLO", hello) + noise
    if options["proxy_protocol"]:
        stream = PROXY_PREFIX + stream
    pieces = split_at(stream, data.draw(cuts_for(stream)))
    _, out = run_random_session(options, pieces, data)
    assert_well_formed(out)


# ------------------------------------------------------------ 3. dot-stuffing


def dot_stuff(content: bytes) -> bytes:
    """Stuff ``content`` (CRLF-terminated lines) as a client does."""
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + x if x.startswith(b".") else x for x in lines)


CRLF_LINE = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"", b".", b"..", b".x", b". ."]),
)
BARE_LINE = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r\n", b"")),
    st.sampled_from([b"\n.", b"\r.", b"\n.\n", b"\r.\r", b".\n.", b"\n..\r"]),
)


def deliver(options: dict[str, Any], message: bytes, cuts: list[int]) -> bytes:
    stream = (
        b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\nDATA\r\n" + message
    )
    events, out = run_pieces(options, split_at(stream, cuts))
    assert codes(out)[-1] == 250, out
    completes = [e for e in events if isinstance(e, DataComplete)]
    assert len(completes) == 1
    assert completes[0].size == len(body(events))
    return body(events)


@pytest.mark.parametrize("policy", POLICIES)
@PROPERTY_SETTINGS
@given(lines=st.lists(CRLF_LINE, max_size=15), data=st.data())
def test_dot_stuffing_round_trip(
    policy: str, lines: list[bytes], data: st.DataObject
) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    message = dot_stuff(content) + b".\r\n"
    cuts = data.draw(st.lists(st.integers(0, len(message) + 100), max_size=8))
    options = {"bare_line_ending": policy, "max_text_line": None}
    assert deliver(options, message, cuts) == content


@PROPERTY_SETTINGS
@given(lines=st.lists(BARE_LINE, max_size=15), data=st.data())
def test_dot_stuffing_bare_allow(lines: list[bytes], data: st.DataObject) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    assume(content.count(b"\r\n") == len(lines))
    message = dot_stuff(content) + b".\r\n"
    cuts = data.draw(st.lists(st.integers(0, len(message) + 100), max_size=8))
    options = {"bare_line_ending": "allow", "max_text_line": None}
    assert deliver(options, message, cuts) == content


# ------------------------------------------------------------ 4. smuggling

SMUGGLE = st.one_of(
    st.sampled_from(
        [
            b"\n.\n",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
            b"\r\n. \r\n",
            b"\r\n.\r\x00\n",
            b"\n\r\n.\n",
            b"\r\r\n.\n\n",
        ]
    ),
    st.tuples(st.binary(max_size=3), st.binary(max_size=3)).map(
        lambda t: b"\r\n" + t[0] + b"." + t[1] + b"\r\n"
    ),
)
INNER_TRANSACTION = (
    b"MAIL FROM:<smuggled@evil.example>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"DATA\r\nsmuggled\r\n"
)


@pytest.mark.parametrize("policy", POLICIES)
@PROPERTY_SETTINGS
@given(
    head=st.binary(max_size=60),
    tail=st.binary(max_size=30),
    smuggle=SMUGGLE,
    data=st.data(),
)
def test_smuggling_one_message(
    policy: str, head: bytes, tail: bytes, smuggle: bytes, data: st.DataObject
) -> None:
    payload = head + smuggle + INNER_TRANSACTION + tail + smuggle
    # Only the terminator placed at the end may be a real CRLF.CRLF.
    framed = b"\r\n" + payload + b"\r\n.\r\n"
    assume(framed.find(b"\r\n.\r\n") == len(payload) + 2)
    stream = (
        b"EHLO client.example\r\nMAIL FROM:<sender@example.com>\r\n"
        b"RCPT TO:<rcpt@example.com>\r\nDATA\r\n" + payload + b"\r\n.\r\nQUIT\r\n"
    )
    options = {"bare_line_ending": policy}
    events, out = run_pieces(options, split_at(stream, data.draw(cuts_for(stream))))
    mails = [e for e in events if isinstance(e, MailFrom)]
    rcpts = [e for e in events if isinstance(e, RcptTo)]
    ends = [e for e in events if isinstance(e, (DataComplete, DataRejected))]
    assert [m.address for m in mails] == ["sender@example.com"]
    assert [r.address for r in rcpts] == ["rcpt@example.com"]
    assert len(ends) == 1
    assert isinstance(events[-2], Quit)
    assert_well_formed(out)


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=100, deadline=None)
@given(
    bodies=st.lists(
        st.tuples(st.binary(max_size=30), SMUGGLE, st.binary(max_size=20)),
        min_size=1,
        max_size=3,
    ),
    data=st.data(),
)
def test_smuggling_message_per_terminator(
    policy: str, bodies: list[tuple[bytes, bytes, bytes]], data: st.DataObject
) -> None:
    stream = b"EHLO client.example\r\n"
    senders = []
    for index, (head, smuggle, tail) in enumerate(bodies):
        payload = head + smuggle + INNER_TRANSACTION + tail
        framed = b"\r\n" + payload + b"\r\n.\r\n"
        assume(framed.find(b"\r\n.\r\n") == len(payload) + 2)
        sender = f"sender{index}@example.com"
        senders.append(sender)
        stream += (
            f"MAIL FROM:<{sender}>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n".encode()
            + payload
            + b"\r\n.\r\n"
        )
    stream += b"QUIT\r\n"
    options = {"bare_line_ending": policy}
    events, _ = run_pieces(options, split_at(stream, data.draw(cuts_for(stream))))
    mails = [e.address for e in events if isinstance(e, MailFrom)]
    ends = [e for e in events if isinstance(e, (DataComplete, DataRejected))]
    assert mails == senders
    assert len(ends) == len(bodies)


@settings(max_examples=100, deadline=None)
@given(chunk=st.binary(max_size=80), data=st.data())
def test_bdat_content_never_commands(chunk: bytes, data: st.DataObject) -> None:
    content = chunk + b"\r\n.\r\n" + INNER_TRANSACTION + b".\r\nQUIT\r\n"
    stream = (
        b"EHLO client.example\r\nMAIL FROM:<sender@example.com>\r\n"
        b"RCPT TO:<rcpt@example.com>\r\n"
        + f"BDAT {len(content)} LAST\r\n".encode()
        + content
        + b"NOOP\r\n"
    )
    # Under "allow" the chunk passes unchanged even with bare CR or LF.
    options = {"bare_line_ending": "allow"}
    events, out = run_pieces(options, split_at(stream, data.draw(cuts_for(stream))))
    mails = [e.address for e in events if isinstance(e, MailFrom)]
    assert mails == ["sender@example.com"]
    assert body(events) == content
    assert codes(out)[-2:] == [250, 250]
    assert not any(isinstance(e, Quit) for e in events)


# ------------------------------------------------------------ 5. bounded buffers

MEGABYTE = 1 << 20


def feed_endless_line(
    conn: ServerConnection, total: int, read_size: int
) -> tuple[int, bytes]:
    """Feed ``total`` octets of one line with no LF; return max buffer and output."""
    largest = 0
    out = b""
    sent = 0
    while sent < total and not conn.closed:
        conn.receive_data(b"A" * read_size)
        sent += read_size
        drain(conn)
        largest = max(largest, len(conn._buffer))
        out += conn.data_to_send()
    return largest, out


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=20, deadline=None)
@given(read_size=st.integers(1, 70_000))
def test_command_line_buffer_bounded(policy: str, read_size: int) -> None:
    conn = connect(bare_line_ending=policy)
    largest, out = feed_endless_line(conn, MEGABYTE, max(read_size, 2048))
    assert largest <= 2 * conn.max_command_line
    assert out == b"500 5.5.2 Line too long\r\n"
    _, after = feed(conn, b"\r\nNOOP\r\n")
    assert codes(after) == [250]


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=20, deadline=None)
@given(read_size=st.integers(2048, 70_000))
def test_auth_line_buffer_bounded(policy: str, read_size: int) -> None:
    conn = connect(bare_line_ending=policy, **AUTH_OPTIONS)
    _, out = feed(conn, b"EHLO client.example\r\nAUTH LOGIN\r\n")
    assert codes(out)[-1] == 334
    largest, out = feed_endless_line(conn, MEGABYTE, read_size)
    assert largest <= 2 * conn.max_sasl_response
    assert out == b"500 5.5.6 Authentication exchange line is too long\r\n"
    _, after = feed(conn, b"\r\nNOOP\r\n")
    assert codes(after) == [250]


@pytest.mark.parametrize(
    "start",
    [b"PROXY ", b"PROXY UNKNOWN ", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"],
    ids=["v1", "v1-unknown", "v2-oversized"],
)
def test_proxy_header_buffer_bounded(start: bytes) -> None:
    conn = ServerConnection("mx.example.com", proxy_protocol=True)
    conn.receive_data(start)
    assert conn.next_event() in (NEED_DATA, ConnectionClosed())
    largest, out = feed_endless_line(conn, MEGABYTE, 4096)
    assert largest <= 2 * conn.max_proxy_header
    assert out == b""
    assert conn.closed


@pytest.mark.parametrize("state", ["command", "auth", "data"])
def test_buffer_bounded_large(state: str) -> None:
    conn = connect(**AUTH_OPTIONS)
    if state == "auth":
        feed(conn, b"EHLO client.example\r\nAUTH PLAIN\r\n")
    elif state == "data":
        feed(conn, VALID_PREFIX)
    largest, out = feed_endless_line(conn, 16 * MEGABYTE, 65536)
    assert largest <= 2 * max(conn.max_command_line, conn.max_sasl_response)
    assert len(codes(out)) == (0 if state == "data" else 1)
    _, after = feed(conn, b"\r\n.\r\n" if state == "data" else b"\r\nNOOP\r\n")
    expected = 500 if state == "data" else 250
    assert codes(after) == [expected]
