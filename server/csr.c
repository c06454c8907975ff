/* Certificate signing requests for outside CAs (csr.h). */
#include "csr.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ca.h"
#include "certinfo.h"
#include "issuance.h"
#include "pb.h"
#include "tlsconf.h"

#define SUBJECT_FIELD_MAX 64 /* ub-common-name and friends (RFC 5280) */

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static void pem_wipe_free(char *pem) {
  if (pem != NULL) {
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
  }
}

void csr_keys_clear(struct csr_keys *k) {
  pem_wipe_free(k->serving);
  pem_wipe_free(k->pending);
  k->serving = k->pending = NULL;
}

/* The serving and pending keys of a stored secret (csr.h's layout). */
static int secret_split(const uint8_t *secret, size_t len, struct csr_keys *k) {
  const uint8_t *nul = memchr(secret, '\0', len);
  size_t serving_len = nul != NULL ? (size_t)(nul - secret) : len;
  k->serving = strndup((const char *)secret, serving_len);
  if (k->serving == NULL)
    return -1;
  if (nul != NULL && (k->pending = strndup((const char *)nul + 1, len - serving_len - 1)) == NULL)
    return -1;
  return 0;
}

static void request_free(Tlsplane__V1__Certificate *c) {
  if (c->pending_request != NULL)
    protobuf_c_message_free_unpacked(&c->pending_request->base, NULL);
  c->pending_request = NULL;
}

/* Whether the leaf of chain holds the private half of key_pem. */
static int leaf_holds(X509 *leaf, const char *key_pem, struct tp_err *err) {
  EVP_PKEY *key = NULL;
  if (certinfo_key_read(key_pem, strlen(key_pem), NULL, "the stored private key", &key, err) != 0) {
    err->status = GRPC_STATUS_INTERNAL;
    return -1;
  }
  int holds = X509_check_private_key(leaf, key) == 1;
  ERR_clear_error();
  EVP_PKEY_free(key);
  return holds;
}

/* A new chain while a request is pending: for the pending key (it becomes
 * the serving key and the request ends), for the serving key (the request
 * stays), or refused. */
static int chain_attach(Tlsplane__V1__Certificate *c, struct csr_keys *k, struct tp_err *err) {
  /* Too large to read: tlsconf_certificate_prepare refuses it. */
  if (strlen(c->certificate_chain_pem) > TLSCONF_CHAIN_PEM_MAX)
    return 0;
  STACK_OF(X509) *chain = NULL;
  if (certinfo_certs_read(c->certificate_chain_pem, strlen(c->certificate_chain_pem),
                          "certificate_chain_pem", &chain, err) != 0)
    return -1;
  X509 *leaf = sk_X509_value(chain, 0);
  int pending = leaf_holds(leaf, k->pending, err);
  int serving = pending == 0 && k->serving != NULL && k->serving[0] != '\0'
                    ? leaf_holds(leaf, k->serving, err)
                    : 0;
  certinfo_certs_free(chain);
  if (pending < 0 || serving < 0)
    return -1;
  if (pending) {
    pem_wipe_free(k->serving);
    k->serving = k->pending;
    k->pending = NULL;
    request_free(c);
    return 0;
  }
  if (serving)
    return 0;
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "certificate_chain_pem: does not match the pending request's key%s (make the "
                    "chain from pending_request.csr_pem)",
                    k->serving != NULL && k->serving[0] != '\0' ? " nor the current key" : "");
}

