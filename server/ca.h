/* The control-plane CA: it signs the server's own certificate and every
 * client certificate (the admin's, agents', and those issued on request).
 * Keys are ECDSA P-256. Serial numbers are 128 random bits whose hex form
 * is always 32 digits, so that a serial names its record
 * ("clientCertificates/serial-<hex>").
 *
 * Inspection (names, fingerprints, times) is certinfo's (common/); this
 * module only makes keys and certificates. */
#ifndef TLSPLANE_SERVER_CA_H
#define TLSPLANE_SERVER_CA_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "error.h"

#define CA_SERIAL_HEX_LEN 32

struct ca;

/* A new self-signed CA ("CN=tlsplane CA <8 hex digits>, O=tlsplane"), valid
 * for ten years. Caller frees with ca_free. */
int ca_new(struct ca **out, struct tp_err *err);

/* The CA from its certificate and key (PEM). Refused when the key does not
 * match or the certificate is no CA. Caller frees with ca_free. */
int ca_load(const char *cert_pem, const char *key_pem, struct ca **out, struct tp_err *err);
void ca_free(struct ca *ca);

/* The CA certificate, PEM (valid while ca lives). */
const char *ca_cert_pem(const struct ca *ca);
X509 *ca_cert(const struct ca *ca);

/* The CA's private key as PKCS#8 PEM, malloc'd: the caller wipes
 * (OPENSSL_cleanse) and frees it. NULL when out of memory. */
char *ca_key_pem(const struct ca *ca);

/* A new ECDSA P-256 key; NULL when OpenSSL fails. Caller frees with
 * EVP_PKEY_free. */
EVP_PKEY *ca_key_new(void);

struct ca_issue_opts {
  const char *cn; /* subject common name */
  const char *ou; /* subject organizational unit; NULL: none */
  int server;     /* 1: a TLS server certificate (serverAuth), 0: a client one */
  /* subjectAltName entries: IP addresses ("127.0.0.1", "::1") become IP
   * entries, anything else DNS. */
  const char *const *sans;
  size_t n_sans;
  int64_t validity_s; /* from now (the certificate starts 5 minutes back) */
  int cn_only;        /* 1: the subject is CN alone (no O=tlsplane, no OU) */
};

/* Issues a certificate for the public key pub, signed by the CA. Caller
 * frees *out with X509_free. */
int ca_issue(const struct ca *ca, EVP_PKEY *pub, const struct ca_issue_opts *opts, X509 **out,
             struct tp_err *err);

/* The same, self-signed by key (a leaf that is its own issuer). */
int ca_self_sign(EVP_PKEY *key, const struct ca_issue_opts *opts, X509 **out, struct tp_err *err);

/* The keys issuers make; the values are tlsplane.v1.KeyAlgorithm's. */
enum ca_key_alg {
  CA_KEY_RSA_2048 = 1,
  CA_KEY_RSA_3072 = 2,
  CA_KEY_RSA_4096 = 3,
  CA_KEY_ECDSA_P256 = 4,
  CA_KEY_ECDSA_P384 = 5,
  CA_KEY_ED25519 = 6,
};

/* A new key of alg; NULL when OpenSSL fails or alg is none of them.
 * Caller frees with EVP_PKEY_free. */
EVP_PKEY *ca_key_generate(enum ca_key_alg alg);

/* A new CA for key (taken, also on failure) named "O=tlsplane, CN=<cn>",
 * valid for validity_s from now: a root (parent NULL; no path length
 * limit) or an intermediate signed by parent (pathlen 0; refused when
 * parent's own path length is 0). Caller frees with ca_free. */
int ca_make(const struct ca *parent, const char *cn, EVP_PKEY *key, int64_t validity_s,
            struct ca **out, struct tp_err *err);

/* When the CA's certificate expires (seconds since the epoch; 0 when it
 * does not parse). */
time_t ca_not_after(const struct ca *ca);

/* Reads a PKCS#10 request (PEM) and checks its signature (the requester
 * holds the key) and its key (EC P-256 or P-384, RSA of 2048 bits or more,
 * Ed25519). Only the public key is used: *pub (caller frees with
 * EVP_PKEY_free). Errors name field (INVALID_ARGUMENT). */
int ca_csr_read(const char *pem, const char *field, EVP_PKEY **pub, struct tp_err *err);

/* What a certificate signing request asks for: the subject (O and OU
 * first when set, then CN) and the subjectAltName entries (IP addresses
 * become IP entries, anything else DNS). */
struct ca_csr_opts {
  const char *cn;
  const char *o;  /* NULL or "": none */
  const char *ou; /* NULL or "": none */
  const char *const *sans;
  size_t n_sans;
};

/* A PKCS#10 request for key's public key, signed by key, asking for o
 * (the names as an extension request). *pem receives it as PEM, *subject
 * its subject as RFC 2253 text (caller frees both). */
int ca_csr_make(EVP_PKEY *key, const struct ca_csr_opts *o, char **pem, char **subject,
                struct tp_err *err);

/* The 32 lower-case hex digits of x's serial into hex; -1 when the serial
 * is not one this CA makes (another length). */
int ca_serial_hex(X509 *x, char hex[CA_SERIAL_HEX_LEN + 1]);

/* Whether x was signed by the CA and is within its validity at now, and
 * (for a server certificate) carries exactly the SANs given. 1 or 0. */
int ca_cert_current(const struct ca *ca, X509 *x, const char *const *sans, size_t n_sans,
                    time_t now, int64_t min_left_s);

/* x as PEM, malloc'd; NULL when out of memory. */
char *ca_cert_to_pem(X509 *x);

#endif
