#!/usr/bin/env bash
# tlsplane benchmark suite: tlsplane-agent and its peers (haproxy, nginx,
# hitch, stunnel) terminating TLS in front of the same nginx upstream (plain
# HTTP; HTTPS for "TLS on both sides"), everything on 127.0.0.1. See
# bench/README.md for the method.
#
#   bench/run.sh                         all terminators, 3 rounds (~13 min on 2 cores)
#   TERMINATORS="haproxy nginx" ROUNDS=1 DURATION=3 bench/run.sh
#   SCENARIOS="full_ecdsa_13 tls_both_13" TERMINATORS="tlsplane-agent haproxy nginx" bench/run.sh
#
# Environment:
#   TERMINATORS   default "tlsplane-agent haproxy nginx hitch stunnel"
#   SCENARIOS     which figures, default all: idle_rss full_ecdsa_13 full_rsa_13
#                 resumed_13 full_ecdsa_12 resumed_12 keepalive_13 bulk_13 tls_both_13
#   ROUNDS        interleaved rounds, the table shows medians (default 3)
#   DURATION      seconds per throughput measurement (default 5)
#   IDLE_CONNS    idle TLS connections for the memory column (default 2000)
#   CONCURRENCY   clients for the throughput columns (default 50)
#   GEN_THREADS   tlsload threads (default 1)
#   TLSPLANE_AGENT  path of the agent binary (default: build/agent/tlsplane-agent,
#                 then /tmp/build-bench/agent/tlsplane-agent; BUILD_AGENT=1 builds it)
#   RESULTS_DIR   default bench/results
#   KEEP_WORKDIR  1: keep the temp dir with configs and server logs
#   BENCH_ECDSA_PORT, BENCH_RSA_PORT, BENCH_BOTH_PORT  (21443, 21444, 21445),
#   BENCH_UPSTREAM_PORT, BENCH_UPSTREAM_TLS_PORT  (21080, 21081)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=peers.sh
source "$BENCH_DIR/peers.sh"

TERMINATORS=${TERMINATORS:-"tlsplane-agent haproxy nginx hitch stunnel"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
IDLE_CONNS=${IDLE_CONNS:-2000}
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
BT=$BENCH_BOTH_PORT
# Pin what is negotiated so every terminator does the same work:
# X25519 key exchange (P-256 listed for TLS 1.2's ECDSA curve check),
# AES-128-GCM in both versions.
TLSOPTS=(--groups X25519:P-256 --ciphersuites TLS_AES_128_GCM_SHA256
    --cipher ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256)

# scenario id | tlsload arguments | port (appended to the arguments)
# tls_both_13 ("TLS on both sides"): full ECDSA TLS 1.3 handshakes from the
# client, each connection re-encrypted to the HTTPS upstream with TLS 1.3,
# resuming the terminator's session to it; the upstream's log counts the
# resumptions.
SCENARIO_SPECS=(
    "full_ecdsa_13|-m full --tls1.3|$E"
    "full_rsa_13|-m full --tls1.3|$R"
    "resumed_13|-m resumed --tls1.3|$E"
    "full_ecdsa_12|-m full --tls1.2|$E"
    "resumed_12|-m resumed --tls1.2|$E"
    "keepalive_13|-m keepalive --tls1.3|$E"
    "bulk_13|-m bulk --tls1.3|$E"
    "tls_both_13|-m full --tls1.3|$BT"
)
ALL_SCENARIOS="idle_rss"
for spec in "${SCENARIO_SPECS[@]}"; do ALL_SCENARIOS+=" ${spec%%|*}"; done
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
for s in $SCENARIOS; do
    case " $ALL_SCENARIOS " in
    *" $s "*) ;;
    *)
        echo "run.sh: unknown scenario $s (known: $ALL_SCENARIOS)" >&2
        rmdir "$WORK"
        exit 2
        ;;
    esac
done
selected() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
UPTLS_LOG= # the HTTPS upstream's log (one line per request: "r" if resumed)

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
    wait_ports_closed "$E" "$R" "$BT" || peers_log "ports still open after stopping $1"
}

# The ports a terminator listens on.
term_ports() {
    if peers_reencrypts "$1"; then echo "$E $R $BT"; else echo "$E $R"; fi
}

# Start a terminator and wait until all its ports accept -> TERM_PID.
start_terminator() {
    local name=$1 p
    TERM_PID=
    for p in $E $R $BT; do
        if port_open "$p"; then
            peers_log "port $p is already in use by another program: not starting $name"
            return 1
        fi
    done
    start_server "$name" || return 1
    # shellcheck disable=SC2046
    if ! wait_ports $(term_ports "$name") || ! kill -0 "$SERVER_PID" 2>/dev/null; then
        peers_log "$name did not come up; its output:"
        tail -n 20 "$WORK/run/$name.out" >&2 || true
        stop_server "$SERVER_PID"
        return 1
    fi
    TERM_PID=$SERVER_PID
}

# Append fields to a one-line JSON object.
json_add() { local line=$1; shift; printf '%s,%s}\n' "${line%\}}" "$*"; }

# Lines in the HTTPS upstream's log, once it has stopped growing (it writes
# a request's line after sending the response).
uptls_lines() {
    local n m i
    n=$(wc -l <"$UPTLS_LOG")
    for i in $(seq 1 40); do
        sleep 0.05
        m=$(wc -l <"$UPTLS_LOG")
        [ "$m" = "$n" ] && break
        n=$m
    done
    echo "$n"
}

