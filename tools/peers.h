/* peers.h - what kvcbench measures kvcd against, behind one small interface: Redis over a
 * UNIX socket (hiredis, as LMCache's remote backend talks to it) and a minimal
 * request/response server over a UNIX socket written for the benchmark (tools/peers.c).
 *
 * A peer stores, returns and deletes byte strings under 64-bit keys. get() checks the
 * length it got and leaves the bytes where the peer's client library put them (hiredis'
 * reply, the socket server's receive buffer): no copy is charged to a peer that an engine
 * could avoid. */
#ifndef KVC_PEERS_H
#define KVC_PEERS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct peer;

struct peer_ops {
	const char *name;
	/* Connect to @addr (a UNIX socket path). NULL with a message on stderr on failure. */
	struct peer *(*open)(const char *addr, size_t max_value);
	int (*nop)(struct peer *p);
	int (*set)(struct peer *p, uint64_t key, const void *buf, size_t n);
	/* Get @key, which must be @n bytes long; *out points at them until the next call. */
	int (*get)(struct peer *p, uint64_t key, size_t n, const void **out);
	int (*del)(struct peer *p, uint64_t key);
	void (*close)(struct peer *p);
};

extern const struct peer_ops peer_redis, peer_sock;

/* Fork the minimal socket server listening on @path. Returns its pid or -errno; stop it
 * with peer_sock_stop(), which kills it and waits for it. */
pid_t peer_sock_start(const char *path);
void peer_sock_stop(pid_t pid);

#endif
