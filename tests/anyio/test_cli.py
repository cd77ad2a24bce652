"""smtpproto-serve: argument handling and the program run as a subprocess."""

from __future__ import annotations

import importlib.util
import os
import re
import selectors
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtpproto_anyio import __version__
from smtpproto_anyio._cli import UsageError, main, parse_address

BACKENDS = ["asyncio", "trio"]
MESSAGE = b"From: a@x.test\r\nSubject: cli test\r\n\r\nHello from the CLI test\r\n"
LISTENING = re.compile(r"smtpproto-serve listening on 127\.0\.0\.1:(\d+)(.*)")


@dataclass
class CLIProcess:
    process: subprocess.Popen[str]
    port: int
    banner: str
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, signum: int = signal.SIGTERM, seconds: float = 10) -> float:
        """Send ``signum`` and wait for the exit; return the time it took."""
        start = time.monotonic()
        self.process.send_signal(signum)
        self.stdout, stderr = self.process.communicate(timeout=seconds)
        self.stderr += stderr
        self.returncode = self.process.returncode
        return time.monotonic() - start


def read_banner(process: subprocess.Popen[str], seconds: float = 15) -> tuple[str, str]:
    """Read standard error up to the ``listening on`` line; return it and the rest."""
    assert process.stderr is not None
    # Raw reads: a buffered readline() could take more lines than the selector sees.
    descriptor = process.stderr.fileno()
    received = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            chunk = os.read(descriptor, 65536)
            if not chunk:
                break
            received += chunk
            text = received.decode(errors="replace")
            for line in text.splitlines(keepends=True):
                if LISTENING.match(line) and line.endswith("\n"):
                    earlier = text[: text.index(line)]
                    return line.strip(), earlier + text[text.index(line) + len(line) :]
    process.kill()
    _, rest = process.communicate()
    raise AssertionError(
        f"smtpproto-serve did not start: {received.decode(errors='replace')}{rest}"
    )


