#!/usr/bin/env bash
# tlsplane benchmark suite: tlsplane-agent and its peers (haproxy, nginx,
# hitch, stunnel) terminating TLS in front of the same plain-HTTP nginx
# upstream, everything on 127.0.0.1. See bench/README.md for the method.
#
#   bench/run.sh                         all terminators, 3 rounds (~12 min on 2 cores)
#   TERMINATORS="haproxy nginx" ROUNDS=1 DURATION=3 bench/run.sh
#
# Environment:
#   TERMINATORS   default "tlsplane-agent haproxy nginx hitch stunnel"
#   ROUNDS        interleaved rounds, the table shows medians (default 3)
#   DURATION      seconds per throughput measurement (default 5)
#   IDLE_CONNS    idle TLS connections for the memory column (default 2000)
#   IDLE_ONLY     1: only the memory column (a fresh process per round)
#   CONCURRENCY   clients for the throughput columns (default 50)
#   GEN_THREADS   tlsload threads (default 1)
#   TLSPLANE_AGENT  path of the agent binary (default: build/agent/tlsplane-agent,
#                 then /tmp/build-bench/agent/tlsplane-agent; BUILD_AGENT=1 builds it)
#   RESULTS_DIR   default bench/results
#   KEEP_WORKDIR  1: keep the temp dir with configs and server logs
#   BENCH_ECDSA_PORT, BENCH_RSA_PORT, BENCH_UPSTREAM_PORT  (21443, 21444, 21080)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=peers.sh
source "$BENCH_DIR/peers.sh"

TERMINATORS=${TERMINATORS:-"tlsplane-agent haproxy nginx hitch stunnel"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
IDLE_CONNS=${IDLE_CONNS:-2000}
IDLE_ONLY=${IDLE_ONLY:-0}
CONCURRENCY=${CONCURRENCY:-50}
GEN_THREADS=${GEN_THREADS:-1}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
STAMP=$(date +%Y-%m-%d-%H%M)
WORK=$(mktemp -d /tmp/tlsplane-bench.XXXXXX)
RAW=$RESULTS_DIR/$STAMP.jsonl
MD=$RESULTS_DIR/$STAMP.md
CLK_TCK=$(getconf CLK_TCK)

E=$BENCH_ECDSA_PORT
R=$BENCH_RSA_PORT
# Pin what is negotiated so every terminator does the same work:
# X25519 key exchange (P-256 listed for TLS 1.2's ECDSA curve check),
# AES-128-GCM in both versions.
TLSOPTS=(--groups X25519:P-256 --ciphersuites TLS_AES_128_GCM_SHA256
    --cipher ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256)

# scenario id | tlsload arguments (the port is appended)
SCENARIOS=(
    "full_ecdsa_13|-m full --tls1.3|$E"
    "full_rsa_13|-m full --tls1.3|$R"
    "resumed_13|-m resumed --tls1.3|$E"
    "full_ecdsa_12|-m full --tls1.2|$E"
    "resumed_12|-m resumed --tls1.2|$E"
    "keepalive_13|-m keepalive --tls1.3|$E"
    "bulk_13|-m bulk --tls1.3|$E"
)

STARTED_PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
        peers_log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() { # name -> SERVER_PID (also remembered for cleanup)
    peers_start_bg "$WORK" "$1" || return 1
    SERVER_PID=$PEERS_PID
    STARTED_PIDS+=("$SERVER_PID")
}

forget_pid() {
    local p keep=()
    for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}

stop_server() {
    stop_pid "$1"
    forget_pid "$1"
    wait_ports_closed "$E" "$R" || peers_log "ports still open after stopping $1"
}

# Start a terminator and wait until both its ports accept -> TERM_PID.
start_terminator() {
    local name=$1
    TERM_PID=
    if port_open "$E" || port_open "$R"; then
        peers_log "port $E or $R is already in use by another program: not starting $name"
        return 1
    fi
    start_server "$name" || return 1
    if ! wait_ports "$E" "$R" || ! kill -0 "$SERVER_PID" 2>/dev/null; then
        peers_log "$name did not come up; its output:"
        tail -n 20 "$WORK/run/$name.out" >&2 || true
        stop_server "$SERVER_PID"
        return 1
    fi
    TERM_PID=$SERVER_PID
}

# Append fields to a one-line JSON object.
json_add() { local line=$1; shift; printf '%s,%s}\n' "${line%\}}" "$*"; }

measure_throughput() { # name pid round scenario-spec
    local name=$1 pid=$2 round=$3 spec=$4 id args port t0 t1 line
    IFS='|' read -r id args port <<<"$spec"
    t0=$(tree_cpu_ticks "$pid")
    # shellcheck disable=SC2086
    line=$("$TLSLOAD" $args "${TLSOPTS[@]}" -c "$CONCURRENCY" -t "$GEN_THREADS" -d "$DURATION" \
        --label "$name/$id" "127.0.0.1:$port") || line='{"ops":0,"errors":-1}'
    t1=$(tree_cpu_ticks "$pid")
    local shared=false
    if ! ports_owned_by "$pid" "$E" "$R" || ! ports_owned_by "$UP" "$BENCH_UPSTREAM_PORT"; then
        shared=true
        peers_log "  WARNING: another program listens on a benchmark port: $id of $name is not valid"
    fi
    line=$(json_add "$line" "\"terminator\":\"$name\",\"scenario\":\"$id\",\"round\":$round,\"cpu_ticks\":$((t1 - t0)),\"clk_tck\":$CLK_TCK,\"port_shared\":$shared")
    echo "$line" >>"$RAW"
    peers_log "  $id: $(printf '%s' "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); o=j.get("ops",0); c=j["cpu_ticks"]/j["clk_tck"]; print("%d ops, %.0f/s, %.0f us CPU/op, resumed %s, errors %s" % (o, j.get("ops_per_s",0), c*1e6/o if o else -1, j.get("resumed"), j.get("errors")))')"
}

