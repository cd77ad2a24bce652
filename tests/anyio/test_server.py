"""SMTPServer over real sockets: clients, listeners, logging, PROXY and errors."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
from contextlib import AbstractAsyncContextManager
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import anyio
import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import SMTPServer, serve

pytestmark = pytest.mark.anyio

HOSTNAME = "mx.example.test"


def serving(handler: object, **options: Any) -> AbstractAsyncContextManager[SMTPServer]:
    return SMTPServer(handler, hostname=HOSTNAME, **options).serving("127.0.0.1", 0)


class Recorder:
    """Handler that keeps every delivered envelope and session."""

    def __init__(self) -> None:
        self.messages: list[tuple[Session, Envelope]] = []

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        self.messages.append((session, envelope))
        return "250 Message accepted"


def send_with_smtplib(port: int, message: bytes, recipients: list[str]) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        return client.sendmail("sender@example.com", recipients, message)


MESSAGE = (
    b"From: sender@example.com\r\nSubject: hello\r\n\r\nBody line\r\n.dot line\r\n"
)


async def test_smtplib_delivers_message() -> None:
    handler = Recorder()
    async with serving(handler) as server:
        refused = await anyio.to_thread.run_sync(
            send_with_smtplib, server.port, MESSAGE, ["a@example.com", "b@example.com"]
        )
    assert refused == {}
    session, envelope = handler.messages[0]
    assert envelope.mail_from == "sender@example.com"
    assert envelope.rcpt_tos == ["a@example.com", "b@example.com"]
    assert envelope.content == MESSAGE
    assert envelope.original_content == MESSAGE
    assert "SIZE=" in " ".join(envelope.mail_options)
    assert session.peer[0] == "127.0.0.1"
    assert session.host_name
    assert session.extended_smtp is True
    assert session.ssl is None


async def test_aiosmtplib_delivers_message() -> None:
    handler = Recorder()
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = "a@example.com"
    message["Subject"] = "aiosmtplib"
    message.set_content("Hello from aiosmtplib\n")

    async def send(port: int) -> None:
        await aiosmtplib.send(
            message, hostname="127.0.0.1", port=port, start_tls=False, timeout=5
        )

    async with serving(handler) as server:
        # aiosmtplib needs asyncio, so it runs in a thread under the trio backend.
        await anyio.to_thread.run_sync(asyncio.run, send(server.port))
    _, envelope = handler.messages[0]
    assert envelope.rcpt_tos == ["a@example.com"]
    assert b"Hello from aiosmtplib" in envelope.content


async def test_many_clients_at_once() -> None:
    handler = Recorder()
    async with serving(handler) as server, anyio.create_task_group() as task_group:
        for number in range(10):
            task_group.start_soon(
                anyio.to_thread.run_sync,
                send_with_smtplib,
                server.port,
                MESSAGE,
                [f"r{number}@example.com"],
            )
    assert len(handler.messages) == 10


async def test_pipelined_replies_in_one_write(open_client: Any) -> None:
    async with serving(Recorder()) as server, open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.send(
            "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
        )
        data = await client.stream.receive()
        assert data.count(b"\r\n") == 4
        assert data.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")


async def test_greeting_and_session_defaults(open_client: Any) -> None:
    async with (
        serving(object(), ident="TestMTA 1.0") as server,
        open_client(server.port, greeting=False) as client,
    ):
        assert await client.reply() == (220, [f"{HOSTNAME} TestMTA 1.0"])
        code, lines = await client.command("EHLO client.test")
        assert code == 250
        assert lines[0] == HOSTNAME
        assert "SIZE 33554432" in lines
        assert "8BITMIME" in lines
        assert "SMTPUTF8" not in lines
        assert "STARTTLS" not in lines


async def test_default_ident_names_project(open_client: Any) -> None:
    async with (
        serving(object()) as server,
        open_client(server.port, greeting=False) as client,
    ):
        _code, lines = await client.reply()
        assert lines[0].startswith(f"{HOSTNAME} smtpproto ")


async def test_options_reach_engine(open_client: Any) -> None:
    async with (
        serving(
            object(), data_size_limit=0, enable_SMTPUTF8=True, max_recipients=1
        ) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert "SIZE" in lines
        assert "SMTPUTF8" in lines
        await client.command("MAIL FROM:<a@x.test>")
        assert (await client.command("RCPT TO:<b@x.test>"))[0] == 250
        assert (await client.command("RCPT TO:<c@x.test>"))[0] == 452


def test_hostname_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[None] = []

    def fake_getfqdn(name: str = "") -> str:
        calls.append(None)
        return "fqdn.example.test"

    monkeypatch.setattr(socket, "getfqdn", fake_getfqdn)
    server = SMTPServer(object())
    assert server.hostname == "fqdn.example.test"
    assert len(calls) == 1


def test_invalid_engine_option() -> None:
    with pytest.raises(ValueError, match="bare_line_ending"):
        SMTPServer(object(), hostname=HOSTNAME, bare_line_ending="sometimes")


def test_invalid_proxy_timeout() -> None:
    with pytest.raises(ValueError, match="proxy_protocol_timeout"):
        SMTPServer(object(), hostname=HOSTNAME, proxy_protocol_timeout=0)


async def test_port_and_sockets() -> None:
    server = SMTPServer(object(), hostname=HOSTNAME)
    with pytest.raises(RuntimeError):
        server.port  # noqa: B018 - the property raises
    async with server.serving("127.0.0.1", 0):
        assert server.port > 0
        assert len(server.sockets) == 1
        assert server.sockets[0].getsockname()[1] == server.port
    assert server.sockets == []


async def test_bind_error_is_raised() -> None:
    async with serving(object()) as first:
        second = SMTPServer(object(), hostname=HOSTNAME)
        with pytest.raises(OSError):
            async with second.serving("127.0.0.1", first.port):
                pass


async def test_block_error_comes_out_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with serving(object()):
            raise KeyError("from the block")


async def test_serving_twice_rejected() -> None:
    server = SMTPServer(object(), hostname=HOSTNAME)
    async with server.serving("127.0.0.1", 0):
        with pytest.raises(RuntimeError, match="already serving"):
            async with server.serving("127.0.0.1", 0):
                pass


async def test_server_reusable_after_serving(open_client: Any) -> None:
    server = SMTPServer(object(), hostname=HOSTNAME)
    for _ in range(2):
        async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
            assert (await client.command("NOOP"))[0] == 250


async def test_add_listener_second_port(open_client: Any) -> None:
    async with serving(object()) as server:
        sockets = await server.add_listener("127.0.0.1", 0)
        second_port = sockets[0].getsockname()[1]
        assert second_port != server.port
        assert len(server.sockets) == 2
        async with open_client(second_port) as client:
            assert (await client.command("NOOP"))[0] == 250


async def test_serve_function(open_client: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(serve, Recorder(), "127.0.0.1", port)
        with anyio.fail_after(5):
            while True:
                try:
                    async with open_client(port) as client:
                        assert (await client.command("NOOP"))[0] == 250
                    break
                except OSError:
                    await anyio.sleep(0.02)
        task_group.cancel_scope.cancel()


async def test_client_disconnect_is_harmless(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto")
    async with (
        serving(Recorder()) as server,
        open_client(server.port) as client,
    ):
        await client.send("EHLO client.test\r\nMAIL FROM:<a@x.test>\r\n")
        async with open_client(server.port) as client:
            assert (await client.command("NOOP"))[0] == 250
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_connection_and_message_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.server")
    async with serving(Recorder()) as server:
        await anyio.to_thread.run_sync(
            send_with_smtplib, server.port, MESSAGE, ["a@x.test", "b@x.test"]
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "smtpproto.server"]
    assert any(
        m.startswith("connection from 127.0.0.1:") and "opened" in m for m in messages
    )
    assert any(
        m.startswith("connection from 127.0.0.1:") and "closed" in m for m in messages
    )
    accepted = [m for m in messages if "accepted" in m]
    assert len(accepted) == 1
    assert f"{len(MESSAGE)} octets" in accepted[0]
    assert "recipients: 2" in accepted[0]


async def test_wire_log_needs_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto")
    async with serving(Recorder()) as server:
        await anyio.to_thread.run_sync(
            send_with_smtplib, server.port, MESSAGE, ["a@x.test"]
        )
    assert [r for r in caplog.records if r.name == "smtpproto.wire"] == []


async def test_wire_log_shows_commands_and_replies(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpproto.wire")
    async with serving(Recorder()) as server, open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.command("MAIL FROM:<a@x.test>")
    text = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "smtpproto.wire"
    )
    assert "C: MailFrom(address='a@x.test'" in text
    assert "S: 250 2.1.0 OK" in text
    assert f"S: 220 {HOSTNAME}" in text


# ---------------------------------------------------------------- PROXY protocol

PROXY_V1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n"


class ProxyRecorder:
    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.headers: list[Any] = []

    async def handle_PROXY(
        self, server: SMTPServer, session: Session, envelope: Envelope, proxy_data: Any
    ) -> bool:
        self.headers.append(proxy_data)
        return self.accept


class SyncProxyRecorder(ProxyRecorder):
    def handle_PROXY(  # type: ignore[override]
        self, server: SMTPServer, session: Session, envelope: Envelope, proxy_data: Any
    ) -> bool:
        self.headers.append(proxy_data)
        return self.accept


@pytest.mark.parametrize(
    "handler_class", [SyncProxyRecorder, ProxyRecorder], ids=["sync", "async"]
)
async def test_proxy_header_accepted(
    handler_class: type[ProxyRecorder], open_client: Any
) -> None:
    handler = handler_class(accept=True)
    async with (
        serving(handler, proxy_protocol_timeout=5) as server,
        open_client(server.port, greeting=False) as client,
    ):
        await client.send(PROXY_V1 + b"NOOP\r\n")
        assert (await client.reply())[0] == 220
        assert (await client.reply())[0] == 250
    header = handler.headers[0]
    assert header.source_address == "192.0.2.1"
    assert header.source_port == 56324


async def test_proxy_header_rejected_by_hook(open_client: Any) -> None:
    handler = ProxyRecorder(accept=False)
    async with (
        serving(handler, proxy_protocol_timeout=5) as server,
        open_client(server.port, greeting=False) as client,
    ):
        await client.send(PROXY_V1)
        assert await client.closed()
        assert client.buffer == b""
    assert len(handler.headers) == 1


async def test_proxy_header_without_hook(open_client: Any) -> None:
    async with (
        serving(object(), proxy_protocol_timeout=5) as server,
        open_client(server.port, greeting=False) as client,
    ):
        await client.send(PROXY_V1)
        assert await client.closed()
        assert client.buffer == b""


async def test_proxy_header_invalid(open_client: Any) -> None:
    handler = ProxyRecorder(accept=True)
    async with (
        serving(handler, proxy_protocol_timeout=5) as server,
        open_client(server.port, greeting=False) as client,
    ):
        await client.send(b"EHLO not-a-proxy\r\n")
        assert await client.closed()
    assert handler.headers == []
