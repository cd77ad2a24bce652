"""STARTTLS, implicit TLS (SMTPS), AUTH over TLS, and TLS failures."""

from __future__ import annotations

import logging
import shutil
import smtplib
import ssl
import subprocess
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import AuthResult, LoginPassword, SMTPServer

pytestmark = pytest.mark.anyio

HOSTNAME = "localhost"
MESSAGE = b"Subject: tls\r\n\r\nsecret body\r\n"


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.envelopes: list[Envelope] = []

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        self.sessions.append(session)
        self.envelopes.append(envelope)
        return "250 OK"


def check_user(
    server: SMTPServer,
    session: Session,
    envelope: Envelope,
    mechanism: str,
    auth_data: Any,
) -> AuthResult:
    if auth_data == LoginPassword(b"alice", b"wonderland"):
        return AuthResult(success=True, auth_data="alice")
    return AuthResult(success=False)


def starttls_server(
    handler: object, context: ssl.SSLContext, **options: Any
) -> AbstractAsyncContextManager[SMTPServer]:
    server = SMTPServer(handler, hostname=HOSTNAME, tls_context=context, **options)
    return server.serving("127.0.0.1", 0)


async def test_starttls_with_smtplib(
    server_tls_context: ssl.SSLContext, client_tls_context: ssl.SSLContext
) -> None:
    handler = Recorder()

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            assert not smtp.has_extn("auth")
            smtp.starttls(context=client_tls_context)
            smtp.ehlo()
            assert not smtp.has_extn("starttls")
            smtp.sendmail("a@x.test", ["b@x.test"], MESSAGE)

    async with starttls_server(handler, server_tls_context) as server:
        await anyio.to_thread.run_sync(client, server.port)

    session = handler.sessions[0]
    assert handler.envelopes[0].content == MESSAGE
    assert session.ssl is not None
    assert session.ssl["version"].startswith("TLS")
    assert session.ssl["cipher"][0]
    assert session.ssl["ssl_object"] is not None
    assert session.peer[0] == "127.0.0.1"


async def test_smtps_with_smtplib(
    server_tls_context: ssl.SSLContext, client_tls_context: ssl.SSLContext
) -> None:
    handler = Recorder()

    def client(port: int) -> None:
        with smtplib.SMTP_SSL(
            "localhost", port, timeout=5, context=client_tls_context
        ) as smtp:
            smtp.ehlo()
            assert not smtp.has_extn("starttls")
            smtp.login("alice", "wonderland")
            smtp.sendmail("a@x.test", ["b@x.test"], MESSAGE)

    server = SMTPServer(handler, hostname=HOSTNAME, authenticator=check_user)
    async with server.serving("127.0.0.1", 0, ssl_context=server_tls_context):
        await anyio.to_thread.run_sync(client, server.port)
    session = handler.sessions[0]
    assert session.ssl is not None
    assert session.authenticated is True
    assert session.auth_data == "alice"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_after_starttls(
    mechanism: str,
    server_tls_context: ssl.SSLContext,
    client_tls_context: ssl.SSLContext,
) -> None:
    handler = Recorder()

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.starttls(context=client_tls_context)
            smtp.ehlo()
            assert mechanism in smtp.esmtp_features["auth"].split()
            smtp.user, smtp.password = "alice", "wrong"
            method = getattr(smtp, "auth_" + mechanism.lower())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.auth(mechanism, method)
            smtp.user, smtp.password = "alice", "wonderland"
            code, _ = smtp.auth(mechanism, method)
            assert code == 235
            smtp.sendmail("a@x.test", ["b@x.test"], MESSAGE)

    async with starttls_server(
        handler, server_tls_context, authenticator=check_user
    ) as server:
        await anyio.to_thread.run_sync(client, server.port)
    assert handler.sessions[0].auth_data == "alice"


