/* main.c - kvcd: start-up, the accept/attach path, client death, housekeeping, shutdown.
 *
 * The main thread owns one epoll set: the listening socket, a signalfd (SIGTERM/SIGINT), a
 * 100 ms timerfd (lease expiry, watermark eviction, systemd watchdog), an eventfd on which
 * workers report broken sessions, and for every client its socket (EOF = gone) and pidfd
 * (readable = exited). Attach handshakes are non-blocking: a connection that says nothing is
 * dropped after handshake_timeout_ms, one uid holds at most max_pending_per_uid of the
 * max_pending handshakes, and when they are all taken the newest connection displaces the
 * oldest of the uid that holds most, so silent connections cannot lock others out.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <grp.h>
#include <numa.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "kvcd.h"
#include "kvc_version.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

#define TICK_MS 100

enum ev_type {
	EV_LISTEN,
	EV_SIGNAL,
	EV_TIMER,
	EV_REAP,
	EV_PENDING,
	EV_SOCK,
	EV_PIDFD
};

struct ev {
	enum ev_type type;
	void *ptr;
};

struct pending {
	struct ev ev;
	int fd;
	uid_t uid;
	uint64_t deadline; /* also the order of arrival */
};

struct client {
	struct kvcd_session s;
	struct ev ev_sock, ev_pidfd;
	struct client *next_dead; /* detached; freed after the current epoll batch */
	bool dead;
};

static struct {
	struct kvcd d;
	int epfd, lfd, sigfd, timerfd;
	struct ev ev_listen, ev_signal, ev_timer, ev_reap;
	struct pending *pending; /* cfg.max_pending of them; fd -1: free */
	dev_t sock_dev;		 /* the socket file we bound, so that we only remove ours */
	ino_t sock_ino;
	uint64_t watchdog_usec, last_watchdog;
	int ready_pipe;	     /* daemonized: tell the parent we are up */
	struct client *dead; /* detached clients, freed by bury_dead() */
} g = { .lfd = -1, .ready_pipe = -1 };

/* ---- epoll helpers ------------------------------------------------------------------------ */

static int watch(int fd, struct ev *ev, uint32_t events)
{
	struct epoll_event e = { .events = events, .data.ptr = ev };

	return epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &e) ? -errno : 0;
}

