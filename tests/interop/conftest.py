"""Fixtures for interop tests: real SMTP clients and relays against our server.

Every server, proxy and mail system here listens on 127.0.0.1 only. A test whose
tool is not installed skips and names the Debian package that provides it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from interop_support import StartServer, TLSFiles

from smtpproto_anyio import Controller


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("interop-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = TLSFiles(
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.cert_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    return files


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Return ``start_server(handler, **kwargs)``, which starts a Controller.

    The server listens on a free port of 127.0.0.1, and the keyword arguments go
    to :class:`Controller`. Every controller started here stops after the test.
    """
    controllers: list[Controller] = []

    def start(handler: object, **kwargs: Any) -> Controller:
        kwargs.setdefault("server_hostname", "mx.test")
        controller = Controller(handler, hostname="127.0.0.1", port=0, **kwargs)
        controller.start()
        controllers.append(controller)
        return controller

    yield start
    for controller in reversed(controllers):
        controller.stop()
