"""Many connections at once: connection limits and a bounded load test."""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time

import pytest
from hardening_support import Client, Recorder, deliver

IDLE_CONNECTIONS = 10_000
# Descriptors on top of the idle connections: listeners, logs, bystanders.
SPARE_DESCRIPTORS = 300


def assert_rejected(client: Client, text: str) -> None:
    assert client.greeting is not None
    assert client.greeting.code == 421
    assert client.greeting.lines[0].startswith("4.7.0")
    assert text in client.greeting.text
    assert client.is_closed(timeout=5)


def test_max_connections_rejects(controller_factory, backend):
    controller = controller_factory(
        Recorder(), backend, max_connections=5, max_connections_per_ip=None
    )
    held = [Client(controller.port) for _ in range(5)]
    try:
        assert [client.greeting.code for client in held] == [220] * 5
        with Client(controller.port) as extra:
            assert_rejected(extra, "Too many connections")
        held.pop().close()
        time.sleep(0.3)  # let the server notice the close
        with Client(controller.port) as replacement:
            assert replacement.greeting.code == 220
    finally:
        for client in held:
            client.close()


def test_max_connections_per_ip_rejects(controller_factory, backend):
    controller = controller_factory(
        Recorder(), backend, max_connections=None, max_connections_per_ip=3
    )
    held = [Client(controller.port) for _ in range(3)]
    try:
        assert [client.greeting.code for client in held] == [220] * 3
        with Client(controller.port) as extra:
            assert_rejected(extra, "from your address")
        # Another loopback address is another client address.
        with Client(controller.port, source="127.0.0.2") as other:
            assert other.greeting.code == 220
            assert other.command("EHLO other.example.net").code == 250
    finally:
        for client in held:
            client.close()


@pytest.mark.slow
def test_idle_connections_held(server_process, backend):
    """Hold 10,000 idle connections while 50 messages are delivered."""
    needed = IDLE_CONNECTIONS + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    config = {
        "backend": backend,
        "kwargs": {"timeout": 120},
        "optional_kwargs": {"max_connections": None, "max_connections_per_ip": None},
    }
    server = server_process(config, nofile=needed)
    baseline = server.rss_kib()
    sockets: list[socket.socket] = []
    started = time.monotonic()
    try:
        # extend() keeps the sockets opened before a failure, for the cleanup.
        address = ("127.0.0.1", server.port)
        sockets.extend(
            socket.create_connection(address, 10) for _ in range(IDLE_CONNECTIONS)
        )
        connected = time.monotonic() - started

        delivered = []
        errors = []

        def deliver_some(worker: int) -> None:
            try:
                for number in range(10):
                    deliver(server.port, f"load-{worker}-{number}", timeout=30)
                    delivered.append(number)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=deliver_some, args=(n,)) for n in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        peak = server.rss_kib()

        # The server serves the held connections: 20 of them must have a greeting.
        for sock in sockets[:: IDLE_CONNECTIONS // 20]:
            sock.settimeout(10)
            assert sock.recv(100).startswith(b"220 ")
        elapsed = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    sys.stdout.write(
        f"\n{backend}: {len(sockets)} idle connections: connected in {connected:.1f} s, "
        f"server RSS {baseline // 1024} -> {peak // 1024} MiB, "
        f"{len(delivered)} delivered, total {elapsed:.1f} s\n"
    )
    assert len(sockets) == IDLE_CONNECTIONS
    assert errors == []
    assert len(delivered) == 50
    assert elapsed < 60
