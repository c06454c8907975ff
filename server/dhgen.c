/* New DH parameters for cipher policies (see dhgen.h). */
#include "dhgen.h"

#include <openssl/dh.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pb.h"
#include "store.h"
#include "tlsplane/v1/cipher_policy.pb-c.h"

extern const struct api_kind api_kind_cipher_policy;

struct job {
  char name[128];
  int bits;
  int64_t start_us; /* the generation's start_time: which one it is */
  char actor[128];
};

struct dhgen {
  struct api *api;
  pthread_t thread;
  int started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct job queue[DHGEN_MAX_QUEUED]; /* a ring: head, n (mu) */
  size_t head, n;
  int busy; /* a job is being generated (mu); counts toward DHGEN_MAX_QUEUED */
  atomic_int stop;
};

static const struct rpc_call_info system_call = {
    .method = "job:dh-generation", .peer = "local", .actor = "system", .principal = ""};

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t ts_us(const Google__Protobuf__Timestamp *t) {
  return t != NULL ? (int64_t)t->seconds * 1000000 + t->nanos / 1000 : 0;
}

/* Changes policy `name` in one write transaction: modify(res, data)
 * edits a copy of the stored version and returns 0 to write it, 1 to
 * leave the policy as it is, or -1 with err. *resp (may be NULL) gets
 * the policy as written or read. */
typedef int (*modify_fn)(Tlsplane__V1__CipherPolicy *res, void *data, struct tp_err *err);

static int policy_change(struct api *api, const struct rpc_call_info *call, const char *name,
                         const char *etag, modify_fn modify, void *data, const char *action,
                         ProtobufCMessage **resp, struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0)
    return -1;
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, &api_kind_cipher_policy, name, 0, &old, &row, err);
  if (rc == 0 && api_kind_cipher_policy.check_mutable != NULL)
    rc = api_kind_cipher_policy.check_mutable(old, err);
  if (rc == 0 && etag != NULL && etag[0] != '\0' && strcmp(etag, row.etag) != 0)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "etag mismatch: %s was changed (etag %s), re-read it", name, row.etag);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  int skip = 0;
  if (rc == 0) {
    rc = modify((Tlsplane__V1__CipherPolicy *)res, data, err);
    skip = rc == 1;
    rc = rc < 0 ? -1 : 0;
  }
  struct api_op op = {.api = api,
                      .kind = &api_kind_cipher_policy,
                      .txn = txn,
                      .call = call,
                      .old = old,
                      .old_row = &row,
                      .now = time(NULL)};
  if (rc == 0 && !skip)
    rc = api_write(&op, res, etag, action, err);
  if (rc == 0 && !skip)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  if (rc == 0 && resp != NULL)
    *resp = res;
  else if (res != NULL)
    protobuf_c_message_free_unpacked(res, NULL);
  return rc;
}

/* The generation a policy records, made if it has none. */
static Tlsplane__V1__DhGeneration *generation(Tlsplane__V1__CipherPolicy *cp) {
  if (cp->dh_generation == NULL && (cp->dh_generation = malloc(sizeof(*cp->dh_generation))) != NULL)
    tlsplane__v1__dh_generation__init(cp->dh_generation);
  return cp->dh_generation;
}

/* --- the request --- */

struct start {
  const struct job *job;
};

static int mark_running(Tlsplane__V1__CipherPolicy *cp, void *data, struct tp_err *err) {
  const struct job *job = ((struct start *)data)->job;
  if (cp->dh_generation != NULL &&
      cp->dh_generation->state == TLSPLANE__V1__DH_GENERATION__STATE__RUNNING)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: DH parameters are being generated already (%d bits); wait for it",
                      cp->name, cp->dh_generation->bits);
  if (cp->dh_generation != NULL) {
    protobuf_c_message_free_unpacked(&cp->dh_generation->base, NULL);
    cp->dh_generation = NULL;
  }
  Tlsplane__V1__DhGeneration *g = generation(cp);
  if (g == NULL || pb_timestamp_set(&g->base, "start_time", job->start_us) != 0 ||
      pb_string_set(&g->base, "actor", job->actor) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  g->state = TLSPLANE__V1__DH_GENERATION__STATE__RUNNING;
  g->bits = job->bits;
  return 0;
}

