/* The agent's cache directory (--cache-dir): what lets it serve while the
 * control plane is unreachable, and its identity.
 *
 *   state.pb        the served state: a tlsplane.v1.AgentState, binary
 *                   (0600: it holds private keys). See cache_state_pack
 *                   for what exactly it holds after a partial apply.
 *   snapshot.pb     the same as a tlsplane.v1.Snapshot, as agents before
 *                   protocol 2 wrote it: read at start when there is no
 *                   state.pb (an upgraded agent starts from its old
 *                   cache), removed once state.pb is written.
 *   agent-key.pem   the agent's private key (0600, never sent anywhere)
 *   agent.pem       its client certificate from the control-plane CA
 *   ca.pem          the CA the enrollment answered with (a copy)
 *
 * Every file is written atomically: a temporary file in the same
 * directory, fsync, rename over the old one, fsync of the directory. A
 * crash leaves the old file or the new one, never half of either. */
#ifndef TLSPLANE_AGENT_CACHE_H
#define TLSPLANE_AGENT_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.h"
#include "apply.h"
#include "error.h"
#include "rset.h"
#include "tlsplane/v1/snapshot.pb-c.h"

#define CACHE_STATE "state.pb"
#define CACHE_SNAPSHOT "snapshot.pb"
/* A cache file larger than this is refused (a snapshot holds key material
 * for every listener; anything larger is a mistake). */
#define CACHE_FILE_MAX (512u << 20)

/* Makes dir (mode 0700) if it does not exist; fails unless it is a
 * directory this process can write. */
int cache_dir_prepare(const char *dir, struct tp_err *err);

/* Writes dir/name atomically with mode (see above). When tmp_only, stops
 * after the fsync of "dir/name.new" (renamed later by cache_file_commit):
 * how two files are replaced together. */
int cache_file_write(const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                     int tmp_only, struct tp_err *err);
/* Renames dir/name.new over dir/name (and fsyncs the directory). */
int cache_file_commit(const char *dir, const char *name, struct tp_err *err);

/* Reads dir/name: 1 with *data (NUL-terminated, malloc'd; the caller
 * wipes and frees it) and *len, 0 when it does not exist, -1 with err. */
int cache_file_read(const char *dir, const char *name, char **data, size_t *len,
                    struct tp_err *err);
/* The same for a path. */
int cache_path_read(const char *path, char **data, size_t *len, struct tp_err *err);

/* Frees data after overwriting len bytes of it (key material). */
void cache_wipe_free(void *data, size_t len);

/* What the agent serves (served: struct agent's, kept by agent_apply),
 * packed as an AgentState at revision for state.pb:
 *
 * - every listener served, with the entry of the version it serves: the
 *   newest when it was applied, the previous one when its newest could
 *   not be (the served entry, not the desired one);
 * - nothing for a listener that failed and serves nothing, nor for
 *   dropped ones;
 * - every resource those entries use, once.
 *
 * Loading it at the next start therefore rebuilds exactly what was
 * served, including the old version of a listener whose newest version
 * could not be applied (invariant 2 survives a restart), and the hello
 * reports those entries, so that the server sends the newest again.
 * *out is malloc'd (caller wipes and frees). */
int cache_state_pack(const struct rset *served, int64_t revision, uint8_t **out, size_t *len);

/* Writes data (what cache_state_pack made) as dir/state.pb, atomically,
 * mode 0600, then removes an older agent's snapshot.pb. */
int cache_state_write(const char *dir, const void *data, size_t len, struct tp_err *err);

/* Loads the served state: dir/state.pb (AgentState: hashes verified,
 * every listener holding what it uses), else dir/snapshot.pb (a
 * Snapshot, rset_from_snapshot). 1 with *out (caller frees with rset_free)
 * and *revision, 0 when there is neither, -1 with err when the file
 * cannot be read or decoded. */
int cache_state_load(const char *dir, struct rset **out, int64_t *revision, struct tp_err *err);

#endif