static void unwatch(int fd)
{
	if (fd >= 0)
		epoll_ctl(g.epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* ---- attach -------------------------------------------------------------------------------- */

/* The second message of a GPU attach: which devices, and their staging fds. */
static int reply_gpu(int fd, const struct kvcp_attach_gpu *m, const int *fds)
{
	char cbuf[CMSG_SPACE(KVCP_MAX_GPUS * sizeof(int))] = { 0 };
	struct iovec iov = { (void *)m, sizeof(*m) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = CMSG_SPACE(m->ndev * sizeof(int)) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(m->ndev * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, m->ndev * sizeof(int));
	return sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ? -errno : 0;
}

static void reply(int fd, int status, const struct kvcd_session *s, const int fds[2])
{
	struct kvcp_attach_rep rep = { .status = status };
	char cbuf[CMSG_SPACE(2 * sizeof(int))] = { 0 };
	struct iovec iov = { &rep, sizeof(rep) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (s) {
		rep.client_id = s->id;
		rep.boot_token = g.d.boot_token;
		rep.ctrl_size = s->ctrl_size;
		rep.staging_size = s->staging_size;
		rep.gpu_mask = s->gpu_mask;
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, 2 * sizeof(int));
	}
	if (sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && s)
		kvcd_log(LOG_WARNING, "attach reply to client %u: %s", s->id, strerror(errno));
}

/* Read the attach request once; close any descriptors a client tried to pass us. */
static int read_request(int fd, struct kvcp_attach_req *req)
{
	char buf[sizeof(*req) + 1];
	char cbuf[CMSG_SPACE(16 * sizeof(int))];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	if (n < 0)
		return errno == EAGAIN ? -EAGAIN : -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int x;

				memcpy(&x, CMSG_DATA(cm) + i * sizeof(int), sizeof(x));
				close(x);
			}
	if (n != (ssize_t)sizeof(*req) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
		return -EBADMSG;
	memcpy(req, buf, sizeof(*req));
	if (req->magic32 != KVCP_ATTACH_MAGIC)
		return -EBADMSG;
	if (req->major != KVCP_MAJOR)
		return -EPROTO;
	if ((req->flags & ~(KVCP_ATTACH_F_GPU | KVCP_ATTACH_F_PHASE)) || req->reserved[0] ||
	    req->reserved[1] ||
	    (!(req->flags & KVCP_ATTACH_F_GPU) && (req->gpu_staging_size || req->gpu_mask)) ||
	    !memchr(req->ns, 0, sizeof(req->ns)) || !req->ns[0])
		return -EBADMSG;
	for (const char *p = req->ns; *p; p++)
		if (*p <= ' ' || *p > '~')
			return -EINVAL;
	return 0;
}

static int peer_pidfd(int fd, pid_t pid)
{
	int pidfd = -1;
	socklen_t len = sizeof(pidfd);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0)
		return pidfd;
	return pid > 0 ? kvcd_pidfd_open(pid) : -1;
}

/* The least busy of the configured workers with room; when they are all full, the first
 * overflow worker with room, started on demand (each worker waits on at most
 * KVCD_WORKER_MAX_SESSIONS rings, so max_clients may need more than cfg.workers). Returns
 * the index or -EUSERS. */
static int pick_worker(struct kvcd *d)
{
	int best = -1;

	for (unsigned i = 0; i < d->cfg.workers; i++)
		if (d->workers[i].nsessions < KVCD_WORKER_MAX_SESSIONS &&
		    (best < 0 || d->workers[i].nsessions < d->workers[best].nsessions))
			best = (int)i;
	for (unsigned i = d->cfg.workers; best < 0 && i < d->max_workers; i++) {
		if (i == d->nworkers) {
			if (kvcd_worker_start(&d->workers[i], d, i))
				return -EUSERS;
			/* STATS reads the count from workers: the new one is whole before it counts */
			__atomic_store_n(&d->nworkers, d->nworkers + 1, __ATOMIC_RELEASE);
			kvcd_log(LOG_NOTICE, "%u clients: started overflow worker %u", d->nsessions,
				 i);
		}
		if (d->workers[i].nsessions < KVCD_WORKER_MAX_SESSIONS)
			best = (int)i;
	}
	return best < 0 ? -EUSERS : best;
}

static int add_session(struct kvcd *d, struct kvcd_session *s)
{
	int err = 0;

	pthread_mutex_lock(&d->sessions_lock);
	if (d->nsessions == d->cap_sessions) {
		unsigned cap = d->cap_sessions ? 2 * d->cap_sessions : 16;
		struct kvcd_session **n = realloc(d->sessions, cap * sizeof(*n));

		if (n) {
			d->sessions = n;
			d->cap_sessions = cap;
		} else {
			err = -ENOMEM;
		}
	}
	if (!err)
		d->sessions[d->nsessions++] = s;
	pthread_mutex_unlock(&d->sessions_lock);
	return err;
}

/* A reference on namespace @name, created as the configuration says: its policy, its quota,
 * and whether it spills to the remote tier (its own word, else evicted; off without one). */
static int open_ns(struct kvcd *d, const char *name)
{
	const struct kvcd_ns_acl *acl = kvcd_config_ns(&d->cfg, name);
	int remote = !d->remote		       ? KVCD_REMOTE_OFF
		     : acl && acl->remote >= 0 ? acl->remote
					       : KVCD_REMOTE_EVICTED;

	return kvcd_store_ns_get(&d->store, name, kvcd_config_policy(&d->cfg, name),
				 acl ? acl->quota : 0, remote);
}

static int attach(struct kvcd *d, int fd, const struct kvcp_attach_req *req, struct client **out)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	uint64_t staging = req->staging_size ? req->staging_size : d->cfg.staging_default;
	gid_t groups[256];
	socklen_t glen = sizeof(groups);
	unsigned ngroups;
	struct client *c;
	struct kvcp_attach_gpu gmsg = { 0 };
	int fds[2], gfds[KVCP_MAX_GPUS], err, ns, worker;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len))
		return -errno;
	/* the peer's supplementary groups as they were at connect(); none if the kernel cannot
	 * say (or has more than we look at), which only ever refuses */
	ngroups = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) ? 0
									   : glen / sizeof(gid_t);
	if (!kvcd_config_allows(&d->cfg, req->ns, cred.uid, cred.gid, groups, ngroups)) {
		kvcd_log(LOG_WARNING, "refused pid %d uid %u gid %u: not allowed in namespace '%s'",
			 (int)cred.pid, cred.uid, cred.gid, req->ns);
		return -EACCES;
	}
	if (d->nsessions >= d->cfg.max_clients)
		return -EUSERS;
	if (staging > d->cfg.staging_max)
		return -E2BIG;
	worker = pick_worker(d);
	if (worker < 0)
		return worker;
	ns = open_ns(d, req->ns);
	if (ns < 0) {
		kvcd_log(LOG_WARNING, "refused pid %d: namespace '%s': %s", (int)cred.pid, req->ns,
			 ns == -ENFILE ? "the namespace table is full" : strerror(-ns));
		return ns;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		kvcd_store_ns_put(&d->store, (uint16_t)ns);
		return -ENOMEM;
	}
	c->s.sock = fd;
	c->s.pid = cred.pid;
	c->s.uid = cred.uid;
	c->s.gid = cred.gid;
	c->s.admin = kvcd_config_admin(&d->cfg, cred.uid, d->euid);
	c->s.ns_id = (uint16_t)ns;
	memcpy(c->s.ns, req->ns, sizeof(c->s.ns));
	c->s.id = ++d->next_id;
	c->s.pins.id = c->s.id;
	c->s.pidfd = peer_pidfd(fd, cred.pid);
	err = kvcd_session_create(d, req, staging, &c->s, fds);
	if (err)
		goto out_free;
	if (req->flags & KVCP_ATTACH_F_GPU) {
		err = kvcd_gpu_attach(d, req, &c->s, &gmsg, gfds);
		if (err) {
			kvcd_log(LOG_WARNING, "refused pid %d GPU access: %s", (int)cred.pid,
				 strerror(-err));
			goto out_destroy;
		}
	}
	c->ev_sock = (struct ev){ EV_SOCK, c };
	c->ev_pidfd = (struct ev){ EV_PIDFD, c };
	/* a worker with room was picked above and only this thread adds sessions: the client
	 * is told it is attached only once a worker serves it */
	err = kvcd_worker_add(&d->workers[worker], &c->s);
	if (err)
		goto out_destroy;
	err = add_session(d, &c->s);
	if (err) {
		kvcd_worker_remove(&d->workers[worker], &c->s);
		goto out_destroy;
	}
	reply(fd, 0, &c->s, fds);
	close(fds[0]);
	close(fds[1]);
	err = gmsg.ndev ? reply_gpu(fd, &gmsg, gfds) : 0;
	for (unsigned i = 0; i < gmsg.ndev; i++)
		close(gfds[i]);
	watch(fd, &c->ev_sock, EPOLLIN | EPOLLRDHUP);
	if (c->s.pidfd >= 0)
		watch(c->s.pidfd, &c->ev_pidfd, EPOLLIN);
	*out = c;
	/* the client waits for the GPU message: without it, the caller's detach hangs it up,
	 * which the client reads as a reset */
	return err;
out_destroy:
	close(fds[0]);
	close(fds[1]);
	for (unsigned i = 0; i < gmsg.ndev; i++)
		close(gfds[i]);
