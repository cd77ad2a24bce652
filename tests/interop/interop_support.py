"""Helpers for the interop tests: tool lookup, subprocesses, ports, a recording handler.

The fixtures that use them are in conftest.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtpproto_anyio import Controller

# Where Debian installs the tools. Root's PATH has /usr/sbin, but other users'
# PATH may not.
TOOL_DIRECTORIES = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")

# Debian package of each tool, for the skip reason.
TOOL_PACKAGES = {
    "swaks": "swaks",
    "msmtp": "msmtp",
    "smtp-source": "postfix",
    "postfix": "postfix",
    "postconf": "postfix",
    "haproxy": "haproxy",
}


def find_tool(name: str) -> str | None:
    """Return the path of the executable ``name``, or ``None`` if it is missing."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in TOOL_DIRECTORIES:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str) -> str:
    """Return the path of ``name``, or skip the test if it is not installed."""
    path = find_tool(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        pytest.skip(
            f"{name} is not installed (not on PATH nor in {', '.join(TOOL_DIRECTORIES)});"
            f" install the Debian package {package!r}"
        )
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take the port before the caller binds it. The tests
    accept that small race because the tools need a port in their configuration.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[Any]) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections.

    :raises AssertionError: if ``process`` exits first or ``timeout`` seconds pass
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if process.poll() is not None:
            raise AssertionError(
                f"{process.args!r} exited with status {process.returncode} before "
                f"listening on port {port}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)


def run_tool(
    args: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command line tool with a time limit and return its result.

    :raises AssertionError: with the tool's output if it exits non-zero and
        ``check`` is set
    """
    result = subprocess.run(
        list(args),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args[0]} exited with status {result.returncode}\n"
            f"--- stdout\n{result.stdout.decode(errors='replace')[-4000:]}\n"
            f"--- stderr\n{result.stderr.decode(errors='replace')[-4000:]}"
        )
    return result


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a certificate for localhost and 127.0.0.1, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class Delivery:
    """One message as the handler saw it in ``handle_DATA``."""

    mail_from: str | None
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes
    host_name: str | None
    authenticated: bool | None
    tls: bool
    proxy_data: Any
    peer: Any


@dataclass
class Recorder:
    """An aiosmtpd-style handler that stores every message and accepts it.

    ``lmtp_replies``, when set, gives the ``handle_DATA`` reply list for a message
    with that many recipients, so an LMTP test can accept some and reject others.
    The controller calls the hooks in its own thread, so a test calls
    :meth:`wait_for` before it reads the lists.
    """

    lmtp_replies: dict[int, list[str]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    proxy_headers: list[Any] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    async def handle_PROXY(
        self, server: object, session: Any, envelope: Any, proxy_data: Any
    ) -> bool:
        with self._changed:
            self.proxy_headers.append(proxy_data)
            self._changed.notify_all()
        return True

    async def handle_DATA(
        self, server: object, session: Any, envelope: Any
    ) -> str | list[str]:
        content = envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        delivery = Delivery(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            content=bytes(content),
            host_name=getattr(session, "host_name", None),
            authenticated=getattr(session, "authenticated", None),
            tls=getattr(session, "ssl", None) is not None,
            proxy_data=getattr(session, "proxy_data", None),
            peer=getattr(session, "peer", None),
        )
        with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        return self.lmtp_replies.get(len(delivery.rcpt_tos), "250 2.0.0 OK")

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        """Wait until ``count`` messages arrived and return all of them.

        :raises AssertionError: if fewer arrived within ``timeout`` seconds
        """
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: len(self.deliveries) >= count, timeout
            )
            deliveries = list(self.deliveries)
        assert arrived, (
            f"{len(deliveries)} of {count} messages reached the handler "
            f"within {timeout} s"
        )
        return deliveries


StartServer = Callable[..., Controller]
