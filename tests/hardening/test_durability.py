"""Maildir durability and graceful shutdown of ``smtpproto-serve``.

A ``250`` reply to a message stored with ``--maildir`` promises that the message
is on disk: it must survive SIGKILL of the server at any moment, and ``new/``
must never show a partial file. SIGTERM must let a message in progress finish.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import smtplib
import sys
import threading
import time
from pathlib import Path

import pytest
from hardening_support import Client

SERVE = shutil.which("smtpproto-serve")
pytestmark = pytest.mark.skipif(SERVE is None, reason="smtpproto-serve not installed")
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE)
RETURN_PATH = b"Return-Path: <alice@example.net>\r\n"


def serve_argv(maildir: Path) -> list[str]:
    assert SERVE is not None
    return [SERVE, "-n", "-l", "127.0.0.1:0", "--maildir", str(maildir)]


def build_message(message_id: str, rng: random.Random) -> bytes:
    """Return a CRLF message of 1 KiB to 600 KiB that smtplib sends unchanged."""
    line = b"".join(rng.choice([b"a", b"b", b"c", b" "]) for _ in range(76))
    lines = rng.randint(12, 8000)
    body = (b"x" + line + b"\r\n") * lines
    header = (
        f"From: alice@example.net\r\nTo: bob@example.com\r\n"
        f"Message-ID: <{message_id}>\r\nSubject: durability\r\n\r\n"
    ).encode()
    return header + body


def test_maildir_survives_sigkill(server_process, tmp_path):
    maildir = tmp_path / "Maildir"
    server = server_process(argv=serve_argv(maildir))
    sent: dict[str, bytes] = {}
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(worker: int) -> None:
        rng = random.Random(worker)
        number = 0
        while not stop.is_set():
            number += 1
            message_id = f"{worker}.{number}@example.net"
            message = build_message(message_id, rng)
            with lock:
                sent[message_id] = message
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
                    smtp.sendmail("alice@example.net", ["bob@example.com"], message)
            except (OSError, smtplib.SMTPException):
                return
            with lock:
                acknowledged.append(message_id)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    # One message is surely mid-stream at the kill: 1 MiB of it has been sent,
    # more than the handler's 256 KiB write buffer, so part of it is on disk.
    partial = Client(server.port)
    assert partial.command("EHLO partial.example.net").code == 250
    assert partial.command("MAIL FROM:<alice@example.net>").code == 250
    assert partial.command("RCPT TO:<bob@example.com>").code == 250
    assert partial.command("DATA").code == 354
    partial.send(b"Message-ID: <partial@example.net>\r\n\r\n")
    partial.send((b"y" * 1022 + b"\r\n") * 1024)
    time.sleep(0.3)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(15)
    partial.close()

    stored: dict[str, bytes] = {}
    for path in (maildir / "new").iterdir():
        content = path.read_bytes()
        match = MESSAGE_ID.search(content)
        assert match, f"{path.name} has no Message-ID: a partial file in new/"
        stored[match.group(1).decode()] = content

    sys.stdout.write(
        f"\nSIGKILL: {len(acknowledged)} acknowledged, {len(stored)} in new/, "
        f"{len(list((maildir / 'tmp').iterdir()))} left in tmp/\n"
    )
    assert len(acknowledged) >= 4
    for message_id in acknowledged:
        assert message_id in stored, f"acknowledged {message_id} is not in new/"
        assert stored[message_id] == RETURN_PATH + sent[message_id]
    assert "partial@example.net" not in stored
    for message_id, content in stored.items():
        # A message may be stored without its 250 having reached the client,
        # but only whole.
        assert content == RETURN_PATH + sent[message_id]


def test_sigterm_drains(server_process, tmp_path):
    maildir = tmp_path / "Maildir"
    server = server_process(argv=serve_argv(maildir))
    header = b"Subject: drain\r\nMessage-ID: <drain@example.net>\r\n\r\n"
    body = header + (b"x" * 70 + b"\r\n") * 50

    with Client(server.port) as sending, Client(server.port) as idle:
        assert idle.command("EHLO idle.example.net").code == 250
        assert sending.command("EHLO busy.example.net").code == 250
        assert sending.command("MAIL FROM:<alice@example.net>").code == 250
        assert sending.command("RCPT TO:<bob@example.com>").code == 250
        assert sending.command("DATA").code == 354
        sending.send(body[:2000])

        server.process.send_signal(signal.SIGTERM)
        idle_replies = idle.replies_until_closed()
        sending.send(body[2000:] + b".\r\n")
        final = sending.reply()
        after = sending.replies_until_closed()

    assert [reply.code for reply in idle_replies] == [421]
    assert final.code == 250
    assert [reply.code for reply in after] == [421]
    assert server.process.wait(15) == 0
    stored = [path.read_bytes() for path in (maildir / "new").iterdir()]
    assert stored == [RETURN_PATH + body]
