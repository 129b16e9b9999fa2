/* peers.c - the peers kvcbench compares kvcd with (see peers.h).
 *
 * The minimal socket server speaks a fixed 24-byte header {op, status, key, len} followed by
 * len payload bytes, over a blocking UNIX stream socket: the least work a request/response
 * server can do per request. One process per connection, each with its own table; every
 * process dies with its parent (PR_SET_PDEATHSIG), so none outlives the benchmark. */
#include "peers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

/* ---- Redis (hiredis) ------------------------------------------------------------------------- */

struct peer {
	redisContext *rc;
	redisReply *last; /* the reply get() handed out */
	int fd;		  /* socket server */
	void *buf;
	size_t max;
};

static struct peer *redis_open(const char *addr, size_t max_value)
{
	struct peer *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->rc = redisConnectUnix(addr);
	if (!p->rc || p->rc->err) {
		fprintf(stderr, "kvcbench: redis at %s: %s\n", addr,
			p->rc ? p->rc->errstr : "out of memory");
		if (p->rc)
			redisFree(p->rc);
		free(p);
		return NULL;
	}
	p->max = max_value;
	return p;
}

/* 0 if @r is a reply of @type (and, for a status, equal to @status); else -EIO */
static int redis_check(redisReply *r, int type, const char *status)
{
	int ok = r && r->type == type && (!status || !strcmp(r->str, status));

	if (r)
		freeReplyObject(r);
	return ok ? 0 : -EIO;
}

static int redis_nop(struct peer *p)
{
	return redis_check(redisCommand(p->rc, "PING"), REDIS_REPLY_STATUS, "PONG");
}

static int redis_set(struct peer *p, uint64_t key, const void *buf, size_t n)
{
	return redis_check(redisCommand(p->rc, "SET %b %b", &key, sizeof(key), buf, n),
			   REDIS_REPLY_STATUS, "OK");
}

static int redis_get(struct peer *p, uint64_t key, size_t n, const void **out)
{
	if (p->last)
		freeReplyObject(p->last);
	p->last = redisCommand(p->rc, "GET %b", &key, sizeof(key));
	if (!p->last || p->last->type != REDIS_REPLY_STRING || (size_t)p->last->len != n)
		return -EIO;
	*out = p->last->str;
	return 0;
}

static int redis_del(struct peer *p, uint64_t key)
{
	return redis_check(redisCommand(p->rc, "DEL %b", &key, sizeof(key)), REDIS_REPLY_INTEGER,
			   NULL);
}

static void redis_close(struct peer *p)
{
	if (p->last)
		freeReplyObject(p->last);
	redisFree(p->rc);
	free(p);
}

const struct peer_ops peer_redis = { "redis",	redis_open, redis_nop,	redis_set,
				     redis_get, redis_del,  redis_close };

/* ---- minimal socket server -------------------------------------------------------------------- */

enum {
	SOP_NOP,
	SOP_SET,
	SOP_GET,
	SOP_DEL
};

struct sock_hdr {
	uint32_t op, status; /* status: 0 or an errno */
	uint64_t key, len;
};

