/* OpenSSL's allocator for the agent: a per-thread cache of TLS record
 * buffers.
 *
 * With SSL_MODE_RELEASE_BUFFERS (what keeps an idle connection small)
 * OpenSSL allocates a 16 KiB read or write buffer for every record that
 * passes and frees it right after: about 2,000 instructions of malloc and
 * free per keep-alive request, as glibc serves blocks of that size from its
 * bins, not from its per-thread cache. Here a thread keeps up to
 * RECBUF_CACHED freed blocks of that size class and hands them out again.
 * The same for one small class: OpenSSL 3.0's WPACKET allocates a 40-byte
 * sub-packet each time one starts and for each length prefix in it (4 per
 * keep-alive request), and glibc's malloc and free of one cost about 130
 * instructions. Every other allocation goes to malloc, realloc and free
 * unchanged.
 *
 * Telling a record buffer from any other block on free takes
 * malloc_usable_size; a handshake frees hundreds of blocks, so the check
 * is made only while the thread is "hot": around the SSL_read and SSL_write
 * calls of the data path, where RELEASE_BUFFERS frees one per record. */
#ifndef TLSPLANE_AGENT_RECBUF_H
#define TLSPLANE_AGENT_RECBUF_H

/* Requests of RECBUF_MIN to RECBUF_MAX bytes (OpenSSL 3.0's record
 * buffers: 16 KiB of payload plus headers and overhead) get blocks of
 * RECBUF_MAX bytes, which are cached when freed. */
#define RECBUF_MIN (16 * 1024)
#define RECBUF_MAX (20 * 1024)
/* Per thread: a worker's connections mostly take one record buffer at a
 * time, each returned before the callback ends. */
#define RECBUF_CACHED 8
/* Requests of RECBUF_SMALL_MIN to RECBUF_SMALL_MAX bytes (WPACKET_SUB: 40
 * bytes on 64-bit) get blocks of RECBUF_SMALL_MAX bytes, cached the same
 * way: the size of one glibc chunk class, so nothing is rounded up. A
 * record nests at most a few sub-packets. */
#define RECBUF_SMALL_MIN 25
#define RECBUF_SMALL_MAX 40
#define RECBUF_SMALL_CACHED 8

/* Makes these OpenSSL's allocation functions (CRYPTO_set_mem_functions).
 * Must run before anything else calls into OpenSSL; returns 0, or -1 when
 * OpenSSL has already allocated (nothing changed, malloc stays). */
int recbuf_install(void);

/* Between recbuf_hot(1) and recbuf_hot(0), record buffers and small
 * blocks the calling thread frees are kept. */
void recbuf_hot(int on);

/* Frees what the calling thread keeps. Threads that end run it by
 * themselves (a thread-specific destructor). */
void recbuf_thread_release(void);

#endif
