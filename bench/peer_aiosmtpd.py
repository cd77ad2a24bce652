#!/usr/bin/env python3
"""Reference SMTP sink server built on aiosmtpd 1.4.6 (the "peer" to beat).

Accepts mail on 127.0.0.1:PORT, answers every DATA with '250 OK' and throws the
message away. Runs until killed (SIGTERM / SIGINT).

Usage (use the venv's python, it has aiosmtpd + uvloop):
    python peer_aiosmtpd.py PORT [--uvloop] [--smtputf8] [--fqdn]

Prints one line "READY pid=... port=... loop=..." on stdout once listening.
"""

import argparse
import asyncio
import os
import signal

from aiosmtpd.smtp import SMTP


class Sink:
    """Sink-like handler: accept everything, keep nothing."""

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument(
        "--uvloop",
        action="store_true",
        help="run on uvloop instead of the default asyncio loop",
    )
    ap.add_argument(
        "--smtputf8",
        action="store_true",
        help="advertise/accept SMTPUTF8 (aiosmtpd default: off)",
    )
    ap.add_argument(
        "--fqdn",
        action="store_true",
        help="let aiosmtpd call socket.getfqdn() per connection (its default) "
        "instead of a fixed hostname",
    )
    ap.add_argument(
        "--backlog",
        type=int,
        default=1024,
        help="listen() backlog (asyncio default is 100)",
    )
    args = ap.parse_args()

    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    handler = Sink()
    kw = {"enable_SMTPUTF8": args.smtputf8}
    if not args.fqdn:
        kw["hostname"] = (
            "localhost"  # avoids a getfqdn() lookup on every new connection
        )

    # One SMTP protocol instance per connection, all on this single event loop (no Controller thread).
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, loop=loop, **kw),
            args.host,
            args.port,
            backlog=args.backlog,
        )
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(
        f"READY pid={os.getpid()} port={args.port} loop={type(loop).__module__}.{type(loop).__name__}",
        flush=True,
    )
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
