/* Authentication (tokens, client certificates) and the table of roles per
 * method. */
#include "auth.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api.h"
#include "ca.h"
#include "certinfo.h"
#include "log.h"
#include "pb.h"
#include "tlsplane/v1/auth.pb-c.h"

#define TOKEN_RANDOM_LEN 32
#define TOKEN_ID_MAX 63

#define R(role) (1u << AUTH_ROLE_##role)
#define OPEN 0xffffffffu
#define READERS (R(ADMIN) | R(OPERATOR) | R(VIEWER))
#define WRITERS (R(ADMIN) | R(OPERATOR))

_Static_assert((int)AUTH_ROLE_ADMIN == (int)TLSPLANE__V1__ROLE__ADMIN &&
                   (int)AUTH_ROLE_OPERATOR == (int)TLSPLANE__V1__ROLE__OPERATOR &&
                   (int)AUTH_ROLE_VIEWER == (int)TLSPLANE__V1__ROLE__VIEWER &&
                   (int)AUTH_ROLE_AGENT == (int)TLSPLANE__V1__ROLE__AGENT &&
                   (int)AUTH_ROLE_JOIN == (int)TLSPLANE__V1__ROLE__JOIN,
               "auth_role follows tlsplane.v1.Role");

/* Who may call what. A path ending in '/' covers a whole service: its
 * Get* and List* methods take `read`, every other method `write`. An exact
 * path takes `read` (== write). The first match wins, so exact paths come
 * before their service; a method no rule covers is denied to everyone. */
struct rule {
  const char *path;
  unsigned read;
  unsigned write;
};

static const struct rule rules[] = {
    {"/grpc.health.v1.Health/", OPEN, OPEN},
    {"/grpc.reflection.v1.ServerReflection/", OPEN, OPEN},
    {"/grpc.reflection.v1alpha.ServerReflection/", OPEN, OPEN},
    /* The stream carries private keys and ticket keys: agents alone
     * receive it, each under its own id (hub.c checks the id). */
    {"/tlsplane.v1.AgentService/Connect", R(AGENT), 0},
    /* A join token enrolls; renewal with the agent's certificate. The
     * admin may enroll directly. */
    {"/tlsplane.v1.AgentService/EnrollAgent", R(ADMIN) | R(JOIN), 0},
    {"/tlsplane.v1.AgentService/RenewAgentCertificate", R(ADMIN) | R(AGENT), 0},
    /* Deleting an agent revokes its certificates: credential management. */
    {"/tlsplane.v1.AgentService/DeleteAgent", R(ADMIN), 0},
    /* An agent's labels choose what it receives, as listeners' selectors
     * do: those who write listeners set them. */
    {"/tlsplane.v1.AgentService/UpdateAgent", WRITERS, 0},
    {"/tlsplane.v1.AgentService/GetRollout", READERS, 0},
    {"/tlsplane.v1.AgentService/GetServing", READERS, 0},
    {"/tlsplane.v1.AgentService/", READERS, 0},
    /* Who am I: every credential, about itself. */
    {"/tlsplane.v1.TokenService/GetCaller", READERS | R(AGENT) | R(JOIN), 0},
    /* Credentials are the admin's alone, reads included. */
    {"/tlsplane.v1.TokenService/", R(ADMIN), R(ADMIN)},
    {"/tlsplane.v1.ClientCertificateService/", R(ADMIN), R(ADMIN)},
    /* Changes and rollout outcomes, as the audit log and GetRollout say. */
    {"/tlsplane.v1.AuditService/WatchEvents", READERS, 0},
    {"/tlsplane.v1.AuditService/", READERS, 0},
    /* Not a method: the HTTP gateway's metrics page (gateway.c). */
    {"/metrics", READERS, 0},
    {"/tlsplane.v1.CipherPolicyService/ListCiphers", READERS, 0},
    /* Makes a key and a request for it: a write of certificates, as
     * IssueCertificate. */
    {"/tlsplane.v1.CertificateService/CreateCertificateRequest", WRITERS, 0},
    {"/tlsplane.v1.CertificateService/", READERS, WRITERS},
    {"/tlsplane.v1.TrustBundleService/", READERS, WRITERS},
    {"/tlsplane.v1.RevocationListService/", READERS, WRITERS},
    {"/tlsplane.v1.CipherPolicyService/", READERS, WRITERS},
    {"/tlsplane.v1.TlsContextService/", READERS, WRITERS},
    {"/tlsplane.v1.ListenerService/", READERS, WRITERS},
    {"/tlsplane.v1.TicketKeyService/", READERS, WRITERS},
    /* A CA key can sign for any name: issuers are the admin's to write;
     * issuing from them (CertificateService/IssueCertificate) is a write
     * of certificates. */
    {"/tlsplane.v1.IssuerService/", READERS, R(ADMIN)},
};

