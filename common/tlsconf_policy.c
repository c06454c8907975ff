/* TLS configuration, part 2: cipher policies (ciphers, ciphersuites,
 * ecdhCurve, dhparam, secureProtocol / min and max version,
 * honorCipherOrder) and tls.getCiphers().
 *
 * A policy is validated by applying it to a real SSL_CTX with
 * tlsconf__policy_apply, the same function tlsconf_ctx_build uses, so
 * that "OpenSSL accepts it" is the definition of valid.
 *
 * Decisions (also in tlsconf.h):
 * - No policy, and a policy's empty ciphers / ciphersuites / ecdh_curve:
 *   the default policy, Mozilla intermediate in the server's order (the
 *   seed's 2015 list offered RSA key exchange and CBC with SHA-1; it is
 *   tlsconf_node2015_ciphers now). Empty ciphers with TLS 1.0 / 1.1 on or
 *   ECDHE off: Mozilla old's list, so that every policy valid before the
 *   default changed still serves the clients it served.
 * - No version given: TLS 1.2 to TLS 1.3 (Node's defaults since v12; the
 *   seed's 2015 defaults allowed SSLv3). "TLS_method" / "SSLv23_method"
 *   mean every version this OpenSSL has: TLS 1.0 to TLS 1.3.
 * - Security level: always set explicitly, so that neither a host's
 *   openssl.cnf nor how its libssl was built (Debian builds with level 2,
 *   upstream defaults to 1) makes a server accept what an agent refuses.
 *   2 (112-bit security: RSA, DH >= 2048 bits, no SHA-1 signatures) by
 *   default; 0 when TLS 1.0
 *   or 1.1 is enabled, because OpenSSL 3 allows their MD5-SHA1 / SHA-1
 *   handshake signatures only at level 0 (Mozilla's "old" profile needs
 *   it). An explicit "@SECLEVEL=n" in ciphers overrides all of these.
 * - Without dhparam_pem no DHE cipher is negotiated by a server (the seed:
 *   "If omitted ... DHE ciphers won't be available"); a client context
 *   (upstream_tls) needs none, since the upstream chooses the group
 *   (minDHSize bounds it). So a policy of DHE ciphers only and no DH
 *   parameters is valid on its own, and refused when a server context
 *   is built with it. dhparam_pem has 2048 to 8192
 *   bits: under 2048, DH is within reach of precomputation (Logjam) and
 *   security level 2 refuses it; over 8192 (the largest RFC 7919 group),
 *   the primality check and every DHE handshake cost seconds of CPU.
 * - ciphers may also name TLS 1.3 suites, as Node's option does: they go
 *   to the TLS 1.3 list and the rest to the TLS 1.2 one. */
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlsconf.h"
#include "tlsconf_int.h"

/* Mozilla's "intermediate" configuration, guidelines version 6.0
 * (ssl-config.mozilla.org/guidelines/6.0.json), in its order. */
const char tlsconf_default_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
const char tlsconf_default_ciphersuites[] =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
const char tlsconf_default_groups[] = "X25519:prime256v1:secp384r1";

/* Mozilla's "old" configuration, guidelines version 5.7 (the last with
 * one), in its order. */
const char tlsconf_old_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:"
    "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA256:DHE-RSA-AES256-SHA256:"
    "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA";

const char tlsconf_node2015_ciphers[] =
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:"
    "DHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:DHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA256:"
    "DHE-RSA-AES256-SHA256:HIGH:!aNULL:!eNULL:!EXPORT:!DES:!RC4:!MD5:!PSK:!SRP:!CAMELLIA";

/* Every TLS 1.3 suite OpenSSL 3.0 implements, in its default order
 * followed by the two CCM suites it leaves off by default. */
static const char all_tls13_suites[] = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:"
                                       "TLS_AES_128_GCM_SHA256:TLS_AES_128_CCM_SHA256:"
                                       "TLS_AES_128_CCM_8_SHA256";

