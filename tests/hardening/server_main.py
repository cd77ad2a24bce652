"""Run an SMTPServer in its own process for the hardening tests.

Usage: ``python server_main.py CONFIG_JSON``. The configuration names the backend,
a handler from this file and SMTPServer keyword arguments. The script prints
``listening on 127.0.0.1:PORT`` to standard error once it accepts connections and
shuts down gracefully on SIGTERM or SIGINT. A separate process lets a test read the
server's memory from /proc without the test's own allocations in it.
"""

from __future__ import annotations

import inspect
import json
import signal
import ssl
import sys
from typing import Any

import anyio

from smtpproto_anyio import AuthResult, SMTPServer


class DropAll:
    """Accept every message and drop it: memory stays with the server alone."""

    def __init__(self) -> None:
        self.messages = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages += 1
        return "250 OK"

    async def handle_PROXY(
        self, server: Any, session: Any, envelope: Any, proxy_data: Any
    ) -> bool:
        return True


def accept_any_credentials(*args: object) -> AuthResult:
    return AuthResult(success=True)


def build_server(config: dict[str, Any]) -> SMTPServer:
    kwargs = dict(config.get("kwargs", {}))
    # Options of a newer adapter: passed only when this SMTPServer has them.
    supported = inspect.signature(SMTPServer).parameters
    optional = config.get("optional_kwargs", {})
    kwargs.update({k: v for k, v in optional.items() if k in supported})
    tls = config.get("tls")
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls["cert"], tls["key"])
        kwargs["tls_context"] = context
    if config.get("auth"):
        kwargs["authenticator"] = accept_any_credentials
    return SMTPServer(DropAll(), hostname="mx.example.com", **kwargs)


async def serve(server: SMTPServer) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with server.serving("127.0.0.1", 0):
            sys.stderr.write(f"listening on 127.0.0.1:{server.port}\n")
            sys.stderr.flush()
            async for _ in signals:
                break


def main() -> None:
    config = json.loads(sys.argv[1])
    server = build_server(config)
    anyio.run(serve, server, backend=config.get("backend", "asyncio"))


if __name__ == "__main__":
    main()
