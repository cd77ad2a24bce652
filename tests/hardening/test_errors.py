"""Hook failures through the whole server: no Python internals reach a client.

A handler hook that raises or returns an invalid result must give the client
the configured error reply (``451 4.3.0`` by default), with none of the
exception's text, and the session must stay usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hardening_support import LEAK_MARKERS, Client, Reply, deliver, start_controller

from smtpproto_anyio import Controller


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() failed in /srv/app/hooks.py")


def raise_value_error() -> object:
    raise ValueError("cannot open /etc/passwd: secret-token")


def raise_os_error() -> object:
    raise PermissionError(13, "Permission denied", "/etc/passwd")


def raise_key_error() -> object:
    raise KeyError(Path("/etc/passwd"))


def raise_runtime_error() -> object:
    raise RuntimeError({"password": "secret-token", "file": "/srv/app/hooks.py"})


def raise_unprintable() -> object:
    raise UnprintableError


BEHAVIOURS: dict[str, Callable[[], object]] = {
    "value-error": raise_value_error,
    "os-error": raise_os_error,
    "key-error": raise_key_error,
    "runtime-error": raise_runtime_error,
    "unprintable": raise_unprintable,
    "integer": lambda: 42,
    "bytes": lambda: b"250 OK",
    "not-a-status": lambda: "not a status",
    "code-999": lambda: "999 out of range",
    "code-100": lambda: "100 continue",
    "list": lambda: ["250 OK", "250 OK"],
    "object": lambda: object(),
}
HOOKS = ("HELO", "MAIL", "RCPT", "DATA", "NOOP", "VRFY", "RSET")


class Faulty:
    """A handler whose hook named by ``target`` runs ``behaviour``."""

    def __init__(self) -> None:
        self.target = ""
        self.behaviour: Callable[[], object] = lambda: None

    def _run(self, name: str) -> object:
        if name == self.target:
            return self.behaviour()
        return None

    async def handle_HELO(self, server, session, envelope, hostname):
        return self._run("HELO")

    async def handle_MAIL(self, server, session, envelope, address, options):
        if address.startswith("hang@"):
            await anyio.sleep_forever()
        result = self._run("MAIL")
        envelope.mail_from = address
        return result if result is not None else "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        result = self._run("RCPT")
        envelope.rcpt_tos.append(address)
        return result if result is not None else "250 OK"

    def handle_DATA(self, server, session, envelope):
        return self._run("DATA")

    async def handle_NOOP(self, server, session, envelope, argument):
        return self._run("NOOP")

    def handle_VRFY(self, server, session, envelope, address):
        return self._run("VRFY")

    async def handle_RSET(self, server, session, envelope):
        return self._run("RSET")


class FaultyWithHandler(Faulty):
    """A Faulty handler with ``handle_exception``, which runs ``on_exception``."""

    def __init__(self) -> None:
        super().__init__()
        self.on_exception: Callable[[Exception], object] = lambda error: None

    async def handle_exception(self, error: Exception) -> object:
        return self.on_exception(error)


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def servers(request) -> Iterator[tuple[Controller, Faulty, Controller, Any]]:
    plain = Faulty()
    handled = FaultyWithHandler()
    first = start_controller(plain, request.param)
    second = start_controller(handled, request.param)
    yield first, plain, second, handled
    first.stop()
    second.stop()


def run_dialogue(port: int, target: str) -> tuple[Reply, Reply, list[Reply]]:
    """Drive the session up to ``target``; return its reply, a check, all replies."""
    with Client(port) as client:
        assert client.greeting is not None
        seen = [client.greeting]
        if target == "HELO":
            failed = client.command("HELO client.example.net")
        else:
            seen.append(client.command("EHLO client.example.net"))
            if target in ("RCPT", "DATA"):
                seen.append(client.command("MAIL FROM:<alice@example.net>"))
            if target == "DATA":
                seen.append(client.command("RCPT TO:<bob@example.com>"))
                seen.append(client.command("DATA"))
                client.send(b"Subject: t\r\n\r\nhi\r\n.\r\n")
                failed = client.reply()
            else:
                failed = client.command(
                    {
                        "MAIL": "MAIL FROM:<alice@example.net>",
                        "RCPT": "RCPT TO:<bob@example.com>",
                        "NOOP": "NOOP",
                        "VRFY": "VRFY bob",
                        "RSET": "RSET",
                    }[target]
                )
        check = client.command("RSET" if target == "NOOP" else "NOOP")
        seen += [failed, check, client.command("QUIT")]
    return failed, check, seen


def assert_no_leak(replies: list[Reply]) -> None:
    for reply in replies:
        for marker in LEAK_MARKERS:
            assert marker not in reply.text, reply


@pytest.mark.parametrize("target", HOOKS)
@pytest.mark.parametrize("behaviour", BEHAVIOURS.values(), ids=BEHAVIOURS.keys())
def test_hook_failure_hidden(servers, behaviour, target, request):
    controller, handler, _, _ = servers
    handler.target = target
    handler.behaviour = behaviour
    failed, check, seen = run_dialogue(controller.port, target)
    assert_no_leak(seen)
    assert failed.code == 451, failed
    assert failed.lines == ("4.3.0 Error: internal server error",)
    assert check.code == 250


def raise_in_handler(error: Exception) -> object:
    raise OSError(f"/etc/passwd: {error!r}")


EXCEPTION_HANDLERS: dict[str, Callable[[Exception], object]] = {
    "returns-none": lambda error: None,
    "raises": raise_in_handler,
    "returns-garbage": lambda error: 451.0,
    "returns-999": lambda error: "999 nope",
}


@pytest.mark.parametrize("target", ["MAIL", "DATA"])
@pytest.mark.parametrize(
    "on_exception", EXCEPTION_HANDLERS.values(), ids=EXCEPTION_HANDLERS.keys()
)
def test_handle_exception_failure_hidden(servers, on_exception, target):
    _, _, controller, handler = servers
    handler.target = target
    handler.behaviour = raise_value_error
    handler.on_exception = on_exception
    failed, check, seen = run_dialogue(controller.port, target)
    assert_no_leak(seen)
    assert failed.code == 451, failed
    assert failed.lines == ("4.3.0 Error: internal server error",)
    assert check.code == 250


def test_error_reply_configurable(controller_factory, backend):
    handler = Faulty()
    handler.target = "MAIL"
    handler.behaviour = raise_value_error
    controller = controller_factory(
        handler, backend, error_reply="450 4.3.2 Try again later"
    )
    failed, check, seen = run_dialogue(controller.port, "MAIL")
    assert_no_leak(seen)
    assert failed.code == 450
    assert failed.lines == ("4.3.2 Try again later",)
    assert check.code == 250


def test_hanging_hook_isolated(controller_factory, backend):
    """A hook that never returns blocks its own session only; shutdown ends it.

    NOTE: no hook timeout exists, so the hanging session waits for the
    shutdown; SECURITY.md lists this limitation.
    """
    controller = controller_factory(Faulty(), backend, timeout=1)
    with Client(controller.port) as hanging:
        assert hanging.command("EHLO client.example.net").code == 250
        hanging.send(b"MAIL FROM:<hang@example.net>\r\n")
        deliver(controller.port, "beside-hanging")
        # Longer than the server's 1 s idle timeout, which does not cover hooks.
        assert not hanging.is_closed(timeout=2)
        started = time.monotonic()
        controller.stop()
        elapsed = time.monotonic() - started
        assert hanging.is_closed(timeout=5)
    assert hanging.buffer in (b"", b"421 4.3.2 Service shutting down\r\n")
    assert elapsed < 5
