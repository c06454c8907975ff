/* The control-plane source, the agent's identity (see stream_int.h): the
 * --cert / --key files, or the enrolled certificate of the cache dir,
 * made with EnrollAgent and the join token and renewed with
 * RenewAgentCertificate. Runs on the conn thread. */
#include <stdio.h>
#include <string.h>

#include "cache.h"
#include "log.h"
#include "stream_int.h"

static void format_time(int64_t t, char *buf, size_t len) {
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void identity_take(struct source_stream *s, struct identity *id) {
  identity_clear(&s->id);
  s->id = *id;
  memset(id, 0, sizeof(*id));
  s->have_id = 1;
  s->id_refused = 0;
  atomic_store(&s->a->cp_cert_expiry, s->id.not_after);
}

/* Makes a key and a CSR and calls method: EnrollAgent with the join token,
 * RenewAgentCertificate with the current certificate. On success the new
 * identity is stored in the cache dir and taken. */
static int certificate_request(struct source_stream *s, int enroll, struct tp_err *err) {
  char *key = NULL, *csr = NULL;
  if (identity_keygen(s->cfg.name, &key, &csr, err) != 0)
    return -1;
  struct gclient_opts o = {.ca_pem = s->ca_pem, .stop = &s->stop, .deadline_ms = 30000};
  ProtobufCMessage *resp = NULL;
  char *bearer = NULL;
  int rc;
  if (enroll) {
    size_t len = strlen(s->cfg.join_token) + 8;
    if ((bearer = malloc(len)) == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    snprintf(bearer, len, "Bearer %s", s->cfg.join_token);
    o.authorization = bearer;
    Tlsplane__V1__EnrollAgentRequest req = TLSPLANE__V1__ENROLL_AGENT_REQUEST__INIT;
    req.agent_id = (char *)s->cfg.name;
    req.csr_pem = csr;
    rc = gclient_unary(stream_server(s), STREAM_ENROLL_METHOD, &o, &req.base,
                       &tlsplane__v1__agent_certificate__descriptor, &resp, err);
  } else {
    o.key_pem = s->id.key_pem;
    o.cert_pem = s->id.cert_pem;
    Tlsplane__V1__RenewAgentCertificateRequest req =
        TLSPLANE__V1__RENEW_AGENT_CERTIFICATE_REQUEST__INIT;
    req.csr_pem = csr;
    rc = gclient_unary(stream_server(s), STREAM_RENEW_METHOD, &o, &req.base,
                       &tlsplane__v1__agent_certificate__descriptor, &resp, err);
  }
  if (rc != 0)
    goto done;
  const Tlsplane__V1__AgentCertificate *ac = (const Tlsplane__V1__AgentCertificate *)resp;
  struct identity id;
  if (identity_make(key, ac->certificate_pem, &id, err) != 0) {
    tp_err_prefix(err, "the certificate the server sent: ");
    rc = -1;
    goto done;
  }
  if (identity_store(s->cfg.cache_dir, &id, ac->ca_pem, err) != 0) {
    identity_clear(&id);
    rc = -1;
    goto done;
  }
  identity_take(s, &id);
  char until[40], renew[40];
  format_time(s->id.not_after, until, sizeof(until));
  format_time(s->id.renew_after, renew, sizeof(renew));
  log_info("agent",
           "control plane: %s as %s: certificate %s (serial %s), valid until %s, renewed "
           "after %s; stored in %s",
           enroll ? "enrolled" : "certificate renewed", ac->agent, ac->client_certificate,
           s->id.serial, until, renew, s->cfg.cache_dir);
done:
  if (bearer != NULL)
    cache_wipe_free(bearer, strlen(bearer));
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  cache_wipe_free(key, strlen(key));
  free(csr);
  return rc;
}

/* The credential for the next connection: the files of --cert/--key (or
 * their renewal in the cache dir), or the enrolled certificate (loaded
 * from the cache dir, enrolled with the join token); either is renewed
 * when due. */
int stream__identity_ensure(struct source_stream *s, struct tp_err *err) {
  int64_t now = time(NULL);
  char why[256];
  if (!stream_enroll_mode(s)) {
    /* Read again every time: an operator may replace them. A renewal of
     * theirs is kept in the cache dir (the files are the operator's, never
     * written); the newer of the two is used (the renewal when they end
     * in the same second). */
    struct identity id, renewed;
    if (identity_from_files(s->cfg.key_path, s->cfg.cert_path, &id, err) != 0)
      return -1;
    struct tp_err lerr = {0};
    if (identity_load(s->cfg.cache_dir, &renewed, &lerr) == 1) {
      if (renewed.not_after >= id.not_after &&
          identity_unusable(&renewed, s->cfg.name, now, why, sizeof(why)) == NULL &&
          identity_issued_by(&renewed, s->ca_pem)) {
        identity_clear(&id);
        id = renewed;
      } else {
        identity_clear(&renewed);
      }
    }
    identity_take(s, &id);
  }
  if (stream_enroll_mode(s) && !s->have_id) {
    struct identity id;
    struct tp_err lerr = {0};
    int rc = identity_load(s->cfg.cache_dir, &id, &lerr);
    const char *bad = rc == 1 ? identity_unusable(&id, s->cfg.name, now, why, sizeof(why)) : NULL;
    if (rc == 1 && bad == NULL && !identity_issued_by(&id, s->ca_pem))
      bad = "the certificate was not issued by the CA of --ca (another control plane?)";
    if (rc == 1 && bad == NULL)
      identity_take(s, &id);
    else if (rc == 1)
      log_warn("agent", "cache %s: %s: not used", s->cfg.cache_dir, bad);
    else if (rc < 0)
      log_warn("agent", "cache: %s: not used", lerr.msg);
    if (rc == 1 && !s->have_id)
      identity_clear(&id);
  }
  if (stream_enroll_mode(s) && s->have_id &&
      identity_unusable(&s->id, s->cfg.name, now, why, sizeof(why)) != NULL) {
    log_warn("agent", "control plane: %s", why);
    identity_clear(&s->id);
    s->have_id = 0;
  }
  if (stream_enroll_mode(s) && s->have_id && s->id_refused && s->cfg.join_token != NULL &&
      !s->join_used) {
    log_info("agent", "control plane: enrolling again with the join token");
    identity_clear(&s->id);
    s->have_id = 0;
  }
  if (!s->have_id) {
    if (s->cfg.join_token == NULL)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "no usable agent certificate in %s and no join token: a new join token "
                        "is needed (--join-token)",
                        s->cfg.cache_dir);
    if (s->join_used)
      return tp_err_set(err, GRPC_STATUS_UNAUTHENTICATED,
                        "the join token was used or refused already: a new join token is needed "
                        "(--join-token)");
    if (certificate_request(s, 1, err) != 0) {
      if (err->status == GRPC_STATUS_UNAUTHENTICATED ||
          err->status == GRPC_STATUS_PERMISSION_DENIED ||
          err->status == GRPC_STATUS_INVALID_ARGUMENT) {
        s->join_used = 1;
        char prefix[128];
        snprintf(prefix, sizeof(prefix),
                 "enrollment refused (%s): ", gclient_status_name(err->status));
        tp_err_prefix(err, prefix);
        size_t len = strlen(err->msg);
        snprintf(err->msg + len, sizeof(err->msg) - len, ": a new join token is needed");
      } else {
        tp_err_prefix(err, "enrollment: ");
      }
      return -1;
    }
    s->join_used = 1; /* one-time: it is spent */
  }
  if (s->renew_forced || (now >= s->id.renew_after && now >= s->renew_retry_at)) {
    s->renew_forced = 0;
    struct tp_err rerr = {0};
    if (certificate_request(s, 0, &rerr) != 0) {
      char until[40];
      format_time(s->id.not_after, until, sizeof(until));
      log_warn("agent",
               "control plane: certificate renewal failed: %s: %s; the current certificate "
               "(valid until %s) stays in use, next try in %d s",
               gclient_status_name(rerr.status), rerr.msg, until, STREAM_RENEW_RETRY_S);
      s->renew_retry_at = now + STREAM_RENEW_RETRY_S;
      if (rerr.status == GRPC_STATUS_UNAUTHENTICATED)
        s->id_refused = 1;
    }
  }
  return 0;
}
