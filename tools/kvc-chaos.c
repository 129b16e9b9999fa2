/* kvc-chaos - kvcd under abuse, with verifying clients beside it (make chaos).
 *
 * Each scenario starts its own kvcd (the binary given, normally the ASan+UBSan build), runs
 * three verifying clients (two storing raw blocks, one through an int8 policy) that check
 * every byte they fetch, and one antagonist:
 *   kill     clients SIGKILLed mid-operation, over and over
 *   hostile  raw clients writing random and adversarial values into their ring headers,
 *            entries, staging, scratch, SELECT queries, aux sections and policy strings
 *   flood    floods of silent, garbage and half-finished connections while a client keeps
 *            attaching
 *   stop     kvcd SIGSTOPped and continued while clients wait on it
 *   restart  kvcd SIGKILLed or stopped and started again on its state directory (warm)
 * It prints one line per scenario (iterations, errors by kind, corrupt bytes, sanitizer
 * reports, descriptors) and exits non-zero on any corruption, sanitizer report, hang, leak
 * or unclean exit of kvcd.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
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

#include <kvc.h>
#include <kvcp.h>

#include "kvcp_raw.h"
#include "cli.h"
#include "timing.h"

#define NKEYS	   32
#define NVERIFY	   3
#define OP_TIMEOUT 1000 /* ms: verifiers' synchronous calls */

static const struct kvc_layout L = {
	.dtype = KVC_F16, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 16
}; /* 16 KiB */

static char g_dir[64], g_sock[100], g_log[128], g_state[128];
static const char *g_kvcd;
static pid_t g_pid;

struct counts {
	uint64_t iters, ops, hits, corrupt, resets, timeouts, down, other, max_op_ms;
	int other_err; /* the last of the others */
};

/* Shared with the forked verifiers and antagonists. */
static struct shared {
	volatile int stop;
	struct counts v[NVERIFY], a;
} * sh;

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* ---- kvcd ---------------------------------------------------------------------------------- */

static int attach_err(const char *ns, size_t staging, int timeout_ms, kvc_client **c)
{
	struct kvc_attach_opts o;

	kvc_attach_opts_init(&o);
	o.socket = g_sock;
	o.ns = ns;
	o.staging_size = staging;
	o.op_timeout_ms = timeout_ms;
	return kvc_attach(&o, c);
}

static int start_kvcd(const char *conf, bool state)
{
	char cpath[224];
	FILE *f;

	snprintf(cpath, sizeof(cpath), "%s/kvcd.conf", g_dir);
	f = fopen(cpath, "w");
	if (!f)
		return -1;
	fputs(conf, f);
	fclose(f);
	g_pid = fork();
	if (g_pid == 0) {
		int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0644);

		dup2(fd, 1);
		dup2(fd, 2);
		unsetenv("NOTIFY_SOCKET");
		if (state)
			execl(g_kvcd, g_kvcd, "--foreground", "--socket", g_sock, "--config", cpath,
			      "--pool-size", "64M", "--state-dir", g_state, (char *)NULL);
		else
			execl(g_kvcd, g_kvcd, "--foreground", "--socket", g_sock, "--config", cpath,
			      "--pool-size", "64M", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 3000; i++) { /* sanitizer builds start slowly */
		kvc_client *c;

		if (waitpid(g_pid, NULL, WNOHANG) == g_pid)
			return -1;
		if (attach_err(NULL, 4096, 1000, &c) == 0) {
			kvc_detach(c);
			return 0;
		}
		sleep_ms(10);
	}
	return -1;
}

/* SIGTERM and wait: kvcd's exit status (LeakSanitizer makes it non-zero on a leak). */
static int stop_kvcd(void)
{
	int st = 0;

	if (g_pid <= 0)
		return 0;
	kill(g_pid, SIGCONT);
	kill(g_pid, SIGTERM);
	for (int i = 0; i < 3000 && waitpid(g_pid, &st, WNOHANG) == 0; i++)
		sleep_ms(10);
	if (waitpid(g_pid, &st, WNOHANG) == 0) {
		kill(g_pid, SIGKILL);
		waitpid(g_pid, &st, 0);
		st = -1;
	}
	g_pid = 0;
	return st;
}

