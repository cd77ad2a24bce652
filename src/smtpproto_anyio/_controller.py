"""Controller: run an SMTPServer in a background thread, for tests and scripts."""

from __future__ import annotations

import ssl
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._server import SMTPServer

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Controller"]


class Controller:
    """Serve a handler from an event loop in a background thread.

    ``start()`` returns once the server listens, or raises the error that stopped
    it, for example :class:`OSError` when the port is taken. ``stop()`` shuts the
    server down gracefully and joins the thread. The controller is also a context
    manager.

    :param handler: the handler object, as for :class:`SMTPServer`
    :param hostname: address to listen on (not the name in the greeting: that
        is ``server_hostname``)
    :param port: TCP port; 0 lets the system choose, read it from :attr:`port`
    :param backend: ``"asyncio"`` or ``"trio"``
    :param backend_options: passed to :func:`anyio.run`, e.g.
        ``{"use_uvloop": True}``
    :param server_class: :class:`SMTPServer` or a subclass
    :param ssl_context: server-side context for implicit TLS (SMTPS)
    :param server_hostname: the server's name in the greeting and EHLO reply
    :param server_kwargs: more :class:`SMTPServer` keyword arguments. As in
        aiosmtpd's Controller, ``enable_SMTPUTF8`` defaults to True here.
    """

    def __init__(
        self,
        handler: object,
        hostname: str = "127.0.0.1",
        port: int = 0,
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
        server_class: type[SMTPServer] = SMTPServer,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        **server_kwargs: Any,
    ) -> None:
        self.handler = handler
        self.hostname = hostname
        self._requested_port = port
        self.backend = backend
        self.backend_options = backend_options
        self.ssl_context = ssl_context
        server_kwargs.setdefault("enable_SMTPUTF8", True)
        self.server = server_class(handler, hostname=server_hostname, **server_kwargs)
        self._portal_manager: AbstractContextManager[BlockingPortal] | None = None
        self._serving: AbstractContextManager[SMTPServer] | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (the chosen one when ``port=0`` was given).

        :raises RuntimeError: before ``start()``
        """
        if self._serving is None:
            raise RuntimeError("the controller is not running; call start() first")
        return self.server.port

    def start(self) -> None:
        """Start the thread and wait until the server listens.

        :raises RuntimeError: if the controller is already running
        :raises OSError: if the address cannot be bound
        """
        if self._portal_manager is not None:
            raise RuntimeError("the controller is already running")
        portal_manager = start_blocking_portal(self.backend, self.backend_options)
        portal = portal_manager.__enter__()
        serving = portal.wrap_async_context_manager(
            self.server.serving(
                self.hostname, self._requested_port, ssl_context=self.ssl_context
            )
        )
        try:
            serving.__enter__()
        except BaseException as error:
            portal_manager.__exit__(type(error), error, error.__traceback__)
            raise
        self._portal_manager = portal_manager
        self._serving = serving

    def stop(self) -> None:
        """Shut the server down gracefully and join the thread; no-op if stopped."""
        serving, self._serving = self._serving, None
        portal_manager, self._portal_manager = self._portal_manager, None
        try:
            if serving is not None:
                serving.__exit__(None, None, None)
        finally:
            if portal_manager is not None:
                portal_manager.__exit__(None, None, None)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
