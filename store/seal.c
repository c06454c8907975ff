/* Secrets at rest: AES-256-GCM under the master key, one fresh random
 * nonce per record, the record's identity as associated data.
 *
 * A sealed record is
 *
 *   version (1 byte, 1) | key id (8) | nonce (12) | ciphertext | tag (16)
 *
 * and its associated data is the header (version and key id) followed by
 * kind, a NUL and name: a sealed secret moved to another row, or its header
 * rewritten to name another key, no longer opens. The key id is the first
 * 8 bytes of SHA-256("tlsplane master key id" | key), so that a store
 * opened with several keys (a master-key rotation) knows which one sealed
 * each record without trying them all, and tells a wrong key apart from a
 * damaged record.
 *
 * Rows are authenticated too (schema version 4 on): every row's kind, name
 * and data (the serialized resource: a token's role, agent id, expiry and
 * revocation, a client certificate's role, agent, serial and fingerprint,
 * an agent's labels) carry an HMAC-SHA256 under a key derived from the
 * master key with HKDF-SHA256 ("tlsplane row mac v1"), stored as
 *
 *   version (1 byte, 1) | key id (8) | tag (32)
 *
 * so that someone who can write the database file but holds no master key
 * cannot edit a row, or write a new one, that the store accepts. The
 * secret column needs no MAC of its own: its seal binds it to its row. */
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

#define KEY_ID_LABEL "tlsplane master key id"
#define MAC_KEY_INFO "tlsplane row mac v1"

void store_master_key_id(const uint8_t key[STORE_MASTER_KEY_LEN], uint8_t id[STORE_KEY_ID_LEN]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
      EVP_DigestUpdate(ctx, KEY_ID_LABEL, sizeof(KEY_ID_LABEL) - 1) != 1 ||
      EVP_DigestUpdate(ctx, key, STORE_MASTER_KEY_LEN) != 1 ||
      EVP_DigestFinal_ex(ctx, md, &len) != 1 || len < STORE_KEY_ID_LEN)
    memset(md, 0, sizeof(md)); /* out of memory: an id no real key has */
  EVP_MD_CTX_free(ctx);
  memcpy(id, md, STORE_KEY_ID_LEN);
}

void store_master_key_id_hex(const uint8_t key[STORE_MASTER_KEY_LEN],
                             char hex[2 * STORE_KEY_ID_LEN + 1]) {
  uint8_t id[STORE_KEY_ID_LEN];
  store_master_key_id(key, id);
  store__key_id_hex(id, hex);
}

void store__key_id_hex(const uint8_t id[STORE_KEY_ID_LEN], char hex[2 * STORE_KEY_ID_LEN + 1]) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < STORE_KEY_ID_LEN; i++) {
    hex[2 * i] = digits[id[i] >> 4];
    hex[2 * i + 1] = digits[id[i] & 15];
  }
  hex[2 * STORE_KEY_ID_LEN] = '\0';
}

/* HKDF-SHA256 of the master key, info MAC_KEY_INFO, no salt (the master
 * key is uniformly random). */
static int mac_key_derive(const uint8_t key[STORE_MASTER_KEY_LEN], uint8_t out[STORE_MAC_KEY_LEN]) {
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
  EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
  EVP_KDF_free(kdf);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, STORE_MASTER_KEY_LEN),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, MAC_KEY_INFO,
                                        sizeof(MAC_KEY_INFO) - 1),
      OSSL_PARAM_construct_end(),
  };
  int ok = ctx != NULL && EVP_KDF_derive(ctx, out, STORE_MAC_KEY_LEN, params) == 1;
  EVP_KDF_CTX_free(ctx);
  if (!ok)
    OPENSSL_cleanse(out, STORE_MAC_KEY_LEN);
  return ok ? 0 : -EIO;
}

int store__keyring_add(struct store_keyring *ring, const uint8_t key[STORE_MASTER_KEY_LEN]) {
  uint8_t id[STORE_KEY_ID_LEN];
  store_master_key_id(key, id);
  for (size_t i = 0; i < ring->n; i++)
    if (memcmp(ring->id[i], id, STORE_KEY_ID_LEN) == 0)
      return 0; /* the same key twice */
  if (ring->n == STORE_KEYS_MAX)
    return -ENOSPC;
  if (mac_key_derive(key, ring->mac_key[ring->n]) != 0)
    return -EIO;
  memcpy(ring->key[ring->n], key, STORE_MASTER_KEY_LEN);
  memcpy(ring->id[ring->n], id, STORE_KEY_ID_LEN);
  ring->n++;
  return 0;
}

void store__keyring_clear(struct store_keyring *ring) {
  OPENSSL_cleanse(ring, sizeof(*ring));
}

