/* protobuf's proto3 JSON mapping over protobuf-c descriptors.
 *
 * Decoding builds the message directly in the layout
 * protobuf_c_message_unpack would produce with the default allocator, so
 * that protobuf_c_message_free_unpacked(msg, NULL) frees it exactly. The
 * invariant that makes every error path leak-free: at any moment the
 * message under construction is one free_unpacked can free. So a member is
 * stored only once its value is complete, a repeated field's array is
 * stored (zeroed) before its elements and its count grows one finished
 * element at a time, and a oneof's case is set only after its member. */
#include "pbjson.h"

#include "pb.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/field_mask.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

#define MEMBER(msg, off) ((void *)((char *)(msg) + (off)))

/* Timestamp range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z;
 * Duration range: +-10000 years of 365.25 days (pb.h). */
#define TS_MIN_SECONDS PB_TIMESTAMP_MIN_S
#define TS_MAX_SECONDS PB_TIMESTAMP_MAX_S
#define DURATION_MAX_SECONDS PB_DURATION_MAX_S

/* How much of a string value or key an error message quotes. */
#define QUOTE_MAX 64

/* --- Well-known types ------------------------------------------------- */

enum wkt {
  WKT_NONE,
  WKT_TIMESTAMP,
  WKT_DURATION,
  WKT_WRAPPER, /* a message whose one field, "value" (1), stands for it */
  WKT_FIELD_MASK,
  WKT_UNSUPPORTED,
};

static enum wkt wkt_of(const ProtobufCMessageDescriptor *desc) {
  static const char prefix[] = "google.protobuf.";
  if (strncmp(desc->name, prefix, sizeof(prefix) - 1) != 0)
    return WKT_NONE;
  const char *n = desc->name + sizeof(prefix) - 1;
  if (strcmp(n, "Timestamp") == 0)
    return WKT_TIMESTAMP;
  if (strcmp(n, "Duration") == 0)
    return WKT_DURATION;
  if (strcmp(n, "FieldMask") == 0)
    return WKT_FIELD_MASK;
  static const char *const wrappers[] = {"DoubleValue", "FloatValue",  "Int64Value",
                                         "UInt64Value", "Int32Value",  "UInt32Value",
                                         "BoolValue",   "StringValue", "BytesValue"};
  for (size_t i = 0; i < sizeof(wrappers) / sizeof(wrappers[0]); i++)
    if (strcmp(n, wrappers[i]) == 0)
      return desc->n_fields == 1 && desc->fields[0].id == 1 ? WKT_WRAPPER : WKT_NONE;
  if (strcmp(n, "Any") == 0 || strcmp(n, "Struct") == 0 || strcmp(n, "Value") == 0 ||
      strcmp(n, "ListValue") == 0)
    return WKT_UNSUPPORTED;
  return WKT_NONE;
}

/* --- Names -------------------------------------------------------------- */

/* The JSON name protoc derives from a proto field name: underscores
 * dropped, a lower-case letter after one upper-cased. */
static char *json_name_dup(const char *proto) {
  char *out = malloc(strlen(proto) + 1);
  if (out == NULL)
    return NULL;
  size_t n = 0;
  int up = 0;
  for (const char *p = proto; *p; p++) {
    if (*p == '_') {
      up = 1;
      continue;
    }
    out[n++] = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
    up = 0;
  }
  out[n] = '\0';
  return out;
}

/* Whether key is the JSON name of proto field name, without allocating. */
static int json_name_eq(const char *proto, const char *key) {
  int up = 0;
  for (; *proto; proto++) {
    if (*proto == '_') {
      up = 1;
      continue;
    }
    char c = up && *proto >= 'a' && *proto <= 'z' ? (char)(*proto - 'a' + 'A') : *proto;
    if (*key++ != c)
      return 0;
    up = 0;
  }
  return *key == '\0';
}

static const ProtobufCFieldDescriptor *field_by_key(const ProtobufCMessageDescriptor *desc,
                                                    const char *key) {
  const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, key);
  if (f != NULL)
    return f;
  for (unsigned i = 0; i < desc->n_fields; i++)
    if (json_name_eq(desc->fields[i].name, key))
      return &desc->fields[i];
  return NULL;
}

/* --- JSON paths for error messages ------------------------------------- */

static size_t path_push_field(struct pb_path *p, const char *name) {
  return pb_path_push(p, "%s%.*s", p->len ? "." : "", QUOTE_MAX, name);
}

/* Replaces every byte that is not part of well-formed UTF-8 with '?'. */
static void utf8_sanitize(char *s) {
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    size_t len = pb_utf8_seq(s + i, n - i);
    if (len == 0)
      s[i++] = '?';
    else
      i += len;
  }
}

/* A copy of s[0..n) with every byte that is not part of well-formed UTF-8
 * replaced by U+FFFD, as a decoder of text would show it; malloc'd. */
static char *utf8_repair(const char *s, size_t n) {
  if (n > (SIZE_MAX - 1) / 3)
    return NULL;
  char *out = malloc(n * 3 + 1), *o = out;
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < n;) {
    size_t len = pb_utf8_seq(s + i, n - i);
    if (len == 0) {
      memcpy(o, "\xEF\xBF\xBD", 3);
      o += 3;
      i++;
    } else {
      memcpy(o, s + i, len);
      o += len;
      i += len;
    }
  }
  *o = '\0';
  return out;
}

/* Sets err to "path: message". Messages quote keys and values cut at
 * QUOTE_MAX bytes, possibly inside a UTF-8 sequence, and an encoded map key
 * may not be UTF-8 at all; the message is made valid UTF-8 so that it can
 * travel in a gRPC status or a JSON error body. */
static int fail_at(struct tp_err *err, const struct pb_path *p, grpc_status_code status,
                   const char *fmt, va_list ap) {
  char msg[sizeof(err->msg)];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  if (p->len)
    tp_err_set(err, status, "%s: %s", p->buf, msg);
  else
    tp_err_set(err, status, "%s", msg);
  if (err != NULL)
    utf8_sanitize(err->msg);
  return -1;
}

/* --- Base64 ------------------------------------------------------------- */

/* Decodes standard or URL-safe base64, padded or not, ignoring CR and LF.
 * *out is malloc'd (NULL when empty). On failure *why says what is wrong
 * without quoting the data. Returns 0, -1 on bad input, -2 out of memory. */