/* Why a method is refused, where "it takes <roles>" would not say enough. */
static const struct {
  const char *path;
  const char *why;
} refusals[] = {
    {"/tlsplane.v1.AgentService/Connect",
     "only agents stream snapshots (they carry private keys): connect with the agent's own "
     "client certificate"},
};

static const char *refusal_why(const char *method) {
  for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
    if (strcmp(refusals[i].path, method) == 0)
      return refusals[i].why;
  return NULL;
}

const char *auth_role_name(int role) {
  switch (role) {
  case AUTH_ROLE_ADMIN:
    return "admin";
  case AUTH_ROLE_OPERATOR:
    return "operator";
  case AUTH_ROLE_VIEWER:
    return "viewer";
  case AUTH_ROLE_AGENT:
    return "agent";
  case AUTH_ROLE_JOIN:
    return "join";
  default:
    return "none";
  }
}

/* The roles that may call method; 0 when no rule covers it. */
static unsigned method_roles(const char *method) {
  for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
    const struct rule *r = &rules[i];
    size_t n = strlen(r->path);
    if (r->path[n - 1] != '/') {
      if (strcmp(method, r->path) == 0)
        return r->read;
      continue;
    }
    if (strncmp(method, r->path, n) != 0 || strchr(method + n, '/') != NULL)
      continue;
    const char *name = method + n;
    int reads = strncmp(name, "Get", 3) == 0 || strncmp(name, "List", 4) == 0;
    return reads ? r->read : r->write;
  }
  return 0;
}

int auth_method_allows(const char *method, int role) {
  unsigned roles = method_roles(method);
  return roles == OPEN || (role > 0 && role < 32 && (roles & (1u << role)) != 0);
}

/* "admin or operator": who may call, for the refusal's message. */
static void roles_text(unsigned roles, char *buf, size_t len) {
  buf[0] = '\0';
  size_t n = 0;
  for (int r = AUTH_ROLE_ADMIN; r <= AUTH_ROLE_JOIN; r++)
    if (roles & (1u << r))
      n++;
  size_t k = 0;
  for (int r = AUTH_ROLE_ADMIN; r <= AUTH_ROLE_JOIN; r++) {
    if (!(roles & (1u << r)))
      continue;
    size_t used = strlen(buf);
    snprintf(buf + used, len - used, "%s%s",
             k == 0       ? ""
             : k + 1 == n ? " or "
                          : ", ",
             auth_role_name(r));
    k++;
  }
  if (n == 0)
    snprintf(buf, len, "no role");
}

static void sha256(const void *data, size_t len, uint8_t out[AUTH_TOKEN_HASH_LEN]) {
  unsigned int n = 0;
  if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != AUTH_TOKEN_HASH_LEN)
    RAND_bytes(out, AUTH_TOKEN_HASH_LEN); /* matches nothing */
}

int auth_token_new(const char *id, char **secret, uint8_t hash[AUTH_TOKEN_HASH_LEN]) {
  static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  uint8_t rnd[TOKEN_RANDOM_LEN];
  *secret = NULL;
  if (RAND_bytes(rnd, sizeof(rnd)) != 1)
    return -1;
  size_t idlen = strlen(id);
  size_t cap = strlen(AUTH_TOKEN_PREFIX) + idlen + 1 + (TOKEN_RANDOM_LEN * 8 + 5) / 6 + 1;
  char *s = malloc(cap);
  if (s == NULL) {
    OPENSSL_cleanse(rnd, sizeof(rnd));
    return -1;
  }
  size_t n = (size_t)snprintf(s, cap, AUTH_TOKEN_PREFIX "%s_", id);
  /* base64url without padding, 6 bits at a time. */
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < sizeof(rnd); i++) {
    acc = (acc << 8) | rnd[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      s[n++] = b64url[(acc >> bits) & 63];
    }
  }
  if (bits > 0)
    s[n++] = b64url[(acc << (6 - bits)) & 63];
  s[n] = '\0';
  acc = 0;
  OPENSSL_cleanse(rnd, sizeof(rnd));
  sha256(s, n, hash);
  *secret = s;
  return 0;
}

/* The token id in "tlsp_<id>_<random>" into id; -1 when it is not that
 * shape. */
