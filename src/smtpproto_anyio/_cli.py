"""smtpproto-serve: run an SMTP or LMTP server from the command line."""

from __future__ import annotations

import argparse
import contextlib
import hmac
import importlib
import importlib.util
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio

from smtpproto import Envelope, Session

from ._hooks import AuthResult, LoginPassword
from ._server import SMTPServer, __version__

__all__ = ["main"]

PROG = "smtpproto-serve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025
DEFAULT_SMTPS_PORT = 8465
DEFAULT_SIZE = 33_554_432
DEFAULT_HANDLER = "smtpproto_anyio.handlers.Debugging"

# Seconds between a worker's checks that its supervisor is still alive.
ORPHAN_CHECK_INTERVAL = 1.0

logger = logging.getLogger("smtpproto.server")


class UsageError(Exception):
    """A problem with the command line or its files, reported without traceback."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``smtpproto-serve``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run an SMTP (or LMTP) server that hands every message to a handler "
            "class. By default it prints each message to standard output. Stop "
            "it with Ctrl-C or SIGTERM: open sessions get 421 and messages in "
            "progress may finish."
        ),
    )
    parser.add_argument(
        "-v", "--version", action="version", version=f"{PROG} {__version__}"
    )
    parser.add_argument(
        "-n",
        "--nosetuid",
        action="store_true",
        help=(
            "keep the current user; without this option a server started as "
            "root switches to the user 'nobody' once its ports are open"
        ),
    )
    parser.add_argument(
        "-c",
        "--class",
        dest="classpath",
        metavar="CLASSPATH",
        default=None,
        help=(
            "dotted path of the handler class, e.g. mypkg.handlers.Relay "
            f"(default: {DEFAULT_HANDLER}); CLASSARGS go to its from_cli() "
            "class method if it has one"
        ),
    )
    parser.add_argument(
        "-s",
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=(
            "maximum message size in bytes, advertised with SIZE; 0 means no "
            f"limit (default: {DEFAULT_SIZE}, 32 MiB)"
        ),
    )
    parser.add_argument(
        "-u",
        "--smtputf8",
        action="store_true",
        help="advertise SMTPUTF8 and accept UTF-8 addresses (RFC 6531)",
    )
    parser.add_argument(
        "-d",
        "--debug",
        action="count",
        default=0,
        help=(
            "log to standard error: -d logs connections and messages (INFO), "
            "-dd also every command and reply (DEBUG; AUTH data is masked)"
        ),
    )
    parser.add_argument(
        "-l",
        "--listen",
        metavar="HOST:PORT",
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        help=(
            "address and TCP port to listen on; write an IPv6 address as "
            f"[::1]:25 (default: {DEFAULT_HOST}:{DEFAULT_PORT}; port 0 picks a "
            "free port)"
        ),
    )
    parser.add_argument(
        "--tlscert",
        metavar="CERTFILE",
        help="PEM certificate chain for STARTTLS on the --listen port",
    )
    parser.add_argument(
        "--tlskey", metavar="KEYFILE", help="PEM private key for --tlscert"
    )
    parser.add_argument(
        "--no-requiretls",
        dest="requiretls",
        action="store_false",
        help=(
            "with --tlscert, also accept mail without STARTTLS (by default "
            "mail commands get 530 until the client has sent STARTTLS)"
        ),
    )
    parser.add_argument(
        "--smtpscert",
        metavar="CERTFILE",
        help="PEM certificate chain for implicit TLS (SMTPS) on --smtps-listen",
    )
    parser.add_argument(
        "--smtpskey", metavar="KEYFILE", help="PEM private key for --smtpscert"
    )
    parser.add_argument(
        "--smtps-listen",
        metavar="HOST:PORT",
        default=None,
        help=(
            "address and TCP port of the SMTPS listener, used with --smtpscert "
            f"(default: the --listen host, port {DEFAULT_SMTPS_PORT})"
        ),
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run asyncio on uvloop (needs the uvloop package)",
    )
    parser.add_argument(
        "--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP"
    )
    parser.add_argument(
        "--maildir",
        metavar="PATH",
        help=(
            "store each message in the Maildir at PATH (created if missing) "
            "instead of printing it; replaces -c. Without -n, PATH must be "
            "writable by the user 'nobody'"
        ),
    )
    parser.add_argument(
        "--auth-user",
        metavar="USER:PASSWORD",
        help=(
            "for testing: offer AUTH PLAIN and LOGIN (after STARTTLS, or on the "
            "SMTPS port) and accept this one user name and password"
        ),
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=1,
        help=(
            "run N server processes that share the listening ports through "
            "SO_REUSEPORT (Linux and BSD); this process supervises them and "
            "forwards SIGINT and SIGTERM (default: 1, no extra process)"
        ),
    )
    parser.add_argument(
        "--max-connections",
        type=_limit,
        metavar="N",
        default=1000,
        help=(
            "open connections allowed at once; more get 421 and are closed; "
            "0 means no limit (default: 1000)"
        ),
    )
    parser.add_argument(
        "--max-connections-per-ip",
        type=_limit,
        metavar="N",
        default=50,
        help=(
            "open connections allowed at once from one client address; 0 means "
            "no limit (default: 50)"
        ),
    )
    parser.add_argument(
        "--greeting-delay",
        type=float,
        metavar="SECONDS",
        default=0.0,
        help=(
            "wait this long before the greeting; with --reject-unsynchronized a "
            "client that talks first is disconnected (default: 0)"
        ),
    )
    parser.add_argument(
        "--reject-unsynchronized",
        action="store_true",
        help=(
            "reply 554 and disconnect a client that sends before the greeting "
            "or pipelines without PIPELINING"
        ),
    )
    parser.add_argument(
        "classargs",
        metavar="CLASSARGS",
        nargs="*",
        help="arguments for the handler class's from_cli()",
    )
    return parser


def _limit(text: str) -> int | None:
    """Parse a connection limit: a whole number, 0 for no limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid number {text!r}: expected a whole number"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value or None


