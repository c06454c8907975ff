/* The agent's identity towards the control plane: an EC P-256 key it
 * makes itself and the client certificate the control-plane CA signs for
 * it (CN=agent:<id>), obtained by enrolling with a one-time join token
 * and renewed with the current certificate (docs/api.md, "Agent
 * enrollment"); or a key and certificate given as files (--cert/--key).
 *
 * In the cache dir: agent-key.pem (0600) and agent.pem. A renewal writes
 * both new files (agent-key.pem.new, agent.pem.new, each fsynced) before
 * renaming either, key first; identity_load finishes a renewal a crash
 * interrupted, or falls back to the old pair, so that the key and the
 * certificate on disk always match. */
#ifndef TLSPLANE_AGENT_IDENTITY_H
#define TLSPLANE_AGENT_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define IDENTITY_KEY_FILE "agent-key.pem"
#define IDENTITY_CERT_FILE "agent.pem"
#define IDENTITY_CA_FILE "ca.pem"

struct identity {
  char *key_pem;                              /* PKCS#8 PEM (wiped when freed) */
  char *cert_pem;                             /* the certificate (chain), PEM */
  int64_t not_before, not_after, renew_after; /* seconds since the epoch */
  char cn[128];                               /* the subject's CN: "agent:edge-1" */
  char serial[80];                            /* hex */
};

/* Releases what id holds (the key wiped) and zeroes it. */
void identity_clear(struct identity *id);

/* Checks that cert_pem's certificate belongs to key_pem's key and fills
 * id with copies of both and the certificate's facts. renew_after is two
 * thirds into the validity, as the server computes it. */
int identity_make(const char *key_pem, const char *cert_pem, struct identity *id,
                  struct tp_err *err);

/* From the files of --key and --cert. */
int identity_from_files(const char *key_path, const char *cert_path, struct identity *id,
                        struct tp_err *err);

/* Loads the pair from dir (after finishing or undoing an interrupted
 * renewal, see above): 1 with *id, 0 when there is none, -1 with err
 * when the files are there but unusable (they do not match, do not
 * parse). */
int identity_load(const char *dir, struct identity *id, struct tp_err *err);

/* Stores id in dir (both files replaced together, see above) and, when
 * ca_pem is not NULL, a copy of the CA. */
int identity_store(const char *dir, const struct identity *id, const char *ca_pem,
                   struct tp_err *err);

/* A new EC P-256 key and a PKCS#10 request signed by it (subject
 * CN=agent:<name>; the server sets its own): both PEM, malloc'd; the
 * caller wipes the key (cache_wipe_free) and frees both. */
int identity_keygen(const char *name, char **key_pem, char **csr_pem, struct tp_err *err);

/* Whether id's certificate was signed by a certificate of ca_pem (the
 * control plane's CA): 1 or 0. One from another CA (a control plane set up
 * again) fails the TLS handshake: the agent enrolls again instead. */
int identity_issued_by(const struct identity *id, const char *ca_pem);

/* Why id cannot be used now for agent `name` ("expired on ...",
 * "issued to agent:x"), or NULL when it can. */
const char *identity_unusable(const struct identity *id, const char *name, int64_t now, char *buf,
                              size_t len);

#endif
