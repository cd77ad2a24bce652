"""A handler typed with the hook protocols; .ci/run checks it with mypy --strict.

It is not a test module: mypy proves that typical handlers, plain or listing the
protocols as bases, match the hook signatures.
"""

from __future__ import annotations

from smtpproto import Envelope, Session
from smtpproto_anyio import SMTPServer
from smtpproto_anyio.hook_types import HandleDATA, HandleEHLO, HandleRCPT


class Relay(HandleRCPT, HandleDATA):
    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not address.endswith("@example.com"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        return "250 OK"


class Greeter:
    def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses


def serve_relay(handler: HandleDATA) -> SMTPServer:
    return SMTPServer(handler, hostname="mx.example.com")


def ehlo_hook(handler: HandleEHLO) -> HandleEHLO:
    return handler


serve_relay(Relay())
ehlo_hook(Greeter())
