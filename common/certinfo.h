/* X.509, PEM, PKCS#12 and OCSP inspection: the parsing and fact-finding
 * tlsconf needs, on top of OpenSSL (no hand-written ASN.1).
 *
 * Nothing here ever prompts for a passphrase: every PEM read goes through
 * a callback that fails when no passphrase was given.
 *
 * Functions that can fail take `field`, the proto field name their input
 * came from, and write "field: reason" into err (INVALID_ARGUMENT, or
 * RESOURCE_EXHAUSTED when out of memory). Strings returned as char * are
 * allocated with malloc; the caller frees them with free(). */
#ifndef TLSPLANE_COMMON_CERTINFO_H
#define TLSPLANE_COMMON_CERTINFO_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <time.h>

#include "error.h"

/* Reads every PEM block of pem[0..len) into *out (leaf or first certificate
 * first, in input order). Every block must be a CERTIFICATE ("block 2 is a
 * PRIVATE KEY, not a CERTIFICATE"); at least one is required. Caller frees
 * *out with OSSL_STACK_OF_X509_free (certinfo_certs_free). */
int certinfo_certs_read(const char *pem, size_t len, const char *field, STACK_OF(X509) **out,
                        struct tp_err *err);

/* Frees a stack from certinfo_certs_read / certinfo_pkcs12_read, and its
 * certificates. NULL is fine. */
void certinfo_certs_free(STACK_OF(X509) *certs);

/* Reads exactly one X509 CRL from PEM ("<field>: PEM block 2 is a second
 * CRL ..."). Caller frees *out with X509_CRL_free. */
int certinfo_crl_read(const char *pem, const char *field, X509_CRL **out, struct tp_err *err);

/* Encodes certs as concatenated PEM. Returns a malloc'd NUL-terminated
 * string, or NULL when out of memory. */
char *certinfo_certs_pem(STACK_OF(X509) *certs);

/* Reads the first private key in pem (PKCS#1, SEC1, PKCS#8, encrypted
 * PKCS#8, or legacy "Proc-Type: 4,ENCRYPTED" PEM). passphrase may be NULL
 * or empty (no passphrase). Errors: "passphrase: the private key is
 * encrypted; a passphrase is required", "passphrase: wrong passphrase for
 * <field>", "<field>: no private key found". Caller frees *out with
 * EVP_PKEY_free. */
int certinfo_key_read(const char *pem, size_t len, const char *passphrase, const char *field,
                      EVP_PKEY **out, struct tp_err *err);

/* The key as unencrypted PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"),
 * malloc'd; NULL when out of memory. */
char *certinfo_key_pem(EVP_PKEY *key);

/* Reads a PKCS#12 / PFX file: *key, and *chain with the key's certificate
 * first followed by the issuing certificates of the file in issuing order
 * (certificates of the file that are not on the leaf's path are dropped).
 * When the file needs an algorithm of OpenSSL 3's "legacy" provider (RC2,
 * RC4, DES: files made with `openssl pkcs12 -legacy` or by old tools), the
 * legacy provider is loaded, together with the default provider, once per
 * process and kept loaded. The file sets its own key-derivation work: one
 * asking for more than 1,000,000 iterations in all (MAC, encrypted parts,
 * shrouded keys) is refused before any is spent. Errors name "pfx" or
 * "passphrase" ("passphrase: wrong passphrase for the PKCS#12 file"). Caller frees *key with
 * EVP_PKEY_free and *chain with certinfo_certs_free. */
int certinfo_pkcs12_read(const unsigned char *der, size_t len, const char *passphrase,
                         EVP_PKEY **key, STACK_OF(X509) **chain, struct tp_err *err);

/* "RSA", "EC", "ED25519", "ED448", or NULL for any other key type. */
const char *certinfo_key_algorithm(const EVP_PKEY *key);

/* The distinguished name in RFC 2253 form ("CN=www.example.com,O=Example"),
 * malloc'd; NULL when out of memory. */
char *certinfo_name(const X509_NAME *name);

