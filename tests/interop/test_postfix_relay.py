"""Postfix as a client: a private Postfix instance relays to our SMTP and LMTP servers.

Each test starts its own Postfix instance as root, with configuration, queue and
data directories in a new temporary directory, so the system's Postfix (in
/etc/postfix and /var/spool/postfix) is neither read nor started. The instance
listens on 127.0.0.1 only, looks up no host names (the next hop is the address
literal [127.0.0.1] and DNS is off), and is stopped when the test ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_support import (
    Delivery,
    Recorder,
    StartServer,
    TLSFiles,
    free_port,
    require_tool,
    run_tool,
)

# Seconds that a relayed message may take to reach our handler.
DELIVERY_TIMEOUT = 30

# The services that a relay-only Postfix needs, none of them chrooted, so that the
# instance needs no copies of system files in its queue directory. The smtpd
# line is added with the port of each instance.
MASTER_CF_SERVICES = """\
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
lmtp      unix  - - n -     - lmtp
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixInstance:
    """A Postfix instance with its own directories under ``root``."""

    def __init__(self, postfix: str, postconf: str, root: Path) -> None:
        self.postfix = postfix
        self.postconf_path = postconf
        self.root = root
        self.config_directory = root / "etc"
        self.queue_directory = root / "queue"
        self.data_directory = root / "data"
        self.maillog = root / "maillog"
        self.smtpd_port = free_port()
        self.started = False

    def create(self) -> None:
        # Postfix wants root to own the configuration and queue directories and
        # its mail_owner to own the data directory.
        for directory in (self.config_directory, self.queue_directory):
            directory.mkdir(mode=0o755)
        self.data_directory.mkdir(mode=0o755)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data_directory, owner.pw_uid, owner.pw_gid)

        (self.config_directory / "master.cf").write_text(
            f"127.0.0.1:{self.smtpd_port} inet n - n - - smtpd\n" + MASTER_CF_SERVICES,
            encoding="ascii",
        )
        (self.config_directory / "main.cf").write_text("", encoding="ascii")
        self.postconf(
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_directory}",
            f"data_directory = {self.data_directory}",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.root}",
            "myhostname = test.example",
            "mydomain = test.example",
            "myorigin = test.example",
            "mydestination =",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            # No DNS, no host name lookups of any kind: the next hops below are
            # address literals and smtpd does not look up its clients' names.
            "disable_dns_lookups = yes",
            "smtp_dns_support_level = disabled",
            "lmtp_dns_support_level = disabled",
            "smtp_host_lookup = native",
            "lmtp_host_lookup = native",
            "smtpd_peername_lookup = no",
            "smtp_bind_address = 127.0.0.1",
            "lmtp_bind_address = 127.0.0.1",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "biff = no",
        )

    def postconf(self, *settings: str) -> None:
        run_tool(
            [self.postconf_path, "-c", str(self.config_directory), "-e", *settings],
            timeout=30,
        )

    def start(self) -> None:
        self.started = True
        run_tool([self.postfix, "-c", str(self.config_directory), "start"], timeout=60)

    def master_pid(self) -> int | None:
        try:
            text = (self.queue_directory / "pid" / "master.pid").read_text()
        except FileNotFoundError:
            return None
        return int(text.strip()) if text.strip() else None

    def stop(self) -> None:
        """Stop the instance and wait up to 10 s for its master process to exit."""
        if not self.started:
            return
        pid = self.master_pid()
        run_tool(
            [self.postfix, "-c", str(self.config_directory), "stop"],
            timeout=60,
            check=False,
        )
        if pid is None:
            return
        deadline = time.monotonic() + 10
        while _process_exists(pid):
            if time.monotonic() > deadline:
                # This is the master that this test started, read from its own
                # pid file.
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return "(no maillog written)"

    def wait_for_log(self, *fragments: str, timeout: float = 10) -> str:
        """Wait until the maillog contains every fragment, and return it.

        Postfix writes the delivery status after our server's reply reaches it,
        so the log can lag behind the handler by a moment.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if all(fragment in log for fragment in fragments):
                return log
            if time.monotonic() > deadline:
                missing = [f for f in fragments if f not in log]
                raise AssertionError(
                    f"maillog lacks {missing} after {timeout} s:\n{log}"
                )
            time.sleep(0.1)

    def wait_for_messages(self, recorder: Recorder, count: int) -> list[Delivery]:
        """Wait for ``count`` messages at ``recorder``, or fail with the maillog."""
        try:
            return recorder.wait_for(count, timeout=DELIVERY_TIMEOUT)
        except AssertionError as error:
            raise AssertionError(f"{error}\nPostfix's maillog:\n{self.log()}") from None

    def submit(self, sender: str, recipients: list[str], message: bytes) -> None:
        """Send one message to the instance's smtpd with smtplib."""
        with smtplib.SMTP(
            "127.0.0.1", self.smtpd_port, local_hostname="client.test", timeout=10
        ) as client:
            refused = client.sendmail(
                sender, recipients, message, mail_options=["BODY=8BITMIME"]
            )
        assert refused == {}, refused


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def postfix_instance() -> Iterator[PostfixInstance]:
    postfix = require_tool("postfix")
    postconf = require_tool("postconf")
    if os.geteuid() != 0:
        pytest.skip(
            "a private Postfix instance must be started as root: its master "
            "process binds ports and runs the daemons as the postfix user"
        )
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("the user 'postfix' (Postfix's mail_owner) does not exist")
    daemon_directory = run_tool(
        [postconf, "-d", "-h", "daemon_directory"], timeout=30
    ).stdout.decode()
    if not os.access(os.path.join(daemon_directory.strip(), "master"), os.X_OK):
        pytest.skip(f"Postfix's master is missing from {daemon_directory.strip()}")

    # Not under pytest's tmp_path: its directories are mode 0700, and the postfix
    # user must be able to reach the data directory and the log file.
    root = Path(tempfile.mkdtemp(prefix="smtpproto-postfix-"))
    root.chmod(0o755)
    instance = PostfixInstance(postfix, postconf, root)
    try:
        instance.create()
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: relayed by Postfix\r\n"
    b"X-Interop: postfix\r\n"
    b"\r\n"
    b"first line\r\n"
    b".leading dot\r\n"
    b"caf\xc3\xa9\r\n"
)
MESSAGE_BODY = MESSAGE.partition(b"\r\n\r\n")[2]