/* TLS 1.3 key exchange without elliptic curves (ecdh_disabled). */
static const char ffdhe_groups[] = "ffdhe2048:ffdhe3072:ffdhe4096";

void tlsconf__policy_info_free(struct tlsconf_policy_info *info) {
  for (size_t i = 0; i < info->n_warnings; i++)
    free(info->warnings[i]);
  info->n_warnings = 0;
}

static void warn(struct tlsconf_policy_info *info, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void warn(struct tlsconf_policy_info *info, const char *fmt, ...) {
  if (info == NULL || info->n_warnings >= sizeof(info->warnings) / sizeof(info->warnings[0]))
    return;
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) >= 0)
    info->warnings[info->n_warnings++] = s;
  va_end(ap);
}

/* Protocol versions ------------------------------------------------------ */

static const char *version_name(int v) {
  switch (v) {
  case TLS1_VERSION:
    return "TLS 1.0";
  case TLS1_1_VERSION:
    return "TLS 1.1";
  case TLS1_2_VERSION:
    return "TLS 1.2";
  case TLS1_3_VERSION:
    return "TLS 1.3";
  default:
    return "?";
  }
}

/* TlsVersion -> OpenSSL version; 0 for UNSPECIFIED, -1 for SSL 3.0, -2
 * for an unknown value. */
static int version_from_enum(Tlsplane__V1__TlsVersion v) {
  switch (v) {
  case TLSPLANE__V1__TLS_VERSION__TLS_VERSION_UNSPECIFIED:
    return 0;
  case TLSPLANE__V1__TLS_VERSION__SSL_3_0:
    return -1;
  case TLSPLANE__V1__TLS_VERSION__TLS_1_0:
    return TLS1_VERSION;
  case TLSPLANE__V1__TLS_VERSION__TLS_1_1:
    return TLS1_1_VERSION;
  case TLSPLANE__V1__TLS_VERSION__TLS_1_2:
    return TLS1_2_VERSION;
  case TLSPLANE__V1__TLS_VERSION__TLS_1_3:
    return TLS1_3_VERSION;
  default:
    return -2;
  }
}

static const char *version_enum_name(Tlsplane__V1__TlsVersion v) {
  const ProtobufCEnumValue *ev =
      protobuf_c_enum_descriptor_get_value(&tlsplane__v1__tls_version__descriptor, (int)v);
  return ev ? ev->name : "?";
}

/* secureProtocol: the OpenSSL method names Node accepted, each also with
 * _server_method and _client_method. min 0 marks a refused method. */
static const struct {
  const char *base;
  int min, max;
} methods[] = {
    {"TLS", TLS1_VERSION, TLS1_3_VERSION},
    {"SSLv23", TLS1_VERSION, TLS1_3_VERSION},
    {"TLSv1", TLS1_VERSION, TLS1_VERSION},
    {"TLSv1_1", TLS1_1_VERSION, TLS1_1_VERSION},
    {"TLSv1_2", TLS1_2_VERSION, TLS1_2_VERSION},
    {"TLSv1_3", TLS1_3_VERSION, TLS1_3_VERSION},
    {"SSLv3", 0, 0},
    {"SSLv2", 0, 0},
};

static int versions_from_method(const char *name, int *min, int *max, struct tp_err *err) {
  static const char *const suffixes[] = {"_server_method", "_client_method", "_method"};
  size_t len = strlen(name);
  for (size_t s = 0; s < sizeof(suffixes) / sizeof(suffixes[0]); s++) {
    size_t sl = strlen(suffixes[s]);
    if (len <= sl || strcmp(name + len - sl, suffixes[s]) != 0)
      continue;
    for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
      if (strlen(methods[m].base) != len - sl || strncmp(name, methods[m].base, len - sl) != 0)
        continue;
      if (methods[m].min == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "secure_protocol: %s is not supported by this OpenSSL", name);
      *min = methods[m].min;
      *max = methods[m].max;
      return 0;
    }
    break;
  }
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "secure_protocol: unknown method \"%s\" (accepted: TLS_method, SSLv23_method, "
                    "TLSv1_method, TLSv1_1_method, TLSv1_2_method, TLSv1_3_method, each also "
                    "as _server_method or _client_method)",
                    name);
}

