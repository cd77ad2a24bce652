"""Postfix's smtp-source load generator against our SMTP and LMTP servers.

smtp-source (Debian package ``postfix``) runs parallel sessions, sends no
pipelined commands, and exits non-zero when any reply is not the positive one
it expects. By default it opens a new connection for each message; ``-d``
keeps one connection per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from interop_support import Delivery, Recorder, StartServer, require_tool, run_tool

SENDER = "sender@example.org"
RECIPIENT = "rcpt@example.com"


@pytest.fixture
def smtp_source() -> str:
    return require_tool("smtp-source")


def source_command(smtp_source: str, port: int, *options: str) -> list[str]:
    return [
        smtp_source,
        "-4",
        "-M",
        "client.test",
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        *options,
        f"127.0.0.1:{port}",
    ]


def body_of(delivery: Delivery) -> bytes:
    """Return the message body: what follows the first empty line."""
    _, separator, body = delivery.content.partition(b"\r\n\r\n")
    assert separator, f"no end of header in {delivery.content[:200]!r}"
    return body


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_200_messages_over_5_sessions(
    smtp_source: str, start_server: StartServer, backend: str
) -> None:
    recorder = Recorder()
    controller = start_server(recorder, backend=backend)

    run_tool(
        source_command(
            smtp_source, controller.port, "-s", "5", "-m", "200", "-l", "1024", "-c"
        ),
        timeout=60,
    )

    deliveries = recorder.wait_for(200, timeout=10)
    assert len(deliveries) == 200
    for delivery in deliveries:
        assert delivery.mail_from == SENDER
        assert delivery.rcpt_tos == [RECIPIENT]
        assert delivery.host_name == "client.test"
        # smtp-source 3.7 makes -l octets of payload, CRLFs included, and
        # ends it with one more CRLF.
        assert len(body_of(delivery)) == 1024 + 2


def test_sessions_kept_open(smtp_source: str, start_server: StartServer) -> None:
    recorder = Recorder()
    controller = start_server(recorder)

    run_tool(
        source_command(
            smtp_source, controller.port, "-d", "-s", "5", "-m", "200", "-l", "4000"
        ),
        timeout=60,
    )

    deliveries = recorder.wait_for(200, timeout=10)
    assert len(deliveries) == 200
    peers = {delivery.peer for delivery in deliveries}
    assert len(peers) == 5, f"expected 5 connections, messages came over {peers}"
    assert all(len(body_of(d)) == 4000 + 2 for d in deliveries)


def test_file_content_with_dots(
    smtp_source: str, start_server: StartServer, tmp_path: Path
) -> None:
    # smtp-source -F doubles leading dots and sends each line with CRLF. Version
    # 3.7 then sends one more CRLF before the final dot, and aiosmtpd 1.4.6
    # receives that empty last line too.
    lines = [
        b"Subject: dots",
        b"",
        b".one leading dot",
        b"..two leading dots",
        b".",
        b"plain line",
    ]
    message_file = tmp_path / "message.txt"
    message_file.write_bytes(b"\n".join(lines) + b"\n")
    recorder = Recorder()
    controller = start_server(recorder)

    run_tool(
        source_command(
            smtp_source,
            controller.port,
            "-d",
            "-s",
            "2",
            "-m",
            "20",
            "-F",
            str(message_file),
        ),
        timeout=60,
    )

    deliveries = recorder.wait_for(20, timeout=10)
    expected = b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    assert [d.content for d in deliveries] == [expected] * 20


def test_lmtp_three_recipients(smtp_source: str, start_server: StartServer) -> None:
    recorder = Recorder()
    controller = start_server(recorder, lmtp=True)

    # With -L smtp-source speaks LMTP and reads one reply per recipient after
    # the message content. -r 3 sends 3 recipients per message.
    run_tool(
        source_command(
            smtp_source,
            controller.port,
            "-L",
            "-d",
            "-s",
            "3",
            "-m",
            "60",
            "-r",
            "3",
            "-l",
            "512",
        ),
        timeout=60,
    )

    deliveries = recorder.wait_for(60, timeout=10)
    assert len(deliveries) == 60
    for delivery in deliveries:
        assert len(delivery.rcpt_tos) == 3
        assert all(rcpt.endswith(RECIPIENT) for rcpt in delivery.rcpt_tos)