static int b64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len, const char **why) {
  *out = NULL;
  *out_len = 0;
  if (len > (size_t)INT_MAX - 4) {
    *why = "too long";
    return -1;
  }
  char *buf = malloc(len + 4);
  if (buf == NULL)
    return -2;
  size_t n = 0, pad = 0;
  int std = 0, url = 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '\r' || c == '\n')
      continue;
    if (c == '=') {
      pad++;
      continue;
    }
    if (pad) {
      *why = "data after padding";
      goto bad;
    }
    if (c == '-' || c == '_') {
      url = 1;
      c = c == '-' ? '+' : '/';
    } else if (c == '+' || c == '/') {
      std = 1;
    } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
      *why = "invalid character";
      goto bad;
    }
    buf[n++] = c;
  }
  if (std && url) {
    *why = "mixes the standard and URL-safe alphabets";
    goto bad;
  }
  if (n % 4 == 1 || pad > 2 || (pad && (n + pad) % 4 != 0)) {
    *why = "wrong length or padding";
    goto bad;
  }
  if (n == 0) {
    free(buf);
    return 0;
  }
  size_t fill = (4 - n % 4) % 4;
  for (size_t i = 0; i < fill; i++)
    buf[n++] = '=';
  uint8_t *dec = malloc(n / 4 * 3);
  if (dec == NULL) {
    free(buf);
    return -2;
  }
  int got = EVP_DecodeBlock(dec, (const unsigned char *)buf, (int)n);
  free(buf);
  if (got < 0 || (size_t)got < fill) {
    free(dec);
    *why = "invalid encoding";
    return -1;
  }
  *out = dec;
  *out_len = (size_t)got - fill; /* EVP_DecodeBlock counts the padding as zero bytes */
  return 0;
bad:
  free(buf);
  return -1;
}

/* Standard base64 with padding, NUL-terminated, malloc'd; NULL if out of
 * memory or too long for EVP_EncodeBlock. */
static char *b64_encode(const uint8_t *data, size_t len) {
  if (len > (size_t)INT_MAX / 4 * 3 - 3)
    return NULL;
  char *out = malloc((len + 2) / 3 * 4 + 1);
  if (out == NULL)
    return NULL;
  EVP_EncodeBlock((unsigned char *)out, data ? data : (const uint8_t *)"", (int)len);
  return out;
}

/* --- Numbers ------------------------------------------------------------ */

/* Whether s is a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
 * *plain tells whether it is an integer without fraction or exponent. */
static int is_json_number(const char *s, int *plain) {
  const char *p = s;
  *plain = 1;
  if (*p == '-')
    p++;
  if (*p == '0')
    p++;
  else if (*p >= '1' && *p <= '9')
    while (*p >= '0' && *p <= '9')
      p++;
  else
    return 0;
  if (*p == '.') {
    *plain = 0;
    p++;
    if (!(*p >= '0' && *p <= '9'))
      return 0;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  if (*p == 'e' || *p == 'E') {
    *plain = 0;
    p++;
    if (*p == '+' || *p == '-')
      p++;
    if (!(*p >= '0' && *p <= '9'))
      return 0;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  return *p == '\0';
}

/* Canonical decimal, as map keys must be: 0 or -?[1-9][0-9]*. */
static int is_canonical_int(const char *s) {
  const char *p = s;
  if (*p == '-')
    p++;
  if (*p == '0')
    return p[1] == '\0' && p == s;
  if (!(*p >= '1' && *p <= '9'))
    return 0;
  while (*p >= '0' && *p <= '9')
    p++;
  return *p == '\0';
}

enum num_rc { NUM_OK, NUM_BAD, NUM_RANGE, NUM_FRACTION };

/* An integral value in [lo, hi] from a JSON integer, an integral real, or
 * a string holding a JSON number. */
static enum num_rc json_to_i64(const json_t *v, int64_t lo, int64_t hi, int64_t *out) {
  double r;
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
      return NUM_RANGE;
    *out = x;
    return NUM_OK;
  }
  if (json_is_real(v)) {
    r = json_real_value(v);
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    int plain;
    if (!is_json_number(s, &plain))
      return NUM_BAD;
    errno = 0;
    if (plain) {
      long long x = strtoll(s, NULL, 10);
      if (errno == ERANGE || x < lo || x > hi)
        return NUM_RANGE;
      *out = x;
      return NUM_OK;
    }
    r = strtod(s, NULL);
    if (errno == ERANGE && fabs(r) > 1)
      return NUM_RANGE;
  } else {
    return NUM_BAD;
  }
  if (!isfinite(r))
    return NUM_RANGE;
  if (r != floor(r))
    return NUM_FRACTION;
  /* (double)hi + 1.0 is exact for 32-bit bounds and 2^63 for INT64_MAX. */
  if (!(r >= (double)lo && r < (double)hi + 1.0))
    return NUM_RANGE;
  *out = (int64_t)r;
  return NUM_OK;
}

static enum num_rc json_to_u64(const json_t *v, uint64_t hi, uint64_t *out) {
  double r;
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x > hi)
      return NUM_RANGE;
    *out = (uint64_t)x;
    return NUM_OK;
  }
  if (json_is_real(v)) {
    r = json_real_value(v);
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    int plain;
    if (!is_json_number(s, &plain))
      return NUM_BAD;
    errno = 0;
    if (plain) {
      if (s[0] == '-')
        return strcmp(s, "-0") == 0 ? (*out = 0, NUM_OK) : NUM_RANGE;
      unsigned long long x = strtoull(s, NULL, 10);
      if (errno == ERANGE || x > hi)
        return NUM_RANGE;
      *out = x;
      return NUM_OK;
    }
    r = strtod(s, NULL);
    if (errno == ERANGE && fabs(r) > 1)
      return NUM_RANGE;
  } else {
    return NUM_BAD;
  }
  if (!isfinite(r))
    return NUM_RANGE;
  if (r != floor(r))
    return NUM_FRACTION;
  /* (double)UINT64_MAX is 2^64; (double)UINT32_MAX + 1.0 is exact. */
  if (!(r > -1.0 && r < (double)hi + 1.0))
    return NUM_RANGE;
  *out = (uint64_t)r;
  return NUM_OK;
}

static enum num_rc json_to_double(const json_t *v, int is_float, double *out) {
  double r;
  if (json_is_integer(v)) {
    r = (double)json_integer_value(v);
  } else if (json_is_real(v)) {
    r = json_real_value(v);
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    int plain;
    if (strcmp(s, "NaN") == 0) {
      *out = NAN;
      return NUM_OK;
    }
    if (strcmp(s, "Infinity") == 0 || strcmp(s, "-Infinity") == 0) {
      *out = s[0] == '-' ? -INFINITY : INFINITY;
      return NUM_OK;
    }
    if (!is_json_number(s, &plain))
      return NUM_BAD;
    errno = 0;
    r = strtod(s, NULL);
    if (errno == ERANGE && isinf(r))
      return NUM_RANGE;
  } else {
    return NUM_BAD;
  }
  if (is_float && isfinite(r) && fabs(r) > FLT_MAX)
    return NUM_RANGE;
  *out = r;
  return NUM_OK;
}

/* --- Timestamps and durations ------------------------------------------ */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  unsigned doe = (unsigned)(z - era * 146097);
  unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* n decimal digits at s; fails at the first non-digit (so never reads past
 * a terminating NUL). */
