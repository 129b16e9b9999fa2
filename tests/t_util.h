/* t_util.h - test helpers: a real kvcd per test on a private socket, a raw protocol client
 * for malformed-request tests, and small process utilities. Header-only; t_ prefix. */
#ifndef T_UTIL_H
#define T_UTIL_H

#include <dirent.h>
#include <math.h>
#include <libgen.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "kvc.h"
#include "kvcp.h"

struct t_daemon {
	pid_t pid;
	char dir[64];
	char sock[108];
	char log[128];
};

/* Reproducible random numbers for property tests: xorshift64, one stream per test binary. */
static uint64_t t_rng = 0x2545f4914f6cdd1dull;

static inline double t_urand(void) /* [0, 1) */
{
	t_rng ^= t_rng << 13;
	t_rng ^= t_rng >> 7;
	t_rng ^= t_rng << 17;
	return (double)(t_rng >> 11) * 0x1p-53;
}

static inline float t_nrand(void) /* N(0, 1) */
{
	return (float)(sqrt(-2 * log(t_urand() + 1e-300)) * cos(6.283185307179586 * t_urand()));
}

static inline void t_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static inline const char *t_kvcd_bin(void)
{
	const char *b = getenv("KVCD_BIN");

	return b ? b : "build/kvcd";
}

/* A fresh, world-readable directory for @t with its socket and log paths in it; @conf (may be
 * NULL) receives the path of a file kvcd.conf there. */
static inline void t_daemon_dir(struct t_daemon *t, char *conf, size_t len)
{
	strcpy(t->dir, "/tmp/kvcd-test-XXXXXX");
	cr_assert_not_null(mkdtemp(t->dir));
	chmod(t->dir, 0755);
	snprintf(t->sock, sizeof(t->sock), "%s/kvcd.sock", t->dir);
	snprintf(t->log, sizeof(t->log), "%s/kvcd.log", t->dir);
	if (conf)
		snprintf(conf, len, "%s/kvcd.conf", t->dir);
}

/* Called in the child just before kvcd is executed, when set (a test's sandbox for it). */
static void (*t_pre_exec)(void);

/* Start kvcd with extra arguments (NULL-terminated) and wait until it answers. The log goes
 * to t->log. Returns 0, or the daemon's exit status + 1000 when it exited instead. */
