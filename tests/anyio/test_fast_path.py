"""The asyncio protocol path: batching, tasks only for async hooks, TLS, flow control."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import SMTPServer
from smtpproto_anyio._protocol import ProtocolConnection
from smtpproto_anyio._server import _ConnectionHandler

pytestmark = pytest.mark.anyio

HOSTNAME = "mx.example.test"


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def serving(handler: object, **options: Any) -> AbstractAsyncContextManager[SMTPServer]:
    return SMTPServer(handler, hostname=HOSTNAME, **options).serving("127.0.0.1", 0)


class RecordingTransport:
    """Wraps a transport and records every write."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []
        self.max_buffer = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)
        size = self.transport.get_write_buffer_size()
        self.max_buffer = max(self.max_buffer, size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def only_connection(server: SMTPServer) -> Any:
    """Return the server side of the single open connection."""
    with anyio.fail_after(5):
        while len(server._connections) != 1:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.01)
    [connection] = server._connections
    return connection


@asynccontextmanager
async def recorded(
    server: SMTPServer, open_client: Any
) -> AsyncIterator[tuple[Any, Any]]:
    async with open_client(server.port) as client:
        connection = await only_connection(server)
        assert isinstance(connection, ProtocolConnection)
        recorder = RecordingTransport(connection.transport)
        connection.transport = recorder  # type: ignore[assignment]
        yield client, recorder


async def test_asyncio_uses_protocol_connections(open_client: Any) -> None:
    async with serving(object()) as server, open_client(server.port):
        connection = await only_connection(server)
        assert isinstance(connection, ProtocolConnection)


async def test_protocol_path_can_be_disabled(open_client: Any) -> None:
    async with (
        serving(object(), asyncio_protocol=False) as server,
        open_client(server.port) as client,
    ):
        connection = await only_connection(server)
        assert not isinstance(connection, ProtocolConnection)
        assert isinstance(connection, _ConnectionHandler)
        assert (await client.command("NOOP"))[0] == 250


async def test_idle_connections_hold_no_task(open_client: Any) -> None:
    async with serving(object()) as server:
        before = len(asyncio.all_tasks())
        async with (
            open_client(server.port) as one,
            open_client(server.port) as two,
            open_client(server.port) as three,
        ):
            for client in (one, two, three):
                assert (await client.command("EHLO client.test"))[0] == 250
            assert len(asyncio.all_tasks()) == before


async def test_pipelined_replies_in_one_write(open_client: Any) -> None:
    async with serving(object()) as server, recorded(server, open_client) as pair:
        client, recorder = pair
        await client.send(
            "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
            "RCPT TO:<c@x.test>\r\nDATA\r\n"
        )
        codes = [(await client.reply())[0] for _ in range(5)]
        assert codes == [250, 250, 250, 250, 354]
        assert len(recorder.writes) == 1
        assert recorder.writes[0].endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")


async def test_async_hook_that_suspends_runs_in_task(open_client: Any) -> None:
    seen_tasks: list[asyncio.Task[Any] | None] = []

    class Slow:
        async def handle_RCPT(
            self,
            server: SMTPServer,
            session: Session,
            envelope: Envelope,
            address: str,
            options: list[str],
        ) -> str:
            seen_tasks.append(asyncio.current_task())
            await anyio.sleep(0.05)
            with anyio.fail_after(5):  # cancel scopes need a task
                await anyio.lowlevel.checkpoint()
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Slowly accepted"

    async with serving(Slow()) as server, open_client(server.port) as client:
        await client.send(
            "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
            "RCPT TO:<c@x.test>\r\nNOOP\r\n"
        )
        replies = [await client.reply() for _ in range(5)]
        assert [code for code, _ in replies] == [250, 250, 250, 250, 250]
        assert replies[2][1] == ["2.1.5 Slowly accepted"]
        assert replies[3][1] == ["2.1.5 Slowly accepted"]
        assert len(seen_tasks) == 2
        assert all(task is not None for task in seen_tasks)


async def test_sync_hooks_run_inline(open_client: Any) -> None:
    seen_tasks: list[asyncio.Task[Any] | None] = []

    class Inline:
        def handle_NOOP(
            self, server: SMTPServer, session: Session, envelope: Envelope, arg: str
        ) -> str:
            seen_tasks.append(asyncio.current_task())
            return "250 2.0.0 inline"

    async with serving(Inline()) as server, open_client(server.port) as client:
        assert (await client.command("NOOP")) == (250, ["2.0.0 inline"])
        assert seen_tasks == [None]


async def test_starttls_uses_start_tls(
    open_client: Any,
    server_tls_context: Any,
    client_tls_context: Any,
) -> None:
    async with (
        serving(object(), tls_context=server_tls_context) as server,
        open_client(server.port) as client,
    ):
        connection = await only_connection(server)
        plain_transport = connection.transport
        await client.command("EHLO client.test")
        assert (await client.command("STARTTLS"))[0] == 220
        await client.starttls(client_tls_context)
        code, lines = await client.command("EHLO client.test")
        assert code == 250
        assert "STARTTLS" not in lines
        assert connection.transport is not plain_transport
        assert connection.transport.get_extra_info("ssl_object") is not None
        assert connection.conn.session.ssl["version"].startswith("TLS")
        assert (await client.command("MAIL FROM:<a@x.test>"))[0] == 250


async def test_idle_timeout_without_task(open_client: Any) -> None:
    async with serving(object(), timeout=0.3) as server:
        before = len(asyncio.all_tasks())
        async with open_client(server.port) as client:
            assert len(asyncio.all_tasks()) == before
            start = anyio.current_time()
            code, lines = await client.reply(seconds=3)
            assert code == 421
            assert lines[0].startswith("4.4.2 ")
            assert 0.25 <= anyio.current_time() - start < 2
            assert await client.closed()


async def test_timeout_restarts_on_activity(open_client: Any) -> None:
    async with (
        serving(object(), timeout=0.4) as server,
        open_client(server.port) as client,
    ):
        for _ in range(4):
            await anyio.sleep(0.2)
            assert (await client.command("NOOP"))[0] == 250


async def test_client_that_does_not_read(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.server")
    burst = b"NOOP\r\n" * 20_000
    async with (
        serving(object(), timeout=0.5, max_errors=None) as server,
        recorded(server, open_client) as (client, recorder),
    ):
        # Sends block once both socket buffers are full; the server aborts
        # the connection when its replies stay unread for the timeout.
        with anyio.move_on_after(5):
            try:
                for _ in range(200):
                    await client.send(burst)
            except anyio.BrokenResourceError:
                pass
        with anyio.fail_after(5):
            while server._connections:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.05)
    assert "replies not read" in caplog.text
    # Reading paused while replies were waiting: the buffer stayed near one
    # read's worth of replies above the transport's high-water mark.
    assert 0 < recorder.max_buffer < 1_000_000