/* Converts an ASN.1 time to seconds since the epoch. Returns 0, or -1 when
 * t does not parse. */
int certinfo_time(const ASN1_TIME *t, time_t *out);

/* Formats t as RFC 3339 UTC ("2020-01-01T00:00:00Z") into buf. */
void certinfo_time_format(time_t t, char buf[32]);

/* Upper-case colon-separated SHA-256 over x's DER ("AB:CD:..."), malloc'd. */
char *certinfo_fingerprint(X509 *x);

/* Upper-case hex of an ASN.1 INTEGER ("01A2"), malloc'd. */
char *certinfo_integer_hex(const ASN1_INTEGER *i);

/* The subjectAltName DNS names and IP addresses of x (IPv4 dotted, IPv6
 * per inet_ntop). *dns and *ips are malloc'd arrays of malloc'd strings
 * (NULL when empty). Returns 0, or -1 when out of memory (nothing is
 * returned then). */
int certinfo_sans(X509 *x, char ***dns, size_t *n_dns, char ***ips, size_t *n_ips);

/* Checks x's validity period at now: "<field>: <which> expired at
 * 2020-01-01T00:00:00Z (set allow_invalid_time to accept it)" or "... is
 * not valid before ...". which names the certificate ("certificate 2"). */
int certinfo_cert_check_time(X509 *x, time_t now, const char *field, const char *which,
                             struct tp_err *err);

/* Checks the validity period of every certificate of chain at now.
 * Errors: "<field>: certificate expired at 2020-01-01T00:00:00Z (set
 * allow_invalid_time to accept it)" for the leaf, "certificate 2 expired
 * at ..." for the others, "... is not valid before ..." when not yet
 * valid. */
int certinfo_chain_check_time(STACK_OF(X509) *chain, time_t now, const char *field,
                              struct tp_err *err);

/* Checks that chain is in issuing order: each certificate is issued by the
 * next one, names and signature ("<field>: certificate 2 does not issue
 * certificate 1"). */
int certinfo_chain_check_order(STACK_OF(X509) *chain, const char *field, struct tp_err *err);

/* What an OCSP response says about a certificate. */
struct certinfo_ocsp {
  int status;         /* V_OCSP_CERTSTATUS_GOOD / _REVOKED / _UNKNOWN */
  time_t this_update; /* seconds since the epoch */
  int has_next_update;
  time_t next_update; /* valid when has_next_update */
};

/* "good", "revoked", "unknown". */
const char *certinfo_ocsp_status_name(int status);

/* Parses a DER OCSPResponse and checks it for leaf, issued by issuer: the
 * response is successful, one of its single responses names leaf (by any
 * hash algorithm), its signature verifies with issuer or with a responder
 * certificate issued by issuer, this_update is not in the future and
 * next_update (when present) not in the past, both at now. When
 * check_signer_time is 0 the validity period of the signing certificates
 * is not checked (allow_invalid_time). Errors name "ocsp_response". */
int certinfo_ocsp_check(const unsigned char *der, size_t len, X509 *leaf, X509 *issuer, time_t now,
                        int check_signer_time, struct certinfo_ocsp *out, struct tp_err *err);

/* Parses a DER OCSPResponse already checked by certinfo_ocsp_check and
 * finds leaf's next_update and, when status is not NULL, its status
 * (V_OCSP_CERTSTATUS_*) (for stapling: no signature check). Returns 0
 * with *has_next_update set, or -1 when it does not parse or names no
 * single response for leaf. */
int certinfo_ocsp_next_update(const unsigned char *der, size_t len, X509 *leaf, X509 *issuer,
                              int *has_next_update, time_t *next_update, int *status);

/* The longest OCSP responder URL certinfo_ocsp_url returns. */
#define CERTINFO_OCSP_URL_MAX 2048

/* The first OCSP responder of leaf's Authority Information Access that is
 * an http:// URL (at most CERTINFO_OCSP_URL_MAX bytes), or "" when it
 * names none; other schemes are skipped. malloc'd; NULL when out of
 * memory. */
char *certinfo_ocsp_url(X509 *leaf);

#endif
