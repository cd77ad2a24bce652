#!/usr/bin/env python3
"""compare_report.py OUTDIR -- tables and a verdict line for bench/compare.sh.

Reads OUTDIR/results.tsv (load.sh RESULT lines), idle.tsv (idle_conns.py IDLE lines
plus the round), fail.tsv (FAIL name round step kind reason) and meta.txt (which
lists the servers, the references first). Prints two markdown tables (values, and
ratios against aiosmtpd) and, as the LAST line, one of

    ours/aiosmtpd: asyncio c1 x2.00 c20 x2.00 big x9.00 idle x0.25; trio ...  -> exit 0
    FAILED: <reason>                                                            -> exit 1
    compare ERROR: <reason>                                                     -> exit 2

Throughput ratios are server/aiosmtpd (higher = faster); idle memory and CPU ratios
are server/aiosmtpd of a cost (lower = cheaper). Each ratio is the median of the
ratios taken within each round (servers measured back to back), with [min..max].
"""

import statistics
import sys
from pathlib import Path

REFERENCES = ("aiosmtpd", "smtp-sink", "twisted")
TESTS = ("c1", "c20", "big")
# smtp-source CPU share (%) above which a throughput figure measures the client.
CLIENT_BOUND = 90.0


def read_tsv(path, tag):
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line.split("\t") for line in lines if line.startswith(tag + "\t")]


def med(values):
    return statistics.median(values) if values else None


def fmt(value, spec=",.1f"):
    return "n/a" if value is None else format(value, spec)


def load_runs(out):
    runs = {}
    spec = {}
    for f in read_tsv(out / "results.tsv", "RESULT"):
        label, test, sess, msgs, size, rnd, secs, mps, mbps, srv, cli, rc = f[1:13]
        if rc != "0":
            continue
        secs, msgs, size = float(secs), int(msgs), int(size)
        cost = None
        if srv != "NA":
            # Server CPU: microseconds per message, or milliseconds per MB (big).
            if test == "big":
                cost = float(srv) / (msgs * size / 1e6) * 1e3
            else:
                cost = float(srv) / msgs * 1e6
        runs[(label, test, int(rnd))] = {
            "val": float(mbps if test == "big" else mps),
            "cost": cost,
            "srv_busy": None if srv == "NA" else 100 * float(srv) / secs,
            "cli_busy": 100 * float(cli) / secs,
        }
        spec[test] = f"-s {sess} -m {msgs} -l {size}"
    return runs, spec


def load_idle(out):
    idle = {}
    for f in read_tsv(out / "idle.tsv", "IDLE"):
        if len(f) >= 12 and f[3] != "0":
            idle[(f[1], int(f[11]))] = float(f[9])
    return idle