out_free:
	c->s.sock = -1; /* the caller owns and closes fd */
	kvcd_gpu_detach(d, &c->s);
	kvcd_session_destroy(&c->s);
	kvcd_store_ns_put(&d->store, c->s.ns_id);
	free(c);
	return err;
}

/* Tear a client down now; its memory is freed by bury_dead() once no event of the current
 * epoll batch can still name it. Safe to call twice. */
static void detach(struct kvcd *d, struct client *c)
{
	struct kvcd_session *s = &c->s;

	if (c->dead)
		return;
	c->dead = true;
	unwatch(s->sock);
	unwatch(s->pidfd);
	kvcd_worker_remove(&d->workers[s->worker], s);
	kvcd_store_release_pins(&d->store, 0, &s->pins);
	pthread_mutex_lock(&d->sessions_lock);
	for (unsigned i = 0; i < d->nsessions; i++)
		if (d->sessions[i] == s) {
			d->sessions[i] = d->sessions[--d->nsessions];
			break;
		}
	d->bad_closed += s->bad_requests;
	pthread_mutex_unlock(&d->sessions_lock);
	kvcd_cont_abandon(d, s); /* a request still at a GPU's mover */
	kvcd_gpu_detach(d, s);
	kvcd_session_destroy(s);
	kvcd_store_ns_put(&d->store, s->ns_id);
	c->next_dead = g.dead;
	g.dead = c;
}

static void bury_dead(void)
{
	while (g.dead) {
		struct client *c = g.dead;

		g.dead = c->next_dead;
		free(c);
	}
}

static void finish_handshake(struct kvcd *d, struct pending *p)
{
	struct kvcp_attach_req req;
	struct client *c = NULL;
	int err = read_request(p->fd, &req);

	if (err == -EAGAIN)
		return;
	unwatch(p->fd);
	if (!err)
		err = attach(d, p->fd, &req, &c);
	if (err && c) {
		kvcd_log(LOG_WARNING, "client %u: %s", c->s.id, strerror(-err));
		detach(d, c); /* closes the socket: the client sees EOF */
	} else if (err) {
		reply(p->fd, err, NULL, NULL);
		close(p->fd);
	}
	p->fd = -1;
}

static void drop_pending(struct pending *p)
{
	unwatch(p->fd);
	close(p->fd);
	p->fd = -1;
}

/* A slot for a new connection from @uid: a free one, else the oldest of the uid holding
 * most (its connection is dropped). NULL when @uid already holds its share. */
static struct pending *pending_slot(const struct kvcd_config *c, uid_t uid)
{
	struct pending *free_slot = NULL, *victim = NULL;
	unsigned mine = 0, most = 0;

	for (unsigned i = 0; i < c->max_pending; i++) {
		struct pending *p = &g.pending[i];
		unsigned n = 0;

		if (p->fd < 0) {
			free_slot = free_slot ? free_slot : p;
			continue;
		}
		mine += p->uid == uid;
		for (unsigned j = 0; j < c->max_pending; j++) /* small: max_pending */
			n += g.pending[j].fd >= 0 && g.pending[j].uid == p->uid;
		if (n > most || (n == most && victim && p->deadline < victim->deadline)) {
			most = n;
			victim = p;
		}
	}
	if (mine >= c->max_pending_per_uid)
		return NULL;
	if (free_slot)
		return free_slot;
	kvcd_log(LOG_WARNING, "%u attach handshakes pending: dropping the oldest of uid %u",
		 c->max_pending, victim->uid);
	reply(victim->fd, -EBUSY, NULL, NULL);
	drop_pending(victim);
	return victim;
}

