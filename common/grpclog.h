/* grpc core's own log lines, through ours (log.h). */
#ifndef TLSPLANE_COMMON_GRPCLOG_H
#define TLSPLANE_COMMON_GRPCLOG_H

/* Sends every line grpc core logs through log_msg: the same format as ours,
 * component "grpc", the text escaped (it can quote what a client sent, such
 * as the server name of a TLS handshake), at most GRPCLOG_BURST lines a
 * second (beyond, they are counted and the count is logged). grpc's own
 * errors are mostly about peers (a failed handshake), so they come out as
 * warnings. Verbosity: GRPC_VERBOSITY when set, else everything at log
 * level debug (log_level_set) and errors only above it. Call before
 * grpc_init, and again once the log level is set: the second call only
 * follows the level. */
void grpclog_route(void);

#endif
