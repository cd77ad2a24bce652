"""Fixtures for the adapter tests: both anyio backends, trustme TLS, a raw client."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import trustme
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a certificate for localhost and 127.0.0.1, as files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = TLSFiles(
        ca=ca,
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.cert_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    return files


@pytest.fixture
def server_tls_context(tls_files: TLSFiles) -> ssl.SSLContext:
    return tls_files.server_context()


@pytest.fixture
def client_tls_context(tls_files: TLSFiles) -> ssl.SSLContext:
    return tls_files.client_context()


class RawClient:
    """A line-level SMTP client for dialogues that smtplib cannot produce."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        await self.stream.send(data)

    async def _fill(self) -> bool:
        try:
            self.buffer += await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            self.eof = True
            return False
        return True

    async def read_line(self) -> bytes:
        """Return one line without CRLF; raise EOFError if the server closed."""
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if not await self._fill():
                raise EOFError(f"server closed; unread {bytes(self.buffer)!r}")

    async def reply(self, seconds: float = 5) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply: its code and the text lines."""
        lines: list[str] = []
        with anyio.fail_after(seconds):
            while True:
                line = (await self.read_line()).decode("utf-8", "replace")
                lines.append(line[4:])
                if line[3:4] != "-":
                    return int(line[:3]), lines

    async def command(self, line: str) -> tuple[int, list[str]]:
        await self.send(line + "\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext) -> None:
        assert not self.buffer, f"plaintext left before TLS: {bytes(self.buffer)!r}"
        self.stream = await TLSStream.wrap(
            self.stream, hostname="localhost", ssl_context=context
        )

    async def closed(self, seconds: float = 5) -> bool:
        """Return True once the server has closed the connection."""
        with anyio.fail_after(seconds):
            while not self.eof:
                await self._fill()
        return True

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)


OpenClient = Callable[..., AbstractAsyncContextManager[RawClient]]


@pytest.fixture
def open_client() -> OpenClient:
    """Return ``open_client(port, greeting=True)``, an async context manager."""

    @asynccontextmanager
    async def open_client(
        port: int,
        *,
        greeting: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> AsyncIterator[RawClient]:
        stream: ByteStream = await anyio.connect_tcp("127.0.0.1", port)
        if tls is not None:
            stream = await TLSStream.wrap(stream, hostname="localhost", ssl_context=tls)
        client = RawClient(stream)
        try:
            if greeting:
                code, _ = await client.reply()
                assert code == 220
            yield client
        finally:
            await client.aclose()

    return open_client