static int digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (!(s[i] >= '0' && s[i] <= '9'))
      return 0;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 1;
}

/* 1 to 9 digits after a '.' at *pp, as nanoseconds. */
static int parse_fraction(const char **pp, int32_t *nanos, const char **why) {
  const char *p = *pp;
  int32_t ns = 0;
  int nd = 0;
  while (*p >= '0' && *p <= '9') {
    if (nd == 9) {
      *why = "more than 9 fraction digits";
      return -1;
    }
    ns = ns * 10 + (*p++ - '0');
    nd++;
  }
  if (nd == 0) {
    *why = "no digits after '.'";
    return -1;
  }
  for (; nd < 9; nd++)
    ns *= 10;
  *nanos = ns;
  *pp = p;
  return 0;
}

static int is_leap(int y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM). */
static int parse_timestamp(const char *s, int64_t *secs, int32_t *nanos, const char **why) {
  int y, mo, d, h, mi, se;
  *why = "expected YYYY-MM-DDTHH:MM:SS[.fraction]Z or an offset";
  if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
      !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) ||
      s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &se))
    return -1;
  static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && is_leap(y)) ||
      h > 23 || mi > 59 || se > 59) {
    *why = "no such date or time";
    return -1;
  }
  const char *p = s + 19;
  *nanos = 0;
  if (*p == '.') {
    p++;
    if (parse_fraction(&p, nanos, why) != 0)
      return -1;
  }
  int64_t offset = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int oh, om;
    if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om))
      return -1;
    if (oh > 23 || om > 59) {
      *why = "offset out of range";
      return -1;
    }
    offset = (int64_t)(oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
    p += 6;
  } else {
    return -1;
  }
  if (*p != '\0')
    return -1;
  int64_t t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se;
  t -= offset;
  if (t < TS_MIN_SECONDS || t > TS_MAX_SECONDS) {
    *why = "outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z";
    return -1;
  }
  *secs = t;
  return 0;
}

int pbjson_timestamp_parse(const char *s, int64_t *secs, int32_t *nanos, const char **why) {
  return parse_timestamp(s, secs, nanos, why);
}

/* ".123", ".123456", ".123456789" or "" for nanos in [0, 1e9). */
static void format_nanos(char *buf, size_t len, int32_t nanos) {
  if (nanos == 0)
    buf[0] = '\0';
  else if (nanos % 1000000 == 0)
    snprintf(buf, len, ".%03" PRId32, nanos / 1000000);
  else if (nanos % 1000 == 0)
    snprintf(buf, len, ".%06" PRId32, nanos / 1000);
  else
    snprintf(buf, len, ".%09" PRId32, nanos);
}

static int format_timestamp(char *buf, size_t len, int64_t secs, int32_t nanos) {
  if (secs < TS_MIN_SECONDS || secs > TS_MAX_SECONDS || nanos < 0 || nanos > 999999999)
    return -1;
  int64_t days = secs / 86400, rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    days--;
  }
  int64_t y;
  unsigned m, d;
  civil_from_days(days, &y, &m, &d);
  char frac[16];
  format_nanos(frac, sizeof(frac), nanos);
  snprintf(buf, len, "%04" PRId64 "-%02u-%02uT%02d:%02d:%02d%sZ", y, m, d, (int)(rem / 3600),
           (int)(rem / 60 % 60), (int)(rem % 60), frac);
  return 0;
}

/* -?S[.f{1,9}]s */
static int parse_duration(const char *s, int64_t *secs, int32_t *nanos, const char **why) {
  const char *p = s;
  int neg = 0;
  *why = "expected seconds with an 's' suffix, e.g. \"1.5s\"";
  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (!(*p >= '0' && *p <= '9'))
    return -1;
  int64_t sec = 0;
  while (*p >= '0' && *p <= '9') {
    sec = sec * 10 + (*p++ - '0');
    if (sec > DURATION_MAX_SECONDS) {
      *why = "beyond +-315576000000s";
      return -1;
    }
  }
  int32_t ns = 0;
  if (*p == '.') {
    p++;
    if (parse_fraction(&p, &ns, why) != 0)
      return -1;
  }
  if (p[0] != 's' || p[1] != '\0')
    return -1;
  *secs = neg ? -sec : sec;
  *nanos = neg ? -ns : ns;
  return 0;
}

static int format_duration(char *buf, size_t len, int64_t secs, int32_t nanos) {
  if (secs < -DURATION_MAX_SECONDS || secs > DURATION_MAX_SECONDS || nanos < -999999999 ||
      nanos > 999999999 || (secs > 0 && nanos < 0) || (secs < 0 && nanos > 0))
    return -1;
  int neg = secs < 0 || nanos < 0;
  char frac[16];
  format_nanos(frac, sizeof(frac), nanos < 0 ? -nanos : nanos);
  snprintf(buf, len, "%s%" PRId64 "%ss", neg ? "-" : "", secs < 0 ? -secs : secs, frac);
  return 0;
}

/* --- FieldMask paths ---------------------------------------------------- */

/* Whether s is a dotted path of identifiers: [A-Za-z_][A-Za-z0-9_]*, or
 * with proto_names proto field names, [a-z][a-z0-9_]*. */
static int is_dotted_path(const char *s, int proto_names) {
  int start = 1;
  for (const char *p = s;; p++) {
    char c = *p;
    int lower = c >= 'a' && c <= 'z';
    int alpha = lower || (!proto_names && ((c >= 'A' && c <= 'Z') || c == '_'));
    if (start) {
      if (!alpha)
        return 0;
      start = 0;
    } else if (c == '.') {
      start = 1;
    } else if (c == '\0') {
      return 1;
    } else if (!alpha && !(c >= '0' && c <= '9') && c != '_') {
      return 0;
    }
  }
}

static int is_ident_path(const char *s) {
  return is_dotted_path(s, 0);
}

/* lowerCamelCase -> snake_case of n bytes at s; malloc'd. */
static char *snake_dup(const char *s, size_t n) {
  char *out = malloc(2 * n + 1);
  if (out == NULL)
    return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] >= 'A' && s[i] <= 'Z') {
      out[o++] = '_';
      out[o++] = (char)(s[i] - 'A' + 'a');
    } else {
      out[o++] = s[i];
    }
  }
  out[o] = '\0';
  return out;
}

/* --- Decoding ----------------------------------------------------------- */

struct dec {
  struct tp_err *err;
  int flags;
  int depth; /* messages entered */
  struct pb_path path;
};

static int dec_fail(struct dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int dec_fail(struct dec *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fail_at(d->err, &d->path, GRPC_STATUS_INVALID_ARGUMENT, fmt, ap);
  va_end(ap);
  return -1;
}

static int dec_oom(struct dec *d) {
  return tp_err_set(d->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory decoding JSON");
}

static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    return "an object";
  case JSON_ARRAY:
    return "an array";
  case JSON_STRING:
    return "a string";
  case JSON_INTEGER:
  case JSON_REAL:
    return "a number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a boolean";
  case JSON_NULL:
    return "null";
  }
  return "a value";
}

