"""Ready-made handlers with aiosmtpd's hook protocol, for the server and the CLI.

Each class but :class:`Maildir` can replace the aiosmtpd class of the same name.
The differences are deliberate and listed in each docstring. The main ones: blocking work (disk writes,
``fsync``, the upstream SMTP dialogue) runs in worker threads, so a slow disk or
relay never stalls other connections, and a ``250`` reply from :class:`Maildir`,
:class:`Mailbox` or :class:`Proxy` means the message is durably stored or accepted
upstream.

Errors that a handler catches and turns into a reply are logged on the
``smtpproto.handlers`` logger.
"""

from __future__ import annotations

import email
import email.message
import errno
import itertools
import logging
import mailbox
import os
import re
import secrets
import smtplib
import socket
import sys
import time
from abc import ABC, abstractmethod
from argparse import ArgumentParser
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

import anyio

from smtpproto import Envelope, Session

__all__ = [
    "AsyncMessage",
    "Debugging",
    "Mailbox",
    "Maildir",
    "Message",
    "MessageBase",
    "Proxy",
    "Sink",
]

logger = logging.getLogger("smtpproto.handlers")

# Hooks receive the server instance as their first argument. It is typed ``Any`` so
# that subclasses may annotate it with the concrete server class without breaking
# the override rules of type checkers.
_Server = Any


