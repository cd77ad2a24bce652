"""The built distributions: metadata, contents, and an install into a fresh venv.

The wheel and sdist are built offline (``python -m build --no-isolation``) with
the ``build`` and ``hatchling`` packages of this environment. The venv is made
with ``--system-site-packages``, so anyio comes from this environment and nothing
is downloaded.
"""

from __future__ import annotations

import email.parser
import importlib.util
import os
import signal
import smtplib
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "smtpproto-server"
VERSION = "0.1.0"
DIST_INFO = f"smtpproto_server-{VERSION}.dist-info"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None
    or importlib.util.find_spec("hatchling") is None,
    reason="needs the build and hatchling packages for an offline build "
    "(pip install build hatchling)",
)


@dataclass(frozen=True)
class Distributions:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    return Distributions(
        wheel=outdir / f"smtpproto_server-{VERSION}-py3-none-any.whl",
        sdist=outdir / f"smtpproto_server-{VERSION}.tar.gz",
    )


def wheel_file(distributions: Distributions, name: str) -> str:
    with zipfile.ZipFile(distributions.wheel) as wheel:
        return wheel.read(name).decode("utf-8")


# ---------------------------------------------------------------- wheel contents


def test_wheel_metadata(distributions: Distributions) -> None:
    metadata = email.parser.Parser().parsestr(
        wheel_file(distributions, f"{DIST_INFO}/METADATA")
    )
    assert metadata["Name"] == NAME
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    assert "anyio>=4.4" in metadata.get_all("Requires-Dist")

    classifiers = metadata.get_all("Classifier")
    for classifier in (
        "License :: OSI Approved :: MIT License",
        "Framework :: AnyIO",
        "Framework :: Trio",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.10",
        "Topic :: Communications :: Email :: Mail Transport Agents",
    ):
        assert classifier in classifiers

    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL") or [])
    assert set(urls) >= {"Documentation", "Source", "Changelog", "Issues"}
    for url in urls.values():
        assert url.startswith("https://")


def test_wheel_entry_points(distributions: Distributions) -> None:
    entry_points = wheel_file(distributions, f"{DIST_INFO}/entry_points.txt")
    assert "[console_scripts]\nsmtpproto-serve = smtpproto_anyio._cli:main" in (
        entry_points
    )
    assert "[pytest11]\nsmtpproto = smtpproto_anyio.pytest_plugin" in entry_points


def test_wheel_contents(distributions: Distributions) -> None:
    with zipfile.ZipFile(distributions.wheel) as wheel:
        names = set(wheel.namelist())
    for name in (
        "smtpproto/py.typed",
        "smtpproto_anyio/py.typed",
        "smtpproto/__init__.py",
        "smtpproto_anyio/pytest_plugin.py",
        f"{DIST_INFO}/licenses/LICENSE",
    ):
        assert name in names
    # The wheel contains the two packages and nothing else from the checkout.
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"smtpproto", "smtpproto_anyio", DIST_INFO}


def test_sdist_contents(distributions: Distributions) -> None:
    prefix = f"smtpproto_server-{VERSION}/"
    with tarfile.open(distributions.sdist) as sdist:
        names = {name.removeprefix(prefix) for name in sdist.getnames()}
    for name in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "PKG-INFO",
        "src/smtpproto/py.typed",
        "src/smtpproto_anyio/py.typed",
        "docs/conf.py",
        "docs/index.rst",
        "docs/_static/server-states.svg",
        "docs/examples/threaded_server.py",
        "tests/test_packaging.py",
    ):
        assert name in names
    assert not any(name.startswith("docs/_build/") for name in names)
    assert not any("__pycache__" in name for name in names)


# ---------------------------------------------------------------- installed wheel


@pytest.fixture(scope="module")
def installed(
    distributions: Distributions, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Install the wheel into a new venv and return the venv's bin directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, system_site_packages=True, with_pip=False)
    bin_dir = root / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(distributions.wheel),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"pip failed:\n{result.stdout}\n{result.stderr}"
    return bin_dir


def clean_environment() -> dict[str, str]:
    """Return the environment without PYTHONPATH, which could name the checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run_installed(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Run outside the checkout, so the source tree cannot shadow the install.
    return subprocess.run(
        args,
        cwd=bin_dir.parent,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
    )


def test_installed_imports_from_venv(installed: Path) -> None:
    result = run_installed(
        installed,
        str(installed / "python"),
        "-c",
        "import smtpproto, smtpproto_anyio; "
        "print(smtpproto.__file__); print(smtpproto_anyio.__file__); "
        "print(smtpproto_anyio.__version__)",
    )
    assert result.returncode == 0, result.stderr
    engine_file, adapter_file, version = result.stdout.splitlines()
    venv_root = str(installed.parent)
    assert engine_file.startswith(venv_root)
    assert adapter_file.startswith(venv_root)
    assert version == VERSION


def test_installed_cli_version(installed: Path) -> None:
    result = run_installed(installed, str(installed / "smtpproto-serve"), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"smtpproto-serve {VERSION}"


def test_installed_pytest_plugin(installed: Path) -> None:
    result = run_installed(
        installed, str(installed / "python"), "-m", "pytest", "--markers"
    )
    assert result.returncode == 0, result.stderr
    assert "@pytest.mark.smtp_server(**options)" in result.stdout


@pytest.fixture
def serving(installed: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run the installed smtpproto-serve on a free port; yield it and the port."""
    process = subprocess.Popen(
        [str(installed / "smtpproto-serve"), "-n", "-l", "127.0.0.1:0"],
        cwd=installed.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    try:
        assert process.stderr is not None
        first_line = process.stderr.readline()
        assert first_line.startswith("smtpproto-serve listening on 127.0.0.1:"), (
            first_line
        )
        yield process, int(first_line.split(":")[1].split()[0])
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_installed_cli_serves(serving: tuple[subprocess.Popen[str], int]) -> None:
    process, port = serving
    message = b"Subject: Packaging test\r\n\r\nSent to the installed wheel.\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("ann@example.com", ["bob@example.org"], message)

    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "---------- MESSAGE FOLLOWS ----------" in stdout
    assert "Subject: Packaging test" in stdout
    assert "Sent to the installed wheel." in stdout
