/* kvcp_raw.h - a client that speaks proto/kvcp.h directly, for what libkvcclient never sends:
 * malformed attach requests, and ring entries and indices written by hand (the tests,
 * kvc-chaos). Header-only; needs kvcp.h's directory on the include path. */
#ifndef KVCP_RAW_H
#define KVCP_RAW_H

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "kvcp.h"

struct kvcp_raw {
	int sock;
	struct kvcp_shm_hdr *hdr;
	size_t ctrl_size, staging_size;
	char *staging;
	uint32_t sq_prod, sq_cons_cache, cq_cons;
};

/* A valid attach request for namespace @ns with 1 MiB of staging. */
static inline struct kvcp_attach_req kvcp_raw_request(const char *ns)
{
	struct kvcp_attach_req req = { .magic32 = KVCP_ATTACH_MAGIC,
				       .major = KVCP_MAJOR,
				       .minor = KVCP_MINOR,
				       .staging_size = 1 << 20,
				       .numa_node = -1 };

	snprintf(req.ns, sizeof(req.ns), "%s", ns);
	return req;
}

/* Send @req (NULL: a valid one for namespace "default") and return the reply's status, or
 * -errno; on success the two segments are mapped into @r. The socket stays open after a
 * refusal (a test may read what else kvcd says); kvcp_raw_close() releases everything. */
static inline int kvcp_raw_attach(const char *sock, const struct kvcp_attach_req *req,
				  struct kvcp_raw *r)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct kvcp_attach_req def = kvcp_raw_request("default");
	struct kvcp_attach_rep rep = { 0 };
	char cbuf[CMSG_SPACE(2 * sizeof(int))];
	struct iovec iov = { &rep, sizeof(rep) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct timeval tv = { 5, 0 };
	struct cmsghdr *cm;
	int fds[2];

	memset(r, 0, sizeof(*r));
	r->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	setsockopt(r->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(r->sock, (struct sockaddr *)&sa, sizeof(sa)))
		return -errno;
	if (send(r->sock, req ? req : &def, sizeof(def), MSG_NOSIGNAL) != (ssize_t)sizeof(def))
		return -errno;
	if (recvmsg(r->sock, &mh, 0) != (ssize_t)sizeof(rep))
		return -ECONNRESET;
	if (rep.status)
		return rep.status;
	cm = CMSG_FIRSTHDR(&mh);
	if (!cm || cm->cmsg_type != SCM_RIGHTS)
		return -EBADMSG;
	memcpy(fds, CMSG_DATA(cm), sizeof(fds));
	r->ctrl_size = rep.ctrl_size;
	r->staging_size = rep.staging_size;
	r->hdr = mmap(NULL, rep.ctrl_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	r->staging = mmap(NULL, rep.staging_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
	close(fds[0]);
	close(fds[1]);
	if (r->hdr == MAP_FAILED)
		r->hdr = NULL;
	if (r->staging == MAP_FAILED)
		r->staging = NULL;
	if (!r->hdr || !r->staging)
		return -ENOMEM;
	return kvcp_hdr_validate(r->hdr, r->ctrl_size);
}

static inline void kvcp_raw_close(struct kvcp_raw *r)
{
	if (r->hdr)
		munmap(r->hdr, r->ctrl_size);
	if (r->staging)
		munmap(r->staging, r->staging_size);
	if (r->sock >= 0)
		close(r->sock);
	r->hdr = NULL;
	r->staging = NULL;
	r->sock = -1;
}

#endif /* KVCP_RAW_H */