/* A short rendering of a scalar value for messages: strings quoted, cut
 * at QUOTE_MAX, control characters and quotes shown as '?'. */
static void json_show(const json_t *v, char *buf, size_t len) {
  switch (json_typeof(v)) {
  case JSON_STRING: {
    const char *s = json_string_value(v);
    size_t o = 0;
    buf[o++] = '"';
    size_t i;
    for (i = 0; s[i] && i < QUOTE_MAX && o + 6 < len; i++)
      buf[o++] = (unsigned char)s[i] < 0x20 || s[i] == '"' || s[i] == 0x7f ? '?' : s[i];
    if (s[i] && o + 6 < len) {
      memcpy(buf + o, "...", 3);
      o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    break;
  }
  case JSON_INTEGER:
    snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    break;
  case JSON_REAL: /* the shortest form that reads back the same */
    for (int prec = 1; prec <= 17; prec++) {
      snprintf(buf, len, "%.*g", prec, json_real_value(v));
      if (strtod(buf, NULL) == json_real_value(v))
        break;
    }
    break;
  case JSON_TRUE:
    snprintf(buf, len, "true");
    break;
  case JSON_FALSE:
    snprintf(buf, len, "false");
    break;
  default:
    snprintf(buf, len, "%s", json_kind(v));
    break;
  }
}

/* v is not what was expected: `"12x" is not a duration`, or for
 * containers `expected a duration, got an object`. */
static int dec_bad(struct dec *d, const json_t *v, const char *what) {
  if (json_is_object(v) || json_is_array(v) || json_is_null(v))
    return dec_fail(d, "expected %s, got %s", what, json_kind(v));
  char shown[QUOTE_MAX + 16];
  json_show(v, shown, sizeof(shown));
  return dec_fail(d, "%s is not %s", shown, what);
}

static int dec_num_fail(struct dec *d, const json_t *v, enum num_rc rc, const char *what) {
  char shown[QUOTE_MAX + 16];
  json_show(v, shown, sizeof(shown));
  switch (rc) {
  case NUM_RANGE:
    return dec_fail(d, "%s is out of range for %s", shown, what);
  case NUM_FRACTION:
    return dec_fail(d, "%s is not an integer", shown);
  default:
    return dec_bad(d, v, what);
  }
}

static void set_presence(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f) {
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    *(uint32_t *)MEMBER(m, f->quantifier_offset) = f->id;
  else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
           f->type != PROTOBUF_C_TYPE_MESSAGE)
    *(protobuf_c_boolean *)MEMBER(m, f->quantifier_offset) = 1;
}

static int dec_message(struct dec *d, const ProtobufCMessageDescriptor *desc, const json_t *v,
                       ProtobufCMessage **out);

/* Decodes one value of field f's type into dst (a member or an array
 * element), writing dst only on success. Returns 0, -1 on error, 1 when
 * the value was skipped (an unknown enum name under IGNORE_UNKNOWN). */
static int dec_value(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *v, void *dst) {
  enum num_rc rc;
  int64_t i;
  uint64_t u;
  double r;
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    if ((rc = json_to_i64(v, INT32_MIN, INT32_MAX, &i)) != NUM_OK)
      return dec_num_fail(d, v, rc, "an int32");
    *(int32_t *)dst = (int32_t)i;
    return 0;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    if ((rc = json_to_u64(v, UINT32_MAX, &u)) != NUM_OK)
      return dec_num_fail(d, v, rc, "a uint32");
    *(uint32_t *)dst = (uint32_t)u;
    return 0;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    if ((rc = json_to_i64(v, INT64_MIN, INT64_MAX, &i)) != NUM_OK)
      return dec_num_fail(d, v, rc, "an int64");
    *(int64_t *)dst = i;
    return 0;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    if ((rc = json_to_u64(v, UINT64_MAX, &u)) != NUM_OK)
      return dec_num_fail(d, v, rc, "a uint64");
    *(uint64_t *)dst = u;
    return 0;
  case PROTOBUF_C_TYPE_FLOAT:
    if ((rc = json_to_double(v, 1, &r)) != NUM_OK)
      return dec_num_fail(d, v, rc, "a float");
    *(float *)dst = (float)r;
    return 0;
  case PROTOBUF_C_TYPE_DOUBLE:
    if ((rc = json_to_double(v, 0, &r)) != NUM_OK)
      return dec_num_fail(d, v, rc, "a double");
    *(double *)dst = r;
    return 0;
  case PROTOBUF_C_TYPE_BOOL:
    if (!json_is_boolean(v))
      return dec_bad(d, v, "a boolean");
    *(protobuf_c_boolean *)dst = json_is_true(v);
    return 0;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    if (json_is_string(v)) {
      const ProtobufCEnumValue *ev =
          protobuf_c_enum_descriptor_get_value_by_name(ed, json_string_value(v));
      if (ev == NULL) {
        if (d->flags & PBJSON_IGNORE_UNKNOWN)
          return 1;
        char shown[QUOTE_MAX + 16];
        json_show(v, shown, sizeof(shown));
        return dec_fail(d, "%s is not a value of %s", shown, ed->name);
      }
      *(int *)dst = ev->value;
      return 0;
    }
    if (!json_is_number(v))
      return dec_bad(d, v, "an enum value name or number");
    if ((rc = json_to_i64(v, INT32_MIN, INT32_MAX, &i)) != NUM_OK)
      return dec_num_fail(d, v, rc, "an enum number");
    *(int *)dst = (int)i;
    return 0;
  }
  case PROTOBUF_C_TYPE_STRING: {
    if (!json_is_string(v))
      return dec_bad(d, v, "a string");
    /* jansson has checked UTF-8 and refused \u0000 (JSON_ALLOW_NUL unset),
     * so the value is a proper C string. */
    char *s = strdup(json_string_value(v));
    if (s == NULL)
      return dec_oom(d);
    *(char **)dst = s;
    return 0;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    if (!json_is_string(v))
      return dec_bad(d, v, "a base64 string");
    ProtobufCBinaryData bd;
    const char *why = NULL;
    int brc = b64_decode(json_string_value(v), json_string_length(v), &bd.data, &bd.len, &why);
    if (brc == -2)
      return dec_oom(d);
    if (brc != 0) /* never quote the value: bytes are often keys */
      return dec_fail(d, "not valid base64 (%s)", why);
    *(ProtobufCBinaryData *)dst = bd;
    return 0;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    ProtobufCMessage *sub;
    if (dec_message(d, f->descriptor, v, &sub) != 0)
      return -1;
    *(ProtobufCMessage **)dst = sub;
    return 0;
  }
  }
  return dec_fail(d, "unsupported field type %d", (int)f->type);
}

