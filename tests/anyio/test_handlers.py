"""Tests of the built-in handlers in smtpproto_anyio.handlers.

Most tests call the hooks directly with a Session and an Envelope. The Proxy tests
relay to a scripted SMTP server on 127.0.0.1, and the end-to-end tests run the real
server (Controller) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import email.message
import errno
import io
import mailbox
import os
import re
import smtplib
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from smtpproto import Envelope, Session
from smtpproto_anyio import Controller, handlers
from smtpproto_anyio.handlers import (
    AsyncMessage,
    Debugging,
    Mailbox,
    Maildir,
    Message,
    Proxy,
    Sink,
)

PEER = ("192.0.2.10", 40000)
SENDER = "sender@example.com"
RECIPIENTS = ["one@example.com", "two@example.com"]
CONTENT = (
    b"From: sender@example.com\r\n"
    b"To: one@example.com\r\n"
    b"Subject: test\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".Line starting with a dot.\r\n"
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_session(peer: object = PEER) -> Session:
    session = Session()
    session.peer = peer
    session.host_name = "client.example.com"
    return session


def make_envelope(
    content: bytes | str | None = CONTENT,
    *,
    mail_from: str = SENDER,
    rcpt_tos: list[str] | None = None,
    mail_options: list[str] | None = None,
) -> Envelope:
    envelope = Envelope()
    envelope.mail_from = mail_from
    envelope.rcpt_tos = list(RECIPIENTS if rcpt_tos is None else rcpt_tos)
    envelope.mail_options = list(mail_options or [])
    envelope.content = content
    if isinstance(content, str):
        envelope.original_content = content.encode()
    else:
        envelope.original_content = content
    return envelope


def parser_error_exit(handler_class: Any, *args: str) -> SystemExit:
    parser = argparse.ArgumentParser(prog="smtpproto-serve")
    with pytest.raises(SystemExit) as info:
        handler_class.from_cli(parser, *args)
    return info.value


def cli(handler_class: Any, *args: str) -> Any:
    return handler_class.from_cli(argparse.ArgumentParser(), *args)


# ---------------------------------------------------------------- Debugging


@pytest.mark.anyio
async def test_debugging_output_format() -> None:
    stream = io.StringIO()
    envelope = make_envelope(mail_options=["SIZE=102", "BODY=8BITMIME"])

    status = await Debugging(stream).handle_DATA(None, make_session(), envelope)

    assert status == "250 OK"
    assert stream.getvalue() == (
        "---------- MESSAGE FOLLOWS ----------\n"
        "mail options: ['SIZE=102', 'BODY=8BITMIME']\n"
        "\n"
        "From: sender@example.com\n"
        "To: one@example.com\n"
        "Subject: test\n"
        "X-Peer: ('192.0.2.10', 40000)\n"
        "\n"
        "First line.\n"
        ".Line starting with a dot.\n"
        "------------ END MESSAGE ------------\n"
    )


@pytest.mark.anyio
async def test_debugging_without_mail_options() -> None:
    stream = io.StringIO()

    await Debugging(stream).handle_DATA(None, make_session(), make_envelope())

    lines = stream.getvalue().splitlines()
    assert lines[0] == "---------- MESSAGE FOLLOWS ----------"
    assert lines[1] == "From: sender@example.com"
    assert not any(line.startswith("mail options") for line in lines)


@pytest.mark.anyio
async def test_debugging_str_content() -> None:
    stream = io.StringIO()
    envelope = make_envelope("Subject: caf\u00e9\r\n\r\nna\u00efve body\r\n")

    await Debugging(stream).handle_DATA(None, make_session(), envelope)

    lines = stream.getvalue().splitlines()
    assert lines[1:5] == [
        "Subject: caf\u00e9",
        "X-Peer: ('192.0.2.10', 40000)",
        "",
        "na\u00efve body",
    ]


@pytest.mark.anyio
async def test_debugging_undecodable_bytes() -> None:
    stream = io.StringIO()
    envelope = make_envelope(b"Subject: \xff\xfe\r\n\r\nbody \xe9\r\n")

    await Debugging(stream).handle_DATA(None, make_session(), envelope)

    lines = stream.getvalue().splitlines()
    assert lines[1] == "Subject: \ufffd\ufffd"
    assert lines[4] == "body \ufffd"


@pytest.mark.anyio
async def test_debugging_headers_only() -> None:
    stream = io.StringIO()
    envelope = make_envelope(b"Subject: no body\r\n")

    await Debugging(stream).handle_DATA(None, make_session(), envelope)

    assert stream.getvalue().splitlines()[1:4] == [
        "Subject: no body",
        "X-Peer: ('192.0.2.10', 40000)",
        "------------ END MESSAGE ------------",
    ]


@pytest.mark.anyio
async def test_debugging_default_stream(capsys: pytest.CaptureFixture[str]) -> None:
    await Debugging().handle_DATA(None, make_session(), make_envelope())

    assert "---------- MESSAGE FOLLOWS ----------" in capsys.readouterr().out


def test_debugging_from_cli() -> None:
    assert cli(Debugging).stream is None
    assert cli(Debugging, "stdout").stream is sys.stdout
    assert cli(Debugging, "stderr").stream is sys.stderr
    assert parser_error_exit(Debugging, "stdin").code == 2
    assert parser_error_exit(Debugging, "stdout", "stderr").code == 2


# ---------------------------------------------------------------- Sink


def test_sink_from_cli() -> None:
    assert isinstance(cli(Sink), Sink)
    assert parser_error_exit(Sink, "extra").code == 2


def test_sink_has_no_hooks() -> None:
    assert not [name for name in dir(Sink) if name.startswith("handle_")]


# ---------------------------------------------------------------- Message


class CollectingMessage(Message):
    def __init__(self, message_class: Any = None) -> None:
        super().__init__(message_class)
        self.messages: list[email.message.Message] = []

    def handle_message(self, message: email.message.Message) -> None:
        self.messages.append(message)


class CollectingAsyncMessage(AsyncMessage):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[email.message.Message] = []

    async def handle_message(self, message: email.message.Message) -> None:
        await anyio.lowlevel.checkpoint()
        self.messages.append(message)


@pytest.mark.anyio
async def test_message_headers() -> None:
    handler = CollectingMessage()

    status = await handler.handle_DATA(None, make_session(), make_envelope())

    assert status == "250 OK"
    [message] = handler.messages
    assert type(message) is email.message.Message
    assert message["Subject"] == "test"
    assert message["X-Peer"] == "('192.0.2.10', 40000)"
    assert message["X-MailFrom"] == SENDER
    assert message["X-RcptTo"] == "one@example.com, two@example.com"
    assert message.get_payload() == "First line.\r\n.Line starting with a dot.\r\n"


@pytest.mark.anyio
async def test_message_null_sender_and_str_content() -> None:
    handler = CollectingMessage()
    envelope = make_envelope("Subject: text\n\nbody\n", mail_from="<>")

    await handler.handle_DATA(None, make_session(), envelope)

    [message] = handler.messages
    assert message["Subject"] == "text"
    assert message["X-MailFrom"] == "<>"


@pytest.mark.anyio
async def test_message_custom_class() -> None:
    handler = CollectingMessage(email.message.EmailMessage)

    await handler.handle_DATA(None, make_session(), make_envelope())

    [message] = handler.messages
    assert isinstance(message, email.message.EmailMessage)
    assert message["X-RcptTo"] == "one@example.com, two@example.com"


@pytest.mark.anyio
async def test_message_missing_content() -> None:
    with pytest.raises(TypeError, match="NoneType"):
        await CollectingMessage().handle_DATA(None, make_session(), make_envelope(None))


def test_message_is_abstract() -> None:
    with pytest.raises(TypeError):
        Message()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        AsyncMessage()  # type: ignore[abstract]


@pytest.mark.anyio
async def test_async_message_headers() -> None:
    handler = CollectingAsyncMessage()

    status = await handler.handle_DATA(None, make_session(), make_envelope())

    assert status == "250 OK"
    [message] = handler.messages
    assert message["X-Peer"] == "('192.0.2.10', 40000)"
    assert message["X-MailFrom"] == SENDER
    assert message["X-RcptTo"] == "one@example.com, two@example.com"


# ---------------------------------------------------------------- Mailbox


@pytest.mark.anyio
async def test_mailbox_stores_message(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path / "mail")

    status = await handler.handle_DATA(None, make_session(), make_envelope())

    assert status == "250 OK"
    assert sorted(os.listdir(tmp_path / "mail")) == ["cur", "new", "tmp"]
    assert os.listdir(tmp_path / "mail" / "tmp") == []
    stored = list(mailbox.Maildir(tmp_path / "mail"))
    assert len(stored) == 1
    assert stored[0]["Subject"] == "test"
    assert stored[0]["X-MailFrom"] == SENDER
    assert stored[0]["X-RcptTo"] == "one@example.com, two@example.com"
    assert stored[0]["X-Peer"] == "('192.0.2.10', 40000)"


@pytest.mark.anyio
async def test_mailbox_concurrent_deliveries(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path)

    async def deliver(number: int) -> None:
        content = f"Subject: message {number}\r\n\r\nbody\r\n".encode()
        status = await handler.handle_DATA(None, make_session(), make_envelope(content))
        assert status == "250 OK"

    async with anyio.create_task_group() as tg:
        for number in range(20):
            tg.start_soon(deliver, number)

    subjects = {message["Subject"] for message in mailbox.Maildir(tmp_path)}
    assert subjects == {f"message {number}" for number in range(20)}


@pytest.mark.anyio
async def test_mailbox_fsyncs_new_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Mailbox(tmp_path)
    synced = record_fsyncs(monkeypatch)

    await handler.handle_DATA(None, make_session(), make_envelope())

    assert f"fsync {tmp_path / 'new'}" in synced


def test_mailbox_reset(tmp_path: Path) -> None:
    handler = Mailbox(tmp_path)
    handler.handle_message(email.message_from_bytes(CONTENT))

    handler.reset()

    assert len(mailbox.Maildir(tmp_path)) == 0


def test_mailbox_from_cli(tmp_path: Path) -> None:
    handler = cli(Mailbox, str(tmp_path))

    assert isinstance(handler, Mailbox)
    assert handler.mail_dir == str(tmp_path)
    assert parser_error_exit(Mailbox).code == 2
    assert parser_error_exit(Mailbox, "a", "b").code == 2


# ---------------------------------------------------------------- Maildir


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap os.fsync to record "fsync <path>" for each file or directory synced."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to map file descriptors to paths")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


MAILDIR_NAME = re.compile(
    r"\d+\.M\d+P(?P<pid>\d+)Q\d+R[0-9a-f]{16}\.(?P<host>[^,]+),S=(?P<size>\d+)"
)


def only_message(maildir: Path) -> Path:
    [name] = os.listdir(maildir / "new")
    return maildir / "new" / name


def total_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


async def deliver_in_chunks(
    handler: Maildir, envelope: Envelope, content: bytes, chunk_size: int
) -> str:
    session = make_session()
    for start in range(0, len(content), chunk_size):
        chunk = content[start : start + chunk_size]
        await handler.handle_DATA_CHUNK(None, session, envelope, chunk)
    return await handler.handle_DATA(None, session, envelope)


@pytest.mark.anyio
async def test_maildir_exact_bytes(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    envelope = make_envelope(None)

    status = await deliver_in_chunks(handler, envelope, CONTENT, 7)

    assert status == "250 OK"
    path = only_message(tmp_path)
    expected = b"Return-Path: <sender@example.com>\r\n" + CONTENT
    assert path.read_bytes() == expected
    assert path.name.endswith(f",S={len(expected)}")
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "cur") == []


@pytest.mark.anyio
async def test_maildir_file_name(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    for _ in range(3):
        await deliver_in_chunks(handler, make_envelope(None), CONTENT, 1000)

    names = os.listdir(tmp_path / "new")
    assert len(set(names)) == 3
    file_size = len(b"Return-Path: <sender@example.com>\r\n" + CONTENT)
    for name in names:
        match = MAILDIR_NAME.fullmatch(name)
        assert match is not None, name
        assert match["pid"] == str(os.getpid())
        assert match["size"] == str(file_size)
        assert "/" not in match["host"]
        assert ":" not in match["host"]
        mode = os.stat(tmp_path / "new" / name).st_mode
        assert stat.S_IMODE(mode) & 0o077 == 0


@pytest.mark.anyio
async def test_maildir_null_sender(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)

    await deliver_in_chunks(handler, make_envelope(None, mail_from="<>"), CONTENT, 64)

    assert only_message(tmp_path).read_bytes().startswith(b"Return-Path: <>\r\n")


@pytest.mark.anyio
async def test_maildir_empty_message(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)

    status = await handler.handle_DATA(None, make_session(), make_envelope(None))

    assert status == "250 OK"
    content = only_message(tmp_path).read_bytes()
    assert content == b"Return-Path: <sender@example.com>\r\n"


@pytest.mark.anyio
async def test_maildir_collected_content(tmp_path: Path) -> None:
    # A server that does not stream sets envelope.content and calls only handle_DATA.
    handler = Maildir(tmp_path)

    status = await handler.handle_DATA(None, make_session(), make_envelope(CONTENT))

    assert status == "250 OK"
    assert only_message(tmp_path).read_bytes().endswith(CONTENT)


@pytest.mark.anyio
async def test_maildir_abort_removes_partial_file(tmp_path: Path) -> None:
    handler = Maildir(tmp_path, buffer_size=16)
    session = make_session()
    envelope = make_envelope(None)
    await handler.handle_DATA_CHUNK(None, session, envelope, CONTENT[:40])
    assert len(os.listdir(tmp_path / "tmp")) == 1

    await handler.handle_DATA_ABORT(None, session, envelope)

    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


@pytest.mark.anyio
async def test_maildir_abort_without_chunks(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)

    await handler.handle_DATA_ABORT(None, make_session(), make_envelope(None))

    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.anyio
async def test_maildir_streams_large_message(tmp_path: Path) -> None:
    buffer_size = 256 * 1024
    handler = Maildir(tmp_path, buffer_size=buffer_size)
    session = make_session()
    envelope = make_envelope(None)
    line = b"x" * 998 + b"\r\n"
    content = b"Subject: big\r\n\r\n" + line * (5 * 1024 * 1024 // len(line))
    chunk_size = 64 * 1024
    sizes_seen: set[int] = set()

    for start in range(0, len(content), chunk_size):
        chunk = content[start : start + chunk_size]
        await handler.handle_DATA_CHUNK(None, session, envelope, chunk)
        on_disk = total_size(tmp_path / "tmp")
        received = start + len(chunk)
        # The file trails what was received by less than one buffer.
        assert received - on_disk < buffer_size
        assert os.listdir(tmp_path / "new") == []
        sizes_seen.add(on_disk)

    status = await handler.handle_DATA(None, session, envelope)

    assert status == "250 OK"
    assert len(sizes_seen) > 10
    stored = only_message(tmp_path).read_bytes()
    assert stored == b"Return-Path: <sender@example.com>\r\n" + content
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.anyio
async def test_maildir_fsync_before_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Maildir(tmp_path)
    events = record_fsyncs(monkeypatch)
    real_link = os.link

    def link(source: str, destination: str) -> None:
        events.append("link " + destination)
        real_link(source, destination)

    monkeypatch.setattr(os, "link", link)
    session = make_session()
    envelope = make_envelope(None)
    await handler.handle_DATA_CHUNK(None, session, envelope, CONTENT)
    assert events == []

    await handler.handle_DATA(None, session, envelope)

    assert len(events) == 3
    assert events[0].startswith(f"fsync {tmp_path / 'tmp'}{os.sep}")
    assert events[1] == f"link {only_message(tmp_path)}"
    assert events[2] == f"fsync {tmp_path / 'new'}"


@pytest.mark.anyio
async def test_maildir_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Maildir(tmp_path)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    status = await deliver_in_chunks(handler, make_envelope(None), CONTENT, 64)

    assert status == "452 4.3.1 Insufficient system storage"
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


@pytest.mark.anyio
async def test_maildir_write_error(tmp_path: Path) -> None:
    handler = Maildir(tmp_path)
    os.rmdir(tmp_path / "tmp")

    status = await deliver_in_chunks(handler, make_envelope(None), CONTENT, 64)

    assert status == "451 4.3.0 Message could not be stored, try again later"
    assert os.listdir(tmp_path / "new") == []


@pytest.mark.anyio
async def test_maildir_write_error_mid_stream(tmp_path: Path) -> None:
    handler = Maildir(tmp_path, buffer_size=16)
    os.rmdir(tmp_path / "tmp")

    status = await deliver_in_chunks(handler, make_envelope(None), CONTENT, 8)

    assert status == "451 4.3.0 Message could not be stored, try again later"
    assert os.listdir(tmp_path / "new") == []


def test_maildir_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "Maildir"
    os.mkdir(tmp_path / "a")

    Maildir(path)

    assert sorted(os.listdir(path)) == ["cur", "new", "tmp"]
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_maildir_without_create(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="create=True"):
        Maildir(tmp_path / "missing", create=False)
    Maildir(tmp_path / "existing")

    Maildir(tmp_path / "existing", create=False)


def test_maildir_invalid_buffer_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        Maildir(tmp_path, buffer_size=0)


def test_maildir_from_cli(tmp_path: Path) -> None:
    handler = cli(Maildir, str(tmp_path / "box"))

    assert isinstance(handler, Maildir)
    assert os.path.isdir(tmp_path / "box" / "new")
    assert parser_error_exit(Maildir).code == 2


# ---------------------------------------------------------------- Proxy


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            b"A: 1\r\nB: 2\r\n\r\nbody\r\n",
            b"A: 1\r\nB: 2\r\nX-Peer: h\r\n\r\nbody\r\n",
            id="crlf",
        ),
        pytest.param(
            b"A: 1\n\nbody\n\nmore\n", b"A: 1\nX-Peer: h\n\nbody\n\nmore\n", id="lf"
        ),
        pytest.param(b"A: 1\r\n", b"A: 1\r\nX-Peer: h\r\n", id="headers-only"),
        pytest.param(b"A: 1", b"A: 1\nX-Peer: h\n", id="no-final-newline"),
        pytest.param(b"\r\nbody\r\n", b"X-Peer: h\r\n\r\nbody\r\n", id="no-headers"),
        pytest.param(b"", b"X-Peer: h\n", id="empty"),
    ],
)
def test_insert_header(content: bytes, expected: bytes) -> None:
    assert handlers._insert_header(content, "X-Peer", "h") == expected


@dataclass
class Upstream:
    """Scripted SMTP server on 127.0.0.1 for the Proxy tests."""

    mail_reply: str = "250 2.1.0 OK"
    rcpt_replies: dict[str, str | None] = field(default_factory=dict)
    data_reply: str = "354 Go ahead"
    message_reply: str | None = "250 2.0.0 Queued as 1234"
    extensions: tuple[str, ...] = ("SIZE 10000000", "8BITMIME")
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        # The Proxy may close the connection at any point, which ends the dialogue.
        with contextlib.suppress(
            anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError
        ):
            await self.run_dialogue(stream)

    async def run_dialogue(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            receiver = BufferedByteReceiveStream(stream)
            await stream.send(b"220 upstream.test ESMTP\r\n")
            while True:
                line = (await receiver.receive_until(b"\r\n", 4096)).decode()
                self.commands.append(line)
                reply = self.reply_to(line)
                if reply is None:
                    return
                await stream.send(reply.encode() + b"\r\n")
                if line.upper() == "DATA" and reply.startswith("354"):
                    data = await receiver.receive_until(b"\r\n.\r\n", 16 * 1024 * 1024)
                    self.messages.append(data + b"\r\n")
                    if self.message_reply is None:
                        return
                    await stream.send(self.message_reply.encode() + b"\r\n")
                if line.upper() == "QUIT":
                    return

    def reply_to(self, line: str) -> str | None:
        verb = line.split(" ", 1)[0].upper()
        if verb == "EHLO":
            lines = ["upstream.test", *self.extensions]
            return "\r\n".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{text}"
                for i, text in enumerate(lines)
            )
        if verb == "MAIL":
            return self.mail_reply
        if verb == "RCPT":
            address = line.split(":", 1)[1].split(">")[0].lstrip(" <")
            return self.rcpt_replies.get(address, "250 2.1.5 OK")
        if verb == "DATA":
            return self.data_reply
        if verb in ("RSET", "NOOP"):
            return "250 2.0.0 OK"
        if verb == "QUIT":
            return "221 2.0.0 Bye"
        return "500 5.5.1 Unknown command"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        yield server
        tg.cancel_scope.cancel()


def make_proxy(port: int) -> Proxy:
    # An explicit EHLO name keeps smtplib from looking up the local FQDN.
    return Proxy("127.0.0.1", port, local_hostname="proxy.test", timeout=10)


@pytest.mark.anyio
async def test_proxy_relays_message(upstream: Upstream) -> None:
    envelope = make_envelope(mail_options=["SIZE=5", "BODY=8BITMIME"])

    status = await make_proxy(upstream.port).handle_DATA(None, make_session(), envelope)

    assert status == "250 OK"
    [message] = upstream.messages
    assert message == (
        b"From: sender@example.com\r\n"
        b"To: one@example.com\r\n"
        b"Subject: test\r\n"
        b"X-Peer: 192.0.2.10\r\n"
        b"\r\n"
        b"First line.\r\n"
        b"..Line starting with a dot.\r\n"
    )
    mail = next(c for c in upstream.commands if c.startswith("mail"))
    size = len(CONTENT) + len(b"X-Peer: 192.0.2.10\r\n")
    assert mail == f"mail FROM:<sender@example.com> BODY=8BITMIME SIZE={size}"
    rcpts = [c for c in upstream.commands if c.startswith("rcpt")]
    assert rcpts == ["rcpt TO:<one@example.com>", "rcpt TO:<two@example.com>"]
    assert upstream.commands[0] == "ehlo proxy.test"
    assert upstream.commands[-1] == "quit"


@pytest.mark.anyio
async def test_proxy_null_sender(upstream: Upstream) -> None:
    envelope = make_envelope(mail_from="<>")

    await make_proxy(upstream.port).handle_DATA(None, make_session(), envelope)

    assert "mail FROM:<> SIZE=" in " ".join(upstream.commands)


@pytest.mark.anyio
async def test_proxy_without_size_extension(upstream: Upstream) -> None:
    upstream.extensions = ("8BITMIME",)
    envelope = make_envelope(mail_options=["SIZE=5"])

    await make_proxy(upstream.port).handle_DATA(None, make_session(), envelope)

    assert "mail FROM:<sender@example.com>" in upstream.commands


@pytest.mark.anyio
async def test_proxy_recipient_rejected(upstream: Upstream) -> None:
    upstream.rcpt_replies["two@example.com"] = "550 5.1.1 <two@example.com>: unknown"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "550 5.1.1 <two@example.com>: unknown"
    assert upstream.messages == []
    assert "rset" in upstream.commands
    assert "data" not in upstream.commands


@pytest.mark.anyio
async def test_proxy_permanent_rejection_wins(upstream: Upstream) -> None:
    upstream.rcpt_replies["one@example.com"] = "450 4.2.1 Mailbox busy"
    upstream.rcpt_replies["two@example.com"] = "550 5.1.1 No such user"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "550 5.1.1 No such user"


@pytest.mark.anyio
async def test_proxy_temporary_rejection(upstream: Upstream) -> None:
    upstream.rcpt_replies["one@example.com"] = "450 4.2.1 Mailbox busy"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "450 4.2.1 Mailbox busy"


@pytest.mark.anyio
async def test_proxy_sender_rejected(upstream: Upstream) -> None:
    upstream.mail_reply = "553 5.7.1 Sender not allowed"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "553 5.7.1 Sender not allowed"
    assert not any(c.startswith("rcpt") for c in upstream.commands)


@pytest.mark.anyio
async def test_proxy_message_rejected(upstream: Upstream) -> None:
    upstream.message_reply = "554 5.7.1 Spam detected"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "554 5.7.1 Spam detected"


@pytest.mark.anyio
async def test_proxy_data_command_rejected(upstream: Upstream) -> None:
    upstream.data_reply = "451 4.3.0 Try later"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "451 4.3.0 Try later"


@pytest.mark.anyio
async def test_proxy_multiline_rejection(upstream: Upstream) -> None:
    upstream.message_reply = "550-5.7.1 Rejected\r\n550 5.7.1 See the policy"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "550 5.7.1 Rejected\n5.7.1 See the policy"


@pytest.mark.anyio
async def test_proxy_upstream_421_becomes_451(upstream: Upstream) -> None:
    upstream.mail_reply = "421 4.3.2 Shutting down"

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "451 4.3.2 Shutting down"


@pytest.mark.anyio
async def test_proxy_connection_lost(upstream: Upstream) -> None:
    upstream.message_reply = None

    status = await make_proxy(upstream.port).handle_DATA(
        None, make_session(), make_envelope()
    )

    assert status == "451 4.4.2 Connection to upstream server lost, try again later"


@pytest.mark.anyio
async def test_proxy_smtputf8_not_supported(upstream: Upstream) -> None:
    envelope = make_envelope(
        mail_from="j\u00f6rg@example.com", mail_options=["SMTPUTF8"]
    )

    status = await make_proxy(upstream.port).handle_DATA(None, make_session(), envelope)

    assert status == "553 5.6.7 Upstream server does not support SMTPUTF8"
    assert upstream.messages == []


@pytest.mark.anyio
async def test_proxy_upstream_unreachable() -> None:
    # A port that was just bound and released has no listener.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    status = await make_proxy(port).handle_DATA(None, make_session(), make_envelope())

    assert status == "451 4.4.1 Upstream server unavailable, try again later"


@pytest.mark.anyio
async def test_proxy_unix_socket_peer(upstream: Upstream) -> None:
    await make_proxy(upstream.port).handle_DATA(
        None, make_session("/run/smtp.sock"), make_envelope()
    )

    assert b"X-Peer: /run/smtp.sock\r\n" in upstream.messages[0]


def test_proxy_from_cli() -> None:
    handler = cli(Proxy, "127.0.0.1", "2525")

    assert isinstance(handler, Proxy)
    assert (handler.hostname, handler.port) == ("127.0.0.1", 2525)
    assert parser_error_exit(Proxy, "127.0.0.1").code == 2
    assert parser_error_exit(Proxy, "127.0.0.1", "http").code == 2
    assert parser_error_exit(Proxy, "127.0.0.1", "70000").code == 2


# ---------------------------------------------------------------- real server


@pytest.fixture(params=["asyncio", "trio"])
def server_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_controller(handler: object, backend: str, **kwargs: Any) -> Controller:
    # A fixed greeting name keeps the server from looking up the local FQDN.
    return Controller(
        handler, "127.0.0.1", 0, backend=backend, server_hostname="mx.test", **kwargs
    )


def smtp_client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)


def read_reply(reader: io.BufferedReader) -> bytes:
    """Read one possibly multi-line reply and return its last line."""
    while True:
        line = reader.readline()
        if len(line) < 4 or line[3:4] != b"-":
            return line


def wait_until_empty(directory: Path) -> None:
    deadline = time.monotonic() + 10
    while os.listdir(directory) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_server_debugging(server_backend: str) -> None:
    stream = io.StringIO()
    with (
        start_controller(Debugging(stream), server_backend) as controller,
        smtp_client(controller.port) as client,
    ):
        client.sendmail(SENDER, RECIPIENTS, CONTENT)
        assert client.sock is not None
        local_port = client.sock.getsockname()[1]

    output = stream.getvalue().splitlines()
    assert output[0] == "---------- MESSAGE FOLLOWS ----------"
    assert output[1].startswith("mail options: ['SIZE=")
    assert f"X-Peer: ('127.0.0.1', {local_port})" in output
    assert ".Line starting with a dot." in output
    assert output[-1] == "------------ END MESSAGE ------------"


def test_server_message(server_backend: str) -> None:
    handler = CollectingMessage()
    with (
        start_controller(handler, server_backend) as controller,
        smtp_client(controller.port) as client,
    ):
        client.sendmail(SENDER, RECIPIENTS, CONTENT)

    [message] = handler.messages
    assert message["X-MailFrom"] == SENDER
    assert message["X-RcptTo"] == "one@example.com, two@example.com"
    assert message["X-Peer"].startswith("('127.0.0.1', ")


def test_server_mailbox(server_backend: str, tmp_path: Path) -> None:
    with (
        start_controller(Mailbox(tmp_path), server_backend) as controller,
        smtp_client(controller.port) as client,
    ):
        client.sendmail(SENDER, RECIPIENTS, CONTENT)

    [message] = list(mailbox.Maildir(tmp_path))
    assert message["Subject"] == "test"
    assert message["X-RcptTo"] == "one@example.com, two@example.com"


def test_server_maildir_exact_bytes(server_backend: str, tmp_path: Path) -> None:
    with (
        start_controller(Maildir(tmp_path), server_backend) as controller,
        smtp_client(controller.port) as client,
    ):
        client.sendmail(SENDER, RECIPIENTS, CONTENT)

    stored = only_message(tmp_path).read_bytes()
    assert stored == b"Return-Path: <sender@example.com>\r\n" + CONTENT
    assert os.listdir(tmp_path / "tmp") == []


class RecordingMaildir(Maildir):
    """Maildir that records the body pieces it receives and its abort calls."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.chunk_sizes: list[int] = []
        self.aborts = 0

    async def handle_DATA_CHUNK(
        self, server: Any, session: Session, envelope: Envelope, data: bytes
    ) -> None:
        self.chunk_sizes.append(len(data))
        await super().handle_DATA_CHUNK(server, session, envelope, data)

    async def handle_DATA_ABORT(
        self, server: Any, session: Session, envelope: Envelope
    ) -> None:
        self.aborts += 1
        await super().handle_DATA_ABORT(server, session, envelope)