static int versions_resolve(const Tlsplane__V1__CipherPolicy *cp, int *min, int *max,
                            struct tp_err *err) {
  *min = TLS1_2_VERSION;
  *max = TLS1_3_VERSION;
  if (cp == NULL)
    return 0;
  if (cp->secure_protocol[0] != '\0') {
    if (cp->min_version != 0 || cp->max_version != 0)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "secure_protocol: give either secure_protocol or "
                        "min_version/max_version, not both");
    return versions_from_method(cp->secure_protocol, min, max, err);
  }
  const char *fields[2] = {"min_version", "max_version"};
  Tlsplane__V1__TlsVersion given[2] = {cp->min_version, cp->max_version};
  int v[2];
  for (int i = 0; i < 2; i++) {
    v[i] = version_from_enum(given[i]);
    if (v[i] == -1)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: SSL_3_0 is not supported by this OpenSSL", fields[i]);
    if (v[i] == -2)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: unknown TLS version %d", fields[i],
                        (int)given[i]);
  }
  if (v[1] != 0)
    *max = v[1];
  if (v[0] != 0)
    *min = v[0];
  else if (*max < TLS1_2_VERSION)
    *min = TLS1_VERSION; /* "at most TLS 1.1" means TLS 1.0 and 1.1 */
  if (v[0] != 0 && v[1] != 0 && *min > *max)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "min_version: %s is above max_version %s",
                      version_enum_name(cp->min_version), version_enum_name(cp->max_version));
  return 0;
}

/* Cipher lists ----------------------------------------------------------- */

/* Warns about entries of a cipher list that select nothing (OpenSSL
 * ignores them silently, so a typo would go unnoticed). Only positive
 * entries are checked: "!x", "-x", "+x" and "@..." never select. */
static void warn_unknown_ciphers(const char *list, struct tlsconf_policy_info *info) {
  SSL_CTX *scratch = SSL_CTX_new(TLS_server_method());
  char *copy = strdup(list);
  if (scratch == NULL || copy == NULL)
    goto done;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ":;, ", &save); tok; tok = strtok_r(NULL, ":;, ", &save)) {
    if (strchr("!-+@", tok[0]) != NULL)
      continue;
    if (!SSL_CTX_set_cipher_list(scratch, tok))
      warn(info, "ciphers: \"%s\" matches no cipher of this OpenSSL; it is ignored", tok);
  }
done:
  ERR_clear_error();
  free(copy);
  SSL_CTX_free(scratch);
}

static int count_tls13(SSL_CTX *ctx) {
  STACK_OF(SSL_CIPHER) *sk = SSL_CTX_get_ciphers(ctx);
  int n = 0;
  for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++)
    n += strcmp(SSL_CIPHER_get_version(sk_SSL_CIPHER_value(sk, i)), "TLSv1.3") == 0;
  return n;
}

/* SSL_CTX_set_ciphersuites skips names it does not know; a misspelt
 * suite must not silently shrink TLS 1.3 (or turn it off). */
static int apply_ciphersuites(SSL_CTX *ctx, const char *suites, struct tp_err *err) {
  char *copy = strdup(suites);
  if (copy == NULL)
    return tlsconf__oom(err);
  char *save = NULL;
  int rc = 0;
  for (char *tok = strtok_r(copy, ":", &save); tok && rc == 0; tok = strtok_r(NULL, ":", &save)) {
    if (!SSL_CTX_set_ciphersuites(ctx, tok) || count_tls13(ctx) != 1)
      rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "ciphersuites: unknown TLS 1.3 cipher suite \"%s\" (known: %s)", tok,
                      all_tls13_suites);
  }
  free(copy);
  ERR_clear_error();
  if (rc != 0)
    return rc;
  if (!SSL_CTX_set_ciphersuites(ctx, suites) || count_tls13(ctx) == 0) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ciphersuites: OpenSSL refuses \"%s\"", suites);
    tp_err_append_openssl(err);
    return -1;
  }
  return 0;
}