/* The number a shell command prints (0 when it prints none). */
static unsigned shell_count(const char *cmd)
{
	unsigned n = 0;
	FILE *p = popen(cmd, "r");

	if (p && fscanf(p, "%u", &n) != 1)
		n = 0;
	if (p)
		pclose(p);
	return n;
}

static unsigned count_fds(pid_t pid)
{
	char cmd[96];

	snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd 2>/dev/null | wc -l", (int)pid);
	return shell_count(cmd);
}

/* Sanitizer reports in kvcd's log. */
static unsigned sanitizer_reports(void)
{
	char cmd[320];

	snprintf(cmd, sizeof(cmd),
		 "grep -cE 'runtime error|ERROR: AddressSanitizer|ERROR: LeakSanitizer' %s", g_log);
	return shell_count(cmd);
}

/* ---- verifying clients ----------------------------------------------------------------------
 * Each owns NKEYS keys in its own namespace; it stores new versions, fetches, looks up and
 * pins, and checks every byte a FETCH returns against the version it stored (or, when the
 * STORE's answer was lost to a restart, against either candidate). A raw verifier knows the
 * bytes; the int8 one keeps what its first FETCH after a STORE returned. */

static void content(unsigned char *b, size_t n, unsigned id, unsigned key, uint64_t ver)
{
	uint64_t x = (uint64_t)id << 48 ^ (uint64_t)key << 32 ^ ver ^ 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < n; i += 2) {
		uint64_t r = rnd(&x);

		b[i] = (unsigned char)r;
		b[i + 1] = (unsigned char)(r >> 8) & 0x3b; /* f16 of small magnitude */
	}
}

static void account(struct counts *c, int r, uint64_t t0)
{
	uint64_t ms = (now_ns() - t0) / 1000000;

	c->ops++;
	if (ms > c->max_op_ms)
		c->max_op_ms = ms;
	if (r == -ECONNRESET)
		c->resets++;
	else if (r == -ETIMEDOUT)
		c->timeouts++;
	else if (r == -ECONNREFUSED)
		c->down++; /* kvcd between two lives */
	else if (r < 0 && r != -EEXIST && r != -EBUSY && r != -ENOENT) {
		c->other++;
		c->other_err = r;
	}
}

/* What a key may hold: the versions whose STORE may have happened since the last certain
 * answer (0: certainly absent; NCAND + 1: unknowable, deleted at the next hit). */
#define NCAND 4

struct key_state {
	unsigned n;
	uint64_t v[NCAND];
	bool ref; /* int8: ref holds what the one certain version decodes to */
};

static void maybe(struct key_state *k, uint64_t v)
{
	if (k->n < NCAND)
		k->v[k->n++] = v;
	else
		k->n = NCAND + 1;
	k->ref = false;
}

