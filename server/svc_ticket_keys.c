/* TicketKeyService: session-ticket key rings (ticketKeys, getTicketKeys,
 * setTicketKeys). The ring's key bytes are its secret: 48 bytes per key,
 * in the order of TicketKeyRing.keys (newest, the active one, first). */
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "listener_rules.h"
#include "pb.h"
#include "tlsplane/v1/ticket_keys.pb-c.h"

#define TICKET_KEY_LEN LISTENER_RULES_TICKET_KEY_LEN
#define TICKET_KEY_NAME_LEN LISTENER_RULES_TICKET_KEY_PART_LEN
/* The defaults follow Caddy's: a new key every 12 h, four keys kept (a
 * ticket resumes for up to 36-48 h after it was issued). */
#define RETAINED_DEFAULT 4
#define ROTATION_DEFAULT_S (12 * 3600)
#define RETAINED_MAX 16
#define ROTATION_MIN_S 10
#define ROTATION_MAX_S (366 * 86400)

static const char *const ticket_key_ring_mutable[] = {"rotation_period", "retained_keys", NULL};

/* A key's name as TicketKey.key_name shows it: plain lower-case hex, what
 * setTicketKeys users paste ("12253d..."). malloc'd. */
static char *key_name_hex(const uint8_t *key) {
  char hex[2 * TICKET_KEY_NAME_LEN + 1];
  if (!OPENSSL_buf2hexstr_ex(hex, sizeof(hex), NULL, key, TICKET_KEY_NAME_LEN, '\0'))
    return NULL;
  for (char *p = hex; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  return strdup(hex);
}

/* Rings written before key names were plain hex stored "12:25:3D:...":
 * shown the same way as new ones. */
static void key_name_normalize(char *name) {
  char *out = name;
  for (const char *p = name; *p; p++)
    if (*p != ':')
      *out++ = (char)tolower((unsigned char)*p);
  *out = '\0';
}

static Tlsplane__V1__TicketKey *key_meta_new(const uint8_t *key, int active, int64_t now_us) {
  Tlsplane__V1__TicketKey *k = malloc(sizeof(*k));
  if (k == NULL)
    return NULL;
  tlsplane__v1__ticket_key__init(k);
  k->key_name = key_name_hex(key);
  k->state = active ? TLSPLANE__V1__TICKET_KEY_STATE__ACTIVE
                    : TLSPLANE__V1__TICKET_KEY_STATE__DECRYPT_ONLY;
  k->create_time = pb_timestamp_new(now_us);
  if (k->key_name == NULL || k->create_time == NULL) {
    protobuf_c_message_free_unpacked(&k->base, NULL);
    return NULL;
  }
  return k;
}

static void keys_clear(Tlsplane__V1__TicketKeyRing *ring) {
  for (size_t i = 0; i < ring->n_keys; i++)
    protobuf_c_message_free_unpacked(&ring->keys[i]->base, NULL);
  free(ring->keys);
  ring->keys = NULL;
  ring->n_keys = 0;
}

/* Puts `fresh` keys (n_fresh × 48 bytes) in front of the ring's current
 * keys (old_secret, whose metadata is in old), newest first, and sets the
 * op's secret. */
static int ring_set(struct api_op *op, Tlsplane__V1__TicketKeyRing *ring,
                    const Tlsplane__V1__TicketKeyRing *old, const uint8_t *old_secret,
                    const uint8_t *fresh, size_t n_fresh, struct tp_err *err) {
  size_t n_old = old ? old->n_keys : 0;
  size_t total = n_fresh + n_old;
  int64_t now_us = (int64_t)op->now * 1000000;
  uint8_t *secret = malloc(total * TICKET_KEY_LEN);
  Tlsplane__V1__TicketKey **keys = calloc(total ? total : 1, sizeof(*keys));
  if (secret == NULL || keys == NULL)
    goto oom;
  keys_clear(ring);
  ring->keys = keys;
  for (size_t i = 0; i < total; i++) {
    const uint8_t *k =
        i < n_fresh ? fresh + i * TICKET_KEY_LEN : old_secret + (i - n_fresh) * TICKET_KEY_LEN;
    memcpy(secret + i * TICKET_KEY_LEN, k, TICKET_KEY_LEN);
    if (i < n_fresh) {
      keys[i] = key_meta_new(k, i == 0, now_us);
    } else {
      keys[i] = (Tlsplane__V1__TicketKey *)pb_clone(&old->keys[i - n_fresh]->base);
      if (keys[i] != NULL) {
        keys[i]->state = i == 0 ? TLSPLANE__V1__TICKET_KEY_STATE__ACTIVE
                                : TLSPLANE__V1__TICKET_KEY_STATE__DECRYPT_ONLY;
        key_name_normalize(keys[i]->key_name);
      }
    }
    if (keys[i] == NULL)
      goto oom;
    ring->n_keys = i + 1;
  }
  op->set_secret = 1;
  op->secret = secret;
  op->secret_len = total * TICKET_KEY_LEN;
  return 0;
oom:
  if (secret != NULL) {
    OPENSSL_cleanse(secret, total * TICKET_KEY_LEN);
    free(secret);
  }
  if (ring->keys != keys)
    free(keys);
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static int ticket_key_ring_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__TicketKeyRing *ring = (Tlsplane__V1__TicketKeyRing *)res;
  const Tlsplane__V1__TicketKeyRing *old = (const Tlsplane__V1__TicketKeyRing *)op->old;
  if (ring->retained_keys == 0)
    ring->retained_keys = RETAINED_DEFAULT;
  /* A new ring without a rotation_period rotates every 12 h; an explicit
   * 0 (or, on update, clearing it) rotates only on request. */
  if (old == NULL && ring->rotation_period == NULL) {
    if ((ring->rotation_period = pb_duration_new(ROTATION_DEFAULT_S)) == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (ring->retained_keys < 1 || ring->retained_keys > RETAINED_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "retained_keys: must be 1 to %d",
                      RETAINED_MAX);
  int64_t period_ms = pb_duration_ms(ring->rotation_period);
  if (ring->rotation_period != NULL && (period_ms < 0 || ring->rotation_period->nanos < 0))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "rotation_period: must not be negative");
  if (period_ms > 0 && period_ms < ROTATION_MIN_S * 1000)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "rotation_period: at least %ds (or 0: rotate only on request)",
                      ROTATION_MIN_S);
  if (period_ms > ROTATION_MAX_S * INT64_C(1000))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "rotation_period: at most 366 days (%ds)",
                      ROTATION_MAX_S);

  if (!op->set_secret) {
    if (old == NULL) {
      /* A new ring starts with one random active key. */
      uint8_t key[TICKET_KEY_LEN];
      if (RAND_bytes(key, sizeof(key)) != 1)
        return tp_err_set(err, GRPC_STATUS_INTERNAL, "no random bytes for a ticket key");
      int rc = ring_set(op, ring, NULL, NULL, key, 1, err);
      OPENSSL_cleanse(key, sizeof(key));
      if (rc != 0)
        return -1;
      pb_timestamp_set(res, "last_rotation_time", (int64_t)op->now * 1000000);
    } else {
      if (ring_set(op, ring, old, op->old_row->secret, NULL, 0, err) != 0)
        return -1;
      if (old->last_rotation_time != NULL)
        pb_timestamp_set(res, "last_rotation_time", pb_timestamp_us(old->last_rotation_time));
    }
  }
  /* Retire keys beyond retained_keys. */
  while (ring->n_keys > (size_t)ring->retained_keys) {
    protobuf_c_message_free_unpacked(&ring->keys[--ring->n_keys]->base, NULL);
    op->secret_len -= TICKET_KEY_LEN;
    OPENSSL_cleanse(op->secret + op->secret_len, TICKET_KEY_LEN);
  }
  const ProtobufCFieldDescriptor *next = pb_field(res->descriptor, "next_rotation_time");
  pb_field_clear(res, next);
  if (period_ms > 0 && ring->last_rotation_time != NULL)
    pb_timestamp_set(
        res, "next_rotation_time",
        pb_sat_add(pb_timestamp_us(ring->last_rotation_time), pb_sat_mul(period_ms, 1000)));
  return 0;
}

