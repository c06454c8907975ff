#!/usr/bin/env python3
"""Turn run.sh's raw JSON lines into the markdown report (medians of the rounds)."""
import json
import statistics
import sys

SCEN = [
    ("full_ecdsa_13", "full ECDSA TLS1.3"),
    ("full_rsa_13", "full RSA TLS1.3"),
    ("resumed_13", "resumed TLS1.3"),
    ("full_ecdsa_12", "full ECDSA TLS1.2"),
    ("resumed_12", "resumed TLS1.2"),
    ("keepalive_13", "keep-alive request TLS1.3"),
    ("bulk_13", "bulk MiB per CPU-second"),
    ("idle_rss", "KiB RSS per idle connection"),
    ("tls_both_13", "TLS on both sides: full ECDSA TLS1.3 in, TLS1.3 to the upstream"),
    # not a scenario of its own: the upstream's count during tls_both_13
    ("upstream_resumed", "upstream connections resumed (tls_both_13)"),
]
# Columns that are not a CPU or rate figure of their own.
DERIVED = {"upstream_resumed": "tls_both_13"}
ORDER = ["tlsplane-agent", "haproxy", "nginx", "hitch", "stunnel"]
LABEL = {
    "tlsplane-agent": "tlsplane-agent",
    "haproxy": "haproxy {haproxy} (`mode tcp`)*",
    "nginx": "nginx {nginx} (`stream` + ssl)",
    "hitch": "hitch {hitch}",
    "stunnel": "stunnel {stunnel}",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def metric(j):
    """The figure of one run: CPU us/op, MiB per CPU-second, or KiB per idle connection."""
    s = j["scenario"]
    ops = j.get("ops", 0)
    if not valid(j):
        return None
    if s == "idle_rss":
        if not ops or ops < 0.99 * j.get("idle_conns", 2000):
            return None  # connections failed: no figure
        return (j["rss_held_kb"] - j["rss_before_kb"]) / ops
    cpu = j["cpu_ticks"] / j["clk_tck"]
    if not ops or j.get("errors", 0) < 0:
        return None
    if s == "bulk_13":
        return (j["body_bytes"] / 1048576.0) / cpu if cpu else None
    return cpu * 1e6 / ops


def valid(j):
    """A run counts only if it had (almost) no errors and nobody shared our ports."""
    if j.get("port_shared"):
        return False
    ops, err = j.get("ops", 0), j.get("errors", 0)
    if err < 0 or ops <= 0:
        return False
    return err <= 0.001 * (ops + err)


def rate(j):
    if not valid(j):
        return None
    if j["scenario"] == "bulk_13":
        return j.get("mib_per_s")
    return j.get("ops_per_s")


def upstream_counts(rs):
    """(resumed, connections) at the HTTPS upstream over the valid runs."""
    rs = [j for j in rs if valid(j) and "upstream_conns" in j]
    return sum(j["upstream_resumed"] for j in rs), sum(j["upstream_conns"] for j in rs)


def upstream_cell(rs):
    res, conns = upstream_counts(rs)
    if not conns:
        return None
    return f"{100.0 * res / conns:.1f} % ({res}/{conns})"


def unsupported(rs):
    return bool(rs) and all(j.get("unsupported") for j in rs)


def fmt(x, nd=0):
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}"