static void accept_all(const struct kvcd_config *c)
{
	for (;;) {
		int fd = accept4(g.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct ucred cred = { .uid = (uid_t)-1 };
		socklen_t len = sizeof(cred);
		struct pending *p;

		if (fd < 0)
			return;
		getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
		p = pending_slot(c, cred.uid);
		if (!p) { /* this uid has enough half-open attaches: refuse, saying why */
			reply(fd, -EBUSY, NULL, NULL);
			close(fd);
			continue;
		}
		p->fd = fd;
		p->uid = cred.uid;
		p->deadline = kvcd_now_ns() + c->handshake_ms * 1000000ull;
		p->ev = (struct ev){ EV_PENDING, p };
		if (watch(fd, &p->ev, EPOLLIN | EPOLLRDHUP)) {
			close(fd);
			p->fd = -1;
		}
	}
}

/* ---- housekeeping ------------------------------------------------------------------------- */

static void reap_broken(struct kvcd *d)
{
	uint64_t v;

	if (read(g.d.reap_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		kvcd_log(LOG_ERR, "eventfd read: %s", strerror(errno));
	for (unsigned i = 0; i < d->nsessions;) {
		struct kvcd_session *s = d->sessions[i];

		if (__atomic_load_n(&s->broken, __ATOMIC_ACQUIRE))
			detach(d, (struct client *)s); /* swaps the last one into slot i */
		else
			i++;
	}
}

static void tick(struct kvcd *d)
{
	uint64_t now = kvcd_now_ns(), exp;

	if (read(g.timerfd, &exp, sizeof(exp)) < 0 && errno != EAGAIN)
		kvcd_log(LOG_ERR, "timerfd read: %s", strerror(errno));
	kvcd_store_release_pins(&d->store, now, NULL);
	kvcd_store_reclaim(&d->store, 0);
	for (unsigned i = 0; i < d->cfg.max_pending; i++) {
		struct pending *p = &g.pending[i];

		if (p->fd >= 0 && now > p->deadline) { /* connected but never said who it is */
			reply(p->fd, -ETIMEDOUT, NULL, NULL);
			drop_pending(p);
		}
	}
	if (g.watchdog_usec && now - g.last_watchdog >= g.watchdog_usec * 1000 / 2) {
		sd_notifyf(0, "WATCHDOG=1\nSTATUS=serving %u clients, %zu blocks", d->nsessions,
			   d->store.count);
		g.last_watchdog = now;
	}
}

/* ---- start-up ------------------------------------------------------------------------------ */

static void default_socket(struct kvcd_config *c)
{
	const char *env = getenv("KVCD_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");

	if (c->socket[0])
		return;
	if (env && *env && strlen(env) < sizeof(c->socket))
		strcpy(c->socket, env);
	else if (access("/run/kvcd", W_OK) == 0)
		strcpy(c->socket, "/run/kvcd/kvcd.sock");
	else if (xdg && *xdg && strlen(xdg) + 10 < sizeof(c->socket))
		snprintf(c->socket, sizeof(c->socket), "%s/kvcd.sock", xdg);
	else
		strcpy(c->socket, "/tmp/kvcd.sock");
}

static int listen_socket(const struct kvcd_config *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), probe;
	struct stat st;

	if (fd < 0)
		return -errno;
	strcpy(sa.sun_path, c->socket);
	/* Remove only a socket nobody listens on (a dead kvcd's): never a file, a directory
	 * or the live socket of any server, kvcd or not. */
	if (lstat(c->socket, &st) == 0) {
		const char *why = NULL;

		probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (!S_ISSOCK(st.st_mode))
			why = "it is not a socket";
		else if (probe < 0)
			why = strerror(errno);
		else if (connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			why = "another kvcd is serving it";
		else if (errno != ECONNREFUSED)
			why = errno == EPROTOTYPE ? "another server (not kvcd) is listening on it"
						  : strerror(errno);
		if (probe >= 0)
			close(probe);
		if (why) {
			kvcd_log(LOG_ERR, "will not replace %s: %s", c->socket, why);
			close(fd);
			return -EADDRINUSE;
		}
		unlink(c->socket); /* the stale socket of a kvcd that died */
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 128))
		goto out_err;
	if (stat(c->socket, &st) == 0) {
		g.sock_dev = st.st_dev;
		g.sock_ino = st.st_ino;
	}
	if (c->socket_group[0]) {
		struct group *gr = getgrnam(c->socket_group);

		if (!gr || chown(c->socket, (uid_t)-1, gr->gr_gid)) {
			kvcd_log(LOG_ERR, "cannot give %s to group '%s': %s", c->socket,
				 c->socket_group, gr ? strerror(errno) : "no such group");
			errno = EINVAL;
			goto out_err;
		}
	}
	if (chmod(c->socket, (mode_t)c->socket_mode))
		goto out_err;
	return fd;
out_err:
	kvcd_log(LOG_ERR, "cannot listen on %s: %s", c->socket, strerror(errno));
	close(fd);
	return -errno;
}

/* Fail before READY when the pools cannot be locked, saying what to raise (unless memlock =
 * try). */
static int check_memlock(const struct kvcd_config *c, unsigned nodes)
{
	struct rlimit rl;
	uint64_t need = c->pool_size * nodes;

	if (kvcd_has_cap_ipc_lock() || getrlimit(RLIMIT_MEMLOCK, &rl) ||
	    rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
		return 0;
	if (c->memlock_try) { /* each pool says whether it could be locked */
		kvcd_log(LOG_WARNING,
			 "memlock limit too low for %llu MiB of pools (RLIMIT_MEMLOCK %llu KiB, no "
			 "CAP_IPC_LOCK); memlock = try: going on with what the kernel locks",
			 (unsigned long long)(need >> 20), (unsigned long long)(rl.rlim_cur >> 10));
		return 0;
	}
	kvcd_log(LOG_ERR,
		 "memlock limit too low: %u pool(s) of %llu MiB need %llu MiB locked, but "
		 "RLIMIT_MEMLOCK is %llu KiB and kvcd lacks CAP_IPC_LOCK. Raise the limit "
		 "(LimitMEMLOCK=infinity in kvcd.service, or `ulimit -l unlimited`) or lower "
		 "--pool-size.",
		 nodes, (unsigned long long)(c->pool_size >> 20), (unsigned long long)(need >> 20),
		 (unsigned long long)(rl.rlim_cur >> 10));
	return -ENOMEM;
}

/* The pools' namespace names in their superblocks follow the store's table (restarts read
 * them back). Called with the store lock held. */
static void sync_names(struct kvcd_store *s, unsigned id, void *arg)
{
	static char names[KVCD_STORE_NS][KVCP_NS_MAX];
	struct kvcd *d = arg;

	(void)id;
	for (unsigned i = 0; i < KVCD_STORE_NS; i++)
		memcpy(names[i], s->ns[i].name, KVCP_NS_MAX);
	for (unsigned i = 0; i < d->npools; i++)
		kvcd_pool_set_names(&d->pools[i], (const char(*)[KVCP_NS_MAX])names, KVCD_STORE_NS);
}

/* The descriptor systemd's file descriptor store handed back for pool @index, or -1. */
static int stored_fd(int n, char **names, unsigned index)
{
	char want[32];

	snprintf(want, sizeof(want), "kvcd-pool-%u", index);
	for (int i = 0; i < n; i++)
		if (names && names[i] && !strcmp(names[i], want))
			return SD_LISTEN_FDS_START + i;
	return -1;
}

/* Take back the blocks of pool @i, which a previous kvcd filled: its namespaces by name, its
 * blocks by their records. Returns 0, or -errno when it must be formatted instead. */
static int adopt_pool(struct kvcd *d, unsigned i, int refs[KVCD_STORE_NS])
{
	const struct kvcd_sb *sb = d->pools[i].base;
	struct kvcd_adopt_stats st;
	int map[256];
	uint64_t t0 = kvcd_now_ns();
	int err;

	for (unsigned k = 0; k < 256; k++) {
		const char *name = sb->ns[k];
		int id;

		map[k] = -1;
		if (!name[0] || !memchr(name, 0, KVCP_NS_MAX))
			continue;
		id = open_ns(d, name);
		if (id < 0)
			continue;
		map[k] = id;
		refs[id]++; /* dropped once every pool is in: empty ones are then forgotten */
	}
	err = kvcd_store_adopt(&d->store, i, map, d->cfg.checksum, &st);
	if (err) {
		kvcd_log(LOG_WARNING,
			 "node %d: the pool's blocks do not chain up: starting it empty",
			 d->pools[i].node);
		return err;
	}
	kvcd_log(LOG_INFO,
		 "node %d: warm: %llu blocks (%llu MiB) back in the index in %llu ms; dropped "
		 "%llu unfinished, %llu with a bad record, %llu failing their checksum",
		 d->pools[i].node, (unsigned long long)st.kept,
		 (unsigned long long)(st.bytes >> 20),
		 (unsigned long long)((kvcd_now_ns() - t0) / 1000000),
		 (unsigned long long)st.uncommitted, (unsigned long long)st.bad_tag,
		 (unsigned long long)st.bad_sum);
	return 0;
}

static int setup_pools(struct kvcd *d)
{
	bool bind = numa_available() >= 0;
	char **names = NULL, path[sizeof(d->cfg.state_dir) + 32];
	int refs[KVCD_STORE_NS] = { 0 }, nfds, err;

	err = kvcd_topo_load(&d->topo, NULL);
	if (err) { /* no topology: one pool, unbound */
		kvcd_log(LOG_WARNING, "hwloc could not read the topology (%s); one unbound pool",
			 strerror(-err));
		memset(&d->topo, 0, sizeof(d->topo));
		d->topo.nnodes = 1;
		bind = false;
	}
	err = check_memlock(&d->cfg, d->topo.nnodes);
	if (err)
		return err;
	nfds = sd_listen_fds_with_names(1, &names); /* the pools systemd kept for us */
	for (unsigned i = 0; i < d->topo.nnodes && !err; i++) {
		int fd = stored_fd(nfds, names, i);

		snprintf(path, sizeof(path), "%s/kvcd-pool-%u", d->cfg.state_dir, i);
		err = kvcd_pool_open(&d->pools[i], i, d->topo.os_index[i], d->cfg.pool_size,
				     d->cfg.hugepages, bind, d->cfg.memlock_try, fd,
				     fd < 0 && d->cfg.state_dir[0] ? path : NULL);
		if (err)
			break;
		d->npools++;
		kvcd_log(LOG_INFO, "node %d: %llu MiB pool%s, %s, locked", d->topo.os_index[i],
			 (unsigned long long)(d->cfg.pool_size >> 20),
			 fd >= 0	       ? " kept by systemd"
			 : d->cfg.state_dir[0] ? " in the state directory"
					       : "",
			 d->pools[i].huge ? "2 MiB hugetlb pages"
			 : d->cfg.hugepages == KVCD_HUGE_TRY
				 ? "no hugetlb pages, transparent huge pages advised"
				 : "4 KiB pages");
	}
	for (int i = 0; names && i < nfds; i++)
		free(names[i]);
	free(names);
	if (err)
		return err;
	err = kvcd_store_init(&d->store, d->pools, d->npools, d->cfg.high_wm, d->cfg.low_wm);
	if (err)
		return err;
	for (unsigned i = 0; i < d->npools; i++)
		if (!d->pools[i].warm || adopt_pool(d, i, refs))
			kvcd_pool_format(&d->pools[i]);
	for (unsigned id = 0; id < KVCD_STORE_NS; id++)
		while (refs[id]--)
			kvcd_store_ns_put(&d->store, (uint16_t)id);
	pthread_mutex_lock(&d->store.lock);
	d->store.ns_arg = d;
	d->store.ns_changed = sync_names;
	sync_names(&d->store, 0, d);
	pthread_mutex_unlock(&d->store.lock);
	/* Under systemd the pools outlive us in its file descriptor store (FileDescriptorStoreMax=
	 * in kvcd.service): a restart, crash or upgrade gets them back warm. */
	for (unsigned i = 0; i < d->npools && getenv("NOTIFY_SOCKET"); i++) {
		char msg[64];

		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=kvcd-pool-%u", i);
		if (sd_pid_notify_with_fds(0, 0, msg, &d->pools[i].fd, 1) <= 0)
			kvcd_log(LOG_WARNING,
				 "pool %u could not be given to systemd to keep: a "
				 "restart will find it empty",
				 i);
	}
	return 0;
}

static int setup_loop(void)
{
	sigset_t mask;
	struct itimerspec its = { { 0, TICK_MS * 1000000 }, { 0, TICK_MS * 1000000 } };

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL); /* before any thread: they inherit the mask */
	signal(SIGPIPE, SIG_IGN);
	g.epfd = epoll_create1(EPOLL_CLOEXEC);
	g.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	g.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	g.d.reap_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (g.epfd < 0 || g.sigfd < 0 || g.timerfd < 0 || g.d.reap_fd < 0 ||
	    timerfd_settime(g.timerfd, 0, &its, NULL))
		return -errno;
	g.ev_signal = (struct ev){ EV_SIGNAL, NULL };
	g.ev_timer = (struct ev){ EV_TIMER, NULL };
	g.ev_reap = (struct ev){ EV_REAP, NULL };
	if (watch(g.sigfd, &g.ev_signal, EPOLLIN) || watch(g.timerfd, &g.ev_timer, EPOLLIN) ||
	    watch(g.d.reap_fd, &g.ev_reap, EPOLLIN))
		return -errno;
	g.pending = calloc(g.d.cfg.max_pending, sizeof(*g.pending));
	if (!g.pending)
		return -ENOMEM;
	for (unsigned i = 0; i < g.d.cfg.max_pending; i++)
		g.pending[i].fd = -1;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvcd [--config FILE] [--socket PATH] [--pool-size SIZE] [--workers N]\n"
		"            [--gpu-pool-size SIZE] [--memlock require|try] [--state-dir DIR]\n"
		"            [--log-level LEVEL] [--pidfile FILE] [--foreground] [--version]\n"
		"  --config FILE     INI configuration (default: embedded defaults)\n"
		"  --socket PATH     UNIX socket (default: $KVCD_SOCKET, /run/kvcd/kvcd.sock,\n"
		"                    $XDG_RUNTIME_DIR/kvcd.sock or /tmp/kvcd.sock)\n"
		"  --pool-size SIZE  pinned pool per NUMA node, e.g. 256M, 4G (default 256M)\n"
		"  --workers N       ring-draining threads\n"
		"  --gpu-pool-size SIZE\n"
		"                    GPU pool per CUDA device, e.g. 8G (default 0: none)\n"
		"  --memlock try     go on with pools the kernel will not lock in RAM, saying so\n"
		"                    (default require: stop, saying what to raise)\n"
		"  --state-dir DIR   keep the pools in DIR (tmpfs or hugetlbfs) so that a restart\n"
		"                    finds the cache warm (under systemd they are kept anyway)\n"
		"  --log-level LEVEL err, warning, notice, info (default) or debug\n"
		"  --pidfile FILE    write kvcd's pid there once it is ready\n"
		"  --foreground      do not detach (implied under systemd)\n"
		"Logs go to the journal under systemd, to stderr in the foreground, to syslog once\n"
		"detached. SIGHUP reloads --config; SIGTERM stops.\n");
}

/* The command line, kept: a reload reads the file again and applies it on top, as at start. */
static struct {
	const char *config, *sock, *pool, *gpu_pool, *workers, *state, *log_level, *pidfile;
	const char *memlock;
	bool foreground;
} cli;

/* The configuration from the embedded defaults, the file and the command line (which wins),
 * checked. Returns 0 or -EINVAL (said). */
static int configure(struct kvcd_config *c)
{
	kvcd_config_defaults(c);
	c->foreground = cli.foreground;
	if (cli.config && kvcd_config_load(c, cli.config))
		return -EINVAL;
	if (cli.sock && strlen(cli.sock) >= sizeof(c->socket)) {
		kvcd_log(LOG_ERR, "socket path too long: %s", cli.sock);
		return -EINVAL;
	}
	if (cli.sock)
		strcpy(c->socket, cli.sock);
	if (cli.state && strlen(cli.state) >= sizeof(c->state_dir) - 16) {
		kvcd_log(LOG_ERR, "--state-dir: path too long: %s", cli.state);
		return -EINVAL;
	}
	if (cli.state)
		strcpy(c->state_dir, cli.state);
	if (cli.pool && (kvcd_parse_size(cli.pool, &c->pool_size) || c->pool_size < (1u << 20))) {
		kvcd_log(LOG_ERR, "--pool-size %s: expected a size of at least 1M", cli.pool);
		return -EINVAL;
	}
	if (cli.gpu_pool && kvcd_parse_size(cli.gpu_pool, &c->gpu_pool_size)) {
		kvcd_log(LOG_ERR, "--gpu-pool-size %s: expected a size such as 8G, or 0",
			 cli.gpu_pool);
		return -EINVAL;
	}
	if (cli.memlock && strcmp(cli.memlock, "try") && strcmp(cli.memlock, "require")) {
		kvcd_log(LOG_ERR, "--memlock %s: expected require or try", cli.memlock);
		return -EINVAL;
	}
	if (cli.memlock)
		c->memlock_try = !strcmp(cli.memlock, "try");
	if (cli.workers &&
	    (sscanf(cli.workers, "%u", &c->workers) != 1 || !c->workers || c->workers > 64)) {
		kvcd_log(LOG_ERR, "--workers %s: expected 1..64", cli.workers);
		return -EINVAL;
	}
	if (cli.log_level && (c->log_level = kvcd_log_parse_level(cli.log_level)) < 0) {
		kvcd_log(LOG_ERR, "--log-level %s: expected err, warning, notice, info or debug",
			 cli.log_level);
		return -EINVAL;
	}
	if (getenv("NOTIFY_SOCKET"))
		c->foreground = true;
	return kvcd_config_check(c);
}

static int parse_args(int argc, char **argv, struct kvcd_config *c)
{
	static const struct option opts[] = { { "config", required_argument, 0, 'c' },
					      { "socket", required_argument, 0, 's' },
					      { "pool-size", required_argument, 0, 'p' },
					      { "workers", required_argument, 0, 'w' },
					      { "gpu-pool-size", required_argument, 0, 'G' },
					      { "memlock", required_argument, 0, 'M' },
					      { "state-dir", required_argument, 0, 'd' },
					      { "log-level", required_argument, 0, 'l' },
					      { "pidfile", required_argument, 0, 'P' },
					      { "foreground", no_argument, 0, 'f' },
					      { "help", no_argument, 0, 'h' },
					      { "version", no_argument, 0, 'V' },
					      { 0, 0, 0, 0 } };
	int o;

	while ((o = getopt_long(argc, argv, "c:s:p:w:G:M:d:l:P:fhV", opts, NULL)) != -1) {
		switch (o) {
		case 'c': cli.config = optarg; break;
		case 's': cli.sock = optarg; break;
		case 'p': cli.pool = optarg; break;
		case 'w': cli.workers = optarg; break;
		case 'G': cli.gpu_pool = optarg; break;
		case 'M': cli.memlock = optarg; break;
		case 'd': cli.state = optarg; break;
		case 'l': cli.log_level = optarg; break;
		case 'P': cli.pidfile = optarg; break;
		case 'f': cli.foreground = true; break;
		case 'h': usage(stdout); exit(0);
		case 'V':
			printf("kvcd %s (protocol %d.%d)\n", KVC_VERSION_STRING, KVCP_MAJOR,
			       KVCP_MINOR);
			exit(0);
		default: usage(stderr); return -EINVAL;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return -EINVAL;
	}
	return configure(c);
}

/* What a reload cannot change while kvcd runs: said, and kept as it is. */
#define KEEP(field, fmt)                                                                               \
	do {                                                                                           \
		if (memcmp(&n->field, &d->cfg.field, sizeof(n->field))) {                              \
			kvcd_log(                                                                      \
				LOG_WARNING,                                                           \
				"reload: %s cannot change while kvcd runs (restart it); keeping " fmt, \
				#field, d->cfg.field);                                                 \
			memcpy(&n->field, &d->cfg.field, sizeof(n->field));                            \
		}                                                                                      \
	} while (0)

/* SIGHUP: read the configuration again. ACLs, policies and quotas of configured namespaces,
 * admin uids, limits, watermarks, the log level and the metrics listener change at once; a
 * file that does not load or check out changes nothing. */
static void reload(struct kvcd *d)
{
	static struct kvcd_config fresh;
	struct kvcd_config *n = &fresh;
	bool checksum;
	unsigned pins, keys;
	uint32_t lease;

	if (!cli.config) {
		kvcd_log(LOG_NOTICE, "SIGHUP: kvcd runs without --config: nothing to reload");
		return;
	}
	sd_notify(0, "RELOADING=1");
	if (configure(n)) {
		kvcd_log(LOG_ERR, "reload of %s failed: keeping the running configuration",
			 cli.config);
		sd_notify(0, "READY=1");
		return;
	}
	KEEP(socket, "%s");
	KEEP(socket_group, "%s");
	KEEP(socket_mode, "%o");
	KEEP(pool_size, "%" PRIu64);
	KEEP(workers, "%u");
	KEEP(gpu_pool_size, "%" PRIu64);
	KEEP(hugepages, "%d");
	KEEP(memlock_try, "%d");
	KEEP(state_dir, "%s");
	KEEP(max_clients, "%u");
	KEEP(max_pending, "%u");
	n->foreground = d->cfg.foreground;
	if (strcmp(n->metrics_listen, d->cfg.metrics_listen)) {
		kvcd_metrics_stop(d);
		memcpy(d->cfg.metrics_listen, n->metrics_listen, sizeof(n->metrics_listen));
		kvcd_metrics_start(d); /* says so when it cannot */
	}
	/* configured namespaces that exist take their new policy and quota */
	for (unsigned i = 0; i < n->nns; i++) {
		pthread_mutex_lock(&d->store.lock);
		for (unsigned id = 0; id < d->store.nns; id++) {
			struct kvcd_store_ns *s = &d->store.ns[id];

			if (strcmp(s->name, n->ns[i].name))
				continue;
			if (n->ns[i].has_policy)
				s->policy = n->ns[i].policy;
			s->quota = n->ns[i].quota;
		}
		pthread_mutex_unlock(&d->store.lock);
	}
	pthread_mutex_lock(&d->store.lock);
	d->store.high_wm = n->high_wm;
	d->store.low_wm = n->low_wm;
	pthread_mutex_unlock(&d->store.lock);
	for (unsigned i = 0; i < d->gpu.ndev; i++) /* the GPU pools keep the same watermarks */
		kvcd_gpool_watermarks(kvcd_gpu_pool(d, i), n->high_wm, n->low_wm);
	kvcd_log_level(n->log_level);
	/* workers read these four while we write: they change by single atomic stores */
	checksum = n->checksum;
	pins = n->max_pins;
	keys = n->max_lookup_keys;
	lease = n->lease_max_ms;
	n->checksum = d->cfg.checksum;
	n->max_pins = d->cfg.max_pins;
	n->max_lookup_keys = d->cfg.max_lookup_keys;
	n->lease_max_ms = d->cfg.lease_max_ms;
	d->cfg = *n;
	__atomic_store_n(&d->cfg.checksum, checksum, __ATOMIC_RELAXED);
	__atomic_store_n(&d->cfg.max_pins, pins, __ATOMIC_RELAXED);
	__atomic_store_n(&d->cfg.max_lookup_keys, keys, __ATOMIC_RELAXED);
	__atomic_store_n(&d->cfg.lease_max_ms, lease, __ATOMIC_RELAXED);
	kvcd_log(LOG_NOTICE, "configuration reloaded from %s", cli.config);
	sd_notify(0, "READY=1");
}

/* Classic daemonization with a readiness pipe: the parent exits 0 only once the child is
 * serving, and with the child's failure otherwise. */
static void daemonize(void)
{
	int p[2];
	pid_t pid;
	char st = 1;

	if (pipe2(p, O_CLOEXEC) || (pid = fork()) < 0) {
		kvcd_log(LOG_ERR, "fork: %s", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		close(p[1]);
		if (read(p[0], &st, 1) != 1)
			st = 1;
		_exit(st);
	}
	close(p[0]);
	setsid();
	g.ready_pipe = p[1];
}

static void announce_ready(struct kvcd *d)
{
	char st = 0;
	int devnull;

	sd_notifyf(0, "READY=1\nSTATUS=serving on %s, %u pool(s) of %llu MiB\nMAINPID=%d",
		   d->cfg.socket, d->npools, (unsigned long long)(d->cfg.pool_size >> 20),
		   (int)getpid());
	kvcd_log(LOG_INFO, "ready on %s (%u worker(s), boot token %016llx)", d->cfg.socket,
		 d->cfg.workers, (unsigned long long)d->boot_token);
	if (g.ready_pipe >= 0) {
		if (write(g.ready_pipe, &st, 1) != 1)
			kvcd_log(LOG_ERR, "readiness pipe: %s", strerror(errno));
		close(g.ready_pipe);
		devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			close(devnull);
		}
	}
	uint64_t usec;

	if (sd_watchdog_enabled(0, &usec) > 0)
		g.watchdog_usec = usec;
	if (g.ready_pipe >= 0)
		kvcd_log_init(true); /* detached: stderr is /dev/null from here on */
	if (cli.pidfile) {
		FILE *f = fopen(cli.pidfile, "w");

		if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f))
			kvcd_log(LOG_WARNING, "--pidfile %s: %s", cli.pidfile, strerror(errno));
	}
}

/* The store evicts a block of a namespace that spills: the remote tier copies it (under the
 * store lock: an eviction is already the slow path of a STORE). */
static void remote_evicting(struct kvcd_store *s, const struct kvcd_block *b, uint16_t ns,
			    void *arg)
{
	kvcd_remote_put(arg, s->ns[ns].name, &s->slots[b->slot].key, &b->layout, b->data,
			b->stored);
}

/* The signal the signalfd holds (SIGTERM, SIGINT or SIGHUP), or 0. */
static int signalled(void)
{
	struct signalfd_siginfo si;

	return read(g.sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si) ? (int)si.ssi_signo : 0;
}

static void serve(struct kvcd *d)
{
	struct epoll_event evs[64];

	for (;;) {
		int n = epoll_wait(g.epfd, evs, 64, -1);

		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			struct ev *e = evs[i].data.ptr;

			switch (e->type) {
			case EV_LISTEN: accept_all(&d->cfg); break;
			case EV_SIGNAL:
				if (signalled() != SIGHUP)
					return;
				reload(d);
				break;
			case EV_TIMER: tick(d); break;
			case EV_REAP: reap_broken(d); break;
			case EV_PENDING: finish_handshake(d, e->ptr); break;
			case EV_SOCK: /* fall through: EOF or unexpected data, either way gone */
			case EV_PIDFD: detach(d, e->ptr); break;
			}
		}
		bury_dead();
	}
}