/* Indexed so that the rotation job finds the rings that are due. */
static int64_t ticket_key_ring_due_time(const ProtobufCMessage *res) {
  return pb_timestamp_us(((const Tlsplane__V1__TicketKeyRing *)res)->next_rotation_time);
}

static void ticket_key_ring_decorate(struct api *api, ProtobufCMessage *res) {
  (void)api;
  Tlsplane__V1__TicketKeyRing *ring = (Tlsplane__V1__TicketKeyRing *)res;
  for (size_t i = 0; i < ring->n_keys; i++)
    key_name_normalize(ring->keys[i]->key_name);
}

/* The ring's key ids (key_name), active first, comma-separated: which
 * keys it holds, never their bytes. NULL when out of memory. */
static char *key_ids_text(const Tlsplane__V1__TicketKeyRing *ring) {
  size_t len = 1;
  for (size_t i = 0; ring != NULL && i < ring->n_keys; i++)
    len += strlen(ring->keys[i]->key_name) + 1;
  char *text = malloc(len);
  if (text == NULL)
    return NULL;
  text[0] = '\0';
  for (size_t i = 0; ring != NULL && i < ring->n_keys; i++) {
    if (i > 0)
      strcat(text, ",");
    strcat(text, ring->keys[i]->key_name);
  }
  return text;
}