static void verifier(unsigned id)
{
	const bool packed = id == NVERIFY - 1;
	struct counts *c = &sh->v[id];
	size_t n = kvc_layout_bytes(&L), size;
	struct key_state ks[NKEYS] = { 0 };
	uint64_t gen = 1, x = 0x1234567ull + id;
	unsigned char *want = malloc(n), (*ref)[16384] = calloc(NKEYS, 16384);
	kvc_client *k = NULL;
	char ns[32];
	int slot = 0;

	snprintf(ns, sizeof(ns), "chaos-verify-%u", id);
	while (!sh->stop) {
		if (!k) {
			int e = attach_err(ns, 4u << 20, OP_TIMEOUT, &k);

			if (e) {
				account(c, e, now_ns());
				k = NULL;
				sleep_ms(5);
				continue;
			}
		}
		unsigned char *stg = kvc_staging(k, &size);
		unsigned i = (unsigned)(rnd(&x) % NKEYS), op = (unsigned)(rnd(&x) % 8);
		struct kvc_key key = { 0xc4a05 + id, i };
		struct kvc_layout l = L;
		struct key_state *s = &ks[i];
		uint64_t t0 = now_ns();
		int r;

		if (packed && slot <= 0) { /* a new daemon forgot the session's policies */
			slot = kvc_policy(k, "int8", 0, NULL, 0);
			account(c, slot < 0 ? slot : 0, t0);
			continue;
		}
		l.codec = (uint8_t)slot;
		c->iters++;
		if (packed && kvc_nop(k) == -ECONNRESET) { /* its policy slot is gone */
			c->resets++;
			slot = 0;
			continue;
		}
		if (op < 4) { /* FETCH and check every byte */
			r = kvc_fetch(k, &key, 0, n, NULL);
			account(c, r, t0);
			if (r == -ECONNRESET)
				slot = 0;
			if (r == -ENOENT && kvc_nop(k) == 0) {
				s->n = 0; /* evicted */
			} else if (r == -ENOENT) {
				c->down++; /* no daemon at the socket path */
			} else if (r == 0) {
				size_t best = SIZE_MAX;
				unsigned which = 0;

				c->hits++;
				for (unsigned j = 0; j < s->n && s->n <= NCAND; j++) {
					size_t d = 0;

					if (packed && !(s->n == 1 && s->ref))
						break; /* only a certain version's bytes are known */
					if (packed)
						memcpy(want, ref[i], n);
					else
						content(want, n, id, i, s->v[j]);
					for (size_t b = 0; b < n; b++)
						d += want[b] != stg[b];
					if (d < best) {
						best = d;
						which = j;
					}
				}
				if (best == SIZE_MAX) { /* unknowable: start this key afresh */
					if (kvc_delete(k, &key) == 0)
						s->n = 0;
				} else {
					c->corrupt += best;
					s->v[0] = s->v[which];
					s->n = 1;
				}
			}
		} else if (op < 6) { /* a new version */
			r = kvc_delete(k, &key);
			account(c, r == -ENOENT ? 0 : r, t0);
			if (r == 0 || (r == -ENOENT && kvc_nop(k) == 0))
				s->n = 0;
			content(stg, n, id, i, ++gen);
			t0 = now_ns();
			r = kvc_store(k, &key, &l, 0);
			if (r == -EINVAL && packed) { /* a restarted kvcd forgot the policy slot, */
				slot = 0;	      /* and the reset was seen by another call */
				continue;
			}
			account(c, r, t0);
			if (r == 0) {
				s->n = 1;
				s->v[0] = gen;
				s->ref = packed && kvc_fetch(k, &key, 0, n, NULL) == 0;
				if (s->ref)
					memcpy(ref[i], stg, n);
			} else if (r == -ECONNRESET || r == -ETIMEDOUT) {
				maybe(s, gen); /* it may or may not have happened */
				if (r == -ECONNRESET)
					slot = 0;
			}
		} else if (op == 6) { /* LOOKUP a prefix */
			struct kvc_key keys[NKEYS];
			size_t hits;

			for (unsigned j = 0; j < NKEYS; j++)
				keys[j] = (struct kvc_key){ 0xc4a05 + id, j };
			r = kvc_lookup(k, keys, NKEYS, &hits);
			account(c, r, t0);
		} else { /* PIN and UNPIN */
			r = kvc_pin(k, &key, 50);
			account(c, r == -ENOENT ? 0 : r, t0);
			if (r == 0)
				kvc_unpin(k, &key);
		}
	}
	kvc_detach(k);
	free(want);
	free(ref);
	_exit(0);
}

/* ---- antagonists ---------------------------------------------------------------------------- */

