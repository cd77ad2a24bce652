"""swaks against our server: STARTTLS, AUTH PLAIN and LOGIN, PIPELINING, LMTP, SMTPS.

swaks (Debian package ``swaks``) writes its whole dialogue to standard output,
which the assertion messages include.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from interop_support import (
    Recorder,
    StartServer,
    TLSFiles,
    require_tool,
    run_tool,
)

from smtpproto_anyio import AuthResult, LoginPassword

# Message text for swaks --data. swaks replaces %TOKENS% and sends each LF as
# CRLF, so the text has no percent sign. The dot lines test dot-stuffing: swaks
# doubles a leading dot and our server must remove it again. The file is written
# without the last LF because swaks 20201014 ends the content with CRLF itself
# and sends a trailing LF as one more empty line.
MESSAGE_TEXT = (
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.com>\n"
    "Subject: interop test\n"
    "\n"
    "first line\n"
    ".a line with a leading dot\n"
    "..two dots\n"
    ".\n"
    "last line\n"
)
EXPECTED_CONTENT = MESSAGE_TEXT.replace("\n", "\r\n").encode("ascii")

USER = "alice"
PASSWORD = "correct horse"


def check_password(
    server: object,
    session: object,
    envelope: object,
    mechanism: str,
    credentials: LoginPassword,
) -> AuthResult:
    accepted = credentials == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=accepted, auth_data=credentials.login)


@pytest.fixture
def swaks() -> str:
    return require_tool("swaks")


@pytest.fixture
def message_file(tmp_path: Path) -> Path:
    path = tmp_path / "message.txt"
    path.write_text(MESSAGE_TEXT.removesuffix("\n"), encoding="ascii")
    return path


def swaks_command(
    swaks: str, port: int, message_file: Path, *options: str
) -> list[str]:
    return [
        swaks,
        "--server",
        "127.0.0.1",
        "--port",
        str(port),
        "--helo",
        "client.test",
        "--from",
        "alice@example.org",
        "--data",
        f"@{message_file}",
        "--timeout",
        "10",
        *options,
    ]


def run_swaks(args: list[str], *, check: bool = True) -> str:
    result = run_tool(args, timeout=30, check=check)
    return result.stdout.decode("utf-8", "replace")


def tls_server_options(tls_files: TLSFiles) -> dict[str, Any]:
    return {
        "tls_context": tls_files.server_context(),
        "require_starttls": True,
        "authenticator": check_password,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_and_auth(
    swaks: str,
    start_server: StartServer,
    tls_files: TLSFiles,
    message_file: Path,
    mechanism: str,
) -> None:
    recorder = Recorder()
    controller = start_server(recorder, **tls_server_options(tls_files))

    transcript = run_swaks(
        swaks_command(
            swaks,
            controller.port,
            message_file,
            "--to",
            "bob@example.com",
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(tls_files.ca_file),
            "--auth",
            mechanism,
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        )
    )

    assert "235 " in transcript, transcript
    [delivery] = recorder.wait_for(1, timeout=5)
    assert delivery.content == EXPECTED_CONTENT
    assert delivery.mail_from == "alice@example.org"
    assert delivery.rcpt_tos == ["bob@example.com"]
    assert delivery.tls
    assert delivery.authenticated is True
    assert delivery.host_name == "client.test"


def test_wrong_password_rejected(
    swaks: str,
    start_server: StartServer,
    tls_files: TLSFiles,
    message_file: Path,
) -> None:
    recorder = Recorder()
    controller = start_server(recorder, **tls_server_options(tls_files))

    transcript = run_swaks(
        swaks_command(
            swaks,
            controller.port,
            message_file,
            "--to",
            "bob@example.com",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            "wrong password",
        ),
        check=False,
    )

    assert re.search(r"^<~\* +535 ", transcript, re.MULTILINE), transcript
    assert recorder.deliveries == []


def test_mail_without_starttls_rejected(
    swaks: str,
    start_server: StartServer,
    tls_files: TLSFiles,
    message_file: Path,
) -> None:
    recorder = Recorder()
    controller = start_server(recorder, **tls_server_options(tls_files))

    transcript = run_swaks(
        swaks_command(swaks, controller.port, message_file, "--to", "bob@example.com"),
        check=False,
    )

    assert re.search(r"^<\*\* +530 ", transcript, re.MULTILINE), transcript
    assert recorder.deliveries == []


def test_pipelining(swaks: str, start_server: StartServer, message_file: Path) -> None:
    recorder = Recorder()
    controller = start_server(recorder)

    transcript = run_swaks(
        swaks_command(
            swaks,
            controller.port,
            message_file,
            "--to",
            "bob@example.com,carol@example.com,dave@example.com",
            "--pipeline",
        )
    )

    # With PIPELINING swaks writes MAIL, the RCPTs and DATA before it reads
    # any of their replies, so the transcript shows five commands in a row.
    sent_in_a_row = re.search(
        r"^ -> MAIL FROM:.*\n( -> RCPT TO:.*\n){3} -> DATA\n", transcript, re.MULTILINE
    )
    assert sent_in_a_row, transcript
    [delivery] = recorder.wait_for(1, timeout=5)
    assert delivery.rcpt_tos == [
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    assert delivery.content == EXPECTED_CONTENT


def test_lmtp_replies_per_recipient(
    swaks: str, start_server: StartServer, message_file: Path
) -> None:
    recorder = Recorder(
        lmtp_replies={2: ["250 2.0.0 delivered", "550 5.1.1 mailbox unavailable"]}
    )
    controller = start_server(recorder, lmtp=True)

    transcript = run_swaks(
        swaks_command(
            swaks,
            controller.port,
            message_file,
            "--protocol",
            "LMTP",
            "--to",
            "bob@example.com,carol@example.com",
        ),
        check=False,
    )

    assert re.search(r"^ -> LHLO client\.test$", transcript, re.MULTILINE), transcript
    assert re.search(r"^<-  250 2\.0\.0 delivered$", transcript, re.MULTILINE), (
        transcript
    )
    assert re.search(
        r"^<\*\* +550 5\.1\.1 mailbox unavailable$", transcript, re.MULTILINE
    ), transcript
    [delivery] = recorder.wait_for(1, timeout=5)
    assert delivery.rcpt_tos == ["bob@example.com", "carol@example.com"]
    assert delivery.content == EXPECTED_CONTENT


def test_implicit_tls(
    swaks: str,
    start_server: StartServer,
    tls_files: TLSFiles,
    message_file: Path,
) -> None:
    recorder = Recorder()
    controller = start_server(
        recorder,
        ssl_context=tls_files.server_context(),
        authenticator=check_password,
    )

    run_swaks(
        swaks_command(
            swaks,
            controller.port,
            message_file,
            "--to",
            "bob@example.com",
            "--tls-on-connect",
            "--tls-verify",
            "--tls-ca-path",
            str(tls_files.ca_file),
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        )
    )

    [delivery] = recorder.wait_for(1, timeout=5)
    assert delivery.tls
    assert delivery.authenticated is True
    assert delivery.content == EXPECTED_CONTENT


def test_bdat(swaks: str) -> None:
    help_text = run_tool([swaks, "--help"], timeout=30).stdout.decode(errors="replace")
    if "BDAT" not in help_text.upper():
        version = run_tool([swaks, "--version"], timeout=30).stdout.decode()
        first_line = version.strip().splitlines()[0] if version.strip() else "swaks"
        pytest.skip(f"{first_line} cannot send BDAT: its --help never mentions it")
    # NOTE: swaks 20201014 has no BDAT option, so this branch was never run.
    # Send the message with that option here once a swaks version has one.
    pytest.skip("this swaks mentions BDAT, but the test does not know its option yet")
