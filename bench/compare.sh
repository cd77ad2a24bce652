#!/usr/bin/env bash
# compare.sh [--quick|--smoke] [--out DIR] [--rounds N] [--servers "NAME ..."]
#
# Side-by-side benchmark of smtpproto-serve against aiosmtpd 1.4.6 (peer_aiosmtpd.py:
# discarding handler, no logging), Postfix smtp-sink and Twisted's ESMTP server
# (peer_twisted.py), in ONE run, on 127.0.0.1 only. Servers (default: all):
#   aiosmtpd smtp-sink twisted       the references
#   asyncio uvloop trio              smtpproto-serve -c Sink on each event loop
#   workers2                         smtpproto-serve --workers 2 (asyncio)
#   * one server runs at a time, pinned to CPU $SERVER_CPU (1) with taskset, in its own session
#     (setsid); the load generator (smtp-source / idle_conns.py) is pinned to CPU $CLIENT_CPU (0).
#     workers2 is pinned to $WORKERS_CPUS (0-1), so its workers share CPU 0 with the client;
#   * every measurement gets a freshly started server on a fresh port;
#     the server must first pass smtp_ready.py (greeting, EHLO, MAIL, RCPT, DATA, QUIT);
#   * rounds alternate the server order (odd rounds: as listed, even rounds: reversed) and,
#     within a round, each workload runs on every server back to back, so ratios are taken
#     per round and then the median is reported;
#   * workloads (smtp-source, new connection per message):
#       c1  = 1 session, 1 KiB messages;  c20 = 20 sessions, 1 KiB;  big = 4 sessions, 1 MiB
#     -> msgs/s, MB/s, server CPU seconds (whole session: utime+stime, children included);
#   * idle memory: N idle connections (idle_conns.py, after 220 + EHLO), VmRSS delta / N,
#     summed over the server's session.
# Output: progress lines, markdown tables, and as LAST line either
#   ours/aiosmtpd: asyncio c1 x.. c20 x.. big x.. idle x..; uvloop ...        (exit 0)
#   FAILED: <reason> (one of our servers failed)                             (exit 1)
#   compare ERROR: <reason> (reference server or tool problem)               (exit 2)
# Files: OUT (default ~/.cache/smtpproto-bench/logs/bench-<timestamp>): results.tsv idle.tsv
#        fail.tsv env.txt run.log summary.md server-<name>.log client.log.
# --quick: 1 round, few messages, hard time budget (QUICK_BUDGET=110 s).
# --smoke: 1 round, very few messages, budget 55 s: checks that everything runs (for CI).
# Knobs (env): ROUNDS IDLE_ROUNDS C1_MSGS C20_MSGS BIG_MSGS SIZE BIG_SIZE IDLE_N TMO START_TMO
#              SERVER_CPU CLIENT_CPU WORKERS_CPUS QUICK_BUDGET PY TWISTED_PY PEER_VENV.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
T_START=$EPOCHREALTIME

usage() { sed -n '2p' "$0" | sed 's/^# //' >&2; exit 2; }
QUICK=0; OUT=; ROUNDS_ARG=; SERVERS_ARG=
while [ $# -gt 0 ]; do
  case $1 in
    --servers) SERVERS_ARG=${2:-}; shift 2 || usage ;;
    --quick) QUICK=1; shift ;;
    --smoke) QUICK=2; shift ;;
    --out) OUT=${2:-}; shift 2 || usage ;;
    --rounds) ROUNDS_ARG=${2:-}; shift 2 || usage ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
if [ "$QUICK" = 2 ]; then
  MODE=smoke
  ROUNDS=${ROUNDS:-1}; IDLE_ROUNDS=${IDLE_ROUNDS:-1}
  C1_MSGS=${C1_MSGS:-150}; C20_MSGS=${C20_MSGS:-400}; BIG_MSGS=${BIG_MSGS:-8}
  IDLE_N=${IDLE_N:-200}
  TMO=${TMO:-8}; START_TMO=${START_TMO:-8}; IDLE_TMO=${IDLE_TMO:-8}
  IDLE_OPTS=(--warmup 5 --settle 0.2 --hold 0.2 --close-wait 0)
  QUICK_BUDGET=${QUICK_BUDGET:-55}
