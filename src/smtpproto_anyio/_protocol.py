"""The asyncio fast path: one :class:`asyncio.Protocol` per connection.

On asyncio, a connection costs no task while it waits for the client. Bytes
arrive in ``data_received``, go to the engine, and every event is handled
inline: sync hooks run right there, and all replies of one read leave in one
``transport.write``. Only an async hook (or a TLS handshake, or a SASL
exchange) moves the rest of that event's handling into a task, and reading
pauses until the task is done, so the engine receives the same calls in the
same order as on the anyio stream path.

Timeouts cost no timer per connection: a read only stores the time, and one
periodic sweep per server compares every connection's deadline with the clock.
A timeout therefore fires up to one sweep interval late (at most a second, and
a quarter of the shortest configured timeout).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, cast

from smtpproto import (
    NEED_DATA,
    PAUSED,
    Bdat,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    Event,
)

from ._server import (
    LINGER_MAX_READS,
    LINGER_SECONDS,
    REJECTION_SEND_TIMEOUT,
    _ConnectionEnded,
    _ConnectionHandler,
    _describe_error,
    _handle_event,
    server_logger,
    tls_logger,
    wire_logger,
)

if TYPE_CHECKING:
    from ._server import SMTPServer

__all__ = ["ProtocolConnection"]

# Message events that _discard_body_event handles when no hook wants the message.
_BODY_EVENTS: Final = frozenset({Data, Bdat, DataChunk, DataComplete})

# Bounds of the seconds between two deadline sweeps.
SWEEP_MIN_INTERVAL: Final = 0.05
SWEEP_MAX_INTERVAL: Final = 1.0


class _SwitchToTask:
    """The value an inline coroutine yields to ask for a task."""


_SWITCH: Final = _SwitchToTask()


@types.coroutine
def _switch_to_task() -> Generator[Any, Any, None]:
    """Suspend an inline coroutine; the driver then resumes it in a new task."""
    yield _SWITCH


@types.coroutine
def _resume(
    coroutine: Coroutine[Any, Any, Any], yielded: object
) -> Generator[Any, Any, Any]:
    """Run the rest of ``coroutine``, which ``yielded`` outside of any task.

    The caller awaits this inside a task. After a switch request the coroutine
    resumes at once; anything else the coroutine yielded (a future it waits
    for) is passed on to the task first.
    """
    value: Any = None
    error: BaseException | None = None
    if yielded is not _SWITCH:
        try:
            value = yield yielded
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine
            error = exc
    while True:
        try:
            if error is None:
                yielded = coroutine.send(value)
            else:
                yielded = coroutine.throw(error)
        except StopIteration as stop:
            return stop.value
        value = None
        error = None
        try:
            value = yield yielded
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine
            error = exc


class ProtocolConnection(_ConnectionHandler, asyncio.Protocol):
    """One client connection driven by asyncio callbacks."""

    __slots__ = (
        "greeting_timer",
        "inline",
        "last_activity",
        "linger_reads",
        "lingering",
        "loop",
        "read_waiter",
        "reading",
        "stashed",
        "task",
        "timer",
        "transport",
        "writing_paused",
    )

    def __init__(self, server: SMTPServer, implicit_tls: ssl.SSLContext | None) -> None:
        self._setup(server, implicit_tls)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.greeting_timer: asyncio.TimerHandle | None = None
        self.read_waiter: asyncio.Future[bool | None] | None = None
        self.inline = False
        self.reading = True
        self.writing_paused = False
        self.lingering = False
        self.linger_reads = 0
        self.last_activity = 0.0
        # Bytes that arrived while a task ran; they reach the engine when it ends.
        self.stashed = b""

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        rejection = server._admit(peer)
        if rejection is not None:
            # No engine exists for this connection, so nothing may be read.
            self.transport = None
            transport.pause_reading()
            transport.write(rejection)
            transport.close()
            # close() waits for the write buffer; a client that does not read
            # must not hold the socket.
            self.loop.call_later(REJECTION_SEND_TIMEOUT, transport.abort)
            return
        self._connect(peer)
        self.last_activity = self.loop.time()
        server._connections.add(self)
        if server_logger.isEnabledFor(logging.INFO):
            server_logger.info("connection from %s opened", self.peer_text)
        self._arm_timer()
        if self.implicit_tls is not None:
            self._pause_reading()
            self.task = self.loop.create_task(
                self._implicit_tls_start(self.implicit_tls)
            )
        else:
            self.conn.session.peer = peer
            if not self.awaiting_proxy:
                self._greet_now_or_later()
        if server._shutting_down:  # accepted just before the listener closed
            self.request_shutdown()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.lingering:
            self.linger_reads += 1
            if self.linger_reads >= LINGER_MAX_READS:
                self._cancel_timer()
                self._close_due()
            return
        conn = self.conn
        if conn.closed:
            return
        if self.task is not None:
            waiter = self.read_waiter
            if waiter is None:
                # A task runs (a TLS handshake, or a hook). The TLS layer can
                # deliver the first encrypted command before start_tls()
                # returns, when the engine cannot take it yet.
                self.stashed += data
                return
            conn.receive_data(data)
            self.read_waiter = None
            self._pause_reading()
            if not waiter.done():
                waiter.set_result(True)
            return
        conn.receive_data(data)
        if self.greeting_timer is not None:
            # Bytes before the greeting end the greeting delay; the engine
            # has already noted them as early talk.
            self.greeting_timer.cancel()
            self.greeting_timer = None
            self._send_greeting()
        elif conn.awaiting_greeting and not self.awaiting_proxy:
            return  # implicit TLS still starting, or no greeting yet
        self._process()

    def eof_received(self) -> bool:
        self.peer_closed = True
        if self.lingering:
            self._cancel_timer()
            self._close_due()
            return False
        self.data_received(b"")
        # Keep the socket open to send the last replies; an SSL transport
        # cannot stay half-open and warns when asked to.
        return self.tls_info is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.lingering = False
        for handle in (self.timer, self.greeting_timer):
            if handle is not None:
                handle.cancel()
        self.timer = self.greeting_timer = None
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)
        self.read_waiter = None
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if exc is not None and server_logger.isEnabledFor(logging.INFO):
            server_logger.info(
                "connection from %s broke: %s", self.peer_text, _describe_error(exc)
            )
        if self.body_envelope is not None:
            self.loop.create_task(self._abort_then_finish())
        else:
            self._finish()

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its commands
        # until it does, and time it out like a silent client.
        self.writing_paused = True
        self.last_activity = self.loop.time()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.last_activity = self.loop.time()
        if self.task is None or self.read_waiter is not None:
            self._resume_reading()

    # ------------------------------------------------------------------ driving the engine

    def _process(self) -> None:
        """Handle every event the engine has, then write the replies at once."""
        conn = self.conn
        plain = self.server._plain_events
        discard_body = self.server._discard_body
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    if self.shutdown_requested and not self.shutdown_sent:
                        if self.awaiting_proxy:
                            raise _ConnectionEnded
                        self.shutdown_sent = True
                        conn.shutdown()
                        continue
                    self._write_out()
                    if conn.closed:
                        self._end_session()
                    return
                if event is PAUSED:
                    if conn.awaiting_greeting:  # the greeting delay runs
                        return
                    raise RuntimeError(
                        f"engine paused in state {conn.state.name} with no reply pending"
                    )
                if type(event) is ConnectionClosed:
                    self._write_out()
                    if self.trace:
                        self._trace_event(event)
                    self._end_session()
                    return
                if self.trace:
                    self._trace_event(event)
                event_type = type(event)
                if event_type in plain and self.body_envelope is None:
                    conn.accept()
                    continue
                if event_type in _BODY_EVENTS and discard_body:
                    self._discard_body_event(event)
                    continue
                if not self._run_inline(_handle_event(self, event)):
                    return
        except _ConnectionEnded:
            self._abort()
        except Exception:  # noqa: BLE001 - logged, and only this connection ends
            server_logger.exception(
                "unexpected error on the connection from %s", self.peer_text
            )
            self._abort()

    def _discard_body_event(self, event: Event) -> None:
        """Handle a message event when no hook wants the message (as _on_* do)."""
        if type(event) is DataChunk:
            if self.body_envelope is None:
                self._begin_body()
            return
        if type(event) is DataComplete:
            assert isinstance(event, DataComplete)
            envelope = self.conn.envelope
            self._end_body()
            self.conn.accept()
            if server_logger.isEnabledFor(logging.INFO):
                recipients = len(envelope.rcpt_tos)
                server_logger.info(
                    "message from %s accepted: %d octets, recipients: %d",
                    self.peer_text,
                    event.size,
                    recipients,
                )
            return
        if type(event) is Data:
            self.conn.accept()
            self._begin_body()
        elif self.body_envelope is None:  # Bdat
            self._begin_body()

    def _run_inline(self, coroutine: Coroutine[Any, Any, None]) -> bool:
        """Run ``coroutine`` now; return False if it had to continue in a task."""
        self.inline = True
        try:
            yielded = coroutine.send(None)
        except StopIteration:
            return True
        finally:
            self.inline = False
        self._pause_reading()
        self.task = self.loop.create_task(self._continue(coroutine, yielded))
        return False

    async def _continue(
        self, coroutine: Coroutine[Any, Any, None], yielded: object
    ) -> None:
        try:
            await _resume(coroutine, yielded)
        except _ConnectionEnded:
            self.task = None
            self._abort()
            return
        except asyncio.CancelledError:
            self.task = None
            self._abort()
            raise
        except Exception:  # noqa: BLE001 - logged, and only this connection ends
            self.task = None
            server_logger.exception(
                "unexpected error on the connection from %s", self.peer_text
            )
            self._abort()
            return
        self.task = None
        if self.transport is None:
            return
        self._feed_stashed()
        self.last_activity = self.loop.time()
        if not self.writing_paused:
            self._resume_reading()
        self._process()

    def _feed_stashed(self) -> None:
        if self.stashed:
            data = self.stashed
            self.stashed = b""
            self.conn.receive_data(data)

    async def _implicit_tls_start(self, context: ssl.SSLContext) -> None:
        try:
            started = await self._start_tls(context)
        finally:
            self.task = None
        if not started:
            self._abort()
            return
        self.conn.session.peer = self.peer
        self.conn.session.ssl = self.tls_info
        self._resume_reading()
        if not self.awaiting_proxy:
            self._greet_now_or_later()
        if self.stashed and self.greeting_timer is not None:
            # Early talk during the greeting delay ends it, as in data_received.
            self.greeting_timer.cancel()
            self.greeting_timer = None
            self._feed_stashed()
            self._send_greeting()
        self._feed_stashed()
        self._process()

    # ------------------------------------------------------------------ I/O for the event handlers

    async def _call(self, func: Callable[..., Any], *args: object) -> Any:
        result = func(*args)
        if inspect.isawaitable(result):
            if self.inline:
                await _switch_to_task()
            result = await result
        return result

    async def _flush(self) -> None:
        self._write_out()

    def _write_out(self) -> None:
        data = self.conn.data_to_send()
        if not data or self.transport is None:
            return
        if self.trace:
            text = data.decode("utf-8", "backslashreplace").rstrip("\r\n")
            wire_logger.debug("%s S: %s", self.peer_text, text.replace("\r\n", "\n"))
        self.transport.write(data)

    async def _receive_more(self) -> bool:
        if self.inline:
            await _switch_to_task()
        conn = self.conn
        while True:
            if self.shutdown_requested and not self.shutdown_sent:
                self.shutdown_sent = True
                conn.shutdown()
            self._write_out()
            if conn.closed or self.transport is None:
                return False
            if self.stashed:
                self._feed_stashed()
                return True
            waiter: asyncio.Future[bool | None] = self.loop.create_future()
            self.read_waiter = waiter
            self.last_activity = self.loop.time()
            if not self.writing_paused:
                self._resume_reading()
            result = await waiter
            if result is not None:
                return result

    async def _greet(self) -> None:
        self._greet_now_or_later()

    def _greet_now_or_later(self) -> None:
        delay = self.server.greeting_delay
        if delay > 0 and not self.shutdown_requested:
            self.greeting_timer = self.loop.call_later(delay, self._greeting_due)
        else:
            self._send_greeting()
            self._write_out()

    def _greeting_due(self) -> None:
        self.greeting_timer = None
        self._send_greeting()
        self._process()

    async def _start_tls(self, context: ssl.SSLContext) -> bool:
        if self.inline:
            await _switch_to_task()
        transport = self.transport
        if transport is None:
            return False
        self._pause_reading()
        timeout = self.server.tls_handshake_timeout
        try:
            tls_transport = await asyncio.wait_for(
                self.loop.start_tls(transport, self, context, server_side=True),
                timeout,
            )
        except asyncio.TimeoutError:
            tls_logger.info(
                "TLS handshake with %s timed out after %s s", self.peer_text, timeout
            )
            return False
        except (OSError, ConnectionError, RuntimeError) as error:
            tls_logger.info(
                "TLS handshake with %s failed: %s",
                self.peer_text,
                _describe_error(error),
            )
            return False
        if tls_transport is None or self.transport is None:
            return False
        self.transport = tls_transport
        self.reading = True
        ssl_object = tls_transport.get_extra_info("ssl_object")
        self.tls_info = {
            "ssl_object": ssl_object,
            "cipher": tls_transport.get_extra_info("cipher"),
            "version": ssl_object.version() if ssl_object is not None else None,
            "peercert": tls_transport.get_extra_info("peercert"),
            "compression": tls_transport.get_extra_info("compression"),
        }
        return True

    # ------------------------------------------------------------------ reading and closing

    def _pause_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.reading and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()

    def _end_session(self) -> None:
        """Close after the engine closed the session, lingering on plain TCP."""
        transport = self.transport
        if transport is None:
            return
        self._cancel_timer()
        # As on the stream path: reading for a moment before closing keeps
        # unread client bytes from turning the close into a reset that could
        # destroy the last reply. Over TLS there is no half-close to signal.
        lingering = (
            not (self.peer_closed or self.timed_out or self.tls_info is not None)
            and transport.can_write_eof()
        )
        if lingering:
            try:
                transport.write_eof()
            except OSError:  # the client is gone already
                self._abort()
                return
            self.lingering = True
            self._resume_reading()
            self.timer = self.loop.call_later(LINGER_SECONDS, self._close_due)
            return
        transport.close()
        self._abort_later()

    def _close_due(self) -> None:
        """End the linger: close, and abort later if the replies stay unread."""
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        self.lingering = False
        transport.close()
        self._abort_later()

    def _abort_later(self) -> None:
        # close() waits until the last replies are written: a client that does
        # not read them gets its connection aborted instead. connection_lost()
        # cancels this timer, so a normal close leaves no handle behind.
        grace = self.server.timeout
        delay = LINGER_SECONDS if grace is None else max(grace, LINGER_SECONDS)
        self.timer = self.loop.call_later(delay, self._abort)

    def _abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()
            # After a failed start_tls() the old transport reports its loss to
            # the TLS layer, not to this protocol, so the bookkeeping runs now
            # (a later connection_lost() call does nothing).
            self.connection_lost(None)

    def _finish(self) -> None:
        server = self.server
        server._connections.discard(self)
        server._release(self.peer)
        server._connection_closed()
        if server_logger.isEnabledFor(logging.INFO):
            server_logger.info("connection from %s closed", self.peer_text)

    async def _abort_then_finish(self) -> None:
        try:
            await asyncio.wait_for(self._abort_body(), 5)
        except Exception:  # noqa: BLE001 - logged; the connection is gone anyway
            server_logger.exception(
                "ending the message of %s after the connection closed failed",
                self.peer_text,
            )
        finally:
            self._finish()

    def request_shutdown(self) -> None:
        if self.shutdown_requested:
            return
        self.shutdown_requested = True
        if self.transport is None or self.lingering:
            return
        waiter = self.read_waiter
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():
                waiter.set_result(None)
            return
        if self.task is not None:
            return  # _process runs when the task ends and sends 421 then
        if self.greeting_timer is not None:
            self.greeting_timer.cancel()
            self.greeting_timer = None
            self._send_greeting()
        self._process()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self._abort()

    # ------------------------------------------------------------------ timeouts

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm_timer(self) -> None:
        sweeper = self.server._sweeper
        if sweeper is None or sweeper.loop is not self.loop:
            self.server._sweeper = _Sweeper.start(self.server, self.loop)

    def check_deadline(self, now: float) -> None:
        """Time the connection out if its deadline has passed (called by the sweep)."""
        if self.transport is None or self.lingering:
            return
        if self.task is not None and self.read_waiter is None:
            return  # a hook runs: no read is due
        server = self.server
        timeout = (
            server.proxy_protocol_timeout if self.awaiting_proxy else server.timeout
        )
        expired = timeout is not None and now - self.last_activity >= timeout
        body_deadline = self.body_deadline
        if body_deadline is not None and not self.writing_paused:
            expired = expired or now >= body_deadline
        if expired:
            self._time_out()

    def _time_out(self) -> None:
        server = self.server
        if self.writing_paused:
            server_logger.info(
                "connection from %s timed out: replies not read for %s s",
                self.peer_text,
                server.timeout,
            )
            self._abort()
            return
        body_deadline = self.body_deadline
        if body_deadline is not None and body_deadline <= self.loop.time():
            server_logger.info(
                "message from %s timed out: not complete within %s s",
                self.peer_text,
                server.data_timeout,
            )
        else:
            server_logger.info(
                "connection from %s timed out after %s s of silence",
                self.peer_text,
                server.proxy_protocol_timeout
                if self.awaiting_proxy
                else server.timeout,
            )
        self.timed_out = True
        self.conn.timeout()
        waiter = self.read_waiter
        if waiter is not None:
            # A SASL exchange waits for the client: it ends, and the task
            # closes the session.
            self.read_waiter = None
            self._write_out()
            if not waiter.done():
                waiter.set_result(False)
            return
        if self.greeting_timer is not None:
            self.greeting_timer.cancel()
            self.greeting_timer = None
        self._process()


class _Sweeper:
    """The periodic check of every connection's deadline, one per server and loop."""

    __slots__ = ("handle", "interval", "loop", "server")

    def __init__(
        self, server: SMTPServer, loop: asyncio.AbstractEventLoop, interval: float
    ) -> None:
        self.server = server
        self.loop = loop
        self.interval = interval
        self.handle = loop.call_later(interval, self._sweep)

    @classmethod
    def start(
        cls, server: SMTPServer, loop: asyncio.AbstractEventLoop
    ) -> _Sweeper | None:
        """Start sweeping; return None if the server has no timeouts at all."""
        limits = [
            t
            for t in (
                server.timeout,
                server.data_timeout,
                server.proxy_protocol_timeout,
            )
            if t is not None
        ]
        if not limits:
            return None
        interval = min(max(min(limits) / 4, SWEEP_MIN_INTERVAL), SWEEP_MAX_INTERVAL)
        return cls(server, loop, interval)

    def _sweep(self) -> None:
        server = self.server
        if not server._connections and not server._asyncio_servers:
            server._sweeper = None  # serving ended; the next connection restarts it
            return
        now = self.loop.time()
        for connection in list(server._connections):
            if isinstance(connection, ProtocolConnection):
                connection.check_deadline(now)
        self.handle = self.loop.call_later(self.interval, self._sweep)