@contextmanager
def run_cli(*args: str, setuid: bool = False) -> Iterator[CLIProcess]:
    command = [sys.executable, "-m", "smtpproto_anyio", "-l", "127.0.0.1:0", *args]
    if not setuid:
        command.insert(3, "-n")
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner, earlier = read_banner(process)
        match = LISTENING.match(banner)
        assert match is not None
        cli = CLIProcess(process, int(match.group(1)), banner, stderr=earlier)
        yield cli
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def send_message(port: int, recipients: tuple[str, ...] = ("b@x.test",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.sendmail("a@x.test", list(recipients), MESSAGE)


# ---------------------------------------------------------------- subprocess runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_prints_message_and_stops(backend: str) -> None:
    with run_cli("--backend", backend) as cli:
        assert (
            cli.banner
            == f"smtpproto-serve listening on 127.0.0.1:{cli.port} ({backend})"
        )
        send_message(cli.port)
        elapsed = cli.stop(signal.SIGTERM)
    assert cli.returncode == 0, cli.stderr
    assert elapsed < 5
    assert "Traceback" not in cli.stderr
    assert "---------- MESSAGE FOLLOWS ----------" in cli.stdout
    assert "Hello from the CLI test" in cli.stdout
    assert "Subject: cli test" in cli.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_ctrl_c_exits_cleanly(backend: str) -> None:
    with run_cli("--backend", backend) as cli:
        with smtplib.SMTP("127.0.0.1", cli.port, timeout=5) as client:
            assert client.noop()[0] == 250
        elapsed = cli.stop(signal.SIGINT)
    assert cli.returncode == 0, cli.stderr
    assert elapsed < 5
    assert "Traceback" not in cli.stderr
    assert "KeyboardInterrupt" not in cli.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
)
def test_cli_uvloop() -> None:
    with run_cli("--uvloop") as cli:
        assert cli.banner.endswith("(asyncio with uvloop)")
        send_message(cli.port)
        cli.stop()
    assert cli.returncode == 0, cli.stderr
    assert "Hello from the CLI test" in cli.stdout


def test_cli_stop_sends_421_to_idle_client() -> None:
    with run_cli() as cli:
        with socket.create_connection(("127.0.0.1", cli.port), timeout=5) as sock:
            assert sock.recv(1024).startswith(b"220 ")
            cli.process.send_signal(signal.SIGTERM)
            assert sock.recv(1024).startswith(b"421 4.3.2 ")
        cli.stop()
    assert cli.returncode == 0


def test_cli_debug_logging() -> None:
    with run_cli("-dd") as cli:
        send_message(cli.port)
        cli.stop()
    assert "smtpproto.server: connection from 127.0.0.1:" in cli.stderr
    assert "accepted:" in cli.stderr
    assert "smtpproto.wire:" in cli.stderr
    assert "MailFrom(address='a@x.test'" in cli.stderr


def test_cli_no_logging_by_default() -> None:
    with run_cli() as cli:
        send_message(cli.port)
        cli.stop()
    assert "smtpproto.server" not in cli.stderr


def test_cli_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with run_cli("--maildir", str(maildir)) as cli:
        send_message(cli.port)
        cli.stop()
    assert cli.returncode == 0, cli.stderr
    stored = list((maildir / "new").iterdir())
    assert len(stored) == 1
    assert b"Hello from the CLI test" in stored[0].read_bytes()


def test_cli_handler_class_with_arguments() -> None:
    with run_cli("-c", "smtpproto_anyio.handlers.Debugging", "stderr") as cli:
        send_message(cli.port)
        cli.stop()
    assert "Hello from the CLI test" in cli.stderr
    assert "Hello from the CLI test" not in cli.stdout


def test_cli_size_and_smtputf8() -> None:
    with run_cli("-s", "1000", "-u") as cli:
        with smtplib.SMTP("127.0.0.1", cli.port, timeout=5) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "1000"
            assert client.has_extn("smtputf8")
        cli.stop()


def test_cli_default_size() -> None:
    with run_cli() as cli:
        with smtplib.SMTP("127.0.0.1", cli.port, timeout=5) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "33554432"
            assert not client.has_extn("smtputf8")
        cli.stop()


def test_cli_lmtp() -> None:
    with run_cli("--lmtp", "-c", "smtpproto_anyio.handlers.Sink") as cli:
        # smtplib.LMTP.sendmail() reads one reply after the message, not one per
        # recipient, so the dialogue is spelled out here.
        with smtplib.LMTP("127.0.0.1", cli.port, timeout=5) as client:
            assert client.ehlo()[0] == 250
            assert client.mail("a@x.test")[0] == 250
            assert client.rcpt("b@x.test")[0] == 250
            assert client.rcpt("c@x.test")[0] == 250
            assert client.data(MESSAGE)[0] == 250
            code, text = client.getreply()
            assert code == 250
            assert b"<c@x.test>" in text
        cli.stop()
    assert cli.returncode == 0


def test_cli_starttls_required(tls_files: Any) -> None:
    with run_cli(
        "--tlscert", str(tls_files.cert_file), "--tlskey", str(tls_files.key_file)
    ) as cli:
        with smtplib.SMTP("127.0.0.1", cli.port, timeout=5) as client:
            client.ehlo()
            assert client.mail("a@x.test")[0] == 530
            client.starttls(context=tls_files.client_context())
            client.ehlo()
            assert client.mail("a@x.test")[0] == 250
        cli.stop()
    assert cli.returncode == 0


def test_cli_smtps_and_auth_user(tls_files: Any) -> None:
    with run_cli(
        "--smtpscert",
        str(tls_files.cert_file),
        "--smtpskey",
        str(tls_files.key_file),
        "--smtps-listen",
        "127.0.0.1:0",
        "--auth-user",
        "alice:wonderland",
    ) as cli:
        match = re.search(r"127\.0\.0\.1:(\d+) \(SMTPS\)", cli.banner)
        assert match is not None
        smtps_port = int(match.group(1))
        assert smtps_port != cli.port
        with smtplib.SMTP_SSL(
            "localhost", smtps_port, timeout=5, context=tls_files.client_context()
        ) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("alice", "wrong")
            client.login("alice", "wonderland")
            client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
        cli.stop()
    assert "Hello from the CLI test" in cli.stdout


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to switch users"
)
def test_cli_switches_to_nobody_as_root() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    with run_cli("-c", "smtpproto_anyio.handlers.Sink", setuid=True) as cli:
        status = Path(f"/proc/{cli.process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        send_message(cli.port)
        cli.stop()
    assert cli.returncode == 0


@pytest.mark.skipif(shutil.which("smtpproto-serve") is None, reason="not installed")
def test_console_script_version() -> None:
    result = subprocess.run(
        ["smtpproto-serve", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"smtpproto-serve {__version__}"


# ---------------------------------------------------------------- argument errors


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpproto_anyio", "-n", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "127.0.0.1:99999"], "invalid port number '99999'"),
        (["-s", "-5"], "--size must be 0 or more"),
        (["--tlscert", "/nonexistent.pem"], "--tlscert and --tlskey"),
        (["--tlscert", "/nonexistent.pem", "--tlskey", "/x.pem"], "file not found"),
        (["-c", "nosuchmodule.Handler"], "cannot import module 'nosuchmodule'"),
        (["-c", "smtpproto_anyio.handlers.Nope"], "has no handler class 'Nope'"),
        (["-c", "collections.OrderedDict", "x"], "takes no arguments"),
        (["--backend", "trio", "--uvloop"], "--uvloop works only with"),
        (["--auth-user", "nocolon"], "USER:PASSWORD"),
        (["--maildir", "/tmp/x", "-c", "a.B"], "--maildir cannot be combined"),
        (["--smtps-listen", "127.0.0.1:0"], "--smtps-listen needs --smtpscert"),
    ],
    ids=[
        "port",
        "size",
        "cert-without-key",
        "missing-cert",
        "module",
        "class",
        "class-args",
        "uvloop-trio",
        "auth-user",
        "maildir-and-class",
        "smtps-listen-alone",
    ],
)
def test_cli_usage_errors(args: list[str], message: str) -> None:
    result = run_main(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_main("-l", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_explains_units(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "maximum message size in bytes" in text
    assert "33554432" in text
    assert "--auth-user" in text
    assert "for testing" in text


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"smtpproto-serve {__version__}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("example.test", ("example.test", 8025)),
        (":2525", ("127.0.0.1", 2525)),
        ("[::1]:25", ("::1", 25)),
        ("[::1]", ("::1", 8025)),
        ("::1", ("::1", 8025)),
        ("", ("127.0.0.1", 8025)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, "127.0.0.1", 8025) == expected


@pytest.mark.parametrize("text", ["host:port", "host:70000", "[::1", "[::1]x"])
def test_parse_address_invalid(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text, "127.0.0.1", 8025)
