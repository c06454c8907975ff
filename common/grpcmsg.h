/* protobuf-c messages in grpc core byte buffers: the one place both the
 * server (server/rpc.c) and the client (common/gclient.c) pack and unpack. */
#ifndef TLSPLANE_COMMON_GRPCMSG_H
#define TLSPLANE_COMMON_GRPCMSG_H

#include <grpc/byte_buffer.h>
#include <protobuf-c/protobuf-c.h>

/* Packs msg into a new byte buffer; caller destroys it with
 * grpc_byte_buffer_destroy. */
grpc_byte_buffer *grpcmsg_encode(const ProtobufCMessage *msg);

/* Unpacks bb (any compression undone) as a desc message and destroys bb.
 * NULL when bb cannot be read or is not such a message; otherwise the
 * caller frees with protobuf_c_message_free_unpacked(msg, NULL). */
ProtobufCMessage *grpcmsg_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc);

#endif
