/* The serialized google.protobuf.FileDescriptorSet of the whole API and
 * everything it imports, as protoc --include_imports writes it. Served by
 * grpc.reflection so that clients need no .proto files. */
#ifndef TLSPLANE_PROTO_DESCRIPTOR_SET_H
#define TLSPLANE_PROTO_DESCRIPTOR_SET_H

#include <stddef.h>

extern const unsigned char tlsplane_descriptor_set[];
extern const size_t tlsplane_descriptor_set_len;

#endif