int dhgen_request(struct dhgen *g, const struct rpc_call_info *call, const char *name, int bits,
                  const char *etag, ProtobufCMessage **resp, struct tp_err *err) {
  if (api_name_check(&api_kind_cipher_policy, name, "name", err) != 0)
    return -1;
  if (bits == 0)
    bits = 2048;
  if (bits != 2048 && bits != 3072 && bits != 4096)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "bits: %d; 2048, 3072 or 4096 (for larger, use an RFC 7919 group: "
                      "dhparam_group)",
                      bits);
  struct job job = {.bits = bits, .start_us = now_us()};
  snprintf(job.name, sizeof(job.name), "%s", name);
  snprintf(job.actor, sizeof(job.actor), "%s", call->actor);
  pthread_mutex_lock(&g->mu);
  int full = g->n + (size_t)g->busy >= DHGEN_MAX_QUEUED;
  if (!full)
    g->busy++; /* a slot held while the policy is marked */
  pthread_mutex_unlock(&g->mu);
  if (full)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                      "%d DH generations are queued or running already, the most there are; "
                      "retry later",
                      DHGEN_MAX_QUEUED);
  struct start st = {.job = &job};
  int rc = policy_change(g->api, call, name, etag, mark_running, &st, "generate_dh", resp, err);
  pthread_mutex_lock(&g->mu);
  g->busy--;
  if (rc == 0) {
    g->queue[(g->head + g->n) % DHGEN_MAX_QUEUED] = job;
    g->n++;
    pthread_cond_signal(&g->cv);
  }
  pthread_mutex_unlock(&g->mu);
  return rc;
}

/* --- the thread --- */

static int keep_going(EVP_PKEY_CTX *ctx) {
  struct dhgen *g = EVP_PKEY_CTX_get_app_data(ctx);
  return !atomic_load(&g->stop);
}

/* A safe prime of `bits` with generator 2, as `openssl dhparam` makes
 * them, as PEM (malloc'd); NULL with err. */
static char *generate(struct dhgen *g, int bits, struct tp_err *err) {
  EVP_PKEY *dh = NULL;
  char *pem = NULL;
  EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
  /* As `openssl dhparam` asks: a prime length and generator 2 (the "DH"
   * type then makes a safe prime). */
  if (pc == NULL || EVP_PKEY_paramgen_init(pc) <= 0 ||
      EVP_PKEY_CTX_set_dh_paramgen_prime_len(pc, bits) <= 0 ||
      EVP_PKEY_CTX_set_dh_paramgen_generator(pc, 2) <= 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "OpenSSL cannot set up DH parameter generation");
    goto done;
  }
  EVP_PKEY_CTX_set_app_data(pc, g);
  EVP_PKEY_CTX_set_cb(pc, keep_going);
  if (EVP_PKEY_paramgen(pc, &dh) <= 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL,
               atomic_load(&g->stop) ? "the server stopped before the generation finished"
                                     : "OpenSSL failed to generate DH parameters");
    goto done;
  }
  BIO *b = BIO_new(BIO_s_mem());
  char *data;
  long n;
  if (b != NULL && PEM_write_bio_Parameters(b, dh) == 1 && (n = BIO_get_mem_data(b, &data)) > 0)
    pem = strndup(data, (size_t)n);
  BIO_free(b);
  if (pem == NULL)
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
done:
  ERR_clear_error();
  EVP_PKEY_free(dh);
  EVP_PKEY_CTX_free(pc);
  return pem;
}

struct finish {
  const struct job *job;
  const char *pem;   /* DONE with these, or */
  const char *error; /* FAILED with this */
  int superseded;    /* out: the policy no longer waits for this job */
};

/* Still the generation the job is for: nobody asked again or changed it. */
static int same_generation(const Tlsplane__V1__CipherPolicy *cp, const struct job *job) {
  const Tlsplane__V1__DhGeneration *g = cp->dh_generation;
  return g != NULL && g->state == TLSPLANE__V1__DH_GENERATION__STATE__RUNNING &&
         ts_us(g->start_time) == job->start_us;
}

