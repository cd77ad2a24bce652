"""pytest plugin of smtpproto: fixtures that run a real SMTP server for tests.

pytest loads this module through the ``pytest11`` entry point once
smtpproto-server is installed. It provides two fixtures:

- ``smtp_server``: a started :class:`SMTPTestServer`, configured by the
  ``@pytest.mark.smtp_server(...)`` marker or by indirect parametrization;
- ``smtp_server_factory``: a function that starts more servers with any options.

Each server is a :class:`~smtpproto_anyio.Controller` on a free loopback port. It
keeps every accepted message as a :class:`ReceivedMessage` and stops when the test
ends.
"""

from __future__ import annotations

import email
import email.policy
import hmac
import importlib.util
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from smtpproto import Envelope, Reply, Session

from ._controller import Controller
from ._hooks import AuthResult, LoginPassword, call_maybe_async, reply_from_status

__all__ = [
    "ReceivedMessage",
    "SMTPTestServer",
    "smtp_server",
    "smtp_server_factory",
]

MARKER_HELP = (
    "smtp_server(**options): options of the smtp_server fixture: backend "
    "('asyncio' or 'trio'), tls, implicit_tls, ssl_context, auth_user=(user, "
    "password), lmtp, host, handler, and any SMTPServer keyword argument"
)

# The name in the greeting and the EHLO reply unless the test sets ``hostname``.
# A fixed name keeps replies predictable and avoids socket.getfqdn(), which can
# wait for DNS.
DEFAULT_HOSTNAME = "localhost"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


@dataclass(frozen=True)
class ReceivedMessage:
    """One message that the test server accepted, with its envelope.

    :ivar message: the content parsed with :data:`email.policy.default`; line
        endings stay CRLF as received
    :ivar content: the content exactly as received (dot-unstuffed)
    :ivar mail_from: the reverse-path, ``"<>"`` for the null reverse-path
    :ivar rcpt_tos: the accepted recipients; in LMTP mode only those whose
        reply to the message was 2xx
    :ivar mail_options: MAIL FROM parameters as ``KEYWORD`` or ``KEYWORD=value``
    :ivar rcpt_options: RCPT TO parameters of all recipients, in order
    :ivar peer: the client's address as ``(host, port)``
    :ivar host_name: the client's HELO, EHLO or LHLO argument
    :ivar tls: whether the message came over TLS
    :ivar auth_data: what the successful AUTH stored in ``session.auth_data``
        (the user name as bytes for ``auth_user``), or ``None``
    """

    message: EmailMessage
    content: bytes
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    peer: Any = None
    host_name: str | None = None
    tls: bool = False
    auth_data: Any = None


