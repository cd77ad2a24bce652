"""Fixtures for the hardening tests; the helpers are in hardening_support.py.

Every server a test starts listens on 127.0.0.1, and a finalizer stops it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hardening_support import ServerProcess, TLSFiles, start_controller

from smtpproto_anyio import Controller


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def controller_factory() -> Iterator[Callable[..., Controller]]:
    """Start Controllers on 127.0.0.1; each stops when the test ends."""
    started: list[Controller] = []

    def start(handler: object, backend: str = "asyncio", **kwargs: Any) -> Controller:
        controller = start_controller(handler, backend, **kwargs)
        started.append(controller)
        return controller

    yield start
    for controller in reversed(started):
        controller.stop()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start server subprocesses: a ``server_main.py`` config or any argv."""
    started: list[ServerProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        *,
        argv: list[str] | None = None,
        nofile: int | None = None,
    ) -> ServerProcess:
        log_path = tmp_path / f"server-{len(started)}.log"
        if argv is None:
            server = ServerProcess.from_config(config or {}, log_path, nofile=nofile)
        else:
            server = ServerProcess(argv, log_path, nofile=nofile)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("hardening-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "mx.example.com")
    files = TLSFiles(
        cert=directory / "cert.pem",
        key=directory / "key.pem",
        ca=directory / "ca.pem",
    )
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files