/* A request with random fields, leaning towards the valid ones kvcd checks most. */
static void random_sqe(struct kvcp_sqe *e, uint64_t *x, size_t staging)
{
	memset(e, 0, sizeof(*e));
	for (size_t i = 0; i < sizeof(*e); i += 8) {
		uint64_t r = rnd(x);

		memcpy((char *)e + i, &r, 8);
	}
	if (rnd(x) % 4) { /* plausible: a known opcode and a range inside staging */
		e->opcode = (uint8_t)(rnd(x) % KVCP_OP__COUNT);
		e->flags &= 7;
		e->gpu = 0;
		e->off = rnd(x) % staging;
		e->len = rnd(x) % (staging - e->off + 1);
		e->layout.layers = (uint16_t)(1 + rnd(x) % 4);
		e->layout.kv_heads = (uint16_t)(1 + rnd(x) % 4);
		e->layout.head_dim = (uint16_t)(8 << rnd(x) % 5);
		e->layout.tokens = (uint32_t)(1 + rnd(x) % 64);
		e->layout.dtype = (uint8_t)(1 + rnd(x) % 3);
		e->layout.codec = (uint8_t)(rnd(x) % 10);
		e->layout.reserved = 0;
		if (e->opcode == KVCP_OP_STORE && rnd(x) % 2)
			e->len = kvcp_layout_bytes(&e->layout);
		if (e->opcode == KVCP_OP_EVICT || e->opcode == KVCP_OP_STATS)
			e->arg %= 4;
		if (e->opcode == KVCP_OP_POLICY)
			e->arg %= 3;
	}
}

