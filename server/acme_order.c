/* Orders from ACME issuers (acme_order.h). */
#include "acme_order.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "acme.h"
#include "acme_account.h"
#include "acme_dns.h"
#include "csr.h"
#include "events.h"
#include "fleet.h"
#include "hub.h"
#include "issuance.h"
#include "jobs.h"
#include "log.h"
#include "pb.h"

#define STATUS_VALID "valid"
#define POLL_MIN_MS 250
#define ACME_SHOWN_MAX 260 /* an identifier (253 at most) with "*." */

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static void pem_wipe_free(char *pem) {
  if (pem != NULL) {
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
  }
}

int acme_order_check(const Tlsplane__V1__Issuer *is, const Tlsplane__V1__IssueCertificateRequest *r,
                     int dns_hook, struct tp_err *err) {
  if (strcmp(is->acme_account_status, STATUS_VALID) != 0)
    return tp_err_set(
        err, GRPC_STATUS_FAILED_PRECONDITION,
        "issuer: %s: its ACME account is not valid yet (acme_account_status \"%s\"%s%s)", is->name,
        is->acme_account_status, is->acme_last_error[0] ? ": " : "", is->acme_last_error);
  if (r->n_ip_addresses > 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "ip_addresses[0]: an ACME issuer validates DNS names (tls-alpn-01 or "
                      "dns-01), and neither validates an IP address");
  for (size_t i = 0; !dns_hook && i < r->n_dns_names; i++)
    if (strncmp(r->dns_names[i], "*.", 2) == 0)
      return tp_err_set(
          err, GRPC_STATUS_INVALID_ARGUMENT,
          "dns_names[%zu]: \"%s\": a wildcard is validated by dns-01 only, which needs "
          "a DNS hook, and this server has none (tlsplane-server --acme-dns-hook)",
          i, r->dns_names[i]);
  return 0;
}

int acme_order_request_make(const Tlsplane__V1__Issuance *iss, time_t now, char **key_pem,
                            Tlsplane__V1__PendingRequest **pr, struct tp_err *err) {
  Tlsplane__V1__CreateCertificateRequestRequest r =
      TLSPLANE__V1__CREATE_CERTIFICATE_REQUEST_REQUEST__INIT;
  r.dns_names = iss->dns_names;
  r.n_dns_names = iss->n_dns_names;
  r.common_name = iss->common_name;
  r.key_algorithm = iss->key_algorithm;
  return csr_request_make(&r, now, key_pem, pr, err);
}

int acme_challenge_material(const struct store_challenge *c,
                            Tlsplane__V1__AcmeChallengeMaterial **out) {
  *out = NULL;
  Tlsplane__V1__AcmeChallengeMaterial *m =
      tlsplane__v1__acme_challenge_material__unpack(NULL, c->data_len, c->data);
  if (m == NULL)
    return -1;
  char *key = c->secret != NULL ? strndup((const char *)c->secret, c->secret_len) : NULL;
  if (key == NULL || m->server_name[0] == '\0' || m->certificate_pem[0] == '\0') {
    pem_wipe_free(key);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return -1;
  }
  /* The unpacked default is a static "": replaced by the key. */
  if (m->private_key_pem != NULL && m->private_key_pem != protobuf_c_empty_string)
    free(m->private_key_pem);
  m->private_key_pem = key;
  *out = m;
  return 0;
}

/* ---- One order ---- */

/* A challenge this order answers: tls-alpn-01 by the agents (a
 * challenge certificate they are given), or dns-01 by the server's hook. */
struct chal {
  char *authz_url;
  char *challenge_url;
  char *name;     /* the identifier (a wildcard's without "*.") */
  int dns;        /* dns-01; else tls-alpn-01 */
  char *cert_pem; /* tls-alpn-01 */
  char *key_pem;
  char *txt;     /* dns-01: the TXT value */
  int presented; /* dns-01: "present" ran (or was started), so "cleanup" runs */
};

/* Everything one run of an order holds. */
struct order {
  struct api *api;
  const atomic_int *stop;
  char *name;                   /* "certificates/x" */
  Tlsplane__V1__Certificate *c; /* as read at the start */
  Tlsplane__V1__Issuer *is;
  EVP_PKEY *account_key;
  struct acme_client client;
  char *order_url;
  struct acme_order o;
  struct chal *chals;
  size_t n_chals;
  int chals_stored;
  int waiting; /* another certificate has a challenge out for one of its names: err says which */
  /* The authorizations as last seen, for the certificate's state. */
  Tlsplane__V1__AcmeAuthorization *authz;
  Tlsplane__V1__AcmeAuthorization **authz_ptrs;
  size_t n_authz;
  int renewal; /* the certificate had a chain already */
  char *chain;
  struct fleet_world *world; /* which listeners serve what; NULL until asked */
};

static const struct rpc_call_info job_call = {
    .method = ACME_ORDER_METHOD, .peer = "local", .actor = "system", .principal = ""};