int csr_prepare(struct api_op *op, Tlsplane__V1__Certificate *c, int new_key, struct csr_keys *k,
                int *pending_only, struct tp_err *err) {
  const Tlsplane__V1__Certificate *old = (const Tlsplane__V1__Certificate *)op->old;
  const struct csr_hook *hook = op->hook_data;
  const struct store_row *row = op->old_row;
  *pending_only = 0;
  if (row != NULL && row->secret != NULL && secret_split(row->secret, row->secret_len, k) != 0)
    return oom(err);
  if (hook != NULL) {
    /* A new request (c->pending_request is the caller's): its key
     * replaces a pending one. */
    pem_wipe_free(k->pending);
    if ((k->pending = strdup(hook->pending_key_pem)) == NULL)
      return oom(err);
  } else if (old != NULL && old->pending_request != NULL && c->pending_request != NULL) {
    /* Output only: whatever the request held, the stored one stays. */
    request_free(c);
    if ((c->pending_request =
             (Tlsplane__V1__PendingRequest *)pb_clone(&old->pending_request->base)) == NULL)
      return oom(err);
  } else {
    /* A create or an update cannot make a request; an update dropped one. */
    request_free(c);
    if (old != NULL && old->pending_request != NULL && !new_key &&
        c->certificate_chain_pem[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "pending_request: %s has no chain yet: delete the certificate to drop "
                        "its request",
                        old->name);
  }
  if (c->pending_request == NULL || new_key) {
    request_free(c); /* an operator's own key and chain end the request */
    pem_wipe_free(k->pending);
    k->pending = NULL;
    return 0;
  }
  if (k->pending == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL,
                      "pending_request: the stored secret holds no pending key");
  if (c->certificate_chain_pem[0] == '\0') {
    if (c->ocsp_response.len > 0 || c->issuer_certificate_pem[0] != '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "certificate_chain_pem: required with %s (the request is still pending)",
                        c->ocsp_response.len > 0 ? "ocsp_response" : "issuer_certificate_pem");
    *pending_only = 1;
    return 0;
  }
  if (old != NULL && strcmp(old->certificate_chain_pem, c->certificate_chain_pem) == 0)
    return 0;
  return chain_attach(c, k, err);
}

int csr_secret_make(const Tlsplane__V1__Certificate *c, const char *key, const struct csr_keys *k,
                    uint8_t **secret, size_t *secret_len) {
  const char *pending = c->pending_request != NULL ? k->pending : NULL;
  size_t key_len = strlen(key);
  size_t len = key_len + (pending != NULL ? 1 + strlen(pending) : 0);
  uint8_t *s = malloc(len + 1);
  if (s == NULL)
    return -1;
  memcpy(s, key, key_len);
  if (pending != NULL) {
    s[key_len] = '\0';
    memcpy(s + key_len + 1, pending, strlen(pending));
  }
  s[len] = '\0';
  *secret = s;
  *secret_len = len;
  return 0;
}

/* ---- CreateCertificateRequest ---- */

static int request_check(const Tlsplane__V1__CreateCertificateRequestRequest *r,
                         const ProtobufCMessage *req, struct tp_err *err) {
  if ((r->certificate_id[0] == '\0') == (r->certificate[0] == '\0'))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_id: give either certificate_id (a new certificate) or "
                      "certificate (re-key an existing one)");
  if (r->certificate_id[0] != '\0') {
    char name[160];
    snprintf(name, sizeof(name), "certificates/%.100s", r->certificate_id);
    if (api_name_check(&api_kind_certificate, name, "certificate_id", err) != 0)
      return -1;
    if (r->etag[0] != '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "etag: only with certificate (a new certificate has none)");
  } else {
    if (api_name_check(&api_kind_certificate, r->certificate, "certificate", err) != 0)
      return -1;
    if (r->n_labels > 0)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "labels: only with certificate_id (UpdateCertificate sets an existing "
                        "certificate's)");
  }
  if (issuance_names_check(r->dns_names, r->n_dns_names, r->ip_addresses, r->n_ip_addresses, err) !=
      0)
    return -1;
  const struct {
    const char *field, *value;
  } subject[] = {{"common_name", r->common_name},
                 {"organization", r->organization},
                 {"organizational_unit", r->organizational_unit}};
  for (size_t i = 0; i < sizeof(subject) / sizeof(subject[0]); i++)
    if (strlen(subject[i].value) > SUBJECT_FIELD_MAX)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: at most %d characters",
                        subject[i].field, SUBJECT_FIELD_MAX);
  if (r->key_algorithm < 0 || r->key_algorithm > TLSPLANE__V1__KEY_ALGORITHM__ED25519)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "key_algorithm: %d is not a KeyAlgorithm",
                      (int)r->key_algorithm);
  return api_labels_check(req, "labels", "labels", err);
}

int csr_request_make(const Tlsplane__V1__CreateCertificateRequestRequest *r, time_t now,
                     char **key_pem, Tlsplane__V1__PendingRequest **pr, struct tp_err *err) {
  *key_pem = NULL;
  *pr = NULL;
  Tlsplane__V1__KeyAlgorithm alg = r->key_algorithm;
  if (alg == TLSPLANE__V1__KEY_ALGORITHM__KEY_ALGORITHM_UNSPECIFIED)
    alg = TLSPLANE__V1__KEY_ALGORITHM__ECDSA_P256;
  const char *sans[2 * 100];
  size_t n_sans = 0;
  for (size_t i = 0; i < r->n_dns_names && n_sans < 200; i++)
    sans[n_sans++] = r->dns_names[i];
  for (size_t i = 0; i < r->n_ip_addresses && n_sans < 200; i++)
    sans[n_sans++] = r->ip_addresses[i];
  Tlsplane__V1__PendingRequest req = TLSPLANE__V1__PENDING_REQUEST__INIT;
  req.common_name = r->common_name[0] ? r->common_name
                    : r->n_dns_names  ? r->dns_names[0]
                                      : r->ip_addresses[0];
  req.organization = r->organization;
  req.organizational_unit = r->organizational_unit;
  req.dns_names = r->dns_names;
  req.n_dns_names = r->n_dns_names;
  req.ip_addresses = r->ip_addresses;
  req.n_ip_addresses = r->n_ip_addresses;
  req.key_algorithm = alg;
  const struct ca_csr_opts o = {.cn = req.common_name,
                                .o = r->organization,
                                .ou = r->organizational_unit,
                                .sans = sans,
                                .n_sans = n_sans};
  EVP_PKEY *key = ca_key_generate((enum ca_key_alg)alg);
  if (key == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "making the key failed");
    tp_err_append_openssl(err);
    return -1;
  }
  char *csr = NULL, *subject = NULL;
  int rc = ca_csr_make(key, &o, &csr, &subject, err);
  if (rc == 0) {
    req.csr_pem = csr;
    req.subject = subject;
    *pr = (Tlsplane__V1__PendingRequest *)pb_clone(&req.base);
    if (*pr == NULL ||
        pb_timestamp_set(&(*pr)->base, "request_time", (int64_t)now * 1000000) != 0 ||
        (*key_pem = certinfo_key_pem(key)) == NULL)
      rc = oom(err);
  }
  free(csr);
  free(subject);
  EVP_PKEY_free(key);
  if (rc != 0 && *pr != NULL) {
    protobuf_c_message_free_unpacked(&(*pr)->base, NULL);
    *pr = NULL;
  }
  return rc;
}