static int xfer(int fd, void *buf, size_t n, int out)
{
	for (size_t done = 0; done < n;) {
		ssize_t r = out ? write(fd, (char *)buf + done, n - done)
				: read(fd, (char *)buf + done, n - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EPIPE;
		done += (size_t)r;
	}
	return 0;
}

struct sock_ent {
	uint64_t key, len;
	void *buf;
};

/* One connection: serve requests until EOF. The table is tiny (the benchmark holds one
 * value per connection at a time), so a linear scan is the honest minimum. */
static void sock_serve(int fd)
{
	struct sock_ent tab[64] = { 0 };
	struct sock_hdr h;

	while (!xfer(fd, &h, sizeof(h), 0)) {
		struct sock_ent *e = NULL, *fr = NULL;

		for (unsigned i = 0; i < 64; i++) {
			if (tab[i].buf && tab[i].key == h.key)
				e = &tab[i];
			if (!tab[i].buf && !fr)
				fr = &tab[i];
		}
		h.status = 0;
		if (h.op == SOP_SET) {
			void *b = malloc(h.len ? h.len : 1);

			if (!b || xfer(fd, b, h.len, 0))
				_exit(1);
			if (!e)
				e = fr;
			if (e) {
				free(e->buf);
				*e = (struct sock_ent){ h.key, h.len, b };
			} else {
				free(b);
				h.status = ENOSPC;
			}
			h.len = 0;
		} else if (h.op == SOP_GET) {
			struct iovec iov[2] = { { &h, sizeof(h) }, { e ? e->buf : NULL, 0 } };

			h.status = e ? 0 : ENOENT;
			h.len = e ? e->len : 0;
			iov[1].iov_len = h.len;
			for (size_t left = sizeof(h) + h.len; left;) { /* writev, then the rest */
				ssize_t w = writev(fd, iov, 2);

				if (w <= 0)
					_exit(1);
				left -= (size_t)w;
				for (int i = 0; i < 2 && w; i++) {
					size_t k = (size_t)w < iov[i].iov_len ? (size_t)w
									      : iov[i].iov_len;

					iov[i].iov_base = (char *)iov[i].iov_base + k;
					iov[i].iov_len -= k;
					w -= (ssize_t)k;
				}
			}
			continue;
		} else if (h.op == SOP_DEL) {
			if (e) {
				free(e->buf);
				e->buf = NULL;
			}
			h.status = e ? 0 : ENOENT;
			h.len = 0;
		} else if (h.op != SOP_NOP) {
			h.status = EBADMSG;
		}
		if (xfer(fd, &h, sizeof(h), 1))
			break;
	}
	_exit(0);
}

pid_t peer_sock_start(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid, parent = getpid();

	if (fd < 0)
		return -errno;
	if (strlen(path) >= sizeof(a.sun_path)) {
		close(fd);
		return -ENAMETOOLONG;
	}
	strcpy(a.sun_path, path);
	unlink(path);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 64)) {
		int err = -errno;

		close(fd);
		return err;
	}
	pid = fork();
	if (pid) {
		close(fd);
		return pid < 0 ? -errno : pid;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	signal(SIGCHLD, SIG_IGN); /* connection processes are reaped by the kernel */
	for (;;) {
		int c = accept(fd, NULL, NULL);
		pid_t server = getpid();

		if (c < 0)
			continue;
		if (fork() == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != server)
				_exit(0);
			close(fd);
			sock_serve(c);
		}
		close(c);
	}
}

void peer_sock_stop(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGKILL); /* its connection processes get SIGKILL from PR_SET_PDEATHSIG */
	waitpid(pid, NULL, 0);
}

static struct peer *sock_open(const char *addr, size_t max_value)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct peer *p = calloc(1, sizeof(*p));

	if (!p || strlen(addr) >= sizeof(a.sun_path))
		goto out_free;
	strcpy(a.sun_path, addr);
	p->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (p->fd < 0)
		goto out_free;
	if (connect(p->fd, (struct sockaddr *)&a, sizeof(a)))
		goto out_close;
	p->buf = malloc(max_value ? max_value : 1);
	if (!p->buf)
		goto out_close;
	p->max = max_value;
	return p;
out_close:
	close(p->fd);
out_free:
	fprintf(stderr, "kvcbench: socket server at %s: %s\n", addr, strerror(errno));
	free(p);
	return NULL;
}

/* NOP, SET or DEL: send the header and @n bytes of @buf, read the reply header */
static int sock_call(struct peer *p, uint32_t op, uint64_t key, const void *buf, size_t n)
{
	struct sock_hdr h = { op, 0, key, n };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)buf, n } };
	ssize_t w = writev(p->fd, iov, 2);
	int err = 0;

	if (w < 0)
		return -errno;
	if ((size_t)w < sizeof(h)) /* never on a UNIX socket with a blocking writev */
		return -EIO;
	if ((size_t)w < sizeof(h) + n)
		err = xfer(p->fd, (char *)buf + (w - (ssize_t)sizeof(h)),
			   n - (size_t)(w - (ssize_t)sizeof(h)), 1);
	if (!err)
		err = xfer(p->fd, &h, sizeof(h), 0);
	if (!err && h.status)
		err = -(int)h.status;
	return err;
}

static int sock_nop(struct peer *p)
{
	return sock_call(p, SOP_NOP, 0, NULL, 0);
}

static int sock_set(struct peer *p, uint64_t key, const void *buf, size_t n)
{
	return sock_call(p, SOP_SET, key, buf, n);
}

static int sock_get(struct peer *p, uint64_t key, size_t n, const void **out)
{
	struct sock_hdr h = { SOP_GET, 0, key, 0 };
	int err = xfer(p->fd, &h, sizeof(h), 1);

	if (!err)
		err = xfer(p->fd, &h, sizeof(h), 0);
	if (!err && h.status)
		err = -(int)h.status;
	if (!err && h.len != n)
		err = -EIO;
	if (!err)
		err = h.len > p->max ? -EMSGSIZE : xfer(p->fd, p->buf, h.len, 0);
	*out = p->buf;
	return err;
}

static int sock_del(struct peer *p, uint64_t key)
{
	return sock_call(p, SOP_DEL, key, NULL, 0);
}

static void sock_close(struct peer *p)
{
	close(p->fd);
	free(p->buf);
	free(p);
}

const struct peer_ops peer_sock = { "socket", sock_open, sock_nop,  sock_set,
				    sock_get, sock_del,	 sock_close };
