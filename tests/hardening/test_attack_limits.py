"""Resource exhaustion attacks on a server subprocess.

Each test runs one attack while a thread samples the server's resident memory
from /proc and another delivers normal messages with smtplib. The server must
stay within a fixed memory budget, keep serving the other clients, and end the
attack with the documented reply.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hardening_support import Client, Deliverer, ServerProcess, deliver, tcp_state

MIB = 1024 * 1024
ATTACK_BYTES = 50 * MIB
SEND_CHUNK = 64 * 1024
# Growth of the server's resident memory allowed during one attack. Each attack
# sends 50 MiB or more, so a server that buffered it would exceed this.
RSS_BUDGET_KIB = 20 * 1024


class RssSampler:
    """Sample a process's resident memory every 20 ms in a thread; keep the peak."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.baseline = server.rss_kib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02) and self.server.process.poll() is None:
            self.peak = max(self.peak, self.server.rss_kib())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_kib(self) -> int:
        return self.peak - self.baseline


def report(name: str, sampler: RssSampler, **figures: Any) -> None:
    """Write the memory figures of an attack, visible with ``pytest -s``."""
    extra = "".join(f" {key}={value}" for key, value in figures.items())
    sys.stdout.write(
        f"\n{name}: RSS baseline {sampler.baseline // 1024} MiB, peak "
        f"{sampler.peak // 1024} MiB, growth {sampler.growth_kib} KiB{extra}\n"
    )


@contextmanager
def under_attack(
    server: ServerProcess, name: str, *, proxy: bool = False
) -> Iterator[RssSampler]:
    """Measure memory and deliver bystander messages while the body runs."""
    for number in range(3):  # warm up the code paths of a normal delivery
        deliver(server.port, f"warm-up-{number}", proxy=proxy)
    sampler = RssSampler(server)
    with Deliverer(server.port, proxy=proxy) as bystander:
        try:
            yield sampler
        finally:
            sampler.stop()
        time.sleep(0.2)  # one more delivery after the attack itself
    report(name, sampler, bystanders=bystander.delivered)
    assert sampler.growth_kib < RSS_BUDGET_KIB, server.log()
    assert bystander.errors == []
    assert bystander.delivered >= 1
    deliver(server.port, "after-attack", proxy=proxy)


def stream(client: Client, total: int, byte: bytes = b"A") -> int:
    """Send ``total`` octets of ``byte``; return how many went before a close."""
    block = byte * SEND_CHUNK
    sent = 0
    try:
        while sent < total:
            client.sock.sendall(block)
            sent += len(block)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def start(server_process: Callable[..., ServerProcess], backend: str, **kwargs: Any):
    config = {"backend": backend, "kwargs": {"timeout": 10, **kwargs}}
    if "auth" in kwargs:
        config["auth"] = kwargs.pop("auth")
        config["kwargs"].pop("auth")
    return server_process(config)


def test_endless_line_bounded(server_process, backend):
    server = start(server_process, backend)
    with (
        under_attack(server, "endless command line") as sampler,
        Client(server.port, timeout=20) as client,
    ):
        assert client.command("EHLO client.example.net").code == 250
        sent = stream(client, ATTACK_BYTES)
        client.send(b"\r\nNOOP\r\n")
        too_long = client.reply()
        noop = client.reply()
    assert sent == ATTACK_BYTES
    assert too_long.code == 500
    assert "5.5.2" in too_long.text or "5.5.6" in too_long.text
    assert noop.code == 250
    assert sampler.peak > 0


@pytest.mark.parametrize("declared", [ATTACK_BYTES, 99_999_999_999])
def test_huge_bdat_bounded(server_process, backend, declared):
    server = start(server_process, backend, data_size_limit=4 * MIB)
    with (
        under_attack(server, f"BDAT {declared}"),
        Client(server.port, timeout=20) as client,
    ):
        assert client.command("EHLO client.example.net").code == 250
        assert client.command("MAIL FROM:<alice@example.net>").code == 250
        assert client.command("RCPT TO:<bob@example.com>").code == 250
        client.send(f"BDAT {declared} LAST\r\n")
        sent = stream(client, ATTACK_BYTES)
        if declared == ATTACK_BYTES:
            final = client.reply()
        else:
            # The chunk never ends, so no reply is due: nothing may come.
            final = None
            assert not client.is_closed(timeout=0.5)
            assert client.buffer == b""
    assert sent == ATTACK_BYTES
    if final is not None:
        assert final.code == 552
        assert "5.3.4" in final.text


def test_many_recipients_capped(server_process, backend):
    server = start(server_process, backend)
    count = 5000
    with (
        under_attack(server, f"{count} RCPT"),
        Client(server.port, timeout=20) as client,
    ):
        assert client.command("EHLO client.example.net").code == 250
        assert client.command("MAIL FROM:<alice@example.net>").code == 250
        commands = b"".join(
            f"RCPT TO:<user{n}@example.com>\r\n".encode() for n in range(count)
        )
        client.send(commands)
        codes = [client.reply().code for _ in range(count)]
        assert client.command("DATA").code == 354
        client.send(b"Subject: many\r\n\r\nhi\r\n.\r\n")
        final = client.reply()
    assert codes[:1000] == [250] * 1000
    assert codes[1000:] == [452] * (count - 1000)
    assert final.code == 250


