"""Hypothesis stateful fuzzing of a live server over a loopback socket.

Each example opens a TCP connection to a server on 127.0.0.1 and sends a random
sequence of valid, invalid and random-byte commands, pipelined or one at a
time. After every step it checks that the server's output so far is
well-formed SMTP reply lines. When the server closes the connection (QUIT, 421
after too many errors), the next step reconnects. After each example a fresh
connection must still get the 220 greeting and answer EHLO and QUIT.

Two servers can be tested:

    python fuzz/live_server_fuzz.py --server controller --examples 200
    python fuzz/live_server_fuzz.py --server cli --time 60

``controller`` runs ``smtpproto_anyio.Controller`` in this process and fails
on any ERROR record the server logs (an unexpected exception in a session).
``cli`` starts ``smtpproto-serve`` with the Sink handler and fails if its
standard error shows a traceback.
"""

from __future__ import annotations

import argparse
import base64
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

HOST = "127.0.0.1"
# A reply line: code, then "-" or " " and text, or the bare code.
REPLY_LINE = re.compile(rb"([2-5]\d\d)(?:([ -])([^\r\n]*))?\Z")
REPLY_WAIT = 2.0  # seconds to wait for a reply that must come
IDLE_WAIT = 0.02  # seconds of silence that end a read when no reply must come

COMMANDS = [
    b"EHLO client.example",
    b"HELO client.example",
    b"EHLO",
    b"EHLO [999.1.1.1]",
    b"MAIL FROM:<sender@example.com>",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<\xc3\xa9@example.com> SMTPUTF8",
    b"MAIL FROM:sender@example.com",
    b"MAIL FROM:<a@example.com> SIZE=99999999999",
    b"RCPT TO:<rcpt@example.com>",
    b"RCPT TO:<postmaster>",
    b"RCPT TO:<reject@example.com>",
    b"RCPT TO:<>",
    b"RCPT TO:<a b@example.com>",
    b"DATA",
    b"DATA now",
    b"BDAT 0",
    b"BDAT 5 LAST",
    b"BDAT x",
    b"RSET",
    b"NOOP",
    b"NOOP with argument",
    b"VRFY someone",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"STARTTLS",
    b"AUTH PLAIN " + base64.b64encode(b"\0user\0password"),
    b"AUTH LOGIN",
    b"*",
    b"XUNKNOWN argument",
    b"",
    b"NOOP " + b"x" * 2000,
    b"\x00NOOP",
    b"QUIT",
]


def check_output(output: bytes, *, complete: bool) -> None:
    """Fail unless ``output`` is well-formed reply lines.

    With ``complete`` false, a last line without CRLF (still arriving) and an
    unfinished multi-line reply are allowed.
    """
    lines = output.split(b"\r\n")
    tail = lines.pop()
    if complete:
        assert tail == b"", f"output ends inside a line: {tail[-80:]!r}"
    open_code = None
    for line in lines:
        match = REPLY_LINE.match(line)
        assert match is not None, f"malformed reply line {line[:120]!r}"
        code = match.group(1)
        if open_code is not None:
            assert code == open_code, f"multi-line reply changes code at {line!r}"
        if code == b"334":
            base64.b64decode(match.group(3) or b"", validate=True)
        open_code = code if match.group(2) == b"-" else None
    if complete:
        assert open_code is None, "a multi-line reply is cut off"


