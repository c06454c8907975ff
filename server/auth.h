/* Authentication and authorization of every API call.
 *
 * A call presents a bearer token ("authorization: Bearer tlsp_...") or a
 * client certificate issued by the control-plane CA (verified by the TLS
 * handshake; checked here against its record, which may be revoked). The
 * credential gives a role; one table says which roles may call each
 * method, deny by default. grpc.health.v1 and server reflection are open.
 *
 *   no credential, or an unknown, expired, revoked or used one: UNAUTHENTICATED
 *   a role the method does not allow:                            PERMISSION_DENIED
 *
 * Tokens are "tlsp_<token id>_<43 base64url characters>" (256 random
 * bits). The server stores only their SHA-256 (sealed, as every secret),
 * looks the token up by its id and compares hashes in constant time.
 * Secrets never reach the log. */
#ifndef TLSPLANE_SERVER_AUTH_H
#define TLSPLANE_SERVER_AUTH_H

#include <stdint.h>

#include "rpc.h"

/* The roles; the values are tlsplane.v1.Role's. */
enum auth_role {
  AUTH_ROLE_NONE = 0,
  AUTH_ROLE_ADMIN = 1,
  AUTH_ROLE_OPERATOR = 2,
  AUTH_ROLE_VIEWER = 3,
  AUTH_ROLE_AGENT = 4,
  AUTH_ROLE_JOIN = 5,
};

#define AUTH_TOKEN_HASH_LEN 32
#define AUTH_TOKEN_PREFIX "tlsp_"

/* "admin", "operator", "viewer", "agent", "join"; "none" otherwise. */
const char *auth_role_name(int role);

/* The rpc_auth_fn of the API server; data is the struct api. Fills id:
 * the role, the principal (token id; certificate principal; agent id for
 * agents) and the actor the audit trail records ("token:<id>", or the
 * certificate's subject). */
int auth_call(const struct rpc_credentials *cred, struct rpc_identity *id, struct tp_err *err,
              void *data);

/* Whether role may call method (full path): 1 or 0. Open methods allow
 * every role, none included. */
int auth_method_allows(const char *method, int role);

/* A fresh token for tokens/<id>: *secret is malloc'd (the caller wipes it
 * with OPENSSL_cleanse and frees it) and hash receives its SHA-256.
 * Returns 0, or -1 when out of memory or randomness. */
int auth_token_new(const char *id, char **secret, uint8_t hash[AUTH_TOKEN_HASH_LEN]);

#endif