static void order_clear(struct order *od) {
  for (size_t i = 0; i < od->n_chals; i++) {
    free(od->chals[i].authz_url);
    free(od->chals[i].challenge_url);
    free(od->chals[i].name);
    free(od->chals[i].cert_pem);
    pem_wipe_free(od->chals[i].key_pem);
    free(od->chals[i].txt);
  }
  free(od->chals);
  for (size_t i = 0; i < od->n_authz; i++) {
    free(od->authz[i].identifier);
    free(od->authz[i].status);
    free(od->authz[i].url);
  }
  free(od->authz);
  free(od->authz_ptrs);
  acme_order_clear(&od->o);
  free(od->order_url);
  acme_client_clear(&od->client);
  EVP_PKEY_free(od->account_key);
  if (od->c != NULL)
    protobuf_c_message_free_unpacked(&od->c->base, NULL);
  if (od->is != NULL)
    protobuf_c_message_free_unpacked(&od->is->base, NULL);
  free(od->chain);
  fleet_world_unref(od->world);
}

/* Sleeps ms, in slices, until the server stops. 0, or -1 when stopped. */
static int nap(const atomic_int *stop, int64_t ms) {
  while (ms > 0) {
    if (stop != NULL && atomic_load(stop) != 0)
      return -1;
    int64_t slice = ms < 100 ? ms : 100;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
    nanosleep(&ts, NULL);
    ms -= slice;
  }
  return stop != NULL && atomic_load(stop) != 0 ? -1 : 0;
}

static int64_t now_ms(void) {
  return pb_now_us() / 1000;
}

/* The wait before the next poll: the server's Retry-After when it named
 * one, else a second; bounded. */
static int64_t poll_delay_ms(const struct acme_client *c) {
  int64_t ms = c->retry_after_s > 0 ? c->retry_after_s * 1000 : 1000;
  if (ms > ACME_ORDER_POLL_MAX_MS)
    ms = ACME_ORDER_POLL_MAX_MS;
  return ms < POLL_MIN_MS ? POLL_MIN_MS : ms;
}

/* What a write of the certificate's state does to the clone it writes. */
enum state_kind {
  STATE_PROGRESS, /* the order's status and authorizations */
  STATE_FAILED,   /* why (and the back-off) */
  STATE_DONE,     /* the chain: the pending key becomes the serving key */
  STATE_REKEY,    /* a new pending request (renewal) */
  STATE_WAITING,  /* why, and the next attempt soon (no failure) */
};

struct state {
  enum state_kind kind;
  const char *why;                  /* STATE_FAILED, STATE_WAITING */
  int64_t retry_after_s;            /* STATE_FAILED */
  const char *chain;                /* STATE_DONE */
  const struct csr_hook *hook;      /* STATE_REKEY */
  Tlsplane__V1__PendingRequest *pr; /* STATE_REKEY */
};

static int64_t retry_delay_ms(int failures) {
  int64_t base = jobs_env_positive("TLSPLANE_RENEW_RETRY_MS", ISSUANCE_RETRY_BASE_MS);
  return jobs_backoff(base, ISSUANCE_RETRY_MAX_MS, failures);
}

/* The certificate's AcmeOrder after st, built from od and the stored one. */
static Tlsplane__V1__AcmeOrder *order_state(const struct order *od,
                                            const Tlsplane__V1__AcmeOrder *was,
                                            const struct state *st, int64_t now_us) {
  Tlsplane__V1__AcmeOrder o = TLSPLANE__V1__ACME_ORDER__INIT;
  Google__Protobuf__Timestamp next = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  Google__Protobuf__Timestamp done = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  o.order_url = od->order_url != NULL ? od->order_url : "";
  o.status = od->o.status != NULL ? od->o.status : "";
  o.authorizations = od->authz_ptrs;
  /* Those filled in (all but after running out of memory). */
  while (o.n_authorizations < od->n_authz && od->authz_ptrs[o.n_authorizations] != NULL &&
         od->authz[o.n_authorizations].identifier != NULL &&
         od->authz[o.n_authorizations].status != NULL && od->authz[o.n_authorizations].url != NULL)
    o.n_authorizations++;
  o.last_error = was != NULL ? was->last_error : "";
  o.failures = was != NULL ? was->failures : 0;
  o.next_attempt_time = was != NULL ? was->next_attempt_time : NULL;
  o.complete_time = was != NULL ? was->complete_time : NULL;
  o.renewal_info = was != NULL ? was->renewal_info : NULL;
  Tlsplane__V1__AcmeRenewalInfo ri = TLSPLANE__V1__ACME_RENEWAL_INFO__INIT;
  Google__Protobuf__Timestamp check = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  char *cert_id = NULL;
  if (st->kind == STATE_FAILED) {
    o.failures++;
    o.last_error = (char *)st->why;
    int64_t delay_ms = retry_delay_ms(o.failures);
    if (st->retry_after_s * 1000 > delay_ms)
      delay_ms = st->retry_after_s * 1000;
    int64_t at = now_us + delay_ms * 1000;
    next.seconds = at / 1000000;
    next.nanos = (int32_t)(at % 1000000) * 1000;
    o.next_attempt_time = &next;
  } else if (st->kind == STATE_WAITING) {
    /* Not a failure: neither counted nor backed off. */
    o.last_error = (char *)st->why;
    int64_t at = now_us + (int64_t)ACME_ORDER_WAITING_RETRY_MS * 1000;
    next.seconds = at / 1000000;
    next.nanos = (int32_t)(at % 1000000) * 1000;
    o.next_attempt_time = &next;
  } else if (st->kind == STATE_DONE) {
    o.failures = 0;
    o.last_error = "";
    o.next_attempt_time = NULL;
    done.seconds = now_us / 1000000;
    done.nanos = (int32_t)(now_us % 1000000) * 1000;
    o.complete_time = &done;
    /* The new chain's renewal information is asked for at once (the
     * renewal job, acme_ari.h) when the CA offers it. */
    o.renewal_info = NULL;
    if (od->client.dir.renewal_info != NULL && (cert_id = acme_cert_id_pem(st->chain)) != NULL) {
      ri.cert_id = cert_id;
      check = done;
      ri.next_check_time = &check;
      o.renewal_info = &ri;
    }
  }
  Tlsplane__V1__AcmeOrder *res = (Tlsplane__V1__AcmeOrder *)pb_clone(&o.base);
  free(cert_id);
  return res;
}