static int apply_groups(SSL_CTX *ctx, const char *groups, const char *field, struct tp_err *err) {
  char *copy = strdup(groups);
  if (copy == NULL)
    return tlsconf__oom(err);
  char *save = NULL;
  int rc = 0;
  for (char *tok = strtok_r(copy, ":", &save); tok && rc == 0; tok = strtok_r(NULL, ":", &save))
    if (!SSL_CTX_set1_groups_list(ctx, tok))
      rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: unknown group \"%s\"", field, tok);
  free(copy);
  ERR_clear_error();
  if (rc != 0)
    return rc;
  if (!SSL_CTX_set1_groups_list(ctx, groups)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: OpenSSL refuses \"%s\"", field, groups);
    tp_err_append_openssl(err);
    return -1;
  }
  return 0;
}

#define DH_BITS_MIN 2048
#define DH_BITS_MAX 8192

/* dhparam_group: one of RFC 7919's groups, built into OpenSSL (no prime
 * to check: they are the standard's). */
static EVP_PKEY *dhparam_group(const char *name, int *bits, struct tp_err *err) {
  static const char *const groups[] = {"ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144",
                                       "ffdhe8192"};
  int known = 0;
  for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
    known |= strcmp(groups[i], name) == 0;
  if (!known) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "dhparam_group: \"%.64s\" is not an RFC 7919 group (ffdhe2048, ffdhe3072, "
               "ffdhe4096, ffdhe6144, ffdhe8192)",
               name);
    return NULL;
  }
  EVP_PKEY *dh = NULL;
  EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)name, 0),
      OSSL_PARAM_construct_end()};
  if (pc == NULL || EVP_PKEY_paramgen_init(pc) <= 0 || EVP_PKEY_CTX_set_params(pc, params) <= 0 ||
      EVP_PKEY_paramgen(pc, &dh) <= 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "dhparam_group: OpenSSL cannot make %s", name);
    tp_err_append_openssl(err);
    EVP_PKEY_free(dh);
    dh = NULL;
  } else {
    *bits = EVP_PKEY_get_bits(dh);
  }
  EVP_PKEY_CTX_free(pc);
  return dh;
}

/* Parses dhparam_pem: DH (PKCS#3) or X9.42 DH parameters of DH_BITS_MIN to
 * DH_BITS_MAX bits that pass OpenSSL's quick check and, with full, its
 * whole check (p and q prime: a composite modulus makes DHE breakable).
 * The whole check costs up to seconds for a large prime that is not a
 * well-known group, so it runs where a policy is accepted (validation),
 * not on every build of an SSL_CTX from it. */
static EVP_PKEY *dhparam_read(const char *pem, int full, int *bits, struct tp_err *err) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  if (b == NULL) {
    tlsconf__oom(err);
    return NULL;
  }
  EVP_PKEY *dh = PEM_read_bio_Parameters(b, NULL);
  BIO_free(b);
  if (dh == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "dhparam_pem: no PEM DH parameters found");
    tp_err_append_openssl(err);
    return NULL;
  }
  int type = EVP_PKEY_get_base_id(dh);
  if (type != EVP_PKEY_DH && type != EVP_PKEY_DHX) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "dhparam_pem: holds %s parameters, not DH",
               EVP_PKEY_get0_type_name(dh) ? EVP_PKEY_get0_type_name(dh) : "other");
    goto failed;
  }
  *bits = EVP_PKEY_get_bits(dh);
  if (*bits < DH_BITS_MIN || *bits > DH_BITS_MAX) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "dhparam_pem: %d-bit DH parameters; %d to %d bits are accepted", *bits, DH_BITS_MIN,
               DH_BITS_MAX);
    goto failed;
  }
  EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(dh, NULL);
  int ok = pc != NULL && (full ? EVP_PKEY_param_check(pc) : EVP_PKEY_param_check_quick(pc)) > 0;
  EVP_PKEY_CTX_free(pc);
  if (!ok) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "dhparam_pem: invalid DH parameters (the modulus must be a safe prime)");
    tp_err_append_openssl(err);
    goto failed;
  }
  return dh;