static int dec_repeated(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                        const json_t *v) {
  if (!json_is_array(v))
    return dec_bad(d, v, "an array");
  size_t n = json_array_size(v);
  if (n == 0)
    return 0;
  size_t esz = pb_type_size(f->type);
  char *arr = calloc(n, esz);
  if (arr == NULL)
    return dec_oom(d);
  size_t *count = MEMBER(m, f->quantifier_offset);
  *(void **)MEMBER(m, f->offset) = arr; /* *count stays 0 until elements are done */
  for (size_t i = 0; i < n; i++) {
    const json_t *e = json_array_get(v, i);
    size_t saved = pb_path_push(&d->path, "[%zu]", i);
    int rc = json_is_null(e) ? dec_fail(d, "null is not allowed in a list")
                             : dec_value(d, f, e, arr + *count * esz);
    pb_path_pop(&d->path, saved);
    if (rc < 0)
      return -1;
    if (rc == 0)
      (*count)++;
  }
  return 0;
}

/* A map key, always a JSON string, into the entry's key member. */
static int dec_map_key(struct dec *d, const ProtobufCFieldDescriptor *kf, const char *key,
                       void *dst) {
  const char *what = NULL;
  int64_t i = 0;
  uint64_t u = 0;
  switch (kf->type) {
  case PROTOBUF_C_TYPE_STRING: {
    char *s = strdup(key);
    if (s == NULL)
      return dec_oom(d);
    *(char **)dst = s;
    return 0;
  }
  case PROTOBUF_C_TYPE_BOOL:
    if (strcmp(key, "true") != 0 && strcmp(key, "false") != 0) {
      what = "a bool map key (\"true\" or \"false\")";
      break;
    }
    *(protobuf_c_boolean *)dst = key[0] == 't';
    return 0;
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64: {
    int wide = pb_type_size(kf->type) == 8;
    what = wide ? "an int64 map key" : "an int32 map key";
    errno = 0;
    if (!is_canonical_int(key))
      break;
    long long x = strtoll(key, NULL, 10);
    if (errno == ERANGE || (!wide && (x < INT32_MIN || x > INT32_MAX)))
      break;
    i = x;
    if (wide)
      *(int64_t *)dst = i;
    else
      *(int32_t *)dst = (int32_t)i;
    return 0;
  }
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: {
    int wide = pb_type_size(kf->type) == 8;
    what = wide ? "a uint64 map key" : "a uint32 map key";
    errno = 0;
    if (!is_canonical_int(key) || key[0] == '-')
      break;
    unsigned long long x = strtoull(key, NULL, 10);
    if (errno == ERANGE || (!wide && x > UINT32_MAX))
      break;
    u = x;
    if (wide)
      *(uint64_t *)dst = u;
    else
      *(uint32_t *)dst = (uint32_t)u;
    return 0;
  }
  default:
    what = "a map key of a supported type";
    break;
  }
  return dec_fail(d, "key \"%.*s\" is not %s", QUOTE_MAX, key, what);
}

static int dec_map(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                   const json_t *v) {
  if (!json_is_object(v))
    return dec_bad(d, v, "an object (a map)");
  size_t n = json_object_size(v);
  if (n == 0)
    return 0;
  const ProtobufCMessageDescriptor *ed = f->descriptor;
  const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
  ProtobufCMessage **arr = calloc(n, sizeof(*arr));
  if (arr == NULL)
    return dec_oom(d);
  size_t *count = MEMBER(m, f->quantifier_offset);
  *(void **)MEMBER(m, f->offset) = arr;
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)v, key, val) {
    size_t saved = pb_path_push(&d->path, "[\"%.*s\"]", QUOTE_MAX, key);
    ProtobufCMessage *entry = NULL;
    int rc;
    if (json_is_null(val)) {
      rc = dec_fail(d, "null is not allowed as a map value");
    } else if ((entry = malloc(ed->sizeof_message)) == NULL) {
      rc = dec_oom(d);
    } else {
      protobuf_c_message_init(ed, entry);
      rc = dec_map_key(d, kf, key, MEMBER(entry, kf->offset));
      if (rc == 0) {
        set_presence(entry, kf);
        rc = dec_value(d, vf, val, MEMBER(entry, vf->offset));
      }
      if (rc == 0) {
        set_presence(entry, vf);
        arr[(*count)++] = entry;
      } else {
        protobuf_c_message_free_unpacked(entry, NULL);
      }
    }
    pb_path_pop(&d->path, saved);
    if (rc < 0)
      return -1;
  }
  return 0;
}

/* Decodes v into field f of m. Returns 0 when the field was set, 1 when
 * it was left at its default (null, or a skipped enum name), -1 on error. */
static int dec_field(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                     const json_t *v) {
  if (json_is_null(v))
    return 1;
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    int rc = pb_is_map_field(m->descriptor, f) ? dec_map(d, m, f, v) : dec_repeated(d, m, f, v);
    return rc < 0 ? -1 : 0;
  }
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
    uint32_t set = *(uint32_t *)MEMBER(m, f->quantifier_offset);
    if (set != 0) {
      const ProtobufCFieldDescriptor *other =
          protobuf_c_message_descriptor_get_field(m->descriptor, set);
      char *name = json_name_dup(other ? other->name : "?");
      dec_fail(d, "%s of the same oneof is already set", name ? name : "another member");
      free(name);
      return -1;
    }
  }
  int rc = dec_value(d, f, v, MEMBER(m, f->offset));
  if (rc == 0)
    set_presence(m, f);
  return rc;
}

static int dec_object(struct dec *d, ProtobufCMessage *m, const json_t *v) {
  const ProtobufCMessageDescriptor *desc = m->descriptor;
  if (!json_is_object(v)) {
    char what[256];
    snprintf(what, sizeof(what), "an object (%s)", desc->name);
    return dec_bad(d, v, what);
  }
  /* Per field: 0 not given, 1 given (maybe null), 2 set. */
  unsigned char *state = calloc(desc->n_fields ? desc->n_fields : 1, 1);
  if (state == NULL)
    return dec_oom(d);
  int rc = 0;
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)v, key, val) {
    const ProtobufCFieldDescriptor *f = field_by_key(desc, key);
    if (f == NULL) {
      if (d->flags & PBJSON_IGNORE_UNKNOWN)
        continue;
      rc = dec_fail(d, "unknown field \"%.*s\" in %s", QUOTE_MAX, key, desc->name);
      break;
    }
    size_t idx = (size_t)(f - desc->fields);
    if (state[idx]) {
      /* jansson refused repeated keys, so this is the other name. */
      char *jn = json_name_dup(f->name);
      rc = dec_fail(d, "field given twice, as \"%s\" and \"%s\"", f->name, jn ? jn : "?");
      free(jn);
      break;
    }
    size_t saved = path_push_field(&d->path, key);
    int frc = dec_field(d, m, f, val);
    pb_path_pop(&d->path, saved);
    if (frc < 0) {
      rc = -1;
      break;
    }
    state[idx] = frc == 0 ? 2 : 1;
  }
  for (unsigned i = 0; rc == 0 && i < desc->n_fields; i++)
    if (desc->fields[i].label == PROTOBUF_C_LABEL_REQUIRED && state[i] != 2)
      rc = dec_fail(d, "required field %s of %s is missing", desc->fields[i].name, desc->name);
  free(state);
  return rc;
}