def _peer_host(peer: object) -> str:
    """Return the client's IP address, or the whole peer for a UNIX socket."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _content_bytes(envelope: Envelope) -> bytes:
    """Return the message exactly as received, preferring ``original_content``."""
    if envelope.original_content is not None:
        return envelope.original_content
    content = envelope.content
    if isinstance(content, str):
        return content.encode("utf-8", "surrogateescape")
    if content is None:
        raise TypeError(
            "envelope.content is None: the message body was not collected "
            "(a handler with handle_DATA_CHUNK receives it in pieces instead)"
        )
    return bytes(content)


def _fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make the creation, removal and renaming of entries in ``path`` durable."""
    # NOTE: Windows cannot open a directory for fsync, so there the directory
    # entry is only as durable as the file system makes it on its own.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Debugging:
    """Print every message to a text stream (the CLI's default handler).

    The output is a ``---------- MESSAGE FOLLOWS ----------`` line, then
    ``mail options: [...]`` and a blank line when MAIL FROM had parameters, then
    the header block with an ``X-Peer: <session.peer>`` line added at its end, the
    body, and an ``------------ END MESSAGE ------------`` line. Byte content is
    decoded as UTF-8, with undecodable bytes shown as U+FFFD.

    Differences from aiosmtpd: a message without a blank line (headers only) still
    gets its ``X-Peer`` line, and the stream is flushed after each message so
    output reaches a pipe at once.

    :param stream: the stream to print to. ``None`` means :data:`sys.stdout` as it
        is when each message arrives.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Debugging:
        """Build the handler from CLI arguments: nothing, ``stdout`` or ``stderr``."""
        if not args:
            return cls()
        if len(args) == 1 and args[0] in ("stdout", "stderr"):
            return cls(sys.stdout if args[0] == "stdout" else sys.stderr)
        parser.error("Debugging takes one optional argument: stdout or stderr")

    async def handle_DATA(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> str:
        stream = self.stream if self.stream is not None else sys.stdout
        print("---------- MESSAGE FOLLOWS ----------", file=stream)
        if envelope.mail_options:
            print(f"mail options: {envelope.mail_options}", file=stream)
            print(file=stream)
        self._print_content(stream, session.peer, envelope.content)
        print("------------ END MESSAGE ------------", file=stream)
        stream.flush()
        return "250 OK"

    @staticmethod
    def _print_content(
        stream: TextIO, peer: object, content: bytes | str | None
    ) -> None:
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            text = content.decode("utf-8", "replace")

        in_headers = True
        for line in text.splitlines():
            if in_headers and not line:
                print(f"X-Peer: {peer}", file=stream)
                in_headers = False
            print(line, file=stream)
        if in_headers:
            print(f"X-Peer: {peer}", file=stream)


class Sink:
    """Accept every message and discard it.

    It defines no hooks, so every command gets the server's default reply. The only
    difference from aiosmtpd is the wording of the CLI error.
    """

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Sink:
        """Build the handler from CLI arguments, of which it takes none."""
        if args:
            parser.error("Sink takes no arguments")
        return cls()


class MessageBase:
    """Parse each message into an :class:`email.message.Message` and pass it on.

    :meth:`prepare_message` parses the content with :func:`email.message_from_bytes`
    (or :func:`email.message_from_string` for ``str`` content), which keeps
    aiosmtpd's behaviour: the legacy ``compat32`` policy and, by default, the
    :class:`email.message.Message` class. For the modern API pass
    ``message_class=email.message.EmailMessage``; the parser still uses
    ``compat32`` then, as in aiosmtpd. Three headers are appended:
    ``X-Peer`` (``str(session.peer)``), ``X-MailFrom`` (the reverse-path, ``<>``
    for the null path) and ``X-RcptTo`` (the recipients joined by ``", "``).

    :param message_class: the class to build, a subclass of
        :class:`email.message.Message`.
    """

    def __init__(
        self, message_class: type[email.message.Message] | None = None
    ) -> None:
        self.message_class = message_class

    def prepare_message(
        self, session: Session, envelope: Envelope
    ) -> email.message.Message:
        """Parse ``envelope.content`` and add the ``X-Peer``, ``X-MailFrom`` and
        ``X-RcptTo`` headers.

        :raises TypeError: if the content is neither bytes nor str.
        """
        data = envelope.content
        message_class = self.message_class or email.message.Message
        if isinstance(data, (bytes, bytearray)):
            message = email.message_from_bytes(bytes(data), message_class)
        elif isinstance(data, str):
            message = email.message_from_string(data, message_class)
        else:
            raise TypeError(
                f"expected bytes or str message content, got {type(data).__name__}"
            )

        message["X-Peer"] = str(session.peer)
        message["X-MailFrom"] = envelope.mail_from or "<>"
        message["X-RcptTo"] = ", ".join(envelope.rcpt_tos)
        return message


class Message(MessageBase, ABC):
    """Abstract handler that passes each parsed message to :meth:`handle_message`.

    Subclasses implement the synchronous :meth:`handle_message`. As in aiosmtpd it
    runs in the event loop's thread, so it must not block. Use
    :class:`AsyncMessage` for slow work. The reply is always ``250 OK``, and an
    exception from :meth:`handle_message` becomes the server's error reply.
    """

    async def handle_DATA(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> str:
        message = self.prepare_message(session, envelope)
        self.handle_message(message)
        return "250 OK"

    @abstractmethod
    def handle_message(self, message: email.message.Message) -> None:
        """Process one parsed message (implemented by subclasses)."""


class AsyncMessage(MessageBase, ABC):
    """Abstract handler like :class:`Message` with an ``async`` :meth:`handle_message`.

    Differences from aiosmtpd: there is no ``loop`` argument, because the hook runs
    in whatever event loop anyio runs (asyncio or trio).
    """

    async def handle_DATA(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> str:
        message = self.prepare_message(session, envelope)
        await self.handle_message(message)
        return "250 OK"

    @abstractmethod
    async def handle_message(self, message: email.message.Message) -> None:
        """Process one parsed message (implemented by subclasses)."""


class Mailbox(Message):
    """Store each parsed message in a Maildir through :class:`mailbox.Maildir`.

    The stored file is the :class:`Message` form: the ``X-Peer``, ``X-MailFrom``
    and ``X-RcptTo`` headers added, serialised by :mod:`mailbox` with LF line
    endings. Use :class:`Maildir` to store the received bytes unchanged.

    Differences from aiosmtpd: parsing and storing run in a worker thread instead
    of the event loop, so :meth:`handle_message`, and any override of it, runs
    there too. The reply is sent only after the message file and the directory
    entry that names it have been flushed to disk with ``fsync``.

    :param mail_dir: the Maildir directory. It and its ``tmp``, ``new`` and
        ``cur`` subdirectories are created when missing, whereas aiosmtpd creates
        the subdirectories only together with a new ``mail_dir``.
    :param message_class: as for :class:`MessageBase`.
    """

    # Maximum tries when file names clash. mailbox.Maildir counts its deliveries
    # in a class attribute that is not thread-safe, so two threads can pick the
    # same name in the same microsecond. O_EXCL turns that into ExternalClashError
    # instead of an overwrite, and a retry picks a new name.
    _ADD_ATTEMPTS = 5

    def __init__(
        self,
        mail_dir: str | os.PathLike[str],
        message_class: type[email.message.Message] | None = None,
    ) -> None:
        super().__init__(message_class)
        self.mail_dir = mail_dir
        self.mailbox = mailbox.Maildir(mail_dir)
        # mailbox.Maildir creates tmp/, new/ and cur/ only when it creates
        # mail_dir itself, so an existing empty directory would fail at delivery.
        for subdir in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(mail_dir, subdir), 0o700, exist_ok=True)
        _fsync_directory(mail_dir)
        _fsync_directory(os.path.dirname(os.path.abspath(mail_dir)))

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Mailbox:
        """Build the handler from CLI arguments: the Maildir directory."""
        if len(args) != 1:
            parser.error("Mailbox takes one argument: the Maildir directory")
        return cls(args[0])

    async def handle_DATA(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> str:
        await anyio.to_thread.run_sync(self._store, session, envelope)
        return "250 OK"

    def _store(self, session: Session, envelope: Envelope) -> None:
        message = self.prepare_message(session, envelope)
        self.handle_message(message)

    def handle_message(self, message: email.message.Message) -> None:
        """Add ``message`` to the Maildir and wait until it is on disk."""
        for attempt in range(self._ADD_ATTEMPTS):
            try:
                self.mailbox.add(message)
                break
            except mailbox.ExternalClashError:
                if attempt == self._ADD_ATTEMPTS - 1:
                    raise

        # mailbox.Maildir.add fsyncs the file before it links it into place,
        # but not the directory that now names it.
        if isinstance(message, mailbox.MaildirMessage):
            subdir = message.get_subdir()
        else:
            subdir = "new"
        _fsync_directory(os.path.join(self.mail_dir, subdir))

    def reset(self) -> None:
        """Delete every message in the Maildir."""
        self.mailbox.clear()


# Process-wide delivery counter for unique Maildir names. next() on an
# itertools.count is atomic in CPython, so worker threads may share it.
_delivery_counter = itertools.count(1)


def _maildir_hostname() -> str:
    # The Maildir convention escapes "/" and ":" in the host name. "," is escaped
    # too, because readers split ",S=<size>" off the name at the first comma.
    hostname = socket.gethostname() or "localhost"
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


@dataclass(eq=False)
class _MaildirDelivery:
    """State of one message being written to ``tmp/`` by :class:`Maildir`."""

    name: str
    tmp_path: str
    header: bytes
    #: The client's address, for log messages.
    peer: str
    file: BinaryIO | None = None
    size: int = 0
    pending: bytearray = field(default_factory=bytearray)
    error: OSError | None = None
    #: True once the file was moved into ``new/`` or removed.
    finished: bool = False


class Maildir:
    """Write each message, byte for byte, into a Maildir, streaming it to disk.

    The body arrives through ``handle_DATA_CHUNK`` in pieces and goes to a file in
    ``tmp/`` in writes of about ``buffer_size`` bytes, so a large message never sits
    in memory. At the end of the message the file is flushed, fsynced and linked
    into ``new/`` under a unique name of the form
    ``<seconds>.M<microseconds>P<pid>Q<counter>R<random>.<host>,S=<file size>``,
    then ``new/`` itself is fsynced. Only then does ``handle_DATA`` reply
    ``250 OK``, so that reply means the message survives a crash or power loss.
    ``new/`` never contains a partial file. An aborted transaction removes its file
    from ``tmp/``.

    Each file starts with a ``Return-Path: <reverse-path>`` line (``<>`` for the
    null reverse-path), as a delivering MTA adds one (RFC 5321, section 4.4). The
    received bytes follow unchanged, with the CRLF line endings of the SMTP
    dialogue. One file is written per message, whatever the number of recipients.

    A failed write makes ``handle_DATA`` reply ``452 4.3.1`` when the disk or
    quota is full and ``451 4.3.0`` for other errors, so the client retries later.

    aiosmtpd has no such handler. Its :class:`Mailbox` re-serialises the parsed
    message and keeps it in memory.

    :param path: the Maildir directory.
    :param create: create ``path`` and its ``tmp``, ``new`` and ``cur``
        subdirectories (mode 0700) when missing. With ``False`` a missing directory
        raises :class:`FileNotFoundError` here.
    :param buffer_size: bytes collected in memory before each write to disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        buffer_size: int = 256 * 1024,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        self.path = os.fspath(path)
        self.buffer_size = buffer_size
        self._hostname = _maildir_hostname()
        if create:
            self._create_directories()
        else:
            for subdir in ("tmp", "new", "cur"):
                subpath = os.path.join(self.path, subdir)
                if not os.path.isdir(subpath):
                    raise FileNotFoundError(
                        errno.ENOENT,
                        "Maildir directory not found (pass create=True to create it)",
                        subpath,
                    )

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Maildir:
        """Build the handler from CLI arguments: the Maildir directory."""
        if len(args) != 1:
            parser.error("Maildir takes one argument: the Maildir directory")
        return cls(args[0])

    def _create_directories(self) -> None:
        missing = [
            directory
            for directory in (self.path, *self._subdirectories())
            if not os.path.isdir(directory)
        ]
        for directory in missing:
            os.makedirs(directory, 0o700, exist_ok=True)
        if missing:
            _fsync_directory(self.path)
            _fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def _subdirectories(self) -> tuple[str, str, str]:
        return (
            os.path.join(self.path, "tmp"),
            os.path.join(self.path, "new"),
            os.path.join(self.path, "cur"),
        )

    async def handle_DATA_CHUNK(
        self, server: _Server, session: Session, envelope: Envelope, data: bytes
    ) -> None:
        delivery = self._delivery(session, envelope)
        if delivery.error is not None or delivery.finished:
            return

        delivery.pending += data
        if len(delivery.pending) >= self.buffer_size:
            await anyio.to_thread.run_sync(self._write_pending, delivery)

    async def handle_DATA(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> str:
        delivery: _MaildirDelivery | None = getattr(envelope, _DELIVERY_ATTRIBUTE, None)
        if delivery is None:
            # No chunks came: an empty message, or a server that collected the
            # whole content instead of streaming it.
            delivery = self._delivery(session, envelope)
            if envelope.content is not None or envelope.original_content is not None:
                delivery.pending += _content_bytes(envelope)

        try:
            await anyio.to_thread.run_sync(self._finish, delivery)
        except BaseException:
            # Cancelled before the worker thread ran, or failed unexpectedly. No
            # handle_DATA_ABORT follows handle_DATA, so remove the tmp/ file here.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._discard, delivery)
            raise
        finally:
            delattr(envelope, _DELIVERY_ATTRIBUTE)

        if delivery.error is not None:
            return self._error_status(delivery)
        return "250 OK"

    async def handle_DATA_ABORT(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> None:
        delivery: _MaildirDelivery | None = getattr(envelope, _DELIVERY_ATTRIBUTE, None)
        if delivery is None:
            return
        delattr(envelope, _DELIVERY_ATTRIBUTE)

        # The hook may run while the connection is being cancelled by a timeout or
        # a shutdown, and the shield lets the removal finish anyway.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._discard, delivery)

    def _delivery(self, session: Session, envelope: Envelope) -> _MaildirDelivery:
        delivery: _MaildirDelivery | None = getattr(envelope, _DELIVERY_ATTRIBUTE, None)
        if delivery is None:
            name = self._unique_name()
            delivery = _MaildirDelivery(
                name=name,
                tmp_path=os.path.join(self.path, "tmp", name),
                header=_return_path_header(envelope.mail_from),
                peer=str(session.peer),
            )
            setattr(envelope, _DELIVERY_ATTRIBUTE, delivery)
        return delivery

    def _unique_name(self) -> str:
        now = time.time()
        seconds = int(now)
        microseconds = int((now - seconds) * 1_000_000)
        return (
            f"{seconds}.M{microseconds}P{os.getpid()}Q{next(_delivery_counter)}"
            f"R{secrets.token_hex(8)}.{self._hostname}"
        )

    # The methods below run in worker threads and never touch the event loop.

    def _write_pending(self, delivery: _MaildirDelivery) -> None:
        data = bytes(delivery.pending)
        delivery.pending.clear()
        try:
            if delivery.file is None:
                delivery.file = self._open_tmp(delivery.tmp_path)
                delivery.file.write(delivery.header)
                delivery.size += len(delivery.header)
            delivery.file.write(data)
            delivery.size += len(data)
        except OSError as exc:
            self._fail(delivery, exc)

    def _finish(self, delivery: _MaildirDelivery) -> None:
        if delivery.error is not None or delivery.finished:
            return
        self._write_pending(delivery)
        if delivery.error is not None:
            return

        file = delivery.file
        assert file is not None
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            final_path = os.path.join(
                self.path, "new", f"{delivery.name},S={delivery.size}"
            )
            _link_without_overwrite(delivery.tmp_path, final_path)
            _fsync_directory(os.path.join(self.path, "new"))
        except OSError as exc:
            self._fail(delivery, exc)
            return
        delivery.finished = True

    def _discard(self, delivery: _MaildirDelivery) -> None:
        if delivery.finished:
            return
        delivery.finished = True
        delivery.pending.clear()
        if delivery.file is not None:
            try:
                delivery.file.close()
            except OSError:
                pass  # the buffered tail could not be written; the file goes anyway
            try:
                os.unlink(delivery.tmp_path)
            except FileNotFoundError:
                pass

    def _fail(self, delivery: _MaildirDelivery, exc: OSError) -> None:
        logger.error(
            "Maildir: storing the message from %s in %s failed: %s",
            delivery.peer,
            delivery.tmp_path,
            exc,
        )
        delivery.error = exc
        try:
            self._discard(delivery)
        except OSError as cleanup_exc:
            logger.error(
                "Maildir: removing %s after a failed write failed: %s",
                delivery.tmp_path,
                cleanup_exc,
            )

    @staticmethod
    def _open_tmp(path: str) -> BinaryIO:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        return open(fd, "wb")

    @staticmethod
    def _error_status(delivery: _MaildirDelivery) -> str:
        error = delivery.error
        if error is not None and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "452 4.3.1 Insufficient system storage"
        return "451 4.3.0 Message could not be stored, try again later"


# Name of the envelope attribute that carries a Maildir delivery between hooks.
_DELIVERY_ATTRIBUTE = "_smtpproto_maildir_delivery"


def _return_path_header(mail_from: str | None) -> bytes:
    address = mail_from or "<>"
    if not (address.startswith("<") and address.endswith(">")):
        address = f"<{address}>"
    return f"Return-Path: {address}\r\n".encode("utf-8", "surrogateescape")


def _link_without_overwrite(source: str, destination: str) -> None:
    """Give ``source`` the name ``destination`` and drop the old name.

    A hard link fails when ``destination`` exists, where a rename would replace it.
    File systems without hard links fall back to a rename.
    """
    try:
        os.link(source, destination)
    except (AttributeError, PermissionError, NotImplementedError):
        os.rename(source, destination)
        return
    os.unlink(source)


# Matches the empty line that ends the header block: at the very start of the
# content, or right after another line's LF.
_END_OF_HEADERS = re.compile(rb"(?:\A|(?<=\n))(\r?\n)")


def _insert_header(content: bytes, name: str, value: str) -> bytes:
    """Insert a header line at the end of the header block of ``content``.

    The line ending follows the empty line that ends the header block, else the
    first line's ending. Content without an empty line is all headers, so the
    header goes at its end.
    """
    match = _END_OF_HEADERS.search(content)
    if match is not None:
        newline = match.group(1)
        header = f"{name}: {value}".encode() + newline
        return content[: match.start()] + header + content[match.start() :]

    first_line_end = content.find(b"\n")
    newline = (
        b"\r\n" if first_line_end > 0 and content[first_line_end - 1] == 13 else b"\n"
    )
    if content and not content.endswith(b"\n"):
        content += newline
    return content + f"{name}: {value}".encode() + newline


class Proxy:
    """Relay each message to another SMTP server and return its verdict.

    The relay uses :mod:`smtplib` in a worker thread, so the event loop keeps
    serving other clients. An ``X-Peer: <client IP>`` header is inserted at the end
    of the header block. The client's MAIL parameters are passed on unchanged,
    except ``SIZE``, which is recomputed when the upstream server advertises SIZE.
    Per-recipient RCPT parameters are not passed on.

    The transaction is relayed all or nothing. If the upstream server rejects MAIL,
    any recipient or the message, the upstream transaction is reset and its reply
    (code, enhanced code and text) becomes the reply to DATA. Among several
    rejected recipients a permanent (5xx) rejection wins over a temporary one,
    because the message can then never be delivered as a whole. An upstream 421 is
    returned as 451, since this server keeps its own connection open. When the
    upstream server cannot be reached or drops the connection, the reply is
    ``451 4.4.1`` or ``451 4.4.2``.

    Differences from aiosmtpd: its Proxy talks to the upstream server inside the
    event loop, always replies ``250 OK`` (rejections are only logged), relays to
    the accepted recipients even when others were rejected, and has no
    ``from_cli``.

    :param remote_hostname: host name or IP address of the upstream server.
    :param remote_port: its port.
    :param local_hostname: the name sent in EHLO. ``None`` uses
        :func:`socket.getfqdn`, as :mod:`smtplib` does.
    :param timeout: seconds allowed for the connection and for each reply.
    """

    def __init__(
        self,
        remote_hostname: str,
        remote_port: int,
        *,
        local_hostname: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.hostname = remote_hostname
        self.port = remote_port
        self.local_hostname = local_hostname
        self.timeout = timeout

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> Proxy:
        """Build the handler from CLI arguments: the upstream host and port."""
        if len(args) != 2:
            parser.error("Proxy takes two arguments: the upstream host and port")
        host, port_text = args
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            parser.error(f"invalid upstream port {port_text!r}: expected 1 to 65535")
        return cls(host, port)

    async def handle_DATA(
        self, server: _Server, session: Session, envelope: Envelope
    ) -> str:
        data = _insert_header(
            _content_bytes(envelope), "X-Peer", _peer_host(session.peer)
        )
        return await anyio.to_thread.run_sync(
            self._relay,
            envelope.mail_from or "<>",
            list(envelope.rcpt_tos),
            list(envelope.mail_options),
            data,
            str(session.peer),
        )

    def _relay(
        self,
        sender: str,
        recipients: list[str],
        mail_options: list[str],
        data: bytes,
        peer: str,
    ) -> str:
        """Run one upstream transaction and return the reply for the client."""
        try:
            client = smtplib.SMTP(
                self.hostname,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
            )
        except (OSError, smtplib.SMTPException) as exc:
            logger.warning(
                "Proxy: connecting to %s:%s for %s failed: %s",
                self.hostname,
                self.port,
                peer,
                exc,
            )
            return "451 4.4.1 Upstream server unavailable, try again later"

        connection_usable = True
        try:
            return self._transact(client, sender, recipients, mail_options, data, peer)
        except smtplib.SMTPNotSupportedError as exc:
            # smtplib raises this before MAIL FROM when SMTPUTF8 is requested but
            # the upstream server does not advertise it.
            logger.warning("Proxy: cannot relay message from %s: %s", peer, exc)
            return "553 5.6.7 Upstream server does not support SMTPUTF8"
        except smtplib.SMTPResponseException as exc:
            return self._upstream_status(exc.smtp_code, exc.smtp_error, peer)
        except (OSError, smtplib.SMTPException) as exc:
            connection_usable = False
            logger.warning(
                "Proxy: connection to %s:%s lost while relaying for %s: %s",
                self.hostname,
                self.port,
                peer,
                exc,
            )
            return "451 4.4.2 Connection to upstream server lost, try again later"
        finally:
            self._close(client, connection_usable)

    def _transact(
        self,
        client: smtplib.SMTP,
        sender: str,
        recipients: list[str],
        mail_options: list[str],
        data: bytes,
        peer: str,
    ) -> str:
        client.ehlo_or_helo_if_needed()
        options = [o for o in mail_options if not o.upper().startswith("SIZE=")]
        if client.has_extn("size"):
            options.append(f"SIZE={len(data)}")

        code, text = client.mail(sender, options)
        if code // 100 != 2:
            self._reset(client)
            return self._upstream_status(code, text, peer)

        rejections = []
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code // 100 != 2:
                rejections.append((code, text))
        if rejections:
            self._reset(client)
            permanent = [r for r in rejections if r[0] // 100 == 5]
            code, text = (permanent or rejections)[0]
            return self._upstream_status(code, text, peer)

        code, text = client.data(data)
        if code // 100 != 2:
            return self._upstream_status(code, text, peer)
        logger.info(
            "Proxy: relayed message from %s to %s:%s: %s %s",
            peer,
            self.hostname,
            self.port,
            code,
            text.decode("utf-8", "replace"),
        )
        return "250 OK"

    @staticmethod
    def _close(client: smtplib.SMTP, send_quit: bool) -> None:
        # After a timeout or a broken socket, QUIT would only wait for another
        # timeout.
        if send_quit:
            try:
                client.quit()
                return
            except (OSError, smtplib.SMTPException):
                pass
        client.close()

    @staticmethod
    def _reset(client: smtplib.SMTP) -> None:
        try:
            client.rset()
        except (OSError, smtplib.SMTPException):
            pass

    def _upstream_status(self, code: int, text: bytes | str, peer: str) -> str:
        """Turn an upstream rejection into a status string for the client."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        lines = [_printable(line) for line in text.split("\n")]
        logger.warning(
            "Proxy: %s:%s rejected message from %s: %s %s",
            self.hostname,
            self.port,
            peer,
            code,
            " / ".join(lines),
        )
        if not 400 <= code <= 599:
            return "451 4.4.0 Unexpected reply from upstream server"
        if code == 421:
            code = 451
        return f"{code} " + "\n".join(lines)


def _printable(line: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in line.rstrip("\r"))
