"""The pytest plugin: smtp_server fixture, marker options, factory, pytester runs."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpproto_anyio.pytest_plugin import ReceivedMessage, SMTPTestServer

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

MESSAGE = (
    b"From: ann@example.com\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Plugin test\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b"..leading dot\r\n"
)


def send(server: SMTPTestServer, recipients: list[str] | None = None) -> None:
    with server.client() as client:
        client.sendmail("ann@example.com", recipients or ["bob@example.org"], MESSAGE)


# ---------------------------------------------------------------- the fixture


def test_fixture_collects_message(smtp_server: SMTPTestServer) -> None:
    recipients = ["bob@example.org", "carol@example.org"]
    with smtplib.SMTP(
        smtp_server.host, smtp_server.port, local_hostname="client.example", timeout=10
    ) as client:
        client.sendmail("ann@example.com", recipients, MESSAGE)

    [received] = smtp_server.messages
    assert isinstance(received, ReceivedMessage)
    assert received.mail_from == "ann@example.com"
    assert received.rcpt_tos == ("bob@example.org", "carol@example.org")
    assert received.message["Subject"] == "Plugin test"
    # smtplib dot-stuffs the content and the server removes the stuffing again.
    assert received.message.get_content() == "Hello Bob.\r\n..leading dot\r\n"
    assert received.content == MESSAGE
    assert received.host_name == "client.example"
    assert received.peer[0] == "127.0.0.1"
    assert not received.tls
    assert received.auth_data is None


def test_fixture_defaults(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.host == "127.0.0.1"
    assert smtp_server.port > 0
    assert smtp_server.backend == "asyncio"
    assert smtp_server.tls is None
    assert smtp_server.client_ssl_context is None
    assert not smtp_server.lmtp
    with smtp_server.client() as client:
        code, text = client.ehlo("client.example")
    assert code == 250
    assert text.startswith(b"localhost\n")


def test_fixture_mail_options(smtp_server: SMTPTestServer) -> None:
    with smtp_server.client() as client:
        client.sendmail(
            "ann@example.com",
            ["bob@example.org"],
            MESSAGE,
            mail_options=["BODY=8BITMIME"],
        )
    [received] = smtp_server.messages
    assert "BODY=8BITMIME" in received.mail_options


def test_clear_forgets_messages(smtp_server: SMTPTestServer) -> None:
    send(smtp_server)
    send(smtp_server)
    assert len(smtp_server.messages) == 2
    smtp_server.clear()
    assert smtp_server.messages == []
    send(smtp_server)
    assert len(smtp_server.messages) == 1


def test_wait_for_background_sender(smtp_server: SMTPTestServer) -> None:
    def send_later() -> None:
        time.sleep(0.2)
        send(smtp_server)
        send(smtp_server)

    thread = threading.Thread(target=send_later)
    thread.start()
    try:
        received = smtp_server.wait_for(2, timeout=10)
    finally:
        thread.join(10)
    assert len(received) == 2


def test_wait_for_timeout(smtp_server: SMTPTestServer) -> None:
    send(smtp_server)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="expected 2 messages within 0.2 s"):
        smtp_server.wait_for(2, timeout=0.2)
    assert time.monotonic() - started < 5


def test_repr_shows_address(smtp_server: SMTPTestServer) -> None:
    assert f"127.0.0.1:{smtp_server.port}" in repr(smtp_server)


# ---------------------------------------------------------------- marker options


@pytest.mark.smtp_server(tls=True)
def test_marker_starttls(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.tls == "starttls"
    assert smtp_server.ca_file is not None
    assert smtp_server.ca_file.is_file()
    with smtp_server.client() as client:
        client.starttls(context=smtp_server.client_ssl_context)
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    [received] = smtp_server.messages
    assert received.tls


@pytest.mark.smtp_server(tls=True, require_starttls=True)
def test_marker_passes_server_options(smtp_server: SMTPTestServer) -> None:
    with smtp_server.client() as client:
        client.ehlo("client.example")
        code, _ = client.docmd("MAIL FROM:<ann@example.com>")
    assert code == 530


@pytest.mark.smtp_server(implicit_tls=True)
def test_marker_implicit_tls(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.tls == "implicit"
    client = smtp_server.client()
    assert isinstance(client, smtplib.SMTP_SSL)
    with client:
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    [received] = smtp_server.messages
    assert received.tls


@pytest.mark.smtp_server(auth_user=("ann", "secret"))
def test_marker_auth_user(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.auth_user == ("ann", "secret")
    with smtp_server.client() as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("ann", "wrong")
        client.login("ann", "secret")
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    [received] = smtp_server.messages
    assert received.auth_data == b"ann"


@pytest.mark.smtp_server(tls=True, auth_user=("ann", "secret"))
def test_marker_auth_needs_tls(smtp_server: SMTPTestServer) -> None:
    with smtp_server.client() as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        client.starttls(context=smtp_server.client_ssl_context)
        client.ehlo("client.example")
        assert client.has_extn("auth")
        client.login("ann", "secret")


@pytest.mark.smtp_server(lmtp=True)
def test_marker_lmtp(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.lmtp
    client = smtp_server.client()
    assert isinstance(client, smtplib.LMTP)
    # smtplib reads one reply after the message, so it can send to one
    # recipient only; LMTP sends one reply per recipient.
    with client:
        refused = client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    assert refused == {}
    [received] = smtp_server.messages
    assert received.rcpt_tos == ("bob@example.org",)


class LMTPPartialHandler:
    """Accepts the message for the first recipient and defers it for the second."""

    def handle_DATA(
        self, server: object, session: object, envelope: object
    ) -> list[str]:
        return ["250 2.0.0 Delivered", "452 4.2.2 Mailbox full"]


@pytest.mark.smtp_server(lmtp=True, handler=LMTPPartialHandler())
def test_marker_lmtp_per_recipient(smtp_server: SMTPTestServer) -> None:
    dialogue = (
        b"LHLO client.example\r\n"
        b"MAIL FROM:<ann@example.com>\r\n"
        b"RCPT TO:<bob@example.org>\r\n"
        b"RCPT TO:<carol@example.org>\r\n"
        b"DATA\r\n"
    )
    with socket.create_connection((smtp_server.host, smtp_server.port), 10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(dialogue)
        while not reader.readline().startswith(b"354 "):
            pass
        sock.sendall(MESSAGE + b".\r\nQUIT\r\n")
        replies = [reader.readline() for _ in range(3)]
        reader.close()
    assert replies[0].startswith(b"250 2.0.0 Delivered")
    assert replies[1].startswith(b"452 4.2.2 Mailbox full")
    assert replies[2].startswith(b"221 ")
    [received] = smtp_server.messages
    assert received.rcpt_tos == ("bob@example.org",)


@pytest.mark.smtp_server(data_size_limit=100)
def test_marker_size_limit(smtp_server: SMTPTestServer) -> None:
    with (
        smtp_server.client() as client,
        pytest.raises(smtplib.SMTPSenderRefused) as error,
    ):
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE * 5)
    assert error.value.smtp_code == 552
    assert smtp_server.messages == []


@pytest.mark.smtp_server(hostname="mx.example.test")
def test_marker_hostname(smtp_server: SMTPTestServer) -> None:
    with smtp_server.client() as client:
        _, text = client.ehlo("client.example")
    assert text.startswith(b"mx.example.test\n")


class RejectingHandler:
    """Rejects one recipient and every message with "reject" in its subject."""

    async def handle_RCPT(
        self,
        server: object,
        session: object,
        envelope: object,
        address: str,
        options: list[str],
    ) -> str:
        if address == "nobody@example.org":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)  # type: ignore[attr-defined]
        return "250 OK"

    def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        content = envelope.content  # type: ignore[attr-defined]
        if b"reject" in content:
            return "554 5.6.0 Rejected by the test"
        return "250 2.0.0 Queued"


@pytest.mark.smtp_server(handler=RejectingHandler())
def test_marker_handler_hooks(smtp_server: SMTPTestServer) -> None:
    with smtp_server.client() as client:
        refused = client.sendmail(
            "ann@example.com", ["bob@example.org", "nobody@example.org"], MESSAGE
        )
        assert refused == {"nobody@example.org": (550, b"5.1.1 No such user")}
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail(
                "ann@example.com", ["bob@example.org"], b"Subject: reject\r\n\r\n"
            )
    assert error.value.smtp_code == 554
    [received] = smtp_server.messages
    assert received.rcpt_tos == ("bob@example.org",)


def test_handler_with_data_chunk_rejected(
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    class Streaming:
        def handle_DATA_CHUNK(self, *args: object) -> None:
            pass

    with pytest.raises(ValueError, match="handle_DATA_CHUNK"):
        smtp_server_factory(handler=Streaming())


@pytest.mark.parametrize("smtp_server", ["asyncio", "trio"], indirect=True)
def test_parametrized_backend(
    smtp_server: SMTPTestServer, request: pytest.FixtureRequest
) -> None:
    assert smtp_server.backend == request.node.callspec.params["smtp_server"]
    send(smtp_server)
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize(
    "smtp_server", [{"backend": "trio", "lmtp": True}], indirect=True
)
def test_parametrized_options(smtp_server: SMTPTestServer) -> None:
    assert smtp_server.backend == "trio"
    assert smtp_server.lmtp


@pytest.mark.smtp_server(backend="trio", tls=True)
def test_trio_starttls(smtp_server: SMTPTestServer) -> None:
    with smtp_server.client() as client:
        client.starttls(context=smtp_server.client_ssl_context)
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    assert smtp_server.messages[0].tls


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_fixture_in_async_test(smtp_server: SMTPTestServer) -> None:
    import aiosmtplib

    await aiosmtplib.send(
        MESSAGE,
        sender="ann@example.com",
        recipients=["bob@example.org"],
        hostname=smtp_server.host,
        port=smtp_server.port,
        start_tls=False,
        timeout=10,
    )
    [received] = smtp_server.messages
    assert received.message["Subject"] == "Plugin test"


# ---------------------------------------------------------------- the factory


def test_factory_starts_several(
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    first = smtp_server_factory()
    second = smtp_server_factory(lmtp=True)
    assert first.port != second.port
    send(first)
    assert len(first.messages) == 1
    assert second.messages == []


def test_factory_user_ssl_context(
    smtp_server_factory: Callable[..., SMTPTestServer],
    server_tls_context: ssl.SSLContext,
    client_tls_context: ssl.SSLContext,
) -> None:
    server = smtp_server_factory(ssl_context=server_tls_context)
    assert server.tls == "starttls"
    assert server.client_ssl_context is None
    assert server.ca_file is None
    with server.client() as client:
        client.starttls(context=client_tls_context)
        client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE)
    assert server.messages[0].tls


def test_factory_ipv6(smtp_server_factory: Callable[..., SMTPTestServer]) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"cannot bind ::1: {error}")
    server = smtp_server_factory(host="::1")
    send(server)
    assert server.messages[0].peer[0] == "::1"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        pytest.param({"backend": "curio"}, ValueError, "backend", id="backend"),
        pytest.param(
            {"tls": True, "implicit_tls": True}, ValueError, "combined", id="tls-both"
        ),
        pytest.param({"no_such_option": 1}, TypeError, "no_such_option", id="unknown"),
    ],
)
def test_factory_invalid_options(
    smtp_server_factory: Callable[..., SMTPTestServer],
    options: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        smtp_server_factory(**options)


def test_stop_closes_listener(
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    server = smtp_server_factory()
    server.stop()
    with pytest.raises(OSError):
        smtplib.SMTP(server.host, server.port, timeout=5)


# ---------------------------------------------------------------- pytester runs


def test_marker_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.smtp_server(**options):*"])


def test_documented_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_example=(EXAMPLES / "test_plugin_example.py").read_text("utf-8")
    )
    result = pytester.runpytest("--strict-markers", "-W", "error")
    result.assert_outcomes(passed=4)


def test_marker_positional_argument(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smtp_server("trio")
        def test_positional(smtp_server):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*keyword arguments only*"])


def test_fixture_failure_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_expects_message(smtp_server):
            assert smtp_server.messages, "nothing was sent"
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*nothing was sent*"])


def test_without_trustme(pytester: pytest.Pytester) -> None:
    # A module set to None in sys.modules cannot be imported, and find_spec()
    # reports it missing. The subprocess keeps that from this test process.
    pytester.makeconftest(
        """
        import sys

        sys.modules["trustme"] = None
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smtp_server(tls=True)
        def test_tls(smtp_server):
            pass

        def test_plain(smtp_server):
            with smtp_server.client() as client:
                client.sendmail("a@example.com", ["b@example.org"], b"Subject: x\\r\\n\\r\\n")
            assert len(smtp_server.messages) == 1
        """
    )
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*tls needs the trustme package*"])