async def test_auth_needs_tls_by_default(
    server_tls_context: ssl.SSLContext, open_client: Any
) -> None:
    async with (
        starttls_server(
            Recorder(), server_tls_context, authenticator=check_user
        ) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert not [line for line in lines if line.startswith("AUTH")]
        assert (await client.command("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ="))[0] == 538


async def test_require_starttls(
    server_tls_context: ssl.SSLContext,
    client_tls_context: ssl.SSLContext,
    open_client: Any,
) -> None:
    async with (
        starttls_server(
            Recorder(), server_tls_context, require_starttls=True
        ) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        assert (await client.command("MAIL FROM:<a@x.test>"))[0] == 530
        assert (await client.command("STARTTLS"))[0] == 220
        await client.starttls(client_tls_context)
        await client.command("EHLO client.test")
        assert (await client.command("MAIL FROM:<a@x.test>"))[0] == 250


async def test_starttls_drops_pipelined_plaintext(
    server_tls_context: ssl.SSLContext,
    client_tls_context: ssl.SSLContext,
    open_client: Any,
) -> None:
    async with (
        starttls_server(Recorder(), server_tls_context) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        await client.send("STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
        assert (await client.reply())[0] == 220
        await client.starttls(client_tls_context)
        # The session starts over: MAIL needs a new EHLO and nothing was injected.
        assert (await client.command("MAIL FROM:<a@x.test>"))[0] == 503
        assert (await client.command("NOOP"))[0] == 250


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("outcome", "refused"),
    [(True, False), (False, True), ("raise", True)],
    ids=["accepted", "refused", "raising"],
)
async def test_handle_starttls(
    is_async: bool,
    outcome: object,
    refused: bool,
    server_tls_context: ssl.SSLContext,
    client_tls_context: ssl.SSLContext,
    open_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Session] = []

    def check_tls(session: Session) -> bool:
        seen.append(session)
        if outcome == "raise":
            raise RuntimeError("certificate check broke")
        return bool(outcome)

    class SyncHandler:
        def handle_STARTTLS(
            self, server: SMTPServer, session: Session, envelope: Envelope
        ) -> bool:
            return check_tls(session)

    class AsyncHandler:
        async def handle_STARTTLS(
            self, server: SMTPServer, session: Session, envelope: Envelope
        ) -> bool:
            return check_tls(session)

    handler = AsyncHandler() if is_async else SyncHandler()
    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with (
        starttls_server(handler, server_tls_context) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        assert (await client.command("STARTTLS"))[0] == 220
        await client.starttls(client_tls_context)
        if refused:
            code, lines = await client.command("EHLO client.test")
            assert code == 554
            assert lines[-1].endswith("Command refused due to lack of security")
            assert (await client.command("NOOP"))[0] == 554
            assert (await client.command("MAIL FROM:<a@x.test>"))[0] >= 500
        else:
            assert (await client.command("EHLO client.test"))[0] == 250
            assert (await client.command("MAIL FROM:<a@x.test>"))[0] == 250
        assert (await client.command("QUIT"))[0] == 221
    assert seen[0].ssl is not None


async def test_handshake_failure_logged(
    server_tls_context: ssl.SSLContext,
    open_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.tls")
    async with (
        starttls_server(Recorder(), server_tls_context) as server,
        open_client(server.port) as client,
    ):
        assert (await client.command("STARTTLS"))[0] == 220
        await client.send(b"this is not a TLS client hello\r\n" * 4)
        assert await client.closed()
        async with open_client(server.port) as client:
            assert (await client.command("NOOP"))[0] == 250
    messages = [r.getMessage() for r in caplog.records if r.name == "smtpproto.tls"]
    assert len(messages) == 1
    assert messages[0].startswith("TLS handshake with 127.0.0.1:")
    assert "failed" in messages[0]


async def test_handshake_timeout(
    server_tls_context: ssl.SSLContext,
    open_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtpproto.tls")
    async with (
        starttls_server(
            Recorder(), server_tls_context, tls_handshake_timeout=0.3
        ) as server,
        open_client(server.port) as client,
    ):
        assert (await client.command("STARTTLS"))[0] == 220
        with anyio.fail_after(3):
            assert await client.closed()
    messages = [r.getMessage() for r in caplog.records if r.name == "smtpproto.tls"]
    assert any("timed out after 0.3 s" in m for m in messages)


async def test_smtps_handshake_timeout(
    server_tls_context: ssl.SSLContext, open_client: Any
) -> None:
    server = SMTPServer(Recorder(), hostname=HOSTNAME, tls_handshake_timeout=0.3)
    async with (
        server.serving("127.0.0.1", 0, ssl_context=server_tls_context),
        open_client(server.port, greeting=False) as client,
    ):
        with anyio.fail_after(3):
            assert await client.closed()
        assert client.buffer == b""


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
async def test_swaks_starttls_auth_pipelining(tls_files: Any) -> None:
    handler = Recorder()
    async with starttls_server(
        handler,
        tls_files.server_context(),
        authenticator=check_user,
        require_starttls=True,
    ) as server:
        result = await anyio.run_process(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{server.port}",
                "--from",
                "sender@x.test",
                "--to",
                "one@x.test,two@x.test",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "alice",
                "--auth-password",
                "wonderland",
                "--pipeline",
                "--timeout",
                "5",
            ],
            check=False,
            stdin=subprocess.DEVNULL,
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output + result.stderr.decode(errors="replace")
    assert "235 " in output
    assert handler.envelopes[0].rcpt_tos == ["one@x.test", "two@x.test"]
    assert handler.sessions[0].ssl is not None
    assert handler.sessions[0].auth_data == "alice"
