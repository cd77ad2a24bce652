"""The anyio server: listeners, one task per connection, hook calls, TLS, timers.

Every SMTP rule lives in :class:`smtpproto.ServerConnection`. This module moves
bytes between the socket and the engine, runs TLS handshakes and timers, and turns
engine events into handler hook calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import anyio
import sniffio
from anyio.abc import (
    ByteStream,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
)
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSAttribute, TLSStream

from smtpproto import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthAborted,
    AuthCredentials,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    DataRejected,
    Ehlo,
    Envelope,
    Event,
    Helo,
    Help,
    LocalProtocolError,
    MailFrom,
    Noop,
    ProxyHeader,
    Quit,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
    Session,
    StartTLS,
    UnknownCommand,
    Vrfy,
    parse_status,
)

from ._hooks import (
    BUILTIN_MECHANISMS,
    MISSING,
    AuthExchange,
    AuthExchangeAborted,
    AuthResult,
    HookTable,
    LoginPassword,
    call_maybe_async,
    reply_from_status,
)

__all__ = ["Authenticator", "SMTPServer", "serve"]

try:
    __version__ = version("smtpproto-server")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

server_logger = logging.getLogger("smtpproto.server")
tls_logger = logging.getLogger("smtpproto.tls")
wire_logger = logging.getLogger("smtpproto.wire")

#: ``authenticator(server, session, envelope, mechanism, auth_data)``, sync or async.
Authenticator = Callable[
    ["SMTPServer", Session, Envelope, str, Any], "AuthResult | Awaitable[AuthResult]"
]

# Sent when even the configured error_reply does not fit the pending command.
INTERNAL_ERROR: Final = Reply(451, "4.3.0", ("Error: internal server error",))
# aiosmtpd's reply to every command but QUIT once handle_STARTTLS returned False.
REFUSED_INSECURE_TEXT: Final = "Command refused due to lack of security"

# Replies to a connection over max_connections or max_connections_per_ip.
TOO_MANY_CONNECTIONS: Final = b"421 4.7.0 Too many connections, try again later\r\n"
TOO_MANY_FROM_ADDRESS: Final = (
    b"421 4.7.0 Too many connections from your address, try again later\r\n"
)
# Seconds allowed for sending that 421 line before the socket closes anyway.
REJECTION_SEND_TIMEOUT: Final = 1.0
# Seconds between two log lines about rejected connections, per reason.
REJECTION_LOG_INTERVAL: Final = 1.0

READ_SIZE: Final = 65536
# Reads in a row that the trio stream path may take without a scheduler checkpoint.
MAX_DIRECT_READS: Final = 8
# Listen backlog of the asyncio path; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG: Final = 4096
# After the engine closes a session, unread client bytes would make the kernel
# send a TCP reset, which can destroy the last reply before the client has
# read it. Reading for a short while before closing lets that reply arrive.
LINGER_SECONDS: Final = 1.0
LINGER_MAX_READS: Final = 16


class _ConnectionEnded(Exception):
    """The socket broke or the session must end without further replies."""


class _HookFailed(Exception):
    """A handler hook raised ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


# Exceptions of a failed hook call: the hook raised, or its result has the wrong
# type (TypeError) or is not a status string (ValueError).
_HOOK_FAILURES: Final = (_HookFailed, TypeError, ValueError)