def main():
    out = Path(sys.argv[1])
    meta_path = out / "meta.txt"
    meta = {}
    if meta_path.exists():
        meta = dict(
            line.split("=", 1)
            for line in meta_path.read_text().splitlines()
            if "=" in line
        )
    servers = meta.get("servers", "").split()
    ours = [s for s in servers if s not in REFERENCES]
    others = [s for s in servers if s != "aiosmtpd"]
    runs, spec = load_runs(out)
    idle = load_idle(out)

    def values(server, test, key):
        return [
            r[key]
            for (s, t, _), r in runs.items()
            if s == server and t == test and r[key] is not None
        ]

    def ratios(a, b, test, key):
        found = []
        for (s, t, rnd), r in runs.items():
            o = runs.get((b, test, rnd))
            if s == a and t == test and o and r[key] is not None and o[key]:
                found.append(r[key] / o[key])
        return found

    def idle_ratios(a, b):
        return [
            v / idle[(b, rnd)]
            for (s, rnd), v in idle.items()
            if s == a and idle.get((b, rnd))
        ]

    def rcell(found):
        if not found:
            return "n/a"
        spread = f" [{min(found):.2f}..{max(found):.2f}]" if len(found) > 1 else ""
        return f"x{med(found):.2f}{spread}"

    print(
        f"\n## bench/compare.sh ({meta.get('mode', '?')}: {meta.get('rounds', '?')} "
        "round(s)); medians over rounds\n"
    )
    print("| metric | " + " | ".join(servers) + " |")
    print("|---|" + "---|" * len(servers))
    for t in TESTS:
        unit = "MB/s" if t == "big" else "msgs/s"
        cells = [fmt(med(values(s, t, "val"))) for s in servers]
        print(f"| {t} {unit} ({spec.get(t, '')}) | " + " | ".join(cells) + " |")
    for t in TESTS:
        unit = "ms/MB" if t == "big" else "us/msg"
        number = ",.2f" if t == "big" else ",.0f"
        cells = [fmt(med(values(s, t, "cost")), number) for s in servers]
        print(f"| {t} server CPU {unit} | " + " | ".join(cells) + " |")
    per = {s: [v for (x, _), v in idle.items() if x == s] for s in servers}
    print(
        f"| idle kB VmRSS/conn, N={meta.get('idle_n', '?')} | "
        + " | ".join(fmt(med(per[s]), ",.2f") for s in servers)
        + " |"
    )
    for key, what in (("srv_busy", "server"), ("cli_busy", "smtp-source")):
        cells = [
            "/".join(fmt(med(values(s, t, key)), ".0f") for t in TESTS) for s in servers
        ]
        print(f"| {what} CPU busy % c1/c20/big | " + " | ".join(cells) + " |")

    print("\nRatios against aiosmtpd (throughput: higher is better; costs: lower):\n")
    print("| server | c1 | c20 | big | c1 CPU | c20 CPU | big CPU | idle memory |")
    print("|---|---|---|---|---|---|---|---|")
    for s in others:
        cells = [rcell(ratios(s, "aiosmtpd", t, "val")) for t in TESTS]
        cells += [rcell(ratios(s, "aiosmtpd", t, "cost")) for t in TESTS]
        cells.append(rcell(idle_ratios(s, "aiosmtpd")))
        print(f"| {s} | " + " | ".join(cells) + " |")
    if "workers2" in servers and "asyncio" in servers:
        found = ratios("workers2", "asyncio", "c20", "val")
        print(f"\nworkers2/asyncio c20 throughput: {rcell(found)}")

    notes = []
    for s in ours:
        for t in TESTS:
            busy = med(values(s, t, "cli_busy"))
            if busy is not None and busy >= CLIENT_BOUND:
                notes.append(
                    f"{s} {t}: smtp-source used {busy:.0f}% of its CPU, so the "
                    "throughput measures the client; read the server CPU row."
                )
    if notes:
        print("\nNotes:\n" + "\n".join("- " + n for n in notes))

    fails = read_tsv(out / "fail.tsv", "FAIL")
    if fails:
        print("\nFailures:")
        for f in fails:
            print(f"- {f[1]} {f[3]} round {f[2]} ({f[4]}): {f[5]}")
    print()

    own = [f for f in fails if f[1] in ours]
    ref = [f for f in fails if f[1] not in ours]
    if own:
        f = own[0]
        more = f" (+{len(own) - 1} more, see above)" if len(own) > 1 else ""
        print(f"FAILED: {f[1]} {f[3]} round {f[2]}: {f[5]}{more}")
        return 1
    if ref:
        f = ref[0]
        print(f"compare ERROR: reference {f[1]} {f[3]} round {f[2]}: {f[5]}")
        return 2
    if not any(s in ours for (s, _, _) in runs):
        print("compare ERROR: no measurements of our servers recorded")
        return 2

    def short(found):
        return f"x{med(found):.2f}" if found else "n/a"

    parts = []
    for s in ours:
        cells = [f"{t} {short(ratios(s, 'aiosmtpd', t, 'val'))}" for t in TESTS]
        cells.append(f"idle {short(idle_ratios(s, 'aiosmtpd'))}")
        parts.append(f"{s} " + " ".join(cells))
    print("ours/aiosmtpd: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
