/* The resource API engine: Create/Get/List/Update/Delete for every
 * resource kind, over the store, with names, etags, update masks,
 * pagination, label selectors, validation hooks and the audit trail.
 *
 * Each service file (svc_*.c) describes its resource kind with a struct
 * api_kind and adds the methods that are not plain CRUD. */
#ifndef TLSPLANE_SERVER_API_H
#define TLSPLANE_SERVER_API_H

#include <openssl/evp.h>
#include <protobuf-c/protobuf-c.h>
#include <time.h>

#include "error.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "rpc.h"
#include "store.h"
#include "tlsplane/v1/auth.pb-c.h"

struct acme_dns_hook;
struct api;
struct ca;
struct crl_refresh;
struct events;
struct hub;
struct usage;

/* What a registered method's handler receives as its data. */
struct api_binding {
  struct api *api;
  const struct api_kind *kind;                   /* NULL for services without a resource */
  const ProtobufCMessageDescriptor *list_output; /* List methods: the response type */
};

/* The API's process context, shared by every handler. */
/* An agent certificate's lifetime: the default, and the range
 * --agent-cert-lifetime accepts (an agent renews at two thirds of it). */
#define API_AGENT_CERT_LIFETIME_S (30LL * 24 * 3600)
#define API_AGENT_CERT_LIFETIME_MIN_S (10LL * 60)
#define API_AGENT_CERT_LIFETIME_MAX_S (825LL * 24 * 3600)

struct api {
  struct store *store;
  struct hub *hub; /* the agents' push hub; NULL in tools and tests without one */
  /* WatchEvents' fan-out (events.h): changes and the events the server's
   * parts publish (events_publish); NULL in tools and tests without one. */
  struct events *events;
  struct ca *ca; /* the control-plane CA (client certificates); NULL: none issued */
  /* Last use of credentials, noted by auth.c, written by the job thread
   * (usage.h); NULL: uses are not recorded (tools, tests). */
  struct usage *usage;
  /* DH parameter generation (dhgen.h); NULL: GenerateDhParameters is
   * UNAVAILABLE (tools, tests). */
  struct dhgen *dhgen;
  /* Lifetime of the certificates EnrollAgent and RenewAgentCertificate
   * issue (seconds); 0: API_AGENT_CERT_LIFETIME_S. */
  int64_t agent_cert_lifetime_s;
  /* What the CRL refresh job found (crl_refresh.h); NULL: no refresh. */
  struct crl_refresh *crl_refresh;
  /* The command that answers dns-01 (acme_dns.h, --acme-dns-hook); NULL:
   * none, and ACME orders use tls-alpn-01 only. */
  const struct acme_dns_hook *acme_dns_hook;
  struct api_binding bindings[64]; /* one per service, plus one per List method */
  size_t n_bindings;
};

/* References a resource makes to others, collected by a kind's refs hook
 * and checked by the store. Owns its strings. */
struct api_refs {
  struct store_ref *items;
  size_t n, cap;
};

/* Adds a reference; field is a printf format for the request field
 * ("tls_context.certificates[%zu]"). name must be "collection/id" of kind. */
int api_refs_add(struct api_refs *refs, const char *kind, const char *name, const char *field_fmt,
                 ...) __attribute__((format(printf, 4, 5)));
void api_refs_clear(struct api_refs *refs);

/* What a write changes, for its audit row (store_write.changes). Owns
 * its strings. */
struct api_changes {
  struct store_audit_change *items;
  size_t n, cap;
};

/* Adds field's change from before to after (NULL: "") unless they are
 * equal. Never give it a secret. 0, or -1 when out of memory. */
int api_changes_add(struct api_changes *ch, const char *field, const char *before,
                    const char *after);
/* The same for Timestamps (NULL: unset), as RFC 3339 UTC text. */
int api_changes_time(struct api_changes *ch, const char *field,
                     const Google__Protobuf__Timestamp *before,
                     const Google__Protobuf__Timestamp *after);
void api_changes_clear(struct api_changes *ch);

/* One mutation in progress: what the prepare hook may read and set. */
struct api_op {
  struct api *api;
  const struct api_kind *kind;
  /* What validation reads through. For the generic Create and Update, a
   * tracked read transaction (the write comes after, in a transaction of
   * its own that first checks these reads still hold): hooks must not
   * write in it. For api_write, the caller's write transaction. */
  struct store_txn *txn;
  const struct rpc_call_info *call;
  const ProtobufCMessage *old;     /* previous version (update) or NULL (create) */
  const struct store_row *old_row; /* its row, secret included, or NULL */
  time_t now;
  /* In: what an api_write caller hands the kind's prepare hook besides
   * the resource (certificates: csr.h's struct csr_hook); NULL otherwise. */
  const void *hook_data;
  /* Out: the secret to store (set_secret = 1), else the old one is kept. */
  int set_secret;
  uint8_t *secret; /* malloc'd; freed by the engine */
  size_t secret_len;
};