failed:
  EVP_PKEY_free(dh);
  ERR_clear_error();
  return NULL;
}

/* Whether tok[0..len) names one of the TLS 1.3 suites OpenSSL knows. */
static int is_tls13_suite(const char *tok, size_t len) {
  for (const char *p = all_tls13_suites; *p;) {
    const char *end = strchr(p, ':');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n == len && strncmp(p, tok, n) == 0)
      return 1;
    p += n + (end != NULL);
  }
  return 0;
}

/* Node's ciphers option takes TLS 1.3 suite names too and moves them to
 * the TLS 1.3 list: splits ciphers into *tls12 (the OpenSSL cipher list
 * for TLS 1.2 and below) and *tls13 (TLS 1.3 suites), each malloc'd and
 * possibly empty, the order of each kept. */
static int ciphers_split(const char *ciphers, char **tls12, char **tls13, struct tp_err *err) {
  size_t n = strlen(ciphers);
  char *copy = strdup(ciphers);
  *tls12 = calloc(1, n + 1);
  *tls13 = calloc(1, n + 1);
  if (copy == NULL || *tls12 == NULL || *tls13 == NULL) {
    free(copy);
    free(*tls12);
    free(*tls13);
    *tls12 = *tls13 = NULL;
    return tlsconf__oom(err);
  }
  char *save = NULL;
  for (char *tok = strtok_r(copy, ":;, ", &save); tok; tok = strtok_r(NULL, ":;, ", &save)) {
    char *to = is_tls13_suite(tok, strlen(tok)) ? *tls13 : *tls12;
    if (to[0] != '\0')
      strcat(to, ":");
    strcat(to, tok);
  }
  free(copy);
  return 0;
}

/* At least one cipher must be usable with the enabled versions (a TLS 1.2
 * only policy whose list holds only TLS 1.3 or only SSLv3-era names would
 * accept no handshake). DHE ciphers count only with DH parameters, on a
 * server: a client (upstream_tls) gets the group from the upstream, and a
 * policy on its own (use TLSCONF__POLICY_ALONE) may be a client's. */
static int check_usable(SSL_CTX *ctx, enum tlsconf__policy_use use, const char *ciphers, int min,
                        int max, int have_dh, struct tp_err *err) {
  if (use == TLSCONF__POLICY_ALONE || SSL_CTX_get_ssl_method(ctx) == TLS_client_method())
    have_dh = 1;
  SSL *ssl = SSL_new(ctx);
  STACK_OF(SSL_CIPHER) *sk = ssl ? SSL_get1_supported_ciphers(ssl) : NULL;
  int usable = 0, dhe_only = 0;
  for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++) {
    const SSL_CIPHER *c = sk_SSL_CIPHER_value(sk, i);
    if (SSL_CIPHER_get_kx_nid(c) == NID_kx_dhe && !have_dh)
      dhe_only++;
    else
      usable++;
  }
  sk_SSL_CIPHER_free(sk);
  SSL_free(ssl);
  ERR_clear_error();
  if (usable > 0)
    return 0;
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "ciphers: no cipher of \"%s\" can be used with %s to %s%s", ciphers,
                    version_name(min), version_name(max),
                    dhe_only ? " (a server's DHE ciphers need dhparam_pem or dhparam_group)" : "");
}

const char *tlsconf__policy_groups(const Tlsplane__V1__CipherPolicy *cp) {
  if (cp != NULL && cp->ecdh_disabled)
    return ffdhe_groups;
  const char *curve = cp ? cp->ecdh_curve : "";
  if (curve[0] == '\0')
    return tlsconf_default_groups;
  if (strcmp(curve, "auto") == 0)
    return NULL;
  return curve;
}