def main():
    meta = {}
    runs = {}
    for line in open(sys.argv[1]):
        line = line.strip()
        if not line:
            continue
        j = json.loads(line)
        if j.get("meta"):
            meta = j
            continue
        runs.setdefault((j["terminator"], j["scenario"]), []).append(j)
    terms = [t for t in ORDER if any(k[0] == t for k in runs)]
    terms += sorted({k[0] for k in runs} - set(terms))
    notes = set()
    # only the scenarios this run measured (run.sh SCENARIOS=...)
    global SCEN
    SCEN = [(sid, name) for sid, name in SCEN if any(k[1] == DERIVED.get(sid, sid) for k in runs)]

    out = []
    p = out.append
    p(f"# tlsplane benchmark, {meta.get('date', '')}")
    p("")
    p(f"Machine: {meta.get('nproc')} vCPU {meta.get('cpu')}, kernel {meta.get('kernel')}, "
      f"OpenSSL {meta.get('openssl')}. {meta.get('rounds')} interleaved rounds of "
      f"{meta.get('duration')} s per throughput figure, {meta.get('concurrency')} concurrent "
      f"clients (tlsload, {meta.get('gen_threads')} thread), {meta.get('workers')} workers per "
      f"terminator, {meta.get('idle_conns')} idle connections for the memory column. "
      "Everything on 127.0.0.1, one 2-core box shared by generator, terminator and upstream.")
    if meta.get("agent"):
        p("")
        p(f"tlsplane-agent binary: {meta['agent']}.")
    if meta.get("skipped"):
        p("")
        p(f"Not measured (binary missing): {meta['skipped']}.")
    p("")
    p("## Terminator CPU per operation (µs, median of rounds; lower is better)")
    p("")
    p("Bulk: MiB moved per terminator CPU-second (higher is better). "
      "Memory: (RSS held − RSS before) / idle connections, fresh process, whole process tree.")
    p("")
    p("| | " + " | ".join(name for _, name in SCEN) + " |")
    p("|---" * (len(SCEN) + 1) + "|")
    for t in terms:
        cells = []
        for sid, _ in SCEN:
            rs = runs.get((t, DERIVED.get(sid, sid)), [])
            if unsupported(rs):
                cells.append("— ‡")
                notes.add("unsupported")
                continue
            if sid == "upstream_resumed":
                cells.append(upstream_cell(rs) or "n/a")
                continue
            v = med([metric(j) for j in rs])
            cell = fmt(v, 1 if sid == "idle_rss" else 0)
            if sid.startswith("resumed") and v is not None:
                hs = sum(j.get("handshakes", 0) for j in rs if valid(j))
                res = sum(j.get("resumed", 0) for j in rs if valid(j))
                if hs and res < 0.95 * hs:
                    cell += f" († {100.0 * res / hs:.0f} % resumed)"
                    notes.add("resumed")
            cells.append(cell)
        p(f"| {LABEL.get(t, t).format(**{k: meta.get(k, '') for k in ('haproxy', 'nginx', 'hitch', 'stunnel')})} | "
          + " | ".join(cells) + " |")
    p("")
    p("\\* Debian's haproxy is built with `-DDEBUG_STRICT -DDEBUG_MEMORY_POOLS`.")
    if "upstream_resumed" in dict(SCEN):
        p("")
        p("TLS on both sides: each client connection (a full handshake) is re-encrypted "
          "to the HTTPS upstream (TLS 1.3, X25519, AES-128-GCM, the upstream verified by CA "
          "and name); the terminator offers the upstream a session it kept. \"upstream "
          "connections resumed\" is the upstream's own count (nginx `$ssl_session_reused`); "
          "a terminator that does not resume pays a full client handshake per connection.")
    if "unsupported" in notes:
        p("")
        p("‡ Cannot be a TLS client of its upstream: hitch forwards cleartext only; a stunnel "
          "service is either a TLS server or a TLS client (two services chained through a "
          "third TCP connection would not be the same work).")
    if "resumed" in notes:
        p("")
        p("† Fewer than 95 % of the connections resumed, so the figure mixes full and "
          "abbreviated handshakes and is not comparable. tlsload offers each TLS 1.3 ticket "
          "once (OpenSSL's client marks a TLS 1.3 session not resumable after use, as "
          "RFC 8446 advises), so it needs a fresh ticket after every resumption; a server "
          "that sends none after a resumption resumes only every other connection.")
    p("")

    # relative to the best peer
    if "tlsplane-agent" in terms and len(terms) > 1:
        p("## tlsplane-agent relative to the best peer")
        p("")
        p("CPU columns: agent ÷ best peer (target ≤ 0.6). Bulk: agent ÷ best peer (target ≥ 1.5). "
          "Memory: agent KiB (target ≤ 12).")
        p("")
        p("| | " + " | ".join(name for _, name in SCEN) + " |")
        p("|---" * (len(SCEN) + 1) + "|")
        cells = []
        for sid, _ in SCEN:
            if sid == "upstream_resumed":
                cells.append(upstream_cell(runs.get(("tlsplane-agent", DERIVED[sid]), [])) or "n/a")
                continue
            a = med([metric(j) for j in runs.get(("tlsplane-agent", sid), [])])
            peers = [med([metric(j) for j in runs.get((t, sid), [])]) for t in terms if t != "tlsplane-agent"]
            peers = [x for x in peers if x is not None]
            if a is None or not peers:
                cells.append("n/a")
            elif sid == "bulk_13":
                cells.append(f"{a / max(peers):.2f}")
            elif sid == "idle_rss":
                cells.append(f"{a:.1f} KiB")
            else:
                cell = f"{a / min(peers):.2f}"
                if sid.startswith("resumed"):
                    rs = [j for j in runs.get(("tlsplane-agent", sid), []) if valid(j)]
                    hs = sum(j.get("handshakes", 0) for j in rs)
                    if hs and sum(j.get("resumed", 0) for j in rs) < 0.95 * hs:
                        cell += " †"
                cells.append(cell)
        p("| agent / best peer | " + " | ".join(cells) + " |")
        p("")

    rate_scen = [(sid, name) for sid, name in SCEN if sid != "idle_rss" and sid not in DERIVED]
    if rate_scen:
        rates_table(p, terms, runs, rate_scen)
    checks_table(p, terms, runs)
    print("\n".join(out))