static int ticket_key_ring_audit_changes(const ProtobufCMessage *old, const ProtobufCMessage *res,
                                         struct api_changes *ch) {
  char *before = key_ids_text((const Tlsplane__V1__TicketKeyRing *)old);
  char *after = key_ids_text((const Tlsplane__V1__TicketKeyRing *)res);
  int rc = before != NULL && after != NULL ? api_changes_add(ch, "keys", before, after) : -1;
  free(before);
  free(after);
  /* The ids that left the ring (retired by RetireTicketKey, by a
   * rotation past retained_keys, or replaced), after the change only. */
  const Tlsplane__V1__TicketKeyRing *o = (const Tlsplane__V1__TicketKeyRing *)old;
  const Tlsplane__V1__TicketKeyRing *n = (const Tlsplane__V1__TicketKeyRing *)res;
  Tlsplane__V1__TicketKeyRing gone = TLSPLANE__V1__TICKET_KEY_RING__INIT;
  Tlsplane__V1__TicketKey *list[RETAINED_MAX];
  gone.keys = list;
  for (size_t i = 0; rc == 0 && o != NULL && i < o->n_keys && gone.n_keys < RETAINED_MAX; i++) {
    int kept = 0;
    for (size_t j = 0; j < n->n_keys && !kept; j++)
      kept = strcmp(o->keys[i]->key_name, n->keys[j]->key_name) == 0;
    if (!kept)
      list[gone.n_keys++] = o->keys[i];
  }
  if (rc == 0 && gone.n_keys > 0) {
    char *ids = key_ids_text(&gone);
    rc = ids != NULL ? api_changes_add(ch, "retired_keys", NULL, ids) : -1;
    free(ids);
  }
  return rc;
}

const struct api_kind api_kind_ticket_key_ring = {
    .kind = "TicketKeyRing",
    .collection = "ticketKeyRings",
    .resource_field = "ticket_key_ring",
    .desc = &tlsplane__v1__ticket_key_ring__descriptor,
    .mutable_fields = ticket_key_ring_mutable,
    .prepare = ticket_key_ring_prepare,
    .audit_changes = ticket_key_ring_audit_changes,
    .expire_time_us = ticket_key_ring_due_time,
    .decorate = ticket_key_ring_decorate,
};

/* Takes the key named `key_name` (any case, colons allowed) out of ring
 * (metadata) and secret (its bytes, n_keys x 48 in the same order). Returns
 * its index, or -1 with err set when the ring holds no such key. */