elif [ "$QUICK" = 1 ]; then
  MODE=quick
  ROUNDS=${ROUNDS:-1}; IDLE_ROUNDS=${IDLE_ROUNDS:-1}
  C1_MSGS=${C1_MSGS:-1200}; C20_MSGS=${C20_MSGS:-5000}; BIG_MSGS=${BIG_MSGS:-100}
  TMO=${TMO:-12}; START_TMO=${START_TMO:-8}; IDLE_TMO=${IDLE_TMO:-15}
  IDLE_OPTS=(--warmup 10 --settle 0.5 --hold 0.5 --close-wait 0)
  QUICK_BUDGET=${QUICK_BUDGET:-110}
else
  MODE=full
  ROUNDS=${ROUNDS:-9}; IDLE_ROUNDS=${IDLE_ROUNDS:-3}
  C1_MSGS=${C1_MSGS:-4000}; C20_MSGS=${C20_MSGS:-12000}; BIG_MSGS=${BIG_MSGS:-300}
  TMO=${TMO:-120}; START_TMO=${START_TMO:-20}; IDLE_TMO=${IDLE_TMO:-90}
  IDLE_OPTS=(--warmup 20 --settle 1 --hold 3 --close-wait 0)
  QUICK_BUDGET=
fi
[ -n "$ROUNDS_ARG" ] && ROUNDS=$ROUNDS_ARG
[ "$IDLE_ROUNDS" -gt "$ROUNDS" ] && IDLE_ROUNDS=$ROUNDS
SIZE=${SIZE:-1024}; BIG_SIZE=${BIG_SIZE:-1048576}; IDLE_N=${IDLE_N:-1000}
SERVER_CPU=${SERVER_CPU:-1}; CLIENT_CPU=${CLIENT_CPU:-0}; WORKERS_CPUS=${WORKERS_CPUS:-0-1}
TESTS=(c1 c20 big)
REFERENCES=(aiosmtpd smtp-sink twisted)
ALL_SERVERS=(aiosmtpd smtp-sink twisted asyncio uvloop trio workers2)
if [ -n "$SERVERS_ARG" ]; then read -r -a SERVERS <<< "$SERVERS_ARG"; else SERVERS=("${ALL_SERVERS[@]}"); fi
for s in "${SERVERS[@]}"; do
  [[ " ${ALL_SERVERS[*]} " == *" $s "* ]] || { echo "compare ERROR: unknown server $s (known: ${ALL_SERVERS[*]})"; exit 2; }
done
[[ " ${SERVERS[*]} " == *" aiosmtpd "* ]] || { echo "compare ERROR: the ratios need aiosmtpd in --servers"; exit 2; }
is_ours() { [[ " ${REFERENCES[*]} " != *" $1 "* ]]; }
PY=${PY:-python3}
TWISTED_PY=${TWISTED_PY:-python3}
SINK_OPTS="-n -c smtpproto_anyio.handlers.Sink --max-connections 0 --max-connections-per-ip 0"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/smtpproto-bench
PEER_VENV=${PEER_VENV:-$CACHE/venv-peer}
PEER_PY=$PEER_VENV/bin/python
if ! "$PEER_PY" -c 'import aiosmtpd' 2>/dev/null; then
  echo "preparing the aiosmtpd 1.4.6 reference in $PEER_VENV (once)"
  python3 -m venv "$PEER_VENV" && "$PEER_VENV/bin/pip" -q install aiosmtpd==1.4.6 >/dev/null 2>&1
fi

