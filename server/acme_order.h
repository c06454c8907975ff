/* Certificates from ACME issuers (RFC 8555 orders, RFC 8737 tls-alpn-01
 * answered by the fleet, dns-01 by the server's DNS hook, acme_dns.h).
 *
 * IssueCertificate with an ACME issuer creates the Certificate at once,
 * with no chain yet and a pending request (csr.h: a key the server made
 * and keeps sealed, and its CSR), and the renewal job hands the order to
 * an order thread (jobs_order_submit), never the API's thread nor a fetch
 * thread: newOrder; per authorization its tls-alpn-01 challenge
 * certificate, stored with store_challenges_set (its key sealed like
 * every secret) in one revision, which the push hub sends to every
 * listener that serves the name (fleet.h); a wait (bounded) until the
 * connected agents applied that revision; the challenge answered; the
 * authorization polled (Retry-After honoured, bounded) until valid or
 * invalid; the challenge rows deleted (one revision); then finalize with
 * the pending request's CSR, the order polled, the chain downloaded and
 * attached to the certificate (one revision: the pending key becomes the
 * serving key).
 * A renewal first re-keys the certificate (a new pending request) while
 * the old chain keeps serving, and its newOrder names the certificate it
 * replaces (RFC 9773 5, when the CA offers renewalInfo). A completed
 * order leaves the new chain's renewal information to check (acme_ari.h).
 *
 * The challenge of each pending authorization: tls-alpn-01 when a
 * listener serves the name (fleet_world_serves) and it is no wildcard;
 * otherwise dns-01 when the server has a DNS hook (api->acme_dns_hook),
 * whose "present" runs for each such name (on the order's thread) after
 * the agents hold the tls-alpn-01 certificates and before the CA is told
 * the challenges are ready, and whose "cleanup" runs for each name
 * "present" ran for, whatever the outcome; otherwise the order fails.
 * The choice is recorded as the authorization's challenge_type.
 *
 * One name, one challenge out at a time across certificates (two
 * certificates' tls-alpn-01 certificates for one name would meet on the
 * same listeners, their dns-01 values in the same record): every
 * challenge, dns-01's too, is a row of the store's challenges while it is
 * out. An order whose names another certificate has a challenge out for
 * waits: checked before newOrder, and again in the transaction that
 * writes its own rows. It is then recorded on the certificate
 * (acme_order.last_error "waiting: certificates/X has a challenge out for
 * NAME") and tried again after ACME_ORDER_WAITING_RETRY_MS, not counted
 * as a failure.
 *
 * The order's state is written on the certificate as it goes
 * (Certificate.acme_order); a failure (an ACME problem, a transport
 * failure, "no listener serves NAME", the DNS hook's) is recorded there
 * and on the renewal fields, and retried with back-off (jobs_backoff, from
 * ISSUANCE_RETRY_BASE_MS, or the ACME server's Retry-After when longer). */
#ifndef TLSPLANE_SERVER_ACME_ORDER_H
#define TLSPLANE_SERVER_ACME_ORDER_H

#include "api.h"
#include "store.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/issuer.pb-c.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* Bounds of one order's steps. */
#define ACME_ORDER_FLEET_WAIT_MS (60 * 1000)   /* for the agents to hold a challenge */
#define ACME_ORDER_AUTHZ_WAIT_MS (120 * 1000)  /* for the authorizations to settle */
#define ACME_ORDER_FINAL_WAIT_MS (120 * 1000)  /* for the order to become valid */
#define ACME_ORDER_POLL_MAX_MS (10 * 1000)     /* between two polls at most */
#define ACME_ORDER_WAITING_RETRY_MS (2 * 1000) /* after waiting for another's challenge */
#define ACME_ORDER_METHOD "job:acme-order"

struct jobs;

/* Checks an IssueCertificate request for an ACME issuer: the issuer's
 * account must be valid (FAILED_PRECONDITION naming issuer), the names
 * DNS names (INVALID_ARGUMENT naming ip_addresses[0]: neither challenge
 * validates an IP address), and wildcards only when dns_hook (the
 * server has a DNS hook, acme_dns.h: INVALID_ARGUMENT naming
 * dns_names[i] otherwise). */
int acme_order_check(const Tlsplane__V1__Issuer *is, const Tlsplane__V1__IssueCertificateRequest *r,
                     int dns_hook, struct tp_err *err);

/* The pending request of a certificate from an ACME issuer: a new key of
 * iss->key_algorithm and its CSR for iss's names. As csr_request_make. */
int acme_order_request_make(const Tlsplane__V1__Issuance *iss, time_t now, char **key_pem,
                            Tlsplane__V1__PendingRequest **pr, struct tp_err *err);

/* Hands the order of certificate `name` to the order threads (once: not
 * while one for it is queued or running; not while their queue is full,
 * the certificate staying due). jobs NULL: runs it now, on the calling
 * thread. */
void acme_order_submit(struct api *api, struct jobs *jobs, const char *name);

/* A pending challenge as the store holds it (store_challenges_list: its
 * data a packed AcmeChallengeMaterial without the key, its secret the
 * key's PEM) as the material agents get: *out (caller wipes
 * private_key_pem and frees with protobuf_c_message_free_unpacked). -1
 * when it does not decode, or is a dns-01 challenge's (no certificate:
 * nothing for the agents). */
int acme_challenge_material(const struct store_challenge *c,
                            Tlsplane__V1__AcmeChallengeMaterial **out);

#endif
