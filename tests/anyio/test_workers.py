"""smtpproto-serve --workers: processes that share the port through SO_REUSEPORT."""

from __future__ import annotations

import os
import re
import selectors
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"),
    reason="--workers needs fork() and SO_REUSEPORT",
)

LISTENING = re.compile(
    r"smtpproto-serve listening on 127\.0\.0\.1:(\d+) \((\w+)\) worker (\d)/(\d)"
)
MESSAGE = b"From: a@x.test\r\nSubject: workers\r\n\r\nHello\r\n"


def read_worker_lines(
    process: subprocess.Popen[bytes], count: int, seconds: float = 15
) -> list[re.Match[str]]:
    """Read standard error until every worker has printed its listening line."""
    assert process.stderr is not None
    descriptor = process.stderr.fileno()
    received = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            chunk = os.read(descriptor, 65536)
            if not chunk:
                break
            received += chunk
            text = received.decode(errors="replace")
            matches = [m for m in map(LISTENING.match, text.splitlines()) if m]
            if len(matches) == count and text.endswith("\n"):
                return matches
    raise AssertionError(f"workers did not start: {received.decode(errors='replace')}")


@contextmanager
def run_workers(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-m",
        "smtpproto_anyio",
        "-n",
        "-l",
        "127.0.0.1:0",
        "-c",
        "smtpproto_anyio.handlers.Sink",
        *args,
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            # The workers run in their own process groups: stop them through
            # the supervisor, then make sure nothing is left.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stderr is not None
        process.stderr.close()


def send_messages(port: int, count: int) -> None:
    for _ in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.sendmail("a@x.test", ["b@x.test"], MESSAGE)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_workers_deliver_and_stop(backend: str) -> None:
    with run_workers("--workers", "2", "--backend", backend) as process:
        lines = read_worker_lines(process, 2)
        ports = {int(m.group(1)) for m in lines}
        assert len(ports) == 1
        assert {m.group(3) for m in lines} == {"1", "2"}
        assert {m.group(2) for m in lines} == {backend}

        send_messages(ports.pop(), 20)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_worker_crash_stops_supervisor() -> None:
    with run_workers("--workers", "2") as process:
        read_worker_lines(process, 2)
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(children) == 2
        os.kill(int(children[0]), signal.SIGKILL)
        assert process.wait(timeout=10) == 1


def test_sigint_stops_workers_cleanly() -> None:
    with run_workers("--workers", "2") as process:
        port = int(read_worker_lines(process, 2)[0].group(1))
        send_messages(port, 2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


def test_workers_must_be_positive() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smtpproto_anyio", "-n", "--workers", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "--workers must be 1 or more" in result.stderr
