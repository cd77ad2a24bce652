"""msmtp (GnuTLS) against our server: STARTTLS with certificate checks, then AUTH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme
from interop_support import Recorder, StartServer, TLSFiles, require_tool, run_tool

from smtpproto_anyio import AuthResult, LoginPassword

USER = "msmtp-user"
PASSWORD = "s3cret pass"

# Headers and body as a mail user agent hands them to msmtp, with LF line ends.
MESSAGE = (
    b"From: Alice <alice@example.org>\n"
    b"To: Bob <bob@example.com>, carol@example.com\n"
    b"Subject: msmtp interop\n"
    b"\n"
    b"body line\n"
    b".leading dot\n"
    b"caf\xc3\xa9 in UTF-8\n"
)


def check_password(
    server: object,
    session: object,
    envelope: object,
    mechanism: str,
    credentials: LoginPassword,
) -> AuthResult:
    return AuthResult(success=credentials == (USER.encode(), PASSWORD.encode()))


def write_config(
    directory: Path, port: int, ca_file: Path, mechanism: str, password: str
) -> Path:
    """Write an msmtp configuration file with one account named ``test``."""
    # msmtp (1.8.23) takes the value up to the end of the line, spaces included.
    config = directory / "msmtprc"
    config.write_text(
        "defaults\n"
        f"logfile {directory / 'msmtp.log'}\n"
        "account test\n"
        "host 127.0.0.1\n"
        f"port {port}\n"
        "domain client.test\n"
        "from alice@example.org\n"
        "tls on\n"
        "tls_starttls on\n"
        f"tls_trust_file {ca_file}\n"
        f"auth {mechanism}\n"
        f"user {USER}\n"
        f"password {password}\n"
        "set_date_header off\n"
        "set_msgid_header off\n",
        encoding="ascii",
    )
    # msmtp refuses a file with a password that others can read.
    os.chmod(config, 0o600)
    return config


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_starttls_auth_delivery(
    start_server: StartServer, tls_files: TLSFiles, tmp_path: Path, mechanism: str
) -> None:
    msmtp = require_tool("msmtp")
    recorder = Recorder()
    controller = start_server(
        recorder,
        tls_context=tls_files.server_context(),
        require_starttls=True,
        authenticator=check_password,
    )
    config = write_config(
        tmp_path, controller.port, tls_files.ca_file, mechanism, PASSWORD
    )

    # --read-envelope-from takes MAIL FROM from the From header and -t the
    # recipients from To.
    run_tool(
        [msmtp, "-C", str(config), "-a", "test", "--read-envelope-from", "-t"],
        input=MESSAGE,
        timeout=30,
    )

    [delivery] = recorder.wait_for(1, timeout=5)
    assert delivery.mail_from == "alice@example.org"
    assert delivery.rcpt_tos == ["bob@example.com", "carol@example.com"]
    assert delivery.content == MESSAGE.replace(b"\n", b"\r\n")
    assert delivery.tls
    assert delivery.authenticated is True
    assert delivery.host_name == "client.test"


def test_wrong_password_fails(
    start_server: StartServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    msmtp = require_tool("msmtp")
    recorder = Recorder()
    controller = start_server(
        recorder,
        tls_context=tls_files.server_context(),
        require_starttls=True,
        authenticator=check_password,
    )
    config = write_config(
        tmp_path, controller.port, tls_files.ca_file, "plain", "wrong"
    )

    result = run_tool(
        [msmtp, "-C", str(config), "-a", "test", "bob@example.com"],
        input=MESSAGE,
        timeout=30,
        check=False,
    )

    assert result.returncode != 0
    log = (tmp_path / "msmtp.log").read_text(errors="replace")
    assert "smtpstatus=535" in log, log
    assert recorder.deliveries == []


def test_untrusted_certificate_fails(
    start_server: StartServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    msmtp = require_tool("msmtp")
    recorder = Recorder()
    controller = start_server(
        recorder,
        tls_context=tls_files.server_context(),
        require_starttls=True,
        authenticator=check_password,
    )
    # A trust file with a different CA: msmtp must stop after the handshake.
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    config = write_config(tmp_path, controller.port, other_ca, "plain", PASSWORD)

    result = run_tool(
        [msmtp, "-C", str(config), "-a", "test", "bob@example.com"],
        input=MESSAGE,
        timeout=30,
        check=False,
    )

    assert result.returncode != 0
    error = result.stderr.decode(errors="replace")
    assert "certificate" in error.lower(), error
    assert recorder.deliveries == []
