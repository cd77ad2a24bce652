"""The runnable examples in docs/examples, run on loopback as the docs show them."""

from __future__ import annotations

import importlib.util
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trustme

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"

MESSAGE = b"From: ann@example.com\r\nSubject: Example\r\n\r\nHello.\r\n"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def threaded() -> ModuleType:
    return load_example("threaded_server")


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


class Inbox:
    """Collects (mail_from, rcpt_tos, content) from the example's callback."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, list[str], bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, envelope: Any, content: bytes) -> None:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), content))


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def threaded_server(
    threaded: ModuleType,
    inbox: Inbox,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> Iterator[Any]:
    server = threaded.ThreadedSMTPServer(
        inbox, "127.0.0.1", 0, tls_context=tls_contexts[0], idle_timeout=10
    )
    server.start()
    yield server
    server.stop()


def test_threaded_server_smtplib(threaded_server: Any, inbox: Inbox) -> None:
    with smtplib.SMTP("127.0.0.1", threaded_server.port, timeout=10) as client:
        refused = client.sendmail(
            "ann@example.com", ["bob@example.org", "carol@example.org"], MESSAGE
        )
    assert refused == {}
    assert inbox.messages == [
        ("ann@example.com", ["bob@example.org", "carol@example.org"], MESSAGE)
    ]


def test_threaded_server_starttls(
    threaded_server: Any,
    inbox: Inbox,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    with smtplib.SMTP("127.0.0.1", threaded_server.port, timeout=10) as client:
        client.starttls(context=tls_contexts[1])
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
        client.sendmail("ann@example.com", ["carol@example.org"], MESSAGE)
    assert [rcpt for _, rcpt, _ in inbox.messages] == [
        ["bob@example.org"],
        ["carol@example.org"],
    ]


def read_reply(reader: Any) -> bytes:
    """Read one reply, multi-line or not, and return its last line."""
    while True:
        line = reader.readline()
        assert line, "the server closed the connection"
        if line[3:4] != b"-":
            return bytes(line)


def test_threaded_server_bdat(threaded_server: Any, inbox: Inbox) -> None:
    with socket.create_connection(("127.0.0.1", threaded_server.port), 10) as sock:
        reader = sock.makefile("rb")
        assert read_reply(reader).startswith(b"220 ")
        commands = [
            b"EHLO client.example\r\n",
            b"MAIL FROM:<ann@example.com>\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"BDAT 6\r\nstale!",
            # RSET ends the transaction between chunks; its chunk is dropped.
            b"RSET\r\n",
            b"MAIL FROM:<ann@example.com>\r\n",
            b"RCPT TO:<carol@example.org>\r\n",
            b"BDAT 7\r\nHello, ",
            b"BDAT 7 LAST\r\nworld\r\n",
            b"QUIT\r\n",
        ]
        replies = []
        for command in commands:
            sock.sendall(command)
            replies.append(read_reply(reader))
        reader.close()
    assert [reply[:3] for reply in replies] == [b"250"] * 9 + [b"221"]
    assert inbox.messages == [
        ("ann@example.com", ["carol@example.org"], b"Hello, world\r\n")
    ]


def test_threaded_server_main(tmp_path: Path) -> None:
    script = EXAMPLES / "threaded_server.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        assert first_line.startswith("listening on 127.0.0.1:")
        port = int(first_line.rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
        output = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert (
        output
        == f"message from ann@example.com to bob@example.org: {len(MESSAGE)} octets\n"
    )


# ---------------------------------------------------------------- tutorial handler


@pytest.fixture(scope="module")
def tutorial() -> ModuleType:
    return load_example("tutorial_handler")


def test_tutorial_handler_controller(tutorial: ModuleType, tmp_path: Path) -> None:
    from smtpproto_anyio import Controller

    handler = tutorial.SaveForDomain("example.org", tmp_path / "inbox")
    with (
        Controller(handler) as controller,
        smtplib.SMTP("127.0.0.1", controller.port, timeout=10) as client,
    ):
        refused = client.sendmail(
            "ann@example.com", ["bob@example.org", "eve@elsewhere.test"], MESSAGE
        )
    assert refused == {"eve@elsewhere.test": (550, b"5.1.1 Unknown recipient")}
    [saved] = (tmp_path / "inbox").iterdir()
    assert saved.suffix == ".eml"
    assert saved.read_bytes() == MESSAGE


def test_tutorial_handler_cli(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    command = [
        sys.executable,
        "-m",
        "smtpproto_anyio",
        "-n",
        "-l",
        "127.0.0.1:0",
        "-c",
        "tutorial_handler.SaveForDomain",
        "example.org",
        str(inbox),
    ]
    environment = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        assert process.stderr is not None
        first_line = process.stderr.readline()
        assert first_line.startswith("smtpproto-serve listening on 127.0.0.1:")
        port = int(first_line.split(":")[1].split()[0])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0
    [saved] = inbox.iterdir()
    assert saved.read_bytes() == MESSAGE
