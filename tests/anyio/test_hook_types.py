"""The hook protocols: runtime checks, and a handler built on them serves mail."""

from __future__ import annotations

import smtplib

from smtpproto import Envelope, Session
from smtpproto_anyio import Controller, SMTPServer
from smtpproto_anyio.hook_types import HandleDATA, HandleRCPT


class Recorder(HandleRCPT, HandleDATA):
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(envelope.content)
        return "250 OK"


class PlainHandler:
    def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        return "250 OK"


def test_protocols_match_plain_classes() -> None:
    assert isinstance(PlainHandler(), HandleDATA)
    assert not isinstance(PlainHandler(), HandleRCPT)
    assert isinstance(Recorder(), HandleRCPT)


def test_protocol_based_handler_serves() -> None:
    handler = Recorder()
    with (
        Controller(handler, hostname="127.0.0.1", port=0) as controller,
        smtplib.SMTP("127.0.0.1", controller.port) as client,
    ):
        refused = client.sendmail(
            "a@example.net",
            ["b@example.com", "nobody@example.com"],
            b"Subject: typed\r\n\r\nhello\r\n",
        )
    assert list(refused) == ["nobody@example.com"]
    assert len(handler.messages) == 1
    assert handler.messages[0].endswith(b"hello\r\n")
