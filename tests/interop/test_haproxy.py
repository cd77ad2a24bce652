"""HAProxy in front of our server, sending PROXY protocol v1 and v2 headers.

HAProxy (Debian package ``haproxy``) runs in the foreground with a generated
configuration: a TCP frontend on a free 127.0.0.1 port and our server as the
only backend. The handler's ``handle_PROXY`` must see the client's own address
and port, not HAProxy's.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from interop_support import (
    Recorder,
    StartServer,
    TLSFiles,
    free_port,
    require_tool,
    wait_for_port,
)

HAPROXY_CONFIG = """\
global
    maxconn 64

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

# Accepts and drops connections: the test connects here to learn that HAProxy
# is ready, without a connection (and a PROXY header) to our server.
frontend ready
    bind 127.0.0.1:{ready_port}
    tcp-request connection reject

frontend smtp_in
    bind 127.0.0.1:{frontend_port}
    default_backend ours

backend ours
    server s1 127.0.0.1:{server_port} {proxy_option}
"""


class HAProxy:
    def __init__(self, process: subprocess.Popen[bytes], frontend_port: int) -> None:
        self.process = process
        self.frontend_port = frontend_port


RunHAProxy = Callable[[int, str], HAProxy]


@pytest.fixture
def run_haproxy(tmp_path: Path) -> Iterator[RunHAProxy]:
    """Return ``run_haproxy(server_port, proxy_option)``, which starts HAProxy."""
    haproxy = require_tool("haproxy")
    processes: list[subprocess.Popen[bytes]] = []

    def run(server_port: int, proxy_option: str) -> HAProxy:
        ready_port = free_port()
        frontend_port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                ready_port=ready_port,
                frontend_port=frontend_port,
                server_port=server_port,
                proxy_option=proxy_option,
            ),
            encoding="ascii",
        )
        log = (tmp_path / "haproxy.log").open("wb")
        # -db keeps HAProxy in the foreground, so that it stays our child.
        process = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        processes.append(process)
        wait_for_port(ready_port, timeout=10, process=process)
        return HAProxy(process, frontend_port)

    yield run
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize(
    ("proxy_option", "version"), [("send-proxy", 1), ("send-proxy-v2", 2)]
)
def test_proxy_header_from_haproxy(
    run_haproxy: RunHAProxy,
    start_server: StartServer,
    proxy_option: str,
    version: int,
) -> None:
    recorder = Recorder()
    controller = start_server(recorder, proxy_protocol_timeout=5)
    haproxy = run_haproxy(controller.port, proxy_option)

    with smtplib.SMTP(
        "127.0.0.1", haproxy.frontend_port, local_hostname="client.test", timeout=10
    ) as client:
        client_port = client.sock.getsockname()[1]
        refused = client.sendmail(
            "alice@example.org",
            ["bob@example.com"],
            b"Subject: through HAProxy\r\n\r\nbody\r\n",
        )
    assert refused == {}

    [delivery] = recorder.wait_for(1, timeout=5)
    header = delivery.proxy_data
    assert header is not None
    assert header.version == version
    assert header.command == "PROXY"
    assert header.source_address == "127.0.0.1"
    assert header.source_port == client_port
    assert header.destination_port == haproxy.frontend_port
    # The TCP peer is HAProxy's own connection, from another port.
    assert delivery.peer[1] != client_port
    assert recorder.proxy_headers == [header]
    assert delivery.content == b"Subject: through HAProxy\r\n\r\nbody\r\n"


def test_starttls_keeps_proxy_data(
    run_haproxy: RunHAProxy, start_server: StartServer, tls_files: TLSFiles
) -> None:
    # The PROXY header comes before the greeting. STARTTLS starts a new session,
    # which must keep the header that the old session read.
    recorder = Recorder()
    controller = start_server(
        recorder,
        proxy_protocol_timeout=5,
        tls_context=tls_files.server_context(),
        require_starttls=True,
    )
    haproxy = run_haproxy(controller.port, "send-proxy-v2")
    client_context = ssl.create_default_context(cafile=str(tls_files.ca_file))

    with smtplib.SMTP(
        "127.0.0.1", haproxy.frontend_port, local_hostname="client.test", timeout=10
    ) as client:
        client_port = client.sock.getsockname()[1]
        client.starttls(context=client_context)
        refused = client.sendmail(
            "alice@example.org", ["bob@example.com"], b"Subject: TLS\r\n\r\nbody\r\n"
        )
    assert refused == {}

    [delivery] = recorder.wait_for(1, timeout=5)
    assert delivery.tls
    assert delivery.proxy_data is not None
    assert delivery.proxy_data.source_port == client_port
    assert recorder.proxy_headers == [delivery.proxy_data]
