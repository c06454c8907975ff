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
 * damaged record. */
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

#define KEY_ID_LABEL "tlsplane master key id"

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

int store__keyring_add(struct store_keyring *ring, const uint8_t key[STORE_MASTER_KEY_LEN]) {
  uint8_t id[STORE_KEY_ID_LEN];
  store_master_key_id(key, id);
  for (size_t i = 0; i < ring->n; i++)
    if (memcmp(ring->id[i], id, STORE_KEY_ID_LEN) == 0)
      return 0; /* the same key twice */
  if (ring->n == STORE_KEYS_MAX)
    return -ENOSPC;
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