class Client:
    """One client connection with the server's output collected."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=REPLY_WAIT)
        self.output = bytearray()
        self.closed_by_server = False

    def read(self, wait: float) -> None:
        """Read until ``wait`` seconds pass with no data, or until EOF."""
        self.sock.settimeout(wait)
        while not self.closed_by_server:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed_by_server = True
                return
            self.output += data
            self.sock.settimeout(IDLE_WAIT)

    def send(self, data: bytes, *, reply_expected: bool) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed_by_server = True
            return
        self.read(REPLY_WAIT if reply_expected else IDLE_WAIT)

    def close(self) -> None:
        self.sock.close()


def check_fresh_connection(port: int) -> None:
    """Fail unless a new connection gets a greeting and replies to EHLO and QUIT."""
    client = Client(port)
    client.read(REPLY_WAIT)
    assert client.output.startswith(b"220"), bytes(client.output[:80])
    client.send(b"EHLO fresh.example\r\nQUIT\r\n", reply_expected=True)
    while not client.closed_by_server:
        client.read(REPLY_WAIT)
    client.close()
    replies = bytes(client.output).split(b"\r\n")
    assert any(line.startswith(b"250 ") for line in replies), client.output
    assert any(line.startswith(b"221") for line in replies), client.output


class Counters:
    """Totals over all examples, printed by run()."""

    examples = 0
    steps = 0
    connections = 0
    octets_sent = 0


class LiveSession(RuleBasedStateMachine):
    """Random SMTP traffic on one connection at a time, reconnecting as needed."""

    port = 0  # set by run() once the server listens

    def __init__(self) -> None:
        super().__init__()
        Counters.examples += 1
        self.client: Client | None = None

    def connected(self) -> Client:
        client = self.client
        if client is None or client.closed_by_server:
            if client is not None:
                check_output(bytes(client.output), complete=True)
                client.close()
            client = Client(self.port)
            client.read(REPLY_WAIT)
            assert client.output.startswith(b"220"), bytes(client.output[:80])
            self.client = client
            Counters.connections += 1
        return client

    def send(self, data: bytes, *, reply_expected: bool) -> None:
        Counters.steps += 1
        Counters.octets_sent += len(data)
        self.connected().send(data, reply_expected=reply_expected)

    @rule(command=st.sampled_from(COMMANDS))
    def command(self, command: bytes) -> None:
        self.send(command + b"\r\n", reply_expected=False)

    @rule(commands=st.lists(st.sampled_from(COMMANDS), min_size=2, max_size=8))
    def pipelined(self, commands: list[bytes]) -> None:
        self.send(b"".join(c + b"\r\n" for c in commands), reply_expected=False)

    @rule(
        lines=st.lists(
            st.sampled_from([b"", b".", b"..", b".x", b"Subject: x", b"\xff\x00"]),
            max_size=6,
        )
    )
    def message(self, lines: list[bytes]) -> None:
        self.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
            reply_expected=True,
        )
        stuffed = b"".join(
            (b"." if x[:1] == b"." else b"") + x + b"\r\n" for x in lines
        )
        self.send(stuffed + b".\r\n", reply_expected=True)

    @rule(data=st.binary(max_size=300))
    def random_bytes(self, data: bytes) -> None:
        self.send(data, reply_expected=False)

    @rule(size=st.integers(0, 40), data=st.binary(max_size=40))
    def bdat(self, size: int, data: bytes) -> None:
        self.send(f"BDAT {size}\r\n".encode() + data, reply_expected=False)

    @rule()
    def reconnect(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @invariant()
    def output_well_formed(self) -> None:
        if self.client is not None:
            check_output(bytes(self.client.output), complete=False)

    def teardown(self) -> None:
        if self.client is not None:
            self.client.read(IDLE_WAIT)
            check_output(bytes(self.client.output), complete=False)
            self.client.close()
        check_fresh_connection(self.port)


# ---------------------------------------------------------------- servers


class ErrorRecords(logging.Handler):
    """Collect the ERROR records that the server logs."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ControllerServer:
    """smtpproto_anyio.Controller with a handler that rejects some commands."""

    def __init__(self) -> None:
        from smtpproto_anyio import Controller

        self.errors = ErrorRecords()
        logging.getLogger("smtpproto").addHandler(self.errors)
        self.controller = Controller(
            RejectingHandler(), hostname=HOST, port=0, server_hostname="mx.test"
        )

    def start(self) -> int:
        self.controller.start()
        return self.controller.port

    def check(self) -> None:
        messages = [r.getMessage() for r in self.errors.records]
        assert not messages, f"the server logged errors: {messages[:3]}"

    def stop(self) -> None:
        self.controller.stop()
        logging.getLogger("smtpproto").removeHandler(self.errors)


class RejectingHandler:
    """Reject the recipient <reject@example.com> and every third message."""

    def __init__(self) -> None:
        self.messages = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == "reject@example.com":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages += 1
        if self.messages % 3 == 0:
            return "451 4.3.0 Try again later"
        return "250 OK"


class CliServer:
    """smtpproto-serve in a child process, listening on a free loopback port."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []

    def start(self) -> int:
        command = [
            "smtpproto-serve",
            "-n",
            "-c",
            "smtpproto_anyio.handlers.Sink",
            "-l",
            f"{HOST}:0",
        ]
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        assert self.process.stderr is not None
        first = self.process.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
        if match is None:
            self.stop()
            raise RuntimeError(f"smtpproto-serve did not start: {first!r}")
        threading.Thread(target=self._collect_stderr, daemon=True).start()
        return int(match.group(1))

    def _collect_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def check(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, "smtpproto-serve exited"
        text = "".join(self.stderr_lines)
        assert "Traceback" not in text, text[-2000:]
        assert "unexpected error" not in text, text[-2000:]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


# ---------------------------------------------------------------- runner


def run(server_kind: str, examples: int, seconds: float | None, steps: int) -> int:
    """Run batches of examples until ``examples`` or ``seconds`` is reached."""
    server: ControllerServer | CliServer
    server = ControllerServer() if server_kind == "controller" else CliServer()
    LiveSession.port = server.start()
    print(f"testing {server_kind} server on {HOST}:{LiveSession.port}", flush=True)
    started = time.monotonic()
    batch = 5
    try:
        while Counters.examples < examples:
            if seconds is not None and time.monotonic() - started > seconds:
                break
            LiveSession.TestCase.settings = settings(
                max_examples=min(batch, examples - Counters.examples),
                stateful_step_count=steps,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            LiveSession.TestCase("runTest").runTest()
            server.check()
            elapsed = time.monotonic() - started
            print(
                f"examples {Counters.examples}  steps {Counters.steps}  "
                f"connections {Counters.connections}  {elapsed:.0f} s",
                flush=True,
            )
    finally:
        server.stop()
    print(
        f"done: {Counters.examples} examples, {Counters.steps} steps, "
        f"{Counters.connections} connections, {Counters.octets_sent} octets sent, "
        "no failures",
        flush=True,
    )
    return Counters.examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--server",
        choices=["controller", "cli"],
        default="controller",
        help="server to test (default: controller)",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=200,
        help="number of Hypothesis examples (default: 200)",
    )
    parser.add_argument(
        "--time",
        type=float,
        default=None,
        help="stop starting new batches after this many seconds",
    )
    parser.add_argument(
        "--steps", type=int, default=30, help="max steps per example (default: 30)"
    )
    options = parser.parse_args()
    run(options.server, options.examples, options.time, options.steps)


if __name__ == "__main__":
    sys.exit(main())