static int token_id(const char *token, char *id, size_t len) {
  size_t plen = strlen(AUTH_TOKEN_PREFIX);
  if (strncmp(token, AUTH_TOKEN_PREFIX, plen) != 0)
    return -1;
  const char *start = token + plen;
  const char *sep = strchr(start, '_');
  if (sep == NULL || sep == start || (size_t)(sep - start) > TOKEN_ID_MAX ||
      (size_t)(sep - start) >= len || sep[1] == '\0')
    return -1;
  for (const char *p = start; p < sep; p++)
    if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-')
      return -1;
  memcpy(id, start, (size_t)(sep - start));
  id[sep - start] = '\0';
  return 0;
}

/* Reads (kind, name) with its secret. */
static int credential_read(struct api *api, const struct api_kind *kind, const char *name,
                           ProtobufCMessage **msg, struct store_row *row, struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(api->store, 0, &txn, err) != 0)
    return -1;
  int rc = api_read(txn, kind, name, 1, msg, row, err);
  store_rollback(txn);
  return rc;
}

#define UNAUTHENTICATED(err, ...) tp_err_set(err, GRPC_STATUS_UNAUTHENTICATED, __VA_ARGS__)

/* The record of credential `name` failed its integrity check (edited in
 * the database file) or its secret does not unseal: the credential is
 * refused, and the log says why (the store's message names the row, never
 * its secret). */
static int refuse_damaged(const char *name, const struct tp_err *why, struct tp_err *err) {
  log_error("auth", "credential %s refused: %s", name, why->msg);
  return UNAUTHENTICATED(err, "authorization: the record of %s failed its integrity check", name);
}

static int auth_token(struct api *api, const char *header, struct rpc_identity *id,
                      struct tp_err *err) {
  if (strncasecmp(header, "Bearer ", 7) != 0)
    return UNAUTHENTICATED(err, "authorization: expected \"Bearer <token>\"");
  const char *token = header + 7;
  while (*token == ' ')
    token++;
  char tid[TOKEN_ID_MAX + 1];
  if (token_id(token, tid, sizeof(tid)) != 0)
    return UNAUTHENTICATED(err, "authorization: not a tlsplane token (%s...)", AUTH_TOKEN_PREFIX);
  char name[96];
  snprintf(name, sizeof(name), "tokens/%s", tid);
  uint8_t hash[AUTH_TOKEN_HASH_LEN];
  sha256(token, strlen(token), hash);

  ProtobufCMessage *msg = NULL;
  struct store_row row = {0};
  struct tp_err rerr = {0};
  int rc = credential_read(api, &api_kind_token, name, &msg, &row, &rerr);
  int match = rc == 0 && row.secret != NULL && row.secret_len == AUTH_TOKEN_HASH_LEN &&
              CRYPTO_memcmp(row.secret, hash, AUTH_TOKEN_HASH_LEN) == 0;
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  OPENSSL_cleanse(hash, sizeof(hash));
  const Tlsplane__V1__Token *t = (const Tlsplane__V1__Token *)msg;
  int64_t now = pb_now_us();
  if (rc != 0 && rerr.status == GRPC_STATUS_DATA_LOSS) {
    rc = refuse_damaged(name, &rerr, err);
  } else if (rc != 0 && rerr.status != GRPC_STATUS_NOT_FOUND) {
    log_error("auth", "reading %s: %s", name, rerr.msg);
    rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "authorization: the token cannot be checked now");
  } else if (!match) {
    /* Unknown and wrong look alike. */
    rc = UNAUTHENTICATED(err, "authorization: unknown or invalid token");
  } else if (t->revoked) {
    rc = UNAUTHENTICATED(err, "authorization: token %s is revoked", name);
  } else if (t->expire_time != NULL && pb_timestamp_us(t->expire_time) <= now) {
    rc = UNAUTHENTICATED(err, "authorization: token %s has expired", name);
  } else if (t->role == TLSPLANE__V1__ROLE__JOIN && t->used_by[0] != '\0') {
    rc = UNAUTHENTICATED(err, "authorization: join token %s was already used", name);
  } else if ((int)t->role < AUTH_ROLE_ADMIN || (int)t->role > AUTH_ROLE_JOIN) {
    rc = UNAUTHENTICATED(err, "authorization: token %s has no role", name);
  } else {
    id->role = (int)t->role;
    snprintf(id->principal, sizeof(id->principal), "%s", tid);
    snprintf(id->actor, sizeof(id->actor), "token:%s", tid);
    rc = 0;
  }
  if (msg != NULL)
    protobuf_c_message_free_unpacked(msg, NULL);
  if (rc == 0)
    api_usage_note(api, &api_kind_token, name, now);
  return rc;
}

