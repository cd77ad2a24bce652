"""The threaded Controller, driven from plain synchronous code."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest

from smtpproto import Envelope, Session
from smtpproto_anyio import Controller, SMTPServer

BACKENDS = ["asyncio", "trio"]
MESSAGE = b"Subject: controller\r\n\r\nhello\r\n"


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.mark.parametrize("backend", BACKENDS)
def test_controller_start_stop(backend: str) -> None:
    handler = Recorder()
    controller = Controller(handler, backend=backend, server_hostname="mx.example.test")
    controller.start()
    port = controller.port
    try:
        assert port > 0
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            code, banner = client.ehlo()
            assert code == 250
            assert banner.startswith(b"mx.example.test")
            assert client.has_extn("smtputf8")
            client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    finally:
        controller.stop()
    assert handler.envelopes[0].content == MESSAGE
    with (
        pytest.raises(OSError),
        socket.create_connection(("127.0.0.1", port), 1),
    ):
        pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_controller_context_manager(backend: str) -> None:
    handler = Recorder()
    with (
        Controller(handler, backend=backend) as controller,
        smtplib.SMTP("127.0.0.1", controller.port, timeout=5) as client,
    ):
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    assert len(handler.envelopes) == 1


def test_controller_port_before_start() -> None:
    controller = Controller(Recorder())
    with pytest.raises(RuntimeError, match="start"):
        controller.port  # noqa: B018 - the property raises


def test_controller_stop_twice() -> None:
    controller = Controller(Recorder())
    controller.start()
    controller.stop()
    controller.stop()


def test_controller_restart() -> None:
    controller = Controller(Recorder())
    for _ in range(2):
        controller.start()
        try:
            with smtplib.SMTP("127.0.0.1", controller.port, timeout=5) as client:
                assert client.noop()[0] == 250
        finally:
            controller.stop()


def test_controller_start_twice_rejected() -> None:
    with Controller(Recorder()) as controller, pytest.raises(RuntimeError):
        controller.start()


@pytest.mark.parametrize("backend", BACKENDS)
def test_controller_bind_error(backend: str) -> None:
    with Controller(Recorder(), backend=backend) as first:
        second = Controller(Recorder(), port=first.port, backend=backend)
        with pytest.raises(OSError):
            second.start()
        with pytest.raises(RuntimeError):
            second.port  # noqa: B018 - the property raises


def test_controller_server_options() -> None:
    class LMTPServer(SMTPServer):
        pass

    controller = Controller(
        Recorder(), server_class=LMTPServer, lmtp=True, enable_SMTPUTF8=False
    )
    assert isinstance(controller.server, LMTPServer)
    assert controller.server.lmtp is True
    with controller, smtplib.LMTP("127.0.0.1", controller.port, timeout=5) as client:
        code, _ = client.ehlo()
        assert code == 250
        assert not client.has_extn("smtputf8")


def test_controller_smtps(tls_files: object) -> None:
    server_context = tls_files.server_context()  # type: ignore[attr-defined]
    client_context: ssl.SSLContext = tls_files.client_context()  # type: ignore[attr-defined]
    handler = Recorder()
    with (
        Controller(handler, ssl_context=server_context) as controller,
        smtplib.SMTP_SSL(
            "localhost", controller.port, timeout=5, context=client_context
        ) as client,
    ):
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    assert len(handler.envelopes) == 1
