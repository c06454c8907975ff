/* `tlsplane-server call`: one unary call of the API from the command line,
 * request and response in protobuf's JSON mapping (what grpcurl does, for
 * machines without grpcurl: scripts, `make run`). */
#ifndef TLSPLANE_SERVER_CALL_H
#define TLSPLANE_SERVER_CALL_H

/* argv[0] is "call". Returns the exit status: 0 when the call succeeded
 * (the response printed on stdout), 1 when it failed (the status on
 * stderr), 2 on bad usage. */
int call_main(int argc, char **argv);

#endif