def test_auth_response_too_long(server_process, backend):
    server = start(server_process, backend, auth=True, auth_require_tls=False)
    with (
        under_attack(server, "AUTH response"),
        Client(server.port, timeout=20) as client,
    ):
        assert client.command("EHLO client.example.net").code == 250
        assert client.command("AUTH PLAIN").code == 334
        sent = stream(client, 20 * MIB)
        client.send(b"\r\n")
        too_long = client.reply()
        noop = client.command("NOOP")
    assert sent == 20 * MIB
    assert too_long.code == 500
    assert too_long.lines[0].startswith("5.5.6")
    assert noop.code == 250


def test_auth_initial_response_too_long(server_process, backend):
    server = start(server_process, backend, auth=True, auth_require_tls=False)
    with (
        under_attack(server, "AUTH initial response"),
        Client(server.port, timeout=20) as client,
    ):
        assert client.command("EHLO client.example.net").code == 250
        client.send(b"AUTH PLAIN ")
        sent = stream(client, 20 * MIB)
        client.send(b"\r\n")
        too_long = client.reply()
        noop = client.command("NOOP")
    assert sent == 20 * MIB
    assert too_long.code == 500
    assert noop.code == 250


def test_proxy_header_endless_closed(server_process, backend):
    server = start(server_process, backend, proxy_protocol_timeout=2)
    with (
        under_attack(server, "endless PROXY header", proxy=True),
        Client(server.port, timeout=10, read_greeting=False) as client,
    ):
        client.send(b"PROXY TCP4 ")
        sent = stream(client, ATTACK_BYTES, byte=b"1")
        assert client.is_closed(timeout=5)
    assert client.buffer == b""
    assert sent < ATTACK_BYTES


def test_proxy_header_silent_closed(server_process, backend):
    server = start(server_process, backend, proxy_protocol_timeout=2)
    with Client(server.port, timeout=10, read_greeting=False) as client:
        client.send(b"PROXY TCP4 192.0.2.1 ")
        started = time.monotonic()
        assert client.is_closed(timeout=6)
        elapsed = time.monotonic() - started
    assert client.buffer == b""
    assert 1.5 < elapsed < 4
    deliver(server.port, "after-proxy", proxy=True)


def test_unread_replies_bounded(server_process, backend):
    """A client that pipelines 100k NOOPs and never reads the replies."""
    server = start(server_process, backend, timeout=3)
    outcome: dict[str, Any] = {}
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)

    def flood() -> None:
        try:
            sock.sendall(b"EHLO client.example.net\r\n" + b"NOOP\r\n" * 100_000)
            outcome["sent"] = True
        except OSError as error:
            outcome["error"] = repr(error)

    with under_attack(server, "100k NOOP never read"):
        sock.connect(("127.0.0.1", server.port))
        started = time.monotonic()
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        # Never reading, wait for the server to hang up on this client.
        while time.monotonic() - started < 15:
            if tcp_state(sock, peer=True) != "ESTABLISHED":
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        state = tcp_state(sock, peer=True)
        thread.join(20)
    sock.close()
    assert not thread.is_alive()
    assert state in ("FIN_WAIT1", "FIN_WAIT2", "CLOSE", "TIME_WAIT", None), outcome
    assert elapsed < 8, outcome
    sys.stdout.write(f"unread replies: server hung up after {elapsed:.1f} s\n")


def test_slow_body_timed_out(server_process, backend):
    """One byte per second of message content: data_timeout ends it."""
    server = start(server_process, backend, timeout=2, data_timeout=3)
    with (
        under_attack(server, "slow-loris DATA"),
        Client(server.port, timeout=10) as client,
    ):
        assert client.command("EHLO client.example.net").code == 250
        assert client.command("MAIL FROM:<alice@example.net>").code == 250
        assert client.command("RCPT TO:<bob@example.com>").code == 250
        assert client.command("DATA").code == 354
        started = time.monotonic()
        try:
            for _ in range(10):
                client.send(b"x")
                if not client.is_closed(timeout=1):
                    continue
                break
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - started
        replies = client.replies_until_closed()
    assert [reply.code for reply in replies] == [421]
    assert replies[0].lines[0].startswith("4.4.2")
    assert 2.5 < elapsed < 5


def test_slow_command_timed_out(server_process, backend):
    """A command sent one byte per second to a server with a 0.8 s timeout."""
    server = start(server_process, backend, timeout=0.8)
    with Client(server.port, timeout=10) as client:
        started = time.monotonic()
        closed = False
        for byte in b"NOOP\r\n":
            client.send(bytes([byte]))
            if client.is_closed(timeout=1):
                closed = True
                break
        elapsed = time.monotonic() - started
        replies = client.replies_until_closed()
    assert closed
    assert [reply.code for reply in replies] == [421]
    assert replies[0].lines[0].startswith("4.4.2")
    assert elapsed < 2
    deliver(server.port, "after-slow-command")