static int dec_timestamp(struct dec *d, Google__Protobuf__Timestamp *ts, const json_t *v) {
  const char *why;
  if (!json_is_string(v))
    return dec_bad(d, v, "a timestamp (RFC 3339 string)");
  if (parse_timestamp(json_string_value(v), &ts->seconds, &ts->nanos, &why) != 0) {
    char shown[QUOTE_MAX + 16];
    json_show(v, shown, sizeof(shown));
    return dec_fail(d, "%s is not a timestamp (%s)", shown, why);
  }
  return 0;
}

static int dec_duration(struct dec *d, Google__Protobuf__Duration *du, const json_t *v) {
  const char *why;
  if (!json_is_string(v) ||
      parse_duration(json_string_value(v), &du->seconds, &du->nanos, &why) != 0)
    return dec_bad(d, v, "a duration");
  return 0;
}

/* The object form, {"paths": ["certificate_chain_pem", ...]}: the
 * message's own field, which is what grpcurl sends (it cannot send the
 * string form). Paths are proto field names, taken as they are. */
static int dec_field_mask_object(struct dec *d, Google__Protobuf__FieldMask *fm, const json_t *v) {
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)v, key, val) {
    if (strcmp(key, "paths") != 0)
      return dec_fail(d, "a field mask object has only \"paths\", not \"%.*s\"", QUOTE_MAX, key);
  }
  const json_t *paths = json_object_get(v, "paths");
  if (paths == NULL || json_is_null(paths))
    return 0;
  if (!json_is_array(paths))
    return dec_fail(d, "paths: expected an array of strings, got %s", json_kind(paths));
  size_t n = json_array_size(paths);
  if (n == 0)
    return 0;
  fm->paths = calloc(n, sizeof(char *));
  if (fm->paths == NULL)
    return dec_oom(d);
  for (size_t i = 0; i < n; i++) {
    const json_t *e = json_array_get(paths, i);
    if (!json_is_string(e))
      return dec_fail(d, "paths[%zu]: expected a string, got %s", i, json_kind(e));
    const char *path = json_string_value(e);
    if (!is_dotted_path(path, 1))
      return dec_fail(d,
                      "paths[%zu]: \"%.*s\" is not a field mask path (field names joined by '.')",
                      i, QUOTE_MAX, path);
    if ((fm->paths[fm->n_paths] = strdup(path)) == NULL)
      return dec_oom(d);
    fm->n_paths++;
  }
  return 0;
}

static int dec_field_mask(struct dec *d, Google__Protobuf__FieldMask *fm, const json_t *v) {
  if (json_is_object(v))
    return dec_field_mask_object(d, fm, v);
  if (!json_is_string(v))
    return dec_bad(d, v, "a field mask (comma-separated paths, or {\"paths\": [...]})");
  const char *s = json_string_value(v);
  if (s[0] == '\0')
    return 0;
  size_t n = 1;
  for (const char *p = s; *p; p++)
    n += *p == ',';
  fm->paths = calloc(n, sizeof(char *));
  if (fm->paths == NULL)
    return dec_oom(d);
  for (const char *p = s;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char *snake = snake_dup(p, len);
    if (snake == NULL)
      return dec_oom(d);
    if (memchr(p, '_', len) != NULL || !is_ident_path(snake)) {
      free(snake);
      return dec_fail(d, "\"%.*s\" is not a field mask path (lowerCamelCase names joined by '.')",
                      (int)(len < QUOTE_MAX ? len : QUOTE_MAX), p);
    }
    fm->paths[fm->n_paths++] = snake;
    if (end == NULL)
      break;
    p = end + 1;
  }
  return 0;
}

/* Decodes v into a new message of type desc; *out is written on success
 * only, and on failure nothing stays allocated. */
static int dec_message(struct dec *d, const ProtobufCMessageDescriptor *desc, const json_t *v,
                       ProtobufCMessage **out) {
  if (d->depth >= PBJSON_MAX_DEPTH)
    return dec_fail(d, "messages nested deeper than %d", PBJSON_MAX_DEPTH);
  enum wkt w = wkt_of(desc);
  if (w == WKT_UNSUPPORTED)
    return dec_fail(d, "%s is not supported", desc->name);
  ProtobufCMessage *m = malloc(desc->sizeof_message);
  if (m == NULL)
    return dec_oom(d);
  protobuf_c_message_init(desc, m);
  d->depth++;
  int rc;
  switch (w) {
  case WKT_TIMESTAMP:
    rc = dec_timestamp(d, (Google__Protobuf__Timestamp *)m, v);
    break;
  case WKT_DURATION:
    rc = dec_duration(d, (Google__Protobuf__Duration *)m, v);
    break;
  case WKT_FIELD_MASK:
    rc = dec_field_mask(d, (Google__Protobuf__FieldMask *)m, v);
    break;
  case WKT_WRAPPER:
    rc = dec_value(d, &desc->fields[0], v, MEMBER(m, desc->fields[0].offset));
    break;
  default:
    rc = dec_object(d, m, v);
    break;
  }
  d->depth--;
  if (rc != 0) {
    protobuf_c_message_free_unpacked(m, NULL);
    return -1;
  }
  *out = m;
  return 0;
}

int pbjson_from_json(const ProtobufCMessageDescriptor *desc, const json_t *json, int flags,
                     ProtobufCMessage **out, struct tp_err *err) {
  *out = NULL;
  struct dec d = {.err = err, .flags = flags};
  if (json == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "no JSON value");
  return dec_message(&d, desc, json, out);
}

int pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                  ProtobufCMessage **out, struct tp_err *err) {
  *out = NULL;
  json_error_t jerr;
  /* JSON_REJECT_DUPLICATES: protojson refuses a key given twice. Without
   * JSON_ALLOW_NUL jansson refuses \u0000, which a C string cannot hold. */
  json_t *root =
      json_loadb(json ? json : "", json ? len : 0, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "invalid JSON at line %d, column %d: %s",
                      jerr.line, jerr.column, jerr.text);
  int rc = pbjson_from_json(desc, root, 0, out, err);
  json_decref(root);
  return rc;
}

/* --- Encoding ----------------------------------------------------------- */

struct enc {
  struct tp_err *err;
  int flags;
  int depth;
  struct pb_path path;
};