static void hostile(unsigned id)
{
	static const char *const pols[] = { "int4:group=0",	      "kivi:kbits=9,vbits=1",
					    "none:select=h2o",	      "int8:rank=300",
					    "fp8:sparse=0.5",	      "none:summary=quest,reps=0",
					    "int4:hibits=8,hipct=101" };
	uint64_t x = 0xbadc0ffee + id;
	struct passwd *pw = getpwnam("nobody");
	struct counts *c = &sh->a;

	if (geteuid() == 0 && pw && (setgid(pw->pw_gid) || setuid(pw->pw_uid)))
		_exit(90);
	while (!sh->stop) {
		struct kvcp_attach_req req = kvcp_raw_request(id % 2 ? "chaos-hostile"
								     : "chaos-hostile-2");
		struct kvcp_raw r;

		if (kvcp_raw_attach(g_sock, &req, &r)) {
			kvcp_raw_close(&r);
			sleep_ms(5);
			continue;
		}
		__atomic_fetch_add(&c->iters, 1, __ATOMIC_RELAXED);
		char *base = (char *)r.hdr, *sq = base + r.hdr->sq_off;
		uint32_t sqn = r.hdr->sq_entries, scratch_off = (uint32_t)r.hdr->scratch_off;

		for (unsigned round = 0; round < 2000 && !sh->stop; round++) {
			unsigned what = (unsigned)(rnd(&x) % 16);
			struct kvcp_sqe e;

			if (what < 10) { /* a request, pushed as a client would */
				random_sqe(&e, &x, r.staging_size);
				if (e.opcode == KVCP_OP_POLICY) {
					const char *p = pols[rnd(&x) % 7];

					e.off = rnd(&x) % 1024;
					e.len = strlen(p);
					memcpy(r.staging + e.off, p, e.len);
				}
				memcpy(sq + (size_t)(r.sq_prod % sqn) * sizeof(e), &e, sizeof(e));
				r.sq_prod++;
				__atomic_store_n(&r.hdr->sq.prod, r.sq_prod, __ATOMIC_RELEASE);
			} else if (what < 12) { /* random bytes into staging or scratch */
				size_t off = rnd(&x) % (r.staging_size - 64);

				for (int j = 0; j < 8; j++)
					((uint64_t *)(void *)(r.staging + (off & ~7ul)))[j] =
						rnd(&x);
				if (r.ctrl_size > scratch_off + 64)
					*(uint64_t *)(void *)(base + scratch_off +
							      (rnd(&x) % (r.ctrl_size -
									  scratch_off - 64) &
							       ~7ul)) = rnd(&x);
			} else if (what < 14) { /* ring indices and flags */
				uint32_t v = (uint32_t)rnd(&x);
				uint32_t *w[] = { &r.hdr->sq.prod,  &r.hdr->sq.cons,
						  &r.hdr->cq.prod,  &r.hdr->cq.cons,
						  &r.hdr->sq.flags, &r.hdr->cq.flags };

				*w[rnd(&x) % 6] = rnd(&x) % 2 ? v : r.sq_prod + (v % 3);
			} else { /* the header's other fields */
				((uint8_t *)base)[rnd(&x) % 64] = (uint8_t)rnd(&x);
			}
			__atomic_fetch_add(&r.hdr->sq.futex, 1, __ATOMIC_RELEASE);
			syscall(SYS_futex, &r.hdr->sq.futex, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
			__atomic_fetch_add(&c->ops, 1, __ATOMIC_RELAXED);
			if (round % 64 == 0) {
				char b;

				if (recv(r.sock, &b, 1, MSG_DONTWAIT) == 0)
					break; /* kvcd hung up on us: attach again */
			}
		}
		kvcp_raw_close(&r);
	}
	_exit(0);
}

/* A client killed at a random point of a random operation. */
static void victim(uint64_t seed)
{
	kvc_client *k;
	size_t size, n = kvc_layout_bytes(&L);
	uint64_t x = seed;

	if (attach_err("chaos-victim", 4u << 20, OP_TIMEOUT, &k))
		_exit(1);
	unsigned char *stg = kvc_staging(k, &size);

	for (;;) {
		struct kvc_key key = { 0x71c7, rnd(&x) % 256 };

		content(stg, n, 99, (unsigned)key.lo, rnd(&x));
		switch (rnd(&x) % 5) {
		case 0: kvc_store(k, &key, &L, 0); break;
		case 1: kvc_fetch(k, &key, n, n, NULL); break;
		case 2: kvc_pin(k, &key, 0); break;
		case 3: kvc_delete(k, &key); break;
		default: {
			struct kvc_req r[16];

			memset(r, 0, sizeof(r));
			for (int i = 0; i < 16; i++) {
				r[i].op = KVC_OP_STORE;
				r[i].key = (struct kvc_key){ 0x71c8, rnd(&x) % 256 };
				r[i].layout = L;
				r[i].len = n;
			}
			kvc_submit(k, r, 16, NULL); /* and never reaped */
		}
		}
	}
}

static void kill_loop(uint64_t end)
{
	uint64_t x = 77;

	while (now_ns() < end) {
		pid_t p = fork();

		if (p == 0)
			victim(rnd(&x));
		sleep_ms(1 + (unsigned)(rnd(&x) % 30));
		kill(p, SIGKILL);
		waitpid(p, NULL, 0);
		sh->a.iters++;
	}
}

/* Floods of connections from another uid than the client that must still get in (one uid
 * may only hurt itself: max_pending_per_uid). */
static void flooder(uint64_t end)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct passwd *pw = getpwnam("nobody");
	int held[48];
	unsigned nheld = 0;
	uint64_t x = 99;

	if (geteuid() == 0 && pw && (setgid(pw->pw_gid) || setuid(pw->pw_uid)))
		_exit(90);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_sock);
	while (now_ns() < end) {
		for (int i = 0; i < 16; i++) { /* silent, garbage, half a request */
			int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
			char junk[64];

			if (connect(s, (struct sockaddr *)&sa, sizeof(sa))) {
				close(s);
				continue;
			}
			for (size_t j = 0; j < sizeof(junk); j++)
				junk[j] = (char)rnd(&x);
			if (i % 3 == 1)
				send(s, junk, 1 + rnd(&x) % sizeof(junk), MSG_NOSIGNAL);
			if (i % 3 == 2 || nheld == 48) {
				close(s);
			} else {
				held[nheld++] = s;
			}
			sh->a.ops++;
		}
		while (nheld > 32) /* the oldest go */
			close(held[--nheld]);
	}
	while (nheld)
		close(held[--nheld]);
	_exit(0);
}