int tlsconf__policy_apply(SSL_CTX *ctx, const Tlsplane__V1__CipherPolicy *cp,
                          enum tlsconf__policy_use use, struct tlsconf_policy_info *info,
                          struct tp_err *err) {
  int min, max;
  if (versions_resolve(cp, &min, &max, err) != 0)
    return -1;
  char *list = NULL, *tls12 = NULL, *tls13 = NULL;
  EVP_PKEY *dh = NULL;
  int dh_bits = 0;
  if (cp != NULL && cp->ciphers[0] != '\0') {
    if (ciphers_split(cp->ciphers, &tls12, &tls13, err) != 0)
      return -1;
    if (tls13[0] != '\0' && cp->ciphersuites[0] != '\0') {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "ciphers: names TLS 1.3 suites (%s) and ciphersuites is set too; give the TLS "
                 "1.3 suites in one of ciphers and ciphersuites",
                 tls13);
      goto failed;
    }
    if (tls12[0] == '\0') {
      /* Only TLS 1.3 suites: as in Node, nothing is left for TLS 1.2. */
      if (max < TLS1_3_VERSION) {
        tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                   "ciphers: names only TLS 1.3 suites (%s), but the policy allows at most %s",
                   tls13, version_name(max));
        goto failed;
      }
      if (min < TLS1_3_VERSION)
        warn(info, "ciphers: names only TLS 1.3 suites; TLS 1.2 and below are off");
      min = TLS1_3_VERSION;
    }
  }
  const char *dh_field =
      cp != NULL && cp->dhparam_group[0] != '\0' ? "dhparam_group" : "dhparam_pem";
  if (cp != NULL && cp->dhparam_group[0] != '\0' && cp->dhparam_pem[0] != '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "dhparam_group: give either it or dhparam_pem, not both");
    goto failed;
  }
  if (cp != NULL && cp->dhparam_group[0] != '\0' &&
      (dh = dhparam_group(cp->dhparam_group, &dh_bits, err)) == NULL)
    goto failed;
  if (cp != NULL && cp->dhparam_pem[0] != '\0' &&
      (dh = dhparam_read(cp->dhparam_pem, info != NULL, &dh_bits, err)) == NULL)
    goto failed;
  /* The security level (see the top of this file): set before the cipher
   * list, whose "@SECLEVEL=n" may override it. */
  SSL_CTX_set_security_level(ctx, min <= TLS1_1_VERSION ? 0 : 2);
  if (!SSL_CTX_set_min_proto_version(ctx, min) || !SSL_CTX_set_max_proto_version(ctx, max)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s to %s is not supported by this OpenSSL",
               cp && cp->secure_protocol[0] ? "secure_protocol" : "min_version", version_name(min),
               version_name(max));
    tp_err_append_openssl(err);
    goto failed;
  }
  /* honorCipherOrder, default true (the seed). */
  if (cp == NULL || cp->honor_cipher_order == NULL || cp->honor_cipher_order->value)
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  else
    SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);

  int ecdh_off = cp != NULL && cp->ecdh_disabled;
  /* Intermediate's ciphers are all ECDHE and TLS 1.2 only: a policy that
   * turns ECDHE off or TLS 1.0 / 1.1 on without naming ciphers gets
   * Mozilla's list for such clients instead of none. */
  /* With only TLS 1.3 suites in ciphers, the TLS 1.2 list is never used
   * (min is TLS 1.3): the default stands in for it. */
  const char *given = tls12 && tls12[0]                   ? tls12
                      : min <= TLS1_1_VERSION || ecdh_off ? tlsconf_old_ciphers
                                                          : tlsconf_default_ciphers;
  if (asprintf(&list, "%s%s", given, ecdh_off ? ":!kECDHE" : "") < 0) {
    list = NULL;
    tlsconf__oom(err);
    goto failed;
  }
  if (!SSL_CTX_set_cipher_list(ctx, list)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ciphers: OpenSSL accepts no cipher in \"%s\"",
               list);
    tp_err_append_openssl(err);
    goto failed;
  }
  if (info != NULL && tls12 != NULL && tls12[0])
    warn_unknown_ciphers(tls12, info);

  const char *suites = tls13 && tls13[0]           ? tls13
                       : cp && cp->ciphersuites[0] ? cp->ciphersuites
                                                   : tlsconf_default_ciphersuites;
  if (apply_ciphersuites(ctx, suites, err) != 0)
    goto failed;

  const char *curve = cp ? cp->ecdh_curve : "";
  int curve_auto = curve[0] == '\0' || strcmp(curve, "auto") == 0;
  if (ecdh_off && !curve_auto) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "ecdh_curve: \"%s\" contradicts ecdh_disabled (leave it empty)", curve);
    goto failed;
  }
  const char *groups = tlsconf__policy_groups(cp);
  if (groups != NULL &&
      apply_groups(ctx, groups, ecdh_off ? "ecdh_disabled" : "ecdh_curve", err) != 0)
    goto failed;

  int have_dh = dh != NULL;
  if (dh != NULL) {
    if (!SSL_CTX_set0_tmp_dh_pkey(ctx, dh)) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "%s: %d-bit DH parameters are refused at security level %d", dh_field, dh_bits,
                 SSL_CTX_get_security_level(ctx));
      tp_err_append_openssl(err);
      goto failed;
    }
    dh = NULL; /* owned by ctx */
    if (info != NULL)
      info->dhparam_bits = dh_bits;
  }
  if (check_usable(ctx, use, list, min, max, have_dh, err) != 0)
    goto failed;
  free(list);
  free(tls12);
  free(tls13);
  return 0;
