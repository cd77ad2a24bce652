#!/usr/bin/env python3
"""smtp_ready.py PORT [--pid PID] [--timeout S] -- wait until an SMTP server on 127.0.0.1:PORT answers.

Polls until the port accepts a connection, then runs one whole transaction:
220 greeting, EHLO (HELO if EHLO is refused), MAIL, RCPT, DATA, a small message, QUIT.
Exits 0 and prints "READY port=P after=S" when every reply had the expected code;
otherwise exits 1 and prints ONE line "NOT READY: <reason>" (process exited, nothing listening
within the timeout, a wrong reply code, a connection closed early, a read timeout).
With --pid, gives up as soon as that process has exited (or is a zombie).
Stdlib only; talks to 127.0.0.1 only; bounded by --timeout (default 10 s) overall.
"""

import argparse
import socket
import sys
import time


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Fail(Exception):
    pass


def transaction(port, tmo):
    s = socket.create_connection(("127.0.0.1", port), timeout=tmo)
    try:
        f = s.makefile("rb")

        def reply(step):
            lines = []
            while True:
                try:
                    line = f.readline(4096)
                except TimeoutError:
                    raise Fail(f"no reply to {step} within {tmo:.1f}s") from None
                if not line:
                    raise Fail(
                        f"connection closed while waiting for the reply to {step}"
                    )
                lines.append(line)
                if line[3:4] != b"-":
                    return line[:3].decode("ascii", "replace"), b"".join(lines)

        def expect(step, want, data=None):
            if data is not None:
                s.sendall(data)
            code, text = reply(step)
            if code != want:
                raise Fail(
                    f"{step} got {text.decode('utf-8', 'replace').strip()!r}, expected {want}"
                )
            return code

        expect("greeting", "220")
        s.sendall(b"EHLO ready.localhost\r\n")
        code, _ = reply("EHLO")
        if code != "250":
            expect("HELO", "250", b"HELO ready.localhost\r\n")
        expect("MAIL FROM", "250", b"MAIL FROM:<sender@localhost>\r\n")
        expect("RCPT TO", "250", b"RCPT TO:<rcpt@localhost>\r\n")
        expect("DATA", "354", b"DATA\r\n")
        expect("end of data", "250", b"Subject: readiness probe\r\n\r\nprobe\r\n.\r\n")
        expect("QUIT", "221", b"QUIT\r\n")
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--pid", type=int, help="give up when this process exits")
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    last = "nothing listening"
    while True:
        if a.pid and not alive(a.pid):
            print(
                f"NOT READY: process {a.pid} exited before answering on 127.0.0.1:{a.port}"
            )
            return 1
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"NOT READY: no SMTP answer on 127.0.0.1:{a.port} within {a.timeout:.0f}s ({last})"
            )
            return 1
        try:
            transaction(a.port, max(0.5, min(5.0, left)))
            print(f"READY port={a.port} after={time.monotonic() - t0:.2f}s")
            return 0
        except ConnectionRefusedError:
            last = "connection refused"
            time.sleep(0.05)
        except Fail as e:
            print(f"NOT READY: 127.0.0.1:{a.port} {e}")
            return 1
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
