"""The tutorial's handler: accept mail for one domain and save each message.

Run it with the command line:

    smtpproto-serve -n -c tutorial_handler.SaveForDomain example.org ./inbox

or inside your own event loop:

    python tutorial_handler.py example.org ./inbox
"""

from __future__ import annotations

import sys
import uuid
from argparse import ArgumentParser
from pathlib import Path

import anyio

from smtpproto_anyio import Envelope, Session, SMTPServer


class SaveForDomain:
    """Accept recipients in ``domain`` and write each message to ``directory``."""

    def __init__(self, domain: str, directory: str | Path) -> None:
        self.domain = domain.lower()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> SaveForDomain:
        """Build the handler from smtpproto-serve's CLASSARGS: DOMAIN DIRECTORY."""
        if len(args) != 2:
            parser.error("SaveForDomain takes two arguments: DOMAIN DIRECTORY")
        return cls(args[0], args[1])

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not address.lower().endswith("@" + self.domain):
            return "550 5.1.1 Unknown recipient"
        # The server adds the address to envelope.rcpt_tos after a 2xx reply.
        return "250 OK"

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        path = self.directory / f"{uuid.uuid4().hex}.eml"
        content = envelope.original_content or b""
        # Write in a worker thread, so a slow disk does not stall other clients.
        await anyio.to_thread.run_sync(path.write_bytes, content)
        return "250 OK"


async def main(domain: str, directory: str) -> None:
    server = SMTPServer(SaveForDomain(domain, directory), hostname="mx.example.org")
    async with server.serving("127.0.0.1", 8025):
        print(f"receiving mail for {domain} on 127.0.0.1:{server.port}")
        await anyio.sleep_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tutorial_handler.py DOMAIN DIRECTORY")
    anyio.run(main, sys.argv[1], sys.argv[2])
