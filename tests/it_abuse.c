/* it_abuse.c - what one client or operator could once do to everyone else, each a regression
 * test of its fix: silent connections, more clients than a worker holds, a socket path that
 * is not kvcd's, a LOOKUP that holds a shared worker, unbounded pins, contradictory config, a
 * stopped daemon, and listings of other users' clients and namespaces. */
#include <pwd.h>
#include <signal.h>

#include "t_util.h"

static uid_t nobody(void)
{
	struct passwd *pw = getpwnam("nobody");

	return pw ? pw->pw_uid : 65534;
}

static struct t_daemon D;

/* Runs after each test, passed or failed: no daemon or directory is left behind. */
static void cleanup(void)
{
	t_daemon_cleanup(&D);
}

TestSuite(abuse, .fini = cleanup);

static void start_with(struct t_daemon *d, const char *conf)
{
	memset(d, 0, sizeof(*d));
	t_daemon_start_conf(d, conf);
}

/* A uid that opens connections and never speaks holds at most its share of the pending
 * handshakes: another uid still attaches at once. */
Test(abuse, silent_connections_do_not_lock_others_out)
{
	int ready[2], done[2];
	char b;

	if (geteuid() != 0)
		cr_skip_test("needs root to act as another uid");
	start_with(&D, "[kvcd]\nsocket_mode = 0666\nhandshake_timeout_ms = 60000\n");
	cr_assert_eq(pipe(ready), 0);
	cr_assert_eq(pipe(done), 0);
	pid_t pid = fork();

	if (pid == 0) { /* the attacker: 100 connections that never say who they are */
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		strcpy(sa.sun_path, D.sock);
		if (setgid(nobody()) || setuid(nobody()))
			_exit(90);
		for (int i = 0; i < 100; i++) {
			int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);

			if (connect(s, (struct sockaddr *)&sa, sizeof(sa)))
				close(s);
		}
		if (write(ready[1], "r", 1) != 1 || read(done[0], &b, 1) != 1)
			_exit(91);
		_exit(0);
	}
	cr_assert_eq(read(ready[0], &b, 1), 1);
	t_sleep_ms(100);
	int err;
	kvc_client *c = t_try_attach_err(&D, NULL, 4096, &err);

	cr_assert_not_null(c, "attach beside 100 silent connections: %s", kvc_strerror(err));
	cr_assert_eq(kvc_nop(c), 0);
	kvc_detach(c);
	cr_assert_eq(write(done[1], "d", 1), 1);
	waitpid(pid, NULL, 0);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* A worker waits on at most 127 rings; max_clients beyond that is served by more workers,
 * and the client past max_clients is told -EUSERS by kvc_attach, not handed a dead session. */
