/* client.c - libkvcclient: attach, rings, waiting, re-attach after a daemon restart.
 *
 * The client owns the SQ producer index and the CQ consumer index of its two rings and keeps
 * private copies of both; it never trusts the daemon-owned indices beyond a range check.
 * Completions that arrive while a synchronous call waits for its own ticket are stashed and
 * returned later by kvc_poll/kvc_wait, in order.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdbool.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvc.h"
#include "../proto/kvcp.h"
#include "gpu.h"

static_assert(sizeof(struct kvc_key) == sizeof(struct kvcp_key), "key ABI");
static_assert(sizeof(struct kvc_layout) == sizeof(struct kvcp_layout), "layout ABI");
static_assert(sizeof(struct kvc_stats) == sizeof(struct kvcp_stats), "stats ABI");
static_assert(sizeof(struct kvc_block_info) == sizeof(struct kvcp_list_ent), "list ABI");
static_assert(sizeof(struct kvc_client_info) == sizeof(struct kvcp_client_ent), "client ABI");
static_assert(KVCP_OP_STATS_N == 13, "kvc_stats.op has 13 entries");
static_assert(sizeof(struct kvc_select_hit) == sizeof(struct kvcp_select_hit), "select ABI");
static_assert(KVC_REQ_SCORES == KVCP_SQE_F_SCORES, "scores flag");
static_assert(KVC_REQ_PARENT == KVCP_SQE_F_PARENT, "parent flag");
static_assert(KVC_REQ_GPU == KVCP_SQE_F_GPU, "GPU flag");
static_assert(offsetof(struct kvc_req, gpu) == offsetof(struct kvcp_sqe, gpu), "request's device");
static_assert(KVC_REQ_AUX == KVCP_SQE_F_AUX && KVC_AUX_MAGIC == KVCP_AUX_MAGIC &&
		      KVC_AUX_ATTN == KVCP_AUX_ATTN && KVC_AUX_QUERIES == KVCP_AUX_QUERIES,
	      "aux ABI");
static_assert(sizeof(struct kvc_aux) == sizeof(struct kvcp_aux), "aux ABI");
static_assert(sizeof(struct kvc_sparse) == sizeof(struct kvcp_sparse) &&
		      KVC_SPARSE_MAGIC == KVCP_SPARSE_MAGIC &&
		      KVC_CODEC_SPARSE == KVCP_CODEC_SPARSE,
	      "sparse ABI");
static_assert(offsetof(struct kvc_stats, ns) == offsetof(struct kvcp_stats, ns), "ns stats ABI");
static_assert(offsetof(struct kvc_stats, ns_ext) == offsetof(struct kvcp_stats, ns_ext) &&
		      offsetof(struct kvc_stats, op_hist) == offsetof(struct kvcp_stats, op_hist) &&
		      sizeof(struct kvc_stats) == sizeof(struct kvcp_stats),
	      "0.4 stats ABI");
static_assert(offsetof(struct kvc_stats, gpu) == offsetof(struct kvcp_stats, gpu) &&
		      offsetof(struct kvc_stats, gpu_use) == offsetof(struct kvcp_stats, gpu_use) &&
		      sizeof(((struct kvc_stats *)0)->gpu_use[0]) == sizeof(struct kvcp_gpu_use),
	      "0.6 stats ABI");
static_assert(offsetof(struct kvc_stats, op_more) == offsetof(struct kvcp_stats, op_more) &&
		      offsetof(struct kvc_stats, recompress) ==
			      offsetof(struct kvcp_stats, recompress) &&
		      KVC_RECOMPRESS_MAX_KEYS == KVCP_RECOMPRESS_MAX_KEYS,
	      "recompress ABI");
static_assert(offsetof(struct kvc_stats, ns_bases) == offsetof(struct kvcp_stats, ns_bases) &&
		      sizeof(((struct kvc_stats *)0)->ns_bases[0]) == sizeof(struct kvcp_ns_bases),
	      "0.7 stats ABI");
static_assert(offsetof(struct kvc_stats, gpu_pool) == offsetof(struct kvcp_stats, gpu_pool) &&
		      sizeof(((struct kvc_stats *)0)->gpu_pool[0]) == sizeof(struct kvcp_gpu_pool),
	      "0.9 stats ABI");

struct kvc_client {
	int sock;
	int dead; /* the daemon went away; re-attach before the next request */
	struct kvc_attach_opts opts;
	char sockpath[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char ns[KVCP_NS_MAX];

	struct kvcp_shm_hdr *hdr; /* control segment: header, rings, scratch */
	size_t ctrl_size;
	struct kvcp_sqe *sq;
	struct kvcp_cqe *cq;
	uint32_t sq_entries, cq_entries;
	void *scratch;
	size_t scratch_size;
	void *staging;
	size_t staging_size;

	uint32_t sq_prod, sq_cons_cache, cq_cons;
	bool phase;    /* phase-tagged ring entries (KVCP_COMPAT_PHASE) */
	bool no_phase; /* the daemon refused to tag them (before 2.6): not asked again */
	uint64_t next_ticket;
	uint64_t boot_token;

	struct kvcp_cqe *stash; /* completions reaped while waiting for another ticket */
	uint32_t stash_head, stash_n, stash_cap;
	uint64_t *cancelled; /* tickets of timed-out calls: their completions are dropped */
	uint32_t ncancelled;
	struct kvcp_spin spin; /* whether a wait spins (opts.spin_us at most) or sleeps at once */
	uint32_t hint;	       /* what cq.hint says (KVCP_HINT_*) */
	uint64_t gpu_mask;     /* devices with GPU staging mapped */
	struct kvcc_gpu gpu[KVCP_MAX_GPUS];
};

unsigned kvc_version(void)
{
	return KVC_VERSION_MAJOR << 16 | KVC_VERSION_MINOR << 8 | KVC_VERSION_PATCH;
}

size_t kvc_layout_bytes(const struct kvc_layout *l)
{
	return kvcp_layout_bytes((const struct kvcp_layout *)l);
}

uint64_t kvc_aux_bytes(const struct kvc_aux *a, const struct kvc_layout *l)
{
	return kvcp_aux_bytes((const struct kvcp_aux *)a, (const struct kvcp_layout *)l);
}

const char *kvc_default_socket(void)
{
	static __thread char buf[108];
	const char *env = getenv("KVCD_SOCKET");
	const char *xdg;

	if (env && *env)
		return env;
	if (access("/run/kvcd/kvcd.sock", F_OK) == 0)
		return "/run/kvcd/kvcd.sock";
	xdg = getenv("XDG_RUNTIME_DIR");
	if (xdg && *xdg && snprintf(buf, sizeof(buf), "%s/kvcd.sock", xdg) < (int)sizeof(buf) &&
	    access(buf, F_OK) == 0)
		return buf;
	return "/tmp/kvcd.sock";
}

__asm__(".symver kvc_attach_opts_init_0_6, kvc_attach_opts_init@@KVC_0.6");
__asm__(".symver kvc_attach_0_6, kvc_attach@@KVC_0.6");
void kvc_attach_opts_init_0_6(struct kvc_attach_opts *o);
int kvc_attach_0_6(const struct kvc_attach_opts *o, kvc_client **out);