/* The new certificate: its name, labels and request. */
static ProtobufCMessage *certificate_new(const Tlsplane__V1__CreateCertificateRequestRequest *r,
                                         Tlsplane__V1__PendingRequest *pr) {
  char name[160];
  snprintf(name, sizeof(name), "certificates/%s", r->certificate_id);
  Tlsplane__V1__Certificate c = TLSPLANE__V1__CERTIFICATE__INIT;
  c.name = name;
  c.pending_request = pr;
  void *labels;
  if (pb_map_borrow(&c.base, "labels", &r->base, "labels", &labels) != 0)
    return NULL;
  ProtobufCMessage *res = pb_clone(&c.base);
  free(labels);
  return res;
}

/* The stored certificate r->certificate with pr as its request, read in
 * txn into *old and *row. */
static ProtobufCMessage *certificate_rekey(struct store_txn *txn,
                                           const Tlsplane__V1__CreateCertificateRequestRequest *r,
                                           Tlsplane__V1__PendingRequest *pr, ProtobufCMessage **old,
                                           struct store_row *row, struct tp_err *err) {
  if (api_read(txn, &api_kind_certificate, r->certificate, 1, old, row, err) != 0)
    return NULL;
  const Tlsplane__V1__Certificate *was = (const Tlsplane__V1__Certificate *)*old;
  if (r->etag[0] != '\0' && strcmp(r->etag, row->etag) != 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "etag: %s has changed (etag %s, not %s): read it again", r->certificate, row->etag,
               r->etag);
    return NULL;
  }
  if (was->issuance != NULL) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "certificate: %s is issued by %s, which renews it itself", r->certificate,
               was->issuance->issuer);
    return NULL;
  }
  ProtobufCMessage *res = pb_clone(*old);
  if (res == NULL) {
    oom(err);
    return NULL;
  }
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  request_free(c);
  if ((c->pending_request = (Tlsplane__V1__PendingRequest *)pb_clone(&pr->base)) == NULL) {
    protobuf_c_message_free_unpacked(res, NULL);
    oom(err);
    return NULL;
  }
  return res;
}

int csr_rpc_create(const struct rpc_call_info *call, const ProtobufCMessage *req,
                   ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  struct api *api = b->api;
  const Tlsplane__V1__CreateCertificateRequestRequest *r =
      (const Tlsplane__V1__CreateCertificateRequestRequest *)req;
  if (request_check(r, req, err) != 0)
    return -1;
  time_t now = time(NULL);
  char *key = NULL;
  Tlsplane__V1__PendingRequest *pr = NULL;
  /* The key is made before the write lock is taken. */
  if (csr_request_make(r, now, &key, &pr, err) != 0)
    return -1;
  const struct csr_hook hook = {.pending_key_pem = key};
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  struct store_txn *txn;
  int rc = store_begin(api->store, 1, &txn, err);
  if (rc == 0) {
    int create = r->certificate_id[0] != '\0';
    res = create ? certificate_new(r, pr) : certificate_rekey(txn, r, pr, &old, &row, err);
    if (res == NULL && create)
      oom(err);
    rc = res != NULL ? 0 : -1;
    if (rc == 0) {
      struct api_op op = {.api = api,
                          .kind = &api_kind_certificate,
                          .txn = txn,
                          .call = call,
                          .old = old,
                          .old_row = create ? NULL : &row,
                          .now = now,
                          .hook_data = &hook};
      rc = api_write(&op, res, create ? NULL : row.etag, "request", err);
    }
    if (rc == 0)
      rc = store_commit(txn, NULL, err);
    else
      store_rollback(txn);
  }
  if (rc == 0)
    *resp = res;
  else if (res != NULL)
    protobuf_c_message_free_unpacked(res, NULL);
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(&pr->base, NULL);
  pem_wipe_free(key);
  return rc;
}