/* An order and the state it writes. */
struct state_of {
  const struct order *od;
  const struct state *st;
};

/* The certificate after st (jobs_outcome's edit). */
static int state_edit(const struct jobs_outcome *w, const ProtobufCMessage *old,
                      ProtobufCMessage *res, struct api_op *op, const char **action,
                      struct tp_err *err) {
  const struct order *od = ((const struct state_of *)w->data)->od;
  const struct state *st = ((const struct state_of *)w->data)->st;
  const Tlsplane__V1__Certificate *was = (const Tlsplane__V1__Certificate *)old;
  if (was->issuance == NULL || strcmp(was->issuance->issuer, od->c->issuance->issuer) != 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s changed meanwhile", od->name);
  /* Progress and a chain are for the order's own request; a failure is
   * recorded whatever the certificate holds. */
  if ((st->kind == STATE_PROGRESS || st->kind == STATE_DONE) && was->pending_request == NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s changed meanwhile", od->name);
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  const ProtobufCMessageDescriptor *d = res->descriptor;
  Tlsplane__V1__AcmeOrder *o = order_state(od, was->acme_order, st, w->now_us);
  if (o == NULL)
    return oom(err);
  if (c->acme_order != NULL)
    protobuf_c_message_free_unpacked(&c->acme_order->base, NULL);
  c->acme_order = o;
  *action = "acme_order";
  if (st->kind == STATE_FAILED) {
    c->renewal_failures = o->failures;
    *action = od->renewal ? "renew_failed" : "issue_failed";
    if (pb_string_set(res, "last_renewal_error", st->why) != 0 ||
        pb_timestamp_set(res, "next_attempt_time", pb_timestamp_us(o->next_attempt_time)) != 0)
      return oom(err);
  } else if (st->kind == STATE_WAITING) {
    if (pb_timestamp_set(res, "next_attempt_time", pb_timestamp_us(o->next_attempt_time)) != 0)
      return oom(err);
  } else if (st->kind == STATE_DONE) {
    pb_field_clear(res, pb_field(d, "ocsp_response"));
    pb_field_clear(res, pb_field(d, "issuer_certificate_pem"));
    pb_field_clear(res, pb_field(d, "next_attempt_time"));
    c->renewal_failures = 0;
    *action = od->renewal ? "renew" : "issue";
    if (pb_string_set(res, "certificate_chain_pem", st->chain) != 0 ||
        pb_string_set(res, "last_renewal_error", "") != 0 ||
        pb_timestamp_set(res, "last_renewal_time", w->now_us) != 0)
      return oom(err);
  } else if (st->kind == STATE_REKEY) {
    if (c->pending_request != NULL)
      protobuf_c_message_free_unpacked(&c->pending_request->base, NULL);
    c->pending_request = (Tlsplane__V1__PendingRequest *)pb_clone(&st->pr->base);
    if (c->pending_request == NULL)
      return oom(err);
    *action = "request";
    op->hook_data = st->hook;
  }
  return 0;
}

/* Writes st on the certificate as it is now (one revision, actor
 * "system"). A certificate deleted or re-made meanwhile is left alone
 * (NOT_FOUND, or FAILED_PRECONDITION "changed meanwhile"). */
static int state_write(struct order *od, const struct state *st, struct tp_err *err) {
  const struct state_of of = {.od = od, .st = st};
  const struct jobs_outcome w = {.kind = &api_kind_certificate,
                                 .call = &job_call,
                                 .name = od->name,
                                 .now_us = pb_now_us(),
                                 .edit = state_edit,
                                 .data = (void *)&of};
  return jobs_outcome_write(od->api, &w, err) < 0 ? -1 : 0;
}

/* Notes authorization i's identifier, status and URL for the state. */
static int authz_note(struct order *od, size_t i, const char *ident, const char *status) {
  Tlsplane__V1__AcmeAuthorization *a = &od->authz[i];
  char *id = strdup(ident != NULL ? ident : ""), *st = strdup(status != NULL ? status : "");
  if (id == NULL || st == NULL) {
    free(id);
    free(st);
    return -1;
  }
  free(a->identifier);
  free(a->status);
  a->identifier = id;
  a->status = st;
  return 0;
}

/* An authorization's name as the certificate shows it: "*.example.com"
 * for a wildcard's (RFC 8555 7.1.3: its identifier has no "*."). */
static void authz_shown(const struct acme_authz *a, char *buf, size_t size) {
  snprintf(buf, size, "%s%s", a->wildcard ? "*." : "", a->identifier);
}

/* Reads the certificate, its issuer and the account key. */
static int order_load(struct order *od, struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(od->api->store, 0, &txn, err) != 0)
    return -1;
  ProtobufCMessage *cm = NULL, *im = NULL;
  struct store_row irow = {0};
  int rc = api_read(txn, &api_kind_certificate, od->name, 0, &cm, NULL, err);
  if (rc == 0) {
    od->c = (Tlsplane__V1__Certificate *)cm;
    if (od->c->issuance == NULL)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s is not issued", od->name);
  }
  if (rc == 0 &&
      api_read(txn, &api_kind_issuer, od->c->issuance->issuer, 1, &im, &irow, err) != 0) {
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "issuer: %s: ", od->c->issuance->issuer);
    tp_err_prefix(err, prefix);
    err->status = GRPC_STATUS_FAILED_PRECONDITION;
    rc = -1;
  }
  store_rollback(txn);
  if (rc == 0) {
    od->is = (Tlsplane__V1__Issuer *)im;
    unsigned char *eab = NULL;
    size_t eab_len = 0;
    if (od->is->type != TLSPLANE__V1__ISSUER__TYPE__ACME)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "issuer: %s is not an ACME issuer",
                      od->is->name);
    else if (strcmp(od->is->acme_account_status, STATUS_VALID) != 0 ||
             od->is->acme_account_url[0] == '\0')
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "issuer: %s: its ACME account is not valid (acme_account_status \"%s\")",
                      od->is->name, od->is->acme_account_status);
    else if (acme_secret_read(irow.secret, irow.secret_len, &od->account_key, &eab, &eab_len) != 0)
      rc = tp_err_set(err, GRPC_STATUS_INTERNAL,
                      "issuer: %s: the stored ACME account key does "
                      "not load",
                      od->is->name);
    if (eab != NULL) {
      OPENSSL_cleanse(eab, eab_len);
      free(eab);
    }
  } else if (im != NULL)
    protobuf_c_message_free_unpacked(im, NULL);
  if (irow.secret != NULL)
    OPENSSL_cleanse(irow.secret, irow.secret_len);
  store_row_clear(&irow);
  return rc;
}