void kvc_attach_opts_init_0_6(struct kvc_attach_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->numa_node = -1;
}

/* ---- releases 0.4 and 0.5's kvc_attach_opts: without the GPU fields -------------------------- */
#define ATTACH_OPTS_SIZE_0_4 offsetof(struct kvc_attach_opts, gpu)

__asm__(".symver kvc_attach_opts_init_0_4, kvc_attach_opts_init@KVC_0.4");
__asm__(".symver kvc_attach_0_4, kvc_attach@KVC_0.4");
void kvc_attach_opts_init_0_4(void *o);
int kvc_attach_0_4(const void *o, kvc_client **out);

void kvc_attach_opts_init_0_4(void *o)
{
	struct kvc_attach_opts x;

	kvc_attach_opts_init_0_6(&x);
	memcpy(o, &x, ATTACH_OPTS_SIZE_0_4);
}

int kvc_attach_0_4(const void *o, kvc_client **out)
{
	struct kvc_attach_opts x;

	kvc_attach_opts_init_0_6(&x);
	if (o)
		memcpy(&x, o, ATTACH_OPTS_SIZE_0_4);
	return kvc_attach_0_6(o ? &x : NULL, out);
}

/* ---- release 0.3's kvc_attach_opts: without op_timeout_ms ----------------------------------
 * Binaries built against 0.3 or earlier call these: their struct ends before op_timeout_ms,
 * so only that much is read or written. */
#define ATTACH_OPTS_SIZE_0_3 offsetof(struct kvc_attach_opts, op_timeout_ms)

__asm__(".symver kvc_attach_opts_init_0_1, kvc_attach_opts_init@KVC_0.1");
__asm__(".symver kvc_attach_0_1, kvc_attach@KVC_0.1");
void kvc_attach_opts_init_0_1(void *o);
int kvc_attach_0_1(const void *o, kvc_client **out);

void kvc_attach_opts_init_0_1(void *o)
{
	struct kvc_attach_opts x;

	kvc_attach_opts_init_0_6(&x);
	memcpy(o, &x, ATTACH_OPTS_SIZE_0_3);
}

int kvc_attach_0_1(const void *o, kvc_client **out)
{
	struct kvc_attach_opts x;

	kvc_attach_opts_init_0_6(&x);
	if (o)
		memcpy(&x, o, ATTACH_OPTS_SIZE_0_3);
	return kvc_attach_0_6(o ? &x : NULL, out);
}

static int futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts)
{
	return (int)syscall(SYS_futex, uaddr, op, val, ts, NULL, 0);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- attach ------------------------------------------------------------------------------ */

static int recv_reply(int sock, struct kvcp_attach_rep *rep, int fds[2])
{
	char cbuf[CMSG_SPACE(2 * sizeof(int))];
	struct iovec iov = { rep, sizeof(*rep) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;
	ssize_t n;

	fds[0] = fds[1] = -1;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n != (ssize_t)sizeof(*rep))
		return n == 0 ? -ECONNRESET : -EBADMSG;
	for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		memcpy(fds, CMSG_DATA(cm), (nfd > 2 ? 2 : nfd) * sizeof(int));
		for (size_t i = 2; i < nfd; i++) { /* never leak what we did not ask for */
			int extra;

			memcpy(&extra, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			close(extra);
		}
	}
	if (rep->status)
		return rep->status < 0 ? rep->status : -EBADMSG;
	if (fds[0] < 0 || fds[1] < 0)
		return -EBADMSG;
	return 0;
}

static void unmap_ctrl(kvc_client *c)
{
	if (c->hdr)
		munmap(c->hdr, c->ctrl_size);
	c->hdr = NULL;
	if (c->sock >= 0)
		close(c->sock);
	c->sock = -1;
}

/* Map the two segments. The staging buffer keeps its address across re-attaches: the new
 * segment replaces the old pages in place (MAP_FIXED), so pointers the engine holds stay
 * valid. */
static int map_segments(kvc_client *c, const struct kvcp_attach_rep *rep, const int fds[2])
{
	void *ctrl, *stg;
	int err;

	if (rep->ctrl_size < sizeof(struct kvcp_shm_hdr) || rep->ctrl_size > (1ull << 32) ||
	    rep->staging_size > (1ull << 40))
		return -EBADMSG;
	if (c->staging && rep->staging_size != c->staging_size)
		return -EPROTO; /* the new daemon grants a different size: cannot keep the address */
	ctrl = mmap(NULL, rep->ctrl_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	if (ctrl == MAP_FAILED)
		return -errno;
	err = kvcp_hdr_validate(ctrl, rep->ctrl_size);
	if (err)
		goto out_unmap;
	if (rep->staging_size) {
		stg = mmap(c->staging, rep->staging_size, PROT_READ | PROT_WRITE,
			   MAP_SHARED | (c->staging ? MAP_FIXED : 0), fds[1], 0);
		if (stg == MAP_FAILED) {
			err = -errno;
			goto out_unmap;
		}
		c->staging = stg;
	}
	c->staging_size = rep->staging_size;
	c->hdr = ctrl;
	c->ctrl_size = rep->ctrl_size;
	c->sq_entries = c->hdr->sq_entries;
	c->cq_entries = c->hdr->cq_entries;
	c->sq = (struct kvcp_sqe *)((char *)ctrl + c->hdr->sq_off);
	c->cq = (struct kvcp_cqe *)((char *)ctrl + c->hdr->cq_off);
	c->scratch = (char *)ctrl + c->hdr->scratch_off;
	c->scratch_size = c->hdr->scratch_size;
	/* the daemon starts both rings at 0; a fresh segment means fresh indices */
	c->sq_prod = c->sq_cons_cache = kvcp_load_acquire(&c->hdr->sq.prod);
	c->cq_cons = kvcp_load_acquire(&c->hdr->cq.cons);
	c->phase = c->hdr->compat & KVCP_COMPAT_PHASE;
	c->hint = 0; /* a fresh segment says nothing yet: the next wait writes it */
	c->boot_token = rep->boot_token;
	return 0;
out_unmap:
	munmap(ctrl, rep->ctrl_size);
	return err;
}

/* The second message of a GPU attach: map each device's staging. */
static int map_gpu(kvc_client *c, uint64_t mask)
{
	struct kvcp_attach_gpu m;
	char cbuf[CMSG_SPACE(KVCP_MAX_GPUS * sizeof(int))];
	struct iovec iov = { &m, sizeof(m) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	int fds[KVCP_MAX_GPUS], nfd = 0, err = 0;
	uint64_t got = 0;
	ssize_t n;

	do
		n = recvmsg(c->sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int fd;

				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (nfd < KVCP_MAX_GPUS)
					fds[nfd++] = fd;
				else
					close(fd);
			}
	if (n != (ssize_t)sizeof(m) || m.ndev != (unsigned)nfd || m.ndev > KVCP_MAX_GPUS)
		err = -EBADMSG;
	for (unsigned i = 0; !err && i < m.ndev; i++) {
		uint32_t x = m.dev[i].index;

		if (x >= KVCP_MAX_GPUS || !(mask >> x & 1) || (got >> x & 1) ||
		    m.dev[i].size > (1ull << 40)) {
			err = -EBADMSG;
			break;
		}
		kvcc_gpu_unmap(&c->gpu[x], 1); /* a re-attach: the address stays */
		err = kvcc_gpu_map(&c->gpu[x], &m.dev[i], fds[i]);
		if (err == -ENXIO) /* hidden from this process (CUDA_VISIBLE_DEVICES): the */
			err = 0;   /* others serve */
		else if (!err)
			got |= 1ull << x;
	}
	for (int i = 0; i < nfd; i++)
		close(fds[i]);
	if (!err && !got)
		err = -ENODEV;
	c->gpu_mask = err ? 0 : got;
	return err;
}

static void fill_cpus(struct kvcp_attach_req *req)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set))
		return;
	for (int cpu = 0; cpu < 1024 && cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &set))
			req->cpus[cpu / 64] |= 1ull << (cpu % 64);
}

