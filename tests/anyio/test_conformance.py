"""Run the black-box SMTP conformance cases against smtpproto-serve.

The cases and their runner live beside the repository, in
``shared/conformance`` (a sibling of the checkout's parent directory). The test
is skipped when that directory is not there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli import run_cli

CONFORMANCE = Path(__file__).parents[3] / "shared" / "conformance"
RUNNER = CONFORMANCE / "run_cases.py"
CASES = CONFORMANCE / "cases"

pytestmark = [
    pytest.mark.skipif(
        not RUNNER.is_file() or not CASES.is_dir(),
        reason=f"conformance cases not found at {CONFORMANCE}",
    ),
    pytest.mark.slow,
]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_conformance_cases(backend: str, tls_files: Any) -> None:
    with run_cli(
        "--backend",
        backend,
        "-c",
        "smtpproto_anyio.handlers.Sink",
        "--tlscert",
        str(tls_files.cert_file),
        "--tlskey",
        str(tls_files.key_file),
        "--no-requiretls",
        "--auth-user",
        "conformance:test-password",
    ) as cli:
        result = subprocess.run(
            [
                sys.executable,
                str(RUNNER),
                "--host",
                "127.0.0.1",
                "--port",
                str(cli.port),
                "--tls-port",
                str(cli.port),
                str(CASES),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        cli.stop()

    report = result.stdout + result.stderr
    failures = [line for line in report.splitlines() if line.startswith("FAIL")]
    assert failures == [], report
    assert result.returncode == 0, report
    summary = re.search(r"(\d+) passed, (\d+) failed", report)
    assert summary is not None, report
    assert int(summary.group(1)) > 0
    assert summary.group(2) == "0"
    assert cli.returncode == 0, cli.stderr
    assert "Traceback" not in cli.stderr
