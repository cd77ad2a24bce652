"""Clients, handlers and server processes for the hardening tests.

Every server here listens on 127.0.0.1 with a port chosen by the system.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtpproto_anyio import Controller

if TYPE_CHECKING:
    from typing_extensions import Self

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "server_main.py"
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
# Text that must never reach a client: it shows Python internals.
LEAK_MARKERS = ("Traceback", ".py", "Error(", "/etc/passwd", "secret-token")


# ---------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class ConnectionClosedError(Exception):
    """The server closed the connection before a whole reply arrived."""


class Client:
    """A blocking SMTP client on a raw socket, for dialogues smtplib cannot send."""

    def __init__(
        self,
        port: int,
        *,
        timeout: float = 10,
        source: str | None = None,
        read_greeting: bool = True,
    ) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port),
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        self.buffer = b""
        self.greeting: Reply | None = None
        if read_greeting:
            self.greeting = self.reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_pieces(self, pieces: Sequence[bytes], pause: float = 0.01) -> None:
        """Send each piece in its own write, pausing so reads see them apart."""
        for piece in pieces:
            self.sock.sendall(piece)
            time.sleep(pause)

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionClosedError(f"closed with {self.buffer!r} unread")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> Reply:
        """Read one reply, which may span several lines."""
        lines = []
        while True:
            line = self._read_line()
            if len(line) < 3 or not line[:3].isdigit():
                raise AssertionError(f"not a reply line: {line!r}")
            lines.append(line[4:].decode("utf-8", "backslashreplace"))
            if line[3:4] != b"-":
                return Reply(int(line[:3]), tuple(lines))

    def command(self, line: str | bytes) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def replies_until_closed(self) -> list[Reply]:
        """Read replies until the server closes the connection."""
        replies: list[Reply] = []
        try:
            while True:
                replies.append(self.reply())
        except (ConnectionClosedError, ConnectionResetError):
            return replies

    def is_closed(self, timeout: float = 5) -> bool:
        """Return True if the server closes the connection within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buffer += data
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


PROXY_V1_HEADER = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\n"


class ProxySMTP(smtplib.SMTP):
    """smtplib's client that sends a PROXY protocol v1 header after connecting."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        sock.sendall(PROXY_V1_HEADER)
        return sock


def deliver(
    port: int, message_id: str, *, timeout: float = 10, proxy: bool = False
) -> None:
    """Send one small message with smtplib; raise on any failure."""
    message = (
        f"From: alice@example.net\r\nTo: bob@example.com\r\n"
        f"Message-ID: <{message_id}@example.net>\r\nSubject: check\r\n\r\n"
        f"hello from {message_id}\r\n"
    ).encode()
    client_class = ProxySMTP if proxy else smtplib.SMTP
    with client_class("127.0.0.1", port, timeout=timeout) as smtp:
        smtp.sendmail("alice@example.net", ["bob@example.com"], message)


class Deliverer:
    """Deliver messages with smtplib in a thread until stopped; count the results."""

    def __init__(self, port: int, pause: float = 0.05, *, proxy: bool = False) -> None:
        self.port = port
        self.proxy = proxy
        self.pause = pause
        self.delivered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            try:
                deliver(self.port, f"bystander-{number}", proxy=self.proxy)
                self.delivered += 1
            except (OSError, smtplib.SMTPException) as error:
                self.errors.append(repr(error))
            self._stop.wait(self.pause)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)


# ---------------------------------------------------------------------- handlers


@dataclass
class Recorder:
    """A handler that records every MAIL, RCPT and message it is given."""

    mail_from: list[str] = field(default_factory=list)
    rcpt_to: list[str] = field(default_factory=list)
    messages: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)

    def clear(self) -> None:
        self.mail_from.clear()
        self.rcpt_to.clear()
        self.messages.clear()

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        self.mail_from.append(address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        self.rcpt_to.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 OK"


# ---------------------------------------------------------------------- servers


def start_controller(handler: object, backend: str, **kwargs: Any) -> Controller:
    kwargs.setdefault("shutdown_grace", 2)
    kwargs.setdefault("server_hostname", "mx.example.com")
    controller = Controller(handler, port=0, backend=backend, **kwargs)
    controller.start()
    return controller


class ServerProcess:
    """A server subprocess whose standard error goes to a file.

    :param nofile: raise the process's open-file limit to this many (within
        the hard limit) through ``ulimit -n`` in a shell that then runs ``argv``
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        nofile: int | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = list(argv)
        if nofile is not None:
            argv = ["bash", "-c", 'ulimit -n "$0" && exec "$@"', str(nofile), *argv]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.port = self._wait_for_port()

    @classmethod
    def from_config(
        cls, config: dict[str, Any], log_path: Path, *, nofile: int | None = None
    ) -> ServerProcess:
        """Start ``server_main.py`` with ``config``; see that script."""
        argv = [sys.executable, str(SERVER_SCRIPT), json.dumps(config)]
        return cls(argv, log_path, nofile=nofile)

    def _wait_for_port(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_path.read_bytes())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Return the resident set size of the server process in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def stop(self) -> int | None:
        """Send SIGTERM, kill after 10 s; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca: Path


# Socket states in /proc/net/tcp (include/net/tcp_states.h in Linux).
TCP_STATES = {
    "01": "ESTABLISHED",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def tcp_state(sock: socket.socket, *, peer: bool = False) -> str | None:
    """Return the kernel's TCP state of a loopback IPv4 connection, without I/O.

    With ``peer=True`` it is the state of the other end, such as the server's
    socket. A server that has closed a connection whose client reads nothing
    leaves its end in ``FIN_WAIT1``: the FIN waits behind unsent replies, so the
    client's own end still shows ``ESTABLISHED``.
    """
    local_port = sock.getsockname()[1]
    remote_port = sock.getpeername()[1]
    if peer:
        local_port, remote_port = remote_port, local_port
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local = int(fields[1].split(":")[1], 16)
        remote = int(fields[2].split(":")[1], 16)
        if local == local_port and remote == remote_port:
            return TCP_STATES.get(fields[3], fields[3])
    return None