static int do_attach(kvc_client *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct kvcp_attach_req req = { 0 };
	struct kvcp_attach_rep rep;
	int fds[2] = { -1, -1 };
	int err;

	c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->sock < 0)
		return -errno;
	memcpy(sa.sun_path, c->sockpath, sizeof(sa.sun_path));
	if (connect(c->sock, (struct sockaddr *)&sa, sizeof(sa))) {
		err = -errno;
		goto out_close;
	}
	req.magic32 = KVCP_ATTACH_MAGIC;
	req.major = KVCP_MAJOR;
	req.minor = KVCP_MINOR;
	req.staging_size = c->staging ? c->staging_size : c->opts.staging_size;
	req.numa_node = c->opts.numa_node;
	req.flags = c->no_phase ? 0 : KVCP_ATTACH_F_PHASE;
	if (c->opts.gpu) {
		req.flags |= KVCP_ATTACH_F_GPU;
		req.gpu_staging_size = c->opts.gpu_staging_size;
		req.gpu_mask = c->opts.gpu_mask;
	}
	fill_cpus(&req);
	memcpy(req.ns, c->ns, sizeof(req.ns));
	if (send(c->sock, &req, sizeof(req), MSG_NOSIGNAL) != (ssize_t)sizeof(req)) {
		/* kvcd may have refused us before we spoke (too many attaches in progress):
		 * its reason is queued before the hang-up */
		err = -errno;
		if (recv(c->sock, &rep, sizeof(rep), MSG_DONTWAIT | MSG_PEEK) ==
			    (ssize_t)sizeof(rep) &&
		    rep.status < 0)
			err = rep.status;
		goto out_close;
	}
	err = recv_reply(c->sock, &rep, fds);
	if (err == -EBADMSG && !c->no_phase) { /* a kvcd before 2.6: the classic rings */
		close(c->sock);
		c->sock = -1;
		c->no_phase = true;
		return do_attach(c);
	}
	if (!err)
		err = map_segments(c, &rep, fds);
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (!err && c->opts.gpu)
		err = rep.gpu_mask ? map_gpu(c, rep.gpu_mask) : -ENODEV;
	if (err)
		goto out_close;
	c->dead = 0;
	c->stash_n = c->stash_head = 0;
	return 0;
out_close:
	close(c->sock);
	c->sock = -1;
	return err;
}

/* The namespace kvcd sees: @ns itself when it fits, else (a long model fingerprint, say) its
 * first 46 bytes, '~' and the XXH64 of the whole name in hex: 63 bytes, the same in every
 * process. */
static void ns_name(const char *ns, char out[KVCP_NS_MAX])
{
	size_t n = strlen(ns);

	if (n < KVCP_NS_MAX) {
		memcpy(out, ns, n + 1);
		return;
	}
	snprintf(out, KVCP_NS_MAX, "%.46s~%016llx", ns, (unsigned long long)XXH64(ns, n, 0));
}

int kvc_attach_0_6(const struct kvc_attach_opts *o, kvc_client **out)
{
	struct kvc_attach_opts def;
	const char *path;
	kvc_client *c;
	int err;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!o) {
		kvc_attach_opts_init_0_6(&def);
		o = &def;
	}
	path = o->socket ? o->socket : kvc_default_socket();
	if (strlen(path) >= sizeof(c->sockpath))
		return -ENAMETOOLONG;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->sock = -1;
	c->opts = *o;
	c->opts.socket = NULL;
	c->opts.ns = NULL;
	if (!c->opts.spin_us)
		c->opts.spin_us = 500;
	kvcp_spin_init(&c->spin, c->opts.spin_us * 1000ull);
	if (!c->opts.op_timeout_ms)
		c->opts.op_timeout_ms = KVC_OP_TIMEOUT_MS_DEFAULT;
	strcpy(c->sockpath, path);
	ns_name(o->ns && *o->ns ? o->ns : "default", c->ns);
	/* kvcd turns away the attaches of a uid beyond its handshakes in progress (-EBUSY, or a
	 * reset before the reply is read): a burst of engine processes starting together meets
	 * a busy daemon, not a dead one. Try again, backing off, for about a second. */
	for (unsigned ms = 1, waited = 0;; waited += ms, ms *= 2) {
		err = do_attach(c);
		if ((err != -EBUSY && err != -ECONNRESET && err != -EPIPE) || waited >= 1000)
			break;
		usleep(ms * 1000 + (unsigned)(now_ns() % 1000)); /* jitter: not in step */
	}
	if (err)
		goto out_free;
	c->stash_cap = c->sq_entries + c->cq_entries;
	c->stash = calloc(c->stash_cap, sizeof(*c->stash));
	c->cancelled = calloc(c->stash_cap, sizeof(*c->cancelled));
	if (!c->stash || !c->cancelled) {
		err = -ENOMEM;
		goto out_unmap;
	}
	*out = c;
	return 0;
out_unmap:
	unmap_ctrl(c);
	munmap(c->staging, c->staging_size);
out_free:
	for (unsigned i = 0; i < KVCP_MAX_GPUS; i++)
		kvcc_gpu_unmap(&c->gpu[i], 0);
	free(c->stash);
	free(c->cancelled);
	free(c);
	return err;
}

void kvc_detach(kvc_client *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < KVCP_MAX_GPUS; i++)
		kvcc_gpu_unmap(&c->gpu[i], 0);
	unmap_ctrl(c);
	if (c->staging)
		munmap(c->staging, c->staging_size);
	free(c->stash);
	free(c->cancelled);
	free(c);
}

void *kvc_staging(kvc_client *c, size_t *size)
{
	if (size)
		*size = c->staging_size;
	return c->staging;
}

uint64_t kvc_gpu_staging(kvc_client *c, unsigned index, size_t *size)
{
	bool have = index < KVCP_MAX_GPUS && (c->gpu_mask >> index & 1);

	if (size)
		*size = have ? c->gpu[index].size : 0;
	return have ? c->gpu[index].va : 0;
}

int kvc_gpu_index(kvc_client *c, int ordinal)
{
	int dev;

	if (!c->gpu_mask || kvcc_gpu_device(ordinal, &dev))
		return -ENODEV;
	for (unsigned i = 0; i < KVCP_MAX_GPUS; i++)
		if ((c->gpu_mask >> i & 1) && c->gpu[i].device == dev)
			return (int)i;
	return -ENODEV;
}

