/* The RFC 8555 (ACME) protocol core: the directory, nonces (newNonce,
 * each response's Replay-Nonce, one retry on badNonce), requests signed
 * as JWS with the account key (ES256; `jwk` for newAccount, `kid`
 * after), POST-as-GET, problem documents turned into an error message,
 * Retry-After read as a back-off, and account registration with an
 * optional External Account Binding (HS256). HTTP through http_fetch
 * (https only, bounded in size and time), JSON with jansson, crypto and
 * base64 with OpenSSL. No call retries more than once; the caller
 * schedules what comes next. */
#ifndef TLSPLANE_SERVER_ACME_H
#define TLSPLANE_SERVER_ACME_H

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "http_fetch.h"

/* Bounds of one exchange with an ACME server. */
#define ACME_MAX_BYTES (256 * 1024)
#define ACME_TIMEOUT_MS 30000L
#define ACME_URL_MAX 2048
/* A Retry-After longer than this is cut to it. */
#define ACME_RETRY_AFTER_MAX_S (24 * 3600)

/* The directory's resources (RFC 8555 7.1.1), malloc'd; the optional
 * ones may be NULL. */
struct acme_directory {
  char *new_nonce;
  char *new_account;
  char *new_order;
  char *terms_of_service;
  char *renewal_info; /* RFC 9773 renewalInfo; NULL when the CA offers none */
  int eab_required;   /* meta.externalAccountRequired */
};

/* Reads a directory object: newNonce, newAccount and newOrder are
 * required URLs. Fails (-1, UNAVAILABLE, saying what is wrong) on
 * anything else; d is then cleared. */
int acme_directory_parse(const char *body, size_t len, struct acme_directory *d,
                         struct tp_err *err);
void acme_directory_clear(struct acme_directory *d);

/* A problem document (RFC 7807, RFC 8555 6.7). */
struct acme_problem {
  char *type;   /* e.g. "urn:ietf:params:acme:error:badNonce"; never NULL once parsed */
  char *detail; /* may be NULL */
  long status;  /* 0 when absent */
};

/* 0 and p filled when body is a JSON object with a string "type"; -1
 * otherwise (p then zeroed). */
int acme_problem_parse(const char *body, size_t len, struct acme_problem *p);
void acme_problem_clear(struct acme_problem *p);

/* An account object's status ("valid", "deactivated", "revoked"),
 * malloc'd; NULL when body is none or has no string status. */
char *acme_account_status_parse(const char *body, size_t len);

/* base64url without padding (RFC 7515 2), malloc'd; NULL on OOM. */
char *acme_b64url(const void *p, size_t n);
/* Decodes base64url (padding optional); 0 and *out malloc'd, or -1. */
int acme_b64url_decode(const char *s, unsigned char **out, size_t *n);

/* The public JWK of key (EC P-256 or RSA), members as RFC 7638 orders
 * them; NULL for another key or on OOM. */
json_t *acme_jwk(EVP_PKEY *key);
/* The RFC 7638 thumbprint (SHA-256, base64url) of key's JWK. */
char *acme_jwk_thumbprint(EVP_PKEY *key);

/* The flattened JWS (RFC 7515 7.2.2) of payload (NULL: the empty
 * payload of a POST-as-GET) signed with key (ES256, P-256): the protected
 * header names kid, or carries key's jwk when kid is NULL, with nonce and
 * url. Serialized, malloc'd; NULL on failure. */
char *acme_jws(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload);

/* The externalAccountBinding member (RFC 8555 7.3.4): account key's JWK
 * signed with HS256 under hmac_key, for eab_kid and url (newAccount). */
json_t *acme_eab(EVP_PKEY *account_key, const char *eab_kid, const unsigned char *hmac_key,
                 size_t hmac_len, const char *url);

/* A conversation with one ACME server. */
struct acme_client {
  const char *directory_url; /* https:// */
  const char *ca_pem;        /* trusted for it instead of the system's CAs; may be NULL */
  const atomic_int *stop;    /* may be NULL */
  struct acme_directory dir; /* after acme_directory_fetch */
  char *nonce;               /* the next request's, from the last response */
  /* After a failure: the back-off the server asked for (Retry-After, in
   * seconds), 0 when it named none. */
  int64_t retry_after_s;
};

