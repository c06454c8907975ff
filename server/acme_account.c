/* ACME issuers' accounts (see acme_account.h). */
#include "acme_account.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#include "acme.h"
#include "certinfo.h"
#include "jobs.h"
#include "log.h"
#include "pb.h"

#define EAB_PEM_NAME "ACME EAB HMAC KEY"
#define STATUS_VALID "valid"
#define STATUS_FAILED "failed"
/* Issuers handed to the fetch threads per round at most. */
#define ACCOUNT_BATCH 50

uint8_t *acme_secret_make(EVP_PKEY *key, const unsigned char *eab, size_t eab_len, size_t *len) {
  char *pem = certinfo_key_pem(key);
  BIO *b = pem != NULL ? BIO_new(BIO_s_secmem()) : NULL;
  uint8_t *out = NULL;
  if (b != NULL && BIO_write(b, pem, (int)strlen(pem)) == (int)strlen(pem) &&
      (eab_len == 0 || PEM_write_bio(b, EAB_PEM_NAME, "", eab, (long)eab_len) > 0)) {
    char *data;
    long n = BIO_get_mem_data(b, &data);
    if (n > 0 && (out = malloc((size_t)n)) != NULL) {
      memcpy(out, data, (size_t)n);
      *len = (size_t)n;
    }
  }
  ERR_clear_error();
  BIO_free(b);
  if (pem != NULL) {
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
  }
  return out;
}

int acme_secret_read(const uint8_t *secret, size_t len, EVP_PKEY **key, unsigned char **eab,
                     size_t *eab_len) {
  *key = NULL;
  *eab = NULL;
  *eab_len = 0;
  if (secret == NULL || len == 0 || len > INT32_MAX)
    return -1;
  BIO *b = BIO_new_mem_buf(secret, (int)len);
  if (b == NULL)
    return -1;
  *key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  char *name = NULL, *header = NULL;
  unsigned char *data = NULL;
  long n = 0;
  while (*key != NULL && PEM_read_bio(b, &name, &header, &data, &n) > 0) {
    if (strcmp(name, EAB_PEM_NAME) == 0 && *eab == NULL && n > 0 &&
        (*eab = malloc((size_t)n)) != NULL) {
      memcpy(*eab, data, (size_t)n);
      *eab_len = (size_t)n;
    }
    OPENSSL_clear_free(data, (size_t)n);
    OPENSSL_free(name);
    OPENSSL_free(header);
    data = NULL;
    name = header = NULL;
  }
  ERR_clear_error();
  BIO_free(b);
  return *key != NULL ? 0 : -1;
}

int64_t acme_account_due_us(const Tlsplane__V1__Issuer *is) {
  if (is->type != TLSPLANE__V1__ISSUER__TYPE__ACME || strcmp(is->acme_account_status, "valid") == 0)
    return 0;
  int64_t at = is->acme_next_attempt_time != NULL ? pb_timestamp_us(is->acme_next_attempt_time) : 0;
  return at > 0 ? at : 1;
}

static int64_t retry_delay_ms(int failures) {
  int64_t base = jobs_env_positive("TLSPLANE_ACME_RETRY_MS", ACME_ACCOUNT_RETRY_BASE_MS);
  return jobs_backoff(base, ACME_ACCOUNT_RETRY_MAX_MS, failures);
}

/* What one attempt found. */
struct outcome {
  char *url;    /* success: the account's URL */
  char *status; /* success: the account's status as the server says */
  struct tp_err err;
  int64_t retry_after_s;
};

