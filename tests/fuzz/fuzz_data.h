/* Fixtures the targets start from (tests/fuzz/data/, made by
 * make-seeds.js), compiled in by proto/embed.cmake. Not NUL-terminated:
 * use the lengths. */
#ifndef TLSPLANE_FUZZ_DATA_H
#define TLSPLANE_FUZZ_DATA_H

#include <stddef.h>
#include <stdint.h>

/* data/listener.json: the ResolvedListener fuzz_tls_server serves. */
extern const unsigned char fuzz_data_listener[];
extern const size_t fuzz_data_listener_len;
/* data/ocsp-leaf.pem, data/ocsp-issuer.pem: the certificate the OCSP
 * seeds answer for, and its issuer. */
extern const unsigned char fuzz_data_ocsp_leaf[];
extern const size_t fuzz_data_ocsp_leaf_len;
extern const unsigned char fuzz_data_ocsp_issuer[];
extern const size_t fuzz_data_ocsp_issuer_len;
/* data/agent-key.pem: the agent key the AgentCertificate seeds certify. */
extern const unsigned char fuzz_data_agent_key[];
extern const size_t fuzz_data_agent_key_len;

#endif