static inline int t_daemon_start_args(struct t_daemon *t, const char *const *extra)
{
	const char *argv[32] = { t_kvcd_bin(), "--foreground", "--socket", t->sock };
	int n = 4;

	if (!t->dir[0])
		t_daemon_dir(t, NULL, 0);
	for (; extra && *extra && n < 30; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	t->pid = fork();
	cr_assert(t->pid >= 0);
	if (t->pid == 0) {
		int fd = open(t->log, O_WRONLY | O_CREAT | O_APPEND, 0644);

		dup2(fd, 2);
		dup2(fd, 1);
		unsetenv("NOTIFY_SOCKET");
		if (t_pre_exec)
			t_pre_exec();
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct kvc_attach_opts o;
		kvc_client *c;
		int st;

		if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
			t->pid = 0;
			return 1000 + (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
		}
		kvc_attach_opts_init(&o);
		o.socket = t->sock;
		o.staging_size = 4096;
		if (kvc_attach(&o, &c) == 0) {
			kvc_detach(c);
			return 0;
		}
		t_sleep_ms(10);
	}
	cr_assert_fail("kvcd did not come up in 5 s");
	return -1;
}

static inline void t_daemon_start(struct t_daemon *t, const char *pool)
{
	const char *extra[] = { "--pool-size", pool ? pool : "64M", NULL };

	cr_assert_eq(t_daemon_start_args(t, extra), 0, "kvcd failed to start");
}

/* Start kvcd with a 64M pool and the config @conf (INI text), written to its directory. The
 * directory is world-readable, so a test may open the socket to other users. */
static inline void t_daemon_start_conf(struct t_daemon *t, const char *conf)
{
	char path[160];
	const char *args[] = { "--config", path, "--pool-size", "64M", NULL };
	FILE *f;

	t_daemon_dir(t, path, sizeof(path));
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(conf, f);
	fclose(f);
	cr_assert_eq(t_daemon_start_args(t, args), 0);
}

/* Run a shell command (printf-style); its output, both streams if the command says so, in
 * @out; returns its exit status. Never asserts, so forked helpers may use it. */
static inline int __attribute__((format(printf, 3, 4)))
t_sh(char *out, size_t len, const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	FILE *f;
	size_t n;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	n = fread(out, 1, len - 1, f);
	out[n] = '\0';
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Run `build/TOOL --socket SOCK @args` (stderr too; TOOL beside kvcd) into @buf; returns its
 * exit status. */
static inline int t_tool(const struct t_daemon *t, const char *tool, const char *args, char *buf,
			 size_t len)
{
	char cmd[2048], bin[256];
	size_t n;
	FILE *f;
	int st;

	snprintf(bin, sizeof(bin), "%s", t_kvcd_bin());
	snprintf(cmd, sizeof(cmd), "%s/%s --socket %s %s 2>&1", dirname(bin), tool, t->sock, args);
	f = popen(cmd, "r");
	cr_assert_not_null(f);
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline int t_kvcctl(const struct t_daemon *t, const char *args, char *buf, size_t len)
{
	return t_tool(t, "kvcctl", args, buf, len);
}

/* SIGTERM and reap; returns the exit status (0 = clean shutdown). */
static inline int t_daemon_stop(struct t_daemon *t)
{
	int st = 0;

	if (t->pid > 0) {
		kill(t->pid, SIGTERM);
		for (int i = 0; i < 500 && waitpid(t->pid, &st, WNOHANG) == 0; i++)
			t_sleep_ms(10);
		if (waitpid(t->pid, &st, WNOHANG) == 0) { /* still there: never leave it running */
			kill(t->pid, SIGKILL);
			waitpid(t->pid, &st, 0);
			st = -1;
		}
		t->pid = 0;
	}
	return st;
}

static inline void t_daemon_cleanup(struct t_daemon *t)
{
	char cmd[160];

	t_daemon_stop(t);
	if (t->dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", t->dir);
		if (system(cmd))
			fprintf(stderr, "cleanup of %s failed\n", t->dir);
	}
}

/* Stop @t and remove its directory; returns the exit status (0: clean, or not running).
 * Suites assert on it afterwards, so a failed assertion leaves no directory behind. */
static inline int t_daemon_down(struct t_daemon *t)
{
	int st = t->pid > 0 ? t_daemon_stop(t) : 0;

	t_daemon_cleanup(t);
	return st;
}

/* Attach to @t; NULL on failure, with the error in *@err when given. Never asserts, so
 * forked children may use it. */
static inline kvc_client *t_try_attach_err(const struct t_daemon *t, const char *ns, size_t staging,
					   int *err)
{
	struct kvc_attach_opts o;
	kvc_client *c = NULL;
	int e;

	kvc_attach_opts_init(&o);
	o.socket = t->sock;
	o.ns = ns;
	o.staging_size = staging;
	e = kvc_attach(&o, &c);
	if (err)
		*err = e;
	return e ? NULL : c;
}

#define t_try_attach(t, ns, staging) t_try_attach_err(t, ns, staging, NULL)

static inline kvc_client *t_attach(const struct t_daemon *t, const char *ns, size_t staging)
{
	int err;
	kvc_client *c = t_try_attach_err(t, ns, staging, &err);

	cr_assert_not_null(c, "attach: %s", kvc_strerror(err));
	return c;
}

static inline unsigned t_count_fds(pid_t pid)
{
	char path[64];
	unsigned n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* Descriptor count once it has stopped changing (sessions closing asynchronously). */
static inline unsigned t_count_fds_settled(pid_t pid)
{
	unsigned n = t_count_fds(pid), same = 0;

	for (int i = 0; i < 200 && same < 5; i++) {
		unsigned m;

		t_sleep_ms(20);
		m = t_count_fds(pid);
		same = m == n ? same + 1 : 0;
		n = m;
	}
	return n;
}

static inline void t_fill(void *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	unsigned char *b = p;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (unsigned char)x;
	}
}

/* ---- raw protocol client: speaks kvcp.h directly, for requests libkvcclient never sends -- */

#include "../tools/kvcp_raw.h"

/* Submit @sqe and wait (up to 2 s) for its completion. Returns 0 or -ETIMEDOUT. */
static inline int t_raw_call(struct kvcp_raw *r, const struct kvcp_sqe *sqe, struct kvcp_cqe *cqe)
{
	struct kvcp_ring *sq = &r->hdr->sq;
	char *base = (char *)r->hdr;

	bool phase = r->hdr->compat & KVCP_COMPAT_PHASE;

	if (phase)
		cr_assert_eq(kvcp_ring_push_phase(sq, base + r->hdr->sq_off, r->hdr->sq_entries,
						  &r->sq_prod, &r->sq_cons_cache, sqe,
						  KVCP_SQE_PHASE_WORD, KVCP_SQE_PHASE_BIT),
			     0);
	else
		cr_assert_eq(kvcp_ring_push(sq, base + r->hdr->sq_off, r->hdr->sq_entries,
					    &r->sq_prod, &r->sq_cons_cache, sqe),
			     0);
	kvcp_fence();
	if (kvcp_load_relaxed(&sq->flags) & KVCP_RING_NEED_WAKEUP) {
		__atomic_fetch_add(&sq->futex, 1, __ATOMIC_RELEASE);
		syscall(SYS_futex, &sq->futex, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
	}
	for (int i = 0; i < 200000; i++) {
		if ((phase ? kvcp_ring_pop_phase(&r->hdr->cq, base + r->hdr->cq_off,
						 r->hdr->cq_entries, &r->cq_cons, cqe,
						 KVCP_CQE_PHASE_WORD, KVCP_CQE_PHASE_BIT)
			   : kvcp_ring_pop(&r->hdr->cq, base + r->hdr->cq_off, r->hdr->cq_entries,
					   &r->cq_cons, cqe)) == 1)
			return 0;
		if (i > 1000)
			usleep(10);
	}
	return -ETIMEDOUT;
}

#endif /* T_UTIL_H */