static int key_take(Tlsplane__V1__TicketKeyRing *ring, uint8_t *secret, const char *key_name,
                    struct tp_err *err) {
  char want[3 * TICKET_KEY_NAME_LEN]; /* "12:25:3D:..." at the longest */
  if (key_name[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "key_name: required");
  if (strlen(key_name) >= sizeof(want))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "key_name: %d hex digits, the key's name as the ring shows it",
                      2 * TICKET_KEY_NAME_LEN);
  strcpy(want, key_name);
  key_name_normalize(want);
  for (size_t i = 0; i < ring->n_keys; i++) {
    key_name_normalize(ring->keys[i]->key_name);
    if (strcmp(ring->keys[i]->key_name, want) != 0)
      continue;
    protobuf_c_message_free_unpacked(&ring->keys[i]->base, NULL);
    memmove(&ring->keys[i], &ring->keys[i + 1], (ring->n_keys - i - 1) * sizeof(*ring->keys));
    memmove(secret + i * TICKET_KEY_LEN, secret + (i + 1) * TICKET_KEY_LEN,
            (ring->n_keys - i - 1) * TICKET_KEY_LEN);
    ring->n_keys--;
    OPENSSL_cleanse(secret + ring->n_keys * TICKET_KEY_LEN, TICKET_KEY_LEN);
    return (int)i;
  }
  return tp_err_set(err, GRPC_STATUS_NOT_FOUND, "key_name: the ring holds no key %s", want);
}

/* Reads the ring `name`, puts the fresh keys in front (replace: instead of
 * the ring's keys), writes it. retire (may be NULL): the key of that name
 * leaves the ring first; when it is the active one a fresh random key
 * takes its place in the same write. */
static int ring_change(struct api *api, const struct rpc_call_info *call, const char *name,
                       const char *etag, const uint8_t *fresh, size_t n_fresh, int replace,
                       const char *retire, const char *action, ProtobufCMessage **resp,
                       struct tp_err *err) {
  if (api_name_check(&api_kind_ticket_key_ring, name, "name", err) != 0)
    return -1;
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0)
    return -1;
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, &api_kind_ticket_key_ring, name, 1, &old, &row, err);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  struct api_op op = {.api = api,
                      .kind = &api_kind_ticket_key_ring,
                      .txn = txn,
                      .call = call,
                      .old = old,
                      .old_row = &row,
                      .now = time(NULL)};
  uint8_t replacement[TICKET_KEY_LEN];
  int rotated = n_fresh > 0;
  /* old keeps the ring as it was (for the audit row); kept, a copy that
   * lost the retired key, is what ring_set builds on. */
  Tlsplane__V1__TicketKeyRing *kept = NULL;
  if (rc == 0 && retire != NULL && (kept = (Tlsplane__V1__TicketKeyRing *)pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc == 0 && retire != NULL) {
    if (row.secret == NULL || row.secret_len != kept->n_keys * TICKET_KEY_LEN) {
      rc =
          tp_err_set(err, GRPC_STATUS_INTERNAL, "the ring's stored keys do not match its metadata");
    } else {
      int at = key_take(kept, row.secret, retire, err);
      if (at < 0) {
        rc = -1;
      } else if (at == 0) {
        if (RAND_bytes(replacement, sizeof(replacement)) != 1) {
          rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "no random bytes for a ticket key");
        } else {
          fresh = replacement;
          n_fresh = 1;
          rotated = 1;
        }
      }
    }
  }
  if (rc == 0)
    rc = ring_set(&op, (Tlsplane__V1__TicketKeyRing *)res,
                  replace        ? NULL
                  : kept != NULL ? kept
                                 : (const Tlsplane__V1__TicketKeyRing *)old,
                  replace ? NULL : row.secret, fresh, n_fresh, err);
  OPENSSL_cleanse(replacement, sizeof(replacement));
  if (kept != NULL)
    protobuf_c_message_free_unpacked(&kept->base, NULL);
  if (rc == 0) {
    if (rotated || replace)
      pb_timestamp_set(res, "last_rotation_time", (int64_t)op.now * 1000000);
    rc = api_write(&op, res, etag, action, err);
  }
  if (rc == 0) {
    rc = store_commit(txn, NULL, err);
  } else {
    store_rollback(txn);
    if (op.secret != NULL) {
      OPENSSL_cleanse(op.secret, op.secret_len);
      free(op.secret);
    }
  }
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  if (rc != 0) {
    if (res != NULL)
      protobuf_c_message_free_unpacked(res, NULL);
    return -1;
  }
  if (resp != NULL)
    *resp = res;
  else
    protobuf_c_message_free_unpacked(res, NULL);
  return 0;
}

