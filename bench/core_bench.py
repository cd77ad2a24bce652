"""Measure the engine alone, with no sockets: commands per second and DATA MB/s.

Run ``python bench/core_bench.py`` (about 15 s) or ``--quick`` for a smoke run.
Each figure is the best of several rounds, timed in CPU time of this process
(``time.process_time``), so other work on the machine changes it less than wall
time would.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from smtpproto import NEED_DATA, DataChunk, ServerConnection

NOTIFICATION_TYPES = (DataChunk,)


def run_commands(count: int, batch: int) -> float:
    """Feed ``count`` NOOPs in pipelined batches; return commands per second."""
    conn = ServerConnection("mx.example.com")
    conn.accept()
    conn.data_to_send()
    payload = b"NOOP\r\n" * batch
    rounds = count // batch
    start = time.process_time()
    for _ in range(rounds):
        conn.receive_data(payload)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            conn.accept()
        conn.data_to_send()
    elapsed = time.process_time() - start
    return rounds * batch / elapsed


def run_transactions(count: int) -> float:
    """Feed whole EHLO-less transactions of 1 KiB; return commands per second."""
    conn = ServerConnection("mx.example.com")
    conn.accept()
    conn.receive_data(b"EHLO client.example.net\r\n")
    conn.next_event()
    conn.accept()
    conn.data_to_send()
    message = b"Subject: bench\r\n\r\n" + b"x" * 70 + b"\r\n"
    message = message * (1024 // len(message))
    transaction = (
        b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        + message
        + b".\r\n"
    )
    start = time.process_time()
    for _ in range(count):
        conn.receive_data(transaction)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if type(event) is not DataChunk:
                conn.accept()
        conn.data_to_send()
    elapsed = time.process_time() - start
    # MAIL, RCPT, DATA and the end of data are four commands to answer.
    return count * 4 / elapsed


def run_data(megabytes: int, read_size: int, line: bytes) -> float:
    """Stream one message of ``megabytes`` MiB in reads of ``read_size``; return MB/s."""
    conn = ServerConnection("mx.example.com", max_message_size=None)
    conn.accept()
    conn.receive_data(
        b"EHLO c.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\n"
        b"DATA\r\n"
    )
    for _ in range(4):
        conn.next_event()
        conn.accept()
    conn.data_to_send()
    block = line * (read_size // len(line))
    total = megabytes * 1024 * 1024
    reads = total // len(block)
    received = 0
    start = time.process_time()
    for _ in range(reads):
        conn.receive_data(block)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            received += len(event.data)  # type: ignore[union-attr]
    elapsed = time.process_time() - start
    assert received >= reads * len(block) - 8, "the engine lost content"
    return reads * len(block) / elapsed / 1e6


def best_of(rounds: int, label: str, function: Callable[[], float], unit: str) -> float:
    best = 0.0
    for index in range(rounds):
        value = function()
        best = max(best, value)
        print(f"  {label}: round {index + 1}/{rounds}: {value:,.0f} {unit}", flush=True)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else 5
    scale = 10 if args.quick else 1

    print(f"smtpproto engine benchmark ({sys.version.split()[0]})", flush=True)
    results = {
        "NOOP, pipelined batches of 100 (commands/s)": best_of(
            rounds, "noop", lambda: run_commands(300_000 // scale, 100), "commands/s"
        ),
        "MAIL+RCPT+DATA+1 KiB, pipelined (commands/s)": best_of(
            rounds, "transactions", lambda: run_transactions(40_000 // scale), "cmd/s"
        ),
        "DATA 78-octet lines, 64 KiB reads (MB/s)": best_of(
            rounds,
            "data",
            lambda: run_data(512 // scale, 65536, b"x" * 76 + b"\r\n"),
            "MB/s",
        ),
        "DATA 998-octet lines, 256 KiB reads (MB/s)": best_of(
            rounds,
            "data-long",
            lambda: run_data(512 // scale, 262144, b"y" * 996 + b"\r\n"),
            "MB/s",
        ),
    }
    print()
    print("| workload | best |")
    print("| --- | ---: |")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