/* A renewal starts with a new pending request; the old chain serves on. */
static int order_rekey(struct order *od, struct tp_err *err) {
  char *key = NULL;
  Tlsplane__V1__PendingRequest *pr = NULL;
  if (acme_order_request_make(od->c->issuance, time(NULL), &key, &pr, err) != 0)
    return -1;
  const struct csr_hook hook = {.pending_key_pem = key};
  const struct state st = {.kind = STATE_REKEY, .hook = &hook, .pr = pr};
  int rc = state_write(od, &st, err);
  protobuf_c_message_free_unpacked(&pr->base, NULL);
  pem_wipe_free(key);
  return rc;
}

/* Whether some listener serves name (fleet_world_serves, on a world of
 * the store as it was when the order asked first). */
static int name_served(struct order *od, const char *name, struct tp_err *err) {
  if (od->world == NULL && fleet_world_build(od->api->store, NULL, &od->world, err) != 0)
    return -1;
  return fleet_world_serves(od->world, name, od->name);
}

/* Whether another certificate has a challenge out for one of names[0..n)
 * (DNS names; a wildcard's challenge is for its base name), as txn reads
 * the challenge rows: 1 with od->waiting set and err saying which, 0, or
 * -1. The rule is between certificates: a wildcard and its base name in
 * one order are two authorizations of that order, answered together
 * (dns-01's one _acme-challenge record holds both values). *own (when
 * not NULL) is set when the certificate has rows of its own. */