/* Zeroes c and sets what it talks to (strings borrowed). */
void acme_client_init(struct acme_client *c, const char *directory_url, const char *ca_pem,
                      const atomic_int *stop);
void acme_client_clear(struct acme_client *c);

/* GETs and reads the directory. */
int acme_directory_fetch(struct acme_client *c, struct tp_err *err);

/* POSTs payload (NULL: POST-as-GET) to url as a JWS signed with key
 * (kid NULL: with its jwk), with a fresh nonce (newNonce when none is
 * held); retries once with the next nonce on badNonce. 0 and *out the
 * 2xx response; -1 otherwise, err saying why: the problem's type and
 * detail (FAILED_PRECONDITION; UNAVAILABLE for rateLimited and 5xx,
 * c->retry_after_s set from Retry-After), or the transport's failure
 * (UNAVAILABLE). */
int acme_post(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
              const char *payload, struct http_fetch_result *out, struct tp_err *err);

/* Registers (or finds) the account of key (newAccount, RFC 8555 7.3):
 * contact are URIs (may be none), the terms agreed, an EAB when eab_kid
 * is set (hmac_key its decoded key). Fetches the directory first when
 * c has none. 0 with *url (the account's, from Location) and *status
 * malloc'd. */
int acme_account_register(struct acme_client *c, EVP_PKEY *key, const char *const *contact,
                          size_t n_contact, const char *eab_kid, const unsigned char *hmac_key,
                          size_t hmac_len, char **url, char **status, struct tp_err *err);

/* ---- Orders (RFC 8555 7.4) ---- */

/* Identifiers of one order at most (the issuance's names). */
#define ACME_ORDER_NAMES_MAX 100
/* A challenge token's length at most (RFC 8555 8.1: base64url, at least
 * 128 bits of entropy; servers send 43 characters). */
#define ACME_TOKEN_MAX 256

/* An order object, malloc'd members. */
struct acme_order {
  char *status;          /* never NULL once parsed */
  char **authorizations; /* https URLs, n_authorizations of them */
  size_t n_authorizations;
  char *finalize;    /* https URL */
  char *certificate; /* https URL once the order is valid; else NULL */
  char *error;       /* the order's problem as "type: detail"; NULL when none */
};

/* Reads an order object: a string status, an authorizations array of
 * https URLs (at most ACME_ORDER_NAMES_MAX), a finalize URL. -1
 * (UNAVAILABLE, saying what is wrong) otherwise; o is then cleared. */
int acme_order_parse(const char *body, size_t len, struct acme_order *o, struct tp_err *err);
void acme_order_clear(struct acme_order *o);

/* An authorization object with its tls-alpn-01 and dns-01 challenges,
 * malloc'd. */
struct acme_authz {
  char *status;     /* never NULL once parsed */
  char *identifier; /* the dns identifier's value, lower case */
  int wildcard;     /* "wildcard": true */
  /* The tls-alpn-01 challenge; all NULL when the authorization offers
   * none. token is base64url, at most ACME_TOKEN_MAX characters. */
  char *challenge_url;
  char *challenge_status;
  char *token;
  char *challenge_error; /* its problem as "type: detail"; NULL when none */
  /* The dns-01 challenge (RFC 8555 8.4), the same way. */
  char *dns_challenge_url;
  char *dns_challenge_status;
  char *dns_token;
  char *dns_challenge_error;
};

/* Reads an authorization object: a string status and a "dns" identifier
 * (other types refused); the first tls-alpn-01 and dns-01 challenges,
 * each refused when its url, status or token is bad. -1 (UNAVAILABLE,
 * saying what is wrong) otherwise; a is then cleared. */
int acme_authz_parse(const char *body, size_t len, struct acme_authz *a, struct tp_err *err);
void acme_authz_clear(struct acme_authz *a);

/* The tls-alpn-01 challenge certificate (RFC 8737 3) for DNS name `name`
 * and the challenge's key authorization token "." thumbprint: a new P-256
 * key, self-signed, subjectAltName dNSName name (lower-cased), and the
 * critical id-pe-acmeIdentifier extension holding the SHA-256 of the key
 * authorization as a DER OCTET STRING. *cert_pem and *key_pem (PKCS#8)
 * malloc'd; the caller wipes and frees the key. */