def parse_address(text: str, default_host: str, default_port: int) -> tuple[str, int]:
    """Split ``HOST:PORT``; either part may be missing, IPv6 hosts in brackets.

    :raises UsageError: if the port is not a number from 0 to 65535
    """
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"invalid address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UsageError(f"invalid address {text!r}: expected ':' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not port_text:
        port = default_port
    elif port_text.isdigit() and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise UsageError(f"invalid port number {port_text!r} in {text!r}")
    return host or default_host, port


def load_handler(
    parser: argparse.ArgumentParser, classpath: str, classargs: Sequence[str]
) -> object:
    """Import the handler class at ``classpath`` and build an instance.

    :raises UsageError: if the class cannot be found or takes no arguments
    """
    module_name, _, class_name = classpath.rpartition(".")
    if not module_name:
        raise UsageError(f"invalid handler class {classpath!r}: expected module.Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import module {module_name!r}: {error}") from error
    handler_class = getattr(module, class_name, None)
    if handler_class is None:
        raise UsageError(f"module {module_name!r} has no handler class {class_name!r}")
    from_cli = getattr(handler_class, "from_cli", None)
    if from_cli is not None:
        return from_cli(parser, *classargs)
    if classargs:
        raise UsageError(
            f"handler class {classpath} takes no arguments (it has no from_cli())"
        )
    return handler_class()


def load_tls_context(
    certfile: str | None, keyfile: str | None, option: str
) -> ssl.SSLContext | None:
    """Build a server-side TLS context, or return None when neither file is given.

    :raises UsageError: if only one file is given or a file cannot be loaded
    """
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise UsageError(f"--{option}cert and --{option}key must be given together")
    for path in (certfile, keyfile):
        if not os.path.isfile(path):
            raise UsageError(f"file not found: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(
            f"cannot load certificate {certfile} with key {keyfile}: {error}"
        ) from error
    return context


@dataclass(frozen=True)
class FixedUserAuthenticator:
    """Accept exactly one user name and password (for ``--auth-user``)."""

    login: bytes
    password: bytes

    def __repr__(self) -> str:
        return f"FixedUserAuthenticator(login={self.login!r}, password=***)"

    def __call__(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False)
        login_ok = hmac.compare_digest(auth_data.login, self.login)
        password_ok = hmac.compare_digest(auth_data.password, self.password)
        if login_ok and password_ok:
            return AuthResult(success=True, auth_data=auth_data.login)
        return AuthResult(success=False)


