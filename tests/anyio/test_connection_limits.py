"""Connection limits, the greeting delay and the configurable error reply."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio
import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import SMTPServer

pytestmark = pytest.mark.anyio

HOSTNAME = "mx.example.test"


def serving(handler: object, **options: Any) -> AbstractAsyncContextManager[SMTPServer]:
    return SMTPServer(handler, hostname=HOSTNAME, **options).serving("127.0.0.1", 0)


@pytest.fixture
async def connect(open_client: Any) -> AsyncIterator[Callable[[int], Awaitable[Any]]]:
    """Return ``connect(port)``: a raw client, closed at the end of the test."""
    async with AsyncExitStack() as stack:

        async def connect(port: int) -> Any:
            return await stack.enter_async_context(open_client(port, greeting=False))

        yield connect


class Failing:
    def handle_NOOP(
        self, server: SMTPServer, session: Session, envelope: Envelope, arg: str
    ) -> str:
        raise RuntimeError("broken hook")


async def test_max_connections_rejects_with_421(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.server")
    async with serving(object(), max_connections=2) as server:
        first = await connect(server.port)
        second = await connect(server.port)
        assert (await first.reply())[0] == 220
        assert (await second.reply())[0] == 220

        third = await connect(server.port)
        code, lines = await third.reply()
        assert code == 421
        assert lines == ["4.7.0 Too many connections, try again later"]
        assert await third.closed()
        await third.aclose()

        # A closed connection frees its place.
        assert (await first.command("QUIT"))[0] == 221
        await first.aclose()
        with anyio.fail_after(5):
            while True:
                fourth = await connect(server.port)
                code, _ = await fourth.reply()
                if code == 220:
                    break
                await fourth.aclose()
                await anyio.sleep(0.05)
        assert (await fourth.command("NOOP"))[0] == 250
        await fourth.aclose()
        await second.aclose()
    assert "max_connections (2) reached" in caplog.text


async def test_max_connections_per_ip_rejects_with_421(connect: Any) -> None:
    async with serving(object(), max_connections_per_ip=1) as server:
        first = await connect(server.port)
        assert (await first.reply())[0] == 220
        second = await connect(server.port)
        code, lines = await second.reply()
        assert code == 421
        assert lines == [
            "4.7.0 Too many connections from your address, try again later"
        ]
        assert await second.closed()
        await second.aclose()
        assert (await first.command("NOOP"))[0] == 250
        await first.aclose()


async def test_rejection_log_is_rate_limited(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.server")
    async with serving(object(), max_connections_per_ip=1) as server:
        holder = await connect(server.port)
        assert (await holder.reply())[0] == 220
        for _ in range(5):
            client = await connect(server.port)
            assert (await client.reply())[0] == 421
            await client.aclose()
        await holder.aclose()
    lines = [r for r in caplog.records if "rejected: max_connections" in r.message]
    assert len(lines) == 1


async def test_early_talker_rejected_with_554(connect: Any) -> None:
    async with serving(
        object(), greeting_delay=2, reject_unsynchronized=True
    ) as server:
        client = await connect(server.port)
        start = anyio.current_time()
        await client.send("EHLO early.example\r\n")
        code, _ = await client.reply()
        assert code == 220
        code, lines = await client.reply()
        assert code == 554
        assert lines[0].startswith("5.5.0 ")
        assert await client.closed()
        # The early bytes end the delay: no need to wait it out.
        assert anyio.current_time() - start < 1.5
        await client.aclose()


async def test_greeting_delay_patient_client_served(connect: Any) -> None:
    async with serving(
        object(), greeting_delay=0.3, reject_unsynchronized=True
    ) as server:
        client = await connect(server.port)
        start = anyio.current_time()
        assert (await client.reply())[0] == 220
        assert anyio.current_time() - start >= 0.25
        assert (await client.command("EHLO patient.example"))[0] == 250
        assert (await client.command("QUIT"))[0] == 221
        await client.aclose()


async def test_error_reply_configurable(connect: Any) -> None:
    async with serving(Failing(), error_reply="554 5.3.0 Try elsewhere") as server:
        client = await connect(server.port)
        assert (await client.reply())[0] == 220
        code, lines = await client.command("NOOP")
        assert code == 554
        assert lines == ["5.3.0 Try elsewhere"]
        await client.aclose()


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        SMTPServer(object(), hostname=HOSTNAME, max_connections=0)
    with pytest.raises(ValueError, match="greeting_delay"):
        SMTPServer(object(), hostname=HOSTNAME, greeting_delay=-1)
    with pytest.raises(ValueError, match="error_reply"):
        SMTPServer(object(), hostname=HOSTNAME, error_reply="250 fine")
