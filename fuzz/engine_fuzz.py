"""Coverage-guided fuzzing of the sans-I/O engine with atheris.

One fuzz input describes a whole session: the engine options, the reply the
fuzzer picks for each event, how the client's bytes are split into reads, and
the bytes themselves. Layout:

    byte 0-2   option bits (see ``Options.from_bits``)
    byte 3     index of the event at which to call shutdown() or timeout()
    byte 4     low 5 bits: number R of reply-choice bytes that follow (0..31);
               bit 5: start the stream with a valid opening up to DATA
    next byte  number S of read sizes (0..15), followed by S bytes (size 1..256)
    the rest   the client's byte stream

The harness fails on any exception out of the engine, on reply bytes that are
not well-formed SMTP reply lines, on a message that completes with a bare CR
or LF under bare_line_ending "reject" or "normalize", and, when the
differential bit is set, on a difference between feeding the stream in one
read and in the chosen reads. Engine bugs that are already reported are
skipped unless FUZZ_STRICT=1 is set (see ``is_known_engine_bug``).

Run it (libFuzzer flags pass through):

    python fuzz/engine_fuzz.py --make-corpus
    python fuzz/engine_fuzz.py fuzz/corpus -runs=100000 -artifact_prefix=fuzz/crashes/

The module imports atheris only when run, so tests can import ``run_input``.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import atheris
except ImportError:  # the tests replay inputs without atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    # Instrument the engine before its first import so the fuzzer sees branches.
    with atheris.instrument_imports(include=["smtpproto"]):
        import smtpproto  # noqa: F401

from smtpproto import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthAborted,
    AuthCredentials,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    DataChunk,
    DataComplete,
    DataRejected,
    Ehlo,
    Event,
    Helo,
    ProxyHeader,
    Quit,
    ServerConnection,
    ServerState,
    StartTLS,
    parse_status,
)

NOTIFICATIONS = (Bdat, DataChunk, DataRejected, AuthAborted, ConnectionClosed)

HEADER_SIZE = 5
MAX_REPLY_CHOICES = 32
MAX_READ_SIZES = 16
MAX_STREAM = 64 * 1024

# A reply line: code, then "-" or " " and text, or the bare code (Reply.to_bytes
# strips the space of an empty last line).
REPLY_LINE = re.compile(rb"([2-5]\d\d)(?:([ -])([^\r\n]*))?\Z")

PROXY_V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n"


@dataclass(frozen=True)
class Options:
    """Engine options and harness switches decoded from the option bits."""

    engine: dict[str, Any]
    valid_prefix: bool
    interrupt: str | None
    differential: bool

    @classmethod
    def from_bits(cls, bits: int) -> Options:
        def bit(n: int) -> bool:
            return bool(bits >> n & 1)

        policy = ("reject", "normalize", "allow", "reject")[bits >> 2 & 3]
        engine: dict[str, Any] = {
            "lmtp": bit(0),
            "enable_smtputf8": bit(1),
            "bare_line_ending": policy,
            "proxy_protocol": bit(4),
            "tls_available": bit(6),
            "require_starttls": bit(7),
            "auth_required": bit(8),
            "reject_unsynchronized": bit(9),
            "enable_chunking": not bit(10),
            "max_message_size": 2000 if bit(11) else 33_554_432,
            "enable_dsn": bit(12),
            "max_errors": None if bit(13) else 10,
            "enable_enhanced_status_codes": not bit(14),
            "enable_pipelining": not bit(15),
            "max_text_line": None if bit(16) else 1000,
            "tls_active": bit(18),
            "max_recipients": 2 if bit(21) else 1000,
            "enable_8bitmime": not bit(22),
            "enable_help": not bit(23),
        }
        if bit(5):
            engine["auth_mechanisms"] = ("PLAIN", "LOGIN", "CRAM-MD5", "XTEST")
            engine["auth_require_tls"] = False
        interrupt = None
        if bit(19):
            interrupt = "timeout" if bit(20) else "shutdown"
        # Bytes after an accepted STARTTLS are dropped, which depends on where
        # the reads end. The CRAM-MD5 challenge is random, and
        # reject_unsynchronized looks at what is buffered. Those configurations
        # skip the comparison.
        differential = (
            bit(17) and interrupt is None and not bit(6) and not bit(5) and not bit(9)
        )
        return cls(
            engine=engine,
            valid_prefix=bit(24),
            interrupt=interrupt,
            differential=differential,
        )


@dataclass(frozen=True)
class FuzzInput:
    """One decoded fuzz input."""

    options: Options
    interrupt_at: int
    reply_choices: bytes
    read_sizes: tuple[int, ...]
    stream: bytes

    @classmethod
    def parse(cls, data: bytes) -> FuzzInput:
        header = data[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0")
        bits = int.from_bytes(header[:3], "little") | (header[4] >> 5 & 1) << 24
        rest = data[HEADER_SIZE:]
        reply_count = header[4] % MAX_REPLY_CHOICES
        reply_choices = rest[:reply_count]
        rest = rest[reply_count:]
        size_count = rest[0] % MAX_READ_SIZES if rest else 0
        sizes = tuple(b + 1 for b in rest[1 : 1 + size_count])
        stream = rest[1 + size_count :][:MAX_STREAM]
        options = Options.from_bits(bits)
        if options.valid_prefix:
            stream = session_prefix(options.engine) + stream
        return cls(options, header[3], reply_choices, sizes, stream)


def encode_input(
    bits: int,
    stream: bytes,
    *,
    reply_choices: bytes = b"",
    read_sizes: bytes = b"",
    interrupt_at: int = 0,
) -> bytes:
    """Build a fuzz input; the inverse of FuzzInput.parse for the seed corpus."""
    header = (bits & 0xFFFFFF).to_bytes(3, "little") + bytes(
        [interrupt_at, len(reply_choices) | (bits >> 24 & 1) << 5]
    )
    return header + reply_choices + bytes([len(read_sizes)]) + read_sizes + stream


def session_prefix(engine: dict[str, Any]) -> bytes:
    """Return a valid opening up to DATA, so random bytes land in message content."""
    hello = b"LHLO" if engine["lmtp"] else b"EHLO"
    prefix = (
        hello + b" client.example\r\n"
        b"MAIL FROM:<sender@example.com>\r\n"
        b"RCPT TO:<one@example.com>\r\n"
        b"DATA\r\n"
    )
    if engine["proxy_protocol"]:
        prefix = PROXY_V1 + prefix
    return prefix


# ---------------------------------------------------------------- replies


GENERIC_CODES = (250, 251, 252, 450, 451, 452, 500, 502, 550, 551, 552, 553, 554, 421)
CODES_BY_EVENT: dict[type[Event], tuple[int, ...]] = {
    Data: (354, 354, 451, 554, 421),
    StartTLS: (220, 454, 501, 421),
    ProxyHeader: (220, 220, 554, 421),
    DataComplete: (250, 550, 452, 451, 421),
    AuthCredentials: (235, 535, 454, 421),
    Auth: (235, 535, 454, 421),
    AuthResponse: (235, 535, 454, 421),
    Helo: (250, 550, 421),
    Ehlo: (250, 550, 421),
}
GREETING_CODES = (220, 220, 220, 554, 421)


class Responder:
    """Answer events with accept() or a valid reply picked by the fuzzer."""

    def __init__(self, choices: bytes) -> None:
        self.choices = choices or b"\0"
        self.index = 0

    def next_choice(self) -> int:
        choice = self.choices[self.index % len(self.choices)]
        self.index += 1
        return choice

    def greet(self, conn: ServerConnection) -> None:
        choice = self.next_choice()
        if choice % 4 == 0:
            conn.accept()
        else:
            code = GREETING_CODES[choice // 4 % len(GREETING_CODES)]
            conn.send_reply(code, "mx.example.com ready")

    def answer(self, conn: ServerConnection, event: Event) -> None:
        choice = self.next_choice()
        if isinstance(event, (Auth, AuthResponse)) and choice & 0x40:
            conn.send_challenge(bytes([choice]) * (choice % 5))
            return
        if isinstance(event, Quit) or choice % 4 == 0:
            conn.accept()
            return
        codes = CODES_BY_EVENT.get(type(event), GENERIC_CODES)
        code = codes[choice // 4 % len(codes)]
        form = choice >> 6 & 3
        if form == 0:
            conn.send_reply(code)
        elif form == 1:
            conn.send_reply(code, ["first line", "second line"])
        elif form == 2 and code != 354:
            conn.send_reply(code, "with enhanced code", enhanced=f"{code // 100}.1.1")
        else:
            conn.send_reply_object(parse_status(f"{code} {code // 100}.0.0 parsed"))


# ---------------------------------------------------------------- checks


def check_replies(out: bytes) -> None:
    """Fail unless ``out`` is a sequence of complete, well-formed reply lines."""
    if not out:
        return
    assert out.endswith(b"\r\n"), f"reply bytes do not end with CRLF: {out[-80:]!r}"
    lines = out[:-2].split(b"\r\n")
    is_opencode = None
    for line in lines:
        match = REPLY_LINE.match(line)
        assert match is not None, f"malformed reply line {line[:120]!r}"
        code = match.group(1)
        if is_opencode is not None:
            assert code == is_opencode, f"multi-line reply changes code at {line!r}"
        if code == b"334":
            assert match.group(2) == b" ", f"334 reply is not one line: {line!r}"
            text = match.group(3) or b""
            base64.b64decode(text, validate=True)
        is_opencode = code if match.group(2) == b"-" else None
    assert is_opencode is None, f"multi-line reply is cut off: {lines[-1]!r}"


def split_stream(stream: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    """Cut ``stream`` into reads of the given sizes, cycling through them."""
    if not sizes:
        return [stream] if stream else []
    pieces = []
    position = 0
    index = 0
    while position < len(stream):
        size = sizes[index % len(sizes)]
        pieces.append(stream[position : position + size])
        position += size
        index += 1
    return pieces


@dataclass
class Transcript:
    """What one session produced: events and reply bytes."""

    events: list[Event]
    output: bytes


def run_session(case: FuzzInput, pieces: list[bytes]) -> Transcript:
    """Drive one connection through ``pieces`` and return what it produced."""
    options = case.options
    conn = ServerConnection("mx.example.com", **options.engine)
    responder = Responder(case.reply_choices)
    events: list[Event] = []
    output = bytearray()
    replies_seen = 0

    if not options.engine["proxy_protocol"]:
        responder.greet(conn)
    output += conn.data_to_send()

    def drain() -> bool:
        """Take events until the engine needs data; return False once closed."""
        nonlocal replies_seen
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return True
            if event is PAUSED:
                assert conn.state is ServerState.TLS_HANDSHAKE, (
                    f"PAUSED with nothing pending in state {conn.state.name}"
                )
                conn.tls_established()
                continue
            events.append(event)
            if isinstance(event, ConnectionClosed):
                assert conn.closed, "ConnectionClosed while the engine is open"
                return False
            if isinstance(event, NOTIFICATIONS):
                continue
            if options.interrupt is not None and replies_seen == case.interrupt_at:
                getattr(conn, options.interrupt)()
                if conn.closed:
                    continue
            replies_seen += 1
            responder.answer(conn, event)
            while conn.pending is event:  # LMTP: one reply per recipient
                responder.answer(conn, event)

    is_open = drain()
    for piece in pieces:
        if not is_open:
            break
        conn.receive_data(piece)
        is_open = drain()
        output += conn.data_to_send()
    if is_open:
        conn.receive_data(b"")
        is_open = drain()
    assert not is_open, "the engine did not close after the peer closed"
    output += conn.data_to_send()
    assert conn.next_event() == ConnectionClosed(), "closed engine returned an event"
    return Transcript(events, bytes(output))


def canonical_events(events: list[Event]) -> list[Event]:
    """Replace the DataChunk events of each message by one chunk of its content.

    Chunks of a message that never completes are dropped: a read boundary can
    let the engine deliver a piece before it sees the error that rejects the
    message, and DataRejected or ConnectionClosed tells the application to
    discard what it collected.
    """
    result: list[Event] = []
    content = bytearray()
    for event in events:
        if isinstance(event, DataChunk):
            content += event.data
            continue
        if isinstance(event, DataComplete):
            result.append(DataChunk(data=bytes(content)))
        if not isinstance(event, Bdat):
            content.clear()
        result.append(event)
    return result


# (exception type, message fragment) of crashes that are pinned as strict
# xfails in tests/core/test_fuzz_regressions.py, so that a long run is not
# stopped by a bug that is already reported. Empty while no bug is open.
KNOWN_ENGINE_BUGS: list[tuple[type[BaseException], str]] = []


def is_known_engine_bug(error: BaseException) -> bool:
    """Recognize a crash listed in KNOWN_ENGINE_BUGS; FUZZ_STRICT=1 disables this."""
    if os.environ.get("FUZZ_STRICT") == "1":
        return False
    return any(
        isinstance(error, type_) and fragment in str(error)
        for type_, fragment in KNOWN_ENGINE_BUGS
    )


def check_line_endings(case: FuzzInput, events: list[Event]) -> None:
    """Fail if a message with a bare CR or LF completes under reject or normalize.

    Under "reject" such a message must end in DataRejected, and under
    "normalize" every bare CR and LF must have become CRLF. This holds for
    DATA and for BDAT content alike.
    """
    if case.options.engine["bare_line_ending"] == "allow":
        return
    content = bytearray()
    in_message = False
    for event in events:
        if isinstance(event, Data) or (isinstance(event, Bdat) and not in_message):
            content.clear()
            in_message = True
        elif isinstance(event, DataChunk):
            content += event.data
        elif isinstance(event, (DataComplete, DataRejected)):
            in_message = False
            if isinstance(event, DataComplete):
                assert not has_bare_line_ending(content), (
                    f"message with a bare CR or LF completed: {bytes(content[:200])!r}"
                )


def has_bare_line_ending(content: bytes | bytearray) -> bool:
    return bool(re.search(rb"\r(?!\n)|(?<!\r)\n", content))


def run_input(data: bytes) -> None:
    """Run one fuzz input; raise AssertionError or the engine's exception on a bug."""
    case = FuzzInput.parse(data)
    pieces = split_stream(case.stream, case.read_sizes)
    try:
        split = run_session(case, pieces)
        check_replies(split.output)
        check_line_endings(case, split.events)
        if case.options.differential:
            whole = run_session(case, [case.stream] if case.stream else [])
            assert canonical_events(whole.events) == canonical_events(split.events), (
                "events differ between one read and several reads"
            )
            assert whole.output == split.output, (
                "replies differ between one read and several reads"
            )
    except AssertionError:
        raise
    except Exception as error:
        if is_known_engine_bug(error):
            return
        raise