/* The daemon never writes to the socket after the attach reply: readable or hung up means
 * it is gone (or misbehaving, which we treat the same). */
static int daemon_gone(kvc_client *c)
{
	struct pollfd p = { .fd = c->sock, .events = POLLIN };

	if (c->sock < 0)
		return 1;
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

/* Drop the dead daemon's segments and try to attach to its successor. The in-flight
 * requests are lost either way; the caller reports -ECONNRESET. */
static void reattach(kvc_client *c)
{
	unmap_ctrl(c);
	c->dead = 1;
	c->stash_n = c->stash_head = 0;
	c->ncancelled = 0;   /* the dead daemon's requests will never complete */
	c->no_phase = false; /* the new kvcd may be another release */
	if (do_attach(c) == 0 && c->sq_entries + c->cq_entries > c->stash_cap) {
		size_t cap = c->sq_entries + c->cq_entries;
		struct kvcp_cqe *s = realloc(c->stash, cap * sizeof(*s));
		uint64_t *t = s ? realloc(c->cancelled, cap * sizeof(*t)) : NULL;

		if (s)
			c->stash = s;
		if (t)
			c->cancelled = t;
		if (s && t) {
			c->stash_cap = (uint32_t)cap;
		} else {
			unmap_ctrl(c);
			c->dead = 1;
		}
	}
}

static int ensure_attached(kvc_client *c)
{
	if (!c->dead && c->hdr)
		return 0;
	return do_attach(c);
}

/* ---- submission --------------------------------------------------------------------------- */

static void ring_doorbell(kvc_client *c)
{
	struct kvcp_ring *sq = &c->hdr->sq;

	/* Pairs with the daemon's fence between setting NEED_WAKEUP and re-checking prod:
	 * either it sees our prod, or we see its flag. */
	kvcp_fence();
	if (kvcp_load_relaxed(&sq->flags) & KVCP_RING_NEED_WAKEUP) {
		__atomic_fetch_add(&sq->futex, 1, __ATOMIC_RELEASE);
		futex(&sq->futex, FUTEX_WAKE, 1, NULL);
	}
}

static void to_sqe(struct kvcp_sqe *s, uint8_t op, uint8_t flags, uint16_t gpu, uint32_t arg,
		   uint64_t ud, const struct kvc_key *key, const struct kvc_layout *layout,
		   uint64_t off, uint64_t len)
{
	memset(s, 0, sizeof(*s));
	s->opcode = op;
	s->flags = flags;
	s->gpu = gpu;
	s->arg = arg;
	s->user_data = ud;
	if (key)
		memcpy(&s->key, key, sizeof(s->key));
	if (layout)
		memcpy(&s->layout, layout, sizeof(s->layout));
	s->off = off;
	s->len = len;
}

/* A kvcd older than protocol 2.3 does not know the parent trailer: a hint it cannot take, so
 * the STORE goes without it. Its length becomes the block's, its scores' and its aux's,
 * counted from the layout and the aux header in staging (the 8-byte alignment of the trailer
 * may have left padding before it). */
static void without_parent(kvc_client *c, uint8_t *flags, const struct kvc_layout *l, uint64_t off,
			   uint64_t *len)
{
	uint64_t n = kvc_layout_bytes(l) + ((*flags & KVC_REQ_SCORES) ? 4ull * l->tokens : 0);
	size_t size;
	const char *stg = kvc_staging(c, &size);

	if (!(*flags & KVC_REQ_PARENT) || c->hdr->minor >= 3)
		return;
	*flags &= (uint8_t)~KVC_REQ_PARENT;
	if ((*flags & KVC_REQ_AUX) && stg && off + n + sizeof(struct kvcp_aux) <= size) {
		struct kvcp_aux a;

		memcpy(&a, stg + off + n, sizeof(a));
		n += sizeof(a) + kvcp_aux_bytes(&a, (const struct kvcp_layout *)l);
	}
	*len = n; /* what does not add up, kvcd refuses as it would have */
}

static int sq_push(kvc_client *c, const struct kvcp_sqe *s)
{
	if (c->phase)
		return kvcp_ring_push_phase(&c->hdr->sq, c->sq, c->sq_entries, &c->sq_prod,
					    &c->sq_cons_cache, s, KVCP_SQE_PHASE_WORD,
					    KVCP_SQE_PHASE_BIT);
	return kvcp_ring_push(&c->hdr->sq, c->sq, c->sq_entries, &c->sq_prod, &c->sq_cons_cache, s);
}

/* Is a completion waiting? */
static bool cq_ready(const kvc_client *c)
{
	if (c->phase)
		return kvcp_ring_ready_phase(c->cq, c->cq_entries, c->cq_cons, KVCP_CQE_PHASE_WORD,
					     KVCP_CQE_PHASE_BIT);
	return kvcp_ring_pending(&c->hdr->cq, c->cq_entries, c->cq_cons) != 0;
}

static int submit_one(kvc_client *c, uint8_t op, uint8_t flags, uint16_t gpu, uint32_t arg,
		      const struct kvc_key *key, const struct kvc_layout *layout, uint64_t off,
		      uint64_t len, uint64_t *ticket)
{
	struct kvcp_sqe s;
	int err = ensure_attached(c);

	if (err)
		return err;
	if (op == KVCP_OP_STORE && layout)
		without_parent(c, &flags, layout, off, &len);
	to_sqe(&s, op, flags, gpu, arg, c->next_ticket, key, layout, off, len);
	err = sq_push(c, &s);
	if (err)
		return err;
	*ticket = c->next_ticket++;
	ring_doorbell(c);
	return 0;
}

#define REQ_FLAGS (KVC_REQ_SCORES | KVC_REQ_AUX | KVC_REQ_PARENT | KVC_REQ_GPU)

int kvc_submit(kvc_client *c, const struct kvc_req *reqs, unsigned n, uint64_t *tickets)
{
	struct kvcp_sqe s;
	unsigned i;
	int err = ensure_attached(c);

	if (err)
		return err;
	for (i = 0; i < n; i++) {
		uint8_t flags = reqs[i].flags;
		uint64_t len = reqs[i].len;

		if (reqs[i].op > KVC_OP_UNPIN || (flags & ~REQ_FLAGS) ||
		    ((flags & KVC_REQ_PARENT) && len < sizeof(struct kvc_key)))
			break;
		without_parent(c, &flags, &reqs[i].layout, reqs[i].off, &len);
		to_sqe(&s, reqs[i].op, flags, reqs[i].gpu, reqs[i].arg, c->next_ticket,
		       &reqs[i].key, &reqs[i].layout, reqs[i].off, len);
		if (sq_push(c, &s))
			break;
		if (tickets)
			tickets[i] = c->next_ticket;
		c->next_ticket++;
	}
	if (i)
		ring_doorbell(c);
	if (i == 0 && n)
		return reqs[0].op > KVC_OP_UNPIN || (reqs[0].flags & ~REQ_FLAGS) ||
				       ((reqs[0].flags & KVC_REQ_PARENT) &&
					reqs[0].len < sizeof(struct kvc_key))
			       ? -EINVAL
			       : -EAGAIN;
	return (int)i;
}

/* ---- completion --------------------------------------------------------------------------- */

static void to_cqe(struct kvc_cqe *o, const struct kvcp_cqe *e)
{
	o->ticket = e->user_data;
	o->res = e->res;
	o->reserved = 0;
	o->value = e->value;
	memcpy(&o->layout, &e->layout, sizeof(o->layout));
}

/* Is @ticket one a timed-out call gave up on? Then forget it: it completed. */
static bool was_cancelled(kvc_client *c, uint64_t ticket)
{
	for (uint32_t i = 0; i < c->ncancelled; i++)
		if (c->cancelled[i] == ticket) {
			c->cancelled[i] = c->cancelled[--c->ncancelled];
			return true;
		}
	return false;
}

/* Pop one completion from the CQ, skipping those of cancelled calls. Returns 1, 0 (empty)
 * or -EBADMSG (corrupt indices). */
static int cq_pop(kvc_client *c, struct kvcp_cqe *e)
{
	int r;

	if (c->dead || !c->hdr)
		return 0;
	do
		r = c->phase ? kvcp_ring_pop_phase(&c->hdr->cq, c->cq, c->cq_entries, &c->cq_cons,
						   e, KVCP_CQE_PHASE_WORD, KVCP_CQE_PHASE_BIT)
			     : kvcp_ring_pop(&c->hdr->cq, c->cq, c->cq_entries, &c->cq_cons, e);
	while (r == 1 && c->ncancelled && was_cancelled(c, e->user_data));
	return r;
}

int kvc_poll(kvc_client *c, struct kvc_cqe *out, unsigned max)
{
	struct kvcp_cqe e;
	unsigned got = 0;

	while (got < max && c->stash_n) {
		to_cqe(&out[got++], &c->stash[c->stash_head]);
		c->stash_head = (c->stash_head + 1) % c->stash_cap;
		c->stash_n--;
	}
	while (got < max && cq_pop(c, &e) == 1)
		to_cqe(&out[got++], &e);
	return (int)got;
}

/* A spinning wait reads the clock one look at its CQ in this many: a look is what finds the
 * answer, and the clock would slow every one. */
#define LOOKS_PER_CLOCK 8u

/* Wait until the CQ holds something, @deadline_ns passes (0: never) or the daemon is gone.
 * Returns 0, -ETIMEDOUT or -ECONNRESET (after re-attaching if possible). */
static int wait_cq(kvc_client *c, uint64_t deadline_ns)
{
	struct kvcp_ring *cq;
	uint64_t t0 = now_ns(), next_check = t0, spin_end, t;
	bool spinning = true, busy = c->opts.flags & KVC_ATTACH_BUSY_POLL;
	uint32_t fv, hint;

	if (c->dead || !c->hdr)
		return -ECONNRESET;
	cq = &c->hdr->cq;
	spin_end = busy ? UINT64_MAX : t0 + kvcp_spin_begin(&c->spin, t0);
	hint = busy || c->spin.cur == KVCP_WAIT_SPIN ? KVCP_HINT_SPIN : KVCP_HINT_SLEEP;
	if (hint != c->hint) { /* the worker reads it when it answers (kvcp.h) */
		kvcp_store_relaxed(&cq->hint, hint);
		c->hint = hint;
	}
	for (unsigned looks = 1;; looks++) {
		if (cq_ready(c)) {
			/* found before the clock was read again: a few pauses, counted as none,
			 * which spares the clock a round trip that has it already */
			t = looks < LOOKS_PER_CLOCK ? t0 : now_ns();
			if (!busy)
				kvcp_spin_end(&c->spin, t - t0, t);
			return 0;
		}
		if (spinning && looks % LOOKS_PER_CLOCK) {
			__builtin_ia32_pause();
			continue;
		}
		t = now_ns();
		if (deadline_ns && t >= deadline_ns) {
			if (!busy)
				kvcp_spin_end(&c->spin, t - t0, t);
			return -ETIMEDOUT;
		}
		if (t >= next_check) { /* a syscall, so at most every 10 ms */
			if (daemon_gone(c)) {
				reattach(c);
				return -ECONNRESET;
			}
			next_check = t + 10000000ull;
		}
		/* the worker says the request takes long (the remote tier, a GPU's mover): sleep */
		if (t < spin_end && !busy && (kvcp_load_relaxed(&c->hdr->sq.hint) & KVCP_HINT_LONG))
			spin_end = t;
		if (t < spin_end) {
			__builtin_ia32_pause();
			continue;
		}
		spinning = false;
		/* The worker stops draining our SQ while our CQ is full and may have gone to
		 * sleep; we have since made room, so wake it before we sleep ourselves. */
		if (c->sq_prod != kvcp_load_acquire(&c->hdr->sq.cons))
			ring_doorbell(c);
		fv = kvcp_load_acquire(&cq->futex);
		kvcp_store_relaxed(&cq->flags, KVCP_RING_NEED_WAKEUP);
		/* Pairs with the daemon's fence between publishing prod and reading flags. */
		kvcp_fence();
		if (!cq_ready(c)) {
			struct timespec ts = { 0,
					       10000000 }; /* wake to check the daemon's health */

			futex(&cq->futex, FUTEX_WAIT, fv, &ts);
		}
		kvcp_store_relaxed(&cq->flags, 0);
	}
}

int kvc_wait(kvc_client *c, struct kvc_cqe *out, unsigned min, unsigned max, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? 0 : now_ns() + (uint64_t)timeout_ms * 1000000ull;
	unsigned got = 0;
	int err;

	if (min > max)
		return -EINVAL;
	for (;;) {
		got += (unsigned)kvc_poll(c, out + got, max - got);
		if (got >= min)
			return (int)got;
		err = wait_cq(c, deadline);
		if (err)
			return got ? (int)got : err;
	}
}

/* Wait for the completion of @ticket until @deadline_ns (0: forever), stashing the others. On
 * -ETIMEDOUT the ticket is cancelled: its completion will be dropped when it comes. */
static int wait_ticket(kvc_client *c, uint64_t ticket, struct kvcp_cqe *out, uint64_t deadline_ns)
{
	struct kvcp_cqe e;
	int r;

	for (uint32_t i = 0; i < c->stash_n; i++) {
		uint32_t k = (c->stash_head + i) % c->stash_cap;

		if (c->stash[k].user_data != ticket)
			continue;
		*out = c->stash[k];
		for (; i + 1 < c->stash_n; i++) { /* close the gap, keeping order */
			uint32_t a = (c->stash_head + i) % c->stash_cap;

			c->stash[a] = c->stash[(a + 1) % c->stash_cap];
		}
		c->stash_n--;
		return 0;
	}
	for (;;) {
		r = cq_pop(c, &e);
		if (r < 0)
			return r;
		if (r == 1 && e.user_data == ticket) {
			*out = e;
			return 0;
		}
		if (r == 1) {
			if (c->stash_n == c->stash_cap)
				return -EOVERFLOW; /* the daemon completed more than we submitted */
			c->stash[(c->stash_head + c->stash_n++) % c->stash_cap] = e;
			continue;
		}
		r = wait_cq(c, deadline_ns);
		if (r == -ETIMEDOUT && c->ncancelled < c->stash_cap)
			c->cancelled[c->ncancelled++] = ticket;
		if (r)
			return r;
	}
}

static uint64_t op_deadline(const kvc_client *c)
{
	return c->opts.op_timeout_ms < 0 ? 0
					 : now_ns() + (uint64_t)c->opts.op_timeout_ms * 1000000ull;
}

static int sync_op_gpu(kvc_client *c, uint8_t op, uint8_t flags, uint16_t gpu, uint32_t arg,
		       const struct kvc_key *key, const struct kvc_layout *layout, uint64_t off,
		       uint64_t len, struct kvcp_cqe *cqe)
{
	struct kvcp_cqe local;
	uint64_t ticket, deadline = 0;
	int err;

	if (!cqe)
		cqe = &local;
	/* the request first, then the clock: kvcd works on it while we read the time */
	err = submit_one(c, op, flags, gpu, arg, key, layout, off, len, &ticket);
	if (err == -EAGAIN || !err)
		deadline = op_deadline(c);
	while (err == -EAGAIN) { /* ring full of async requests: let the daemon drain it */
		if (deadline && now_ns() >= deadline)
			return -ETIMEDOUT;
		sched_yield();
		err = submit_one(c, op, flags, gpu, arg, key, layout, off, len, &ticket);
	}
	if (err)
		return err;
	err = wait_ticket(c, ticket, cqe, deadline);
	return err ? err : cqe->res;
}

static int sync_op(kvc_client *c, uint8_t op, uint8_t flags, uint32_t arg,
		   const struct kvc_key *key, const struct kvc_layout *layout, uint64_t off,
		   uint64_t len, struct kvcp_cqe *cqe)
{
	return sync_op_gpu(c, op, flags, 0, arg, key, layout, off, len, cqe);
}

int kvc_nop(kvc_client *c)
{
	return sync_op(c, KVCP_OP_NOP, 0, 0, NULL, NULL, 0, 0, NULL);
}

int kvc_store(kvc_client *c, const struct kvc_key *key, const struct kvc_layout *layout, size_t off)
{
	return sync_op(c, KVCP_OP_STORE, 0, 0, key, layout, off, kvc_layout_bytes(layout), NULL);
}

int kvc_store_scored(kvc_client *c, const struct kvc_key *key, const struct kvc_layout *layout,
		     size_t off)
{
	size_t n = kvc_layout_bytes(layout);

	if (!n)
		return -EINVAL;
	return sync_op(c, KVCP_OP_STORE, KVCP_SQE_F_SCORES, 0, key, layout, off,
		       n + 4ull * layout->tokens, NULL);
}

int kvc_req_parent(kvc_client *c, struct kvc_req *r, const struct kvc_key *parent)
{
	size_t size, at = (r->off + r->len + 7) & ~(uint64_t)7;
	char *stg = kvc_staging(c, &size);
	bool gpu = r->flags & KVC_REQ_GPU;

	if (gpu && (r->gpu >= KVCP_MAX_GPUS || !(c->gpu_mask >> r->gpu & 1)))
		return -ENODEV;
	if (gpu)
		size = c->gpu[r->gpu].size;
	if (r->op != KVC_OP_STORE || (r->flags & KVC_REQ_PARENT) || (!gpu && !stg) || at < r->off ||
	    at + sizeof(*parent) > size)
		return -EINVAL;
	if (gpu) { /* the trailer goes where the block is, in GPU staging */
		int err = kvcc_gpu_htod(&c->gpu[r->gpu], at, parent, sizeof(*parent));

		if (err)
			return err;
	} else {
		memcpy(stg + at, parent, sizeof(*parent));
	}
	r->flags |= KVC_REQ_PARENT;
	r->len = at + sizeof(*parent) - r->off;
	return 0;
}

int kvc_store_chained(kvc_client *c, const struct kvc_key *key, const struct kvc_key *parent,
		      const struct kvc_layout *layout, size_t off)
{
	struct kvc_req r = { .op = KVC_OP_STORE, .key = *key, .layout = *layout, .off = off };
	struct kvcp_cqe e;
	int err;

	r.len = kvc_layout_bytes(layout);
	if (!r.len)
		return -EINVAL;
	if (!parent)
		return kvc_store(c, key, layout, off);
	err = kvc_req_parent(c, &r, parent);
	if (!err)
		err = sync_op(c, KVCP_OP_STORE, r.flags, 0, key, layout, off, r.len, &e);
	return err < 0 ? err : 0;
}

int kvc_fetch(kvc_client *c, const struct kvc_key *key, size_t off, size_t cap,
	      struct kvc_layout *layout)
{
	struct kvcp_cqe e;
	int err = sync_op(c, KVCP_OP_FETCH, 0, 0, key, NULL, off, cap, &e);

	if (err >= 0 && layout)
		memcpy(layout, &e.layout, sizeof(*layout));
	return err < 0 ? err : 0;
}

int kvc_store_gpu(kvc_client *c, unsigned index, const struct kvc_key *key,
		  const struct kvc_layout *layout, size_t off)
{
	if (index >= KVCP_MAX_GPUS || !(c->gpu_mask >> index & 1))
		return -ENODEV;
	return sync_op_gpu(c, KVCP_OP_STORE, KVCP_SQE_F_GPU, (uint16_t)index, 0, key, layout, off,
			   kvc_layout_bytes(layout), NULL);
}

int kvc_fetch_gpu(kvc_client *c, unsigned index, const struct kvc_key *key, size_t off, size_t cap,
		  struct kvc_layout *layout)
{
	struct kvcp_cqe e;
	int err;

	if (index >= KVCP_MAX_GPUS || !(c->gpu_mask >> index & 1))
		return -ENODEV;
	err = sync_op_gpu(c, KVCP_OP_FETCH, KVCP_SQE_F_GPU, (uint16_t)index, 0, key, NULL, off, cap,
			  &e);
	if (err >= 0 && layout)
		memcpy(layout, &e.layout, sizeof(*layout));
	return err < 0 ? err : 0;
}

int kvc_lookup_tiers(kvc_client *c, const struct kvc_key *keys, size_t n, size_t *local,
		     size_t *remote)
{
	size_t done = 0;
	bool local_prefix = true;
	int err;

	*local = *remote = 0;
	err = ensure_attached(c);
	if (err)
		return err;
	while (done < n) {
		size_t batch = n - done, max = c->scratch_size / sizeof(*keys), res, more;
		struct kvcp_cqe cqe;

		if (batch > max)
			batch = max;
		memcpy(c->scratch, keys + done, batch * sizeof(*keys));
		err = sync_op(c, KVCP_OP_LOOKUP, KVCP_SQE_F_SCRATCH, 0, NULL, NULL, 0,
			      batch * sizeof(*keys), &cqe);
		if (err < 0)
			return err;
		/* res: the blocks kvcd held; value: the ones after them that its remote tier had
		 * (in its pool now too; it asks for a bounded number per request) */
		res = (size_t)err;
		more = (size_t)cqe.value;
		if (local_prefix) {
			*local += res;
			local_prefix = res == batch;
			*remote += more;
		} else {
			*remote += res + more;
		}
		done += res + more;
		if (res + more == batch)
			continue;
		if (!more) /* the chain ends here */
			break;
	}
	return 0;
}

int kvc_lookup(kvc_client *c, const struct kvc_key *keys, size_t n, size_t *hits)
{
	size_t local, remote;
	int err = kvc_lookup_tiers(c, keys, n, &local, &remote);

	*hits = local + remote;
	return err;
}

int kvc_delete(kvc_client *c, const struct kvc_key *key)
{
	return sync_op(c, KVCP_OP_DELETE, 0, 0, key, NULL, 0, 0, NULL);
}

int kvc_pin(kvc_client *c, const struct kvc_key *key, uint32_t lease_ms)
{
	return sync_op(c, KVCP_OP_PIN, 0, lease_ms, key, NULL, 0, 0, NULL);
}

int kvc_unpin(kvc_client *c, const struct kvc_key *key)
{
	return sync_op(c, KVCP_OP_UNPIN, 0, 0, key, NULL, 0, 0, NULL);
}

/* Admin requests write their answer into the scratch area; copy it out before returning. */
static int scratch_op(kvc_client *c, uint8_t op, uint32_t arg, void *dst, size_t cap)
{
	struct kvcp_cqe e;
	int err = ensure_attached(c);

	if (err)
		return err;
	err = sync_op(c, op, KVCP_SQE_F_SCRATCH, arg, NULL, NULL, 0, c->scratch_size, &e);
	if (err < 0)
		return err;
	if (e.value > c->scratch_size)
		return -EBADMSG;
	memcpy(dst, c->scratch, e.value < cap ? e.value : cap);
	return err;
}

int kvc_policy(kvc_client *c, const char *policy, unsigned flags, char *why, size_t whylen)
{
	struct kvcp_cqe e;
	size_t n = policy ? strlen(policy) : 0;
	int err = ensure_attached(c);

	if (why && whylen)
		why[0] = '\0';
	if (err)
		return err;
	if (!n || n >= KVCP_POLICY_MAX || (flags & ~KVC_POLICY_NAMESPACE)) {
		if (why && whylen)
			snprintf(why, whylen, "policy string empty or longer than %d bytes",
				 KVCP_POLICY_MAX - 1);
		return -EINVAL;
	}
	memcpy(c->scratch, policy, n);
	err = sync_op(c, KVCP_OP_POLICY, KVCP_SQE_F_SCRATCH,
		      flags & KVC_POLICY_NAMESPACE ? KVCP_POLICY_NS : 0, NULL, NULL, 0, n, &e);
	if (err == -EINVAL && why && whylen && e.value && e.value < KVCP_POLICY_MAX) {
		size_t k = e.value < whylen ? e.value : whylen - 1;

		memcpy(why, c->scratch, k);
		why[k] = '\0';
	}
	return err;
}

int kvc_select(kvc_client *c, const struct kvc_key *keys, size_t n, uint32_t layer, const float *q,
	       uint32_t q_heads, uint32_t head_dim, uint32_t k, struct kvc_select_hit *out)
{
	struct kvcp_select h = { .nkeys = (uint32_t)n,
				 .k = k,
				 .layer = (uint16_t)layer,
				 .q_heads = (uint16_t)q_heads,
				 .head_dim = (uint16_t)head_dim };
	size_t qb = (size_t)q_heads * head_dim * 4, len = sizeof(h) + n * sizeof(*keys) + qb;
	uint8_t *p;
	int err = ensure_attached(c);

	if (err)
		return err;
	if (!n || n > KVCP_SELECT_MAX_KEYS || !k || k > n || layer > UINT16_MAX || !q_heads ||
	    q_heads > UINT16_MAX || !head_dim || head_dim > UINT16_MAX ||
	    (size_t)q_heads * head_dim > KVCP_SELECT_MAX_QUERY)
		return -EINVAL;
	if (len > c->scratch_size)
		return -EMSGSIZE;
	p = c->scratch;
	memcpy(p, &h, sizeof(h));
	memcpy(p + sizeof(h), keys, n * sizeof(*keys));
	memcpy(p + sizeof(h) + n * sizeof(*keys), q, qb);
	err = sync_op(c, KVCP_OP_SELECT, KVCP_SQE_F_SCRATCH, 0, NULL, NULL, 0, len, NULL);
	if (err < 0)
		return err;
	if ((uint32_t)err > k)
		return -EBADMSG;
	memcpy(out, c->scratch, (size_t)err * sizeof(*out));
	return err;
}

int kvc_recompress(kvc_client *c, const struct kvc_key *keys, size_t n, uint32_t pos, uint8_t codec,
		   size_t aux_off, size_t aux_len, uint64_t *saved)
{
	struct kvcp_recompress h = { .magic = KVCP_RECOMPRESS_MAGIC,
				     .nkeys = (uint32_t)n,
				     .pos = pos };
	struct kvc_layout l = { .codec = codec };
	size_t len = sizeof(h) + n * sizeof(*keys);
	struct kvcp_cqe cqe;
	int err = ensure_attached(c);

	if (err)
		return err;
	if (!n || codec > KVCP_POLICY_SLOTS)
		return -EINVAL;
	if (n > KVCP_RECOMPRESS_MAX_KEYS || len > c->scratch_size)
		return -EMSGSIZE;
	if (aux_len) {
		if (aux_len < sizeof(struct kvcp_aux) || aux_off > c->staging_size ||
		    c->staging_size - aux_off < aux_len)
			return -EINVAL;
		h.aux_off = aux_off;
		h.aux_len = aux_len;
	}
	memcpy(c->scratch, &h, sizeof(h));
	memcpy((uint8_t *)c->scratch + sizeof(h), keys, n * sizeof(*keys));
	err = sync_op(c, KVCP_OP_RECOMPRESS, KVCP_SQE_F_SCRATCH, 0, NULL, &l, 0, len, &cqe);
	if (err >= 0 && saved)
		*saved = cqe.value;
	return err;
}

/* Growing structs: the caller's @size says how much of ours it has room for. Entries of
 * @n, each @size bytes in @out, from @ent bytes each in @in; what the caller has beyond ours
 * is zeroed. */
static void copy_sized(void *out, size_t size, const void *in, size_t ent, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t *o = (uint8_t *)out + i * size;

		memcpy(o, (const uint8_t *)in + i * ent, size < ent ? size : ent);
		if (size > ent)
			memset(o + ent, 0, size - ent);
	}
}