static int challenge_taken(struct order *od, struct store_txn *txn, const char *const *names,
                           size_t n, int *own, struct tp_err *err) {
  struct store_challenge *rows = NULL;
  size_t n_rows = 0;
  if (store_challenges_list(txn, &rows, &n_rows, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n_rows; i++) {
    if (strcmp(rows[i].certificate, od->name) == 0) {
      if (own != NULL)
        *own = 1;
      continue;
    }
    Tlsplane__V1__AcmeChallengeMaterial *m =
        tlsplane__v1__acme_challenge_material__unpack(NULL, rows[i].data_len, rows[i].data);
    if (m == NULL)
      continue;
    for (size_t k = 0; rc == 0 && k < n; k++) {
      const char *name = strncmp(names[k], "*.", 2) == 0 ? names[k] + 2 : names[k];
      if (strcasecmp(name, m->server_name) == 0) {
        od->waiting = 1;
        tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "waiting: %s has a challenge out for %s",
                   rows[i].certificate, name);
        rc = 1;
      }
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
  }
  store_challenges_free(rows, n_rows);
  return rc;
}

/* Puts the order's challenges out (put 1) or takes them back (put 0), in
 * one revision. Each is a row: a tls-alpn-01 one carries the certificate
 * the agents answer with, a dns-01 one none (the agents leave it out)
 * and its TXT value as its secret; both say that the name has a
 * challenge out. Put, they are written only when no other certificate
 * has one out for the same name (challenge_taken, in the same
 * transaction: two orders never both write one). */
static int challenges_store(struct order *od, int put, int64_t *revision, struct tp_err *err) {
  struct store_challenge *v = calloc(od->n_chals + 1, sizeof(*v));
  uint8_t **data = calloc(od->n_chals + 1, sizeof(*data));
  const char **names = calloc(od->n_chals + 1, sizeof(*names));
  int rc = v != NULL && data != NULL && names != NULL ? 0 : oom(err);
  size_t n = 0;
  for (size_t i = 0; rc == 0 && put && i < od->n_chals; i++) {
    const struct chal *ch = &od->chals[i];
    Tlsplane__V1__AcmeChallengeMaterial m = TLSPLANE__V1__ACME_CHALLENGE_MATERIAL__INIT;
    m.server_name = ch->name;
    if (!ch->dns)
      m.certificate_pem = ch->cert_pem;
    if (pb_pack(&m.base, &data[n], &v[n].data_len) != 0)
      rc = oom(err);
    v[n].index = (int64_t)n;
    v[n].data = data[n];
    const char *secret = ch->dns ? ch->txt : ch->key_pem;
    v[n].secret = (uint8_t *)secret;
    v[n].secret_len = strlen(secret);
    names[n] = ch->name;
    n++;
  }
  struct store_txn *txn = NULL;
  if (rc == 0)
    rc = store_begin(od->api->store, 1, &txn, err);
  if (rc == 0 && put && challenge_taken(od, txn, names, n, NULL, err) != 0) {
    store_rollback(txn);
    rc = -1;
  } else if (rc == 0) {
    rc = store_challenges_set(txn, od->name, v, put ? n : 0, job_call.actor, job_call.method,
                              put ? "acme_challenges_out" : "acme_challenges_done", err);
    if (rc == 0)
      rc = store_commit(txn, revision, err);
    else
      store_rollback(txn);
  }
  for (size_t i = 0; data != NULL && i < od->n_chals; i++)
    free(data[i]);
  free(names);
  free(data);
  free(v);
  return rc;
}

/* Before newOrder: an order that would wait asks the CA for nothing. 0, or
 * -1 (od->waiting set when that is why). Rows of its own are an earlier
 * run's that ended without taking them back (the server stopped hard):
 * taken back now, so that they hold up no other certificate. */
static int order_may_start(struct order *od, struct tp_err *err) {
  const Tlsplane__V1__Issuance *iss = od->c->issuance;
  struct store_txn *txn;
  if (store_begin(od->api->store, 0, &txn, err) != 0)
    return -1;
  int own = 0;
  int rc =
      challenge_taken(od, txn, (const char *const *)iss->dns_names, iss->n_dns_names, &own, err);
  store_rollback(txn);
  if (rc == 0 && own)
    rc = challenges_store(od, 0, NULL, err);
  return rc != 0 ? -1 : 0;
}

/* Waits (bounded) until every connected agent applied revision. */
static void fleet_wait(struct order *od, int64_t revision) {
  if (od->api->hub == NULL)
    return;
  int64_t until = now_ms() + ACME_ORDER_FLEET_WAIT_MS;
  while (now_ms() < until) {
    Tlsplane__V1__Rollout *r = NULL;
    struct tp_err err = {0};
    if (hub_rollout(od->api->hub, revision, &r, &err) != 0)
      return;
    int pending = r->n_agents_pending > 0;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (!pending)
      return;
    if (nap(od->stop, 200) != 0)
      return;
  }
  log_warn("jobs",
           "ACME order of %s: agents still applying revision %lld after %d s; answering "
           "the challenges anyway",
           od->name, (long long)revision, ACME_ORDER_FLEET_WAIT_MS / 1000);
}

/* Chooses the challenge of pending authorization i (a, shown as shown)
 * and makes what answers it: tls-alpn-01 when a listener serves the name
 * and it is no wildcard; else dns-01 when the server has a DNS hook;
 * else a failure saying why. The choice is noted on the authorization. */
static int challenge_choose(struct order *od, size_t i, const struct acme_authz *a,
                            const char *shown, const char *thumb, struct tp_err *err) {
  const struct acme_dns_hook *hook = od->api->acme_dns_hook;
  int dns;
  if (a->wildcard) {
    if (hook == NULL)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "%s: a wildcard is validated by dns-01 only, which needs a DNS hook, and "
                        "this server has none (tlsplane-server --acme-dns-hook)",
                        shown);
    dns = 1;
  } else {
    int served = name_served(od, a->identifier, err);
    if (served < 0)
      return -1;
    if (served == 0 && hook == NULL)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "no listener serves %s", shown);
    dns = served == 0;
  }
  /* What the hook gets is a DNS name and nothing else, whatever the CA
   * sent: letters, digits, hyphens and dots. */
  if (dns &&
      strspn(a->identifier, "abcdefghijklmnopqrstuvwxyz0123456789-.") != strlen(a->identifier))
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "the ACME authorization's identifier \"%s\" is not a DNS name", shown);
  const char *url = dns ? a->dns_challenge_url : a->challenge_url;
  const char *type = dns ? "dns-01" : "tls-alpn-01";
  if (url == NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "the ACME server offers no %s challenge for %s", type, shown);
  od->authz[i].challenge_type = (char *)type; /* static: never freed */
  struct chal *ch = &od->chals[od->n_chals++];
  ch->dns = dns;
  ch->authz_url = strdup(od->o.authorizations[i]);
  ch->challenge_url = strdup(url);
  ch->name = strdup(a->identifier);
  if (ch->authz_url == NULL || ch->challenge_url == NULL || ch->name == NULL)
    return oom(err);
  if (!dns)
    return acme_challenge_cert(a->identifier, a->token, thumb, &ch->cert_pem, &ch->key_pem, err);
  if ((ch->txt = acme_dns01_txt(a->dns_token, thumb)) == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "the dns-01 TXT value of %s failed", shown);
  return 0;
}