int api_ticket_keys_rotate(struct api *api, const struct rpc_call_info *call, const char *name,
                           const char *etag, ProtobufCMessage **resp, struct tp_err *err) {
  uint8_t key[TICKET_KEY_LEN];
  if (RAND_bytes(key, sizeof(key)) != 1)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "no random bytes for a ticket key");
  int rc = ring_change(api, call, name, etag, key, 1, 0, NULL, "rotate", resp, err);
  OPENSSL_cleanse(key, sizeof(key));
  return rc;
}

static int rotate_ticket_keys(const struct rpc_call_info *call, const ProtobufCMessage *req,
                              ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__RotateTicketKeysRequest *r =
      (const Tlsplane__V1__RotateTicketKeysRequest *)req;
  return api_ticket_keys_rotate(b->api, call, r->name, r->etag, resp, err);
}

static int set_ticket_keys(const struct rpc_call_info *call, const ProtobufCMessage *req,
                           ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const Tlsplane__V1__SetTicketKeysRequest *r = (const Tlsplane__V1__SetTicketKeysRequest *)req;
  if (r->n_keys == 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "keys: at least one %d-byte key is required", TICKET_KEY_LEN);
  if (r->n_keys > RETAINED_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "keys: at most %d keys", RETAINED_MAX);
  for (size_t i = 0; i < r->n_keys; i++) {
    if (r->keys[i].len != TICKET_KEY_LEN)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "keys[%zu]: must be %d bytes (%d-byte name, %d-byte HMAC key, %d-byte "
                        "AES key), got %zu",
                        i, TICKET_KEY_LEN, TICKET_KEY_NAME_LEN, TICKET_KEY_NAME_LEN,
                        TICKET_KEY_NAME_LEN, r->keys[i].len);
    for (size_t j = 0; j < i; j++)
      if (memcmp(r->keys[i].data, r->keys[j].data, TICKET_KEY_NAME_LEN) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "keys[%zu]: same %d-byte key name as keys[%zu]", i, TICKET_KEY_NAME_LEN,
                          j);
  }
  uint8_t *fresh = malloc(r->n_keys * TICKET_KEY_LEN);
  if (fresh == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < r->n_keys; i++)
    memcpy(fresh + i * TICKET_KEY_LEN, r->keys[i].data, TICKET_KEY_LEN);
  const struct api_binding *b = data;
  int rc =
      ring_change(b->api, call, r->name, r->etag, fresh, r->n_keys, 1, NULL, "set_keys", resp, err);
  OPENSSL_cleanse(fresh, r->n_keys * TICKET_KEY_LEN);
  free(fresh);
  return rc;
}

static int retire_ticket_key(const struct rpc_call_info *call, const ProtobufCMessage *req,
                             ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__RetireTicketKeyRequest *r = (const Tlsplane__V1__RetireTicketKeyRequest *)req;
  return ring_change(b->api, call, r->name, r->etag, NULL, 0, 0, r->key_name, "retire_key", resp,
                     err);
}

const struct api_method ticket_key_methods[] = {{"RotateTicketKeys", rotate_ticket_keys},
                                                {"SetTicketKeys", set_ticket_keys},
                                                {"RetireTicketKey", retire_ticket_key},
                                                {NULL, NULL}};