class _MessageStore:
    """The accepted messages, shared between the server thread and the test."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMessage] = []
        self.changed = threading.Condition()

    def add(self, received: ReceivedMessage) -> None:
        with self.changed:
            self.messages.append(received)
            self.changed.notify_all()


class _CollectingHandler:
    """The test server's handler: stores accepted messages, delegates other hooks.

    Hooks and ``auth_<MECH>`` methods of the optional inner handler are found
    through :meth:`__getattr__` and :meth:`__dir__`, so the server finds them as
    hooks of this handler.
    """

    def __init__(self, store: _MessageStore, inner: object | None) -> None:
        if inner is not None and hasattr(inner, "handle_DATA_CHUNK"):
            raise ValueError(
                "smtp_server: a handler with handle_DATA_CHUNK gets the message in "
                "pieces, so the test server could not collect it; use handle_DATA"
            )
        self._store = store
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")
        if inner is not None and name.startswith(("handle_", "auth_")):
            return getattr(inner, name)
        raise AttributeError(name)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        if self._inner is not None:
            names.update(
                name
                for name in dir(self._inner)
                if name.startswith(("handle_", "auth_"))
            )
        return sorted(names)

    async def handle_DATA(
        self, server: Any, session: Session, envelope: Envelope
    ) -> object:
        status: object = None
        hook = getattr(self._inner, "handle_DATA", None)
        if hook is not None:
            status = await call_maybe_async(hook, server, session, envelope)
        accepted = _accepted_recipients(status, envelope.rcpt_tos)
        if accepted:
            self._store.add(_received(session, envelope, accepted))
        return status


def _accepted_recipients(status: object, rcpt_tos: Sequence[str]) -> list[str]:
    """Return the recipients that ``status``, handle_DATA's result, accepted.

    A list holds one status per recipient (LMTP). As in the server, its last
    status applies to the recipients left over.
    """
    statuses = list(status) if isinstance(status, (list, tuple)) else [status]
    if not statuses:
        return []
    accepted = []
    for index, recipient in enumerate(rcpt_tos):
        reply: Reply | None = reply_from_status(
            statuses[min(index, len(statuses) - 1)], "handle_DATA"
        )
        if reply is None or 200 <= reply.code < 300:
            accepted.append(recipient)
    return accepted


def _received(
    session: Session, envelope: Envelope, recipients: list[str]
) -> ReceivedMessage:
    content = envelope.original_content
    if content is None:
        text = envelope.content
        if isinstance(text, str):
            content = text.encode("utf-8", "surrogateescape")
        else:
            content = bytes(text or b"")
    message = email.message_from_bytes(content, policy=email.policy.default)
    return ReceivedMessage(
        message=message,
        content=content,
        mail_from=envelope.mail_from or "<>",
        rcpt_tos=tuple(recipients),
        mail_options=tuple(envelope.mail_options),
        rcpt_options=tuple(envelope.rcpt_options),
        peer=session.peer,
        host_name=session.host_name,
        tls=session.ssl is not None,
        auth_data=session.auth_data,
    )


@dataclass(frozen=True)
class _FixedUser:
    """Authenticator that accepts one user name and password (``auth_user``)."""

    login: bytes
    password: bytes

    def __repr__(self) -> str:
        return f"_FixedUser(login={self.login!r}, password=***)"

    def __call__(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: LoginPassword,
    ) -> AuthResult:
        login_ok = hmac.compare_digest(auth_data.login, self.login)
        password_ok = hmac.compare_digest(auth_data.password, self.password)
        if login_ok and password_ok:
            return AuthResult(success=True, auth_data=auth_data.login)
        return AuthResult(success=False)


class _TLSFiles:
    """A trustme CA and a certificate for the loopback names, made on first use."""

    def __init__(self, directory_factory: Callable[[], Path]) -> None:
        self._directory_factory = directory_factory
        self._lock = threading.Lock()
        self._ready: tuple[Path, Path, Path] | None = None

    def paths(self) -> tuple[Path, Path, Path]:
        """Return the CA file, the certificate chain file and the key file.

        :raises pytest.skip.Exception: when trustme is not installed
        """
        with self._lock:
            if self._ready is None:
                self._ready = self._create()
            return self._ready

    def _create(self) -> tuple[Path, Path, Path]:
        if importlib.util.find_spec("trustme") is None:
            pytest.skip(
                "smtp_server: tls needs the trustme package (pip install trustme) "
                "or an ssl_context option"
            )
        import trustme

        directory = self._directory_factory()
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
        ca_file = directory / "ca.pem"
        cert_file = directory / "cert.pem"
        key_file = directory / "key.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return ca_file, cert_file, key_file


class SMTPTestServer:
    """A running SMTP or LMTP server for one test, with the messages it accepted.

    Create it with the ``smtp_server`` fixture or ``smtp_server_factory``; both
    stop it when the test ends. Every attribute but :attr:`messages` is fixed
    once the server runs.

    :ivar host: the loopback address the server listens on
    :ivar port: the port the system chose
    :ivar backend: ``"asyncio"`` or ``"trio"``
    :ivar lmtp: whether the server speaks LMTP
    :ivar tls: ``"starttls"``, ``"implicit"`` or ``None``
    :ivar client_ssl_context: a client context that trusts the server's
        certificate when trustme made it, else ``None``
    :ivar ca_file: the trustme CA certificate as a PEM file, or ``None``
    :ivar auth_user: the ``(user, password)`` that AUTH accepts, or ``None``
    :ivar controller: the running :class:`~smtpproto_anyio.Controller`
    """

    def __init__(
        self,
        controller: Controller,
        store: _MessageStore,
        *,
        host: str,
        backend: str,
        lmtp: bool,
        tls: str | None,
        client_ssl_context: ssl.SSLContext | None,
        ca_file: Path | None,
        auth_user: tuple[str, str] | None,
    ) -> None:
        self.controller = controller
        self.host = host
        self.port = 0
        self.backend = backend
        self.lmtp = lmtp
        self.tls = tls
        self.client_ssl_context = client_ssl_context
        self.ca_file = ca_file
        self.auth_user = auth_user
        self._store = store

    def __repr__(self) -> str:
        return (
            f"<SMTPTestServer {self.host}:{self.port} backend={self.backend} "
            f"lmtp={self.lmtp} tls={self.tls} messages={len(self.messages)}>"
        )

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The accepted messages in the order of their replies (a copy)."""
        with self._store.changed:
            return list(self._store.messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._store.changed:
            self._store.messages.clear()

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived and return all of them.

        Use it when the code under test sends in the background; after a
        :mod:`smtplib` call returns, the message is already in :attr:`messages`.

        :param timeout: seconds to wait
        :raises TimeoutError: if fewer than ``count`` messages arrived in time
        """
        deadline = time.monotonic() + timeout
        store = self._store
        with store.changed:
            while len(store.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} messages within {timeout} s, "
                        f"received {len(store.messages)}"
                    )
                store.changed.wait(remaining)
            return list(store.messages)

    def client(self, timeout: float = 10.0) -> smtplib.SMTP:
        """Connect a :mod:`smtplib` client: ``SMTP``, ``SMTP_SSL`` or ``LMTP``.

        The caller closes it, preferably with ``with``. STARTTLS and AUTH are
        left to the test, e.g. ``client.starttls(context=server.client_ssl_context)``.

        :param timeout: seconds for the connection and for each reply
        """
        if self.lmtp:
            client: smtplib.SMTP = smtplib.LMTP(self.host, self.port, timeout=timeout)
        elif self.tls == "implicit":
            client = smtplib.SMTP_SSL(
                self.host,
                self.port,
                timeout=timeout,
                context=self.client_ssl_context,
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=timeout)
        return client

    def start(self) -> None:
        """Start the server and record its port."""
        self.controller.start()
        self.port = self.controller.port

    def stop(self) -> None:
        """Stop the server: open sessions get ``421``; no-op once stopped."""
        self.controller.stop()


def _start_server(options: dict[str, Any], tls_files: _TLSFiles) -> SMTPTestServer:
    """Build and start a test server from fixture options."""
    options = dict(options)
    backend = options.pop("backend", "asyncio")
    if backend not in ("asyncio", "trio"):
        raise ValueError(
            f"smtp_server: backend must be 'asyncio' or 'trio', not {backend!r}"
        )
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        pytest.skip("smtp_server: backend='trio' needs the trio package")
    host = options.pop("host", "127.0.0.1")
    implicit_tls = bool(options.pop("implicit_tls", False))
    ssl_context: ssl.SSLContext | None = options.pop("ssl_context", None)
    tls = bool(options.pop("tls", False)) or (
        ssl_context is not None and not implicit_tls
    )
    auth_user = options.pop("auth_user", None)
    inner_handler = options.pop("handler", None)
    lmtp = bool(options.get("lmtp", False))
    server_hostname = options.pop("hostname", DEFAULT_HOSTNAME)

    if tls and implicit_tls:
        raise ValueError(
            "smtp_server: tls (STARTTLS) and implicit_tls cannot be combined"
        )
    client_context = None
    ca_file = None
    if (tls or implicit_tls) and ssl_context is None:
        ca_file, cert_file, key_file = tls_files.paths()
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(cert_file, key_file)
        client_context = ssl.create_default_context(cafile=str(ca_file))
    if tls:
        options["tls_context"] = ssl_context

    if auth_user is not None:
        user, password = auth_user
        options["authenticator"] = _FixedUser(
            str(user).encode("utf-8"), str(password).encode("utf-8")
        )
        # Over plaintext, the engine offers AUTH only without auth_require_tls.
        options.setdefault("auth_require_tls", tls or implicit_tls)
        auth_user = (str(user), str(password))

    tls_mode = None
    if tls:
        tls_mode = "starttls"
    elif implicit_tls:
        tls_mode = "implicit"
    store = _MessageStore()
    controller = Controller(
        _CollectingHandler(store, inner_handler),
        hostname=host,
        port=0,
        backend=backend,
        ssl_context=ssl_context if implicit_tls else None,
        server_hostname=server_hostname,
        **options,
    )
    server = SMTPTestServer(
        controller,
        store,
        host=host,
        backend=backend,
        lmtp=lmtp,
        tls=tls_mode,
        client_ssl_context=client_context,
        ca_file=ca_file,
        auth_user=auth_user,
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def _smtp_server_tls_files(tmp_path_factory: pytest.TempPathFactory) -> _TLSFiles:
    return _TLSFiles(lambda: tmp_path_factory.mktemp("smtp-server-tls"))


@pytest.fixture
def smtp_server_factory(
    _smtp_server_tls_files: _TLSFiles,
) -> Iterator[Callable[..., SMTPTestServer]]:
    """Return ``factory(**options)``, which starts a test server and returns it.

    The options are those of the ``smtp_server`` marker. Every server started
    through the factory stops when the test ends.
    """
    servers: list[SMTPTestServer] = []

    def factory(**options: Any) -> SMTPTestServer:
        server = _start_server(options, _smtp_server_tls_files)
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def smtp_server(
    request: pytest.FixtureRequest,
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> SMTPTestServer:
    """Start a test server configured by the ``smtp_server`` marker and return it.

    With indirect parametrization, a string parameter selects the backend and a
    dict parameter adds options, e.g.
    ``@pytest.mark.parametrize("smtp_server", ["asyncio", "trio"], indirect=True)``.
    """
    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker("smtp_server")
    if marker is not None:
        if marker.args:
            raise TypeError(
                "smtp_server marker takes keyword arguments only, e.g. "
                "@pytest.mark.smtp_server(tls=True)"
            )
        options.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, str):
        options["backend"] = param
    elif isinstance(param, dict):
        options.update(param)
    elif param is not None:
        raise TypeError(
            f"smtp_server parameter must be a backend name or a dict of options, "
            f"not {param!r}"
        )
    return smtp_server_factory(**options)
