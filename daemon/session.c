/* session.c - the shared segments of one attached client.
 *
 * Two memfds per client, created by the daemon and sealed against resizing before they are
 * handed out, so a client can neither shrink a segment under the daemon (SIGBUS) nor reach
 * anything but its own rings and staging bytes:
 *   control: struct kvcp_shm_hdr | SQ entries | CQ entries | scratch area
 *   staging: the bytes STORE reads and FETCH writes
 * Pages are allocated here (fallocate) so they are charged to the daemon, on the node the
 * session's blocks go to first (the client's, or its GPU's): every STORE and FETCH copies
 * between the staging and those blocks, and the client reads and writes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvcd.h"

#define PAGE	       4096ull
#define ROUND_UP(x, a) (((x) + (a)-1) / (a) * (a))

/* A sealed memfd of @size bytes mapped at *@map, its pages allocated on OS node @node when it
 * can be had (-1: wherever the kernel puts them). The policy is the file's own (shmem's
 * shared policy, set through the mapping before fallocate allocates), and only preferred: a
 * node out of memory, or one the kernel does not know, costs locality, never the attach. */
static int make_segment(const char *name, size_t size, int node, int *fd, void **map)
{
	int err;

	*map = MAP_FAILED;
	*fd = kvcd_os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (*fd < 0)
		return -errno;
	if (kvcd_os.ftruncate(*fd, (off_t)size)) {
		err = -errno;
		goto out_close;
	}
	*map = kvcd_os.mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	if (*map == MAP_FAILED) {
		err = -errno;
		goto out_close;
	}
	if (node >= 0 && kvcd_mbind_node(*map, size, MPOL_PREFERRED, node))
		kvcd_log(LOG_DEBUG, "%s: could not prefer node %d: %s", name, node,
			 strerror(errno));
	if (kvcd_os.fallocate(*fd, 0, 0, (off_t)size) ||
	    fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		err = -errno;
		goto out_unmap;
	}
	/* kvcd's page tables too, as MAP_POPULATE would (kernels before 5.14 fault them in at
	 * first use instead) */
	kvcd_os.madvise(*map, size, MADV_POPULATE_WRITE);
	return 0;
out_unmap:
	kvcd_os.munmap(*map, size);
	*map = MAP_FAILED;
out_close:
	close(*fd);
	*fd = -1;
	return err;
}

/* The OS node a session's staging goes on: that of the first pool its blocks go to. */
static int staging_node(const struct kvcd *d, const struct kvcd_session *s)
{
	if (!s->norder || s->order[0] >= d->topo.nnodes || d->topo.nnodes < 2)
		return -1; /* one node: nothing to choose */
	return d->topo.os_index[s->order[0]];
}

static void init_header(struct kvcd *d, struct kvcd_session *s)
{
	struct kvcp_shm_hdr *h = s->hdr;
	const struct kvcd_config *c = &d->cfg;

	h->major = KVCP_MAJOR;
	h->minor = KVCP_MINOR;
	h->hdr_size = sizeof(*h);
	h->compat = (c->checksum ? KVCP_COMPAT_CHECKSUM : 0) | (s->phase ? KVCP_COMPAT_PHASE : 0);
	h->boot_token = d->boot_token;
	h->client_id = s->id;
	h->sq_entries = s->sq_entries;
	h->cq_entries = s->cq_entries;
	h->sq_off = ROUND_UP(sizeof(*h), 64);
	h->cq_off = h->sq_off + (uint64_t)s->sq_entries * sizeof(struct kvcp_sqe);
	h->scratch_off = ROUND_UP(h->cq_off + (uint64_t)s->cq_entries * sizeof(struct kvcp_cqe),
				  PAGE);
	h->scratch_size = c->scratch_size;
	h->ctrl_size = s->ctrl_size;
	h->staging_size = s->staging_size;
	s->sq = (struct kvcp_sqe *)((char *)h + h->sq_off);
	s->cq = (struct kvcp_cqe *)((char *)h + h->cq_off);
	s->scratch = (char *)h + h->scratch_off;
	s->scratch_size = c->scratch_size;
	/* R0: publish last; a client that sees the magic sees every field above */
	kvcp_store_release(&h->magic, KVCP_MAGIC);
}

int kvcd_session_create(struct kvcd *d, const struct kvcp_attach_req *req, size_t staging,
			struct kvcd_session *s, int fds[2])
{
	const struct kvcd_config *c = &d->cfg;
	uint64_t rings;
	void *map;
	int err;

	fds[0] = fds[1] = -1;
	s->sq_entries = c->sq_entries;
	s->cq_entries = c->cq_entries;
	rings = ROUND_UP(sizeof(struct kvcp_shm_hdr), 64) +
		(uint64_t)(s->sq_entries + s->cq_entries) * 64;
	s->ctrl_size = ROUND_UP(ROUND_UP(rings, PAGE) + c->scratch_size, PAGE);
	s->staging_size = ROUND_UP(staging, PAGE);
	/* a GPU client's blocks go to the node nearest the first device it asked for (0: the
	 * first kvcd found with a known node), and so does its staging */
	s->norder = kvcd_topo_order(&d->topo, req->cpus,
				    req->flags & KVCP_ATTACH_F_GPU
					    ? kvcd_gpu_node(&d->gpu,
							    req->gpu_mask ? req->gpu_mask : ~0ull,
							    req->numa_node)
					    : req->numa_node,
				    s->order);
	err = make_segment("kvcd-ctrl", s->ctrl_size, staging_node(d, s), &fds[0], &map);
	if (err)
		return err;
	s->hdr = map;
	err = make_segment("kvcd-staging", s->staging_size, staging_node(d, s), &fds[1], &map);
	if (err)
		goto out_ctrl;
	s->staging = map;
	s->phase = req->flags & KVCP_ATTACH_F_PHASE;
	init_header(d, s);
	return 0;
out_ctrl:
	kvcd_os.munmap(s->hdr, s->ctrl_size);
	s->hdr = NULL;
	close(fds[0]);
	fds[0] = -1;
	return err;
}

void kvcd_session_destroy(struct kvcd_session *s)
{
	if (s->cont.rget) /* a remote get still out for this session */
		kvcd_rget_release(s->cont.rget);
	s->cont.rget = NULL;
	if (s->cont.cjob) /* a CALIBRATE still learning for this session */
		kvcd_cal_release(s->cont.cjob);
	s->cont.cjob = NULL;
	if (s->hdr)
		kvcd_os.munmap(s->hdr, s->ctrl_size);
	if (s->staging)
		kvcd_os.munmap(s->staging, s->staging_size);
	if (s->sock >= 0)
		close(s->sock);
	if (s->pidfd >= 0)
		close(s->pidfd);
	s->hdr = NULL;
	s->staging = NULL;
	s->sock = s->pidfd = -1;
}
