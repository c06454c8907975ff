/* The event fan-out behind AuditService.WatchEvents: resource changes
 * read from the audit log, and the events the server's own parts publish
 * (rollout outcomes from the hub; renewals, OCSP and CRL freshness from
 * the jobs), each put at a place (revision, sequence) of one ordered
 * stream and sent to every watch whose filters it passes.
 *
 * One thread, the module's own, does the work: woken by every committed
 * revision (events_notify), every published event and every watch that
 * starts or drained, it reads the new audit rows, numbers them and the
 * published events into its ring (the last EVENTS_RING events), then
 * brings each watch up to date: from the ring, or, for a watch that
 * resumes from before the ring, from the audit log page by page as its
 * stream drains. Watches hold no thread; sends never wait. */
#ifndef TLSPLANE_SERVER_EVENTS_H
#define TLSPLANE_SERVER_EVENTS_H

#include <stdint.h>

#include "api.h"
#include "tlsplane/v1/audit.pb-c.h"

struct events;

/* Events kept in memory for watches that resume (changes older than the
 * ring are read again from the audit log; other events are lost). */
#define EVENTS_RING 4096
/* Watches served at once; beyond, RESOURCE_EXHAUSTED. */
#define EVENTS_WATCHES_MAX 256
/* Bytes queued on a watch beyond which it is cut (RESOURCE_EXHAUSTED): its
 * client does not read; it may resume from the last event it received. */
#define EVENTS_QUEUE_MAX ((size_t)8 * 1024 * 1024)

/* Creates the fan-out over api->store and starts its thread. Caller frees
 * with events_free after the RPC server and the hub are freed (they hold
 * no watch then, and publish nothing). */
int events_new(struct api *api, struct events **out, struct tp_err *err);
void events_free(struct events *ev);

/* Registers AuditService/WatchEvents on srv. */
int events_register(struct events *ev, struct rpc_server *srv);

/* Wakes the thread: revision committed (the store's commit hook). Never
 * waits. NULL ev: nothing. */
void events_notify(struct events *ev, int64_t revision);

/* An event that is not a resource change, as its producer reports it. The
 * strings are copied (NULL: ""). */
struct events_event {
  Tlsplane__V1__EventType type; /* not RESOURCE_CHANGED: those come from the audit log */
  const char *resource;         /* "certificates/web"; for a nack, the listener */
  const char *listener;         /* ROLLOUT_NACK */
  const char *agent;            /* ROLLOUT_NACK */
  const char *reason;
  int64_t target_revision; /* ROLLOUT_*: the revision the agents were sent */
};

/* Publishes e: placed after every change committed so far, and sent to
 * the watches it concerns. Any thread; never waits (takes a short lock;
 * callers may hold theirs). A ROLLOUT_APPLIED at or below one already
 * published is dropped. NULL ev: nothing. */
void events_publish(struct events *ev, const struct events_event *e);

/* An agent acked revision: ROLLOUT_APPLIED is published once every
 * connected agent serves it, as checked at most every 100 ms (one walk of
 * the fleet per check, whatever the number of acks). Any thread; never
 * waits. NULL is a no-op. */
void events_rollout_check(struct events *ev, int64_t revision);

#endif
