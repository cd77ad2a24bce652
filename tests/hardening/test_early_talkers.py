"""Early talkers and pipelining before EHLO, as spam software does them.

With ``reject_unsynchronized=True`` and a greeting delay, a client that talks
before the greeting, or pipelines commands without having negotiated PIPELINING
through EHLO, gets ``554 5.5.0`` and is disconnected (like Postfix's
``smtpd_forbid_unauth_pipelining``). Well-behaved clients are unaffected.
"""

from __future__ import annotations

import pytest
from hardening_support import Client, Recorder, deliver


@pytest.fixture
def strict_server(controller_factory, backend):
    recorder = Recorder()
    controller = controller_factory(
        recorder, backend, reject_unsynchronized=True, greeting_delay=1.0
    )
    return controller.port, recorder


def test_early_talker_rejected(strict_server):
    port, recorder = strict_server
    with Client(port, read_greeting=False) as client:
        client.send(b"EHLO client.example.net\r\nMAIL FROM:<a@example.net>\r\n")
        replies = client.replies_until_closed()
    codes = [reply.code for reply in replies]
    assert codes[-1] == 554, replies
    assert replies[-1].lines[0].startswith("5.5.0")
    assert 250 not in codes
    assert recorder.mail_from == []


def test_pipelining_without_ehlo_rejected(strict_server):
    port, recorder = strict_server
    with Client(port) as client:
        assert client.greeting is not None
        assert client.greeting.code == 220
        client.send(b"HELO client.example.net\r\nMAIL FROM:<a@example.net>\r\n")
        replies = client.replies_until_closed()
    assert [reply.code for reply in replies] == [554], replies
    assert replies[0].lines[0].startswith("5.5.0")
    assert recorder.mail_from == []


def test_synchronized_client_served(strict_server):
    port, recorder = strict_server
    deliver(port, "well-behaved")
    with Client(port) as client:
        assert client.command("HELO client.example.net").code == 250
        assert client.command("MAIL FROM:<carol@example.net>").code == 250
        assert client.command("QUIT").code == 221
    assert recorder.mail_from == ["alice@example.net", "carol@example.net"]
    assert len(recorder.messages) == 1