/* The associated data: header, kind, NUL, name. Caller frees. */
static uint8_t *aad_new(const uint8_t *header, const char *kind, const char *name, size_t *len) {
  size_t kl = strlen(kind), nl = strlen(name);
  *len = STORE_SEAL_HEADER_LEN + kl + 1 + nl;
  uint8_t *aad = malloc(*len);
  if (aad == NULL)
    return NULL;
  memcpy(aad, header, STORE_SEAL_HEADER_LEN);
  memcpy(aad + STORE_SEAL_HEADER_LEN, kind, kl);
  aad[STORE_SEAL_HEADER_LEN + kl] = '\0';
  memcpy(aad + STORE_SEAL_HEADER_LEN + kl + 1, name, nl);
  return aad;
}

/* Runs AES-256-GCM one way over in[0..len) into out. encrypt: tag is
 * written; else tag is checked. Returns 0, or -1 (a decryption whose tag
 * does not match, or OpenSSL failed). */
static int gcm(int encrypt, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
               size_t aad_len, const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag) {
  if (len > INT32_MAX || aad_len > INT32_MAX)
    return -1;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int outl = 0, ok = ctx != NULL;
  ok = ok && EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) == 1;
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, STORE_SEAL_NONCE_LEN, NULL) == 1;
  ok = ok && EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, encrypt) == 1;
  ok = ok && EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aad_len) == 1;
  ok = ok && (len == 0 || EVP_CipherUpdate(ctx, out, &outl, in, (int)len) == 1);
  if (ok && !encrypt)
    ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, STORE_SEAL_TAG_LEN, tag) == 1;
  ok = ok && EVP_CipherFinal_ex(ctx, out + (len ? outl : 0), &outl) == 1;
  if (ok && encrypt)
    ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, STORE_SEAL_TAG_LEN, tag) == 1;
  EVP_CIPHER_CTX_free(ctx);
  return ok ? 0 : -1;
}

int store__seal(const struct store_keyring *ring, const char *kind, const char *name,
                const uint8_t *plain, size_t len, uint8_t **out, size_t *out_len,
                struct tp_err *err) {
  *out = NULL;
  *out_len = 0;
  if (ring->n == 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: no master key to seal %s with", name);
    return -EIO;
  }
  size_t total = STORE_SEAL_OVERHEAD + len;
  uint8_t *buf = malloc(total);
  size_t aad_len = 0;
  uint8_t *aad = NULL;
  if (buf == NULL)
    return store__err_nomem(err, "seal");
  buf[0] = STORE_SEAL_VERSION;
  memcpy(buf + 1, ring->id[0], STORE_KEY_ID_LEN);
  uint8_t *nonce = buf + STORE_SEAL_HEADER_LEN;
  uint8_t *ct = nonce + STORE_SEAL_NONCE_LEN;
  if (RAND_bytes(nonce, STORE_SEAL_NONCE_LEN) != 1) {
    free(buf);
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: no random bytes for a nonce");
    return -EIO;
  }
  if ((aad = aad_new(buf, kind, name, &aad_len)) == NULL) {
    free(buf);
    return store__err_nomem(err, "seal");
  }
  int rc = gcm(1, ring->key[0], nonce, aad, aad_len, plain, len, ct, ct + len);
  free(aad);
  if (rc != 0) {
    OPENSSL_cleanse(buf, total);
    free(buf);
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: sealing the secret of %s failed", name);
    return -EIO;
  }
  *out = buf;
  *out_len = total;
  return 0;
}

int store__unseal(const struct store_keyring *ring, const char *kind, const char *name,
                  const uint8_t *sealed, size_t len, uint8_t **out, size_t *out_len,
                  struct tp_err *err) {
  *out = NULL;
  *out_len = 0;
  if (len < STORE_SEAL_OVERHEAD || sealed[0] != STORE_SEAL_VERSION) {
    tp_err_set(err, GRPC_STATUS_DATA_LOSS,
               "store: the secret of %s is not a sealed record (version %d, %zu bytes)", name,
               len > 0 ? sealed[0] : -1, len);
    return -EBADMSG;
  }
  const uint8_t *key = NULL;
  for (size_t i = 0; i < ring->n && key == NULL; i++)
    if (memcmp(ring->id[i], sealed + 1, STORE_KEY_ID_LEN) == 0)
      key = ring->key[i];
  if (key == NULL) {
    char hex[2 * STORE_KEY_ID_LEN + 1];
    store__key_id_hex(sealed + 1, hex);
    tp_err_set(err, GRPC_STATUS_DATA_LOSS,
               "store: the secret of %s is sealed with master key %s, which is not the key given",
               name, hex);
    return -EBADMSG;
  }
  size_t plain_len = len - STORE_SEAL_OVERHEAD;
  const uint8_t *nonce = sealed + STORE_SEAL_HEADER_LEN;
  const uint8_t *ct = nonce + STORE_SEAL_NONCE_LEN;
  uint8_t tag[STORE_SEAL_TAG_LEN];
  memcpy(tag, ct + plain_len, STORE_SEAL_TAG_LEN);
  size_t aad_len = 0;
  uint8_t *aad = aad_new(sealed, kind, name, &aad_len);
  uint8_t *plain = malloc(plain_len ? plain_len : 1);
  if (aad == NULL || plain == NULL) {
    free(aad);
    free(plain);
    return store__err_nomem(err, "unseal");
  }
  int rc = gcm(0, key, nonce, aad, aad_len, ct, plain_len, plain, tag);
  free(aad);
  if (rc != 0) {
    OPENSSL_cleanse(plain, plain_len);
    free(plain);
    tp_err_set(err, GRPC_STATUS_DATA_LOSS,
               "store: the secret of %s does not decrypt: altered, or moved from another record",
               name);
    return -EBADMSG;
  }
  *out = plain;
  *out_len = plain_len;
  return 0;
}