static void shutdown_all(struct kvcd *d)
{
	sd_notify(0, "STOPPING=1");
	kvcd_metrics_stop(d);
	struct stat st;

	unwatch(g.lfd);
	close(g.lfd);
	/* ours only: an operator may have started another server there meanwhile */
	if (stat(d->cfg.socket, &st) == 0 && st.st_dev == g.sock_dev && st.st_ino == g.sock_ino)
		unlink(d->cfg.socket);
	for (unsigned i = 0; i < d->cfg.max_pending; i++)
		if (g.pending[i].fd >= 0)
			drop_pending(&g.pending[i]);
	free(g.pending);
	while (d->nsessions)
		detach(d, (struct client *)d->sessions[0]);
	bury_dead();
	for (unsigned i = 0; i < d->nworkers; i++)
		kvcd_worker_stop(&d->workers[i]);
	kvcd_remote_stop(d); /* after the workers: they queue gets */
	kvcd_gpu_close(d);
	kvcd_bases_fini(d);
	kvcd_store_fini(&d->store);
	for (unsigned i = 0; i < d->npools; i++)
		kvcd_pool_destroy(&d->pools[i]);
	free(d->workers);
	free(d->sessions);
	if (cli.pidfile)
		unlink(cli.pidfile);
	kvcd_log(LOG_INFO, "stopped");
}

