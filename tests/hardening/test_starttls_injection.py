"""STARTTLS command injection (CVE-2011-0411 class) through the whole server.

Plaintext that follows STARTTLS, in the same write or injected by a man in the
middle just before the handshake, must never run as a command inside the TLS
session. No envelope state from before TLS may survive either (RFC 3207,
section 4.2).
"""

from __future__ import annotations

import ssl
import time

import pytest
from hardening_support import Client, Recorder, TLSFiles

INJECTED = b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<victim@example.com>\r\n"


@pytest.fixture
def tls_server(backend, controller_factory, tls_files: TLSFiles):
    recorder = Recorder()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    controller = controller_factory(recorder, backend, tls_context=context)
    return controller.port, recorder


def client_context(tls_files: TLSFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files.ca))


def start_tls(client: Client, tls_files: TLSFiles) -> None:
    assert client.buffer == b"", "plaintext bytes after the 220 reply"
    client.sock = client_context(tls_files).wrap_socket(
        client.sock, server_hostname="localhost"
    )


def assert_fresh_tls_session(client: Client) -> None:
    """Check that the first TLS reply is the reply to EHLO and no envelope survived."""
    ehlo = client.command("EHLO client.example.net")
    assert ehlo.code == 250
    assert ehlo.lines[0].startswith("mx.example.com")
    assert "PIPELINING" in ehlo.lines
    assert client.command("RCPT TO:<bob@example.com>").code == 503
    assert client.command("DATA").code == 503
    assert client.command("NOOP").code == 250
    assert client.command("QUIT").code == 221


def test_starttls_pipelined_plaintext_dropped(tls_server, tls_files):
    port, recorder = tls_server
    with Client(port) as client:
        assert client.command("EHLO client.example.net").code == 250
        client.send(b"STARTTLS\r\n" + INJECTED)
        assert client.reply().code == 220
        start_tls(client, tls_files)
        assert_fresh_tls_session(client)
    assert recorder.mail_from == []
    assert recorder.rcpt_to == []


@pytest.mark.parametrize("when", ["after-220", "before-220"])
def test_starttls_injected_write_rejected(tls_server, tls_files, when):
    """Plaintext in its own write just before the ClientHello breaks the handshake."""
    port, recorder = tls_server
    with Client(port) as client:
        assert client.command("EHLO client.example.net").code == 250
        client.send(b"STARTTLS\r\n")
        if when == "before-220":
            time.sleep(0.05)
            client.send(INJECTED)
            assert client.reply().code == 220
        else:
            assert client.reply().code == 220
            client.send(INJECTED)
        try:
            start_tls(client, tls_files)
        except (ssl.SSLError, ConnectionError):
            handshake_failed = True
        else:
            handshake_failed = False
            assert_fresh_tls_session(client)
    assert handshake_failed
    assert recorder.mail_from == []
    assert recorder.rcpt_to == []


def test_starttls_discards_envelope(tls_server, tls_files):
    port, recorder = tls_server
    with Client(port) as client:
        assert client.command("EHLO client.example.net").code == 250
        assert client.command("MAIL FROM:<alice@example.net>").code == 250
        assert client.command("STARTTLS").code == 220
        start_tls(client, tls_files)
        assert_fresh_tls_session(client)
    assert recorder.mail_from == ["alice@example.net"]
    assert recorder.rcpt_to == []
    assert recorder.messages == []