failed:
  EVP_PKEY_free(dh);
  free(list);
  free(tls12);
  free(tls13);
  return -1;
}

int tlsconf_cipher_policy_prepare(Tlsplane__V1__CipherPolicy *cp, struct tp_err *err) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL)
    return tlsconf__oom(err);
  struct tlsconf_policy_info info;
  memset(&info, 0, sizeof(info));
  int rc = tlsconf__policy_apply(ctx, cp, TLSCONF__POLICY_ALONE, &info, err);
  SSL_CTX_free(ctx);
  if (rc != 0) {
    tlsconf__policy_info_free(&info);
    return -1;
  }
  cp->dhparam_bits = info.dhparam_bits;
  tlsconf__strv_take(&cp->n_warnings, &cp->warnings, NULL, 0);
  for (size_t i = 0; i < info.n_warnings; i++) {
    if (tlsconf__strv_push(&cp->n_warnings, &cp->warnings, info.warnings[i]) != 0) {
      tlsconf__policy_info_free(&info);
      return tlsconf__oom(err);
    }
  }
  tlsconf__policy_info_free(&info);
  return 0;
}

/* tls.getCiphers() ------------------------------------------------------- */

/* The names SSL_CIPHER_description prints after "Kx=" and "Au=". */
static const char *kx_name(int nid) {
  switch (nid) {
  case NID_kx_rsa:
    return "RSA";
  case NID_kx_ecdhe:
    return "ECDH";
  case NID_kx_dhe:
    return "DH";
  case NID_kx_ecdhe_psk:
    return "ECDHEPSK";
  case NID_kx_dhe_psk:
    return "DHEPSK";
  case NID_kx_rsa_psk:
    return "RSAPSK";
  case NID_kx_psk:
    return "PSK";
  case NID_kx_srp:
    return "SRP";
  case NID_kx_gost:
    return "GOST";
  case NID_kx_gost18:
    return "GOST18";
  case NID_kx_any:
    return "any";
  default:
    return "unknown";
  }
}