/* kvc_stats, kvc_list and kvc_clients of release 0.3 on (the default a program links to); the
 * versions of release 0.2 follow. */
__asm__(".symver kvc_stats_0_3, kvc_stats@@KVC_0.3");
__asm__(".symver kvc_list_0_3, kvc_list@@KVC_0.3");
__asm__(".symver kvc_clients_0_3, kvc_clients@@KVC_0.3");
int kvc_stats_0_3(kvc_client *c, struct kvc_stats *st, size_t size);
int kvc_list_0_3(kvc_client *c, size_t start, struct kvc_block_info *out, size_t max, size_t size);
int kvc_clients_0_3(kvc_client *c, struct kvc_client_info *out, size_t max, size_t size);

int kvc_stats_0_3(kvc_client *c, struct kvc_stats *st, size_t size)
{
	struct kvcp_stats all;
	int err;

	if (!size)
		return -EINVAL;
	memset(&all, 0, sizeof(all));
	err = scratch_op(c, KVCP_OP_STATS, 0, &all, sizeof(all));
	if (err < 0)
		return err;
	copy_sized(st, size, &all, sizeof(all), 1);
	return 0;
}

/* At most @max entries of @ent bytes that the scratch area holds. */
static size_t fit(const kvc_client *c, size_t max, size_t ent)
{
	return max < c->scratch_size / ent ? max : c->scratch_size / ent;
}