OUT=${OUT:-$CACHE/logs/bench-$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$OUT" || { echo "compare ERROR: cannot create $OUT"; exit 2; }
: > "$OUT/results.tsv"; : > "$OUT/idle.tsv"; : > "$OUT/fail.tsv"; : > "$OUT/run.log"
log() { printf '%s\n' "$*" | tee -a "$OUT/run.log"; }
elapsed() { awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }

# ---- preflight ---------------------------------------------------------------------------------
for tool in smtp-source smtp-sink taskset setsid ss python3 /usr/bin/time timeout; do
  command -v "$tool" >/dev/null || {
    echo "compare ERROR: $tool not found (apt-get install -y postfix for smtp-source/smtp-sink)"; exit 2; }
done
"$PEER_PY" -c 'import aiosmtpd' 2>/dev/null || {
  echo "compare ERROR: $PEER_PY cannot import aiosmtpd (python3 -m venv $PEER_VENV && $PEER_VENV/bin/pip install aiosmtpd==1.4.6)"; exit 2; }
"$PY" -c 'import smtpproto_anyio' 2>/dev/null || {
  echo "compare ERROR: $PY cannot import smtpproto_anyio (pip install -e . or set PY)"; exit 2; }
# Without --servers, a server whose package is missing is left out with a note; when it is
# named in --servers, a missing package is an error.
drop_server() { local kept=() s; for s in "${SERVERS[@]}"; do [ "$s" = "$1" ] || kept+=("$s"); done; SERVERS=("${kept[@]}"); }
if [[ " ${SERVERS[*]} " == *" twisted "* ]] && ! "$TWISTED_PY" -c 'import twisted.mail' 2>/dev/null; then
  [ -n "$SERVERS_ARG" ] && { echo "compare ERROR: $TWISTED_PY cannot import twisted.mail (pip install twisted, or set TWISTED_PY)"; exit 2; }
  echo "note: leaving out twisted: $TWISTED_PY cannot import twisted.mail (set TWISTED_PY)"; drop_server twisted
fi
if [[ " ${SERVERS[*]} " == *" uvloop "* ]] && ! "$PY" -c 'import uvloop' 2>/dev/null; then
  [ -n "$SERVERS_ARG" ] && { echo "compare ERROR: $PY cannot import uvloop (pip install uvloop)"; exit 2; }
  echo "note: leaving out uvloop: $PY cannot import uvloop"; drop_server uvloop
fi
if [[ " ${SERVERS[*]} " == *" trio "* ]] && ! "$PY" -c 'import trio' 2>/dev/null; then
  [ -n "$SERVERS_ARG" ] && { echo "compare ERROR: $PY cannot import trio (pip install trio)"; exit 2; }
  echo "note: leaving out trio: $PY cannot import trio"; drop_server trio
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # 1000 idle conns

{ echo "date: $(date -Is)  mode: $MODE"; uname -srm; echo "nproc: $(nproc)  loadavg: $(cat /proc/loadavg)"
  dpkg-query -W -f='${Package} ${Version}\n' postfix 2>/dev/null
  "$PEER_PY" -c 'import sys, aiosmtpd; print("peer python", sys.version.split()[0], "aiosmtpd", aiosmtpd.__version__)'
  "$PY" -c 'import sys, smtpproto_anyio; print("python", sys.version.split()[0], "smtpproto_anyio", smtpproto_anyio.__version__)'
  "$TWISTED_PY" -c 'import twisted; print("twisted", twisted.__version__)' 2>/dev/null
  echo "servers: ${SERVERS[*]}"
  echo "ROUNDS=$ROUNDS IDLE_ROUNDS=$IDLE_ROUNDS C1_MSGS=$C1_MSGS C20_MSGS=$C20_MSGS BIG_MSGS=$BIG_MSGS SIZE=$SIZE BIG_SIZE=$BIG_SIZE"
  echo "IDLE_N=$IDLE_N IDLE_OPTS=${IDLE_OPTS[*]} TMO=$TMO START_TMO=$START_TMO SERVER_CPU=$SERVER_CPU CLIENT_CPU=$CLIENT_CPU QUICK_BUDGET=$QUICK_BUDGET"
} > "$OUT/env.txt"
printf 'mode=%s\nrounds=%s\nidle_rounds=%s\nidle_n=%s\nbudget=%s\nservers=%s\n' \
  "$MODE" "$ROUNDS" "$IDLE_ROUNDS" "$IDLE_N" "$QUICK_BUDGET" "${SERVERS[*]}" > "$OUT/meta.txt"
log "bench/compare.sh $MODE: $ROUNDS round(s), servers: ${SERVERS[*]}"
log "  c1 -s1 -m$C1_MSGS, c20 -s20 -m$C20_MSGS (-l $SIZE), big -s4 -m$BIG_MSGS -l $BIG_SIZE; idle N=$IDLE_N; out: $OUT"

# ---- server lifecycle --------------------------------------------------------------------------
SPID=; SPORT=; SNAME=
PDEATH=(); setpriv --pdeathsig KILL true 2>/dev/null && PDEATH=(setpriv --pdeathsig KILL)
NEXT_PORT=$((20000 + RANDOM % 9000))
declare -A USED   # wall seconds spent per server (start + workload + stop)

proc_state() { [ -r "/proc/$1/stat" ] && awk '{sub(/^.*\) /,""); print $1}' "/proc/$1/stat" 2>/dev/null; }
alive() { local s; s=$(proc_state "$1"); [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]; }
session_pids() { awk -v sid="$1" 'FNR==1{f=FILENAME; sub(/^.*\) /,""); if ($4==sid) {split(f,a,"/"); print a[3]}}' \
                   /proc/[0-9]*/stat 2>/dev/null; }

next_port() {  # a port with no TCP socket at all on it (not even TIME_WAIT from an earlier run)
  while [ -n "$(ss -Htan "sport = :$NEXT_PORT" 2>/dev/null)" ]; do NEXT_PORT=$((NEXT_PORT + 1)); done
  SPORT=$NEXT_PORT; NEXT_PORT=$((NEXT_PORT + 1))
}

server_cmd() {  # server_cmd NAME PORT -> the shell command line
  case $1 in
    aiosmtpd)  printf '%q %q %s' "$PEER_PY" "$HERE/peer_aiosmtpd.py" "$2" ;;
    smtp-sink) # -u: required when run as root; -m: connection cap (default 256); 1024: listen backlog
               printf 'smtp-sink %s-m 2000 127.0.0.1:%s 1024' "$([ "$(id -u)" = 0 ] && echo '-u nobody ')" "$2" ;;
    twisted)   printf '%q %q %s' "$TWISTED_PY" "$HERE/peer_twisted.py" "$2" ;;
    asyncio)   printf '%q -m smtpproto_anyio %s -l 127.0.0.1:%s' "$PY" "$SINK_OPTS" "$2" ;;
    uvloop)    printf '%q -m smtpproto_anyio %s --uvloop -l 127.0.0.1:%s' "$PY" "$SINK_OPTS" "$2" ;;
    trio)      printf '%q -m smtpproto_anyio %s --backend trio -l 127.0.0.1:%s' "$PY" "$SINK_OPTS" "$2" ;;
    workers2)  printf '%q -m smtpproto_anyio %s --workers 2 -l 127.0.0.1:%s' "$PY" "$SINK_OPTS" "$2" ;;
  esac
}
server_cpus() { [ "$1" = workers2 ] && echo "$WORKERS_CPUS" || echo "$SERVER_CPU"; }