static json_t *enc_fail(struct enc *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *enc_fail(struct enc *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fail_at(e->err, &e->path, GRPC_STATUS_INVALID_ARGUMENT, fmt, ap);
  va_end(ap);
  return NULL;
}

static json_t *enc_oom(struct enc *e) {
  tp_err_set(e->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory encoding JSON");
  return NULL;
}

/* A string that is not UTF-8 (stored before input was checked, or made
 * from bytes that are not text) is written with U+FFFD for each bad byte:
 * one such value must not make a whole List unreadable. */
static json_t *enc_string(struct enc *e, const char *s) {
  s = s ? s : "";
  size_t n = strlen(s);
  if (pb_utf8_valid(s, n, NULL)) {
    json_t *j = json_stringn(s, n);
    return j ? j : enc_oom(e);
  }
  char *fixed = utf8_repair(s, n);
  json_t *j = fixed ? json_string(fixed) : NULL;
  free(fixed);
  return j ? j : enc_oom(e);
}

static json_t *enc_double(struct enc *e, double v) {
  json_t *j;
  if (isnan(v))
    j = json_string("NaN");
  else if (isinf(v))
    j = json_string(v < 0 ? "-Infinity" : "Infinity");
  else if (v == floor(v) && fabs(v) < 9007199254740992.0)
    j = json_integer((json_int_t)v); /* "2", not jansson's "2.0" */
  else
    j = json_real(v); /* jansson writes 17 significant digits: exact, not shortest */
  return j ? j : enc_oom(e);
}

static json_t *enc_message(struct enc *e, const ProtobufCMessage *m);

/* One value of field f's type, read from src (a member or an element). */
static json_t *enc_value(struct enc *e, const ProtobufCFieldDescriptor *f, const void *src) {
  char buf[32];
  json_t *j = NULL;
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    j = json_integer(*(const int32_t *)src);
    break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    j = json_integer(*(const uint32_t *)src);
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
    snprintf(buf, sizeof(buf), "%" PRId64, *(const int64_t *)src);
    j = json_string(buf);
    break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    snprintf(buf, sizeof(buf), "%" PRIu64, *(const uint64_t *)src);
    j = json_string(buf);
    break;
  case PROTOBUF_C_TYPE_FLOAT:
    return enc_double(e, *(const float *)src);
  case PROTOBUF_C_TYPE_DOUBLE:
    return enc_double(e, *(const double *)src);
  case PROTOBUF_C_TYPE_BOOL:
    j = json_boolean(*(const protobuf_c_boolean *)src);
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    int v = *(const int *)src;
    if (strcmp(ed->name, "google.protobuf.NullValue") == 0)
      return json_null();
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(ed, v);
    j = ev ? json_string(ev->name) : json_integer(v);
    break;
  }
  case PROTOBUF_C_TYPE_STRING:
    return enc_string(e, *(char *const *)src);
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *bd = src;
    char *b64 = b64_encode(bd->data, bd->len);
    if (b64 == NULL)
      return enc_oom(e);
    j = json_string(b64);
    free(b64);
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)src;
    if (sub != NULL)
      return enc_message(e, sub);
    /* Only a map value or a list element can be NULL here: an empty message. */
    j = json_object();
    break;
  }
  }
  return j ? j : enc_oom(e);
}

/* Whether field f of m holds a value to write (see protobuf-c's pack: the
 * same presence rules decide what goes on the wire). */
static int field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f) {
  const void *src = MEMBER(m, f->offset);
  int ptr_type = f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE;
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    return *(const uint32_t *)MEMBER(m, f->quantifier_offset) == f->id &&
           (!ptr_type || *(void *const *)src != NULL);
  if (f->label == PROTOBUF_C_LABEL_REQUIRED)
    return !ptr_type || *(void *const *)src != NULL;
  if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
    if (ptr_type)
      return *(void *const *)src != NULL && *(void *const *)src != f->default_value;
    return *(const protobuf_c_boolean *)MEMBER(m, f->quantifier_offset);
  }
  switch (f->type) { /* proto3 implicit presence: anything but zero */
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(char *const *)src;
    return s != NULL && s[0] != '\0';
  }
  case PROTOBUF_C_TYPE_MESSAGE:
    return *(void *const *)src != NULL;
  case PROTOBUF_C_TYPE_BYTES:
    return ((const ProtobufCBinaryData *)src)->len != 0;
  case PROTOBUF_C_TYPE_FLOAT:
    return *(const float *)src != 0;
  case PROTOBUF_C_TYPE_DOUBLE:
    return *(const double *)src != 0;
  default: {
    const unsigned char *b = src;
    for (size_t i = 0; i < pb_type_size(f->type); i++)
      if (b[i])
        return 1;
    return 0;
  }
  }
}

static json_t *enc_list(struct enc *e, const ProtobufCFieldDescriptor *f, const char *arr,
                        size_t n) {
  json_t *a = json_array();
  if (a == NULL)
    return enc_oom(e);
  size_t esz = pb_type_size(f->type);
  for (size_t i = 0; i < n; i++) {
    size_t saved = pb_path_push(&e->path, "[%zu]", i);
    json_t *j = enc_value(e, f, arr + i * esz);
    pb_path_pop(&e->path, saved);
    if (j == NULL || json_array_append_new(a, j) != 0) {
      json_decref(a);
      return j ? enc_oom(e) : NULL;
    }
  }
  return a;
}

static json_t *enc_map(struct enc *e, const ProtobufCFieldDescriptor *f,
                       ProtobufCMessage *const *arr, size_t n) {
  const ProtobufCMessageDescriptor *ed = f->descriptor;
  const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
  json_t *o = json_object();
  if (o == NULL)
    return enc_oom(e);
  for (size_t i = 0; i < n; i++) {
    const ProtobufCMessage *entry = arr[i];
    if (entry == NULL)
      continue;
    const void *k = MEMBER(entry, kf->offset);
    char buf[32];
    const char *key = buf;
    char *fixed = NULL; /* a string key that is not UTF-8, repaired as enc_string does */
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING:
      key = *(char *const *)k ? *(char *const *)k : "";
      if (!pb_utf8_valid(key, strlen(key), NULL)) {
        if ((fixed = utf8_repair(key, strlen(key))) == NULL) {
          json_decref(o);
          return enc_oom(e);
        }
        key = fixed;
      }
      break;
    case PROTOBUF_C_TYPE_BOOL:
      key = *(const protobuf_c_boolean *)k ? "true" : "false";
      break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
      snprintf(buf, sizeof(buf), "%" PRId32, *(const int32_t *)k);
      break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      snprintf(buf, sizeof(buf), "%" PRIu32, *(const uint32_t *)k);
      break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
      snprintf(buf, sizeof(buf), "%" PRId64, *(const int64_t *)k);
      break;
    default:
      snprintf(buf, sizeof(buf), "%" PRIu64, *(const uint64_t *)k);
      break;
    }
    size_t saved = pb_path_push(&e->path, "[\"%.*s\"]", QUOTE_MAX, key);
    json_t *j = enc_value(e, vf, MEMBER(entry, vf->offset));
    /* Duplicate keys (legal on the wire): the last one wins, as in proto. */
    int rc = j == NULL ? -1 : json_object_set_new(o, key, j);
    if (j != NULL && rc != 0)
      enc_oom(e);
    pb_path_pop(&e->path, saved);
    free(fixed);
    if (rc != 0) {
      json_decref(o);
      return NULL;
    }
  }
  return o;
}