# ---------------------------------------------------------------- seed corpus


SEED_DIALOGS: dict[str, bytes] = {
    "transaction": (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"DATA\r\n"
        b"Subject: hi\r\n\r\n..dot\r\n\r\nbody\r\n.\r\n"
        b"QUIT\r\n"
    ),
    "helo": (
        b"HELO client.example\r\n"
        b"MAIL FROM:<>\r\n"
        b"RCPT TO:<postmaster>\r\n"
        b"DATA\r\n"
        b"x\r\n.\r\n"
        b"RSET\r\nNOOP\r\nVRFY someone\r\nHELP\r\nHELP MAIL\r\nEXPN list\r\nQUIT\r\n"
    ),
    "bdat": (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"BDAT 5\r\nhello"
        b"BDAT 7 LAST\r\n world\n"
        b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\n"
        b"BDAT 0 LAST\r\nQUIT\r\n"
    ),
    "auth_plain": (
        b"EHLO client.example\r\n"
        b"AUTH PLAIN " + base64.b64encode(b"\0user\0secret") + b"\r\n"
        b"AUTH PLAIN\r\n" + base64.b64encode(b"\0user\0secret") + b"\r\n"
        b"QUIT\r\n"
    ),
    "auth_login": (
        b"EHLO client.example\r\n"
        b"AUTH LOGIN\r\n"
        + base64.b64encode(b"user")
        + b"\r\n"
        + base64.b64encode(b"secret")
        + b"\r\n"
        b"AUTH CRAM-MD5\r\n" + base64.b64encode(b"user " + b"0" * 32) + b"\r\n"
        b"AUTH XTEST =\r\n*\r\nQUIT\r\n"
    ),
    "starttls": (
        b"EHLO client.example\r\nSTARTTLS\r\nEHLO client.example\r\n"
        b"MAIL FROM:<a@example.com>\r\nQUIT\r\n"
    ),
    "errors": (
        b"MAIL FROM:<a@example.com>\r\nEHLO\r\nEHLO [1.2.3.4]\r\nRCPT TO:<x>\r\n"
        b"MAIL FROM:a@example.com\r\nMAIL FROM:<a@@b>\r\nDATA\r\nBDAT x\r\n"
        b"GET / HTTP/1.0\r\n"
    ),
    "dsn": (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<a@example.com> RET=HDRS ENVID=abc+2B SMTPUTF8\r\n"
        b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com\r\n"
        b"RCPT TO:<\xc3\xa9@example.com>\r\n"
        b"DATA\r\n.\r\n"
    ),
}


