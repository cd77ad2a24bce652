#!/usr/bin/env bash
# Bounded fuzz run for CI, under 60 s: about 25 s of the atheris engine
# harness, then about 20 s of Hypothesis traffic against a live server.
# A crash fails the script; libFuzzer writes the input to fuzz/crashes/.
set -euo pipefail

cd "$(dirname "$0")/.."
mkdir -p fuzz/crashes

if python -c "import atheris" 2>/dev/null; then
    if [ ! -d fuzz/corpus ]; then
        python fuzz/engine_fuzz.py --make-corpus
    fi
    echo "engine fuzz: 25 s on fuzz/corpus"
    log=$(mktemp)
    status=0
    python fuzz/engine_fuzz.py fuzz/corpus \
        -max_total_time=25 -max_len=4096 -timeout=10 \
        -artifact_prefix=fuzz/crashes/ -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer prints a line per new input: show the progress lines only.
    grep -E "INITED|pulse|^Done|stat::(number_of_executed_units|average_exec_per_sec)" "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "engine fuzz failed (exit status $status):"
        tail -n 40 "$log"
        rm -f "$log"
        exit "$status"
    fi
    rm -f "$log"
else
    echo "engine fuzz: skipped, atheris is not installed (pip install atheris)"
fi

echo "live server fuzz: about 20 s against smtpproto_anyio.Controller"
python fuzz/live_server_fuzz.py --server controller --examples 1000 --time 20