class SMTPServer:
    """An SMTP or LMTP server that calls aiosmtpd-style handler hooks.

    One instance serves many connections; it is passed to every hook as ``server``.
    Start it with :meth:`serving` (an async context manager), :meth:`serve_forever`
    or :func:`serve`. All parameters but ``handler`` are keyword-only.

    :param handler: object whose ``handle_<VERB>`` methods are the hooks; any
        object works, missing hooks get the engine's default replies
    :param hostname: the server's name in the greeting and the EHLO reply;
        ``None`` looks up :func:`socket.getfqdn` once, here
    :param ident: text after the host name in the greeting
    :param data_size_limit: SIZE limit in octets; ``None`` or 0 for no limit
    :param enable_SMTPUTF8: advertise SMTPUTF8 (RFC 6531)
    :param decode_data: give hooks ``envelope.content`` as ``str`` (UTF-8 with
        ``surrogateescape``) instead of bytes; 8BITMIME is then not advertised
    :param tls_context: server-side context that enables STARTTLS
    :param require_starttls: refuse most commands before STARTTLS (needs
        ``tls_context``)
    :param timeout: seconds of client silence before ``421 4.4.2`` and close; any
        bytes received restart it, including message content and SASL responses;
        ``None`` for no limit
    :param auth_required: refuse mail commands until AUTH succeeds
    :param auth_require_tls: offer and accept AUTH only over TLS
    :param authenticator: checks PLAIN and LOGIN credentials, see below
    :param auth_exclude_mechanism: SASL mechanism names not to offer
    :param lmtp: speak LMTP (RFC 2033) instead of SMTP
    :param proxy_protocol_timeout: read a PROXY protocol header before the
        greeting, waiting at most this many seconds; ``None`` disables PROXY
    :param tls_handshake_timeout: seconds allowed for a TLS handshake
    :param data_timeout: seconds allowed for one whole message body, from the
        ``354`` reply (or the first BDAT) to its end; ``None`` for no limit
    :param shutdown_grace: seconds :meth:`shutdown` waits for messages in
        progress before it cancels their connections
    :param max_connections: open connections allowed at once; a connection over
        the limit gets ``421 4.7.0`` and is closed before any session starts;
        ``None`` for no limit
    :param max_connections_per_ip: open connections allowed at once from one
        client address (the socket peer, also behind a PROXY header); over the
        limit, ``421 4.7.0`` and close; ``None`` for no limit
    :param greeting_delay: seconds to wait before the greeting. Bytes that
        arrive in that time reach the engine before the greeting, so with
        ``reject_unsynchronized`` such an early talker gets ``554 5.5.0`` and
        is disconnected. The greeting goes out as soon as the first bytes arrive
    :param error_reply: the status string sent when a hook raises or returns
        an invalid result (a 4xx or 5xx reply)
    :param asyncio_protocol: on asyncio, serve connections with callbacks of an
        :class:`asyncio.Protocol` instead of a task per connection (faster, and
        leaner when idle); ``False`` uses the anyio stream path as on trio

    The remaining keyword arguments go to :class:`smtpproto.ServerConnection`
    unchanged; they have the engine's defaults.

    Hooks are the handler's ``handle_<NAME>(server, session, envelope, ...)``
    methods, as in aiosmtpd. Each may be sync or async; a sync hook runs on the
    event loop, so it must not block. A hook returns the reply as a status string
    such as ``"550 5.1.1 No such user"``; ``None`` or :data:`MISSING` sends the
    engine's default reply. A hook that raises, or returns something else, gets
    ``handle_exception(error)``'s status or ``451 4.3.0``, and the session goes on.

    By default ``handle_DATA`` finds the whole message in ``envelope.content``
    and ``envelope.original_content``. A handler that defines
    ``handle_DATA_CHUNK(server, session, envelope, data)`` gets the message in
    pieces instead, and ``handle_DATA_ABORT(server, session, envelope)`` when the
    transaction ends without ``handle_DATA`` (rejected message, disconnect,
    timeout, RSET during BDAT). In LMTP mode ``handle_DATA`` may return a list
    with one status per accepted recipient, in RCPT order.

    AUTH: the engine runs PLAIN and LOGIN and hands the credentials to
    ``authenticator(server, session, envelope, mechanism, auth_data)``, where
    ``auth_data`` is a :class:`LoginPassword`; it returns an :class:`AuthResult`
    (sync or async). Without an authenticator, a ``handle_AUTH`` hook gets
    ``[mechanism, login, password]``. PLAIN and LOGIN are offered only when one of
    these two can check the credentials (aiosmtpd offers them always, and then
    every attempt fails). More mechanisms come from ``auth_<MECH>`` methods, see
    :class:`AuthExchange`.

    Subclasses add commands with methods named ``smtp_<VERB>``:
    ``smtp_PING(self, session, envelope, argument) -> str`` (sync or async), where
    ``argument`` is the text after the verb or ``None``. The returned status
    string is the reply; ``None`` gives the engine's ``500`` for unknown commands.
    """

    def __init__(
        self,
        handler: object,
        *,
        hostname: str | None = None,
        ident: str | None = None,
        data_size_limit: int | None = 33_554_432,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        timeout: float | None = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        authenticator: Authenticator | None = None,
        auth_exclude_mechanism: Iterable[str] | None = None,
        lmtp: bool = False,
        proxy_protocol_timeout: float | None = None,
        tls_handshake_timeout: float = 30,
        data_timeout: float | None = 600,
        shutdown_grace: float = 30,
        max_connections: int | None = 1000,
        max_connections_per_ip: int | None = 50,
        greeting_delay: float = 0,
        error_reply: str = "451 4.3.0 Error: internal server error",
        asyncio_protocol: bool = True,
        bare_line_ending: str = "reject",
        max_recipients: int | None = 1000,
        max_errors: int | None = 10,
        max_command_line: int = 512,
        max_text_line: int | None = 1000,
        max_unauthenticated_commands: int | None = 10,
        max_sasl_response: int = 12288,
        max_proxy_header: int = 4096,
        enable_pipelining: bool = True,
        enable_chunking: bool = True,
        enable_dsn: bool = False,
        enable_help: bool = True,
        enable_enhanced_status_codes: bool = True,
        reject_unsynchronized: bool = False,
    ) -> None:
        if proxy_protocol_timeout is not None and proxy_protocol_timeout <= 0:
            raise ValueError(
                f"proxy_protocol_timeout must be positive, not {proxy_protocol_timeout!r}"
            )
        for name, value in (
            ("timeout", timeout),
            ("data_timeout", data_timeout),
            ("tls_handshake_timeout", tls_handshake_timeout),
            ("shutdown_grace", shutdown_grace),
            ("greeting_delay", greeting_delay),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, not {value!r}")
        for name, limit in (
            ("max_connections", max_connections),
            ("max_connections_per_ip", max_connections_per_ip),
        ):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 or None, not {limit!r}")
        parsed_error_reply = parse_status(error_reply)
        if not 400 <= parsed_error_reply.code < 600:
            raise ValueError(
                f"error_reply must be a 4xx or 5xx status, not {error_reply!r}"
            )

        self.handler = handler
        self.hostname = hostname if hostname is not None else socket.getfqdn()
        self.ident = ident if ident is not None else f"smtpproto {__version__}"
        self.data_size_limit = data_size_limit or None
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self.decode_data = decode_data
        self.tls_context = tls_context
        self.require_starttls = require_starttls and tls_context is not None
        self.timeout = timeout
        self.auth_required = auth_required
        self.auth_require_tls = auth_require_tls
        self.authenticator = authenticator
        self.lmtp = lmtp
        self.proxy_protocol_timeout = proxy_protocol_timeout
        self.tls_handshake_timeout = tls_handshake_timeout
        self.data_timeout = data_timeout
        self.shutdown_grace = shutdown_grace
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.greeting_delay = greeting_delay
        self.error_reply = parsed_error_reply
        self.asyncio_protocol = asyncio_protocol

        self._hooks = HookTable(handler, self)
        self._streaming = self._hooks.get("DATA_CHUNK") is not None
        # Without handle_DATA nobody reads envelope.content, so the body is dropped
        # as it arrives instead of being joined in memory.
        self._collect_body = not self._streaming and self._hooks.get("DATA") is not None
        # No hook sees the message at all: the asyncio path handles its events
        # without creating coroutines.
        self._discard_body = not any(
            name in self._hooks.hooks for name in ("DATA", "DATA_CHUNK", "DATA_ABORT")
        )
        # Events that get the engine's default reply because no hook handles them;
        # the asyncio path answers these without creating a coroutine.
        self._plain_events = frozenset(
            event_type
            for event_type, hook_name in _PLAIN_WITHOUT_HOOK.items()
            if hook_name is None or hook_name not in self._hooks.hooks
        )
        excluded = {name.upper() for name in auth_exclude_mechanism or ()}
        mechanisms: list[str] = []
        if authenticator is not None or self._hooks.get("AUTH") is not None:
            mechanisms.extend(BUILTIN_MECHANISMS)
        mechanisms.extend(self._hooks.auth_methods)
        self.auth_mechanisms = tuple(m for m in mechanisms if m not in excluded)

        self._engine_options: dict[str, Any] = {
            "lmtp": lmtp,
            "max_message_size": self.data_size_limit,
            "enable_8bitmime": not decode_data,
            "enable_smtputf8": enable_SMTPUTF8,
            "enable_pipelining": enable_pipelining,
            "enable_enhanced_status_codes": enable_enhanced_status_codes,
            "enable_chunking": enable_chunking,
            "enable_dsn": enable_dsn,
            "enable_help": enable_help,
            "auth_mechanisms": self.auth_mechanisms,
            "auth_require_tls": auth_require_tls,
            "auth_required": auth_required,
            "require_starttls": self.require_starttls,
            "bare_line_ending": bare_line_ending,
            "max_command_line": max_command_line,
            "max_text_line": max_text_line,
            "max_recipients": max_recipients,
            "max_errors": max_errors,
            "max_unauthenticated_commands": max_unauthenticated_commands,
            "max_sasl_response": max_sasl_response,
            "proxy_protocol": proxy_protocol_timeout is not None,
            "max_proxy_header": max_proxy_header,
            "reject_unsynchronized": reject_unsynchronized,
        }
        # Build one engine now so that invalid options fail here, not per client.
        self._new_engine(implicit_tls=False)

        self._open_connections = 0
        self._connections_per_ip: dict[str, int] = {}
        self._rejection_log = _RejectionLog()

        self._task_group: TaskGroup | None = None
        self._listeners: list[SocketListener] = []
        self._asyncio_servers: list[asyncio.AbstractServer] = []
        # The asyncio path's timeout sweep (a _protocol._Sweeper), while serving.
        self._sweeper: Any = None
        self._sockets: list[socket.socket] = []
        self._accept_scopes: list[anyio.CancelScope] = []
        self._connections: set[_ConnectionHandler] = set()
        self._connections_changed: anyio.Event | None = None
        self._shutting_down = False
        self._shutdown_done: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} hostname={self.hostname!r} lmtp={self.lmtp}>"

    def _new_engine(self, *, implicit_tls: bool) -> ServerConnection:
        return ServerConnection(
            self.hostname,
            tls_available=self.tls_context is not None and not implicit_tls,
            tls_active=implicit_tls,
            **self._engine_options,
        )

    # ------------------------------------------------------------------ listening

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, empty when the server is not serving."""
        return list(self._sockets)

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful after binding port 0).

        :raises RuntimeError: if the server is not serving
        """
        if not self._sockets:
            raise RuntimeError("the server is not listening; use serving() first")
        return int(self._sockets[0].getsockname()[1])

    @asynccontextmanager
    async def serving(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8025,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> AsyncIterator[SMTPServer]:
        """Listen on ``host``:``port`` while the ``async with`` block runs.

        On exit the server shuts down gracefully, as :meth:`shutdown` does.

        :param host: address or name to bind; ``None`` binds all interfaces
        :param port: TCP port; 0 lets the system choose (read it from :attr:`port`)
        :param ssl_context: server-side context for implicit TLS (SMTPS): the
            handshake runs before the greeting
        :param reuse_port: set ``SO_REUSEPORT`` so that several processes can
            listen on the same port and the kernel spreads connections among them
        :raises OSError: if the address cannot be bound
        """
        if self._task_group is not None:
            raise RuntimeError("this server is already serving; create another one")
        # Bind before the task group starts, so that a bind error comes out as
        # itself and not inside an exception group.
        start = await self._bind(host, port, ssl_context, reuse_port)
        self._shutting_down = False
        self._shutdown_done = None
        body_error: Exception | None = None
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                await start()
                try:
                    yield self
                except Exception as error:  # noqa: BLE001 - re-raised below
                    # Raised again below the task group, for the same reason.
                    body_error = error
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.shutdown()
        finally:
            self._task_group = None
            self._listeners.clear()
            self._asyncio_servers.clear()
            self._sockets.clear()
            self._accept_scopes.clear()
        if body_error is not None:
            raise body_error

    async def add_listener(
        self,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> list[socket.socket]:
        """Listen on one more address while :meth:`serving` runs.

        This is how one server serves a STARTTLS port and an SMTPS port.

        :param ssl_context: server-side context for implicit TLS on this address
        :param reuse_port: set ``SO_REUSEPORT``, as in :meth:`serving`
        :return: the new listening sockets
        :raises RuntimeError: outside :meth:`serving`, or after :meth:`shutdown`
        :raises OSError: if the address cannot be bound
        """
        if self._task_group is None or self._shutting_down:
            raise RuntimeError("add_listener() works only while serving() runs")
        start = await self._bind(host, port, ssl_context, reuse_port)
        return await start()

    async def _bind(
        self,
        host: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
        reuse_port: bool,
    ) -> Callable[[], Awaitable[list[socket.socket]]]:
        """Bind the listening sockets; return the function that starts accepting.

        On asyncio (unless ``asyncio_protocol`` is off) connections are served
        by :class:`asyncio.Protocol` callbacks, elsewhere by a task each.
        """
        if self.asyncio_protocol and sniffio.current_async_library() == "asyncio":
            from ._protocol import ProtocolConnection

            loop = asyncio.get_running_loop()
            aio_server = await loop.create_server(
                lambda: ProtocolConnection(self, ssl_context),
                host,
                port,
                backlog=LISTEN_BACKLOG,
                reuse_port=reuse_port or None,
                start_serving=False,
            )

            async def start_protocol() -> list[socket.socket]:
                self._asyncio_servers.append(aio_server)
                sockets = list(aio_server.sockets)
                await aio_server.start_serving()
                return self._started(sockets, ssl_context)

            return start_protocol

        multi = await anyio.create_tcp_listener(
            local_host=host, local_port=port, reuse_port=reuse_port
        )

        async def start_streams() -> list[socket.socket]:
            return self._start_accepting(multi, ssl_context)

        return start_streams

    def _started(
        self, sockets: list[socket.socket], ssl_context: ssl.SSLContext | None
    ) -> list[socket.socket]:
        self._sockets.extend(sockets)
        for sock in sockets:
            server_logger.info(
                "listening on %s%s",
                _format_address(sock.getsockname()),
                " (implicit TLS)" if ssl_context is not None else "",
            )
        return sockets

    def _start_accepting(
        self,
        multi: MultiListener[SocketStream],
        ssl_context: ssl.SSLContext | None,
    ) -> list[socket.socket]:
        assert self._task_group is not None
        sockets = []
        for listener in multi.listeners:
            assert isinstance(listener, SocketListener)
            self._listeners.append(listener)
            sockets.append(listener.extra(SocketAttribute.raw_socket))
            self._task_group.start_soon(self._accept_loop, listener, ssl_context)
        return self._started(sockets, ssl_context)

    async def serve_forever(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8025,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Listen until cancelled; see :meth:`serving` for the parameters."""
        async with self.serving(host, port, ssl_context=ssl_context):
            await anyio.sleep_forever()

    async def _accept_loop(
        self, listener: SocketListener, ssl_context: ssl.SSLContext | None
    ) -> None:
        with anyio.CancelScope() as scope:
            self._accept_scopes.append(scope)
            if self._shutting_down:
                return
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as error:
                    # Out of file descriptors and similar: the listener itself is
                    # fine, so wait a little instead of failing the server.
                    server_logger.error("accepting a connection failed: %s", error)
                    await anyio.sleep(0.1)
                    continue
                assert self._task_group is not None
                self._task_group.start_soon(self._serve_connection, stream, ssl_context)

    async def _serve_connection(
        self, stream: SocketStream, ssl_context: ssl.SSLContext | None
    ) -> None:
        peer = stream.extra(SocketAttribute.remote_address, None)
        rejection = self._admit(peer)
        if rejection is not None:
            await _reject_stream(stream, rejection)
            return
        try:
            handler = _ConnectionHandler(self, stream, ssl_context)
            self._connections.add(handler)
            if self._shutting_down:  # accepted just before the listener closed
                handler.request_shutdown()
            try:
                await handler.run()
            finally:
                self._connections.discard(handler)
                self._connection_closed()
        finally:
            self._release(peer)

    def _connection_closed(self) -> None:
        if self._connections_changed is not None:
            self._connections_changed.set()

    # ------------------------------------------------------------------ limits

    def _admit(self, peer: object) -> bytes | None:
        """Count a new connection; return the 421 line if it is over a limit."""
        limit = self.max_connections
        if limit is not None and self._open_connections >= limit:
            self._rejection_log.log("max_connections", peer, limit)
            return TOO_MANY_CONNECTIONS
        per_ip_limit = self.max_connections_per_ip
        if per_ip_limit is not None:
            address = _peer_host(peer)
            count = self._connections_per_ip.get(address, 0)
            if count >= per_ip_limit:
                self._rejection_log.log("max_connections_per_ip", peer, per_ip_limit)
                return TOO_MANY_FROM_ADDRESS
            self._connections_per_ip[address] = count + 1
        self._open_connections += 1
        return None

    def _release(self, peer: object) -> None:
        """Uncount a connection that :meth:`_admit` let in."""
        self._open_connections -= 1
        if self.max_connections_per_ip is not None:
            address = _peer_host(peer)
            count = self._connections_per_ip.get(address, 0) - 1
            if count > 0:
                self._connections_per_ip[address] = count
            else:
                self._connections_per_ip.pop(address, None)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop gracefully: stop accepting, close idle sessions, let messages finish.

        Idle sessions get ``421 4.3.2`` at once. A session that is receiving a
        message closes with ``421`` after that message's reply. After ``grace``
        seconds (default: ``shutdown_grace``) the remaining connections are
        cancelled. Calling it again waits for the first call to finish.
        """
        if self._task_group is None:
            return
        if self._shutdown_done is not None:
            await self._shutdown_done.wait()
            return
        done = self._shutdown_done = anyio.Event()
        self._shutting_down = True
        try:
            for scope in self._accept_scopes:
                scope.cancel()
            for aio_server in self._asyncio_servers:
                aio_server.close()
            for listener in self._listeners:
                await listener.aclose()
            if self._connections:
                server_logger.info(
                    "shutting down, %d connections open", len(self._connections)
                )
            for connection in list(self._connections):
                connection.request_shutdown()
            if grace is None:
                grace = self.shutdown_grace
            with anyio.move_on_after(grace):
                await self._wait_for_connections()
        finally:
            # Also reached when the caller cancels the wait: no connection may
            # outlive the shutdown.
            for connection in list(self._connections):
                connection.cancel()
            with anyio.CancelScope(shield=True):
                await self._wait_for_connections()
            done.set()

    async def _wait_for_connections(self) -> None:
        while self._connections:
            changed = self._connections_changed = anyio.Event()
            await changed.wait()


async def serve(
    handler: object,
    host: str | None = "127.0.0.1",
    port: int = 8025,
    *,
    ssl_context: ssl.SSLContext | None = None,
    **server_options: Any,
) -> None:
    """Serve ``handler`` until cancelled.

    ``server_options`` are :class:`SMTPServer` keyword arguments.
    """
    server = SMTPServer(handler, **server_options)
    await server.serve_forever(host, port, ssl_context=ssl_context)


async def _reject_stream(stream: SocketStream, line: bytes) -> None:
    """Send a 421 line to a connection over a limit and close it."""
    with anyio.move_on_after(REJECTION_SEND_TIMEOUT):
        try:
            await stream.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
    await anyio.aclose_forcefully(stream)


class _RejectionLog:
    """INFO lines about rejected connections, at most one a second per reason.

    The line after a quiet period reports how many rejections were not logged, so
    a flood of connections cannot flood the log.
    """

    __slots__ = ("last", "suppressed")

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def log(self, reason: str, peer: object, limit: int) -> None:
        now = time.monotonic()
        if now - self.last.get(reason, -math.inf) < REJECTION_LOG_INTERVAL:
            self.suppressed[reason] = self.suppressed.get(reason, 0) + 1
            return
        self.last[reason] = now
        suppressed = self.suppressed.pop(reason, 0)
        server_logger.info(
            "connection from %s rejected: %s (%d) reached%s",
            _format_address(peer),
            reason,
            limit,
            f"; {suppressed} more rejections not logged" if suppressed else "",
        )


def _peer_host(peer: object) -> str:
    """Return the address part of a socket peer, the key of the per-address limit."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if ":" in host:
            return f"[{host}]:{address[1]}"
        return f"{host}:{address[1]}"
    return str(address)


def _describe_error(error: BaseException) -> str:
    """Return the most telling text for a TLS or socket failure."""
    cause = error.__cause__ if error.__cause__ is not None else error
    text = str(cause)
    return text if text else type(cause).__name__


def _tls_info(stream: TLSStream) -> dict[str, Any]:
    """Collect TLS details for ``session.ssl``, with the keys aiosmtpd's dict has."""
    ssl_object = stream.extra(TLSAttribute.ssl_object)
    return {
        "ssl_object": ssl_object,
        "cipher": stream.extra(TLSAttribute.cipher),
        "version": stream.extra(TLSAttribute.tls_version),
        "peercert": stream.extra(TLSAttribute.peer_certificate),
        "compression": ssl_object.compression(),
    }


class _ConnectionHandler:
    """One client connection over an anyio stream: the read, feed, dispatch and send loop.

    The event handlers (``_on_*``) are shared with the asyncio protocol path,
    which overrides the I/O methods (``_flush``, ``_receive_more``, ``_greet``,
    ``_start_tls``, ``_call``).
    """

    __slots__ = (
        "awaiting_proxy",
        "body_deadline",
        "body_envelope",
        "body_session",
        "chunk_error",
        "chunks",
        "conn",
        "direct_reads",
        "direct_socket",
        "hooks",
        "implicit_tls",
        "peer",
        "peer_closed",
        "raw_stream",
        "read_scope",
        "scope",
        "server",
        "shutdown_requested",
        "shutdown_sent",
        "stream",
        "timed_out",
        "tls_info",
        "trace",
    )

    def __init__(
        self,
        server: SMTPServer,
        stream: SocketStream,
        implicit_tls: ssl.SSLContext | None,
    ) -> None:
        self._setup(server, implicit_tls)
        self.raw_stream = stream
        self.stream: ByteStream = stream
        self.scope = anyio.CancelScope()
        self.read_scope: anyio.CancelScope | None = None
        # On trio, a socket stream has no buffer of its own, so plain-TCP reads and
        # sends can first be tried on the non-blocking socket directly. That
        # saves a cancel scope whenever the socket is ready, which it usually is
        # for sends. On asyncio, anyio's stream buffers, so it must not be bypassed.
        self.direct_socket: socket.socket | None = None
        self.direct_reads = 0
        if sniffio.current_async_library() == "trio":
            self.direct_socket = stream.extra(SocketAttribute.raw_socket, None)
        self._connect(stream.extra(SocketAttribute.remote_address, None))

    def _setup(self, server: SMTPServer, implicit_tls: ssl.SSLContext | None) -> None:
        self.server = server
        self.hooks = server._hooks
        self.implicit_tls = implicit_tls
        self.tls_info: dict[str, Any] | None = None
        self.shutdown_requested = False
        self.shutdown_sent = False
        self.awaiting_proxy = server.proxy_protocol_timeout is not None
        self.peer_closed = False
        self.timed_out = False

        # The message body being received: its envelope, collected chunks, the
        # failure of a streaming hook and the deadline of the body as a whole.
        self.body_envelope: Envelope | None = None
        self.body_session: Session | None = None
        self.chunks: list[bytes] = []
        self.chunk_error: Exception | None = None
        self.body_deadline: float | None = None

    def _connect(self, peer: Any) -> None:
        """Create the engine for a connection from ``peer``."""
        self.conn = self.server._new_engine(implicit_tls=self.implicit_tls is not None)
        self.peer = peer
        self.trace = wire_logger.isEnabledFor(logging.DEBUG)

    @property
    def peer_text(self) -> str:
        """The client's address for log lines (formatted only when logged)."""
        return _format_address(self.peer)

    def request_shutdown(self) -> None:
        if self.shutdown_requested:
            return
        self.shutdown_requested = True
        if self.read_scope is not None:
            self.read_scope.cancel()

    def cancel(self) -> None:
        self.scope.cancel()

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        server_logger.info("connection from %s opened", self.peer_text)
        try:
            with self.scope:
                await self._run()
        except _ConnectionEnded:
            pass
        except Exception:
            server_logger.exception(
                "unexpected error on the connection from %s", self.peer_text
            )
        finally:
            with anyio.CancelScope(shield=True):
                if self.body_envelope is not None:
                    with anyio.move_on_after(5):
                        await self._abort_body()
                await anyio.aclose_forcefully(self.stream)
            server_logger.info("connection from %s closed", self.peer_text)

    async def _run(self) -> None:
        conn = self.conn
        if self.implicit_tls is not None and not await self._start_tls(
            self.implicit_tls
        ):
            return
        conn.session.peer = self.peer
        conn.session.ssl = self.tls_info
        if not self.awaiting_proxy:
            await self._greet()

        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if not await self._receive_more():
                    return
                continue
            if event is PAUSED:
                raise RuntimeError(
                    f"engine paused in state {conn.state.name} with no reply pending"
                )
            if type(event) is ConnectionClosed:
                await self._flush()
                if self.trace:
                    self._trace_event(event)
                return
            if self.trace:
                self._trace_event(event)
            await _handle_event(self, event)

    async def _greet(self) -> None:
        """Send the greeting, after ``greeting_delay`` seconds if one is set.

        The first bytes that arrive during the delay go to the engine before
        the greeting (so it can tell an early talker) and end the delay.
        """
        delay = self.server.greeting_delay
        if delay > 0 and not self.shutdown_requested:
            data: bytes | None = None
            with anyio.move_on_after(delay) as scope:
                self.read_scope = scope
                try:
                    data = await self._receive_raw()
                finally:
                    self.read_scope = None
            if data is not None:
                self.conn.receive_data(data)
        self._send_greeting()

    def _send_greeting(self) -> None:
        self.conn.send_reply(220, f"{self.server.hostname} {self.server.ident}")

    async def _receive_more(self) -> bool:
        """Flush replies and feed the engine more bytes; False when the session ended."""
        conn = self.conn
        while True:
            if self.shutdown_requested and not self.shutdown_sent:
                if self.awaiting_proxy:
                    # No SMTP session exists before the PROXY header, and the
                    # engine's shutdown() waits for the greeting then.
                    raise _ConnectionEnded
                self.shutdown_sent = True
                conn.shutdown()
            await self._flush()
            if conn.closed:
                await self._linger()
                return False
            if self.shutdown_requested and not self.shutdown_sent:
                continue
            data = await self._read()
            if data is not None:
                conn.receive_data(data)
                return True

    async def _read(self) -> bytes | None:
        """Read once; ``None`` if the read timed out or a shutdown interrupted it."""
        timeout = (
            self.server.proxy_protocol_timeout
            if self.awaiting_proxy
            else self.server.timeout
        )
        if self.direct_socket is not None and self.stream is self.raw_stream:
            # Every few reads go through the scheduler anyway, so that a client
            # that keeps the socket full cannot starve the other connections.
            if self.direct_reads < MAX_DIRECT_READS:
                data = self._receive_direct(self.direct_socket)
                if data is not None:
                    self.direct_reads += 1
                    return data
            self.direct_reads = 0
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        body_deadline = self.body_deadline
        if body_deadline is not None and body_deadline < deadline:
            deadline = body_deadline

        with anyio.CancelScope(deadline=deadline) as scope:
            self.read_scope = scope
            try:
                return await self._receive_raw()
            finally:
                self.read_scope = None

        if self.shutdown_requested and not self.shutdown_sent:
            return None
        if body_deadline is not None and deadline == body_deadline:
            server_logger.info(
                "message from %s timed out: not complete within %s s",
                self.peer_text,
                self.server.data_timeout,
            )
        else:
            server_logger.info(
                "connection from %s timed out after %s s of silence",
                self.peer_text,
                timeout,
            )
        self.timed_out = True
        self.conn.timeout()
        return None

    def _receive_direct(self, sock: socket.socket) -> bytes | None:
        """Read what the socket has without waiting; ``None`` if nothing is there."""
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as error:
            server_logger.info(
                "connection from %s broke: %s", self.peer_text, _describe_error(error)
            )
            raise _ConnectionEnded from error
        if not data:
            self.peer_closed = True
        return data

    async def _receive_raw(self) -> bytes:
        """Receive once; ``b""`` when the client closed its side."""
        try:
            return await self.stream.receive(READ_SIZE)
        except anyio.EndOfStream:
            self.peer_closed = True
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
            server_logger.info(
                "connection from %s broke: %s",
                self.peer_text,
                _describe_error(error),
            )
            raise _ConnectionEnded from error
        except ssl.SSLError as error:
            tls_logger.info("TLS error from %s: %s", self.peer_text, error)
            raise _ConnectionEnded from error

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if not data:
            return
        if self.trace:
            text = data.decode("utf-8", "backslashreplace").rstrip("\r\n")
            wire_logger.debug("%s S: %s", self.peer_text, text.replace("\r\n", "\n"))
        if self.direct_socket is not None and self.stream is self.raw_stream:
            try:
                sent = self.direct_socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                server_logger.info(
                    "connection from %s broke: %s",
                    self.peer_text,
                    _describe_error(error),
                )
                raise _ConnectionEnded from error
            if sent == len(data):
                return
            data = data[sent:]
        timeout = self.server.timeout
        with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
                server_logger.info(
                    "connection from %s broke: %s",
                    self.peer_text,
                    _describe_error(error),
                )
                raise _ConnectionEnded from error
            except ssl.SSLError as error:
                tls_logger.info("TLS error from %s: %s", self.peer_text, error)
                raise _ConnectionEnded from error
        if scope.cancelled_caught:
            server_logger.info(
                "connection from %s timed out: replies not read for %s s",
                self.peer_text,
                timeout,
            )
            raise _ConnectionEnded

    async def _linger(self) -> None:
        """Read and drop client bytes for a moment before the socket closes."""
        # Only plain TCP can tell the client "no more data" without closing: over
        # TLS a client that waits for the close would make both sides wait.
        if self.peer_closed or self.timed_out or self.stream is not self.raw_stream:
            return
        try:
            await self.raw_stream.send_eof()
            with anyio.move_on_after(LINGER_SECONDS):
                for _ in range(LINGER_MAX_READS):
                    await self.raw_stream.receive(READ_SIZE)
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        ):
            pass

    def _trace_event(self, event: Event) -> None:
        # Never write SASL data to the log: it carries passwords or their equals.
        if isinstance(event, AuthCredentials):
            text = f"AUTH {event.mechanism} ***"
        elif isinstance(event, Auth):
            text = f"AUTH {event.mechanism}"
            if event.initial_response is not None:
                text += " ***"
        elif isinstance(event, AuthResponse):
            text = "***"
        elif isinstance(event, DataChunk):
            text = f"<{len(event.data)} octets of message content>"
        else:
            text = repr(event)
        wire_logger.debug("%s C: %s", self.peer_text, text)

    # ------------------------------------------------------------------ TLS

    async def _start_tls(self, context: ssl.SSLContext) -> bool:
        try:
            with anyio.fail_after(self.server.tls_handshake_timeout):
                stream = await TLSStream.wrap(
                    self.stream,
                    server_side=True,
                    ssl_context=context,
                    standard_compatible=False,
                )
        except TimeoutError:
            tls_logger.info(
                "TLS handshake with %s timed out after %s s",
                self.peer_text,
                self.server.tls_handshake_timeout,
            )
            return False
        except (
            OSError,  # ssl.SSLError is an OSError
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
        ) as error:
            tls_logger.info(
                "TLS handshake with %s failed: %s",
                self.peer_text,
                _describe_error(error),
            )
            return False
        self.stream = stream
        self.tls_info = _tls_info(stream)
        return True

    async def _on_starttls(self, event: StartTLS) -> None:
        context = self.server.tls_context
        conn = self.conn
        if context is None:  # the engine offers STARTTLS only with a context
            raise RuntimeError("StartTLS event without a TLS context")
        conn.accept()
        await self._flush()
        if not await self._start_tls(context):
            raise _ConnectionEnded
        conn.tls_established()
        session = conn.session
        session.ssl = self.tls_info

        hook = self.hooks.get("STARTTLS")
        if hook is None:
            return
        try:
            result = await self._call(hook, self.server, session, conn.envelope)
        except Exception:
            server_logger.exception(
                "handle_STARTTLS failed on the connection from %s", self.peer_text
            )
            result = False
        if result is not MISSING and not result:
            conn.refuse_commands(554, REFUSED_INSECURE_TEXT)

    # ------------------------------------------------------------------ replies

    async def _call_status_hook(self, name: str, *args: object) -> Reply | None:
        """Call ``handle_<name>`` and return its reply (``None`` for the default)."""
        hook = self.hooks.hooks[name]
        conn = self.conn
        try:
            status = await self._invoke(
                hook, self.server, conn.session, conn.envelope, *args
            )
            return reply_from_status(status, "handle_" + name)
        except _HOOK_FAILURES as error:
            return await self._hook_failed("handle_" + name, error)

    async def _call(self, func: Callable[..., Any], *args: object) -> Any:
        """Call a hook and await its result if it is awaitable."""
        return await call_maybe_async(func, *args)

    async def _invoke(self, func: Callable[..., Any], *args: object) -> Any:
        """Call a hook; any exception it raises comes out as :class:`_HookFailed`."""
        try:
            return await self._call(func, *args)
        except (AuthExchangeAborted, _ConnectionEnded):
            raise
        except Exception as error:
            raise _HookFailed(error) from error

    async def _hook_failed(self, where: str, error: Exception) -> Reply:
        """Log a hook failure and return the reply for it."""
        if isinstance(error, _HookFailed):
            error = error.error
        server_logger.error(
            "%s failed on the connection from %s",
            where,
            self.peer_text,
            exc_info=error,
        )
        handle_exception = self.hooks.get("exception")
        if handle_exception is not None:
            try:
                status = await self._call(handle_exception, error)
                reply = reply_from_status(status, "handle_exception")
            except Exception:
                server_logger.exception(
                    "handle_exception failed on the connection from %s",
                    self.peer_text,
                )
            else:
                if reply is not None:
                    return reply
        return self.server.error_reply

    async def _send_reply(self, reply: Reply | None, where: str) -> None:
        """Send ``reply`` for the pending command, or the default reply for ``None``."""
        conn = self.conn
        if reply is None:
            conn.accept()
            return
        try:
            conn.send_reply_object(reply)
            return
        except LocalProtocolError as error:
            fallback = await self._hook_failed(where, error)
        try:
            conn.send_reply_object(fallback)
        except LocalProtocolError:
            try:
                conn.send_reply_object(INTERNAL_ERROR)
            except LocalProtocolError:
                conn.accept()

    async def _reply_with_hook(self, name: str, *args: object) -> None:
        if name not in self.hooks.hooks:
            self.conn.accept()
            return
        reply = await self._call_status_hook(name, *args)
        await self._send_reply(reply, "handle_" + name)

    # ------------------------------------------------------------------ events

    async def _on_proxy_header(self, event: ProxyHeader) -> None:
        self.awaiting_proxy = False
        conn = self.conn
        session = conn.session
        if session.proxy_data is None:
            session.proxy_data = event
        hook = self.hooks.get("PROXY")
        if hook is None:
            server_logger.info(
                "PROXY header from %s rejected: the handler has no handle_PROXY",
                self.peer_text,
            )
            raise _ConnectionEnded
        try:
            accepted = await self._invoke(
                hook, self.server, session, conn.envelope, session.proxy_data
            )
        except _HOOK_FAILURES as error:
            await self._hook_failed("handle_PROXY", error)
            accepted = False
        if not accepted:
            server_logger.info("PROXY header from %s rejected", self.peer_text)
            raise _ConnectionEnded
        await self._greet()

    async def _on_helo(self, event: Helo) -> None:
        await self._reply_with_hook("HELO", event.hostname)

    async def _on_ehlo(self, event: Ehlo) -> None:
        hook = self.hooks.get("EHLO")
        if hook is None:
            self.conn.accept()
            return
        if self.hooks.ehlo_gets_responses:
            reply = await self._call_ehlo_with_responses(hook, event)
        else:
            reply = await self._call_status_hook("EHLO", event.hostname)
            if reply is not None and reply.code == 250:
                # The old four-argument form returns only the last line: the
                # keyword lines come first, without repeating one the hook sent.
                extensions = [x for x in event.extensions if x not in reply.lines]
                lines = (self.server.hostname, *extensions, *reply.lines)
                reply = Reply(250, None, lines)
        await self._send_reply(reply, "handle_EHLO")

    async def _call_ehlo_with_responses(
        self, hook: Callable[..., Any], event: Ehlo
    ) -> Reply | None:
        hostname = self.server.hostname
        extensions = event.extensions
        if extensions:
            responses = [f"250-{hostname}"]
            responses.extend(f"250-{x}" for x in extensions[:-1])
            responses.append(f"250 {extensions[-1]}")
        else:
            responses = [f"250 {hostname}"]
        conn = self.conn
        try:
            result = await self._invoke(
                hook,
                self.server,
                conn.session,
                conn.envelope,
                event.hostname,
                responses,
            )
            if result is None or result is MISSING:
                return None
            if not isinstance(result, (list, tuple)) or not all(
                isinstance(line, str) for line in result
            ):
                raise TypeError(
                    f"handle_EHLO returned {result!r:.80}; expected a list of "
                    f"reply lines"
                )
            return parse_status("\n".join(result))
        except _HOOK_FAILURES as error:
            return await self._hook_failed("handle_EHLO", error)

    async def _on_mail(self, event: MailFrom) -> None:
        options = [
            key if value is None else f"{key}={value}" for key, value in event.params
        ]
        await self._reply_with_hook("MAIL", event.address, options)

    async def _on_rcpt(self, event: RcptTo) -> None:
        options = [
            key if value is None else f"{key}={value}" for key, value in event.params
        ]
        await self._reply_with_hook("RCPT", event.address, options)

    async def _on_data(self, event: Data) -> None:
        self.conn.accept()
        self._begin_body()

    async def _on_bdat(self, event: Bdat) -> None:
        if self.body_envelope is None:
            self._begin_body()

    def _begin_body(self) -> None:
        self.body_envelope = self.conn.envelope
        self.body_session = self.conn.session
        self.chunks = []
        self.chunk_error = None
        data_timeout = self.server.data_timeout
        if data_timeout is not None:
            self.body_deadline = anyio.current_time() + data_timeout

    def _end_body(self) -> None:
        self.body_envelope = None
        self.body_session = None
        self.chunks = []
        self.chunk_error = None
        self.body_deadline = None

    async def _on_data_chunk(self, event: DataChunk) -> None:
        if self.body_envelope is None:
            self._begin_body()
        if not self.server._streaming:
            if self.server._collect_body:
                self.chunks.append(event.data)
            return
        if self.chunk_error is not None:
            return
        conn = self.conn
        try:
            await self._invoke(
                self.hooks.hooks["DATA_CHUNK"],
                self.server,
                conn.session,
                conn.envelope,
                event.data,
            )
        except _HOOK_FAILURES as error:
            self.chunk_error = error

    async def _on_data_complete(self, event: DataComplete) -> None:
        conn = self.conn
        envelope = conn.envelope
        chunk_error = self.chunk_error
        if self.server._collect_body:
            content = b"".join(self.chunks)
            envelope.original_content = content
            if self.server.decode_data:
                envelope.content = content.decode("utf-8", "surrogateescape")
            else:
                envelope.content = content

        if chunk_error is not None:
            replies: list[Reply | None] | None = [
                await self._hook_failed("handle_DATA_CHUNK", chunk_error)
            ]
            await self._abort_body()
        else:
            self._end_body()
            replies = await self._data_replies()

        recipients = len(envelope.rcpt_tos)
        accepted = 0
        if replies is None:
            conn.accept()
            accepted = recipients if self.server.lmtp else 1
        else:
            # LMTP wants one reply per accepted recipient: a single reply serves
            # them all, a list gives one each in RCPT order.
            # A list shorter than the recipients gets 451 for the rest.
            index = 0
            while True:
                if len(replies) == 1:
                    reply = replies[0]
                elif index < len(replies):
                    reply = replies[index]
                else:
                    reply = self.server.error_reply
                if reply is None or 200 <= reply.code < 300:
                    accepted += 1
                await self._send_reply(reply, "handle_DATA")
                index += 1
                if conn.pending is not event:
                    break
            if len(replies) > 1 and index != len(replies):
                server_logger.error(
                    "handle_DATA returned %d replies for %d recipients on the "
                    "connection from %s",
                    len(replies),
                    index,
                    self.peer_text,
                )

        if accepted:
            server_logger.info(
                "message from %s accepted: %d octets, recipients: %d",
                self.peer_text,
                event.size,
                accepted if self.server.lmtp else recipients,
            )

    async def _data_replies(self) -> list[Reply | None] | None:
        hook = self.hooks.get("DATA")
        if hook is None:
            return None
        conn = self.conn
        try:
            status = await self._invoke(hook, self.server, conn.session, conn.envelope)
            if isinstance(status, (list, tuple)):
                if not status or not all(isinstance(s, str) for s in status):
                    raise TypeError(
                        f"handle_DATA returned {status!r:.80}; a list must hold "
                        f"one status string per recipient"
                    )
                if not self.server.lmtp and len(status) != 1:
                    raise TypeError(
                        f"handle_DATA returned {len(status)} statuses; an SMTP "
                        "message gets one reply (lists are for LMTP)"
                    )
                return [reply_from_status(s, "handle_DATA") for s in status]
            reply = reply_from_status(status, "handle_DATA")
            return None if reply is None else [reply]
        except _HOOK_FAILURES as error:
            return [await self._hook_failed("handle_DATA", error)]

    async def _on_data_rejected(self, event: DataRejected) -> None:
        server_logger.info(
            "message from %s rejected: %d %s", self.peer_text, event.code, event.text
        )
        await self._abort_body()

    async def _abort_body(self) -> None:
        """End the body without handle_DATA; tell a streaming handler."""
        envelope = self.body_envelope
        session = self.body_session
        self._end_body()
        hook = self.hooks.get("DATA_ABORT")
        if hook is None or envelope is None:
            return
        try:
            await self._call(hook, self.server, session, envelope)
        except Exception:
            server_logger.exception(
                "handle_DATA_ABORT failed on the connection from %s", self.peer_text
            )

    async def _on_rset(self, event: Rset) -> None:
        await self._reply_with_hook("RSET")

    async def _on_noop(self, event: Noop) -> None:
        await self._reply_with_hook("NOOP", event.argument)

    async def _on_vrfy(self, event: Vrfy) -> None:
        await self._reply_with_hook("VRFY", event.argument)

    async def _on_help(self, event: Help) -> None:
        self.conn.accept()

    async def _on_quit(self, event: Quit) -> None:
        await self._reply_with_hook("QUIT")

    async def _on_unknown(self, event: UnknownCommand) -> None:
        method = self.hooks.smtp_commands.get(event.verb.upper())
        if method is None:
            self.conn.accept()
            return
        conn = self.conn
        where = f"smtp_{event.verb.upper()}"
        try:
            status = await self._invoke(
                method, conn.session, conn.envelope, event.argument
            )
            reply = reply_from_status(status, where)
        except _HOOK_FAILURES as error:
            reply = await self._hook_failed(where, error)
        await self._send_reply(reply, where)

    async def _on_notification(self, event: Event) -> None:
        pass

    # ------------------------------------------------------------------ AUTH

    async def _on_auth_credentials(self, event: AuthCredentials) -> None:
        server = self.server
        conn = self.conn
        login = event.username.encode("utf-8", "surrogateescape")
        password = event.password.encode("utf-8", "surrogateescape")
        if server.authenticator is not None:
            try:
                result = await self._invoke(
                    server.authenticator,
                    server,
                    conn.session,
                    conn.envelope,
                    event.mechanism,
                    LoginPassword(login, password),
                )
                if not isinstance(result, AuthResult):
                    raise TypeError(
                        f"authenticator returned {result!r:.80}; expected an AuthResult"
                    )
            except _HOOK_FAILURES as error:
                failure = await self._hook_failed("authenticator", error)
                await self._send_reply(failure, "authenticator")
                return
            await self._finish_auth(result)
            return

        if "AUTH" in self.hooks.hooks:
            args = [event.mechanism, event.username, event.password]
            reply = await self._call_status_hook("AUTH", args)
            if reply is None:  # the default would let the client in
                await self._finish_auth(AuthResult(success=False))
            else:
                await self._send_reply(reply, "handle_AUTH")
            return
        await self._finish_auth(AuthResult(success=False))

    async def _on_auth(self, event: Auth) -> None:
        entry = self.hooks.auth_methods.get(event.mechanism)
        if entry is None:
            raise RuntimeError(f"no auth_{event.mechanism} method for the Auth event")
        method, on_handler = entry
        conn = self.conn
        exchange = AuthExchange(self, event.mechanism, event.initial_response)
        where = f"auth_{event.mechanism}"
        try:
            if on_handler:
                result = await self._invoke(
                    method, self.server, conn.session, conn.envelope, exchange
                )
            else:
                result = await self._invoke(
                    method, conn.session, conn.envelope, exchange
                )
            if not isinstance(result, AuthResult):
                raise TypeError(
                    f"{where} returned {result!r:.80}; expected an AuthResult"
                )
        except AuthExchangeAborted:
            return
        except _HOOK_FAILURES as error:
            if conn.pending is None:  # the exchange already ended
                return
            reply = await self._hook_failed(where, error)
            await self._send_reply(reply, where)
            return
        if conn.pending is not None:
            await self._finish_auth(result)

    async def _finish_auth(self, result: AuthResult) -> None:
        # The engine's default reply differs between mechanisms (235 for the
        # ones it runs, 535 for application-run ones), so both are explicit here.
        conn = self.conn
        reply: Reply | None
        try:
            reply = reply_from_status(result.message, "AuthResult.message")
        except (TypeError, ValueError) as error:
            reply = await self._hook_failed("AuthResult.message", error)
        else:
            if result.success:
                conn.session.auth_data = result.auth_data
            if reply is None:
                if result.success:
                    conn.send_reply(235, "Authentication successful")
                else:
                    conn.send_reply(535, "Authentication credentials invalid")
                return
        await self._send_reply(reply, "AuthResult.message")

    async def run_sasl_challenge(self, data: bytes) -> bytes:
        """Send a challenge and drive the engine until the client's response."""
        conn = self.conn
        conn.send_challenge(data)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if not await self._receive_more():
                    raise AuthExchangeAborted("the connection closed")
                continue
            if event is PAUSED:
                raise RuntimeError("engine paused during a SASL exchange")
            if self.trace:
                self._trace_event(event)
            if isinstance(event, AuthResponse):
                return event.data
            if isinstance(event, AuthAborted):
                raise AuthExchangeAborted("the client cancelled the exchange")
            if isinstance(event, ConnectionClosed):
                raise AuthExchangeAborted("the connection closed")
            raise RuntimeError(f"unexpected {event!r} during a SASL exchange")


_DISPATCH: Final[
    dict[type[Event], Callable[[_ConnectionHandler, Any], Awaitable[None]]]
] = {
    ProxyHeader: _ConnectionHandler._on_proxy_header,
    Helo: _ConnectionHandler._on_helo,
    Ehlo: _ConnectionHandler._on_ehlo,
    MailFrom: _ConnectionHandler._on_mail,
    RcptTo: _ConnectionHandler._on_rcpt,
    Data: _ConnectionHandler._on_data,
    Bdat: _ConnectionHandler._on_bdat,
    DataChunk: _ConnectionHandler._on_data_chunk,
    DataComplete: _ConnectionHandler._on_data_complete,
    DataRejected: _ConnectionHandler._on_data_rejected,
    Rset: _ConnectionHandler._on_rset,
    Noop: _ConnectionHandler._on_noop,
    Vrfy: _ConnectionHandler._on_vrfy,
    Help: _ConnectionHandler._on_help,
    Quit: _ConnectionHandler._on_quit,
    StartTLS: _ConnectionHandler._on_starttls,
    AuthCredentials: _ConnectionHandler._on_auth_credentials,
    Auth: _ConnectionHandler._on_auth,
    AuthAborted: _ConnectionHandler._on_notification,
    UnknownCommand: _ConnectionHandler._on_unknown,
}


async def _handle_event(handler: _ConnectionHandler, event: Event) -> None:
    """Run the handler method for ``event``; both connection paths use it."""
    await _DISPATCH[type(event)](handler, event)
    body_envelope = handler.body_envelope
    if body_envelope is not None and handler.conn.envelope is not body_envelope:
        # RSET, a new EHLO or STARTTLS ended the transaction mid-body.
        await handler._abort_body()


# Event types whose handler method only sends the default reply when the named
# hook is missing (None: always).
_PLAIN_WITHOUT_HOOK: Final[dict[type[Event], str | None]] = {
    Helo: "HELO",
    Ehlo: "EHLO",
    MailFrom: "MAIL",
    RcptTo: "RCPT",
    Rset: "RSET",
    Noop: "NOOP",
    Vrfy: "VRFY",
    Help: None,
    Quit: "QUIT",
}