/* The issuer after outcome o (jobs_outcome's edit). */
static int outcome_edit(const struct jobs_outcome *w, const ProtobufCMessage *old,
                        ProtobufCMessage *res, struct api_op *op, const char **action,
                        struct tp_err *err) {
  (void)old;
  (void)op;
  const struct outcome *o = w->data;
  int64_t now_us = w->now_us;
  Tlsplane__V1__Issuer *is = (Tlsplane__V1__Issuer *)res;
  int ok = o->url != NULL && strcmp(o->status, STATUS_VALID) == 0;
  char why[sizeof(o->err.msg) + 64];
  if (o->url != NULL && !ok)
    snprintf(why, sizeof(why), "the ACME server says the account is %s", o->status);
  else
    snprintf(why, sizeof(why), "%s", o->err.msg);
  if (ok) {
    is->acme_registration_failures = 0;
    pb_field_clear(res, pb_field(res->descriptor, "acme_next_attempt_time"));
  } else {
    is->acme_registration_failures++;
    int64_t delay_ms = retry_delay_ms(is->acme_registration_failures);
    if (o->retry_after_s * 1000 > delay_ms)
      delay_ms = o->retry_after_s * 1000;
    if (pb_timestamp_set(res, "acme_next_attempt_time", now_us + delay_ms * 1000) != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (pb_string_set(res, "acme_account_status", ok ? STATUS_VALID : STATUS_FAILED) != 0 ||
      pb_string_set(res, "acme_last_error", ok ? "" : why) != 0 ||
      (o->url != NULL && pb_string_set(res, "acme_account_url", o->url) != 0))
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  *action = ok ? "acme_account_registered" : "acme_account_failed";
  return 0;
}

/* Writes the outcome on name, still at etag. */
static int outcome_write(struct api *api, const char *name, const char *etag,
                         const struct outcome *o, int64_t now_us, struct tp_err *err) {
  const struct rpc_call_info call = {
      .method = ACME_ACCOUNT_METHOD, .peer = "local", .actor = "system", .principal = ""};
  const struct jobs_outcome w = {.kind = &api_kind_issuer,
                                 .call = &call,
                                 .name = name,
                                 .etag = etag,
                                 .now_us = now_us,
                                 .edit = outcome_edit,
                                 .data = (void *)o};
  return jobs_outcome_write(api, &w, err) < 0 ? -1 : 0;
}

struct task {
  struct api *api;
  char *name;
  char *etag;
};

static void task_free(void *data) {
  struct task *t = data;
  free(t->name);
  free(t->etag);
  free(t);
}

/* Registers one account: read (with the secret), talk, write. */
static void task_run(void *data, const atomic_int *stop) {
  struct task *t = data;
  struct tp_err err = {0};
  struct store_txn *txn;
  ProtobufCMessage *msg = NULL;
  struct store_row row = {0};
  if (store_begin(t->api->store, 0, &txn, &err) != 0) {
    log_warn("jobs", "ACME account of %s: %s", t->name, err.msg);
    return;
  }
  int rc = api_read(txn, &api_kind_issuer, t->name, 1, &msg, &row, &err);
  store_rollback(txn);
  if (rc != 0 || strcmp(row.etag, t->etag) != 0 ||
      acme_account_due_us((const Tlsplane__V1__Issuer *)msg) == 0)
    goto done; /* gone or changed since: the next round sees the new version */
  const Tlsplane__V1__Issuer *is = (const Tlsplane__V1__Issuer *)msg;
  EVP_PKEY *key = NULL;
  unsigned char *eab = NULL;
  size_t eab_len = 0;
  struct outcome o = {0};
  if (acme_secret_read(row.secret, row.secret_len, &key, &eab, &eab_len) != 0)
    tp_err_set(&o.err, GRPC_STATUS_INTERNAL, "the stored ACME account key does not load");
  else {
    struct acme_client c;
    acme_client_init(&c, is->acme_directory_url, is->acme_ca_pem[0] ? is->acme_ca_pem : NULL, stop);
    if (acme_account_register(&c, key, (const char *const *)is->acme_contact, is->n_acme_contact,
                              is->acme_eab_kid, eab, eab_len, &o.url, &o.status, &o.err) != 0)
      o.retry_after_s = c.retry_after_s;
    acme_client_clear(&c);
  }
  EVP_PKEY_free(key);
  if (eab != NULL) {
    OPENSSL_cleanse(eab, eab_len);
    free(eab);
  }
  if (atomic_load(stop) == 0) {
    int64_t now_us = pb_now_us();
    if (o.url != NULL)
      log_info("jobs", "ACME account of %s: %s (%s)", t->name, o.status, o.url);
    else
      log_warn("jobs", "ACME account of %s: %s", t->name, o.err.msg);
    struct tp_err werr = {0};
    if (outcome_write(t->api, t->name, t->etag, &o, now_us, &werr) != 0 &&
        werr.status != GRPC_STATUS_FAILED_PRECONDITION)
      log_warn("jobs", "recording the ACME account of %s: %s", t->name, werr.msg);
  }
  free(o.url);
  free(o.status);
done:
  if (msg != NULL)
    protobuf_c_message_free_unpacked(msg, NULL);
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
}

void acme_accounts_run(struct api *api, struct jobs *jobs, int64_t now_us) {
  struct tp_err err = {0};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (jobs_list_due(api->store, api_kind_issuer.kind, JOBS_DUE_WORK, now_us, ACCOUNT_BATCH, &rows,
                    &n, &err) != 0) {
    log_warn("jobs", "ACME accounts: %s", err.msg);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    struct task *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->name = strdup(rows[i].name)) == NULL ||
        (t->etag = strdup(rows[i].etag)) == NULL) {
      if (t != NULL)
        task_free(t);
      continue;
    }
    t->api = api;
    if (jobs_fetch_submit(jobs, t->name, task_run, t, task_free) != 0)
      task_free(t); /* queued or running already */
  }
  store_rows_free(rows, n);
}