static void flood_loop(uint64_t end)
{
	pid_t f = fork();

	if (f == 0)
		flooder(end);
	while (now_ns() < end) { /* meanwhile a well-behaved client must still get in */
		kvc_client *c;
		int e = attach_err("chaos-flood", 4096, OP_TIMEOUT, &c);

		sh->a.iters++;
		if (e == 0) {
			e = kvc_nop(c);
			kvc_detach(c);
		}
		if (e && geteuid() == 0) /* as another uid than the flood, never refused */
			sh->a.other++;
		sleep_ms(2);
	}
	waitpid(f, NULL, 0);
}

static void stop_loop(uint64_t end)
{
	uint64_t x = 5;

	while (now_ns() < end) {
		sleep_ms(200 + (unsigned)(rnd(&x) % 300));
		kill(g_pid, SIGSTOP);
		sleep_ms(OP_TIMEOUT / 2 + (unsigned)(rnd(&x) % OP_TIMEOUT));
		kill(g_pid, SIGCONT);
		sh->a.iters++;
	}
}

static int restart_loop(uint64_t end, const char *conf)
{
	uint64_t x = 11;
	int bad = 0;

	while (now_ns() < end) {
		sleep_ms(300 + (unsigned)(rnd(&x) % 700));
		if (rnd(&x) % 2) {
			kill(g_pid, SIGKILL); /* a crash */
			waitpid(g_pid, NULL, 0);
			g_pid = 0;
		} else if (stop_kvcd() != 0) { /* a clean stop must stay clean */
			bad++;
		}
		if (start_kvcd(conf, true))
			return -1;
		sh->a.iters++;
	}
	return bad;
}

/* ---- scenarios ------------------------------------------------------------------------------ */

static int run(const char *name, unsigned seconds)
{
	static const char conf[] = "[kvcd]\nsocket_mode = 0666\nmax_pins = 64\n";
	bool state = !strcmp(name, "restart");
	uint64_t end;
	pid_t ver[NVERIFY], hos[2] = { 0, 0 };
	unsigned fds0, fds1, reports;
	int st, bad = 0;
	struct counts t = { 0 };

	snprintf(g_log, sizeof(g_log), "%s/kvcd-%s.log", g_dir, name);
	snprintf(g_state, sizeof(g_state), "%s/state-%s", g_dir, name);
	unlink(g_log);
	memset(sh, 0, sizeof(*sh));
	if (start_kvcd(conf, state)) {
		fprintf(stderr, "kvc-chaos: %s: kvcd did not start (see %s)\n", name, g_log);
		return 1;
	}
	fds0 = count_fds(g_pid);
	for (unsigned i = 0; i < NVERIFY; i++)
		if ((ver[i] = fork()) == 0)
			verifier(i);
	end = now_ns() + seconds * 1000000000ull;
	if (!strcmp(name, "kill")) {
		kill_loop(end);
	} else if (!strcmp(name, "hostile")) {
		for (unsigned i = 0; i < 2; i++)
			if ((hos[i] = fork()) == 0)
				hostile(i);
		sleep_ms(seconds * 1000);
	} else if (!strcmp(name, "flood")) {
		flood_loop(end);
	} else if (!strcmp(name, "stop")) {
		stop_loop(end);
	} else if (!strcmp(name, "restart")) {
		bad = restart_loop(end, conf) != 0;
	}
	sh->stop = 1;
	for (unsigned i = 0; i < 2; i++)
		if (hos[i] > 0)
			waitpid(hos[i], NULL, 0);
	for (unsigned i = 0; i < NVERIFY; i++) {
		waitpid(ver[i], &st, 0);
		bad |= !WIFEXITED(st) || WEXITSTATUS(st);
		t.ops += sh->v[i].ops;
		t.hits += sh->v[i].hits;
		t.corrupt += sh->v[i].corrupt;
		t.resets += sh->v[i].resets;
		t.timeouts += sh->v[i].timeouts;
		t.down += sh->v[i].down;
		t.other += sh->v[i].other;
		t.other_err = sh->v[i].other ? sh->v[i].other_err : t.other_err;
		t.max_op_ms = sh->v[i].max_op_ms > t.max_op_ms ? sh->v[i].max_op_ms : t.max_op_ms;
	}
	sleep_ms(300); /* detached sessions are torn down by kvcd's main thread */
	fds1 = g_pid > 0 ? count_fds(g_pid) : 0;
	st = stop_kvcd();
	reports = sanitizer_reports();
	/* a hang: a verifier's call outlived its deadline by far (kvcd never answered and the
	 * deadline did not fire); timeouts are expected only while kvcd is stopped */
	bool hang = t.max_op_ms > 3 * OP_TIMEOUT + 2000 ||
		    (strcmp(name, "stop") && t.timeouts > (strcmp(name, "restart") ? 0 : 50));
	bool leak = fds1 > fds0 || st != 0;

	printf("chaos %-8s %3us: %llu antagonist iterations (%llu ops); verifiers %llu ops, "
	       "%llu hits; errors: %llu resets, %llu timeouts, %llu down, %llu other (%s)%s; "
	       "%llu corrupt bytes; %u sanitizer reports; kvcd fds %u -> %u, exit %d%s\n",
	       name, seconds, (unsigned long long)sh->a.iters, (unsigned long long)sh->a.ops,
	       (unsigned long long)t.ops, (unsigned long long)t.hits, (unsigned long long)t.resets,
	       (unsigned long long)t.timeouts, (unsigned long long)t.down,
	       (unsigned long long)t.other, t.other ? kvc_strerror(t.other_err) : "-",
	       !strcmp(name, "flood") && sh->a.other ? " (attaches refused)" : "",
	       (unsigned long long)t.corrupt, reports, fds0, fds1, st, hang ? "; HANG" : "");
	bad |= t.corrupt || reports || hang || leak || t.other ||
	       (!strcmp(name, "flood") && sh->a.other);
	if (bad)
		printf("chaos %s FAILED: see %s\n", name, g_log);
	fflush(stdout);
	return bad;
}

