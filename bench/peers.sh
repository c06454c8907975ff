#!/usr/bin/env bash
# Peer setups for tlsplane's benchmarks: certificates, the upstream (plain
# HTTP, and HTTPS for "TLS on both sides") and one TCP-mode TLS terminator at
# a time, all on loopback.
#
# Sourced by run.sh; also usable by hand:
#   bench/peers.sh setup DIR                 install packages, make certs + configs in DIR
#   bench/peers.sh start DIR upstream|haproxy|nginx|hitch|stunnel|tlsplane-agent
#                                            (runs in the foreground until killed)
#
# Ports (127.0.0.1 only):
#   21080  nginx upstream, plain HTTP: /  (small response) and /1m (1 MiB)
#   21081  the same nginx, HTTPS (TLS 1.3 only, the ECDSA certificate): the
#          upstream of "TLS on both sides"; it logs $ssl_session_reused of
#          every request to run/upstream-tls.access
#   21443  terminator, ECDSA P-256 certificate
#   21444  terminator, RSA-2048 certificate
#   21445  terminator, ECDSA P-256 certificate, re-encrypting to 21081
#          (verifying it: CA = the ECDSA certificate, name "localhost", SNI
#          "localhost"; sessions to the upstream resumed). Only the
#          terminators for which peers_reencrypts is true listen on it.
# (below the ephemeral range; override with BENCH_UPSTREAM_PORT,
# BENCH_UPSTREAM_TLS_PORT, BENCH_ECDSA_PORT, BENCH_RSA_PORT, BENCH_BOTH_PORT)
# Every terminator: TLS 1.2 + 1.3, the same two certificates, session
# tickets and a session cache on, 2 workers/threads.
# BENCH_TLS13_TICKETS: the agent's TlsContext.tls13_tickets (unset: 2).
# BENCH_NGINX_SINGLE=1: the terminating nginx runs without a master process
# (`master_process off`: one process, so that valgrind sees the worker).

BENCH_UPSTREAM_PORT=${BENCH_UPSTREAM_PORT:-21080}
BENCH_ECDSA_PORT=${BENCH_ECDSA_PORT:-21443}
BENCH_RSA_PORT=${BENCH_RSA_PORT:-21444}
BENCH_UPSTREAM_TLS_PORT=${BENCH_UPSTREAM_TLS_PORT:-21081}
BENCH_BOTH_PORT=${BENCH_BOTH_PORT:-21445}
BENCH_WORKERS=${BENCH_WORKERS:-2}
BENCH_SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TLSPLANE_AGENT=${TLSPLANE_AGENT:-}

