"""Test helpers that drive a ServerConnection with no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from smtpproto import (
    NEED_DATA,
    PAUSED,
    AuthAborted,
    Bdat,
    ConnectionClosed,
    DataChunk,
    DataRejected,
    Event,
    ServerConnection,
)

NOTIFICATIONS = (Bdat, DataChunk, DataRejected, AuthAborted)

Responder = Callable[[ServerConnection, Event], None]


def accept_all(conn: ServerConnection, event: Event) -> None:
    """Answer every event with the engine's default reply."""
    conn.accept()


def new_connection(**options: Any) -> ServerConnection:
    """Return a greeted connection for ``mx.example.com``."""
    conn = ServerConnection("mx.example.com", **options)
    conn.accept()
    conn.data_to_send()
    return conn


def drain(conn: ServerConnection, respond: Responder = accept_all) -> list[Event]:
    """Take events until the engine needs data, answering each with ``respond``."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        if event is PAUSED:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        if not isinstance(event, NOTIFICATIONS):
            respond(conn, event)


def feed(
    conn: ServerConnection, data: bytes, respond: Responder = accept_all
) -> tuple[list[Event], bytes]:
    """Feed ``data`` in one piece; return the events and the bytes to send."""
    conn.receive_data(data)
    events = drain(conn, respond)
    return events, conn.data_to_send()


def feed_pieces(
    conn: ServerConnection, pieces: Iterable[bytes], respond: Responder = accept_all
) -> tuple[list[Event], bytes]:
    """Feed ``pieces`` one after another, draining events after each."""
    events: list[Event] = []
    out = b""
    for piece in pieces:
        more, sent = feed(conn, piece, respond)
        events += more
        out += sent
    return events, out


def merge_chunks(events: list[Event]) -> list[Event]:
    """Merge consecutive DataChunk events, whose boundaries depend on reads."""
    merged: list[Event] = []
    for event in events:
        if (
            isinstance(event, DataChunk)
            and merged
            and isinstance(merged[-1], DataChunk)
        ):
            merged[-1] = DataChunk(data=merged[-1].data + event.data)
        elif isinstance(event, DataChunk) and not event.data:
            continue
        else:
            merged.append(event)
    return merged


def codes(out: bytes) -> list[int]:
    """Return the reply codes of the final line of each reply in ``out``."""
    return [
        int(line[:3])
        for line in out.split(b"\r\n")
        if len(line) >= 4 and line[3:4] == b" " or len(line) == 3
    ]


def body(events: list[Event]) -> bytes:
    """Return the message content delivered in DataChunk events."""
    return b"".join(e.data for e in events if isinstance(e, DataChunk))
