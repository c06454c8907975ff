/* The JSON an ACME server answers, as server/acme.c reads it. The first
 * byte picks what the rest is:
 *
 *   0  a directory object (acme_directory_parse)
 *   1  a problem document (acme_problem_parse)
 *   2  an account object (acme_account_status_parse)
 *   3  base64url text (acme_b64url_decode, then encoded back; also 7)
 *   4  an order object (acme_order_parse)
 *   5  an authorization object (acme_authz_parse)
 *   6  a renewalInfo object (acme_renewal_info_parse, RFC 9773)
 *
 * What must hold: no crash, leak or undefined behaviour; a directory
 * read has its three https URLs, a refused one says why; a problem read
 * has a type; base64url decoded encodes back to the same text (without
 * padding); an order read has a status, a finalize URL and https
 * authorizations; an authorization read has a status and a lower-case
 * identifier, and a tls-alpn-01 and a dns-01 challenge, each with a URL
 * and a base64url token, or none; a renewalInfo read has a window whose
 * end is after its start and an https explanationURL or none; a
 * directory's renewalInfo is an https URL or none. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "acme.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const char *body = (const char *)data + 1;
  size_t len = size - 1;
  switch (data[0] & 7) {
  case 0: {
    struct acme_directory d;
    struct tp_err err = {0};
    if (acme_directory_parse(body, len, &d, &err) == 0) {
      FUZZ_ASSERT(strncmp(d.new_nonce, "https://", 8) == 0);
      FUZZ_ASSERT(strncmp(d.new_account, "https://", 8) == 0);
      FUZZ_ASSERT(strncmp(d.new_order, "https://", 8) == 0);
      FUZZ_ASSERT(d.renewal_info == NULL || strncmp(d.renewal_info, "https://", 8) == 0);
      acme_directory_clear(&d);
    } else
      FUZZ_ASSERT(err.msg[0] != '\0' && d.new_nonce == NULL);
    break;
  }
  case 1: {
    struct acme_problem p;
    if (acme_problem_parse(body, len, &p) == 0) {
      FUZZ_ASSERT(p.type != NULL);
      FUZZ_ASSERT(p.status == 0 || (p.status >= 100 && p.status < 600));
      acme_problem_clear(&p);
    } else
      FUZZ_ASSERT(p.type == NULL && p.detail == NULL);
    break;
  }
  case 2:
    free(acme_account_status_parse(body, len));
    break;
  case 4: {
    struct acme_order o;
    struct tp_err err = {0};
    if (acme_order_parse(body, len, &o, &err) == 0) {
      FUZZ_ASSERT(o.status != NULL && strncmp(o.finalize, "https://", 8) == 0);
      FUZZ_ASSERT(o.n_authorizations <= ACME_ORDER_NAMES_MAX);
      for (size_t i = 0; i < o.n_authorizations; i++)
        FUZZ_ASSERT(strncmp(o.authorizations[i], "https://", 8) == 0);
      acme_order_clear(&o);
    } else
      FUZZ_ASSERT(err.msg[0] != '\0' && o.status == NULL);
    break;
  }
  case 5: {
    struct acme_authz a;
    struct tp_err err = {0};
    if (acme_authz_parse(body, len, &a, &err) == 0) {
      FUZZ_ASSERT(a.status != NULL && a.identifier != NULL);
      for (const char *c = a.identifier; *c; c++)
        FUZZ_ASSERT(!isupper((unsigned char)*c));
      FUZZ_ASSERT((a.challenge_url == NULL) == (a.token == NULL));
      if (a.token != NULL) {
        FUZZ_ASSERT(strncmp(a.challenge_url, "https://", 8) == 0);
        FUZZ_ASSERT(strlen(a.token) <= ACME_TOKEN_MAX && strpbrk(a.token, "./+=") == NULL);
      }
      FUZZ_ASSERT((a.dns_challenge_url == NULL) == (a.dns_token == NULL));
      if (a.dns_token != NULL) {
        FUZZ_ASSERT(strncmp(a.dns_challenge_url, "https://", 8) == 0);
        FUZZ_ASSERT(strlen(a.dns_token) <= ACME_TOKEN_MAX && strpbrk(a.dns_token, "./+=") == NULL);
        char *txt = acme_dns01_txt(a.dns_token, "thumbprint");
        FUZZ_ASSERT(txt != NULL && strlen(txt) == 43);
        free(txt);
      }
      acme_authz_clear(&a);
    } else
      FUZZ_ASSERT(err.msg[0] != '\0' && a.status == NULL);
    break;
  }
  case 6: {
    struct acme_renewal_info ri;
    struct tp_err err = {0};
    if (acme_renewal_info_parse(body, len, &ri, &err) == 0) {
      FUZZ_ASSERT(ri.end_us > ri.start_us);
      FUZZ_ASSERT(ri.explanation_url == NULL || strncmp(ri.explanation_url, "https://", 8) == 0);
      acme_renewal_info_clear(&ri);
    } else
      FUZZ_ASSERT(err.msg[0] != '\0' && ri.explanation_url == NULL);
    break;
  }
  default: {
    char *s = strndup(body, len);
    if (s == NULL)
      return 0;
    unsigned char *bin = NULL;
    size_t n = 0;
    if (acme_b64url_decode(s, &bin, &n) == 0) {
      char *back = acme_b64url(bin, n);
      FUZZ_ASSERT(back != NULL);
      /* The same text when it was canonical (the unused bits zero). */
      size_t sl = strlen(s);
      while (sl > 0 && s[sl - 1] == '=')
        sl--;
      FUZZ_ASSERT(strlen(back) == sl);
      free(back);
      free(bin);
    }
    free(s);
  }
  }
  return 0;
}
