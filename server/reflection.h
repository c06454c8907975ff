/* gRPC server reflection (grpc.reflection.v1 and v1alpha), answered from
 * the FileDescriptorSet compiled into the binary (proto/descriptor_set.h),
 * so that grpcurl list/describe/call works with no .proto files at hand. */
#ifndef TLSPLANE_SERVER_REFLECTION_H
#define TLSPLANE_SERVER_REFLECTION_H

#include <stddef.h>

#include "rpc.h"

/* Indexes the compiled-in descriptor set (file names; fully-qualified
 * packages, messages with nested ones, enums, services, methods
 * "pkg.Service.Method", extensions) and registers
 * grpc.reflection.v1.ServerReflection and
 * grpc.reflection.v1alpha.ServerReflection on srv (before rpc_server_start).
 * list_services answers with services[0..n) (full names, copied) plus
 * grpc.health.v1.Health and the two reflection services, as grpc C++ does.
 * The index is freed by rpc_server_free. Returns 0, or a negative errno
 * (-EINVAL: the descriptor set does not parse, logged; -ENOMEM; or from
 * rpc_server_add_stream); after a failure srv must not be started, only
 * freed. */
int reflection_register(struct rpc_server *srv, const char *const *services, size_t n);

#endif