measure_idle_rss() { # name round
    local name=$1 round=$2 pid before held gen out line i
    start_terminator "$name" || return 1
    pid=$TERM_PID
    sleep 0.5
    before=$(tree_rss_kb "$pid")
    out=$WORK/run/idle.$name.$round.json
    : >"$out"
    "$TLSLOAD" -m idle --tls1.3 "${TLSOPTS[@]}" -c "$IDLE_CONNS" --inflight 50 -d 120 \
        --label "$name/idle" "127.0.0.1:$E" >"$out" &
    gen=$!
    for i in $(seq 1 600); do
        grep -q '"ready"' "$out" && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    held=$(tree_rss_kb "$pid")
    local shared=false
    if ! ports_owned_by "$pid" "$E" "$R" || ! ports_owned_by "$UP" "$BENCH_UPSTREAM_PORT"; then
        shared=true
        peers_log "  WARNING: another program listens on a benchmark port: idle_rss of $name is not valid"
    fi
    kill -TERM "$gen" 2>/dev/null || true
    wait "$gen" 2>/dev/null || true
    line=$(tail -n 1 "$out")
    [ -n "$line" ] || line='{"ops":0,"errors":-1}'
    line=$(json_add "$line" "\"terminator\":\"$name\",\"scenario\":\"idle_rss\",\"round\":$round,\"rss_before_kb\":$before,\"rss_held_kb\":$held,\"idle_conns\":$IDLE_CONNS,\"port_shared\":$shared")
    echo "$line" >>"$RAW"
    peers_log "  idle_rss: $before -> $held KiB, $(printf '%s' "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%d established, %.1f KiB/conn" % (j.get("ops",0), (j["rss_held_kb"]-j["rss_before_kb"])/max(j.get("ops",0),1)))')"
    stop_server "$pid"
}

measure_terminator() { # name round
    local name=$1 round=$2 pid spec
    peers_log "round $round: $name"
    measure_idle_rss "$name" "$round" || { peers_log "  $name: skipped (did not start)"; return 0; }
    [ "$IDLE_ONLY" = 1 ] && return 0
    start_terminator "$name" || return 0
    pid=$TERM_PID
    # warm-up (not recorded): first allocations, page faults, caches
    "$TLSLOAD" -m full --tls1.3 "${TLSOPTS[@]}" -c "$CONCURRENCY" -d 1 "127.0.0.1:$E" >/dev/null || true
    for spec in "${SCENARIOS[@]}"; do
        measure_throughput "$name" "$pid" "$round" "$spec"
    done
    stop_server "$pid"
}