def drop_privileges() -> None:
    """Switch to the user ``nobody`` when running as root.

    :raises UsageError: if the switch fails
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    except (ImportError, KeyError, OSError) as error:
        raise UsageError(
            f'cannot switch to the user "nobody" ({error}); run with -n to keep '
            "the current user"
        ) from error


@dataclass
class ServeOptions:
    host: str
    port: int
    smtps_host: str
    smtps_port: int
    smtps_context: ssl.SSLContext | None
    setuid: bool
    backend: str
    reuse_port: bool = False
    # Set in worker processes: the supervisor's PID and the "worker i/N" label.
    parent_pid: int | None = None
    worker_label: str = ""


async def run_server(server: SMTPServer, options: ServeOptions) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    A second signal during the shutdown cancels the messages still in progress.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            server.serving(options.host, options.port, reuse_port=options.reuse_port),
            anyio.create_task_group() as watcher,
        ):
            if options.parent_pid is not None:
                watcher.start_soon(_stop_when_orphaned, options.parent_pid)
            addresses = [_address_text(options.host, server.port)]
            if options.smtps_context is not None:
                sockets = await server.add_listener(
                    options.smtps_host,
                    options.smtps_port,
                    ssl_context=options.smtps_context,
                    reuse_port=options.reuse_port,
                )
                smtps_port = sockets[0].getsockname()[1]
                addresses.append(
                    _address_text(options.smtps_host, smtps_port) + " (SMTPS)"
                )
            if options.setuid:
                drop_privileges()
            # One write of the whole line: workers share standard error, and
            # print() writes the text and the newline separately.
            sys.stderr.write(
                f"{PROG} listening on {', '.join(addresses)} ({options.backend})"
                f"{options.worker_label}\n"
            )
            sys.stderr.flush()

            async for signum in signals:
                logger.info("received %s, shutting down", signal.Signals(signum).name)
                break
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(_cancel_on_signal, signals, task_group)
                await server.shutdown()
                task_group.cancel_scope.cancel()
            watcher.cancel_scope.cancel()


async def _stop_when_orphaned(parent_pid: int) -> None:
    """Stop this worker like SIGTERM does once its supervisor has died."""
    # No event reports a parent's death portably, so this polls.
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await anyio.sleep(ORPHAN_CHECK_INTERVAL)
    logger.warning("the supervisor process %d is gone, shutting down", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


async def _cancel_on_signal(
    signals: AsyncIterator[signal.Signals], task_group: anyio.abc.TaskGroup
) -> None:
    async for signum in signals:
        logger.info(
            "received %s again, closing open sessions now",
            signal.Signals(signum).name,
        )
        task_group.cancel_scope.cancel()
        return


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def configure_logging(debug: int) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if debug >= 2:
        logging.getLogger("smtpproto").setLevel(logging.DEBUG)
    elif debug == 1:
        logging.getLogger("smtpproto").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``smtpproto-serve``; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    try:
        return _main(parser, args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.size < 0:
        raise UsageError(f"--size must be 0 or more, not {args.size}")
    if not 0 <= args.greeting_delay <= 3600:
        raise UsageError(
            f"--greeting-delay must be from 0 to 3600 seconds, not {args.greeting_delay}"
        )
    if args.workers < 1:
        raise UsageError(f"--workers must be 1 or more, not {args.workers}")
    if args.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--workers needs SO_REUSEPORT, which this system lacks")
    if args.uvloop and args.backend != "asyncio":
        raise UsageError("--uvloop works only with --backend asyncio")
    backend_options: dict[str, Any] = {}
    if args.uvloop:
        if importlib.util.find_spec("uvloop") is None:
            raise UsageError("--uvloop needs the uvloop package: pip install uvloop")
        backend_options["use_uvloop"] = True
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        raise UsageError("--backend trio needs the trio package: pip install trio")

    host, port = parse_address(args.listen, DEFAULT_HOST, DEFAULT_PORT)
    smtps_host, smtps_port = parse_address(
        args.smtps_listen or "", host, DEFAULT_SMTPS_PORT
    )
    tls_context = load_tls_context(args.tlscert, args.tlskey, "tls")
    smtps_context = load_tls_context(args.smtpscert, args.smtpskey, "smtps")
    if args.smtps_listen is not None and smtps_context is None:
        raise UsageError("--smtps-listen needs --smtpscert and --smtpskey")

    if args.maildir is not None:
        if args.classpath is not None or args.classargs:
            raise UsageError("--maildir cannot be combined with -c or CLASSARGS")
        from .handlers import Maildir

        try:
            handler: object = Maildir(args.maildir)
        except OSError as error:
            raise UsageError(f"cannot use Maildir {args.maildir}: {error}") from error
    else:
        handler = load_handler(
            parser, args.classpath or DEFAULT_HANDLER, args.classargs
        )

    authenticator = None
    if args.auth_user is not None:
        login, colon, password = args.auth_user.partition(":")
        if not colon or not login:
            raise UsageError("--auth-user needs the form USER:PASSWORD")
        authenticator = FixedUserAuthenticator(
            login.encode("utf-8"), password.encode("utf-8")
        )

    server = SMTPServer(
        handler,
        data_size_limit=args.size or None,
        enable_SMTPUTF8=args.smtputf8,
        tls_context=tls_context,
        require_starttls=tls_context is not None and args.requiretls,
        authenticator=authenticator,
        lmtp=args.lmtp,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        greeting_delay=args.greeting_delay,
        reject_unsynchronized=args.reject_unsynchronized,
    )
    options = ServeOptions(
        host=host,
        port=port,
        smtps_host=smtps_host,
        smtps_port=smtps_port,
        smtps_context=smtps_context,
        setuid=not args.nosetuid,
        backend="asyncio with uvloop" if args.uvloop else args.backend,
    )
    if args.workers > 1:
        return run_workers(args.workers, server, options, args.backend, backend_options)
    return serve_in_process(server, options, args.backend, backend_options)


def serve_in_process(
    server: SMTPServer,
    options: ServeOptions,
    backend: str,
    backend_options: dict[str, Any],
) -> int:
    """Run the server in this process until a signal stops it; return 0."""
    try:
        anyio.run(
            run_server,
            server,
            options,
            backend=backend,
            backend_options=backend_options,
        )
    except OSError as error:
        raise UsageError(f"cannot listen: {error}") from error
    except KeyboardInterrupt:
        pass
    return 0


def run_workers(
    count: int,
    server: SMTPServer,
    options: ServeOptions,
    backend: str,
    backend_options: dict[str, Any],
) -> int:
    """Fork ``count`` worker processes that share the ports; supervise them.

    SIGINT and SIGTERM are forwarded to every worker. When a worker exits
    without being asked to, the others are stopped too and the status is 1.
    Each worker runs in its own process group, so a Ctrl-C in a terminal
    reaches the workers once, through this process.
    """
    reserved = []
    options.reuse_port = True
    # Port 0 would give every worker its own port: pick one here, and keep a
    # bound (not listening) socket on it so that no one else takes it.
    if options.port == 0:
        reserved.append(_reserve_port(options.host))
        options.port = reserved[-1].getsockname()[1]
    if options.smtps_context is not None and options.smtps_port == 0:
        reserved.append(_reserve_port(options.smtps_host))
        options.smtps_port = reserved[-1].getsockname()[1]

    options.parent_pid = os.getpid()
    children: dict[int, int] = {}
    for index in range(1, count + 1):
        pid = os.fork()
        if pid == 0:
            _run_worker(server, options, backend, backend_options, index, count)
        children[pid] = index
    for sock in reserved:
        sock.close()

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        logger.info(
            "received %s, stopping %d workers",
            signal.Signals(signum).name,
            len(children),
        )
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    while children:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        index = children.pop(pid, 0)
        exit_code = os.waitstatus_to_exitcode(wait_status)
        if exit_code != 0:
            status = 1
        if not stopping:
            logger.error(
                "worker %d (PID %d) exited with status %d; stopping the others",
                index,
                pid,
                exit_code,
            )
            status = 1
            stopping = True
            for other in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGTERM)
    return status


def _reserve_port(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, 0))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen: {error}") from error
    return sock


def _run_worker(
    server: SMTPServer,
    options: ServeOptions,
    backend: str,
    backend_options: dict[str, Any],
    index: int,
    count: int,
) -> NoReturn:
    """Serve in a forked worker process and exit it; never returns."""
    exit_code = 1
    try:
        os.setpgid(0, 0)
        options.worker_label = f" worker {index}/{count}"
        exit_code = serve_in_process(server, options, backend, backend_options)
    except UsageError as error:
        print(f"{PROG}: error: worker {index}: {error}", file=sys.stderr, flush=True)
    except BaseException:
        logger.exception("worker %d failed", index)
    finally:
        sys.stderr.flush()
        os._exit(exit_code)
