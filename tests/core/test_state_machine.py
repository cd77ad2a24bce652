"""Stateful test: random command sequences against a reference model of SMTP.

The model tracks what RFC 5321 makes the reply depend on: whether HELO or
EHLO was accepted, the sender, the accepted recipients, whether a recipient
was tried, BDAT state and the count of client errors (replies 500-504). It
predicts the reply code of every command and the envelope after every step.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from helpers import body, codes, drain
from smtpproto import (
    ConnectionClosed,
    DataComplete,
    DataRejected,
    Ehlo,
    Event,
    Helo,
    MailFrom,
    RcptTo,
    ServerConnection,
    ServerState,
)

MAX_ERRORS = 10

VALID_SENDERS = ["a@example.com", "first.last@sub.example.org", ""]
VALID_RECIPIENTS = ["b@example.com", "postmaster", '"quoted name"@example.net']
# (argument of MAIL, reply code): malformed paths get 553 5.1.7, bad syntax 501.
INVALID_MAIL = [
    ("FROM:<not an address>", 553),
    ("FROM:<a@@example.com>", 553),
    ("FROM:no-brackets@example.com", 501),
    ("TO:<a@example.com>", 501),
    ("FROM:<a@example.com> UNKNOWN=1", 555),
]
# Every malformed RCPT gets 501 (5.5.4 syntax or 5.1.3 bad address).
INVALID_RCPT = [
    "TO:<>",
    "TO:<a b@example.com>",
    "TO:no-brackets@example.com",
    "FROM:<b@example.com>",
]
BODY_LINE = st.sampled_from([b"", b".", b"..", b".x", b"Subject: hi", b"text"])


def stuff(lines: list[bytes]) -> bytes:
    return b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)


def is_client_error(code: int) -> bool:
    return 500 <= code <= 504


class SmtpModel(RuleBasedStateMachine):
    """Reference model of one SMTP session, checked against the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.connect()

    # ------------------------------------------------------------ model helpers

    def connect(self) -> None:
        self.conn = ServerConnection("mx.example.com", max_errors=MAX_ERRORS)
        self.conn.accept()
        assert codes(self.conn.data_to_send()) == [220]
        self.hello = False
        self.extended = False
        self.errors = 0
        self.reset_transaction()

    def reset_transaction(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.rcpt_tried = False
        self.bdat_active = False

    def exchange(
        self, data: bytes, rejections: dict[type[Event], int] | None = None
    ) -> tuple[list[Event], list[int]]:
        """Send ``data``; reply to events with accept() or the given rejection."""
        rejections = rejections or {}

        def respond(conn: ServerConnection, event: Event) -> None:
            code = rejections.get(type(event))
            if code is None:
                conn.accept()
            else:
                conn.send_reply(code)

        self.conn.receive_data(data)
        events = drain(self.conn, respond)
        # expect() checks the close that a 421 causes.
        events = [e for e in events if not isinstance(e, ConnectionClosed)]
        return events, codes(self.conn.data_to_send())

    def expect(self, got: list[int], expected: int) -> None:
        """Check the reply code and count client errors as the engine does."""
        if is_client_error(expected):
            self.errors += 1
        if self.errors > MAX_ERRORS:
            assert got == [expected, 421]
            assert self.conn.closed
            self.connect()
            return
        assert got == [expected]

    # ------------------------------------------------------------ rules

    @rule(verb=st.sampled_from(["HELO", "EHLO"]), reject=st.booleans())
    def hello_valid(self, verb: str, reject: bool) -> None:
        rejections = {Helo: 550, Ehlo: 550} if reject else None
        _, got = self.exchange(verb.encode() + b" client.example\r\n", rejections)
        if reject:
            self.expect(got, 550)
            return
        self.expect(got, 250)
        self.hello = True
        self.extended = verb == "EHLO"
        self.reset_transaction()
        assert self.conn.session.host_name == "client.example"

    @rule(line=st.sampled_from([b"HELO\r\n", b"EHLO\r\n", b"EHLO [300.1.2.3]\r\n"]))
    def hello_invalid(self, line: bytes) -> None:
        _, got = self.exchange(line)
        self.expect(got, 501)

    @rule(address=st.sampled_from(VALID_SENDERS), reject=st.booleans())
    def mail_valid(self, address: str, reject: bool) -> None:
        line = f"MAIL FROM:<{address}>\r\n".encode()
        events, got = self.exchange(line, {MailFrom: 550} if reject else None)
        if not self.hello or self.sender is not None:
            self.expect(got, 503)
            return
        assert [type(e) for e in events] == [MailFrom]
        if reject:
            self.expect(got, 550)
            return
        self.expect(got, 250)
        self.sender = address or "<>"

    @rule(case=st.sampled_from(INVALID_MAIL))
    def mail_invalid(self, case: tuple[str, int]) -> None:
        argument, code = case
        events, got = self.exchange(f"MAIL {argument}\r\n".encode())
        assert events == []
        if not self.hello or self.sender is not None:
            self.expect(got, 503)
            return
        if code == 555 and not self.extended:
            code = 501  # parameters need EHLO
        self.expect(got, code)

    @rule(address=st.sampled_from(VALID_RECIPIENTS), reject=st.booleans())
    def rcpt_valid(self, address: str, reject: bool) -> None:
        line = f"RCPT TO:<{address}>\r\n".encode()
        events, got = self.exchange(line, {RcptTo: 550} if reject else None)
        if self.sender is None:
            self.expect(got, 503)
            return
        assert [type(e) for e in events] == [RcptTo]
        self.rcpt_tried = True
        if reject:
            self.expect(got, 550)
            return
        self.expect(got, 250)
        self.recipients.append(address)

    @rule(argument=st.sampled_from(INVALID_RCPT))
    def rcpt_invalid(self, argument: str) -> None:
        events, got = self.exchange(f"RCPT {argument}\r\n".encode())
        assert events == []
        if self.sender is None:
            self.expect(got, 503)
            return
        self.rcpt_tried = True
        self.expect(got, 501)

    @rule(lines=st.lists(BODY_LINE, max_size=6), reject=st.booleans())
    def data(self, lines: list[bytes], reject: bool) -> None:
        rejections = {DataComplete: 550} if reject else None
        _, got = self.exchange(b"DATA\r\n", rejections)
        if self.sender is None or self.bdat_active:
            self.expect(got, 503)
            return
        if not self.recipients:
            self.expect(got, 554 if self.rcpt_tried else 503)
            return
        self.expect(got, 354)
        content = b"".join(x + b"\r\n" for x in lines)
        events, got = self.exchange(stuff(lines) + b".\r\n", rejections)
        assert body(events) == content
        assert isinstance(events[-1], DataComplete)
        self.expect(got, 550 if reject else 250)
        self.reset_transaction()

    @rule(size=st.integers(0, 20), last=st.booleans(), reject=st.booleans())
    def bdat(self, size: int, last: bool, reject: bool) -> None:
        command = f"BDAT {size}{' LAST' if last else ''}\r\n".encode()
        chunk = b"x" * size
        rejections = {DataComplete: 550} if reject else None
        events, got = self.exchange(command + chunk, rejections)
        if self.sender is None or not self.recipients:
            assert events == []
            self.expect(got, 503)
            return
        self.bdat_active = True
        if not last:
            self.expect(got, 250)
            return
        assert isinstance(events[-1], DataComplete)
        self.expect(got, 550 if reject else 250)
        self.reset_transaction()

    @rule()
    def rset(self) -> None:
        events, got = self.exchange(b"RSET\r\n")
        if self.bdat_active:
            assert isinstance(events[0], DataRejected)
        self.expect(got, 250)
        self.reset_transaction()

    @rule()
    def noop(self) -> None:
        _, got = self.exchange(b"NOOP\r\n")
        self.expect(got, 250)

    @rule()
    def quit(self) -> None:
        _, got = self.exchange(b"QUIT\r\n")
        assert got == [221]
        assert self.conn.closed
        self.connect()

    # ------------------------------------------------------------ invariants

    @invariant()
    def envelope_matches(self) -> None:
        envelope = self.conn.envelope
        assert envelope.mail_from == self.sender
        assert envelope.rcpt_tos == self.recipients

    @invariant()
    def session_matches(self) -> None:
        assert self.conn.session.extended_smtp == self.extended
        if not self.hello:
            assert self.conn.session.host_name is None

    @invariant()
    def engine_waits_for_command(self) -> None:
        assert self.conn.pending is None
        assert self.conn.state is ServerState.COMMAND
        assert not self.conn.closed
        assert self.conn.data_to_send() == b""


SmtpModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSmtpModel = SmtpModel.TestCase
