#!/usr/bin/env python3
"""idle_conns.py PORT N -- memory cost of N idle SMTP sessions on 127.0.0.1:PORT.

Each connection reads the 220 greeting, sends EHLO, reads the whole 250 reply and then
stays open doing nothing. The server's VmRSS (and RssAnon) from /proc/PID/status is read
before opening (after a small warm-up), once all N are open, at the end of the hold, and
after closing them. Prints a human summary and one tab-separated IDLE line:
  IDLE label port n_ok n_fail rss0_kB rss_open_kB rss_hold_kB rss_closed_kB kB_per_conn anon_kB_per_conn
Uses only the Python standard library; bounded by --timeout seconds overall.
Options: --pid PID (default: the process listening on PORT, found with `ss -ltnp`),
         --sid SID (instead of --pid: sum over every process of session SID, e.g. a server
                    started with setsid, so wrappers/worker processes are counted too),
         --hold S, --batch B (connects in flight at once), --warmup W, --label L,
         --settle S (pause after warm-up and after opening, default 1.0),
         --close-wait S (pause after closing before the last reading, default 1.5).
"""

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import time


def find_listener_pid(port):
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    pids = sorted(set(re.findall(r"pid=(\d+)", out)))
    if len(pids) != 1:
        sys.exit(
            f"cannot pick one listener PID on port {port} from ss output {out!r}; pass --pid"
        )
    return int(pids[0])


def session_pids(sid):
    """PIDs of all live processes whose session id (field 6 of /proc/PID/stat) is sid."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) == sid:
                        pids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def mem_kb_one(pid):
    """VmRSS and RssAnon in kB from /proc/PID/status."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                vals[k] = int(v.split()[0])
    return vals.get("VmRSS", 0), vals.get("RssAnon", 0)


def mem_kb(pid, sid=None):
    """VmRSS, RssAnon (kB) of PID, or summed over the processes of session sid."""
    if sid is None:
        return mem_kb_one(pid)
    tot = [0, 0]
    for p in session_pids(sid):
        try:
            r, a = mem_kb_one(p)
        except OSError:
            continue
        tot[0] += r
        tot[1] += a
    return tuple(tot)


async def read_reply(reader, tmo):
    """Read one (possibly multi-line) SMTP reply; return its lines."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), tmo)
        if not line:
            raise ConnectionError("EOF before complete reply")
        lines.append(line)
        if (
            len(line) < 4 or line[3:4] != b"-"
        ):  # "250 ..." ends the reply, "250-..." continues
            return lines


OPENED = [
    0
]  # sessions that got through EHLO so far (reported if the overall --timeout fires)


async def open_session(port, sem, tmo):
    async with (
        sem
    ):  # at most --batch handshakes in flight, to stay under the listen backlog
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), tmo
        )
        greet = await read_reply(reader, tmo)
        assert greet[0].startswith(b"220"), greet
        writer.write(b"EHLO idle.example\r\n")
        ehlo = await read_reply(reader, tmo)
        assert ehlo[-1].startswith(b"250"), ehlo
        OPENED[0] += 1
        return reader, writer


async def run(a):
    sem = asyncio.Semaphore(a.batch)
    # Warm-up: exercise the server's code paths once so lazy imports/caches are not billed per connection.
    warm = await asyncio.gather(
        *(open_session(a.port, sem, 10) for _ in range(a.warmup))
    )
    for _, w in warm:
        w.write(b"QUIT\r\n")
        w.close()
    await asyncio.sleep(a.settle)

    rss0, anon0 = mem_kb(a.pid, a.sid)
    t0 = time.monotonic()
    res = await asyncio.gather(
        *(open_session(a.port, sem, 10) for _ in range(a.n)), return_exceptions=True
    )
    conns = [x for x in res if not isinstance(x, BaseException)]
    errs = [x for x in res if isinstance(x, BaseException)]
    t_open = time.monotonic() - t0
    await asyncio.sleep(a.settle)  # let the server settle
    rss1, anon1 = mem_kb(a.pid, a.sid)
    await asyncio.sleep(a.hold)  # stay idle
    rss2, _ = mem_kb(a.pid, a.sid)
    alive = sum(1 for r, w in conns if not r.at_eof())
    for _, w in conns:
        w.close()
    await asyncio.sleep(a.close_wait)
    rss3, _ = mem_kb(a.pid, a.sid)

    ok = len(conns)
    per = (rss1 - rss0) / ok if ok else float("nan")
    per_anon = (anon1 - anon0) / ok if ok else float("nan")
    print(
        f"port {a.port} {'sid' if a.sid else 'pid'} {a.sid or a.pid}: opened {ok}/{a.n} in {t_open:.2f}s, {alive} still open after {a.hold}s hold, "
        f"{len(errs)} failed{f' (first: {errs[0]!r})' if errs else ''}"
    )
    print(
        f"VmRSS kB: before {rss0}  open {rss1}  end-of-hold {rss2}  after-close {rss3}"
    )
    print(f"=> {per:.2f} kB VmRSS per idle connection ({per_anon:.2f} kB RssAnon)")
    print(
        "IDLE\t"
        + "\t".join(
            str(x)
            for x in (
                a.label,
                a.port,
                ok,
                len(errs),
                rss0,
                rss1,
                rss2,
                rss3,
                f"{per:.2f}",
                f"{per_anon:.2f}",
            )
        )
    )


def main():
    ap = argparse.ArgumentParser(description="memory per idle SMTP connection")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--pid", type=int)
    ap.add_argument(
        "--sid", type=int, help="sum memory over all processes of this session id"
    )
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--close-wait", type=float, default=1.5)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    if a.sid is None:
        a.pid = a.pid or find_listener_pid(a.port)
    a.label = a.label or f"port-{a.port}"
    # Each connection is one fd here (and one in the server): raise our soft limit as far as allowed.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.n + a.warmup + 64
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    try:
        asyncio.run(asyncio.wait_for(run(a), a.timeout))
    except (TimeoutError, asyncio.TimeoutError):
        sys.exit(
            f"TIMEOUT: gave up after --timeout {a.timeout:g}s with {OPENED[0]} sessions through EHLO "
            f"(incl. {a.warmup} warm-up ones) of {a.n}; the server stopped accepting/answering?"
        )


if __name__ == "__main__":
    main()