# ---------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS * 3 + 100)) ]; then
    echo "run.sh: open-file limit $(ulimit -n) is too low for IDLE_CONNS=$IDLE_CONNS" >&2
    exit 1
fi
mkdir -p "$RESULTS_DIR"
peers_log "work dir $WORK"
peers_setup "$WORK"
make -s -C "$BENCH_DIR" BUILD="$WORK/build" >/dev/null
TLSLOAD=$WORK/build/tlsload

# Which terminators can run.
RUN_TERMS=()
SKIPPED=()
AGENT_ORIGIN=
for t in $TERMINATORS; do
    if [ "$t" = tlsplane-agent ]; then
        if ! peers_agent_bin >/dev/null && [ "${BUILD_AGENT:-0}" = 1 ]; then
            peers_log "building tlsplane-agent in /tmp/build-bench"
            (cd "$ROOT" && cmake -S . -B /tmp/build-bench -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
                cmake --build /tmp/build-bench -j2 --target tlsplane-agent >/dev/null) ||
                peers_log "tlsplane-agent did not build"
        fi
        if ! TLSPLANE_AGENT=$(peers_agent_bin); then
            peers_log "tlsplane-agent binary not found: skipped (set TLSPLANE_AGENT or BUILD_AGENT=1)"
            SKIPPED+=("$t")
            continue
        fi
        if ldd "$TLSPLANE_AGENT" 2>/dev/null | grep -qE 'libasan|libubsan|libtsan'; then
            peers_log "$TLSPLANE_AGENT is a sanitizer build: its figures would be meaningless; skipped"
            SKIPPED+=("$t")
            continue
        fi
        # a private copy, so that a rebuild during the run changes nothing
        mkdir -p "$WORK/bin"
        cp "$TLSPLANE_AGENT" "$WORK/bin/tlsplane-agent"
        AGENT_ORIGIN="$TLSPLANE_AGENT ($(sha256sum "$TLSPLANE_AGENT" | cut -c1-12))"
        TLSPLANE_AGENT=$WORK/bin/tlsplane-agent
        export TLSPLANE_AGENT
    fi
    RUN_TERMS+=("$t")
done
[ ${#RUN_TERMS[@]} -gt 0 ] || { echo "run.sh: nothing to run" >&2; exit 1; }

if port_open "$BENCH_UPSTREAM_PORT"; then
    echo "run.sh: port $BENCH_UPSTREAM_PORT is in use; set BENCH_UPSTREAM_PORT" >&2
    exit 1
fi
start_server upstream
UP=$SERVER_PID
wait_ports "$BENCH_UPSTREAM_PORT" || { tail "$WORK/run/upstream.out" >&2; exit 1; }

# Versions, for the report.
{
    echo "{\"meta\":true,\"date\":\"$(date -Iseconds)\",\"nproc\":$(nproc),\"cpu\":\"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\",\"kernel\":\"$(uname -r)\",\"openssl\":\"$(openssl version | awk '{print $2}')\",\"haproxy\":\"$(haproxy -v | awk 'NR==1 {print $3}')\",\"nginx\":\"$(nginx -v 2>&1 | sed 's|.*/||')\",\"hitch\":\"$(hitch --version 2>&1 | awk '{print $2}')\",\"stunnel\":\"$(stunnel4 -version 2>&1 | awk '/^stunnel/ {print $2; exit}')\",\"rounds\":$ROUNDS,\"duration\":$DURATION,\"concurrency\":$CONCURRENCY,\"idle_conns\":$IDLE_CONNS,\"gen_threads\":$GEN_THREADS,\"workers\":$BENCH_WORKERS,\"skipped\":\"${SKIPPED[*]:-}\",\"agent\":\"$AGENT_ORIGIN\"}"
} >"$RAW"

START=$SECONDS
n=${#RUN_TERMS[@]}
for round in $(seq 1 "$ROUNDS"); do
    # rotate the order each round, so that no terminator always runs first
    for i in $(seq 0 $((n - 1))); do
        measure_terminator "${RUN_TERMS[$(((i + round - 1) % n))]}" "$round"
    done
done
stop_server "$UP"
peers_log "measured in $((SECONDS - START)) s"

python3 "$BENCH_DIR/summarize.py" "$RAW" >"$MD"
peers_log "raw results: $RAW"
peers_log "table: $MD"
cat "$MD"