int main(int argc, char **argv)
{
	struct kvcd *d = &g.d;
	int err;

	static_assert(offsetof(struct client, s) == 0, "a session is its client");
	kvcd_log_init(false);
	if (parse_args(argc, argv, &d->cfg))
		return 2;
	kvcd_log_level(d->cfg.log_level);
	default_socket(&d->cfg);
	if (!d->cfg.foreground)
		daemonize();
	d->start_ns = kvcd_now_ns();
	d->euid = geteuid();
	pthread_mutex_init(&d->sessions_lock, NULL);
	if (getrandom(&d->boot_token, sizeof(d->boot_token), 0) != sizeof(d->boot_token))
		d->boot_token = d->start_ns ^ (uint64_t)getpid() << 32;
	/* before the pools: namespaces a warm restart brings back spill as an attach makes them */
	err = kvcd_remote_start(d); /* a cluster that is down only delays the remote tier */
	kvcd_gpu_probe(d, NULL);    /* no GPU, no driver: host tiers only, said once */
	if (!err)
		err = setup_pools(d);
	if (!err)
		err = kvcd_bases_init(d); /* the learned bases the pools brought back */
	if (err)
		goto fail;
	err = kvcd_gpu_start(d); /* after the pools, which it registers for DMA */
	if (!err)
		err = setup_loop();
	if (err)
		goto fail;
	g.lfd = listen_socket(&d->cfg);
	if (g.lfd < 0) {
		err = g.lfd;
		goto fail;
	}
	g.ev_listen = (struct ev){ EV_LISTEN, NULL };
	watch(g.lfd, &g.ev_listen, EPOLLIN);
	/* room for the overflow workers max_clients may need (pick_worker) */
	d->max_workers = (d->cfg.max_clients + KVCD_WORKER_MAX_SESSIONS - 1) /
			 KVCD_WORKER_MAX_SESSIONS;
	if (d->max_workers < d->cfg.workers)
		d->max_workers = d->cfg.workers;
	d->workers = calloc(d->max_workers, sizeof(*d->workers));
	if (!d->workers) {
		err = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < d->cfg.workers; i++) {
		err = kvcd_worker_start(&d->workers[i], d, i);
		if (err)
			goto fail;
		d->nworkers++;
	}
	err = kvcd_metrics_start(d);
	if (err)
		goto fail;
	if (d->remote) {
		pthread_mutex_lock(&d->store.lock);
		d->store.evicting_arg = d;
		d->store.evicting = remote_evicting;
		pthread_mutex_unlock(&d->store.lock);
	}
	announce_ready(d);
	serve(d);
	shutdown_all(d);
	return 0;
fail:
	kvcd_log(LOG_ERR, "failed to start: %s", strerror(-err));
	sd_notifyf(0, "STATUS=failed to start: %s\nERRNO=%d", strerror(-err), -err);
	return 1;
}
