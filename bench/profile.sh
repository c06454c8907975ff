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
#   bench/profile.sh --terminators "tlsplane-agent nginx haproxy" [SCENARIO...]
#       the same profile for each named terminator in turn (one at a time),
#       with the configs bench/run.sh uses (bench/peers.sh), 1 worker each:
#       nginx's stream module with `master_process off` (one process, so
#       valgrind sees the worker), haproxy with nbthread 1 and -db. Short
#       defaults as with --compare. Results:
#       $RESULTS_DIR/profile-peers-STAMP.{txt,jsonl}, ending with a table of
#       libcrypto+libssl, the crypto proper, the terminator's own code and libc
#       per operation for every scenario and terminator.
#   bench/profile.sh --massif [--terminators "..."]
#       heap per idle connection under valgrind's massif: a detailed snapshot
#       (through vgdb) before and while IDLE_CONNS TLS 1.3 connections are
#       held after one keep-alive request each; per connection: the heap's
#       growth, the part allocated inside libssl/libcrypto, the part below
#       SSL_new (the SSL object), the rest. Results:
#       $RESULTS_DIR/profile-peers-STAMP-massif.{txt,jsonl}.
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
#   IDLE_CONNS      --massif: idle connections held (default 200)
#   RESULTS_DIR     default bench/results
#   COMPARE_CACHE   --compare's build trees (default /tmp/tlsplane-compare)
#   PROFILE_ECDSA_PORT, PROFILE_RSA_PORT, PROFILE_UPSTREAM_PORT (default:
#                   free ports the kernel picks; so are the re-encrypting
#                   listener's and the HTTPS upstream's, which the peers' configs
#                   name too)
set -euo pipefail

STRACE=0
MASSIF=0
COMPARE=()
TERMS=()
while [ $# -gt 0 ]; do
    case $1 in
    --strace) STRACE=1; shift ;;
    --massif) MASSIF=1; shift ;;
    --terminators)
        [ $# -ge 2 ] || { echo "usage: $0 --terminators \"NAME...\" [SCENARIO...]" >&2; exit 2; }
        read -ra TERMS <<<"$2"
        for t in "${TERMS[@]}"; do
            case $t in tlsplane-agent | nginx | haproxy) ;;
            *) echo "$0: cannot profile $t (tlsplane-agent, nginx, haproxy)" >&2; exit 2 ;;
            esac
        done
        shift 2
        ;;
    --compare)
        [ $# -ge 3 ] || { echo "usage: $0 --compare A B [SCENARIO...]" >&2; exit 2; }
        COMPARE=("$2" "$3")
        shift 3
        ;;
    *) break ;;
    esac
