"""SMTP smuggling through the whole server: end-of-data lookalikes on a real socket.

A client (or a relay in front of the server) sends message content that contains a
sequence that some servers take for the end of the message, followed by commands
of a second, forged transaction. Only ``<CRLF>.<CRLF>`` ends DATA content (RFC
5321, section 4.1.1.4), and a BDAT chunk ends only by its octet count (RFC 3030),
so the handler must see one message or a rejection and never the forged sender.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hardening_support import Client, Recorder, Reply, start_controller

from smtpproto_anyio import Controller

# Sequences that look like an end of data to a lenient parser. None of them
# contains <CRLF>.<CRLF>, so none may end the message.
LOOKALIKES = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "lf-cr-dot-crlf": b"\n\r.\r\n",
    "crlf-nul-dot-crlf": b"\r\n\x00.\r\n",
    "crlf-dot-nul-crlf": b"\r\n.\x00\r\n",
    "crlf-dot-cr-nul-lf": b"\r\n.\r\x00\n",
    "crlf-space-dot-crlf": b"\r\n .\r\n",
    "crlf-dot-space-crlf": b"\r\n. \r\n",
    "crlf-dot-tab-crlf": b"\r\n.\t\r\n",
    "crlf-dot-vt-crlf": b"\r\n.\x0b\r\n",
}
# In a BDAT chunk even the real end-of-data sequence is plain content.
BDAT_LOOKALIKES = {**LOOKALIKES, "crlf-dot-crlf": b"\r\n.\r\n"}

# A forged second transaction, including a switch to BDAT as in CVE-2023-51766,
# that must stay message text. It contains no <CRLF>.<CRLF> of its own.
SMUGGLED = (
    b"MAIL FROM:<mallory@example.org>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"DATA\r\n"
    b"From: mallory@example.org\r\n"
    b"\r\n"
    b"forged\r\n"
    b"RSET\r\n"
    b"MAIL FROM:<mallory@example.org>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"BDAT 8 LAST\r\n"
    b"forged\r\n"
)
HEADER = b"From: alice@example.net\r\nSubject: report\r\n\r\nhello"
BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")
POLICIES = ("reject", "normalize", "allow")


@pytest.fixture(
    scope="module",
    params=[(b, p) for b in ("asyncio", "trio") for p in POLICIES],
    ids=lambda param: f"{param[0]}-{param[1]}",
)
def server(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Controller, Recorder, str]]:
    backend, policy = request.param
    recorder = Recorder()
    controller = start_controller(recorder, backend, bare_line_ending=policy)
    yield controller, recorder, policy
    controller.stop()


def open_transaction(port: int) -> Client:
    client = Client(port)
    assert client.greeting is not None
    assert client.greeting.code == 220
    assert client.command("EHLO client.example.net").code == 250
    assert client.command("MAIL FROM:<alice@example.net>").code == 250
    assert client.command("RCPT TO:<bob@example.com>").code == 250
    return client


def send(client: Client, pieces: list[bytes], split: bool) -> None:
    if split:
        client.send_pieces(pieces, pause=0.005)
    else:
        client.send(b"".join(pieces))


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def assert_not_smuggled(recorder: Recorder) -> None:
    assert recorder.mail_from == ["alice@example.net"]
    assert recorder.rcpt_to == ["bob@example.com"]
    for mail_from, rcpt_tos, _ in recorder.messages:
        assert mail_from == "alice@example.net"
        assert rcpt_tos == ("bob@example.com",)


def assert_final_reply(
    reply: Reply, recorder: Recorder, policy: str, has_bare: bool
) -> bytes | None:
    """Check the one reply to the message; return the content if accepted."""
    if policy == "reject" and has_bare:
        assert reply.code == 550, reply
        assert "5.5.2" in reply.text
        assert recorder.messages == []
        return None
    assert reply.code == 250, reply
    assert len(recorder.messages) == 1
    content = recorder.messages[0][2]
    assert b"MAIL FROM:<mallory@example.org>" in content
    if policy == "normalize":
        assert not BARE_LINE_ENDING.search(content)
    return content


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("lookalike", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_data_lookalike_not_end(
    server: tuple[Controller, Recorder, str], lookalike: bytes, split: bool
) -> None:
    controller, recorder, policy = server
    recorder.clear()
    with open_transaction(controller.port) as client:
        assert client.command("DATA").code == 354
        pieces = [HEADER, *split_bytes(lookalike)] if split else [HEADER, lookalike]
        pieces += [SMUGGLED[:40], SMUGGLED[40:120], SMUGGLED[120:]]
        pieces += [b".", b"\r\n", b"QUIT\r\n"]
        send(client, pieces, split)
        replies = client.replies_until_closed()

    assert len(replies) == 2, replies
    assert replies[1].code == 221
    has_bare = bool(BARE_LINE_ENDING.search(lookalike))
    content = assert_final_reply(replies[0], recorder, policy, has_bare)
    assert_not_smuggled(recorder)
    if content is not None:
        assert content.startswith(HEADER)
        assert content.endswith(b"BDAT 8 LAST\r\nforged\r\n")


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize(
    "lookalike", BDAT_LOOKALIKES.values(), ids=BDAT_LOOKALIKES.keys()
)
def test_bdat_lookalike_not_end(
    server: tuple[Controller, Recorder, str],
    lookalike: bytes,
    split: bool,
    request: pytest.FixtureRequest,
) -> None:
    controller, recorder, policy = server
    recorder.clear()
    has_bare = bool(BARE_LINE_ENDING.search(lookalike))
    first = HEADER + lookalike + SMUGGLED
    last = b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<victim@example.com>\r\n"
    with open_transaction(controller.port) as client:
        pieces = [f"BDAT {len(first)}\r\n".encode()]
        if split:
            pieces += [HEADER, *split_bytes(lookalike), SMUGGLED[:50], SMUGGLED[50:]]
        else:
            pieces.append(first)
        pieces += [f"BDAT {len(last)} LAST\r\n".encode(), last, b"QUIT\r\n"]
        send(client, pieces, split)
        replies = client.replies_until_closed()

    assert len(replies) == 3, replies
    assert replies[2].code == 221
    if policy == "reject" and has_bare:
        # The chunk with the bare line ending fails at once, and the rest of
        # the transaction is refused until RSET (RFC 3030, section 2).
        assert replies[0].code == 550, replies
        assert "5.5.2" in replies[0].text
        assert replies[1].code == 503, replies
        assert recorder.messages == []
        assert_not_smuggled(recorder)
        return
    assert replies[0].code == 250
    content = assert_final_reply(replies[1], recorder, policy, has_bare)
    assert_not_smuggled(recorder)
    if content is not None and (policy == "allow" or not has_bare):
        assert content == first + last
