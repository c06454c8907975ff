#!/usr/bin/env bash
# Instruction profile of tlsplane-agent, one scenario at a time, under
# valgrind's callgrind (instruction counts are stable on a noisy machine).
#
#   bench/profile.sh [SCENARIO...]     default: every scenario below
#   bench/profile.sh --strace [SCENARIO...]  also count syscalls (strace -c -f)
#   bench/profile.sh --compare A B [SCENARIO...]
#       builds commits A and B (each in its own git worktree and build tree,
#       RelWithDebInfo, kept in $COMPARE_CACHE by commit id) and prints, per
#       scenario, the agent's Ir/op for A and B side by side with B / A.
#       Short by default (N_HANDSHAKE 20, N_KEEPALIVE 200): a few seconds a
#       scenario and commit. With --strace, the syscall counts of both too.
#
# For each scenario the agent (1 worker, the bench's snapshot) runs twice
# under callgrind: N operations, then 2N. (2N - N) / N is the cost of one
# operation without start-up, shutdown or idle cost. Printed: Ir/op by
# object (agent, libssl, libcrypto, libc, libuv, other), the top functions
# in libssl/libcrypto and in the agent, and inclusive costs of selected
# functions (bench/cgsplit.py). The kernel is not seen by callgrind: syscall
# work is not in these figures (use --strace for the syscall counts).
# Results: $RESULTS_DIR/profile-STAMP.{txt,jsonl}; the callgrind.out files
# stay in the work dir with KEEP_WORKDIR=1 (open with callgrind_annotate).
#
# Environment:
#   TLSPLANE_AGENT  agent binary (default build/agent/tlsplane-agent, RelWithDebInfo)
#   N_HANDSHAKE     handshakes for the handshake scenarios (default 200)
#   N_KEEPALIVE     requests for keepalive_13 (default 2000)
#   CONCURRENCY     tlsload clients (default 4)
#   RESULTS_DIR     default bench/results
#   COMPARE_CACHE   --compare's build trees (default /tmp/tlsplane-compare)
#   PROFILE_ECDSA_PORT, PROFILE_RSA_PORT, PROFILE_UPSTREAM_PORT (default:
#                   free ports the kernel picks)
set -euo pipefail

STRACE=0
COMPARE=()
while [ $# -gt 0 ]; do
    case $1 in
    --strace) STRACE=1; shift ;;
    --compare)
        [ $# -ge 3 ] || { echo "usage: $0 --compare A B [SCENARIO...]" >&2; exit 2; }
        COMPARE=("$2" "$3")
        shift 3
        ;;
    *) break ;;
    esac
