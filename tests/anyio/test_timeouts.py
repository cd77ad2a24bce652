"""Idle, message and PROXY timeouts, and graceful shutdown."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import SMTPServer

pytestmark = pytest.mark.anyio

HOSTNAME = "mx.example.test"


def serving(handler: object, **options: Any) -> AbstractAsyncContextManager[SMTPServer]:
    return SMTPServer(handler, hostname=HOSTNAME, **options).serving("127.0.0.1", 0)


class Recorder:
    def __init__(self) -> None:
        self.contents: list[bytes] = []
        self.aborted = anyio.Event()

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        self.contents.append(envelope.content)
        return "250 OK"

    async def handle_DATA_ABORT(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> None:
        self.aborted.set()


async def start_message(client: Any) -> None:
    await client.command("EHLO client.test")
    await client.command("MAIL FROM:<a@x.test>")
    await client.command("RCPT TO:<b@x.test>")
    assert (await client.command("DATA"))[0] == 354


async def test_idle_timeout_sends_421(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.server")
    async with (
        serving(Recorder(), timeout=0.5) as server,
        open_client(server.port) as client,
    ):
        start = anyio.current_time()
        code, lines = await client.reply(seconds=3)
        assert code == 421
        assert lines[0].startswith("4.4.2 ")
        assert await client.closed()
        assert 0.4 < anyio.current_time() - start < 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("timed out after 0.5 s" in m for m in messages)


async def test_idle_timer_restarts_on_commands(open_client: Any) -> None:
    async with (
        serving(Recorder(), timeout=0.5) as server,
        open_client(server.port) as client,
    ):
        for _ in range(5):
            await anyio.sleep(0.25)
            assert (await client.command("NOOP"))[0] == 250


async def test_slow_message_within_idle_timeout(open_client: Any) -> None:
    handler = Recorder()
    async with (
        serving(handler, timeout=0.5) as server,
        open_client(server.port) as client,
    ):
        await start_message(client)
        for number in range(6):
            await client.send(f"line {number}\r\n")
            await anyio.sleep(0.25)
        await client.send(".\r\n")
        assert (await client.reply())[0] == 250
    assert handler.contents[0].count(b"\r\n") == 6


async def test_message_time_budget(open_client: Any) -> None:
    handler = Recorder()
    async with (
        serving(handler, timeout=5, data_timeout=0.6) as server,
        open_client(server.port) as client,
    ):
        await start_message(client)
        start = anyio.current_time()
        with anyio.fail_after(4):
            while not client.buffer:
                await client.send("more content\r\n")
                with anyio.move_on_after(0.15):
                    await client._fill()
        code, lines = await client.reply()
        assert code == 421
        assert lines[0].startswith("4.4.2 ")
        assert anyio.current_time() - start < 3
        assert await client.closed()
        with anyio.fail_after(3):
            await handler.aborted.wait()
    assert handler.contents == []


async def test_proxy_header_timeout(open_client: Any) -> None:
    class Handler:
        def handle_PROXY(self, *args: Any) -> bool:
            return True

    async with (
        serving(Handler(), proxy_protocol_timeout=0.3) as server,
        open_client(server.port, greeting=False) as client,
    ):
        with anyio.fail_after(3):
            assert await client.closed()
        assert not client.buffer.startswith(b"220")


# ---------------------------------------------------------------- shutdown


async def test_shutdown_while_waiting_for_proxy_header(open_client: Any) -> None:
    server = SMTPServer(Recorder(), hostname=HOSTNAME, proxy_protocol_timeout=30)
    async with (
        server.serving("127.0.0.1", 0),
        open_client(server.port, greeting=False) as client,
    ):
        await client.send(b"PROXY TCP4 192.0.2.1")
        await anyio.sleep(0.1)
        with anyio.fail_after(3):
            await server.shutdown()
        assert await client.closed()


async def test_shutdown_closes_idle_sessions(open_client: Any) -> None:
    server = SMTPServer(Recorder(), hostname=HOSTNAME)
    async with server.serving("127.0.0.1", 0):
        async with open_client(server.port) as client:
            await client.command("EHLO client.test")
            with anyio.fail_after(3):
                await server.shutdown()
            code, lines = await client.reply()
            assert code == 421
            assert lines[0].startswith("4.3.2 ")
            assert await client.closed()
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", server.port)


async def test_shutdown_lets_message_finish(open_client: Any) -> None:
    handler = Recorder()
    server = SMTPServer(handler, hostname=HOSTNAME, shutdown_grace=5)
    async with (
        server.serving("127.0.0.1", 0),
        open_client(server.port) as client,
        anyio.create_task_group() as task_group,
    ):
        await start_message(client)
        await client.send("first part\r\n")
        task_group.start_soon(server.shutdown)
        await anyio.sleep(0.2)
        await client.send("second part\r\n.\r\n")
        assert (await client.reply())[0] == 250
        code, lines = await client.reply()
        assert code == 421
        assert lines[0].startswith("4.3.2 ")
        assert await client.closed()
    assert handler.contents == [b"first part\r\nsecond part\r\n"]


async def test_shutdown_during_hook(open_client: Any) -> None:
    class SlowHandler:
        async def handle_MAIL(self, *args: Any) -> str:
            await anyio.sleep(0.3)
            return "250 OK slow"

    server = SMTPServer(SlowHandler(), hostname=HOSTNAME)
    async with (
        server.serving("127.0.0.1", 0),
        open_client(server.port) as client,
        anyio.create_task_group() as task_group,
    ):
        await client.command("EHLO client.test")
        await client.send("MAIL FROM:<a@x.test>\r\n")
        await anyio.sleep(0.1)
        task_group.start_soon(server.shutdown)
        code, lines = await client.reply()
        assert code == 250
        assert lines[0].endswith("OK slow")
        assert (await client.reply())[0] == 421
        assert await client.closed()


async def test_shutdown_grace_expires(open_client: Any) -> None:
    handler = Recorder()
    server = SMTPServer(handler, hostname=HOSTNAME, shutdown_grace=0.3)
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        await start_message(client)
        await client.send("never finished\r\n")
        start = anyio.current_time()
        with anyio.fail_after(3):
            await server.shutdown()
        assert anyio.current_time() - start < 2
        assert await client.closed()
        assert handler.aborted.is_set()
    assert handler.contents == []


async def test_leaving_serving_shuts_down() -> None:
    server = SMTPServer(Recorder(), hostname=HOSTNAME)
    async with server.serving("127.0.0.1", 0):
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        greeting = await stream.receive()
    try:
        assert greeting.startswith(b"220 ")
        with anyio.fail_after(3):
            assert (await stream.receive()).startswith(b"421 4.3.2 ")
    finally:
        await stream.aclose()