peers_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Install the Debian packages the peers need (no-op when present).
peers_install() {
    local need=()
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
    command -v hitch >/dev/null || need+=(hitch)
    command -v nginx >/dev/null || need+=(nginx)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
    command -v openssl >/dev/null || need+=(openssl)
    command -v python3 >/dev/null || need+=(python3)
    pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev pkg-config)
    command -v cc >/dev/null || need+=(gcc make)
    if [ ${#need[@]} -gt 0 ]; then
        peers_log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        # Debian may start the packaged services; these benchmarks never use them.
        for s in haproxy nginx hitch stunnel4; do
            if command -v systemctl >/dev/null && systemctl is-active --quiet "$s" 2>/dev/null; then
                systemctl stop "$s" || true
            fi
        done
    fi
}

# Certificates: one ECDSA P-256 and one RSA-2048 self-signed leaf for
# "localhost", shared by every terminator.
peers_certs() {
    local d=$1
    mkdir -p "$d/certs"
    (
        cd "$d/certs"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
            -keyout ecdsa.key -out ecdsa.crt 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
            -keyout rsa.key -out rsa.crt 2>/dev/null
        cat ecdsa.crt ecdsa.key >ecdsa.pem
        cat rsa.crt rsa.key >rsa.pem
        # 48-byte ticket key for tlsplane-agent (name 16 | HMAC 16 | AES 16)
        openssl rand -base64 48 | tr -d '\n' >ticket.key.b64
        chmod 600 ./*.key ./*.pem
    )
}

# True when the terminator can be a TLS client of its upstream as well
# (the 21445 listener). hitch cannot (its backend is cleartext only);
# stunnel's service is either a TLS server or a TLS client, so it would need
# two services chained through a third TCP connection, not the same work.
peers_reencrypts() {
    case $1 in tlsplane-agent | haproxy | nginx) return 0 ;; *) return 1 ;; esac
}

peers_configs() {
    local d=$1 w=$BENCH_WORKERS up=$BENCH_UPSTREAM_PORT e=$BENCH_ECDSA_PORT r=$BENCH_RSA_PORT
    local upt=$BENCH_UPSTREAM_TLS_PORT bt=$BENCH_BOTH_PORT
    local c=$d/certs
    mkdir -p "$d/www" "$d/run" "$d/hitch-ocsp"
    # nginx's upstream worker runs as nobody: it must reach www/
    chmod 755 "$d" "$d/www"

    # --- upstream: nginx, plain HTTP and HTTPS ------------------------------
    # The HTTPS server pins what is negotiated (TLS 1.3, X25519,
    # AES-128-GCM), so that every terminator does the same client-side work,
    # and issues stateless tickets (a TLS 1.3 ticket may then be offered by
    # several connections at once). Its log line per request says whether
    # the terminator resumed: "r" or ".".
    printf 'hello from the upstream\n' >"$d/www/index.html"
    head -c 1048576 /dev/zero >"$d/www/1m"
    chmod 644 "$d/www/index.html" "$d/www/1m"
    cat >"$d/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/run/upstream.pid;
error_log $d/run/upstream.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 9000; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {
        listen 127.0.0.1:$up backlog=4096;
        root $d/www;
        location / { }
    }
    log_format reuse '\$ssl_session_reused \$ssl_protocol \$ssl_cipher \$ssl_curve';
    server {
        listen 127.0.0.1:$upt ssl backlog=4096;
        access_log $d/run/upstream-tls.access reuse;
        ssl_certificate $c/ecdsa.crt;
        ssl_certificate_key $c/ecdsa.key;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_session_tickets on;
        ssl_session_timeout 1h;
        root $d/www;
        location / { }
    }
}
EOF

    # --- haproxy, mode tcp --------------------------------------------------
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread $w
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2
    tune.ssl.cachesize 20000
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend tls_ecdsa
    bind 127.0.0.1:$e ssl crt $c/ecdsa.pem
    default_backend upstream
frontend tls_rsa
    bind 127.0.0.1:$r ssl crt $c/rsa.pem
    default_backend upstream
frontend tls_both
    bind 127.0.0.1:$bt ssl crt $c/ecdsa.pem
    default_backend upstream_tls
backend upstream
    server up1 127.0.0.1:$up
# TLS to the upstream; haproxy resumes sessions to a server by default
backend upstream_tls
    server up1 127.0.0.1:$upt ssl verify required ca-file $c/ecdsa.crt sni str(localhost) verifyhost localhost
EOF

    # --- nginx, stream + ssl ------------------------------------------------
    cat >"$d/nginx-stream.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $w;
daemon off;
$([ "${BENCH_NGINX_SINGLE:-0}" != 1 ] || echo 'master_process off;')
pid $d/run/nginx-stream.pid;
error_log $d/run/nginx-stream.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 9000; }
stream {
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:20m;
    ssl_session_tickets on;
    proxy_timeout 600s;
    server {
        listen 127.0.0.1:$e ssl backlog=4096;
        ssl_certificate $c/ecdsa.crt;
        ssl_certificate_key $c/ecdsa.key;
        proxy_pass 127.0.0.1:$up;
    }
    server {
        listen 127.0.0.1:$r ssl backlog=4096;
        ssl_certificate $c/rsa.crt;
        ssl_certificate_key $c/rsa.key;
        proxy_pass 127.0.0.1:$up;
    }
    server {
        listen 127.0.0.1:$bt ssl backlog=4096;
        ssl_certificate $c/ecdsa.crt;
        ssl_certificate_key $c/ecdsa.key;
        proxy_pass 127.0.0.1:$upt;
        proxy_ssl on;
        # nginx 1.22's default leaves TLS 1.3 out
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_session_reuse on;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate $c/ecdsa.crt;
        proxy_ssl_name localhost;
        proxy_ssl_server_name on;
    }
}
EOF

    # --- hitch ----------------------------------------------------------------
    cat >"$d/hitch.conf" <<EOF
frontend = {
    host = "127.0.0.1"
    port = "$e"
    pem-file = "$c/ecdsa.pem"
}
frontend = {
    host = "127.0.0.1"
    port = "$r"
    pem-file = "$c/rsa.pem"
}
backend = "[127.0.0.1]:$up"
workers = $w
backlog = 4096
daemon = off
tls-protos = TLSv1.2 TLSv1.3
ocsp-dir = "$d/hitch-ocsp"
log-level = 1
syslog = off
user = "nobody"
EOF

    # --- stunnel (one process, a thread per connection) -----------------------
    cat >"$d/stunnel.conf" <<EOF
foreground = yes
pid =
syslog = no
debug = err
output = $d/run/stunnel.log
sslVersionMin = TLSv1.2
sessionCacheSize = 20000
[tls_ecdsa]
accept = 127.0.0.1:$e
connect = 127.0.0.1:$up
cert = $c/ecdsa.crt
key = $c/ecdsa.key
[tls_rsa]
accept = 127.0.0.1:$r
connect = 127.0.0.1:$up
cert = $c/rsa.crt
key = $c/rsa.key
EOF

    # --- tlsplane-agent: a tlsplane.v1.Snapshot in protobuf's JSON mapping ----
    python3 - "$d" "$e" "$r" "$up" "$bt" "$upt" "${BENCH_TLS13_TICKETS:-}" >"$d/tlsplane-snapshot.json" <<'PY'
import json, sys
d, e, r, up, bt, upt, tickets = sys.argv[1:8]
c = d + "/certs/"
rd = lambda p: open(c + p).read()
tk = open(c + "ticket.key.b64").read().strip()
def listener(kind, port):
    ctx = "tlsContexts/" + kind
    cert = "certificates/" + kind
    return {
        "listener": {"name": "listeners/bench-" + kind, "address": "127.0.0.1:" + port,
                     "defaultTlsContext": ctx, "upstream": "127.0.0.1:" + up},
        "tlsContexts": {ctx: {
            "tlsContext": dict({"name": ctx, "certificates": [cert], "sessionTickets": True},
                               **({"tls13Tickets": int(tickets)} if tickets else {})),
            "certificates": [{"certificate": {"name": cert, "certificateChainPem": rd(kind + ".crt")},
                              "privateKeyPem": rd(kind + ".key")}]}},
        "ticketKeys": [{"key": tk, "active": True}],
    }
# TLS on both sides: the ECDSA context to clients, a client context trusting
# the upstream's certificate to the upstream (SNI and name "localhost").
both = listener("ecdsa", bt)
both["listener"].update(name="listeners/bench-both", upstream="127.0.0.1:" + upt,
                        upstreamTls={"tlsContext": "tlsContexts/upstream", "servername": "localhost"})
both["tlsContexts"]["tlsContexts/upstream"] = {
    "tlsContext": {"name": "tlsContexts/upstream", "client": True,
                   "trustBundle": "trustBundles/upstream"},
    "trustBundle": {"name": "trustBundles/upstream", "caPem": rd("ecdsa.crt")}}
print(json.dumps({"revision": "1", "listeners": [listener("ecdsa", e), listener("rsa", r), both]},
                 indent=1))
PY
}

peers_setup() {
    local d=$1
    peers_install
    mkdir -p "$d"
    peers_certs "$d"
    peers_configs "$d"
}

# The command line of each server (foreground, so that $! is its root pid).
peers_cmd() {
    local d=$1 name=$2
    case $name in
    upstream) echo "nginx -e $d/run/upstream.startup.err -p $d -c $d/upstream.conf" ;;
    haproxy) echo "haproxy -db -f $d/haproxy.cfg" ;;
    nginx) echo "nginx -e $d/run/nginx-stream.startup.err -p $d -c $d/nginx-stream.conf" ;;
    hitch) echo "hitch --config=$d/hitch.conf" ;;
    stunnel) echo "$(command -v stunnel4 || command -v stunnel) $d/stunnel.conf" ;;
    tlsplane-agent)
        local bin=${TLSPLANE_AGENT:-}
        [ -n "$bin" ] || bin=$(peers_agent_bin) || return 1
        echo "$bin --config $d/tlsplane-snapshot.json --workers $BENCH_WORKERS --metrics-listen off"
        ;;
    *) return 1 ;;
    esac
}

peers_agent_bin() {
    local root
    root=$(cd "$BENCH_SRC_DIR/.." && pwd)
    for b in "$TLSPLANE_AGENT" "$root/build/agent/tlsplane-agent" /tmp/build-bench/agent/tlsplane-agent; do
        [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return 0; }
    done
    return 1
}

# Pids listening on a TCP port of 127.0.0.1 (ss -p), one a line.
port_listeners() {
    ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# True when every listener on the given ports belongs to the process tree
# of ROOT: nobody else (SO_REUSEPORT) is taking part of our connections.
ports_owned_by() {
    local root=$1 tree p port
    shift
    tree=" $(tree_pids "$root") "
    for port in "$@"; do
        for p in $(port_listeners "$port"); do
            case $tree in *" $p "*) ;; *) return 1 ;; esac
        done
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Wait until every given port accepts connections.
wait_ports() {
    local deadline=$((SECONDS + ${WAIT_SECS:-15})) p
    for p in "$@"; do
        until port_open "$p"; do
            [ $SECONDS -lt $deadline ] || return 1
            sleep 0.05
        done
    done
}

wait_ports_closed() {
    local deadline=$((SECONDS + 10)) p
    for p in "$@"; do
        while port_open "$p"; do
            [ $SECONDS -lt $deadline ] || return 1
            sleep 0.05
        done
    done
}

# Start a server in the background (a child of this shell); sets PEERS_PID.
peers_start_bg() {
    local d=$1 name=$2 cmd
    PEERS_PID=
    cmd=$(peers_cmd "$d" "$name") || { peers_log "no command for $name"; return 1; }
    # shellcheck disable=SC2086
    $cmd >>"$d/run/$name.out" 2>&1 </dev/null &
    PEERS_PID=$!
}

# All pids of a process tree (root first).
tree_pids() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END {
            q[1] = root; n = 1; i = 1
            while (i <= n) {
                p = q[i++]; printf "%s ", p
                m = split(kids[p], k, " ")
                for (j = 1; j <= m; j++) q[++n] = k[j]
            }
        }'
}

# utime+stime (clock ticks) summed over a process tree.
tree_cpu_ticks() {
    local p total=0 t
    for p in $(tree_pids "$1"); do
        [ -r "/proc/$p/stat" ] || continue
        # fields after the ")" of comm: state is $1, utime $12, stime $13
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
        [ -n "$t" ] && total=$((total + t))
    done
    echo "$total"
}

# VmRSS (KiB) summed over a process tree.
tree_rss_kb() {
    local p total=0 t
    for p in $(tree_pids "$1"); do
        t=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
        [ -n "$t" ] && total=$((total + t))
    done
    echo "$total"
}

stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        # children first, then the root
        local p
        for p in $(tree_pids "$pid"); do kill -KILL "$p" 2>/dev/null; done
    fi
    wait "$pid" 2>/dev/null || true
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case ${1:-} in
    setup) peers_setup "${2:?DIR}" ;;
    start)
        d=${2:?DIR}; name=${3:?NAME}
        cmd=$(peers_cmd "$d" "$name")
        # shellcheck disable=SC2086
        exec $cmd
        ;;
    *) echo "usage: $0 setup DIR | start DIR NAME" >&2; exit 2 ;;
    esac
fi