/* Runs the hook's "present" for each dns-01 challenge in turn; the
 * first failure ends it. */
static int dns_present(struct order *od, struct tp_err *err) {
  size_t n = 0;
  for (size_t i = 0; i < od->n_chals; i++) {
    struct chal *ch = &od->chals[i];
    if (!ch->dns)
      continue;
    ch->presented = 1; /* a hook that failed half-way cleans up too */
    if (acme_dns_hook_run(od->api->acme_dns_hook, "present", ch->name, ch->txt, od->name, od->stop,
                          err) != 0)
      return -1;
    n++;
  }
  if (n > 0)
    log_info("jobs", "ACME order of %s: %zu dns-01 record(s) presented by the hook", od->name, n);
  return 0;
}

/* Runs "cleanup" for each challenge "present" ran for, whatever came of
 * the order. A failure is logged (the hook's first line), not the
 * order's: the certificate may be issued all the same. */
static void dns_cleanup(struct order *od) {
  for (size_t i = 0; i < od->n_chals; i++) {
    struct chal *ch = &od->chals[i];
    if (!ch->presented)
      continue;
    ch->presented = 0;
    struct tp_err err = {0};
    if (acme_dns_hook_run(od->api->acme_dns_hook, "cleanup", ch->name, ch->txt, od->name, od->stop,
                          &err) != 0)
      log_warn("jobs", "ACME order of %s: %s", od->name, err.msg);
  }
}

/* newOrder, the authorizations and what answers their challenges. */
static int order_open(struct order *od, struct tp_err *err) {
  const Tlsplane__V1__Issuance *iss = od->c->issuance;
  /* A renewal names the certificate it replaces (RFC 9773 5). */
  char *replaces = od->renewal ? acme_cert_id_pem(od->c->certificate_chain_pem) : NULL;
  int orc = acme_order_new(&od->client, od->account_key, od->is->acme_account_url,
                           (const char *const *)iss->dns_names, iss->n_dns_names, replaces,
                           &od->order_url, &od->o, err);
  free(replaces);
  if (orc != 0)
    return -1;
  size_t n = od->o.n_authorizations;
  od->authz = calloc(n + 1, sizeof(*od->authz));
  od->authz_ptrs = calloc(n + 1, sizeof(*od->authz_ptrs));
  od->chals = calloc(n + 1, sizeof(*od->chals));
  if (od->authz == NULL || od->authz_ptrs == NULL || od->chals == NULL)
    return oom(err);
  od->n_authz = n; /* zeroed entries until filled: order_clear frees what is set */
  for (size_t i = 0; i < n; i++) {
    tlsplane__v1__acme_authorization__init(&od->authz[i]);
    od->authz[i].identifier = od->authz[i].status = NULL;
    od->authz[i].url = strdup(od->o.authorizations[i]);
    od->authz_ptrs[i] = &od->authz[i];
    if (od->authz[i].url == NULL || authz_note(od, i, "", "") != 0)
      return oom(err);
  }
  char *thumb = acme_jwk_thumbprint(od->account_key);
  if (thumb == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "the account key's JWK thumbprint failed");
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    struct acme_authz a;
    if (acme_authz_get(&od->client, od->account_key, od->is->acme_account_url,
                       od->o.authorizations[i], &a, err) != 0) {
      rc = -1;
      break;
    }
    char shown[ACME_SHOWN_MAX];
    authz_shown(&a, shown, sizeof(shown));
    if (authz_note(od, i, shown, a.status) != 0)
      rc = oom(err);
    else if (strcmp(a.status, STATUS_VALID) == 0)
      ; /* authorized already (an earlier order) */
    else if (strcmp(a.status, "pending") != 0)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "ACME authorization of %s is %s%s%s",
                      shown, a.status, a.challenge_error ? ": " : "",
                      a.challenge_error ? a.challenge_error : "");
    else
      rc = challenge_choose(od, i, &a, shown, thumb, err);
    acme_authz_clear(&a);
  }
  free(thumb);
  return rc;
}

/* Answers the challenges and polls their authorizations until each is
 * valid or one is invalid (bounded). */
