/* The ALPN extension of a ClientHello (RFC 7301, section 3.1), read as a
 * pure function over its bytes: they come from the client, unchecked
 * (SSL_client_hello_get0_ext gives the extension's body as sent).
 *
 *   opaque ProtocolName<1..2^8-1>;
 *   struct { ProtocolName protocol_name_list<2..2^16-1> } ProtocolNameList;
 *
 * The agent uses it in its client hello callback, before OpenSSL has
 * parsed the extension itself, to tell an ACME tls-alpn-01 validation
 * (RFC 8737: the list is exactly "acme-tls/1") from every other client. */
#ifndef TLSPLANE_COMMON_ALPN_H
#define TLSPLANE_COMMON_ALPN_H

#include <stddef.h>
#include <stdint.h>

/* The protocol an ACME tls-alpn-01 validation offers, alone. */
#define ALPN_ACME_TLS_1 "acme-tls/1"

/* Whether the extension body ext[0..len) is a well-formed
 * ProtocolNameList (a 2-byte length equal to the rest, at least one name,
 * each name 1..255 bytes inside the list) that lists exactly one protocol,
 * proto[0..proto_len) (compared byte for byte). 1: it is exactly that
 * list; 0: well formed, another list; -1: malformed (OpenSSL's own parser
 * then refuses the ClientHello). Reads nothing outside ext[0..len); ext
 * may be NULL when len is 0. */
int alpn_ext_is_only(const uint8_t *ext, size_t len, const uint8_t *proto, size_t proto_len);

#endif