/* Field f of m as JSON: 0 with *out set, 0 with *out NULL when the field
 * is not written, -1 on error. */
static int enc_field(struct enc *e, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                     json_t **out) {
  const void *src = MEMBER(m, f->offset);
  int defaults = e->flags & PBJSON_EMIT_DEFAULTS;
  *out = NULL;
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    size_t n = *(const size_t *)MEMBER(m, f->quantifier_offset);
    const void *arr = *(void *const *)src;
    if (arr == NULL)
      n = 0;
    if (n == 0 && !defaults)
      return 0;
    *out = pb_is_map_field(m->descriptor, f) ? enc_map(e, f, arr, n) : enc_list(e, f, arr, n);
  } else if (field_present(m, f)) {
    *out = enc_value(e, f, src);
  } else if (!defaults || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
             (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE)) {
    /* Unset oneof members and unset fields with explicit presence are
     * never written, as protojson's EmitUnpopulated. */
    return 0;
  } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    *out = json_null();
  } else {
    *out = enc_value(e, f, src); /* the zero value */
  }
  return *out ? 0 : -1;
}

static json_t *enc_object(struct enc *e, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *desc = m->descriptor;
  json_t *o = json_object();
  if (o == NULL)
    return enc_oom(e);
  for (unsigned i = 0; i < desc->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &desc->fields[i];
    char *name = json_name_dup(f->name);
    if (name == NULL)
      goto failed_name;
    size_t saved = path_push_field(&e->path, name);
    json_t *j;
    int rc = enc_field(e, m, f, &j);
    pb_path_pop(&e->path, saved);
    if (rc == 0 && j != NULL && json_object_set_new(o, name, j) != 0) {
      enc_oom(e);
      rc = -1;
    }
    free(name);
    if (rc != 0)
      goto failed_field;
  }
  return o;
failed_name:
  enc_oom(e);
failed_field:
  json_decref(o);
  return NULL;
}

static json_t *enc_field_mask(struct enc *e, const Google__Protobuf__FieldMask *fm) {
  size_t total = 1;
  for (size_t i = 0; i < fm->n_paths; i++)
    total += strlen(fm->paths[i] ? fm->paths[i] : "") + 1;
  char *out = malloc(total);
  if (out == NULL)
    return enc_oom(e);
  size_t o = 0;
  for (size_t i = 0; i < fm->n_paths; i++) {
    const char *p = fm->paths[i] ? fm->paths[i] : "";
    char *camel = json_name_dup(p);
    char *back = camel ? snake_dup(camel, strlen(camel)) : NULL;
    if (back == NULL) {
      free(camel);
      free(out);
      return enc_oom(e);
    }
    /* Only paths that survive camel -> snake unchanged have a JSON form. */
    int ok = is_ident_path(p) && strcmp(back, p) == 0;
    free(back);
    if (!ok) {
      free(camel);
      free(out);
      return enc_fail(e, "field mask path \"%.*s\" has no lowerCamelCase form", QUOTE_MAX, p);
    }
    if (i)
      out[o++] = ',';
    size_t cl = strlen(camel);
    memcpy(out + o, camel, cl);
    o += cl;
    free(camel);
  }
  out[o] = '\0';
  json_t *j = json_string(out);
  free(out);
  return j ? j : enc_oom(e);
}

static json_t *enc_message(struct enc *e, const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *desc = m->descriptor;
  if (e->depth >= PBJSON_MAX_DEPTH)
    return enc_fail(e, "messages nested deeper than %d", PBJSON_MAX_DEPTH);
  char buf[64];
  json_t *j = NULL;
  e->depth++;
  switch (wkt_of(desc)) {
  case WKT_TIMESTAMP: {
    const Google__Protobuf__Timestamp *ts = (const Google__Protobuf__Timestamp *)m;
    if (format_timestamp(buf, sizeof(buf), ts->seconds, ts->nanos) != 0)
      enc_fail(e, "timestamp {%" PRId64 "s, %" PRId32 "ns} is out of range", ts->seconds,
               ts->nanos);
    else if ((j = json_string(buf)) == NULL)
      enc_oom(e);
    break;
  }
  case WKT_DURATION: {
    const Google__Protobuf__Duration *du = (const Google__Protobuf__Duration *)m;
    if (format_duration(buf, sizeof(buf), du->seconds, du->nanos) != 0)
      enc_fail(e, "duration {%" PRId64 "s, %" PRId32 "ns} is out of range or mixes signs",
               du->seconds, du->nanos);
    else if ((j = json_string(buf)) == NULL)
      enc_oom(e);
    break;
  }
  case WKT_FIELD_MASK:
    j = enc_field_mask(e, (const Google__Protobuf__FieldMask *)m);
    break;
  case WKT_WRAPPER:
    j = enc_value(e, &desc->fields[0], MEMBER(m, desc->fields[0].offset));
    break;
  case WKT_UNSUPPORTED:
    enc_fail(e, "%s is not supported", desc->name);
    break;
  case WKT_NONE:
    j = enc_object(e, m);
    break;
  }
  e->depth--;
  return j;
}

int pbjson_to_json(const ProtobufCMessage *msg, int flags, json_t **out, struct tp_err *err) {
  struct enc e = {.err = err, .flags = flags};
  *out = enc_message(&e, msg);
  return *out ? 0 : -1;
}

int pbjson_encode(const ProtobufCMessage *msg, int flags, char **out, struct tp_err *err) {
  *out = NULL;
  json_t *j;
  if (pbjson_to_json(msg, flags, &j, err) != 0)
    return -1;
  size_t dflags = JSON_ENCODE_ANY | (flags & PBJSON_PRETTY ? JSON_INDENT(2) : JSON_COMPACT);
  /* json_dumpb into our own buffer, so the caller frees with free() even
   * if someone changed jansson's allocator. */
  size_t n = json_dumpb(j, NULL, 0, dflags);
  char *text = n ? malloc(n + 1) : NULL;
  if (text == NULL || json_dumpb(j, text, n, dflags) != n) {
    free(text);
    json_decref(j);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory encoding JSON");
  }
  text[n] = '\0';
  json_decref(j);
  *out = text;
  return 0;
}