struct api_kind {
  const char *kind;           /* "Certificate" */
  const char *collection;     /* "certificates" */
  const char *resource_field; /* "certificate": the request field holding it */
  const ProtobufCMessageDescriptor *desc;
  /* Fields an update may replace (proto names), NULL-terminated. */
  const char *const *mutable_fields;
  /* Validates res, derives its output fields and strips its secrets into
   * op->secret. Messages name fields without the resource prefix. May be
   * NULL. */
  int (*prepare)(struct api_op *op, ProtobufCMessage *res, struct tp_err *err);
  /* Collects the references res makes. May be NULL. */
  int (*refs)(const ProtobufCMessage *res, struct api_refs *refs);
  /* Adds what changed from old (NULL on create) to res, validated and
   * with its output fields derived, to the audit row (api_changes_add):
   * the fields operators follow, never a secret. The references that
   * changed are added by the engine. May be NULL. */
  int (*audit_changes)(const ProtobufCMessage *old, const ProtobufCMessage *res,
                       struct api_changes *ch);
  /* Time indexed for "expiring before" filters, µs since the epoch; NULL: none. */
  int64_t (*expire_time_us)(const ProtobufCMessage *res);
  /* When the job thread next has work on res (store_write.due_time_us),
   * µs since the epoch, 0: none; NULL: never. */
  int64_t (*due_time_us)(const ProtobufCMessage *res);
  /* Whether res may be changed or deleted (built-ins may not). May be NULL. */
  int (*check_mutable)(const ProtobufCMessage *res, struct tp_err *err);
  /* Validates the resources that reference res with res (the new version,
   * not yet written) in place of the stored one, reading through op->txn.
   * May be NULL. */
  int (*check_referrers)(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err);
  /* Runs inside the write transaction (op->txn holds the store's write
   * lock), just before res is written by a Create or Update: checks of
   * res against the other resources of its kind that only the lock holds
   * still, so that two concurrent writes cannot both pass (two listeners
   * on one address). Never outside it: a read made before the lock could
   * miss a row committed since. May be NULL. */
  int (*check_in_write)(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err);
  /* Adds live state to a resource read from the store (Get and List). May
   * be NULL. */
  void (*decorate)(struct api *api, ProtobufCMessage *res);
  /* Runs inside the delete's transaction before the row goes (e.g.
   * revoking what depends on it); failing fails the delete. May be NULL. */
  int (*deleting)(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err);
  /* Runs after a delete committed. May be NULL. */
  void (*deleted)(struct api *api, const char *name);
  int read_only; /* no Create/Update through the API */
  /* Input fields that carry the secret (proto names, NULL-terminated; may
   * be NULL): an update that brings a new value for one does not read the
   * stored secret, so that a secret that no longer unseals can be
   * replaced. */
  const char *const *secret_fields;
};

/* A custom method of a service. */
struct api_method {
  const char *name; /* "RotateTicketKeys" */
  rpc_unary_fn fn;
};

/* Registers every method of svc: Create*, Get*, List*, Update*, Delete* go
 * to the generic engine for kind; custom[] (NULL-terminated by name) takes
 * precedence. Methods with no handler answer UNIMPLEMENTED. */
int api_service_register(struct api *api, struct rpc_server *srv,
                         const ProtobufCServiceDescriptor *svc, const struct api_kind *kind,
                         const struct api_method *custom);

/* Registers every tlsplane.v1 service. */
int api_register_all(struct api *api, struct rpc_server *srv);

/* Fills names[0..max) with the full names of the services
 * api_register_all registers ("tlsplane.v1.CertificateService", ...);
 * returns how many there are. */
size_t api_service_names(const char **names, size_t max);

/* The descriptor of the tlsplane.v1 service called name
 * ("tlsplane.v1.CertificateService"), or NULL. */
const ProtobufCServiceDescriptor *api_service_find(const char *name);

/* A store audit hook (store_set_audit_hook): logs every committed write
 * at info, one line per audit row, with its revision, action, resource,
 * actor and method; never a secret (an audit row holds none). data is
 * unused. */
void api_audit_log(const struct store_audit *rows, size_t n, size_t more, void *data);

/* Creates the built-in resources that are missing (cipher policies). */
int api_seed_builtins(struct api *api, struct tp_err *err);

/* Helpers for custom methods. */

/* Checks that name is "<collection>/<id>" with a valid id. field names the
 * request field for the message. */
int api_name_check(const struct api_kind *kind, const char *name, const char *field,
                   struct tp_err *err);

/* Checks the map<string, string> field `map` of msg by the rules of
 * resource labels (keys, lengths, count); field names it in the message
 * ("token.agent_labels"). */
int api_labels_check(const ProtobufCMessage *msg, const char *map, const char *field,
                     struct tp_err *err);