def make_corpus(directory: Path) -> int:
    """Write seed inputs into ``directory``; return how many were written."""
    directory.mkdir(parents=True, exist_ok=True)
    configurations = {
        "plain": 0,
        "lmtp": 1 << 0,
        "utf8": 1 << 1,
        "normalize": 1 << 2,
        "allow": 2 << 2,
        "auth": 1 << 5,
        "tls": 1 << 6,
        "strict": (1 << 7) | (1 << 8) | (1 << 9),
        "differential": 1 << 17,
        "differential_allow": (1 << 17) | (2 << 2),
        "shutdown": 1 << 19,
        "small": (1 << 11) | (1 << 21),
    }
    count = 0
    for dialog_name, dialog in SEED_DIALOGS.items():
        for config_name, bits in configurations.items():
            if dialog_name == "transaction" and config_name == "lmtp":
                dialog = dialog.replace(b"EHLO", b"LHLO")
            for sizes_name, sizes in (("whole", b""), ("split", b"\x00\x06\x40")):
                seed = encode_input(
                    bits,
                    dialog,
                    reply_choices=bytes([0, 0, 0, 0, 0x85, 0, 0, 0x0A]),
                    read_sizes=sizes,
                    interrupt_at=3,
                )
                name = f"{dialog_name}-{config_name}-{sizes_name}"
                (directory / name).write_bytes(seed)
                count += 1
    proxy = encode_input(1 << 4, PROXY_V1 + SEED_DIALOGS["transaction"])
    (directory / "proxy-v1").write_bytes(proxy)
    random_after_data = encode_input(1 << 24, b"\r\n.\n.\r\r\n.\r\n\x00.\r\n")
    (directory / "after-data").write_bytes(random_after_data)
    return count + 2


def test_one_input(data: bytes) -> None:
    run_input(data)


def main() -> None:
    if "--make-corpus" in sys.argv:
        directory = Path(__file__).parent / "corpus"
        count = make_corpus(directory)
        print(f"wrote {count} seed inputs to {directory}")
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