stop_server() {  # TERM the server's process group, KILL after 5 s; then anything left in its session
  [ -n "$SPID" ] || return 0
  local pid=$SPID p
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.05; done
  alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  for p in $(session_pids "$pid"); do kill -KILL "$p" 2>/dev/null; done
  SPID=
}
SCRATCH=$(mktemp -d)   # per-step client output, outside OUT
cleanup() { stop_server; rm -rf "$SCRATCH"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

budget_left() {  # seconds left in the quick budget (large number when there is no budget)
  [ -n "$QUICK_BUDGET" ] || { echo 100000; return; }
  awk -v a="$T_START" -v b="$EPOCHREALTIME" -v B="$QUICK_BUDGET" 'BEGIN{printf "%d", B-(b-a)}'
}
clip() {  # clip SECONDS -> min(SECONDS, budget_left-2); fails when under 1 s is left
  local left; left=$(( $(budget_left) - 2 ))
  [ "$left" -ge 1 ] || return 1
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

fail() {  # fail NAME ROUND STEP KIND REASON -> fail.tsv
  printf 'FAIL\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$OUT/fail.tsv"
  log "  !! $1 $3 (round $2): $5"
}
used_summary() { local s o=; for s in "${SERVERS[@]}"; do o+="$s ${USED[$s]:-0}s, "; done; echo "${o%, }"; }
out_of_time() {  # out_of_time NAME ROUND STEP : quick budget spent, blamed on the server running
  fail "$1" "$2" "$3" budget "quick budget of ${QUICK_BUDGET}s used up at $1 $3 (time used: $(used_summary))"
  OUT_OF_TIME=1
}
OUT_OF_TIME=0

finish() {  # report + last line, then exit with the report's status
  local rc
  log "results in $OUT"
  python3 "$HERE/compare_report.py" "$OUT" > "$OUT/summary.md"; rc=$?
  cat "$OUT/summary.md"; cat "$OUT/summary.md" >> "$OUT/run.log"
  exit $rc
}

abort_start() {  # abort_start NAME REASON : a server that does not come up ends the run
  local name=$1 why=$2
  log "---- last lines of $OUT/server-$name.log:"
  tail -n 15 "$OUT/server-$name.log" | sed 's/^/  | /' | tee -a "$OUT/run.log"
  stop_server
  if is_ours "$name"; then
    log "FAILED: $name did not start/answer: $why (command: $(server_cmd "$name" PORT | sed 's/PORT/{port}/'))"
    exit 1
  fi
  log "compare ERROR: reference server $name did not start/answer: $why"
  exit 2
}

start_server() {  # start_server NAME : fresh server on a fresh port; sets SPID SPORT, or ends the run
  local name=$1 cmd tmo msg rc
  tmo=$(clip "$START_TMO") || { out_of_time "$name" "$ROUND" start; return 1; }
  next_port; SNAME=$name
  cmd=$(server_cmd "$name" "$SPORT")
  printf '=== %s port %s: %s\n' "$(date +%T.%N | cut -c1-12)" "$SPORT" "$cmd" >> "$OUT/server-$name.log"
  # setsid: own session/process group (so CPU/RSS of wrappers and children are counted and the whole
  # group can be stopped by its PID); setpriv --pdeathsig: the server is KILLed if this script dies
  # without cleaning up (e.g. SIGKILL from a harness); taskset: pinned; bash -c execs a simple command.
  setsid "${PDEATH[@]}" taskset -c "$(server_cpus "$name")" bash -c "$cmd" >> "$OUT/server-$name.log" 2>&1 < /dev/null &
  SPID=$!
  msg=$(taskset -c "$CLIENT_CPU" python3 "$HERE/smtp_ready.py" "$SPORT" --pid "$SPID" --timeout "$tmo" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then
    if alive "$SPID"; then :; else wait "$SPID" 2>/dev/null; msg="$msg (exit status $?)"; fi
    abort_start "$name" "$(printf '%s' "$msg" | tail -n 1)"
  fi
  local sid; sid=$(awk '{sub(/^.*\) /,""); print $4}' "/proc/$SPID/stat" 2>/dev/null)
  [ "$sid" = "$SPID" ] || abort_start "$name" "setsid did not give PID $SPID its own session (sid=$sid)"
}

after_step() {  # after_step NAME ROUND STEP T0 : crash check, stop, account time
  local name=$1 r=$2 step=$3 t0=$4 st
  if ! alive "$SPID"; then
    wait "$SPID" 2>/dev/null; st=$?
    fail "$name" "$r" "$step" crash "server process exited during $step (exit status $st)"
    SPID=
  fi
  stop_server
  USED[$name]=$(awk -v u="${USED[$name]:-0}" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", u+b-a}')
}

run_load() {  # run_load NAME TEST ROUND
  local name=$1 t=$2 r=$3 m tmo t0=$EPOCHREALTIME res rc err
  case $t in c1|c20) m=$([ "$t" = c1 ] && echo "$C1_MSGS" || echo "$C20_MSGS") ;; big) m=$BIG_MSGS ;; esac
  start_server "$name" || return
  tmo=$(clip "$TMO") || { out_of_time "$name" "$r" "$t"; after_step "$name" "$r" "$t" "$t0"; return; }
  res=$(RUNS=1 RUN0=$((r - 1)) LABEL=$name SERVER_SID=$SPID CLIENT_CPU=$CLIENT_CPU TMO=$tmo KILL_AFTER=1 \
        MSGS=$m SIZE=$SIZE BIG_MSGS=$m BIG_SIZE=$BIG_SIZE BIG_CONC=4 \
        "$HERE/load.sh" "$SPORT" "$t" 2> "$SCRATCH/client.err" | grep '^RESULT')
  { echo "== $name $t round $r port $SPORT"; cat "$SCRATCH/client.err"; } >> "$OUT/client.log"
  if [ -z "$res" ]; then
    fail "$name" "$r" "$t" error "load.sh produced no result: $(tail -n 1 "$SCRATCH/client.err")"
  else
    echo "$res" >> "$OUT/results.tsv"
    rc=$(cut -f 13 <<< "$res")
    if [ "$rc" != 0 ]; then
      err=$(grep -v '^Command exited' "$SCRATCH/client.err" | tail -n 1)
      if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        if [ "$tmo" -lt "$TMO" ]; then out_of_time "$name" "$r" "$t"
        else fail "$name" "$r" "$t" timeout "smtp-source did not finish $m messages within ${tmo}s"; fi
      else
        fail "$name" "$r" "$t" error "smtp-source exit $rc: ${err:-no message}"
      fi
    fi
    awk -F'\t' -v t="$t" -v p="$SPORT" '{u = t=="big" ? $10 " MB/s  " : $9 " msgs/s"
      printf "  %-9s %-4s r%s  %16s  %6.2fs  srv-cpu %ss  cli-cpu %ss  rc=%s  (port %s)\n", $2, $3, $7, u, $8, $11, $12, $13, p}' \
      <<< "$res" | tee -a "$OUT/run.log"
  fi
  after_step "$name" "$r" "$t" "$t0"
}

run_idle() {  # run_idle NAME ROUND
  local name=$1 r=$2 tmo t0=$EPOCHREALTIME line nfail
  start_server "$name" || return
  tmo=$(clip "$IDLE_TMO") || { out_of_time "$name" "$r" idle; after_step "$name" "$r" idle "$t0"; return; }
  timeout -k 1 "$tmo" taskset -c "$CLIENT_CPU" python3 "$HERE/idle_conns.py" "$SPORT" "$IDLE_N" --sid "$SPID" \
      --label "$name" --timeout "$((tmo > 2 ? tmo - 1 : 1))" "${IDLE_OPTS[@]}" > "$SCRATCH/idle.out" 2>&1
  { echo "== $name idle round $r port $SPORT"; cat "$SCRATCH/idle.out"; } >> "$OUT/client.log"
  line=$(grep '^IDLE' "$SCRATCH/idle.out")
  if [ -z "$line" ]; then
    if [ "$tmo" -lt "$IDLE_TMO" ]; then out_of_time "$name" "$r" idle
    else fail "$name" "$r" idle error "idle_conns.py: $(tail -n 1 "$SCRATCH/idle.out")"; fi
  else
    printf '%s\t%s\n' "$line" "$r" >> "$OUT/idle.tsv"
    nfail=$(cut -f 5 <<< "$line")
    [ "$nfail" != 0 ] && fail "$name" "$r" idle error \
      "$nfail of $IDLE_N idle connections failed: $(grep -o 'first: .*' "$SCRATCH/idle.out" | head -n 1)"
    awk -F'\t' '{printf "  %-9s idle r%s  %6.2f kB VmRSS/conn  (%s ok, %s failed; VmRSS %s -> %s kB)\n", $2, $12, $10, $4, $5, $6, $7}' \
      <<< "$line	$r" | tee -a "$OUT/run.log"
  fi
  after_step "$name" "$r" idle "$t0"
}

# ---- the rounds --------------------------------------------------------------------------------
for ROUND in $(seq 1 "$ROUNDS"); do
  order=("${SERVERS[@]}")
  if [ $((ROUND % 2)) -eq 0 ]; then
    order=(); for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do order+=("${SERVERS[i]}"); done
  fi
  log "round $ROUND/$ROUNDS (order: ${order[*]})  [$(elapsed)s]"
  if [ "$ROUND" -le "$IDLE_ROUNDS" ]; then
    for s in "${order[@]}"; do run_idle "$s" "$ROUND"; [ $OUT_OF_TIME = 1 ] && break 2; done
  fi
  for t in "${TESTS[@]}"; do
    for s in "${order[@]}"; do run_load "$s" "$t" "$ROUND"; [ $OUT_OF_TIME = 1 ] && break 3; done
  done
done
log "done in $(elapsed)s; loadavg $(cut -d' ' -f1-3 /proc/loadavg); time per server: $(used_summary)"
finish