static int list_sized(kvc_client *c, uint8_t op, uint32_t arg, void *out, size_t max, size_t size,
		      size_t ent)
{
	size_t cap;
	void *tmp;
	int n;

	if (!size)
		return -EINVAL;
	cap = fit(c, max, ent);
	tmp = malloc(cap * ent + 1);
	if (!tmp)
		return -ENOMEM;
	n = scratch_op(c, op, arg, tmp, cap * ent);
	if (n > (int)cap)
		n = (int)cap;
	if (n > 0)
		copy_sized(out, size, tmp, ent, (size_t)n);
	free(tmp);
	return n;
}

int kvc_list_0_3(kvc_client *c, size_t start, struct kvc_block_info *out, size_t max, size_t size)
{
	if (start > UINT32_MAX)
		return 0;
	return list_sized(c, KVCP_OP_LIST, (uint32_t)start, out, max, size,
			  sizeof(struct kvcp_list_ent));
}

int kvc_clients_0_3(kvc_client *c, struct kvc_client_info *out, size_t max, size_t size)
{
	return list_sized(c, KVCP_OP_CLIENTS, 0, out, max, size, sizeof(struct kvcp_client_ent));
}

/* ---- release 0.2 (symbol version KVC_0.1): the same calls without the caller's sizes ---------
 * Programs built against it pass structs of that release's sizes, which these fix. */

