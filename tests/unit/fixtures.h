/* Shared helpers for the unit tests.
 *
 * TLS material is made on the fly with the OpenSSL C API (keys,
 * certificates, CRLs, OCSP responses, PKCS#12 files); what is slow or
 * impossible to make in-process (DH parameters, a PKCS#12 file with RC2,
 * which needs the legacy provider to create) is embedded. Every helper
 * aborts on an OpenSSL failure: a broken fixture is not a test result. */
#ifndef TLSPLANE_TESTS_FIXTURES_H
#define TLSPLANE_TESTS_FIXTURES_H

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <time.h>

/* Makes a fresh empty directory under $TLSPLANE_TMP (or /tmp) and returns
 * its path (static storage inside the caller's buffer). */
void fixture_tmpdir(char *buf, size_t len);

/* Keys. Caller frees with EVP_PKEY_free. */
EVP_PKEY *fixture_key_rsa(int bits);
EVP_PKEY *fixture_key_ec(const char *curve); /* "P-256", "P-384" */
EVP_PKEY *fixture_key_ed25519(void);

/* What fixture_cert makes. Zero fields take the defaults noted. */
struct fixture_cert_opts {
  const char *cn;    /* subject "O=tlsplane test, CN=cn" */
  const char *san;   /* "DNS:www.example.com,IP:127.0.0.1"; NULL: none */
  time_t not_before; /* 0: an hour ago */
  time_t not_after;  /* 0: in a year */
  int is_ca;         /* basicConstraints CA:TRUE, keyCertSign + cRLSign */
  const char *eku;   /* extendedKeyUsage, e.g. "OCSPSigning"; NULL: none */
  long serial;       /* 0: 1 */
  X509 *issuer;      /* NULL: self-signed */
  EVP_PKEY *issuer_key;
};

/* A certificate for key. Caller frees with X509_free. */
X509 *fixture_cert(EVP_PKEY *key, const struct fixture_cert_opts *o);

/* A UTC time: fixture_time(2020, 1, 1) is 2020-01-01T00:00:00Z. */
time_t fixture_time(int year, int month, int day);

/* PEM encoders; each returns a malloc'd string (free with free()). */
char *fixture_pem_cert(X509 *x);
/* The certificates given, NULL-terminated, concatenated. */
char *fixture_pem_chain(X509 *first, ...);
char *fixture_pem_key(EVP_PKEY *key);             /* unencrypted PKCS#8 */
char *fixture_pem_key_traditional(EVP_PKEY *key); /* PKCS#1 / SEC1 */
/* Encrypted PKCS#8 ("ENCRYPTED PRIVATE KEY", AES-256-CBC). */
char *fixture_pem_key_encrypted(EVP_PKEY *key, const char *passphrase);
/* Legacy OpenSSL encryption: "Proc-Type: 4,ENCRYPTED" + "DEK-Info". */
char *fixture_pem_key_legacy_encrypted(EVP_PKEY *key, const char *passphrase);

/* A PKCS#12 file (OpenSSL 3 defaults: AES-256-CBC, PBKDF2, SHA-256 MAC)
 * holding key, cert and ca (may be NULL). Returns malloc'd DER. */
unsigned char *fixture_pkcs12(EVP_PKEY *key, X509 *cert, X509 *ca, const char *passphrase,
                              size_t *len);
/* The same with iter key-derivation iterations for the key and the
 * certificates, and mac_iter for the MAC (0: OpenSSL's default, 2048). */
unsigned char *fixture_pkcs12_iter(EVP_PKEY *key, X509 *cert, X509 *ca, const char *passphrase,
                                   int iter, int mac_iter, size_t *len);

/* A PKCS#12 file made by `openssl pkcs12 -export -legacy` (certificate
 * bag RC2-40-CBC, key bag 3DES, SHA-1 MAC), passphrase
 * fixture_legacy_pfx_passphrase: a self-signed P-256 certificate for
 * CN=legacy.example.com valid until 2126. */
extern const unsigned char fixture_legacy_pfx[];
extern const size_t fixture_legacy_pfx_len;
extern const char fixture_legacy_pfx_passphrase[];

/* A CRL by ca listing the revoked serials, with a cRLNumber unless
 * crl_number is 0. Caller frees with X509_CRL_free. */
X509_CRL *fixture_crl(X509 *ca, EVP_PKEY *ca_key, const long *revoked, size_t n_revoked,
                      time_t this_update, time_t next_update, long crl_number);
char *fixture_pem_crl(X509_CRL *crl);
unsigned char *fixture_der_crl(X509_CRL *crl, size_t *len);

/* DH parameters: 512-bit and 1024-bit X9.42 (`openssl dhparam -dsaparam`),
 * 1024-bit PKCS#3 (`openssl dhparam 1024`), RFC 7919 ffdhe2048, and
 * ffdhe2048 with one bit of its prime flipped (a composite modulus). */
extern const char fixture_dh512_pem[];
extern const char fixture_dhx1024_pem[];
extern const char fixture_dh1024_pem[];
extern const char fixture_dh2048_pem[];
extern const char fixture_dh2048_composite_pem[];

/* A successful DER OCSPResponse for leaf (issued by issuer), signed by
 * signer with signer_key; status is V_OCSP_CERTSTATUS_*. next_update 0:
 * none. Returns malloc'd DER. */
unsigned char *fixture_ocsp(X509 *leaf, X509 *issuer, X509 *signer, EVP_PKEY *signer_key,
                            int status, time_t this_update, time_t next_update, size_t *len);
/* An OCSPResponse with an unsuccessful status (OCSP_RESPONSE_STATUS_*). */
unsigned char *fixture_ocsp_status(int response_status, size_t *len);

/* Runs a handshake between client and server over a BIO pair (both
 * SSLs own the pair afterwards). Returns 0 when both sides completed, -1
 * when either failed. */
int fixture_handshake(SSL *client, SSL *server);

/* After fixture_handshake: the client sends one byte and the server sends
 * it back, so that each side processes what the other sent after the
 * handshake (TLS 1.3 session tickets). Returns 0 when the byte made the
 * round trip, -1 otherwise. */
int fixture_exchange(SSL *client, SSL *server);

/* After fixture_handshake: a client-initiated renegotiation (TLS 1.2):
 * SSL_renegotiate on the client, then both sides driven (the server
 * through SSL_read) until the client's new handshake completes. Returns 0
 * when it did, -1 when either side failed. */
int fixture_renegotiate(SSL *client, SSL *server);

#endif