int main(int argc, char **argv)
{
	static const char *const all[] = { "kill", "hostile", "flood", "stop", "restart" };
	static const struct option opts[] = { { "kvcd", required_argument, 0, 'k' },
					      { "seconds", required_argument, 0, 's' },
					      { "scenario", required_argument, 0, 'S' },
					      { "dir", required_argument, 0, 'd' },
					      { 0, 0, 0, 0 } };
	const char *only = NULL, *dir = NULL;
	unsigned seconds = 600;
	int o, fails = 0, ran = 0;
	char cmd[192];
	cli_version(argc, argv, "kvc-chaos");

	while ((o = getopt_long(argc, argv, "k:s:S:d:", opts, NULL)) != -1) {
		switch (o) {
		case 'k': g_kvcd = optarg; break;
		case 's': seconds = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'S': only = optarg; break;
		case 'd': dir = optarg; break;
		default:
			fprintf(stderr,
				"usage: kvc-chaos --kvcd BIN [--seconds TOTAL] "
				"[--scenario kill|hostile|flood|stop|restart] [--dir DIR]\n");
			return 2;
		}
	}
	if (!g_kvcd || !seconds)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	snprintf(g_dir, sizeof(g_dir), "%s", dir ? dir : "/tmp/kvc-chaos-XXXXXX");
	if (!dir && !mkdtemp(g_dir))
		return 1;
	mkdir(g_dir, 0755);
	chmod(g_dir, 0755); /* hostile clients run as nobody */
	snprintf(g_sock, sizeof(g_sock), "%s/kvcd.sock", g_dir);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;
	for (unsigned i = 0; i < 5; i++) {
		if (only && strcmp(only, all[i]))
			continue;
		unsigned s = only ? seconds : seconds / 5;

		fails += run(all[i], s ? s : 1);
		ran++;
	}
	if (!ran)
		return 2;
	if (!fails && !dir) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
		if (system(cmd))
			fprintf(stderr, "kvc-chaos: could not remove %s\n", g_dir);
	}
	printf("chaos: %d of %d scenarios failed\n", fails, ran);
	return fails ? 1 : 0;
}
