/* The data directory: everything tlsplane-server keeps on disk.
 *
 *   tlsplane.db            the store (SQLite; secrets sealed under the master key)
 *   master.key       0600  the master key, base64 of 32 bytes (unless
 *                          TLSPLANE_MASTER_KEY gives it)
 *   master.key.new   0600  only while a master-key rotation is under way
 *   ca.pem                 the control-plane CA certificate
 *   ca-key.pem       0600  its key
 *   server.pem             the server's certificate (SANs localhost,
 *   server-key.pem   0600  127.0.0.1, ::1 and every --san), and its key
 *   admin.token      0600  the admin's bearer token (tokens/admin)
 *   admin.pem        0600  an admin client certificate, and its key
 *   admin-key.pem    0600
 *   schema-version   0600  the schema floor: the highest schema version the
 *                          store has run; a database with an older schema
 *                          is refused (an older copy put in its place)
 *
 * The first start (no ca.pem yet) makes all of them; ca.pem is written
 * last, so a first start that was interrupted starts over, and a directory
 * with ca.pem is initialised: its store holds the admin's credentials and
 * everything made since, so a start that finds tlsplane.db missing, empty
 * or without a revision is refused (restore a backup, or init --force,
 * which moves the store aside and makes new admin credentials). Later
 * starts reissue the server certificate when it is missing, expires within
 * 30 days, or its SANs changed. Every file is written whole (a temporary
 * file, fsync, rename, fsync of the directory).
 *
 * With a PostgreSQL store (datadir_opts.store) tlsplane.db is neither
 * made nor looked for: the database holds what it would. Several servers
 * of one deployment share the database, each with its own directory
 * holding copies of the same master key, CA and admin credentials.
 *
 * Modes: the directory is narrowed to 0700 and the store's files
 * (tlsplane.db, -wal, -shm) to 0600 whenever they are opened, each change
 * logged (their secrets are sealed: narrowing closes the hole). Secret
 * files in the clear must not be readable by group or others: the server
 * refuses to start otherwise (their content may have been read).
 *
 * One process at a time: the directory is locked (flock) by the server, by
 * rotate-master-key and by init. backup only reads, beside a server.
 *
 * Master-key rotation is crash-safe: the new key is first written to
 * master.key.new; every secret is re-sealed under it in one transaction;
 * only then does master.key.new replace master.key. Until that rename the
 * old key still opens the store (before the commit) and the new one is on
 * disk (after it); a server that finds master.key.new finishes the
 * rotation before it serves. */
#ifndef TLSPLANE_SERVER_DATADIR_H
#define TLSPLANE_SERVER_DATADIR_H

#include <stddef.h>

#include "api.h"
#include "error.h"
#include "store.h"

struct datadir;

struct datadir_opts {
  const char *dir;
  const char *const *sans; /* names and addresses for the server certificate beyond the defaults */
  size_t n_sans;
  int init; /* tlsplane-server init: the server certificate is neither loaded nor made */
  /* The store: NULL for DIR/tlsplane.db (SQLite), or a postgres:// URI
   * (copied; may hold a password, never shown): the store is that
   * PostgreSQL database, and the directory keeps the rest (the master
   * key, the CA, the certificates, the schema floor). */
  const char *store;
};

/* Opens (creating, mode 0700) and locks the data directory, and loads or
 * makes in memory the master key, the CA and the server certificate.
 * Nothing is written yet. Caller frees with datadir_close. */
int datadir_open(const struct datadir_opts *opts, struct datadir **out, struct tp_err *err);

/* Whether the directory was initialised: its first start completed
 * (ca.pem, the last file it writes, is there). */
int datadir_initialised(const struct datadir *dd);

/* Opens the store (tlsplane.db, or datadir_opts.store) under the master key, refusing one older
 * than schema-version, not a tlsplane database, newer than this build, or sealed under another key
 * (each refusal says how to recover), and raises schema-version to the schema it opened. Writes
 * master.key first when it was just made (removed again when the database turns out to be sealed
 * under another key), and finishes an interrupted master-key rotation.
 * Gives the store files mode 0600 first (logging each change). Refused
 * (FAILED_PRECONDITION, saying how to recover) when the directory was
 * initialised and the database is missing, empty, or holds no revision:
 * nothing is created then. A PostgreSQL store has no file to check: only
 * "holds no revision" applies, found once the store opened (an empty
 * database has the empty tables then). Caller closes *out with store_close. */
int datadir_store_open(struct datadir *dd, struct store **out, struct tp_err *err);

/* tlsplane-server init --force: moves the store's files aside
 * (tlsplane.db.discarded-<UTC time>, and its -wal and -shm; empty files
 * are removed), so that datadir_store_open makes a new store and
 * datadir_init new admin credentials. The CA, the master key and the
 * server certificate stay. moved receives the new name of tlsplane.db
 * ("" when there was nothing to keep). Refused (FAILED_PRECONDITION) for a
 * PostgreSQL store: its database is the operator's to drop and create. */
int datadir_store_discard(struct datadir *dd, char *moved, size_t len, struct tp_err *err);

/* Writes what datadir_open made: on the first start (and after
 * datadir_store_discard) the admin credentials (tokens/admin and an admin
 * client certificate, recorded in api's store, which api->ca must be this
 * directory's CA); on the first start the CA files; the server
 * certificate when it was (re)issued. */
int datadir_init(struct datadir *dd, struct api *api, struct tp_err *err);

struct ca *datadir_ca(struct datadir *dd);
const char *datadir_server_cert_pem(const struct datadir *dd);
const char *datadir_server_key_pem(const struct datadir *dd);
/* Wipes the keys and unlocks. NULL is a no-op. */
void datadir_close(struct datadir *dd);

/* tlsplane-server backup: a consistent copy of dir's database (the online
 * backup, safe while a server runs: store_backup) and of the files a
 * restore needs (ca.pem, ca-key.pem, admin.token, admin.pem,
 * admin-key.pem) into dest, a new or empty directory (0700; files 0600,
 * ca.pem 0644), with backup.json (revision, schema version, the ids of the
 * master keys that sealed the copy, its files) and SHA256SUMS. Never the
 * master key: the sealed secrets in the copy open only with it, so it is
 * kept apart. Refused during a master-key rotation, for a directory
 * with no database, and for a PostgreSQL store (store: a postgres:// URI;
 * NULL: tlsplane.db), which pg_dump copies. info receives what was
 * copied. */
int datadir_backup(const char *dir, const char *store, const char *dest,
                   struct store_backup_info *info, struct tp_err *err);

/* tlsplane-server rotate-master-key: re-seals every secret of dir's store
 * under a new master key (from master.key.new, made here unless a rotation
 * was interrupted; or, when TLSPLANE_MASTER_KEY gives the current key,
 * from TLSPLANE_NEW_MASTER_KEY), then installs it as master.key. The
 * server must not be running. On success fills the ids (hex) of the old
 * and new keys and how many secrets were re-sealed. store: a postgres://
 * URI, or NULL for tlsplane.db; on PostgreSQL no server of the deployment
 * may run, and every other server's directory needs the new master.key
 * before it starts again. */
int datadir_rotate_master_key(const char *dir, const char *store, char old_id[17], char new_id[17],
                              size_t *n, struct tp_err *err);

#endif