static const char *auth_name(int nid) {
  switch (nid) {
  case NID_auth_rsa:
    return "RSA";
  case NID_auth_ecdsa:
    return "ECDSA";
  case NID_auth_dss:
    return "DSS";
  case NID_auth_psk:
    return "PSK";
  case NID_auth_srp:
    return "SRP";
  case NID_auth_null:
    return "None";
  case NID_auth_gost01:
    return "GOST01";
  case NID_auth_gost12:
    return "GOST12";
  case NID_auth_any:
    return "any";
  default:
    return "unknown";
  }
}

static Tlsplane__V1__Cipher *cipher_new(const SSL_CIPHER *c) {
  Tlsplane__V1__Cipher *m = malloc(sizeof(*m));
  if (m == NULL)
    return NULL;
  tlsplane__v1__cipher__init(m);
  const char *std = SSL_CIPHER_standard_name(c);
  if (tlsconf__str_set(&m->name, SSL_CIPHER_get_name(c)) != 0 ||
      tlsconf__str_set(&m->standard_name, std ? std : "") != 0 ||
      tlsconf__str_set(&m->version, SSL_CIPHER_get_version(c)) != 0 ||
      tlsconf__str_set(&m->key_exchange, kx_name(SSL_CIPHER_get_kx_nid(c))) != 0 ||
      tlsconf__str_set(&m->authentication, auth_name(SSL_CIPHER_get_auth_nid(c))) != 0) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return NULL;
  }
  m->bits = SSL_CIPHER_get_bits(c, NULL);
  return m;
}

int tlsconf_ciphers_list(const Tlsplane__V1__CipherPolicy *cp,
                         Tlsplane__V1__ListCiphersResponse *resp, struct tp_err *err) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  SSL *ssl = NULL;
  STACK_OF(SSL_CIPHER) *sk = NULL;
  Tlsplane__V1__Cipher **list = NULL;
  int n = 0, rc = -1;
  if (ctx == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  if (cp != NULL) {
    if (tlsconf__policy_apply(ctx, cp, TLSCONF__POLICY_ALONE, NULL, err) != 0)
      goto done;
  } else {
    /* Everything this OpenSSL implements, however weak. */
    SSL_CTX_set_security_level(ctx, 0);
    if (!SSL_CTX_set_min_proto_version(ctx, 0) || !SSL_CTX_set_max_proto_version(ctx, 0) ||
        !SSL_CTX_set_cipher_list(ctx, "ALL:COMPLEMENTOFALL") ||
        !SSL_CTX_set_ciphersuites(ctx, all_tls13_suites)) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot list this OpenSSL's ciphers");
      tp_err_append_openssl(err);
      goto done;
    }
  }
  if ((ssl = SSL_new(ctx)) == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  /* With a policy: what it enables for its versions and security level;
   * without: the whole list. Either way TLS 1.3 first, preferred first. */
  sk = cp != NULL ? SSL_get1_supported_ciphers(ssl) : sk_SSL_CIPHER_dup(SSL_get_ciphers(ssl));
  if (sk == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot list the ciphers");
    tp_err_append_openssl(err);
    goto done;
  }
  int count = sk_SSL_CIPHER_num(sk);
  list = calloc(count > 0 ? (size_t)count : 1, sizeof(*list));
  if (list == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  for (n = 0; n < count; n++) {
    if ((list[n] = cipher_new(sk_SSL_CIPHER_value(sk, n))) == NULL) {
      tlsconf__oom(err);
      goto done;
    }
  }
  for (size_t i = 0; i < resp->n_ciphers; i++)
    protobuf_c_message_free_unpacked(&resp->ciphers[i]->base, NULL);
  free(resp->ciphers);
  resp->ciphers = list;
  resp->n_ciphers = (size_t)n;
  list = NULL;
  rc = 0;
done:
  if (list != NULL) {
    for (int i = 0; i < n; i++)
      protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    free(list);
  }
  sk_SSL_CIPHER_free(sk);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return rc;
}