static int order_validate(struct order *od, struct tp_err *err) {
  for (size_t i = 0; i < od->n_chals; i++)
    if (acme_challenge_respond(&od->client, od->account_key, od->is->acme_account_url,
                               od->chals[i].challenge_url, err) != 0)
      return -1;
  int64_t until = now_ms() + ACME_ORDER_AUTHZ_WAIT_MS;
  for (size_t i = 0; i < od->n_chals;) {
    struct acme_authz a;
    if (acme_authz_get(&od->client, od->account_key, od->is->acme_account_url,
                       od->chals[i].authz_url, &a, err) != 0)
      return -1;
    char shown[ACME_SHOWN_MAX];
    authz_shown(&a, shown, sizeof(shown));
    for (size_t k = 0; k < od->n_authz; k++)
      if (strcmp(od->authz[k].url, od->chals[i].authz_url) == 0)
        authz_note(od, k, shown, a.status);
    /* The problem of the challenge answered. */
    const char *problem = od->chals[i].dns ? a.dns_challenge_error : a.challenge_error;
    int rc = 0, next = 0;
    if (strcmp(a.status, STATUS_VALID) == 0)
      next = 1;
    else if (strcmp(a.status, "pending") != 0)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "ACME authorization of %s is %s%s%s",
                      shown, a.status, problem ? ": " : "", problem ? problem : "");
    else if (now_ms() >= until)
      rc = tp_err_set(err, GRPC_STATUS_DEADLINE_EXCEEDED,
                      "ACME authorization of %s still pending after %d s", shown,
                      ACME_ORDER_AUTHZ_WAIT_MS / 1000);
    acme_authz_clear(&a);
    if (rc != 0)
      return -1;
    if (next) {
      i++;
      continue;
    }
    if (nap(od->stop, poll_delay_ms(&od->client)) != 0)
      return tp_err_set(err, GRPC_STATUS_CANCELLED, "the server is stopping");
  }
  return 0;
}

/* Finalizes with the pending request's CSR, polls, downloads the chain. */
static int order_finish(struct order *od, struct tp_err *err) {
  int64_t until = now_ms() + ACME_ORDER_FINAL_WAIT_MS;
  /* The order moves to "ready" once its authorizations are valid. */
  for (;;) {
    acme_order_clear(&od->o);
    if (acme_order_get(&od->client, od->account_key, od->is->acme_account_url, od->order_url,
                       &od->o, err) != 0)
      return -1;
    if (strcmp(od->o.status, "pending") != 0)
      break;
    if (now_ms() >= until)
      return tp_err_set(err, GRPC_STATUS_DEADLINE_EXCEEDED, "ACME order still pending");
    if (nap(od->stop, poll_delay_ms(&od->client)) != 0)
      return tp_err_set(err, GRPC_STATUS_CANCELLED, "the server is stopping");
  }
  if (strcmp(od->o.status, "ready") == 0) {
    /* The request made for this order: re-read, it may be a renewal's. */
    struct store_txn *txn;
    ProtobufCMessage *cm = NULL;
    if (store_begin(od->api->store, 0, &txn, err) != 0)
      return -1;
    int rc = api_read(txn, &api_kind_certificate, od->name, 0, &cm, NULL, err);
    store_rollback(txn);
    if (rc != 0)
      return -1;
    const Tlsplane__V1__Certificate *c = (const Tlsplane__V1__Certificate *)cm;
    if (c->pending_request == NULL) {
      protobuf_c_message_free_unpacked(cm, NULL);
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s has no pending request",
                        od->name);
    }
    char *finalize = strdup(od->o.finalize);
    acme_order_clear(&od->o);
    rc = finalize == NULL
             ? oom(err)
             : acme_order_finalize(&od->client, od->account_key, od->is->acme_account_url, finalize,
                                   c->pending_request->csr_pem, &od->o, err);
    free(finalize);
    protobuf_c_message_free_unpacked(cm, NULL);
    if (rc != 0)
      return -1;
  }
  while (strcmp(od->o.status, "processing") == 0 || strcmp(od->o.status, "ready") == 0) {
    if (now_ms() >= until)
      return tp_err_set(err, GRPC_STATUS_DEADLINE_EXCEEDED, "ACME order still %s", od->o.status);
    if (nap(od->stop, poll_delay_ms(&od->client)) != 0)
      return tp_err_set(err, GRPC_STATUS_CANCELLED, "the server is stopping");
    acme_order_clear(&od->o);
    if (acme_order_get(&od->client, od->account_key, od->is->acme_account_url, od->order_url,
                       &od->o, err) != 0)
      return -1;
  }
  if (strcmp(od->o.status, STATUS_VALID) != 0 || od->o.certificate == NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "ACME order is %s%s%s", od->o.status,
                      od->o.error ? ": " : "", od->o.error ? od->o.error : "");
  return acme_certificate_download(&od->client, od->account_key, od->is->acme_account_url,
                                   od->o.certificate, &od->chain, err);
}