def test_server_maildir_streams_5mb(server_backend: str, tmp_path: Path) -> None:
    handler = RecordingMaildir(tmp_path)
    line = b"y" * 998 + b"\r\n"
    content = b"Subject: big\r\n\r\n" + line * (5 * 1024 * 1024 // len(line))

    with (
        start_controller(handler, server_backend) as controller,
        smtp_client(controller.port) as client,
    ):
        client.sendmail(SENDER, RECIPIENTS, content)

    assert sum(handler.chunk_sizes) == len(content)
    assert len(handler.chunk_sizes) > 1
    assert max(handler.chunk_sizes) < len(content) // 2
    stored = only_message(tmp_path).read_bytes()
    assert stored == b"Return-Path: <sender@example.com>\r\n" + content


def test_server_maildir_connection_lost(server_backend: str, tmp_path: Path) -> None:
    line = b"z" * 998 + b"\r\n"
    handler = RecordingMaildir(tmp_path)
    with start_controller(handler, server_backend) as controller:
        with socket.create_connection(("127.0.0.1", controller.port), 10) as sock:
            reader = sock.makefile("rb")
            assert read_reply(reader).startswith(b"220")
            for command, code in [
                (b"EHLO client.test", b"250"),
                (b"MAIL FROM:<sender@example.com>", b"250"),
                (b"RCPT TO:<one@example.com>", b"250"),
                (b"DATA", b"354"),
            ]:
                sock.sendall(command + b"\r\n")
                assert read_reply(reader).startswith(code)
            sock.sendall(b"Subject: partial\r\n\r\n" + line * 400)
            deadline = time.monotonic() + 10
            while not os.listdir(tmp_path / "tmp") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(os.listdir(tmp_path / "tmp")) == 1
            reader.close()

        wait_until_empty(tmp_path / "tmp")

    assert handler.aborts == 1
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


def test_server_maildir_too_large(server_backend: str, tmp_path: Path) -> None:
    content = b"Subject: large\r\n\r\n" + (b"w" * 998 + b"\r\n") * 400
    handler = RecordingMaildir(tmp_path)
    with (
        start_controller(handler, server_backend, data_size_limit=300_000) as ctl,
        smtp_client(ctl.port) as client,
    ):
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(RECIPIENTS[0])[0] == 250
        code, _ = client.data(content)

    assert code == 552
    assert handler.aborts == 1
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


class UpstreamRecorder:
    """Handler of the upstream server in the Proxy tests."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_RCPT(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.startswith("unknown@"):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: Any, session: Session, envelope: Envelope
    ) -> str:
        assert envelope.original_content is not None
        self.contents.append(envelope.original_content)
        return "250 2.0.0 Stored"


def test_server_proxy_relays(server_backend: str) -> None:
    recorder = UpstreamRecorder()
    with start_controller(recorder, "asyncio") as upstream:
        proxy = make_proxy(upstream.port)
        with (
            start_controller(proxy, server_backend) as front,
            smtp_client(front.port) as client,
        ):
            refused = client.sendmail(SENDER, RECIPIENTS, CONTENT)

    assert refused == {}
    [content] = recorder.contents
    assert content == CONTENT.replace(
        b"Subject: test\r\n", b"Subject: test\r\nX-Peer: 127.0.0.1\r\n"
    )


def test_server_proxy_upstream_550(server_backend: str) -> None:
    recorder = UpstreamRecorder()
    with start_controller(recorder, "asyncio") as upstream:
        proxy = make_proxy(upstream.port)
        with (
            start_controller(proxy, server_backend) as front,
            smtp_client(front.port) as client,
            pytest.raises(smtplib.SMTPDataError) as info,
        ):
            client.sendmail(SENDER, ["one@example.com", "unknown@example.com"], CONTENT)

    assert info.value.smtp_code == 550
    assert info.value.smtp_error == (
        b"5.1.1 <unknown@example.com>: Recipient address rejected"
    )
    assert recorder.contents == []