def test_smtp_relay(
    postfix_instance: PostfixInstance, start_server: StartServer
) -> None:
    recorder = Recorder()
    controller = start_server(recorder)
    postfix_instance.postconf(f"relayhost = [127.0.0.1]:{controller.port}")
    postfix_instance.start()

    postfix_instance.submit("alice@example.org", ["bob@example.com"], MESSAGE)

    [delivery] = postfix_instance.wait_for_messages(recorder, 1)
    assert delivery.mail_from == "alice@example.org"
    assert delivery.rcpt_tos == ["bob@example.com"]
    assert delivery.host_name == "test.example"
    assert "BODY=8BITMIME" in delivery.mail_options
    # Postfix adds Received and other headers but keeps the body byte for byte.
    assert delivery.content.startswith(b"Received: from client.test")
    assert b"\r\nX-Interop: postfix\r\n" in delivery.content
    assert delivery.content.endswith(b"\r\n\r\n" + MESSAGE_BODY)
    postfix_instance.wait_for_log("to=<bob@example.com>", "status=sent (250 ")


def test_smtp_relay_over_starttls(
    postfix_instance: PostfixInstance,
    start_server: StartServer,
    tls_files: TLSFiles,
) -> None:
    recorder = Recorder()
    controller = start_server(
        recorder, tls_context=tls_files.server_context(), require_starttls=True
    )
    # "encrypt" makes TLS mandatory for Postfix's client but does not verify
    # the server certificate.
    postfix_instance.postconf(
        f"relayhost = [127.0.0.1]:{controller.port}",
        "smtp_tls_security_level = encrypt",
        "smtp_tls_loglevel = 1",
    )
    postfix_instance.start()

    postfix_instance.submit("alice@example.org", ["bob@example.com"], MESSAGE)

    [delivery] = postfix_instance.wait_for_messages(recorder, 1)
    assert delivery.tls
    assert delivery.content.endswith(b"\r\n\r\n" + MESSAGE_BODY)
    postfix_instance.wait_for_log(
        "TLS connection established to 127.0.0.1", "status=sent (250 "
    )


def test_lmtp_relay_per_recipient_replies(
    postfix_instance: PostfixInstance, start_server: StartServer
) -> None:
    # Bob's delivery succeeds and Carol's fails, so Postfix must read one reply
    # per recipient after the content, deliver to Bob, and send Alice a bounce,
    # which comes back to our LMTP server as a second message.
    recorder = Recorder(
        lmtp_replies={2: ["250 2.0.0 delivered", "550 5.1.1 mailbox unavailable"]}
    )
    controller = start_server(recorder, lmtp=True)
    postfix_instance.postconf(
        "relayhost =",
        f"default_transport = lmtp:inet:[127.0.0.1]:{controller.port}",
    )
    postfix_instance.start()

    postfix_instance.submit(
        "alice@example.org", ["bob@example.com", "carol@example.com"], MESSAGE
    )

    message, bounce = postfix_instance.wait_for_messages(recorder, 2)
    assert message.rcpt_tos == ["bob@example.com", "carol@example.com"]
    assert message.host_name == "test.example"
    assert message.content.endswith(b"\r\n\r\n" + MESSAGE_BODY)
    log = postfix_instance.wait_for_log(
        "to=<bob@example.com>", "to=<carol@example.com>", "status=bounced"
    )
    bob_line = next(line for line in log.splitlines() if "to=<bob@" in line)
    assert "status=sent (250 2.0.0 delivered)" in bob_line, log
    carol_line = next(line for line in log.splitlines() if "to=<carol@" in line)
    assert "status=bounced" in carol_line, log
    assert "550 5.1.1 mailbox unavailable" in carol_line, log

    assert bounce.mail_from == "<>"
    assert bounce.rcpt_tos == ["alice@example.org"]
    assert b"<carol@example.com>" in bounce.content
    assert b"550 5.1.1 mailbox" in bounce.content