/* Opaque page tokens: the base64 of text (caller frees; NULL when out
 * of memory), and back into text[0..len) (NUL-terminated): 0, or -1 when
 * token is not one (or holds a NUL, or does not fit). */
char *api_token_encode(const char *text);
int api_token_decode(const char *token, char *text, size_t len);

/* Loads and decodes a stored resource (row->data) into a message with its
 * metadata set (name, etag, revision, times). Caller frees. */
ProtobufCMessage *api_decode_row(const struct api_kind *kind, const struct store_row *row,
                                 struct tp_err *err);

/* Clears res's output fields (those neither mutable nor name or labels),
 * as the generic Update does before it applies a request to the stored
 * version: what a job's write of a stored resource starts from. */
void api_clear_output_fields(const struct api_kind *kind, ProtobufCMessage *res);

/* Reads one resource inside txn. with_secret also fills row->secret.
 * *msg and *row are the caller's (row may be NULL). */
int api_read(struct store_txn *txn, const struct api_kind *kind, const char *name, int with_secret,
             ProtobufCMessage **msg, struct store_row *row, struct tp_err *err);

/* Writes res (an update of an existing resource when old_row != NULL, else
 * a create) inside op->txn, a write transaction: runs prepare, refs,
 * referrer checks, and the store write with op->secret (wiped and freed
 * here). On success res carries its new metadata. The API's own Create
 * and Update validate outside the write transaction instead (api.c,
 * write_checked); this is for writes that are part of a larger
 * transaction and do little OpenSSL work (credentials, ticket keys). */
int api_write(struct api_op *op, ProtobufCMessage *res, const char *expect_etag, const char *action,
              struct tp_err *err);

/* Creates res (the caller's; its name set) as the generic Create does
 * (validated outside the write lock, one revision, audited with action),
 * but keeps the output fields the caller set: for resources the server
 * makes on a caller's behalf (IssueCertificate). *out receives the stored
 * resource (caller frees). */
int api_create(struct api *api, const struct api_kind *kind, const struct rpc_call_info *call,
               const ProtobufCMessage *res, const char *action, ProtobufCMessage **out,
               struct tp_err *err);

/* Puts a fresh random key in front of the ring `name` (RotateTicketKeys).
 * etag may be NULL or "". *resp (may be NULL) receives the ring. */
int api_ticket_keys_rotate(struct api *api, const struct rpc_call_info *call, const char *name,
                           const char *etag, ProtobufCMessage **resp, struct tp_err *err);

/* Sets the message's last_used_time: the later of the store's record of
 * the credential's last use and a use noted since (api->usage). A
 * decorate hook's work for tokens and client certificates. */
void api_last_used_decorate(struct api *api, const struct api_kind *kind, ProtobufCMessage *res);

/* Notes that the credential (kind, name) authenticated a call at time_us:
 * in memory (api->usage), never waiting for the store. */
void api_usage_note(struct api *api, const struct api_kind *kind, const char *name,
                    int64_t time_us);

/* Creates tokens/<id> inside txn from token (the caller's; role, expiry
 * and the rest checked here) and its secret: *secret (malloc'd; the caller
 * wipes and frees it) is the token to send, the store keeps its hash.
 * replace: an existing token of that id is replaced (first start after an
 * interrupted one). *out (may be NULL) receives the stored token. */
int api_token_create(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                     const char *id, const Tlsplane__V1__Token *token, int replace, char **secret,
                     Tlsplane__V1__Token **out, struct tp_err *err);

/* Issues a client certificate for pub signed by api->ca, and records it
 * inside txn ("clientCertificates/serial-<hex>", action "issue"). role is
 * an auth_role; for AUTH_ROLE_AGENT principal is the agent id (common name
 * "agent:<id>", label agent=<id>). *out (may be NULL; caller frees)
 * receives the record, certificate_pem included. */
int api_client_cert_issue(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                          EVP_PKEY *pub, int role, const char *principal, int64_t validity_s,
                          Tlsplane__V1__ClientCertificate **out, struct tp_err *err);

/* Revokes the client certificate `name` inside txn (nothing when it is
 * already revoked). etag may be NULL or "". *out (may be NULL) receives
 * the record. */
int api_client_cert_revoke(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                           const char *name, const char *etag,
                           Tlsplane__V1__ClientCertificate **out, struct tp_err *err);

/* The kinds, for cross-kind lookups. */
extern const struct api_kind api_kind_certificate;
extern const struct api_kind api_kind_trust_bundle;
extern const struct api_kind api_kind_revocation_list;
extern const struct api_kind api_kind_cipher_policy;
extern const struct api_kind api_kind_tls_context;
extern const struct api_kind api_kind_listener;
extern const struct api_kind api_kind_ticket_key_ring;
extern const struct api_kind api_kind_agent;
extern const struct api_kind api_kind_token;
extern const struct api_kind api_kind_client_certificate;
extern const struct api_kind api_kind_issuer;

#endif
