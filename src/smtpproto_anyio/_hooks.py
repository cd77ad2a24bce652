"""Handler hooks: discovery at construction, calling sync or async, status parsing.

Also the public authentication types that hooks and authenticators exchange with the
server (:class:`AuthResult`, :class:`LoginPassword`, :class:`AuthExchange`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from smtpproto import Reply, parse_status

if TYPE_CHECKING:
    from ._server import _ConnectionHandler

__all__ = [
    "MISSING",
    "AuthExchange",
    "AuthResult",
    "HookTable",
    "LoginPassword",
    "call_maybe_async",
    "reply_from_status",
]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: Hook return value that means "send the engine's default reply", as ``None`` does.
MISSING: Final = _Missing()

# Hooks a handler may define, without the ``handle_`` prefix.
_HOOK_NAMES = (
    "HELO",
    "EHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "DATA_CHUNK",
    "DATA_ABORT",
    "RSET",
    "NOOP",
    "QUIT",
    "VRFY",
    "AUTH",
    "PROXY",
    "STARTTLS",
    "exception",
)

# SASL mechanism names (RFC 4422, section 3.1) as they appear after ``auth_``.
_MECHANISM_NAME = re.compile(r"[A-Z0-9_-]{1,20}\Z")

# Mechanisms that the engine runs itself; their credentials reach the authenticator.
BUILTIN_MECHANISMS: Final = ("LOGIN", "PLAIN")


class LoginPassword(NamedTuple):
    """User name and password from an AUTH PLAIN or AUTH LOGIN exchange.

    Both are bytes (UTF-8 as the client sent them). The ``repr`` hides the password.
    """

    login: bytes
    password: bytes

    def __repr__(self) -> str:
        return f"LoginPassword(login={self.login!r}, password=***)"


@dataclass(frozen=True)
class AuthResult:
    """Outcome of an authenticator call or an ``auth_<MECH>`` method.

    :param success: whether the client is now authenticated
    :param handled: kept for aiosmtpd compatibility; the engine runs the exchange
        and sends the final reply in every case, so it changes nothing here
    :param message: status string sent as the final reply instead of the default
        ``235`` or ``535`` reply
    :param auth_data: stored in ``session.auth_data`` on success; hidden in ``repr``
    """

    success: bool
    handled: bool = True
    message: str | None = None
    auth_data: Any = field(default=None, repr=False)


class AuthExchangeAborted(Exception):
    """The client cancelled the SASL exchange or the connection ended during it.

    The server has already replied (or cannot reply any more), so a mechanism method
    should let this exception propagate.
    """


class AuthExchange:
    """One SASL exchange run by an ``auth_<MECH>`` method.

    :ivar mechanism: mechanism name from the AUTH command, upper-cased
    :ivar initial_response: decoded initial response from the AUTH command, or
        ``None`` when the client sent none (an empty one is ``b""``)
    """

    def __init__(
        self,
        connection: _ConnectionHandler,
        mechanism: str,
        initial_response: bytes | None,
    ) -> None:
        self._connection = connection
        self.mechanism = mechanism
        self.initial_response = initial_response

    async def challenge(self, data: bytes = b"") -> bytes:
        """Send a ``334`` challenge (base64-encoded by the engine) and return the reply.

        :param data: raw challenge bytes
        :return: the client's decoded response
        :raises AuthExchangeAborted: if the client sent ``*`` or the connection ended
        """
        return await self._connection.run_sasl_challenge(data)


def reply_from_status(status: object, hook_name: str) -> Reply | None:
    """Turn a hook's return value into a reply; ``None`` means the engine's default.

    :raises TypeError: if the value is neither a status string nor a :class:`Reply`
    :raises ValueError: if the string does not start with a reply code
    """
    if status is None or status is MISSING:
        return None
    if isinstance(status, Reply):
        return status
    if isinstance(status, str):
        return parse_status(status)
    raise TypeError(
        f"{hook_name} returned {status!r:.80}; expected a status string such as "
        f"'250 OK', None or MISSING"
    )


async def call_maybe_async(func: Callable[..., Any], *args: object) -> Any:
    """Call ``func`` and await its result if it is awaitable."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _positional_capacity(func: Callable[..., Any]) -> int:
    """Return how many positional arguments ``func`` accepts (a large number for *args)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return 1_000
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return 1_000
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return count


def _find_auth_methods(owner: object, name_prefix: str = "auth_") -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for attribute in dir(owner):
        if not attribute.startswith(name_prefix):
            continue
        mechanism = attribute[len(name_prefix) :].replace("__", "-")
        if not _MECHANISM_NAME.match(mechanism):
            continue
        method = getattr(owner, attribute, None)
        if callable(method):
            methods[mechanism] = method
    return methods


class HookTable:
    """The hooks of one handler and one server, looked up once at construction.

    :raises TypeError: if ``handle_EHLO`` takes neither 4 nor 5 arguments, or an
        ``auth_<MECH>`` method tries to replace a mechanism the engine runs
    """

    def __init__(self, handler: object, server: object) -> None:
        self.hooks: dict[str, Callable[..., Any]] = {}
        for name in _HOOK_NAMES:
            hook = getattr(handler, "handle_" + name, None)
            if callable(hook):
                self.hooks[name] = hook

        # aiosmtpd supports two forms of handle_EHLO: the old one gets the hostname
        # and returns one status line, the current one also gets the reply lines
        # and returns the lines to send.
        self.ehlo_gets_responses = False
        ehlo = self.hooks.get("EHLO")
        if ehlo is not None:
            capacity = _positional_capacity(ehlo)
            if capacity >= 5:
                self.ehlo_gets_responses = True
            elif capacity != 4:
                raise TypeError(
                    f"handle_EHLO takes {capacity} arguments; expected "
                    f"(server, session, envelope, hostname, responses) or "
                    f"(server, session, envelope, hostname)"
                )

        # Application-run SASL mechanisms: methods of the handler get the server as
        # their first argument, methods of a server subclass do not.
        self.auth_methods: dict[str, tuple[Callable[..., Any], bool]] = {}
        for mechanism, method in _find_auth_methods(server).items():
            self.auth_methods[mechanism] = (method, False)
        for mechanism, method in _find_auth_methods(handler).items():
            self.auth_methods[mechanism] = (method, True)
        for mechanism in self.auth_methods:
            if mechanism in BUILTIN_MECHANISMS or mechanism == "CRAM-MD5":
                raise TypeError(
                    f"auth_{mechanism} cannot replace the engine's own {mechanism} "
                    f"exchange; check the credentials in an authenticator instead"
                )

        self.smtp_commands: dict[str, Callable[..., Awaitable[Any] | Any]] = {}
        for attribute in dir(server):
            if attribute.startswith("smtp_") and attribute[5:].isupper():
                method = getattr(server, attribute, None)
                if callable(method):
                    self.smtp_commands[attribute[5:]] = method

    def get(self, name: str) -> Callable[..., Any] | None:
        return self.hooks.get(name)
