"""Hook dispatch: handler hooks, error replies, subclass commands and SASL methods."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import (
    MISSING,
    AuthExchange,
    AuthResult,
    LoginPassword,
    SMTPServer,
)

pytestmark = pytest.mark.anyio

HOSTNAME = "mx.example.test"


def serving(handler: object, **options: Any) -> AbstractAsyncContextManager[SMTPServer]:
    return SMTPServer(handler, hostname=HOSTNAME, **options).serving("127.0.0.1", 0)


def last_text(reply: tuple[int, list[str]]) -> str:
    return reply[1][-1]


def make_handler(is_async: bool, statuses: dict[str, object]) -> tuple[object, list]:
    """Build a handler whose hooks record their arguments and return ``statuses``."""
    calls: list[tuple[str, tuple[Any, ...]]] = []

    class Handler:
        pass

    def make_hook(name: str, status: object) -> Callable[..., Any]:
        if is_async:

            async def async_hook(self: object, *args: Any) -> object:
                calls.append((name, args))
                return status

            return async_hook

        def sync_hook(self: object, *args: Any) -> object:
            calls.append((name, args))
            return status

        return sync_hook

    for name, status in statuses.items():
        setattr(Handler, "handle_" + name, make_hook(name, status))
    return Handler(), calls


# ---------------------------------------------------------------- status hooks


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_hooks_replace_replies(is_async: bool, open_client: Any) -> None:
    handler, calls = make_handler(
        is_async,
        {
            "HELO": "250 helo-hook",
            "MAIL": "250 mail-hook",
            "RCPT": "250 rcpt-hook",
            "DATA": "250 data-hook",
            "RSET": "250 rset-hook",
            "NOOP": "250 noop-hook",
            "VRFY": "252 vrfy-hook",
            "QUIT": "221 quit-hook",
        },
    )
    async with serving(handler) as server, open_client(server.port) as client:
        assert await client.command("HELO client.test") == (250, ["helo-hook"])
        reply = await client.command("MAIL FROM:<a@example.com>")
        assert reply[0] == 250
        assert last_text(reply).endswith("mail-hook")
        assert last_text(await client.command("RCPT TO:<b@example.com>")).endswith(
            "rcpt-hook"
        )
        assert (await client.command("DATA"))[0] == 354
        reply = await client.command("Subject: x\r\n\r\nbody\r\n.")
        assert reply[0] == 250
        assert last_text(reply).endswith("data-hook")
        assert last_text(await client.command("RSET")).endswith("rset-hook")
        assert last_text(await client.command("NOOP hello")).endswith("noop-hook")
        reply = await client.command("VRFY someone")
        assert reply[0] == 252
        assert last_text(reply).endswith("vrfy-hook")
        reply = await client.command("QUIT")
        assert reply[0] == 221
        assert last_text(reply).endswith("quit-hook")
        assert await client.closed()

    names = [name for name, _ in calls]
    assert names == ["HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "QUIT"]
    arguments = dict(calls)
    server_arg, session, envelope, hostname = arguments["HELO"]
    assert server_arg is server
    assert isinstance(session, Session)
    assert session.peer[0] == "127.0.0.1"
    assert isinstance(envelope, Envelope)
    assert hostname == "client.test"
    assert arguments["MAIL"][3:] == ("a@example.com", [])
    assert arguments["RCPT"][3:] == ("b@example.com", [])
    data_envelope = arguments["DATA"][2]
    assert data_envelope.mail_from == "a@example.com"
    assert data_envelope.rcpt_tos == ["b@example.com"]
    assert data_envelope.content == b"Subject: x\r\n\r\nbody\r\n"
    assert data_envelope.original_content == b"Subject: x\r\n\r\nbody\r\n"
    assert arguments["NOOP"][3:] == ("hello",)
    assert arguments["VRFY"][3:] == ("someone",)


async def test_mail_options_passed_to_hook(open_client: Any) -> None:
    handler, calls = make_handler(True, {"MAIL": None, "RCPT": None})
    async with serving(handler) as server, open_client(server.port) as client:
        assert (await client.command("EHLO client.test"))[0] == 250
        assert (await client.command("MAIL FROM:<a@x.test> SIZE=100 BODY=8BITMIME"))[
            0
        ] == 250
        assert (await client.command("RCPT TO:<b@x.test>"))[0] == 250
    assert calls[0][1][3:] == ("a@x.test", ["SIZE=100", "BODY=8BITMIME"])


@pytest.mark.parametrize("status", [None, MISSING], ids=["none", "missing"])
async def test_hook_default_reply(status: object, open_client: Any) -> None:
    handler, calls = make_handler(False, {"MAIL": status, "NOOP": status})
    async with serving(handler) as server, open_client(server.port) as client:
        await client.command("HELO client.test")
        assert await client.command("MAIL FROM:<a@x.test>") == (250, ["2.1.0 OK"])
        assert await client.command("NOOP") == (250, ["2.0.0 OK"])
    assert len(calls) == 2


async def test_hooks_add_attributes(open_client: Any) -> None:
    seen: dict[str, object] = {}

    class Handler:
        async def handle_MAIL(
            self, server: SMTPServer, session: Session, envelope: Envelope, *args: Any
        ) -> str:
            session.tag = "from-mail"  # type: ignore[attr-defined]
            envelope.note = 42  # type: ignore[attr-defined]
            envelope.mail_from = "rewritten@x.test"
            return "250 OK"

        async def handle_DATA(
            self, server: SMTPServer, session: Session, envelope: Envelope
        ) -> str:
            seen["tag"] = session.tag  # type: ignore[attr-defined]
            seen["note"] = envelope.note  # type: ignore[attr-defined]
            seen["mail_from"] = envelope.mail_from
            return "250 OK"

    async with serving(Handler()) as server, open_client(server.port) as client:
        await client.command("HELO client.test")
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.command("DATA")
        assert (await client.command("x\r\n."))[0] == 250
    assert seen == {"tag": "from-mail", "note": 42, "mail_from": "rewritten@x.test"}


# ---------------------------------------------------------------- EHLO forms


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_ehlo_hook_five_arguments(is_async: bool, open_client: Any) -> None:
    received: list[list[str]] = []

    def edit_responses(
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        received.append(list(responses))
        session.host_name = hostname
        return [line for line in responses if "CHUNKING" not in line] + ["250 XTRA"]

    class SyncHandler:
        def handle_EHLO(
            self,
            server: SMTPServer,
            session: Session,
            envelope: Envelope,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            return edit_responses(server, session, envelope, hostname, responses)

    class AsyncHandler:
        async def handle_EHLO(
            self,
            server: SMTPServer,
            session: Session,
            envelope: Envelope,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            return edit_responses(server, session, envelope, hostname, responses)

    handler = AsyncHandler() if is_async else SyncHandler()
    async with serving(handler) as server, open_client(server.port) as client:
        code, lines = await client.command("EHLO client.test")
    assert code == 250
    assert received[0][0] == f"250-{HOSTNAME}"
    assert received[0][-1] == "250 HELP"
    assert "CHUNKING" in "\n".join(received[0])
    assert lines[0] == HOSTNAME
    assert "CHUNKING" not in lines
    assert lines[-2:] == ["HELP", "XTRA"]


async def test_ehlo_hook_four_arguments(open_client: Any) -> None:
    class Handler:
        def handle_EHLO(
            self,
            server: SMTPServer,
            session: Session,
            envelope: Envelope,
            hostname: str,
        ) -> str:
            session.host_name = hostname
            return "250 HELP"

    async with serving(Handler()) as server, open_client(server.port) as client:
        code, lines = await client.command("EHLO client.test")
    assert code == 250
    assert lines[0] == HOSTNAME
    assert lines.count("HELP") == 1
    assert "PIPELINING" in lines


async def test_ehlo_hook_four_arguments_failure(open_client: Any) -> None:
    class Handler:
        def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str
        ) -> str:
            return "550 go away"

    async with serving(Handler()) as server, open_client(server.port) as client:
        assert await client.command("EHLO client.test") == (550, ["go away"])


def test_ehlo_hook_wrong_signature() -> None:
    class Handler:
        def handle_EHLO(self, server: Any, session: Any) -> str:
            return "250 OK"

    with pytest.raises(TypeError, match="handle_EHLO takes 2 arguments"):
        SMTPServer(Handler(), hostname=HOSTNAME)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_raising_hook_replies_451(
    is_async: bool, open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Handler:
        pass

    def sync_hook(self: object, *args: Any) -> str:
        raise RuntimeError("secret-detail")

    async def async_hook(self: object, *args: Any) -> str:
        raise RuntimeError("secret-detail")

    Handler.handle_MAIL = async_hook if is_async else sync_hook  # type: ignore[attr-defined]

    caplog.set_level(logging.ERROR, logger="smtpproto.server")
    async with serving(Handler()) as server, open_client(server.port) as client:
        await client.command("HELO client.test")
        code, lines = await client.command("MAIL FROM:<a@x.test>")
        assert code == 451
        assert lines == ["4.3.0 Error: internal server error"]
        assert await client.command("NOOP") == (250, ["2.0.0 OK"])
        code, lines = await client.command("MAIL FROM:<a@x.test>")
        assert code == 451

    records = [r for r in caplog.records if r.name == "smtpproto.server"]
    assert records
    assert "handle_MAIL failed" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "secret-detail" in str(records[0].exc_info[1])


@pytest.mark.parametrize(
    "status",
    [42, "hello", ["250 OK"], "354 wrong code for MAIL"],
    ids=["int", "no-code", "list", "unfit-code"],
)
async def test_invalid_status_replies_451(
    status: object, open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler, _ = make_handler(True, {"MAIL": status})
    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with serving(handler) as server, open_client(server.port) as client:
        await client.command("HELO client.test")
        assert (await client.command("MAIL FROM:<a@x.test>"))[0] == 451
        assert (await client.command("NOOP"))[0] == 250


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_handle_exception_reply(is_async: bool, open_client: Any) -> None:
    errors: list[BaseException] = []

    class Handler:
        async def handle_RCPT(self, *args: Any) -> str:
            raise KeyError("no such user")

    def sync_handle_exception(self: object, error: BaseException) -> str:
        errors.append(error)
        return "550 5.1.1 Rejected by policy"

    async def async_handle_exception(self: object, error: BaseException) -> str:
        return sync_handle_exception(self, error)

    Handler.handle_exception = (  # type: ignore[attr-defined]
        async_handle_exception if is_async else sync_handle_exception
    )
    async with serving(Handler()) as server, open_client(server.port) as client:
        await client.command("HELO client.test")
        await client.command("MAIL FROM:<a@x.test>")
        assert await client.command("RCPT TO:<b@x.test>") == (
            550,
            ["5.1.1 Rejected by policy"],
        )
    assert len(errors) == 1
    assert isinstance(errors[0], KeyError)


@pytest.mark.parametrize("outcome", ["none", "raise"])
async def test_handle_exception_fails_replies_451(
    outcome: str, open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Handler:
        async def handle_NOOP(self, *args: Any) -> str:
            raise ValueError("broken")

        async def handle_exception(self, error: BaseException) -> str | None:
            if outcome == "raise":
                raise RuntimeError("handler of handlers broken too")
            return None

    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with serving(Handler()) as server, open_client(server.port) as client:
        assert (await client.command("NOOP"))[0] == 451
        assert (await client.command("RSET"))[0] == 250


# ---------------------------------------------------------------- DATA variants


async def test_decode_data_gives_str(open_client: Any) -> None:
    handler, calls = make_handler(True, {"DATA": "250 OK"})
    async with (
        serving(handler, decode_data=True) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert "8BITMIME" not in lines
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.command("DATA")
        await client.send(b"caf\xc3\xa9 \xff\r\n.\r\n")
        assert (await client.reply())[0] == 250
    envelope = calls[0][1][2]
    assert envelope.content == "café \udcff\r\n"
    assert envelope.original_content == b"caf\xc3\xa9 \xff\r\n"


class StreamingHandler:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.completed: list[Envelope] = []
        self.aborted: list[Envelope] = []
        self.aborted_event = anyio.Event()

    async def handle_DATA_CHUNK(
        self, server: SMTPServer, session: Session, envelope: Envelope, data: bytes
    ) -> None:
        self.chunks.append(data)

    def handle_DATA_ABORT(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> None:
        self.aborted.append(envelope)
        self.aborted_event.set()

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        self.completed.append(envelope)
        return "250 streamed"


class SyncStreamingHandler(StreamingHandler):
    def handle_DATA_CHUNK(  # type: ignore[override]
        self, server: SMTPServer, session: Session, envelope: Envelope, data: bytes
    ) -> None:
        self.chunks.append(data)


@pytest.mark.parametrize(
    "handler_class", [SyncStreamingHandler, StreamingHandler], ids=["sync", "async"]
)
async def test_streaming_hook_gets_chunks(
    handler_class: type[StreamingHandler], open_client: Any
) -> None:
    handler = handler_class()
    body = b"".join(b"line %d ..dots\r\n" % i for i in range(5000))
    async with serving(handler) as server, open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.command("DATA")
        await client.send(body + b".\r\n")
        reply = await client.reply()
        assert reply[0] == 250
        assert last_text(reply).endswith("streamed")
    assert b"".join(handler.chunks) == body
    assert len(handler.completed) == 1
    assert handler.completed[0].content is None
    assert handler.aborted == []


async def test_streaming_abort_on_rejected_message(open_client: Any) -> None:
    handler = StreamingHandler()
    async with serving(handler) as server, open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.command("DATA")
        await client.send(b"bare\nline feed\r\n.\r\n")
        assert (await client.reply())[0] == 550
        assert (await client.command("NOOP"))[0] == 250
    assert handler.completed == []
    assert len(handler.aborted) == 1
    assert handler.aborted[0].mail_from == "a@x.test"


async def test_streaming_abort_on_disconnect(open_client: Any) -> None:
    handler = StreamingHandler()
    async with serving(handler) as server:
        async with open_client(server.port) as client:
            await client.command("EHLO client.test")
            await client.command("MAIL FROM:<a@x.test>")
            await client.command("RCPT TO:<b@x.test>")
            await client.command("DATA")
            await client.send(b"partial message\r\n" * 100)
        with anyio.fail_after(5):
            await handler.aborted_event.wait()
    assert len(handler.aborted) == 1
    assert handler.completed == []


async def test_streaming_abort_on_bdat_rset(open_client: Any) -> None:
    handler = StreamingHandler()
    async with serving(handler) as server, open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.send("BDAT 5\r\nhello")
        assert (await client.reply())[0] == 250
        assert (await client.command("RSET"))[0] == 250
        assert (await client.command("NOOP"))[0] == 250
    assert handler.chunks == [b"hello"]
    assert len(handler.aborted) == 1


async def test_chunk_hook_failure_replies_451(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Handler(StreamingHandler):
        async def handle_DATA_CHUNK(self, *args: Any) -> None:
            raise OSError("disk full")

    handler = Handler()
    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with serving(handler) as server, open_client(server.port) as client:
        await client.command("HELO client.test")
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.command("DATA")
        assert (await client.command("text\r\n."))[0] == 451
    assert handler.completed == []
    assert len(handler.aborted) == 1


# ---------------------------------------------------------------- LMTP


async def lmtp_transaction(client: Any, recipients: int) -> list[tuple[int, list[str]]]:
    await client.command("LHLO client.test")
    await client.command("MAIL FROM:<a@x.test>")
    for number in range(recipients):
        assert (await client.command(f"RCPT TO:<r{number}@x.test>"))[0] == 250
    await client.command("DATA")
    await client.send("Subject: lmtp\r\n\r\nbody\r\n.\r\n")
    return [await client.reply() for _ in range(recipients)]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, [250, 250, 250]),
        ("452 4.2.2 Mailbox full", [452, 452, 452]),
        (["250 OK", "550 5.1.1 No such user", "452 Full"], [250, 550, 452]),
    ],
    ids=["default", "one-status", "list"],
)
async def test_lmtp_reply_per_recipient(
    status: object, expected: list[int], open_client: Any
) -> None:
    handler, _ = make_handler(True, {"DATA": status})
    async with (
        serving(handler, lmtp=True) as server,
        open_client(server.port) as client,
    ):
        replies = await lmtp_transaction(client, 3)
        assert [code for code, _ in replies] == expected
        assert (await client.command("NOOP"))[0] == 250


@pytest.mark.parametrize(
    "status", [[], ["250 OK", None, "250 OK"]], ids=["empty", "none"]
)
async def test_lmtp_invalid_list_replies_451(
    status: list[Any], open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler, _ = make_handler(True, {"DATA": status})
    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with (
        serving(handler, lmtp=True) as server,
        open_client(server.port) as client,
    ):
        replies = await lmtp_transaction(client, 3)
        assert [code for code, _ in replies] == [451, 451, 451]
        assert (await client.command("NOOP"))[0] == 250


async def test_lmtp_short_list_fills_451(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler, _ = make_handler(True, {"DATA": ["250 OK", "250 OK"]})
    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with (
        serving(handler, lmtp=True) as server,
        open_client(server.port) as client,
    ):
        replies = await lmtp_transaction(client, 3)
        assert [code for code, _ in replies] == [250, 250, 451]
        assert (await client.command("NOOP"))[0] == 250


# ---------------------------------------------------------------- subclasses


class PingServer(SMTPServer):
    async def smtp_PING(
        self, session: Session, envelope: Envelope, argument: str | None
    ) -> str:
        return f"250 PONG {argument or ''}".rstrip()

    def smtp_XSYNC(
        self, session: Session, envelope: Envelope, argument: str | None
    ) -> str | None:
        return None if argument is None else "250 synced"

    async def smtp_XFAIL(
        self, session: Session, envelope: Envelope, argument: Any
    ) -> str:
        raise RuntimeError("command failed")


async def test_subclass_commands(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    server = PingServer(object(), hostname=HOSTNAME)
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        assert last_text(await client.command("PING")).endswith("PONG")
        assert last_text(await client.command("ping you")).endswith("PONG you")
        assert (await client.command("XSYNC now"))[0] == 250
        assert (await client.command("XSYNC"))[0] == 500
        assert (await client.command("XFAIL"))[0] == 451
        assert (await client.command("XUNKNOWN"))[0] == 500


# ---------------------------------------------------------------- AUTH


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_authenticator_plain(is_async: bool, open_client: Any) -> None:
    calls: list[tuple[Any, ...]] = []

    def check(
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        calls.append((server, mechanism, auth_data))
        if auth_data == LoginPassword(b"user", b"secret"):
            return AuthResult(success=True, auth_data="user-id")
        return AuthResult(success=False)

    async def async_check(*args: Any) -> AuthResult:
        return check(*args)

    handler, data_calls = make_handler(True, {"DATA": None})
    async with (
        serving(
            handler,
            authenticator=async_check if is_async else check,
            auth_require_tls=False,
        ) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert "AUTH LOGIN PLAIN" in lines or "AUTH PLAIN LOGIN" in lines
        assert (await client.command("AUTH PLAIN " + plain("user", "wrong")))[0] == 535
        assert (await client.command("AUTH PLAIN " + plain("user", "secret")))[0] == 235
        await client.command("MAIL FROM:<a@x.test>")
        await client.command("RCPT TO:<b@x.test>")
        await client.command("DATA")
        assert (await client.command("x\r\n."))[0] == 250

    assert calls[0][0] is server
    assert calls[0][1] == "PLAIN"
    assert calls[1][2] == LoginPassword(b"user", b"secret")
    session = data_calls[0][1][1]
    assert session.authenticated is True
    assert session.auth_data == "user-id"


async def test_authenticator_login_and_message(open_client: Any) -> None:
    def check(*args: Any) -> AuthResult:
        return AuthResult(success=False, message="535 5.7.8 Try again later")

    async with (
        serving(object(), authenticator=check, auth_require_tls=False) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        assert (await client.command("AUTH LOGIN"))[0] == 334
        assert (await client.command(base64.b64encode(b"user").decode()))[0] == 334
        reply = await client.command(base64.b64encode(b"pw").decode())
        assert reply == (535, ["5.7.8 Try again later"])


async def test_authenticator_raising_replies_451(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def check(*args: Any) -> AuthResult:
        raise ConnectionError("user database down")

    caplog.set_level(logging.CRITICAL, logger="smtpproto.server")
    async with (
        serving(object(), authenticator=check, auth_require_tls=False) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        assert (await client.command("AUTH PLAIN " + plain("u", "p")))[0] == 451
        assert (await client.command("NOOP"))[0] == 250


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_handle_auth_hook(is_async: bool, open_client: Any) -> None:
    handler, calls = make_handler(is_async, {"AUTH": "235 2.7.0 Welcome"})
    async with (
        serving(handler, auth_require_tls=False) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        reply = await client.command("AUTH PLAIN " + plain("user", "pw"))
        assert reply == (235, ["2.7.0 Welcome"])
    assert calls[0][1][3] == ["PLAIN", "user", "pw"]


async def test_handle_auth_default_rejects(open_client: Any) -> None:
    handler, _ = make_handler(True, {"AUTH": None})
    async with (
        serving(handler, auth_require_tls=False) as server,
        open_client(server.port) as client,
    ):
        await client.command("EHLO client.test")
        assert (await client.command("AUTH PLAIN " + plain("u", "p")))[0] == 535


async def test_auth_not_offered_without_checker(open_client: Any) -> None:
    async with (
        serving(object(), auth_require_tls=False) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert not [line for line in lines if line.startswith("AUTH")]


async def test_auth_exclude_mechanism(open_client: Any) -> None:
    async with (
        serving(
            object(),
            authenticator=lambda *args: AuthResult(success=True),
            auth_require_tls=False,
            auth_exclude_mechanism=["login"],
        ) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert "AUTH PLAIN" in lines


class TokenServer(SMTPServer):
    async def auth_XTOKEN(
        self, session: Session, envelope: Envelope, exchange: AuthExchange
    ) -> AuthResult:
        answer = await exchange.challenge(b"token?")
        if exchange.initial_response == b"hello" and answer == b"t0k3n":
            return AuthResult(success=True, auth_data="token-user")
        return AuthResult(success=False)


class TokenHandler:
    def __init__(self) -> None:
        self.sessions: list[Session] = []

    async def auth_X__TWO__STEP(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        exchange: AuthExchange,
    ) -> AuthResult:
        first = await exchange.challenge(b"one")
        second = await exchange.challenge(b"two")
        self.sessions.append(session)
        return AuthResult(success=(first, second) == (b"1", b"2"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_auth_method_on_subclass(open_client: Any) -> None:
    server = TokenServer(object(), hostname=HOSTNAME, auth_require_tls=False)
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        _code, lines = await client.command("EHLO client.test")
        assert "AUTH XTOKEN" in lines
        reply = await client.command("AUTH XTOKEN " + b64(b"hello"))
        assert reply == (334, [b64(b"token?")])
        assert (await client.command(b64(b"wrong")))[0] == 535
        assert (await client.command("AUTH XTOKEN " + b64(b"hello")))[0] == 334
        assert (await client.command(b64(b"t0k3n")))[0] == 235


async def test_auth_method_on_handler(open_client: Any) -> None:
    handler = TokenHandler()
    async with (
        serving(handler, auth_require_tls=False) as server,
        open_client(server.port) as client,
    ):
        _code, lines = await client.command("EHLO client.test")
        assert "AUTH X-TWO-STEP" in lines
        assert (await client.command("AUTH X-TWO-STEP"))[0] == 334
        assert await client.command(b64(b"1")) == (334, [b64(b"two")])
        assert (await client.command(b64(b"2")))[0] == 235
    assert handler.sessions[0].authenticated is True


async def test_auth_method_client_abort(open_client: Any) -> None:
    server = TokenServer(object(), hostname=HOSTNAME, auth_require_tls=False)
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        await client.command("EHLO client.test")
        assert (await client.command("AUTH XTOKEN"))[0] == 334
        assert (await client.command("*"))[0] == 501
        assert (await client.command("NOOP"))[0] == 250


def test_auth_method_cannot_replace_builtin() -> None:
    class Handler:
        async def auth_PLAIN(self, *args: Any) -> AuthResult:
            return AuthResult(success=True)

    with pytest.raises(TypeError, match="auth_PLAIN"):
        SMTPServer(Handler(), hostname=HOSTNAME)


def test_auth_types_hide_secrets() -> None:
    assert "hunter2" not in repr(LoginPassword(b"user", b"hunter2"))
    assert "user" in repr(LoginPassword(b"user", b"hunter2"))
    assert "hunter2" not in repr(AuthResult(success=True, auth_data="hunter2"))
    login, password = LoginPassword(b"user", b"hunter2")
    assert (login, password) == (b"user", b"hunter2")


async def test_wire_log_masks_auth(
    open_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpproto")
    server = TokenServer(
        object(),
        hostname=HOSTNAME,
        auth_require_tls=False,
        authenticator=lambda *args: AuthResult(success=True),
    )
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        await client.command("EHLO client.test")
        assert (await client.command("AUTH PLAIN " + plain("u", "hunter2")))[0] == 235
        await client.command("QUIT")
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.command("AUTH LOGIN")
        await client.command(b64(b"u"))
        assert (await client.command(b64(b"hunter2")))[0] == 235
    async with server.serving("127.0.0.1", 0), open_client(server.port) as client:
        await client.command("EHLO client.test")
        await client.command("AUTH XTOKEN " + b64(b"hunter2"))
        await client.command(b64(b"hunter2"))

    wire = [r.getMessage() for r in caplog.records if r.name == "smtpproto.wire"]
    text = "\n".join(wire)
    assert "AUTH PLAIN ***" in text
    assert "AUTH LOGIN ***" in text
    assert "AUTH XTOKEN ***" in text
    assert "hunter2" not in text
    assert b64(b"hunter2") not in text
    assert plain("u", "hunter2") not in text
    assert "EHLO" in text or "Ehlo" in text