/* Records a write failure of the state, unless the certificate went. */
static void state_write_logged(struct order *od, const struct state *st) {
  struct tp_err err = {0};
  if (state_write(od, st, &err) != 0 && err.status != GRPC_STATUS_NOT_FOUND &&
      strstr(err.msg, "changed meanwhile") == NULL)
    log_warn("jobs", "ACME order of %s: recording its state: %s", od->name, err.msg);
}

struct task {
  struct api *api;
  char *name;
};

static void task_free(void *data) {
  struct task *t = data;
  free(t->name);
  free(t);
}

static void order_run(void *data, const atomic_int *stop) {
  struct task *t = data;
  struct order od = {.api = t->api, .stop = stop, .name = t->name};
  struct tp_err err = {0};
  int rc = order_load(&od, &err);
  if (rc != 0 && (err.status == GRPC_STATUS_NOT_FOUND || od.c == NULL)) {
    order_clear(&od);
    return; /* gone since it was listed */
  }
  if (rc == 0) {
    od.renewal = od.c->certificate_chain_pem[0] != '\0';
    acme_client_init(&od.client, od.is->acme_directory_url,
                     od.is->acme_ca_pem[0] ? od.is->acme_ca_pem : NULL, stop);
    rc = order_may_start(&od, &err);
    if (rc == 0 && od.c->pending_request == NULL)
      rc = order_rekey(&od, &err);
  }
  if (rc == 0)
    rc = order_open(&od, &err);
  if (rc == 0 && od.order_url != NULL) {
    const struct state st = {.kind = STATE_PROGRESS};
    state_write_logged(&od, &st);
  }
  int64_t revision = 0;
  size_t n_alpn = 0;
  for (size_t i = 0; i < od.n_chals; i++)
    n_alpn += !od.chals[i].dns;
  if (rc == 0 && od.n_chals > 0) {
    rc = challenges_store(&od, 1, &revision, &err);
    od.chals_stored = rc == 0;
    if (rc == 0) {
      log_info("jobs", "ACME order of %s: %zu challenge(s) out at revision %lld", od.name,
               od.n_chals, (long long)revision);
      if (n_alpn > 0)
        fleet_wait(&od, revision);
    }
  }
  if (rc == 0)
    rc = dns_present(&od, &err);
  if (rc == 0 && od.n_chals > 0)
    rc = order_validate(&od, &err);
  dns_cleanup(&od);
  int64_t retry_after_s = od.client.retry_after_s;
  if (od.chals_stored) {
    struct tp_err derr = {0};
    /* A certificate deleted meanwhile took its challenges with it. */
    if (challenges_store(&od, 0, NULL, &derr) != 0 && derr.status != GRPC_STATUS_NOT_FOUND)
      log_warn("jobs", "ACME order of %s: removing its challenges: %s", od.name, derr.msg);
  }
  if (rc == 0) {
    const struct state st = {.kind = STATE_PROGRESS};
    state_write_logged(&od, &st);
    rc = order_finish(&od, &err);
    retry_after_s = od.client.retry_after_s;
  }
  if (atomic_load(stop) != 0) {
    order_clear(&od);
    return;
  }
  if (rc == 0) {
    const struct state st = {.kind = STATE_DONE, .chain = od.chain};
    struct tp_err werr = {0};
    if (state_write(&od, &st, &werr) == 0) {
      log_info("jobs", "ACME order of %s: %s", od.name, od.renewal ? "renewed" : "issued");
      if (od.renewal) {
        const struct events_event e = {.type = TLSPLANE__V1__EVENT_TYPE__RENEWED,
                                       .resource = od.name};
        events_publish(od.api->events, &e);
      }
      order_clear(&od);
      return;
    }
    if (werr.status == GRPC_STATUS_NOT_FOUND) {
      order_clear(&od); /* deleted meanwhile */
      return;
    }
    err = werr; /* the chain was refused (a context it is in): a failure */
    rc = -1;
  }
  if (od.waiting) {
    /* Tried again soon; the CA's order, if made, is left to expire. */
    /* Said once per wait, not at every retry. */
    if (od.c->acme_order == NULL || strcmp(od.c->acme_order->last_error, err.msg) != 0)
      log_info("jobs", "ACME order of %s: %s", od.name, err.msg);
    const struct state st = {.kind = STATE_WAITING, .why = err.msg};
    state_write_logged(&od, &st);
    order_clear(&od);
    return;
  }
  log_warn("jobs", "ACME order of %s: %s", od.name, err.msg);
  if (od.c != NULL && od.c->issuance != NULL) {
    const struct state st = {.kind = STATE_FAILED, .why = err.msg, .retry_after_s = retry_after_s};
    state_write_logged(&od, &st);
  }
  const struct events_event e = {
      .type = TLSPLANE__V1__EVENT_TYPE__RENEWAL_FAILED, .resource = od.name, .reason = err.msg};
  events_publish(od.api->events, &e);
  order_clear(&od);
}

void acme_order_submit(struct api *api, struct jobs *jobs, const char *name) {
  struct task *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->name = strdup(name)) == NULL) {
    free(t);
    return;
  }
  t->api = api;
  /* Refused (queued or running already, or the order threads' queue is
   * full): the certificate stays due, and a later round hands it over. */
  if (jobs_order_submit(jobs, t->name, order_run, t, task_free) != 0)
    task_free(t);
}