#define STATS_SIZE_0_2	     7304
#define BLOCK_INFO_SIZE_0_2  56
#define CLIENT_INFO_SIZE_0_2 104
/* a struct may grow from one release to the next, never shrink */
static_assert(sizeof(struct kvc_stats) >= STATS_SIZE_0_2 &&
		      sizeof(struct kvc_block_info) >= BLOCK_INFO_SIZE_0_2 &&
		      sizeof(struct kvc_client_info) >= CLIENT_INFO_SIZE_0_2,
	      "release 0.2's structs are prefixes of this release's");

__asm__(".symver kvc_stats_0_2, kvc_stats@KVC_0.1");
__asm__(".symver kvc_list_0_2, kvc_list@KVC_0.1");
__asm__(".symver kvc_clients_0_2, kvc_clients@KVC_0.1");
int kvc_stats_0_2(kvc_client *c, void *st);
int kvc_list_0_2(kvc_client *c, size_t start, void *out, size_t max);
int kvc_clients_0_2(kvc_client *c, void *out, size_t max);

int kvc_stats_0_2(kvc_client *c, void *st)
{
	return kvc_stats_0_3(c, st, STATS_SIZE_0_2);
}

int kvc_list_0_2(kvc_client *c, size_t start, void *out, size_t max)
{
	return kvc_list_0_3(c, start, out, max, BLOCK_INFO_SIZE_0_2);
}