# JSON fields for the upstream's log lines after line FROM: connections
# (one request each), how many the terminator resumed, and what the first
# one negotiated.
uptls_fields() {
    tail -n +$(($1 + 1)) "$UPTLS_LOG" | awk '
        { n++; if ($1 == "r") r++; if (n == 1) tls = $2 " " $3 " " $4 }
        END { printf "\"upstream_conns\":%d,\"upstream_resumed\":%d,\"upstream_tls\":\"%s\"", n, r, tls }'
}

measure_throughput() { # name pid round scenario-spec
    local name=$1 pid=$2 round=$3 spec=$4 id args port t0 t1 line up0=
    IFS='|' read -r id args port <<<"$spec"
    if [ "$id" = tls_both_13 ]; then
        if ! peers_reencrypts "$name"; then
            echo "{\"terminator\":\"$name\",\"scenario\":\"$id\",\"round\":$round,\"unsupported\":true}" >>"$RAW"
            peers_log "  $id: $name cannot be a TLS client of its upstream: not measured"
            return 0
        fi
        up0=$(uptls_lines)
    fi
    t0=$(tree_cpu_ticks "$pid")
    # shellcheck disable=SC2086
    line=$("$TLSLOAD" $args "${TLSOPTS[@]}" -c "$CONCURRENCY" -t "$GEN_THREADS" -d "$DURATION" \
        --label "$name/$id" "127.0.0.1:$port") || line='{"ops":0,"errors":-1}'
    t1=$(tree_cpu_ticks "$pid")
    local shared=false
    # shellcheck disable=SC2046
    if ! ports_owned_by "$pid" $(term_ports "$name") ||
        ! ports_owned_by "$UP" "$BENCH_UPSTREAM_PORT" "$BENCH_UPSTREAM_TLS_PORT"; then
        shared=true
        peers_log "  WARNING: another program listens on a benchmark port: $id of $name is not valid"
    fi
    line=$(json_add "$line" "\"terminator\":\"$name\",\"scenario\":\"$id\",\"round\":$round,\"cpu_ticks\":$((t1 - t0)),\"clk_tck\":$CLK_TCK,\"port_shared\":$shared")
    if [ -n "$up0" ]; then
        uptls_lines >/dev/null
        line=$(json_add "$line" "$(uptls_fields "$up0")")
    fi
    echo "$line" >>"$RAW"
    peers_log "  $id: $(printf '%s' "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); o=j.get("ops",0); c=j["cpu_ticks"]/j["clk_tck"]; u=(", upstream resumed %d/%d" % (j["upstream_resumed"], j["upstream_conns"])) if "upstream_conns" in j else ""; print("%d ops, %.0f/s, %.0f us CPU/op, resumed %s, errors %s%s" % (o, j.get("ops_per_s",0), c*1e6/o if o else -1, j.get("resumed"), j.get("errors"), u))')"
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
    # shellcheck disable=SC2046
    if ! ports_owned_by "$pid" $(term_ports "$name") ||
        ! ports_owned_by "$UP" "$BENCH_UPSTREAM_PORT" "$BENCH_UPSTREAM_TLS_PORT"; then
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
    if selected idle_rss; then
        measure_idle_rss "$name" "$round" || { peers_log "  $name: skipped (did not start)"; return 0; }
    fi
    [ "$SCENARIOS" != idle_rss ] || return 0
    start_terminator "$name" || { peers_log "  $name: skipped (did not start)"; return 0; }
    pid=$TERM_PID
    # warm-up (not recorded): first allocations, page faults, caches
    "$TLSLOAD" -m full --tls1.3 "${TLSOPTS[@]}" -c "$CONCURRENCY" -d 1 "127.0.0.1:$E" >/dev/null || true
    for spec in "${SCENARIO_SPECS[@]}"; do
        selected "${spec%%|*}" || continue
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

for p in "$BENCH_UPSTREAM_PORT" "$BENCH_UPSTREAM_TLS_PORT"; do
    if port_open "$p"; then
        echo "run.sh: port $p is in use; set BENCH_UPSTREAM_PORT / BENCH_UPSTREAM_TLS_PORT" >&2
        exit 1
    fi
done
start_server upstream
UP=$SERVER_PID
UPTLS_LOG=$WORK/run/upstream-tls.access
wait_ports "$BENCH_UPSTREAM_PORT" "$BENCH_UPSTREAM_TLS_PORT" || { tail "$WORK/run/upstream.out" >&2; exit 1; }

# Versions, for the report.
{
    echo "{\"meta\":true,\"date\":\"$(date -Iseconds)\",\"nproc\":$(nproc),\"cpu\":\"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\",\"kernel\":\"$(uname -r)\",\"openssl\":\"$(openssl version | awk '{print $2}')\",\"haproxy\":\"$(haproxy -v | awk 'NR==1 {print $3}')\",\"nginx\":\"$(nginx -v 2>&1 | sed 's|.*/||')\",\"hitch\":\"$(hitch --version 2>&1 | awk '{print $2}')\",\"stunnel\":\"$(stunnel4 -version 2>&1 | awk '/^stunnel/ {print $2; exit}')\",\"rounds\":$ROUNDS,\"duration\":$DURATION,\"concurrency\":$CONCURRENCY,\"idle_conns\":$IDLE_CONNS,\"gen_threads\":$GEN_THREADS,\"workers\":$BENCH_WORKERS,\"scenarios\":\"$SCENARIOS\",\"skipped\":\"${SKIPPED[*]:-}\",\"agent\":\"$AGENT_ORIGIN\"}"
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