int acme_challenge_cert(const char *name, const char *token, const char *thumbprint,
                        char **cert_pem, char **key_pem, struct tp_err *err);

/* The TXT record value of a dns-01 challenge (RFC 8555 8.4):
 * base64url(SHA-256(keyAuthorization)), keyAuthorization being token
 * "." thumbprint. malloc'd; NULL when token is too long or on OOM. */
char *acme_dns01_txt(const char *token, const char *thumbprint);

/* newOrder for the DNS names (at most ACME_ORDER_NAMES_MAX), signed with
 * key for account kid. 0 with *url (the order's, from Location; malloc'd)
 * and *o filled. Fetches the directory first when c has none. replaces
 * (may be NULL): the ARI certID of the certificate the order renews,
 * sent as "replaces" (RFC 9773 5) when the directory offers
 * renewalInfo. */
int acme_order_new(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *const *names,
                   size_t n, const char *replaces, char **url, struct acme_order *o,
                   struct tp_err *err);

/* POST-as-GET of an order (acme_order_parse) or an authorization
 * (acme_authz_parse) at url. */
int acme_order_get(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                   struct acme_order *o, struct tp_err *err);
int acme_authz_get(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                   struct acme_authz *a, struct tp_err *err);

/* Tells the server the challenge at url is ready (POST {}). */
int acme_challenge_respond(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                           struct tp_err *err);

/* Finalizes the order (its finalize URL) with the CSR given as PEM;
 * *o receives the order as the answer has it. */
int acme_order_finalize(struct acme_client *c, EVP_PKEY *key, const char *kid,
                        const char *finalize_url, const char *csr_pem, struct acme_order *o,
                        struct tp_err *err);

/* Downloads the certificate chain at url (Accept:
 * application/pem-certificate-chain): *chain_pem malloc'd, the PEM as
 * the server sent it. */
int acme_certificate_download(struct acme_client *c, EVP_PKEY *key, const char *kid,
                              const char *url, char **chain_pem, struct tp_err *err);

/* ---- Renewal Information (RFC 9773) ---- */

/* How long until the renewal information is asked for again: the CA's
 * Retry-After within these bounds, the default when it names none. */
#define ACME_ARI_RETRY_MIN_S 3600
#define ACME_ARI_RETRY_MAX_S (24 * 3600)
#define ACME_ARI_RETRY_DEFAULT_S (6 * 3600)
/* A certID's length at most (a 20-byte key identifier and a 20-byte
 * serial take 55 characters). */
#define ACME_CERT_ID_MAX 256

/* The ARI certID of leaf (RFC 9773 4.1): base64url of its Authority Key
 * Identifier's keyIdentifier, ".", base64url of its serial number's DER
 * content octets. malloc'd; NULL when leaf has no keyIdentifier or on
 * OOM. */
char *acme_cert_id(X509 *leaf);
/* The same of the first certificate of a PEM chain; NULL when it has none. */
char *acme_cert_id_pem(const char *chain_pem);

/* A renewalInfo object (RFC 9773 4.2), malloc'd members. */
struct acme_renewal_info {
  int64_t start_us;      /* suggestedWindow.start, µs since the epoch */
  int64_t end_us;        /* suggestedWindow.end, after start */
  char *explanation_url; /* NULL when none */
};

/* Reads a renewalInfo object: suggestedWindow with RFC 3339 start and end,
 * end after start, and an optional explanationURL (an https URL at most
 * ACME_URL_MAX long; another is refused). -1 (UNAVAILABLE, saying what
 * is wrong) otherwise; ri is then cleared. */
int acme_renewal_info_parse(const char *body, size_t len, struct acme_renewal_info *ri,
                            struct tp_err *err);
void acme_renewal_info_clear(struct acme_renewal_info *ri);

/* GETs the directory's renewalInfo for cert_id (unauthenticated, through
 * the same bounded client) and reads it. Fetches the directory first when
 * c has none; -1 with NOT_FOUND when the directory offers no
 * renewalInfo. *retry_after_s: the answer's Retry-After in seconds (at
 * most ACME_RETRY_AFTER_MAX_S), -1 when it named none or no answer
 * came; set on a failure too. */
int acme_renewal_info_fetch(struct acme_client *c, const char *cert_id,
                            struct acme_renewal_info *ri, int64_t *retry_after_s,
                            struct tp_err *err);

#endif