done
if [ ${#COMPARE[@]} -gt 0 ] && { [ ${#TERMS[@]} -gt 0 ] || [ "$MASSIF" = 1 ]; }; then
    echo "$0: --compare takes no --terminators or --massif" >&2
    exit 2
fi
if [ "$MASSIF" = 1 ] && [ ${#TERMS[@]} -eq 0 ]; then TERMS=(tlsplane-agent); fi
if [ ${#COMPARE[@]} -gt 0 ] || [ ${#TERMS[@]} -gt 0 ]; then
    N_HANDSHAKE=${N_HANDSHAKE:-20}
    N_KEEPALIVE=${N_KEEPALIVE:-200}
fi

# Five ports nobody listens on, chosen by the kernel (bound together, then
# released: a port is not handed out twice in that window).
free_ports() {
    python3 -c 'import socket
s = [socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))'
}
read -r P1 P2 P3 P4 P5 <<<"$(free_ports)"
export BENCH_ECDSA_PORT=${PROFILE_ECDSA_PORT:-$P1}
export BENCH_RSA_PORT=${PROFILE_RSA_PORT:-$P2}
export BENCH_UPSTREAM_PORT=${PROFILE_UPSTREAM_PORT:-$P3}
export BENCH_BOTH_PORT=$P4
export BENCH_UPSTREAM_TLS_PORT=$P5
export BENCH_WORKERS=1
export BENCH_NGINX_SINGLE=1
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
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for t in "${TERMS[@]}"; do
    [ "$t" = tlsplane-agent ] || command -v "$t" >/dev/null ||
        { peers_log "$t is not installed (bench/peers.sh setup installs it)"; exit 1; }
done
for p in "$E" "$R" "$BENCH_UPSTREAM_PORT" "$BENCH_BOTH_PORT" "$BENCH_UPSTREAM_TLS_PORT"; do
    if port_open "$p"; then peers_log "port $p is in use; set PROFILE_*_PORT"; exit 1; fi
done
peers_start_bg "$WORK" upstream
PIDS+=("$PEERS_PID")
wait_ports "$BENCH_UPSTREAM_PORT" "$BENCH_UPSTREAM_TLS_PORT" || { peers_log "upstream did not start"; exit 1; }

# The terminator profiled: tlsplane-agent ($AGENT) unless --terminators
# names another.
TERM_NAME=tlsplane-agent
# own_spec NAME -> cgsplit.py's --own: the terminator's own objects
own_spec() {
    case $1 in
    tlsplane-agent) echo agent=tlsplane-agent ;;
    nginx) echo nginx=nginx,ngx_ ;;
    haproxy) echo haproxy=haproxy ;;
    esac
}

# run_agent OUTFILE WRAPPER... : start $TERM_NAME under WRAPPER -> AGENT_PID
run_agent() {
    local log=$1 cmd
    shift
    if [ "$TERM_NAME" = tlsplane-agent ]; then
        cmd=("$AGENT" --config "$WORK/tlsplane-snapshot.json" --workers 1 --metrics-listen off)
    else
        # the command line bench/run.sh starts it with (haproxy -db, nginx
        # in the foreground), the config peers_configs wrote for 1 worker
        read -ra cmd <<<"$(peers_cmd "$WORK" "$TERM_NAME")"
    fi
    "$@" "${cmd[@]}" >"$log" 2>&1 &
    AGENT_PID=$!
    PIDS+=("$AGENT_PID")
    if ! WAIT_SECS=60 wait_ports "$E" "$R"; then
        peers_log "$TERM_NAME did not come up:"
        tail -n 20 "$log" >&2
        exit 1
    fi
}

stop_agent() {
    # under strace the terminator is strace's child: signal it, strace follows
    local kid
    kid=$(pgrep -P "$AGENT_PID" -f "$TERM_NAME" || true)
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

# --massif: heap per idle connection, for each terminator in turn.
# massif_one NAME -> a JSON line on stdout
massif_one() {
    local t=$1 base=$WORK/$1.base.ms held=$WORK/$1.held.ms out=$WORK/$1.idle.json gen
    TERM_NAME=$t
    # the agent's allocation functions for OpenSSL (agent/recbuf.c) count
    # as allocators, so that what OpenSSL allocates through them is OpenSSL's
    run_agent "$WORK/$t.massif.log" valgrind --tool=massif --massif-out-file="$WORK/$t.massif.out" \
        --threshold=0.01 --vgdb=yes --alloc-fn=recbuf_malloc --alloc-fn=recbuf_realloc
    # one request first, so that start-up allocations (first handshake,
    # first upstream connection) are in the baseline
    "$TLSLOAD" -m keepalive --tls1.3 "${TLSOPTS[@]}" -c 1 -n 1 "127.0.0.1:$E" >/dev/null
    vgdb --pid="$AGENT_PID" detailed_snapshot "$base" >/dev/null 2>&1
    "$TLSLOAD" -m idle --tls1.3 "${TLSOPTS[@]}" -c "$IDLE_CONNS" --inflight 20 -d 600 \
        --timeout 60 "127.0.0.1:$E" >"$out" &
    gen=$!
    for _ in $(seq 1 1200); do
        grep -q '"ready"' "$out" && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '"ready"' "$out" || { peers_log "$t: idle connections not established"; exit 1; }
    sleep 2
    vgdb --pid="$AGENT_PID" detailed_snapshot "$held" >/dev/null 2>&1
    kill -TERM "$gen" 2>/dev/null || true
    wait "$gen" 2>/dev/null || true
    stop_agent
    python3 - "$t" "$base" "$held" "$(head -n 1 "$out")" <<'PY'
import json, re, sys
t, base, held, ready = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
node = re.compile(r"^( *)n\d+: (\d+) (.*)$")
def load(path):
    # total heap, malloc's extra bytes, bytes allocated inside
    # libssl/libcrypto (the allocation function's direct caller is theirs),
    # bytes below SSL_new (outermost SSL_new on each allocation stack)
    heap = extra = ossl = ssl_new = 0
    stack = []  # (depth, is SSL_new or below)
    for line in open(path):
        if line.startswith("mem_heap_B="):
            heap = int(line.split("=")[1])
        elif line.startswith("mem_heap_extra_B="):
            extra = int(line.split("=")[1])
        m = node.match(line.rstrip("\n"))
        if not m:
            continue
        depth, b, what = len(m.group(1)), int(m.group(2)), m.group(3)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        under = bool(stack) and stack[-1][1]
        here = re.search(r": SSL_new \(", what) is not None
        if here and not under:
            ssl_new += b
        if depth == 1 and re.search(r"\(in [^)]*lib(ssl|crypto)\.so", what):
            ossl += b
        stack.append((depth, under or here))
    return heap, extra, ossl, ssl_new
b, h = load(base), load(held)
n = ready.get("established", 0)
per = lambda i: round((h[i] - b[i]) / n) if n else 0
print(json.dumps({"terminator": t, "idle_conns": n, "heap_per_conn": per(0),
                  "malloc_extra_per_conn": per(1), "openssl_per_conn": per(2),
                  "ssl_new_per_conn": per(3), "rest_per_conn": per(0) - per(2)}))
PY
}

if [ "$MASSIF" = 1 ]; then
    command -v vgdb >/dev/null || { peers_log "vgdb (valgrind) is not installed"; exit 1; }
    IDLE_CONNS=${IDLE_CONNS:-200}
    TXT=$RESULTS_DIR/profile-peers-$STAMP-massif.txt
    JSONL=$RESULTS_DIR/profile-peers-$STAMP-massif.jsonl
    : >"$JSONL"
    for t in "${TERMS[@]}"; do
        peers_log "$t: $IDLE_CONNS idle connections under massif"
        massif_one "$t" >>"$JSONL"
    done
    {
        echo "# heap per idle TLS 1.3 connection after one request, valgrind massif, $STAMP ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
        echo "# $(openssl version); 1 worker; bytes per connection: (held snapshot - baseline) / connections"
        echo "# openssl = allocated inside libssl/libcrypto; SSL_new = below SSL_new (the SSL object); rest = the terminator, libuv, libc"
        echo
        python3 - "$JSONL" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("%-16s %6s %10s %10s %10s %10s %12s" % ("terminator", "conns", "heap", "openssl", "SSL_new", "rest", "malloc extra"))
for r in rows:
    print("%-16s %6d %10d %10d %10d %10d %12d" % (r["terminator"], r["idle_conns"], r["heap_per_conn"],
          r["openssl_per_conn"], r["ssl_new_per_conn"], r["rest_per_conn"], r["malloc_extra_per_conn"]))
PY
    } | tee "$TXT"
    peers_log "results: $TXT $JSONL"
    exit 0
fi

# --terminators: the same profile for the agent and its peers.
if [ ${#TERMS[@]} -gt 0 ]; then
    TXT=$RESULTS_DIR/profile-peers-$STAMP.txt
    JSONL=$RESULTS_DIR/profile-peers-$STAMP.jsonl
    : >"$JSONL"
    {
        echo "# callgrind profile of ${TERMS[*]} $STAMP ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
        echo "# $(openssl version); $(nginx -v 2>&1 | sed 's|.*: ||'); $(haproxy -v | awk 'NR==1 {print "haproxy " $3}') (Debian, DEBUG_STRICT)"
        echo "# Ir = instructions per operation, (2N - N) / N; 1 worker; $CONCURRENCY clients; kernel not included"
    } | tee "$TXT"
    for spec in "${ALL[@]}"; do
        IFS='|' read -r id args port <<<"$spec"
        selected "$id" || continue
        n=$(ops_for "$id")
        for t in "${TERMS[@]}"; do
            TERM_NAME=$t
            peers_log "$id, $t: $n and $((2 * n)) operations under callgrind"
            profile_one "$id" "$args" "$port" "$n" ".$t"
            profile_one "$id" "$args" "$port" $((2 * n)) ".$t"
            {
                echo
                echo "## $id, $t ($n ops)"
                python3 "$BENCH_DIR/cgsplit.py" --own "$(own_spec "$t")" "$n" \
                    "$WORK/$id.$t.$n.out" "$WORK/$id.$t.$((2 * n)).out"
            } | tee -a "$TXT"
            printf '{"scenario":"%s","terminator":"%s","ops":%d,"load":%s,"profile":%s}\n' "$id" "$t" "$n" \
                "$(tail -n 1 "$WORK/$id.$t.$((2 * n)).load.json" 2>/dev/null || echo null)" \
                "$(python3 "$BENCH_DIR/cgsplit.py" --json --own "$(own_spec "$t")" "$n" \
                    "$WORK/$id.$t.$n.out" "$WORK/$id.$t.$((2 * n)).out")" >>"$JSONL"
        done
    done
    {
        echo
        echo "## Summary: Ir per operation"
        echo "# ssl+crypto = libssl + libcrypto; crypto proper = EVP_PKEY_keygen + EVP_PKEY_derive (X25519)"
        echo "# + EVP_DigestSign (ECDSA P-256), inclusive; own = the terminator's binary (nginx: and its modules)"
        python3 - "$JSONL" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("%-14s %-15s %10s %11s %9s %9s %9s %9s %8s %9s %8s %9s %8s" % (
    "scenario", "terminator", "total", "ssl+crypto", "libssl", "libcrypto", "keygen", "derive",
    "sign", "own", "libc", "other", "resumed"))
for r in rows:
    p, o = r["profile"], r["profile"]["by_object"]
    inc = p["inclusive"]
    load = r.get("load") or {}
    print("%-14s %-15s %10d %11d %9d %9d %9d %9d %8d %9d %8d %9d %8s" % (
        r["scenario"], r["terminator"], p["ir_per_op"], o.get("libssl", 0) + o.get("libcrypto", 0),
        o.get("libssl", 0), o.get("libcrypto", 0), inc.get("EVP_PKEY_keygen", 0),
        inc.get("EVP_PKEY_derive", 0), inc.get("EVP_DigestSign", 0), o.get(p["own"], 0),
        o.get("libc", 0), o.get("libuv", 0) + o.get("other", 0),
        "%s/%s" % (load.get("resumed", "?"), load.get("ops", "?"))))
PY
    } | tee -a "$TXT"
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