/* HMAC-SHA256 under mac_key of the row: kind, name and data, each after
 * its length (so that no two rows give the same input). */
static int mac_tag(const uint8_t mac_key[STORE_MAC_KEY_LEN], const char *kind, const char *name,
                   const uint8_t *data, size_t len, uint8_t tag[STORE_MAC_TAG_LEN]) {
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
  EVP_MAC_free(mac);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
      OSSL_PARAM_construct_end(),
  };
  const char *parts[2] = {kind, name};
  int ok = ctx != NULL && EVP_MAC_init(ctx, mac_key, STORE_MAC_KEY_LEN, params) == 1;
  for (int i = 0; ok && i < 2; i++) {
    uint8_t n[4];
    size_t l = strlen(parts[i]);
    n[0] = (uint8_t)(l >> 24);
    n[1] = (uint8_t)(l >> 16);
    n[2] = (uint8_t)(l >> 8);
    n[3] = (uint8_t)l;
    ok = EVP_MAC_update(ctx, n, sizeof(n)) == 1 &&
         EVP_MAC_update(ctx, (const uint8_t *)parts[i], l) == 1;
  }
  uint8_t n[8];
  for (int i = 0; i < 8; i++)
    n[i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  ok = ok && EVP_MAC_update(ctx, n, sizeof(n)) == 1;
  ok = ok && (len == 0 || EVP_MAC_update(ctx, data, len) == 1);
  size_t out_len = 0;
  ok = ok && EVP_MAC_final(ctx, tag, &out_len, STORE_MAC_TAG_LEN) == 1 &&
       out_len == STORE_MAC_TAG_LEN;
  EVP_MAC_CTX_free(ctx);
  return ok ? 0 : -1;
}

int store__mac(const struct store_keyring *ring, const char *kind, const char *name,
               const uint8_t *data, size_t len, uint8_t out[STORE_MAC_LEN], struct tp_err *err) {
  if (ring->n == 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: no master key to authenticate %s with", name);
    return -EIO;
  }
  out[0] = STORE_MAC_VERSION;
  memcpy(out + 1, ring->id[0], STORE_KEY_ID_LEN);
  if (mac_tag(ring->mac_key[0], kind, name, data, len, out + 1 + STORE_KEY_ID_LEN) != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: authenticating %s failed", name);
    return -EIO;
  }
  return 0;
}

int store__mac_check(const struct store_keyring *ring, const char *kind, const char *name,
                     const uint8_t *data, size_t len, const uint8_t *mac, size_t mac_len,
                     struct tp_err *err) {
  const char *why = NULL;
  const uint8_t *key = NULL;
  if (mac == NULL || mac_len != STORE_MAC_LEN || mac[0] != STORE_MAC_VERSION)
    why = "it carries no valid authentication tag";
  for (size_t i = 0; why == NULL && i < ring->n && key == NULL; i++)
    if (memcmp(ring->id[i], mac + 1, STORE_KEY_ID_LEN) == 0)
      key = ring->mac_key[i];
  if (why == NULL && key == NULL)
    why = "it is authenticated under a master key that is not the key given";
  uint8_t tag[STORE_MAC_TAG_LEN];
  if (why == NULL && mac_tag(key, kind, name, data, len, tag) != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: checking %s failed", name);
    return -EIO;
  }
  if (why == NULL && CRYPTO_memcmp(tag, mac + 1 + STORE_KEY_ID_LEN, STORE_MAC_TAG_LEN) != 0)
    why = "it was changed outside the server, or damaged";
  if (why == NULL)
    return 0;
  tp_err_set(err, GRPC_STATUS_DATA_LOSS, "store: %s failed its integrity check: %s", name, why);
  return -EBADMSG;
}