def rates_table(p, terms, runs, rate_scen):
    p("## Rates (median; the box, not the terminator alone)")
    p("")
    p("Operations per second (bulk: MiB/s); latency p50 / p99 in ms.")
    p("")
    p("| | " + " | ".join("bulk MiB/s" if sid == "bulk_13" else name
                          for sid, name in rate_scen) + " |")
    p("|---" * (len(rate_scen) + 1) + "|")
    for t in terms:
        cells = []
        for sid, _ in rate_scen:
            rs = runs.get((t, sid), [])
            r = med([rate(j) for j in rs])
            p50 = med([j.get("p50_us") for j in rs if valid(j)])
            p99 = med([j.get("p99_us") for j in rs if valid(j)])
            cells.append("n/a" if r is None else
                         f"{r:.0f} ({p50 / 1000:.1f} / {p99 / 1000:.1f})")
        p(f"| {t} | " + " | ".join(cells) + " |")
    p("")


def checks_table(p, terms, runs):
    p("## Checks (all rounds)")
    p("")
    p("Full handshakes must show 0 resumed; resumed runs ≈ all resumed (the first "
      "handshake of each client is full). Errors should be 0: a run with errors "
      "above 0.1 % of its operations, or during which another program listened on "
      "a benchmark port, is excluded from the medians.")
    p("")
    check_scen = [(sid, name) for sid, name in SCEN if sid not in DERIVED]
    p("| | " + " | ".join(name for _, name in check_scen) + " |")
    p("|---" * (len(check_scen) + 1) + "|")
    for t in terms:
        cells = []
        for sid, _ in check_scen:
            rs = runs.get((t, sid), [])
            if not rs:
                cells.append("n/a")
                continue
            if unsupported(rs):
                cells.append("not supported")
                continue
            ops = sum(j.get("ops", 0) for j in rs)
            err = sum(max(j.get("errors", 0), 0) for j in rs)
            hs = sum(j.get("handshakes", 0) for j in rs)
            res = sum(j.get("resumed", 0) for j in rs)
            neg = rs[0].get("version", "") + " " + rs[0].get("server_key", "")
            bad = sum(1 for j in rs if not valid(j))
            cell = f"{ops} ops, {res}/{hs} resumed, {err} err ({neg.strip()})"
            if any("upstream_conns" in j for j in rs):
                ures = sum(j.get("upstream_resumed", 0) for j in rs)
                uconns = sum(j.get("upstream_conns", 0) for j in rs)
                utls = next((j["upstream_tls"] for j in rs if j.get("upstream_tls")), "")
                cell += f"; upstream: {uconns} connections, {ures} resumed ({utls})"
            cells.append(cell + (f", {bad} run(s) excluded" if bad else ""))
        p(f"| {t} | " + " | ".join(cells) + " |")
    p("")


if __name__ == "__main__":
    main()
