#!/usr/bin/env python3
"""Per-operation instruction counts from two callgrind profiles.

  cgsplit.py N SMALL.out BIG.out [--top 15] [--json] [--own LABEL=PAT[,PAT...]]

SMALL.out is the terminator's profile for N operations, BIG.out for 2N; the
difference is N operations without start-up, shutdown and idle cost.
Prints Ir/op by object (the terminator's own code, libssl, libcrypto, libc,
libuv, other), the top functions (self cost) in libssl+libcrypto, in the
terminator's own code and in libc, and the inclusive cost of a few functions named in
bench/README.md.

--own names the terminator's own objects: LABEL is how they are reported
(the key in by_object), PAT substrings of their file names. Default
agent=tlsplane-agent; nginx: nginx=nginx,ngx_ (its dynamic modules count as
its own code); haproxy: haproxy=haproxy.
"""
import json
import re
import sys
from collections import defaultdict

WATCH = [
    "SSL_new", "SSL_free", "SSL_do_handshake", "ssl_cert_dup",
    "SSL_read_ex", "SSL_write_ex", "SSL_read", "SSL_write",
    "EVP_DigestSign", "EVP_DigestSignFinal", "EVP_PKEY_derive",
    "ossl_method_store_fetch", "evp_generic_fetch", "inner_evp_generic_fetch",
    "ossl_namemap_name2num", "ossl_namemap_name2num_n", "ossl_decoder_fetch",
    "OSSL_DECODER_from_data", "EVP_PKEY_CTX_new_from_name", "EVP_PKEY_CTX_new_from_pkey",
    "tls_construct_new_session_ticket", "ecp_nistz256_point_mul",
    "ecp_nistz256_mul_mont", "ossl_x25519", "x25519_scalar_mult",
    "ossl_ecdsa_simple_sign_sig", "ossl_rsa_ossl_private_decrypt",
    "rsa_ossl_private_encrypt", "BN_mod_exp_mont_consttime",
    "CRYPTO_zalloc", "CRYPTO_malloc", "CRYPTO_free", "malloc", "free",
    "EVP_PKEY_keygen", "EVP_PKEY_generate", "SSL_clear", "SSL_accept", "SSL_get_error",
    "EVP_EncryptUpdate", "EVP_DecryptUpdate", "EVP_CipherInit_ex",
]

OWN_LABEL = "agent"
OWN_PATTERNS = ["tlsplane-agent"]


def objname(path):
    b = path.rsplit("/", 1)[-1]
    if b.startswith("libssl"):
        return "libssl"
    if b.startswith("libcrypto"):
        return "libcrypto"
    if b.startswith("libc.") or b.startswith("libc-"):
        return "libc"
    if b.startswith("libuv"):
        return "libuv"
    if any(p in b for p in OWN_PATTERNS):
        return OWN_LABEL
    if b.startswith("ld-linux") or b.startswith("ld-"):
        return "ld.so"
    return "other:" + b


def parse(path):
    selfc = defaultdict(int)  # (obj, fn) -> Ir
    incl = defaultdict(int)  # fn -> self + callees (non-recursive calls)
    names = {"ob": {}, "fn": {}}
    ob = fn = cfn = None
    in_call = False
    comp = re.compile(r"^\((\d+)\)(?: (.*))?$")

    def name(kind, v):
        m = comp.match(v)
        if not m:
            return v
        i, n = m.group(1), m.group(2)
        if n is not None:
            names[kind][i] = n
            return n
        return names[kind].get(i, "?")

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    if cfn != fn:
                        incl[fn] += cost
                    in_call = False
                else:
                    selfc[(ob, fn)] += cost
                    incl[fn] += cost
                continue
            key, _, val = line.partition("=")
            if key == "ob":
                ob = objname(name("ob", val))
            elif key == "fn":
                fn = name("fn", val)
            elif key == "cob":
                name("ob", val)
            elif key == "cfn":
                cfn = name("fn", val)
            elif key == "calls":
                in_call = True
    return selfc, incl


def main():
    global OWN_LABEL, OWN_PATTERNS
    args = sys.argv[1:]
    top = 15
    if "--own" in args:
        i = args.index("--own")
        OWN_LABEL, _, pats = args[i + 1].partition("=")
        OWN_PATTERNS = [p for p in pats.split(",") if p] or [OWN_LABEL]
        del args[i:i + 2]
    as_json = False
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    if "--json" in args:
        args.remove("--json")
        as_json = True
    n, small, big = int(args[0]), args[1], args[2]
    s1, i1 = parse(small)
    s2, i2 = parse(big)
    d = {k: (s2.get(k, 0) - s1.get(k, 0)) / n for k in set(s1) | set(s2)}
    di = {k: (i2.get(k, 0) - i1.get(k, 0)) / n for k in set(i1) | set(i2)}
    byobj = defaultdict(float)
    for (o, _), v in d.items():
        byobj[o if o in (OWN_LABEL, "libssl", "libcrypto", "libc", "libuv") else "other"] += v
    total = sum(byobj.values())
    out = {"ir_per_op": round(total), "own": OWN_LABEL,
           "by_object": {k: round(v) for k, v in byobj.items()}}
    tls = sorted(((v, f, o) for (o, f), v in d.items() if o in ("libssl", "libcrypto")), reverse=True)[:top]
    ag = sorted(((v, f, o) for (o, f), v in d.items() if o == OWN_LABEL), reverse=True)[:top]
    out["top_tls"] = [[f, o, round(v)] for v, f, o in tls]
    lc = sorted(((v, f, o) for (o, f), v in d.items() if o == "libc"), reverse=True)[:top]
    out["top_agent"] = [[f, round(v)] for v, f, o in ag]
    out["top_libc"] = [[f, round(v)] for v, f, o in lc]
    out["inclusive"] = {w: round(di[w]) for w in WATCH if w in di and di[w] > 0}
    if as_json:
        print(json.dumps(out))
        return
    print("Ir/op %d" % total)
    for k in (OWN_LABEL, "libssl", "libcrypto", "libc", "libuv", "other"):
        v = byobj.get(k, 0)
        print("  %-10s %10d  %5.1f%%" % (k, v, 100 * v / total if total else 0))
    print("top %d in libssl/libcrypto (self Ir/op):" % top)
    for v, f, o in tls:
        print("  %10d  %-9s %s" % (v, o, f))
    print("top %d in %s (self Ir/op):" % (top, OWN_LABEL))
    for v, f, o in ag:
        print("  %10d  %s" % (v, f))
    print("top %d in libc (self Ir/op):" % top)
    for v, f, o in lc:
        print("  %10d  %s" % (v, f))
    print("inclusive Ir/op of selected functions:")
    for w, v in out["inclusive"].items():
        print("  %10d  %s" % (v, w))


if __name__ == "__main__":
    main()