Test(abuse, every_client_up_to_max_clients_is_served, .timeout = 120)
{
	enum {
		N = 130
	};
	static kvc_client *c[N + 1];
	int err;

	start_with(&D, "[kvcd]\nworkers = 1\nmax_clients = 130\nstaging_size = 64K\n");
	for (int i = 0; i < N; i++) {
		c[i] = t_try_attach_err(&D, NULL, 0, &err);
		cr_assert_not_null(c[i], "client %d: %s", i, kvc_strerror(err));
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(kvc_nop(c[i]), 0, "client %d is served", i);
	c[N] = t_try_attach_err(&D, NULL, 0, &err);
	cr_assert_null(c[N]);
	cr_assert_eq(err, -EUSERS, "past max_clients: %s", kvc_strerror(err));
	kvc_detach(c[0]);
	t_sleep_ms(100);
	c[0] = t_try_attach_err(&D, NULL, 0, &err);
	cr_assert_not_null(c[0], "room again once one left: %s", kvc_strerror(err));
	cr_assert_eq(kvc_nop(c[0]), 0);
	for (int i = 0; i < N; i++)
		kvc_detach(c[i]);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

static int start_on(struct t_daemon *d, const char *dir, const char *sock)
{
	const char *args[] = { "--pool-size", "16M", NULL };

	memset(d, 0, sizeof(*d));
	strcpy(d->dir, dir);
	snprintf(d->sock, sizeof(d->sock), "%s/%s", dir, sock);
	snprintf(d->log, sizeof(d->log), "%s/%s.log", dir, sock);
	return t_daemon_start_args(d, args);
}

/* kvcd replaces only a dead kvcd's socket: never a file, nor another server's live socket. */
Test(abuse, socket_path_of_someone_else_is_left_alone)
{
	char dir[] = "/tmp/kvcd-sock-XXXXXX", path[128];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, srv, cl;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/file.sock", dir); /* a regular file */
	fd = open(path, O_CREAT | O_WRONLY, 0644);
	cr_assert_eq(write(fd, "data", 4), 4);
	close(fd);
	cr_assert_eq(start_on(&D, dir, "file.sock"), 1001, "refuses to start");
	cr_assert_eq(stat(path, &st), 0);
	cr_assert(S_ISREG(st.st_mode) && st.st_size == 4, "the file is intact");

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/other.sock", dir); /* a live server */
	srv = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(srv, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(srv, 4), 0);
	cr_assert_eq(start_on(&D, dir, "other.sock"), 1001, "refuses to start");
	cl = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(connect(cl, (struct sockaddr *)&sa, sizeof(sa)), 0,
		     "its clients still reach it");
	close(cl);
	close(srv); /* now it is a stale socket nobody listens on: kvcd may take it */
	cr_assert_eq(start_on(&D, dir, "other.sock"), 0);
	cr_assert_eq(t_daemon_stop(&D), 0);
	unlink(path);
	snprintf(path, sizeof(path), "rm -rf %s", dir);
	cr_assert_eq(system(path), 0);
}

/* A LOOKUP of a whole staging buffer of keys runs in slices: another client of the same
 * worker is answered in between, not after all of it. */
Test(abuse, long_lookups_do_not_hold_a_shared_worker)
{
	enum {
		NKEYS = 1 << 18,
		NREQ = 8
	};
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 16
	};
	struct kvc_key key = { 1, 2 };
	struct kvc_req r[NREQ];
	struct kvc_cqe cq[NREQ];
	size_t size;

	start_with(&D, "[kvcd]\nworkers = 1\n");
	kvc_client *a = t_attach(&D, NULL, 8u << 20), *b = t_attach(&D, NULL, 4096);
	struct kvc_key *keys = kvc_staging(a, &size);

	cr_assert_eq(kvc_store(a, &key, &l, 0), 0);
	for (size_t i = 0; i < NKEYS; i++) /* the same cached key: every one is a hit */
		keys[i] = key;
	memset(r, 0, sizeof(r));
	for (int i = 0; i < NREQ; i++) {
		r[i].op = KVC_OP_LOOKUP;
		r[i].off = 0;
		r[i].len = NKEYS * sizeof(*keys);
	}
	cr_assert_eq(kvc_submit(a, r, NREQ, NULL), NREQ);
	cr_assert_eq(kvc_nop(b), 0);
	int before = kvc_poll(a, cq, NREQ); /* what had completed when b was answered */

	cr_assert_lt(before, NREQ, "b was answered before a's lookups were all done");
	int got = before;

	while (got < NREQ)
		got += kvc_wait(a, cq + got, 1, NREQ - got, 10000);
	for (int i = 0; i < NREQ; i++)
		cr_assert_eq(cq[i].res, NKEYS, "every key cached");
	r[0].len = (NKEYS + 1) * sizeof(*keys);
	cr_assert_eq(kvc_submit(a, r, 1, NULL), 1);
	cr_assert_eq(kvc_wait(a, cq, 1, 1, 10000), 1);
	cr_assert_eq(cq[0].res, -E2BIG, "more keys than max_lookup_keys");
	kvc_detach(a);
	kvc_detach(b);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* A client holds at most max_pins pins; they go when it detaches. */
Test(abuse, pins_per_client_are_bounded)
{
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 16
	};
	struct kvc_stats st;

	start_with(&D, "[kvcd]\nmax_pins = 4\n");
	kvc_client *a = t_attach(&D, NULL, 1u << 20), *b = t_attach(&D, NULL, 1u << 20);

	for (uint64_t i = 0; i < 5; i++) {
		struct kvc_key k = { i, 7 };

		cr_assert_eq(kvc_store(a, &k, &l, 0), 0);
		cr_assert_eq(kvc_pin(a, &k, 0), i < 4 ? 0 : -EDQUOT, "pin %d", (int)i);
		cr_assert_eq(kvc_pin(b, &k, 0), i < 4 ? 0 : -EDQUOT, "b has its own count");
	}
	kvc_detach(a);
	kvc_detach(b);
	kvc_client *c = t_attach(&D, NULL, 1u << 20);

	t_sleep_ms(100);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_eq(st.pinned, 0, "a detached client's pins are dropped");
	kvc_detach(c);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* Values that each parse but contradict another stop kvcd before it serves, saying which. */
Test(abuse, contradictory_config_refuses_to_start)
{
	char conf[160], buf[4096] = { 0 };
	const char *args[] = { "--config", conf, "--pool-size", "16M", NULL };
	FILE *f;

	t_daemon_dir(&D, conf, sizeof(conf));
	f = fopen(conf, "w");
	fputs("[kvcd]\nstaging_size = 64M\nstaging_max = 16M\n", f);
	fclose(f);
	cr_assert_eq(t_daemon_start_args(&D, args), 1002, "exits 2: bad configuration");
	f = fopen(D.log, "r");
	cr_assert_eq(fread(buf, 1, sizeof(buf) - 1, f) > 0, 1);
	fclose(f);
	cr_assert_not_null(strstr(buf, "staging_size"), "says what is wrong: %s", buf);
	snprintf(buf, sizeof(buf), "rm -rf %s", D.dir);
	cr_assert_eq(system(buf), 0);
}

/* A stopped kvcd makes synchronous calls fail with -ETIMEDOUT after op_timeout_ms instead of
 * hanging; once it runs again the abandoned requests' completions are dropped, and the next
 * calls get their own answers. */
Test(abuse, stopped_daemon_times_out_calls)
{
	struct kvc_attach_opts o;
	struct kvc_layout l = { .dtype = KVC_F16,
				.layers = 1,
				.kv_heads = 1,
				.head_dim = 64,
				.tokens = 16 },
			  got;
	struct kvc_key k = { 5, 5 };
	kvc_client *c;
	size_t size, n = kvc_layout_bytes(&l);

	start_with(&D, "[kvcd]\n");
	kvc_attach_opts_init(&o);
	o.socket = D.sock;
	o.staging_size = 1u << 20;
	o.op_timeout_ms = 200;
	cr_assert_eq(kvc_attach(&o, &c), 0);
	unsigned char *stg = kvc_staging(c, &size);

	t_fill(stg, n, 42);
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(kill(D.pid, SIGSTOP), 0);
	t_sleep_ms(50);
	cr_assert_eq(kvc_nop(c), -ETIMEDOUT);
	size_t hits;

	cr_assert_eq(kvc_lookup(c, &k, 1, &hits), -ETIMEDOUT);
	cr_assert_eq(kill(D.pid, SIGCONT), 0);
	memset(stg + n, 0, n);
	cr_assert_eq(kvc_fetch(c, &k, n, n, &got), 0, "this call's own answer");
	cr_assert_eq(memcmp(stg, stg + n, n), 0);
	cr_assert_eq(kvc_nop(c), 0);
	kvc_detach(c);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* Without admin rights a client sees its own uid's clients and namespaces only, and may not
 * EVICT or CALIBRATE. */
Test(abuse, listings_show_other_users_nothing)
{
	int ready[2], done[2];
	char b;

	if (geteuid() != 0)
		cr_skip_test("needs root to act as another uid");
	start_with(&D, "[kvcd]\nsocket_mode = 0666\n");
	kvc_client *root = t_attach(&D, "root-secret", 1u << 20);

	cr_assert_eq(pipe(ready), 0);
	cr_assert_eq(pipe(done), 0);
	pid_t pid = fork();

	if (pid == 0) {
		static struct kvc_client_info ci[16];
		static struct kvc_stats st;
		int n;

		if (setgid(nobody()) || setuid(nobody()))
			_exit(90);
		kvc_client *c = t_try_attach(&D, "mine", 1u << 20);

		if (!c)
			_exit(91);
		if (write(ready[1], "r", 1) != 1 || read(done[0], &b, 1) != 1)
			_exit(92);
		n = kvc_clients(c, ci, 16, sizeof(ci[0]));
		if (n != 1 || ci[0].uid != nobody() || strcmp(ci[0].ns, "mine"))
			_exit(93);
		if (kvc_stats(c, &st, sizeof(st)) || st.nns != 1 || strcmp(st.ns[0].name, "mine"))
			_exit(94);
		if (kvc_calibrate(c, 0, 99, NULL) != -EPERM || kvc_evict(c, 0) != -EPERM)
			_exit(95); /* the administrators' */
		kvc_detach(c);
		_exit(0);
	}
	cr_assert_eq(read(ready[0], &b, 1), 1);
	struct kvc_client_info ci[16];

	cr_assert_eq(kvc_clients(root, ci, 16, sizeof(ci[0])), 2, "root sees everyone");
	cr_assert_eq(write(done[1], "d", 1), 1);
	int st;

	waitpid(pid, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "nobody saw only itself (status %d)",
		  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	kvc_detach(root);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* Attaching to ever new namespace names (any allowed uid may) never fills the namespace table
 * for good: a namespace nobody is attached to and that holds nothing is forgotten, while one
 * that holds blocks stays. */
Test(abuse, namespace_table_does_not_fill_up)
{
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 16
	};
	struct kvc_key k = { 3, 3 };
	char ns[32];
	int err;

	start_with(&D, "[kvcd]\n");
	kvc_client *keep = t_attach(&D, "keeps-a-block", 1u << 20);

	cr_assert_eq(kvc_store(keep, &k, &l, 0), 0);
	kvc_detach(keep);
	for (int i = 0; i < 600; i++) { /* more than the table's 256 entries */
		snprintf(ns, sizeof(ns), "tenant-%d", i);
		kvc_client *c = t_try_attach_err(&D, ns, 4096, &err);

		cr_assert_not_null(c, "namespace %d: %s", i, kvc_strerror(err));
		cr_assert_eq(kvc_nop(c), 0);
		kvc_detach(c);
		if (i % 64 == 63)
			t_sleep_ms(50); /* kvcd's main thread tears detached sessions down */
	}
	keep = t_attach(&D, "keeps-a-block", 1u << 20);
	size_t hits;

	cr_assert_eq(kvc_lookup(keep, &k, 1, &hits), 0);
	cr_assert_eq(hits, 1, "a namespace that holds blocks is kept");
	kvc_detach(keep);
	cr_assert_eq(t_daemon_stop(&D), 0);
}