done
if [ ${#COMPARE[@]} -gt 0 ]; then
    N_HANDSHAKE=${N_HANDSHAKE:-20}
    N_KEEPALIVE=${N_KEEPALIVE:-200}
fi

# Three ports nobody listens on, chosen by the kernel (bound together, then
# released: a port is not handed out twice in that window).
free_ports() {
    python3 -c 'import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))'
}
read -r P1 P2 P3 <<<"$(free_ports)"
export BENCH_ECDSA_PORT=${PROFILE_ECDSA_PORT:-$P1}
export BENCH_RSA_PORT=${PROFILE_RSA_PORT:-$P2}
export BENCH_UPSTREAM_PORT=${PROFILE_UPSTREAM_PORT:-$P3}
export BENCH_WORKERS=1
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=bench/peers.sh
source "$BENCH_DIR/peers.sh"

N_HANDSHAKE=${N_HANDSHAKE:-200}
N_KEEPALIVE=${N_KEEPALIVE:-2000}
CONCURRENCY=${CONCURRENCY:-4}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
STAMP=$(date +%Y-%m-%d-%H%M)
WORK=$(mktemp -d /tmp/tlsplane-profile.XXXXXX)
E=$BENCH_ECDSA_PORT
R=$BENCH_RSA_PORT
TLSOPTS=(--groups X25519:P-256 --ciphersuites TLS_AES_128_GCM_SHA256
    --cipher ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256)

# scenario id | tlsload arguments | port
ALL=(
    "full_ecdsa_13|-m full --tls1.3|$E"
    "full_rsa_13|-m full --tls1.3|$R"
    "resumed_13|-m resumed --tls1.3|$E"
    "full_ecdsa_12|-m full --tls1.2|$E"
    "resumed_12|-m resumed --tls1.2|$E"
    "keepalive_13|-m keepalive --tls1.3|$E"
)

PIDS=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then peers_log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# build_commit REV -> the agent binary of commit REV, built once in
# COMPARE_CACHE/SHA (a detached worktree of ROOT's repository and its own
# RelWithDebInfo build tree; the worktree is removed after the build).
COMPARE_CACHE=${COMPARE_CACHE:-/tmp/tlsplane-compare}
build_commit() {
    local rev=$1 sha dir
    sha=$(git -C "$ROOT" rev-parse --verify "$rev^{commit}") || return 1
    dir=$COMPARE_CACHE/$sha
    if [ ! -x "$dir/tlsplane-agent" ]; then
        peers_log "building $rev ($sha) in $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        git -C "$ROOT" worktree add -q --detach "$dir/src" "$sha" >&2
        if ! { cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            -DTLSPLANE_TESTS=OFF >"$dir/build.log" 2>&1 &&
            cmake --build "$dir/build" --target tlsplane-agent -j2 >>"$dir/build.log" 2>&1; }; then
            peers_log "build of $rev failed; see $dir/build.log"
            git -C "$ROOT" worktree remove --force "$dir/src" >&2 || true
            return 1
        fi
        cp "$dir/build/agent/tlsplane-agent" "$dir/tlsplane-agent"
        git -C "$ROOT" worktree remove --force "$dir/src" >&2
        rm -rf "$dir/build"
    fi
    echo "$dir/tlsplane-agent"
}

if [ ${#COMPARE[@]} -gt 0 ]; then
    AGENT_A=$(build_commit "${COMPARE[0]}") || exit 1
    AGENT_B=$(build_commit "${COMPARE[1]}") || exit 1
    AGENT=$AGENT_A
else
    AGENT=${TLSPLANE_AGENT:-$ROOT/build/agent/tlsplane-agent}
fi
[ -x "$AGENT" ] || { peers_log "no agent at $AGENT (cmake --build build --target tlsplane-agent)"; exit 1; }
command -v valgrind >/dev/null || { peers_log "valgrind is not installed"; exit 1; }
mkdir -p "$RESULTS_DIR" "$WORK/build"
make -s -C "$BENCH_DIR" BUILD="$WORK/build" "$WORK/build/tlsload"
TLSLOAD=$WORK/build/tlsload
peers_certs "$WORK"
peers_configs "$WORK"
for p in "$E" "$R" "$BENCH_UPSTREAM_PORT"; do
    if port_open "$p"; then peers_log "port $p is in use; set PROFILE_*_PORT"; exit 1; fi
done
peers_start_bg "$WORK" upstream
PIDS+=("$PEERS_PID")
wait_ports "$BENCH_UPSTREAM_PORT" || { peers_log "upstream did not start"; exit 1; }

# run_agent OUTFILE WRAPPER... : start the agent under WRAPPER -> AGENT_PID
run_agent() {
    local log=$1
    shift
    "$@" "$AGENT" --config "$WORK/tlsplane-snapshot.json" --workers 1 --metrics-listen off \
        >"$log" 2>&1 &
    AGENT_PID=$!
    PIDS+=("$AGENT_PID")
    if ! WAIT_SECS=60 wait_ports "$E" "$R"; then
        peers_log "agent did not come up:"
        tail -n 20 "$log" >&2
        exit 1
    fi
}

stop_agent() {
    # under strace the agent is strace's child: signal it, strace follows
    local kid
    kid=$(pgrep -P "$AGENT_PID" -f tlsplane-agent || true)
    kill -TERM "${kid:-$AGENT_PID}" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
    wait_ports_closed "$E" "$R" || true
}

# profile_one ID ARGS PORT N [TAG] -> WORK/ID[TAG].N.out, with $AGENT
profile_one() {
    local id=$1${5:-} args=$2 port=$3 n=$4 out
    out=$WORK/$id.$n.out
    run_agent "$WORK/$id.$n.log" valgrind --tool=callgrind --callgrind-out-file="$out" \
        --dump-instr=no --dump-line=no
    # shellcheck disable=SC2086
    if ! "$TLSLOAD" $args "${TLSOPTS[@]}" -c "$CONCURRENCY" -n "$n" --timeout 60 \
        "127.0.0.1:$port" >"$WORK/$id.$n.load.json"; then
        peers_log "$id: tlsload failed: $(cat "$WORK/$id.$n.load.json")"
    fi
    stop_agent
}

strace_one() {
    local id=$1${5:-} args=$2 port=$3 n=$4
    run_agent "$WORK/$id.strace.log" strace -c -f -o "$WORK/$id.strace"
    # shellcheck disable=SC2086
    "$TLSLOAD" $args "${TLSOPTS[@]}" -c "$CONCURRENCY" -n "$n" "127.0.0.1:$port" >/dev/null || true
    stop_agent
}

SEL=("$@")
selected() { [ ${#SEL[@]} -eq 0 ] || [[ " ${SEL[*]} " == *" $1 "* ]]; }
ops_for() { if [ "$1" = keepalive_13 ]; then echo "$N_KEEPALIVE"; else echo "$N_HANDSHAKE"; fi; }
strace_table() {
    awk 'NR>2 && $1 !~ /^-/ && NF>=5 { if ($5 ~ /^[0-9]+$/) printf "  %-16s %8d %6d\n", $6, $4, $5; else printf "  %-16s %8d %6d\n", $5, $4, 0 }' "$1"
}

if [ ${#COMPARE[@]} -gt 0 ]; then
    TXT=$RESULTS_DIR/compare-$STAMP.txt
    JSONL=$RESULTS_DIR/compare-$STAMP.jsonl
    : >"$JSONL"
    {
        echo "# tlsplane-agent callgrind comparison $STAMP: A = ${COMPARE[0]} ($(git -C "$ROOT" rev-parse --short "${COMPARE[0]}")), B = ${COMPARE[1]} ($(git -C "$ROOT" rev-parse --short "${COMPARE[1]}"))"
        echo "# $(openssl version); Ir = instructions per operation, (2N - N) / N; kernel not included"
        echo
        printf '%-14s %6s %12s %12s %7s\n' scenario ops "A Ir/op" "B Ir/op" "B/A"
    } | tee "$TXT"
    for spec in "${ALL[@]}"; do
        IFS='|' read -r id args port <<<"$spec"
        selected "$id" || continue
        n=$(ops_for "$id")
        peers_log "$id: $n and $((2 * n)) operations under callgrind, A then B"
        for t in A B; do
            if [ $t = A ]; then AGENT=$AGENT_A; else AGENT=$AGENT_B; fi
            profile_one "$id" "$args" "$port" "$n" ".$t"
            profile_one "$id" "$args" "$port" $((2 * n)) ".$t"
            python3 "$BENCH_DIR/cgsplit.py" --json "$n" "$WORK/$id.$t.$n.out" \
                "$WORK/$id.$t.$((2 * n)).out" >"$WORK/$id.$t.json"
            if [ "$STRACE" = 1 ]; then strace_one "$id" "$args" "$port" "$n" ".$t"; fi
        done
        python3 - "$id" "$n" "$WORK/$id.A.json" "$WORK/$id.B.json" "$JSONL" <<'PY' | tee -a "$TXT"
import json, sys
sid, n, fa, fb, jl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
a, b = json.load(open(fa)), json.load(open(fb))
ra, rb = a["ir_per_op"], b["ir_per_op"]
print("%-14s %6d %12d %12d %7.3f" % (sid, n, ra, rb, rb / ra if ra else 0))
for o in ("agent", "libssl", "libcrypto", "libc", "libuv", "other"):
    x, y = a["by_object"].get(o, 0), b["by_object"].get(o, 0)
    if x or y:
        print("  %-12s %6s %12d %12d %+12d" % (o, "", x, y, y - x))
with open(jl, "a") as f:
    f.write(json.dumps({"scenario": sid, "ops": n, "A": a, "B": b}) + "\n")
PY
        if [ "$STRACE" = 1 ]; then
            {
                echo "  syscalls for $n ops (strace -c -f, whole run including start-up):"
                python3 - <(strace_table "$WORK/$id.A.strace") <(strace_table "$WORK/$id.B.strace") <<'PY'
import sys
def load(p):
    return {f[0]: (int(f[1]), int(f[2])) for f in (l.split() for l in open(p)) if len(f) == 3}
a, b = load(sys.argv[1]), load(sys.argv[2])
print("  %-16s %8s %8s %8s %8s" % ("syscall", "A calls", "A errors", "B calls", "B errors"))
for k in sorted(set(a) | set(b), key=lambda k: -max(a.get(k, (0, 0))[0], b.get(k, (0, 0))[0])):
    x, y = a.get(k, (0, 0)), b.get(k, (0, 0))
    print("  %-16s %8d %8d %8d %8d" % (k, x[0], x[1], y[0], y[1]))
PY
            } | tee -a "$TXT"
        fi
    done
    peers_log "results: $TXT $JSONL"
    exit 0
fi

TXT=$RESULTS_DIR/profile-$STAMP.txt
JSONL=$RESULTS_DIR/profile-$STAMP.jsonl
: >"$JSONL"
{
    echo "# tlsplane-agent callgrind profile $STAMP ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "# $(openssl version); Ir = instructions per operation, (2N - N) / N; kernel not included"
} | tee "$TXT"
for spec in "${ALL[@]}"; do
    IFS='|' read -r id args port <<<"$spec"
    selected "$id" || continue
    n=$(ops_for "$id")
    peers_log "$id: $n and $((2 * n)) operations under callgrind"
    profile_one "$id" "$args" "$port" "$n"
    profile_one "$id" "$args" "$port" $((2 * n))
    {
        echo
        echo "## $id ($n ops)"
        python3 "$BENCH_DIR/cgsplit.py" "$n" "$WORK/$id.$n.out" "$WORK/$id.$((2 * n)).out"
    } | tee -a "$TXT"
    printf '{"scenario":"%s","ops":%d,"profile":%s}\n' "$id" "$n" \
        "$(python3 "$BENCH_DIR/cgsplit.py" --json "$n" "$WORK/$id.$n.out" "$WORK/$id.$((2 * n)).out")" >>"$JSONL"
    if [ "$STRACE" = 1 ] && command -v strace >/dev/null; then
        strace_one "$id" "$args" "$port" "$n"
        {
            echo "syscalls for $n ops (strace -c -f; calls / errors):"
            strace_table "$WORK/$id.strace"
        } | tee -a "$TXT"
    fi
done
peers_log "results: $TXT $JSONL"