static int auth_cert(struct api *api, const char *pem, struct rpc_identity *id,
                     struct tp_err *err) {
  BIO *bio = BIO_new_mem_buf(pem, -1);
  X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  ERR_clear_error();
  if (x == NULL)
    return UNAUTHENTICATED(err, "client certificate: does not parse");
  char serial[CA_SERIAL_HEX_LEN + 1], name[128];
  time_t not_after;
  int rc = 0;
  if (certinfo_time(X509_get0_notAfter(x), &not_after) != 0 || not_after <= time(NULL)) {
    rc = UNAUTHENTICATED(err, "client certificate: expired");
  } else if (ca_serial_hex(x, serial) != 0) {
    rc = UNAUTHENTICATED(err, "client certificate: not issued by this control plane");
  }
  char *fingerprint = rc == 0 ? certinfo_fingerprint(x) : NULL;
  X509_free(x);
  if (rc != 0)
    return rc;
  snprintf(name, sizeof(name), "clientCertificates/serial-%s", serial);

  ProtobufCMessage *msg = NULL;
  struct store_row row = {0};
  struct tp_err rerr = {0};
  rc = credential_read(api, &api_kind_client_certificate, name, &msg, &row, &rerr);
  store_row_clear(&row);
  const Tlsplane__V1__ClientCertificate *c = (const Tlsplane__V1__ClientCertificate *)msg;
  if (rc != 0 && rerr.status == GRPC_STATUS_DATA_LOSS) {
    rc = refuse_damaged(name, &rerr, err);
  } else if (rc != 0 && rerr.status != GRPC_STATUS_NOT_FOUND) {
    log_error("auth", "reading %s: %s", name, rerr.msg);
    rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "client certificate: it cannot be checked now");
  } else if (rc != 0 || fingerprint == NULL || strcmp(c->fingerprint_sha256, fingerprint) != 0) {
    rc = UNAUTHENTICATED(err, "client certificate: not issued by this control plane");
  } else if (c->revoked) {
    rc = UNAUTHENTICATED(err, "client certificate: %s is revoked", name);
  } else if ((int)c->role < AUTH_ROLE_ADMIN || (int)c->role > AUTH_ROLE_AGENT) {
    rc = UNAUTHENTICATED(err, "client certificate: %s has no role", name);
  } else {
    id->role = (int)c->role;
    const char *principal = c->principal;
    if (c->role == TLSPLANE__V1__ROLE__AGENT && strncmp(c->agent, "agents/", 7) == 0)
      principal = c->agent + 7;
    snprintf(id->principal, sizeof(id->principal), "%s", principal);
    snprintf(id->actor, sizeof(id->actor), "%s", c->subject);
    rc = 0;
  }
  free(fingerprint);
  if (msg != NULL)
    protobuf_c_message_free_unpacked(msg, NULL);
  if (rc == 0)
    api_usage_note(api, &api_kind_client_certificate, name, pb_now_us());
  return rc;
}

int auth_call(const struct rpc_credentials *cred, struct rpc_identity *id, struct tp_err *err,
              void *data) {
  struct api *api = data;
  unsigned roles = method_roles(cred->method);
  if (roles == OPEN)
    return 0; /* health and reflection: anonymous, whatever was sent */
  int rc;
  if (cred->authorization != NULL)
    rc = auth_token(api, cred->authorization, id, err);
  else if (cred->client_cert_pem != NULL)
    rc = auth_cert(api, cred->client_cert_pem, id, err);
  else
    rc = UNAUTHENTICATED(err,
                         "no credential: send the metadata \"authorization: Bearer <token>\" or "
                         "a client certificate issued by the control plane");
  if (rc == 0 && !auth_method_allows(cred->method, id->role)) {
    char who[96];
    roles_text(roles, who, sizeof(who));
    const char *why = refusal_why(cred->method);
    if (why != NULL)
      rc = tp_err_set(err, GRPC_STATUS_PERMISSION_DENIED,
                      "permission denied: %s (role %s) may not call %s: %s", id->actor,
                      auth_role_name(id->role), cred->method_shown, why);
    else
      rc = tp_err_set(err, GRPC_STATUS_PERMISSION_DENIED,
                      "permission denied: %s (role %s) may not call %s; it takes %s", id->actor,
                      auth_role_name(id->role), cred->method_shown, who);
  }
  if (rc != 0) {
    /* Never the path as sent: a path that names no method may hold a
     * token pasted in the wrong place. */
    char peer[LOG_ESCAPE_LEN], why[LOG_ESCAPE_LEN * 2];
    log_warn("auth", "%s from %s refused: %s", cred->method_shown,
             log_escape_str(peer, sizeof(peer), cred->peer),
             log_escape_str(why, sizeof(why), err->msg));
    memset(id, 0, sizeof(*id));
    snprintf(id->actor, sizeof(id->actor), "anonymous");
  }
  return rc;
}