int kvc_clients_0_2(kvc_client *c, void *out, size_t max)
{
	return kvc_clients_0_3(c, out, max, CLIENT_INFO_SIZE_0_2);
}

int kvc_evict(kvc_client *c, uint32_t mib)
{
	return sync_op(c, KVCP_OP_EVICT, 0, mib, NULL, NULL, 0, 0, NULL);
}

int kvc_calibrate(kvc_client *c, uint32_t blocks, uint32_t energy, uint64_t *bytes)
{
	struct kvcp_cqe cqe;
	int err;

	if (blocks > 0xffff || !energy || energy > 100)
		return -EINVAL;
	err = sync_op(c, KVCP_OP_CALIBRATE, 0, KVCP_CALIBRATE_ARG(blocks, energy), NULL, NULL, 0, 0,
		      &cqe);
	if (err > 0 && bytes)
		*bytes = cqe.value;
	return err;
}

int kvc_calibrate_model(kvc_client *c, uint32_t blocks, uint32_t energy, uint32_t rope,
			const float *weight, uint32_t layers, uint64_t *bytes)
{
	struct kvcp_calibrate h = { .magic = KVCP_CALIBRATE_MAGIC, .layers = layers, .rope = rope };
	size_t len = sizeof(h) + 8ull * layers;
	struct kvcp_cqe cqe;
	int err = ensure_attached(c);

	if (err)
		return err;
	if (blocks > 0xffff || !energy || energy > 100 || (!weight && layers) || layers > 0xffff ||
	    rope > 100000000)
		return -EINVAL;
	if (len > c->scratch_size)
		return -EMSGSIZE;
	memcpy(c->scratch, &h, sizeof(h));
	if (layers)
		memcpy((uint8_t *)c->scratch + sizeof(h), weight, 8ull * layers);
	err = sync_op(c, KVCP_OP_CALIBRATE, KVCP_SQE_F_SCRATCH, KVCP_CALIBRATE_ARG(blocks, energy),
		      NULL, NULL, 0, len, &cqe);
	if (err > 0 && bytes)
		*bytes = cqe.value;
	return err;
}

const char *kvc_strerror(int err)
{
	switch (err) {
	case 0: return "Success";
	case -ENOENT: return "not cached (or no daemon at the socket path)";
	case -ENOSPC: return "no space: pool full of pinned blocks, or buffer too small";
	case -EDQUOT: return "a kvcd limit was reached: the namespace's quota or max_pins";
	case -EBUSY: return "busy: block pinned, or too many attaches in progress (retry)";
	case -ENFILE: return "kvcd's namespace table is full";
	case -E2BIG: return "request too large for kvcd's limits (staging_max, max_lookup_keys)";
	case -EBADMSG: return "malformed request or response";
	case -EPROTO: return "protocol version mismatch with kvcd";
	case -EAGAIN: return "submission ring full";
	case -EACCES: return "uid/gid not allowed for this namespace";
	case -ECONNRESET: return "kvcd restarted; requests in flight were lost";
	case -ECONNREFUSED: return "kvcd is not running at the socket path";
	case -EEXIST: return "block already stored";
	case -EIO: return "checksum mismatch: block was corrupt and has been dropped";
	case -EUSERS: return "kvcd has too many clients";
	case -ETIMEDOUT:
		return "timed out waiting for kvcd (op_timeout_ms, or the attach deadline)";
	case -ERANGE: return "a value is beyond what the compression policy's f16 scales hold";
	case -ENOKEY: return "the namespace has no learned basis yet (kvcctl calibrate)";
	}
	if (err < 0) {
		const char *s = strerrordesc_np(-err);

		return s ? s : "unknown error";
	}
	return "not an error code";
}