static int mark_finished(Tlsplane__V1__CipherPolicy *cp, void *data, struct tp_err *err) {
  struct finish *f = data;
  if (f->job != NULL && !same_generation(cp, f->job)) {
    f->superseded = 1;
    return 1;
  }
  Tlsplane__V1__DhGeneration *g = generation(cp);
  if (g == NULL || pb_timestamp_set(&g->base, "end_time", now_us()) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (f->pem != NULL) {
    if (pb_string_set(&cp->base, "dhparam_pem", f->pem) != 0 ||
        pb_string_set(&cp->base, "dhparam_group", "") != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    g->state = TLSPLANE__V1__DH_GENERATION__STATE__DONE;
  } else {
    if (pb_string_set(&g->base, "error", f->error) != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    g->state = TLSPLANE__V1__DH_GENERATION__STATE__FAILED;
  }
  return 0;
}

static void job_run(struct dhgen *g, const struct job *job) {
  struct tp_err err = {.status = GRPC_STATUS_OK};
  char *pem = generate(g, job->bits, &err);
  if (atomic_load(&g->stop)) {
    free(pem);
    return; /* marked FAILED on the next start */
  }
  struct finish f = {.job = job, .pem = pem};
  struct tp_err werr = {.status = GRPC_STATUS_OK};
  int rc = pem != NULL ? policy_change(g->api, &system_call, job->name, NULL, mark_finished, &f,
                                       "generate_dh", NULL, &werr)
                       : -1;
  if (pem != NULL && rc == 0 && f.superseded) {
    log_info("dhgen", "%s: %d-bit DH parameters generated, but the policy no longer asks for them",
             job->name, job->bits);
  } else if (pem != NULL && rc == 0) {
    log_info("dhgen", "%s: %d-bit DH parameters generated and written", job->name, job->bits);
  } else {
    /* The generation, or the write of its result (the policy changed in a
     * way that refuses them), failed: say so on the policy. */
    char why[sizeof(err.msg)];
    snprintf(why, sizeof(why), "%s", pem == NULL ? err.msg : werr.msg);
    f = (struct finish){.job = job, .error = why};
    struct tp_err ferr = {.status = GRPC_STATUS_OK};
    if (policy_change(g->api, &system_call, job->name, NULL, mark_finished, &f, "generate_dh", NULL,
                      &ferr) != 0)
      log_warn("dhgen", "%s: the generation failed (%s) and that could not be recorded: %s",
               job->name, why, ferr.msg);
    else
      log_warn("dhgen", "%s: DH generation failed: %s", job->name, why);
  }
  if (pem != NULL)
    OPENSSL_cleanse(pem, strlen(pem));
  free(pem);
}

static void *dhgen_main(void *arg) {
  struct dhgen *g = arg;
  pthread_mutex_lock(&g->mu);
  for (;;) {
    while (g->n == 0 && !atomic_load(&g->stop))
      pthread_cond_wait(&g->cv, &g->mu);
    if (atomic_load(&g->stop))
      break;
    struct job job = g->queue[g->head];
    g->head = (g->head + 1) % DHGEN_MAX_QUEUED;
    g->n--;
    g->busy++;
    pthread_mutex_unlock(&g->mu);
    job_run(g, &job);
    pthread_mutex_lock(&g->mu);
    g->busy--;
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

/* Marks FAILED the generations a previous process left RUNNING. */
static void orphans_fail(struct api *api) {
  struct tp_err err = {.status = GRPC_STATUS_OK};
  struct store_txn *txn;
  struct store_row *rows = NULL;
  size_t n = 0;
  struct store_query q = {.kind = api_kind_cipher_policy.kind};
  if (store_begin(api->store, 0, &txn, &err) != 0)
    return;
  int rc = store_list(txn, &q, &rows, &n, &err);
  store_rollback(txn);
  if (rc != 0)
    return;
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__CipherPolicy *cp =
        tlsplane__v1__cipher_policy__unpack(NULL, rows[i].data_len, rows[i].data);
    int orphan = cp != NULL && cp->dh_generation != NULL &&
                 cp->dh_generation->state == TLSPLANE__V1__DH_GENERATION__STATE__RUNNING;
    if (cp != NULL)
      tlsplane__v1__cipher_policy__free_unpacked(cp, NULL);
    if (!orphan)
      continue;
    struct finish f = {.error = "the server stopped before the generation finished; ask again"};
    if (policy_change(api, &system_call, rows[i].name, NULL, mark_finished, &f, "generate_dh", NULL,
                      &err) != 0)
      log_warn("dhgen", "%s: an interrupted DH generation could not be marked failed: %s",
               rows[i].name, err.msg);
  }
  store_rows_free(rows, n);
}

int dhgen_start(struct api *api, struct dhgen **out, struct tp_err *err) {
  struct dhgen *g = calloc(1, sizeof(*g));
  if (g == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  g->api = api;
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  atomic_init(&g->stop, 0);
  orphans_fail(api);
  int rc = pthread_create(&g->thread, NULL, dhgen_main, g);
  if (rc != 0) {
    dhgen_stop(g);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                      "cannot start the DH generation thread: %s", strerror(rc));
  }
  g->started = 1;
  *out = g;
  return 0;
}

void dhgen_stop(struct dhgen *g) {
  if (g == NULL)
    return;
  pthread_mutex_lock(&g->mu);
  atomic_store(&g->stop, 1);
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
  if (g->started)
    pthread_join(g->thread, NULL);
  pthread_cond_destroy(&g->cv);
  pthread_mutex_destroy(&g->mu);
  free(g);
}
