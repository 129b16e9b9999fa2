/* it_robust.c - hostile and dying clients, bad attaches, access control, memlock, and a
 * daemon restart under an attached client. The daemon must keep serving and leak nothing. */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pwd.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "t_util.h"
#include "codec.h"

static struct t_daemon D;

static void up(void)
{
	t_daemon_start(&D, "64M");
}

static void down(void)
{
	/* a crash, or a leak under LeakSanitizer, shows as a non-zero exit */
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exits 0 on SIGTERM");
}

TestSuite(robust, .init = up, .fini = down, .timeout = 60);

static struct kvc_stats stats_of(void)
{
	kvc_client *c = t_attach(&D, NULL, 4096);
	struct kvc_stats st;

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	return st;
}

/* Wait until only @n clients (plus the one asking) remain. */
static void wait_clients(unsigned n)
{
	for (int i = 0; i < 300; i++) {
		if (stats_of().clients == n + 1)
			return;
		t_sleep_ms(10);
	}
	cr_assert_fail("clients did not drop to %u", n);
}

Test(robust, kill_9_in_the_middle_of_stores)
{
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 8, .kv_heads = 8, .head_dim = 64, .tokens = 256
	}; /* 4 MiB */
	unsigned fds0 = t_count_fds_settled(D.pid);
	kvc_client *survivor = t_attach(&D, "kill", 4 << 20);
	struct kvc_key sk = { 1, 1 };

	t_fill(kvc_staging(survivor, NULL), kvc_layout_bytes(&l), 1);
	cr_assert_eq(kvc_store(survivor, &sk, &l, 0), 0);
	cr_assert_eq(kvc_pin(survivor, &sk, 0), 0);
	for (int round = 0; round < 10; round++) {
		pid_t pid = fork();

		if (pid == 0) { /* stream async STOREs and PINs forever */
			kvc_client *c = t_try_attach(&D, "kill", 8 << 20);
			struct kvc_cqe cq[64];

			if (!c)
				_exit(1);
			for (uint64_t i = 0;; i++) {
				struct kvc_req r[2] = {
					{ .op = KVC_OP_STORE,
					  .key = { 100 + (uint64_t)round, i },
					  .layout = l,
					  .off = (i % 2) << 22,
					  .len = 4 << 20 },
					{ .op = KVC_OP_PIN, .key = { 100 + (uint64_t)round, i } },
				};

				kvc_submit(c, r, 2, NULL);
				kvc_poll(c, cq, 64);
			}
		}
		t_sleep_ms(20 + 7 * round);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	wait_clients(1);
	/* the survivor and the daemon are fine, and nothing leaked */
	memset(kvc_staging(survivor, NULL), 0, 4 << 20);
	cr_assert_eq(kvc_fetch(survivor, &sk, 0, 4 << 20, NULL), 0);
	unsigned char ref[4096];

	t_fill(ref, sizeof(ref), 1);
	cr_assert_eq(memcmp(kvc_staging(survivor, NULL), ref, sizeof(ref)), 0);
	struct kvc_stats st = stats_of();

	cr_assert_eq(st.pinned, 1, "the dead clients' pins were released");
	cr_assert_eq(kvc_evict(survivor, 0) + 1, (int)st.blocks, "everything else evictable");
	kvc_detach(survivor);
	wait_clients(0);
	cr_assert_eq(t_count_fds_settled(D.pid), fds0, "no descriptor leaked");
}

Test(robust, malformed_requests_get_errors_not_crashes)
{
	struct kvcp_raw r;
	struct kvcp_cqe cqe;
	struct kvcp_sqe bad[] = {
		{ .opcode = 200, .user_data = 1 },
		{ .opcode = KVCP_OP_NOP, .flags = 0x80, .user_data = 2 },
		{ .opcode = KVCP_OP_NOP, .gpu = 1, .user_data = 3 },
		{ .opcode = KVCP_OP_FETCH, .off = UINT64_MAX - 10, .len = 100, .user_data = 4 },
		{ .opcode = KVCP_OP_STORE,
		  .off = 0,
		  .len = 1ull << 40,
		  .user_data = 5,
		  .layout = { .dtype = 1, .layers = 1, .kv_heads = 1, .head_dim = 1, .tokens = 1 } },
		{ .opcode = KVCP_OP_STORE,
		  .off = 0,
		  .len = 8,
		  .user_data = 6,
		  .layout = { .dtype = 1, .layers = 1, .kv_heads = 1, .head_dim = 1, .tokens = 2 } },
		{ .opcode = KVCP_OP_STORE,
		  .off = 0,
		  .len = 8,
		  .user_data = 7,
		  .layout = { .dtype = 1,
			      .codec = 9,
			      .layers = 1,
			      .kv_heads = 1,
			      .head_dim = 1,
			      .tokens = 1 } },
		{ .opcode = KVCP_OP_LOOKUP, .off = 3, .len = 17, .user_data = 8 },
		{ .opcode = KVCP_OP_STATS,
		  .flags = KVCP_SQE_F_SCRATCH,
		  .off = 0,
		  .len = 10,
		  .user_data = 9 },
		{ .opcode = KVCP_OP_EVICT, .user_data = 10 },
	};
	const int want[] = { -EBADMSG, -EBADMSG, -EBADMSG, -EINVAL, -EINVAL,
			     -EINVAL,  -EINVAL,	 -EINVAL,  -ENOSPC, 0 };

	cr_assert_eq(kvcp_raw_attach(D.sock, NULL, &r), 0);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(t_raw_call(&r, &bad[i], &cqe), 0, "request %u answered", i);
		cr_assert_eq(cqe.user_data, bad[i].user_data);
		cr_assert_eq(cqe.res, want[i], "request %u: got %d want %d", i, cqe.res, want[i]);
	}
	/* RECOMPRESS, written by hand: every malformed header is refused */
	struct {
		struct kvcp_recompress h;
		uint64_t len;
		uint8_t codec;
		int want;
	} rc[] = {
		{ { .magic = 0, .nkeys = 1 }, 48 + 16, 0, -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC, .nkeys = 0 }, 48, 0, -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC, .nkeys = 5000 }, 48 + 5000 * 16, 0, -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC, .nkeys = 2 }, 48 + 16, 0, -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC, .nkeys = 1, .reserved0 = 1 }, 64, 0, -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC,
		    .nkeys = 1,
		    .aux_off = (1 << 20) - 8,
		    .aux_len = 64 },
		  64,
		  0,
		  -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC, .nkeys = 1 }, 64, 9, -EINVAL },
		{ { .magic = KVCP_RECOMPRESS_MAGIC, .nkeys = 1 }, 64, 0, -EINVAL }, /* raw policy */
	};

	for (unsigned i = 0; i < sizeof(rc) / sizeof(rc[0]); i++) {
		struct kvcp_sqe q = { .opcode = KVCP_OP_RECOMPRESS,
				      .off = 4096,
				      .len = rc[i].len,
				      .user_data = 100 + i,
				      .layout = { .codec = rc[i].codec } };

		memset(r.staging + 4096, 0, rc[i].len);
		memcpy(r.staging + 4096, &rc[i].h, sizeof(rc[i].h));
		cr_assert_eq(t_raw_call(&r, &q, &cqe), 0, "recompress %u answered", i);
		cr_assert_eq(cqe.res, rc[i].want, "recompress %u: got %d", i, cqe.res);
	}
	struct kvc_stats st = stats_of();

	cr_assert_geq(st.bad_requests, 8 + 8);
	/* now break the ring itself: a producer index far ahead of anything written */
	__atomic_store_n(&r.hdr->sq.prod, r.sq_prod + 100000, __ATOMIC_RELEASE);
	__atomic_fetch_add(&r.hdr->sq.futex, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &r.hdr->sq.futex, 1, 1, NULL, NULL, 0);
	char b;

	struct timeval tv = { 3, 0 };

	setsockopt(r.sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	cr_assert_eq(recv(r.sock, &b, 1, 0), 0, "the daemon hung up on the corrupt client");
	kvcp_raw_close(&r);
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_nop(c), 0, "and goes on serving others");
	kvc_detach(c);
}

Test(robust, hostile_attaches_are_refused_without_leaks)
{
	struct kvcp_attach_req req = {
		.magic32 = KVCP_ATTACH_MAGIC, .major = KVCP_MAJOR + 1, .numa_node = -1, .ns = "x"
	};
	struct kvcp_raw r;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	unsigned fds0;
	int s;

	strcpy(sa.sun_path, D.sock);
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -EPROTO, "other major version");
	close(r.sock);
	req.major = KVCP_MAJOR;
	req.magic32 = 0xdead;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -EBADMSG, "bad magic");
	close(r.sock);
	req.magic32 = KVCP_ATTACH_MAGIC;
	memset(req.ns, 'a', sizeof(req.ns)); /* not NUL-terminated */
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -EBADMSG);
	close(r.sock);
	strcpy(req.ns, "x");
	req.staging_size = 1ull << 40;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -E2BIG, "staging above staging_max");
	close(r.sock);
	fds0 = t_count_fds_settled(D.pid);
	for (int i = 0; i < 200; i++) { /* short messages, passed descriptors, silence */
		char junk[7] = "garbage";
		int pass[3] = { 0, 1, 2 };
		char cbuf[CMSG_SPACE(sizeof(pass))] = { 0 };
		struct iovec iov = { junk, sizeof(junk) };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(pass));
		memcpy(CMSG_DATA(cm), pass, sizeof(pass));
		s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
		cr_assert_eq(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
		if (i % 3 == 0)
			sendmsg(s, &mh, 0);
		else if (i % 3 == 1)
			send(s, junk, 3, 0);
		close(s); /* i % 3 == 2: connect and leave */
	}
	t_sleep_ms(200); /* the closed ones are gone: this uid's pending share is free again */
	s = socket(AF_UNIX, SOCK_SEQPACKET, 0); /* one that stays silent: told, then dropped */
	cr_assert_eq(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	t_sleep_ms(1500);
	struct kvcp_attach_rep rep;

	cr_assert_eq(recv(s, &rep, sizeof(rep), MSG_DONTWAIT), (ssize_t)sizeof(rep));
	cr_assert_eq(rep.status, -ETIMEDOUT, "the handshake deadline, said (%d)", rep.status);
	cr_assert_eq(recv(s, &rep, 1, MSG_DONTWAIT), 0, "silent connection closed by kvcd");
	close(s);
	t_sleep_ms(50);
	unsigned fds1 = t_count_fds_settled(D.pid);

	if (fds1 != fds0) {
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "ls -l /proc/%d/fd >&2", (int)D.pid);
		if (system(cmd))
			fprintf(stderr, "ls failed\n");
	}
	cr_assert_eq(fds1, fds0, "no descriptor leaked: %u then %u", fds0, fds1);
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_nop(c), 0);
	kvc_detach(c);
}

Test(robust, daemon_restart_is_noticed_and_reattached)
{
	kvc_client *c = t_attach(&D, "restart", 1 << 20);
	struct kvc_stats st1, st2;
	void *stg = kvc_staging(c, NULL);
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 8, .tokens = 8
	};
	struct kvc_key k = { 3, 3 };

	cr_assert_eq(kvc_stats(c, &st1, sizeof(st1)), 0);
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_start(&D, "64M");
	int err = kvc_nop(c);

	cr_assert_eq(err, -ECONNRESET, "the first request reports the restart: %s",
		     kvc_strerror(err));
	cr_assert_eq(kvc_nop(c), 0, "then the handle works again");
	cr_assert_eq(kvc_staging(c, NULL), stg, "the staging buffer kept its address");
	cr_assert_eq(kvc_stats(c, &st2, sizeof(st2)), 0);
	cr_assert_neq(st1.boot_token, st2.boot_token);
	cr_assert_eq(kvc_fetch(c, &k, 0, 4096, NULL), -ENOENT, "a new daemon starts empty");
	kvc_detach(c);
}

static uid_t nobody(void)
{
	struct passwd *pw = getpwnam("nobody");

	return pw ? pw->pw_uid : 65534;
}

static struct t_daemon D_acl; /* in D's directory: D's teardown removes it */

static void acl_down(void)
{
	t_daemon_stop(&D_acl); /* also when an assertion ended the test */
}

Test(robust, uid_outside_the_allow_list_is_refused, .fini = acl_down)
{
	char conf[128];
	FILE *f;
	struct t_daemon d2 = { 0 };
	const char *args[] = { "--config", conf, "--pool-size", "16M", NULL };

	if (geteuid() != 0)
		cr_skip_test("needs root to act as another uid");
	snprintf(conf, sizeof(conf), "%s/acl.conf", D.dir);
	f = fopen(conf, "w");
	fprintf(f, "[kvcd]\nsocket_mode = 0666\n[namespace secret]\nallow_uids = 0\n");
	fclose(f);
	strcpy(d2.dir, D.dir);
	snprintf(d2.sock, sizeof(d2.sock), "%s/acl.sock", D.dir);
	snprintf(d2.log, sizeof(d2.log), "%s/acl.log", D.dir);
	cr_assert_eq(t_daemon_start_args(&d2, args), 0);
	D_acl = d2;
	pid_t pid = fork();

	if (pid == 0) {
		struct kvc_attach_opts o;
		kvc_client *c;
		int e1, e2;

		if (setgid(nobody()) || setuid(nobody()))
			_exit(90);
		kvc_attach_opts_init(&o);
		o.socket = d2.sock;
		o.ns = "secret";
		o.staging_size = 4096;
		e1 = kvc_attach(&o, &c);
		o.ns = "public";
		e2 = kvc_attach(&o, &c);
		_exit(e1 == -EACCES && e2 == 0 ? 0 : 1);
	}
	int st;

	waitpid(pid, &st, 0);
	kvc_client *c = t_attach(&d2, "secret", 4096); /* root is on the list */

	kvc_detach(c);
	D_acl.pid = 0;
	cr_assert_eq(t_daemon_stop(&d2), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "nobody must get EACCES for 'secret' and a session for 'public' (status %d)", st);
}

Test(robust, too_little_memlock_fails_before_ready_unless_told_to_try)
{
	char cmd[512], log[128], buf[2048] = { 0 };
	FILE *f;

	if (geteuid() != 0)
		cr_skip_test("needs root to drop CAP_IPC_LOCK by changing uid");
	snprintf(log, sizeof(log), "%s/memlock.log", D.dir);
	/* as nobody: no CAP_IPC_LOCK, and RLIMIT_MEMLOCK of 8 MiB against a 64 MiB pool */
	snprintf(cmd, sizeof(cmd),
		 "setpriv --reuid=%u --regid=%u --clear-groups sh -c 'ulimit -l 8192; exec %s "
		 "--foreground --socket %s/memlock.sock --pool-size 64M' >%s 2>&1",
		 nobody(), nobody(), t_kvcd_bin(), D.dir, log);
	int st = system(cmd);

	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "kvcd must exit 1, got %d", st);
	f = fopen(log, "r");
	cr_assert_not_null(f);
	if (fread(buf, 1, sizeof(buf) - 1, f) == 0)
		buf[0] = 0;
	fclose(f);
	cr_assert_not_null(strstr(buf, "RLIMIT_MEMLOCK"), "says what to raise: %s", buf);
	cr_assert_null(strstr(buf, "ready"), "never reported ready: %s", buf);
	cr_assert(access("/tmp/nonexistent", F_OK) != 0);
	snprintf(cmd, sizeof(cmd), "%s/memlock.sock", D.dir);
	cr_assert(access(cmd, F_OK) != 0, "no socket was left behind");

	/* memlock = try (a sandboxed kernel): the same kvcd says what it could not do and
	 * serves, its pool unlocked */
	char dir[] = "/tmp/kvcd-memlock-XXXXXX", out[4096];
	int pid = 0, served;

	cr_assert_not_null(mkdtemp(dir));
	chmod(dir, 0777);
	snprintf(cmd, sizeof(cmd),
		 "setpriv --reuid=%u --regid=%u --clear-groups sh -c 'ulimit -l 8192; exec %s "
		 "--foreground --memlock try --socket %s/k.sock --pool-size 64M' >%s/log 2>&1 & "
		 "echo $!",
		 nobody(), nobody(), t_kvcd_bin(), dir, dir);
	t_sh(out, sizeof(out), "%s", cmd);
	pid = atoi(out);
	for (int i = 0; i < 500 && access(strcat(strcpy(cmd, dir), "/k.sock"), F_OK); i++)
		t_sleep_ms(10);
	struct kvc_attach_opts o;
	kvc_client *c = NULL;

	kvc_attach_opts_init(&o);
	o.socket = cmd; /* dir/k.sock */
	o.staging_size = 1 << 20;
	served = kvc_attach(&o, &c);
	if (!served) {
		served = kvc_nop(c);
		kvc_detach(c);
	}
	snprintf(out, sizeof(out), "%s", kvc_strerror(served));
	if (pid > 0)
		kill(pid, SIGTERM);
	for (int i = 0; pid > 0 && i < 500 && kill(pid, 0) == 0; i++)
		t_sleep_ms(10);
	t_sh(buf, sizeof(buf), "cat %s/log; rm -rf %s", dir, dir);
	cr_assert_gt(pid, 0);
	cr_assert_eq(served, 0, "serves: %s / %s", out, buf);
	/* the limit is said at start; each pool the kernel would not lock says so too (a
	 * sanitizer's mlock always succeeds, so only the first is asked for here) */
	cr_assert_not_null(strstr(buf, "memlock = try"), "says so: %s", buf);
}

/* Phase-tagged rings (KVCP_ATTACH_F_PHASE), written by hand: entries are taken over several
 * laps, a bad one is an error as in the classic rings, completions come back with the phase
 * bit, and an entry that does not carry this lap's bit is not there, whatever prod says. */
Test(robust, phase_tagged_rings_take_only_entries_of_this_lap)
{
	struct kvcp_attach_req req = kvcp_raw_request("default");
	struct kvcp_raw r;
	struct kvcp_cqe cqe;
	struct kvcp_sqe nop = { .opcode = KVCP_OP_NOP }, bad = { .opcode = 200, .user_data = 7 };

	req.flags = KVCP_ATTACH_F_PHASE;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), 0);
	cr_assert(r.hdr->compat & KVCP_COMPAT_PHASE, "granted");
	for (uint32_t i = 0; i < 3 * r.hdr->sq_entries; i++) {
		nop.user_data = 1000 + i;
		cr_assert_eq(t_raw_call(&r, &nop, &cqe), 0, "NOP %u answered", i);
		cr_assert_eq(cqe.user_data, 1000 + i);
		cr_assert_eq(cqe.res, 0);
		cr_assert_eq(cqe.flags, 0, "the copy has no phase bit");
	}
	cr_assert_eq(t_raw_call(&r, &bad, &cqe), 0);
	cr_assert_eq(cqe.res, -EBADMSG);
	/* the next slot, written as a classic ring would (no phase bit on this lap), and prod
	 * moved: not taken */
	struct kvcp_sqe *slot = (struct kvcp_sqe *)((char *)r.hdr + r.hdr->sq_off) +
				(r.sq_prod & (r.hdr->sq_entries - 1));
	bool lap_bit = kvcp_phase(r.sq_prod, r.hdr->sq_entries);

	nop.user_data = 99;
	nop.flags = lap_bit ? 0 : KVCP_SQE_F_PHASE;
	memcpy(slot, &nop, sizeof(nop));
	__atomic_store_n(&r.hdr->sq.prod, r.sq_prod + 1, __ATOMIC_RELEASE);
	__atomic_fetch_add(&r.hdr->sq.futex, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &r.hdr->sq.futex, 1, 1, NULL, NULL, 0);
	usleep(200000);
	cr_assert_not(kvcp_ring_ready_phase((char *)r.hdr + r.hdr->cq_off, r.hdr->cq_entries,
					    r.cq_cons, KVCP_CQE_PHASE_WORD, KVCP_CQE_PHASE_BIT),
		      "no completion for it");
	/* with its bit, it is */
	nop.flags = lap_bit ? KVCP_SQE_F_PHASE : 0;
	memcpy(slot, &nop, sizeof(nop));
	__atomic_fetch_add(&r.hdr->sq.futex, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &r.hdr->sq.futex, 1, 1, NULL, NULL, 0);
	for (int i = 0;
	     i < 2000 && !kvcp_ring_ready_phase((char *)r.hdr + r.hdr->cq_off, r.hdr->cq_entries,
						r.cq_cons, KVCP_CQE_PHASE_WORD, KVCP_CQE_PHASE_BIT);
	     i++)
		usleep(1000);
	cr_assert_eq(kvcp_ring_pop_phase(&r.hdr->cq, (char *)r.hdr + r.hdr->cq_off,
					 r.hdr->cq_entries, &r.cq_cons, &cqe, KVCP_CQE_PHASE_WORD,
					 KVCP_CQE_PHASE_BIT),
		     1);
	cr_assert_eq(cqe.user_data, 99);
	kvcp_raw_close(&r);
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_nop(c), 0, "and others are served");
	kvc_detach(c);
}

/* The state letter of kvcd's worker thread ("kvcd-w0") in /proc: R while it spins, S asleep. */
static char worker_state(pid_t pid)
{
	char path[320], buf[256];
	DIR *d;
	struct dirent *e;
	char state = '?';

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	cr_assert_not_null(d);
	while (state == '?' && (e = readdir(d))) {
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f) && !strcmp(buf, "kvcd-w0\n")) {
			fclose(f);
			snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid, e->d_name);
			f = fopen(path, "r");
			cr_assert_not_null(f);
			cr_assert_not_null(fgets(buf, sizeof(buf), f));
			state = strrchr(buf, ')')[2];
		}
		fclose(f);
	}
	closedir(d);
	return state;
}

/* User and system CPU time of process @pid, in clock ticks. */
static uint64_t cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	cr_assert_not_null(f);
	cr_assert_not_null(fgets(buf, sizeof(buf), f));
	fclose(f);
	p = strrchr(buf, ')');
	/* after the name: state, then 10 fields, then utime and stime */
	cr_assert_eq(
		sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st),
		2);
	return ut + st;
}

/* Whether the worker, having answered a NOP, spins for the next request: @hint in cq.hint,
 * and @asleep: the client says (cq.flags) it is asleep, so the answer has to wake it. */
static bool worker_spins_after(struct t_daemon *t, struct kvcp_raw *r, uint32_t hint, bool asleep)
{
	struct kvcp_sqe nop = { .opcode = KVCP_OP_NOP, .user_data = 5 };
	struct kvcp_cqe cqe;
	char s = '?';

	for (int i = 0; i < 300 && (s = worker_state(t->pid)) != 'S'; i++) /* asleep first */
		usleep(10000);
	cr_assert_eq(s, 'S', "the worker sleeps when nothing is asked");
	kvcp_store_relaxed(&r->hdr->cq.hint, hint);
	kvcp_store_relaxed(&r->hdr->cq.flags, asleep ? KVCP_RING_NEED_WAKEUP : 0);
	cr_assert_eq(t_raw_call(r, &nop, &cqe), 0);
	cr_assert_eq(cqe.res, 0);
	kvcp_store_relaxed(&r->hdr->cq.flags, 0);
	/* busy_poll_us is a second: a spinning worker runs throughout the next half; one that
	 * does not spin is asleep well within it (a loaded machine may take a moment) */
	for (int i = 0; i < 50; i++) {
		usleep(10000);
		if (worker_state(t->pid) == 'S')
			return false;
	}
	return true;
}

/* cq.hint (protocol 2.7): the worker spins after answering a client whose waits spin, even
 * when the answer had to wake it, and not after one that sleeps at once; without a hint
 * (clients before 2.7) it spins unless it had to wake the client. */
static struct t_daemon D_spin;

static void spin_down(void)
{
	t_daemon_down(&D_spin); /* also when an assertion ended the test */
}

Test(robust, worker_spins_only_for_clients_that_spin, .fini = spin_down)
{
	struct t_daemon *d2 = &D_spin;
	struct kvcp_attach_req req = kvcp_raw_request("default");
	struct kvcp_raw r;
	uint64_t utime0, utime1;

	t_daemon_start_conf(d2, "[kvcd]\nbusy_poll_us = 1000000\nworkers = 1\n");
	req.flags = KVCP_ATTACH_F_PHASE;
	cr_assert_eq(kvcp_raw_attach(d2->sock, &req, &r), 0);
	/* a first request, so that taking the session over is behind the worker */
	worker_spins_after(d2, &r, KVCP_HINT_SLEEP, false);
	bool spin_woken = worker_spins_after(d2, &r, KVCP_HINT_SPIN, true);
	bool sleeps = worker_spins_after(d2, &r, KVCP_HINT_SLEEP, false);
	bool none_woken = worker_spins_after(d2, &r, 0, true);
	bool none = worker_spins_after(d2, &r, 0, false);

	/* with nobody to answer, the worker does not spin when its one-second timeout wakes it */
	kvcp_raw_close(&r);
	for (int i = 0; i < 300 && worker_state(d2->pid) != 'S'; i++)
		usleep(10000);
	utime0 = cpu_ticks(d2->pid);
	sleep(3);
	utime1 = cpu_ticks(d2->pid);
	cr_assert_eq(t_daemon_down(d2), 0);
	cr_assert(spin_woken, "hint SPIN, woken: spins");
	cr_assert_not(sleeps, "hint SLEEP: sleeps");
	cr_assert_not(none_woken, "no hint, woken: sleeps");
	cr_assert(none, "no hint, not woken: spins");
	cr_assert_lt(utime1 - utime0, 50, "idle kvcd used %llu clock ticks of CPU in 3 s",
		     (unsigned long long)(utime1 - utime0));
}

/* A CALIBRATE learns on a thread of its own: the worker serves its other sessions meanwhile
 * (a NOP of another client is answered while the CALIBRATE is still out), the CALIBRATE's
 * answer comes when it is done, and one whose client went away still lands its basis, and
 * kvcd stops cleanly after it. The namespace is a Llama-3-8B shape (32 layers, 8 KV heads of
 * 128, f16), 1024 tokens: long enough to learn that the NOP cannot have waited for it. */
static struct t_daemon D_cal;

static void cal_down(void)
{
	t_daemon_down(&D_cal);
}

/* Push a CALIBRATE of namespace-wide raw blocks on @r and ring. */
static void raw_calibrate(struct kvcp_raw *r, uint64_t user_data)
{
	struct kvcp_sqe cal = { .opcode = KVCP_OP_CALIBRATE,
				.user_data = user_data,
				.arg = KVCP_CALIBRATE_ARG(0, 99) };
	char *base = (char *)r->hdr;

	cr_assert_eq(kvcp_ring_push(&r->hdr->sq, base + r->hdr->sq_off, r->hdr->sq_entries,
				    &r->sq_prod, &r->sq_cons_cache, &cal),
		     0);
	kvcp_fence();
	__atomic_fetch_add(&r->hdr->sq.futex, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &r->hdr->sq.futex, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
}

Test(robust, calibrate_does_not_hold_the_worker, .fini = cal_down, .timeout = 120)
{
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 32, .kv_heads = 8, .head_dim = 128, .tokens = 16
	};
	size_t n = kvc_layout_bytes(&l), size;
	struct kvcp_attach_req req = kvcp_raw_request("big");
	struct kvcp_raw r;
	struct kvcp_cqe cqe;
	struct kvc_stats st;
	int pending = 1;

	char conf[160];
	const char *args[] = { "--config", conf, "--pool-size", "512M", NULL };
	FILE *f;

	t_daemon_dir(&D_cal, conf, sizeof(conf));
	f = fopen(conf, "w");
	cr_assert_not_null(f);
	fputs("[kvcd]\nworkers = 1\n", f);
	fclose(f);
	cr_assert_eq(t_daemon_start_args(&D_cal, args), 0);
	kvc_client *big = t_attach(&D_cal, "big", n), *other = t_attach(&D_cal, NULL, 4096);
	unsigned char *stg = kvc_staging(big, &size);

	for (unsigned i = 0; i < 64; i++) {
		struct kvc_key k = { 0xca1, i };

		uint16_t *x = (uint16_t *)stg;

		for (size_t e = 0; e < n / 2; e++) /* finite values: CALIBRATE refuses inf/nan */
			x[e] = kvcd_f32_to_f16(t_nrand());
		cr_assert_eq(kvc_store(big, &k, &l, 0), 0);
	}
	cr_assert_eq(kvcp_raw_attach(D_cal.sock, &req, &r), 0);
	raw_calibrate(&r, 41);
	for (int i = 0; i < 5000 && kvcp_load_acquire(&r.hdr->sq.cons) != r.sq_prod; i++)
		usleep(100);
	/* taken: the worker answers another client's NOP and STATS while the basis is learned,
	 * which a worker learning it itself would only do once the basis was there */
	cr_assert_eq(kvc_nop(other), 0);
	cr_assert_eq(kvc_stats(other, &st, sizeof(st)), 0);
	for (unsigned k = 0; k < st.nns && k < 32; k++)
		cr_assert(strcmp(st.ns[k].name, "big") || !st.ns_bases[k].newest,
			  "served before the basis was learned");
	pending = kvcp_ring_pop(&r.hdr->cq, (char *)r.hdr + r.hdr->cq_off, r.hdr->cq_entries,
				&r.cq_cons, &cqe) != 1;
	cr_assert(pending, "and the CALIBRATE's answer comes after");
	for (int i = 0; i < 60000 && pending; i++) {
		pending = kvcp_ring_pop(&r.hdr->cq, (char *)r.hdr + r.hdr->cq_off,
					r.hdr->cq_entries, &r.cq_cons, &cqe) != 1;
		if (pending)
			usleep(1000);
	}
	cr_assert_not(pending, "the CALIBRATE is answered once it is done");
	cr_assert_eq(cqe.user_data, 41);
	cr_assert_eq(cqe.res, 1, "basis version 1: %d", cqe.res);
	cr_assert_gt(cqe.value, 0, "its size");

	/* a second one whose client goes once kvcd has taken it: the basis still lands */
	raw_calibrate(&r, 42);
	for (int i = 0; i < 5000 && kvcp_load_acquire(&r.hdr->sq.cons) != r.sq_prod; i++)
		usleep(1000);
	cr_assert_eq(kvcp_load_acquire(&r.hdr->sq.cons), r.sq_prod, "taken");
	kvcp_raw_close(&r);
	for (int i = 0; i < 600; i++) {
		cr_assert_eq(kvc_stats(other, &st, sizeof(st)), 0);
		bool found = false;

		for (unsigned k = 0; k < st.nns && k < 32; k++)
			found |= !strcmp(st.ns[k].name, "big") && st.ns_bases[k].newest == 2;
		if (found)
			break;
		cr_assert_lt(i, 599, "the orphaned CALIBRATE's basis lands");
		usleep(100000);
	}
	cr_assert_eq(kvc_nop(other), 0);
	kvc_detach(big);
	kvc_detach(other);
	/* and one still learning when kvcd stops: kvcd waits for it and exits cleanly */
	cr_assert_eq(kvcp_raw_attach(D_cal.sock, &req, &r), 0);
	raw_calibrate(&r, 43);
	for (int i = 0; i < 5000 && kvcp_load_acquire(&r.hdr->sq.cons) != r.sq_prod; i++)
		usleep(1000);
	cr_assert_eq(t_daemon_stop(&D_cal), 0, "a clean exit with a CALIBRATE in flight");
	kvcp_raw_close(&r);
}

/* A kernel without futex_waitv (before 5.16, or a sandbox such as gVisor), made here with a
 * seccomp filter that answers it ENOSYS: kvcd says so once, and its workers still take every
 * request, from clients that sleep for their answers, and still stop on SIGTERM. */
static void without_futex_waitv(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_futex_waitv, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		_exit(126);
}

Test(robust, workers_without_futex_waitv_poll_and_serve)
{
	struct t_daemon d2 = { 0 };
	const char *args[] = { "--pool-size", "16M", "--workers", "2", NULL };
	struct kvc_attach_opts o;
	kvc_client *c[3];
	char log[4096];

	t_pre_exec = without_futex_waitv;
	cr_assert_eq(t_daemon_start_args(&d2, args), 0);
	t_pre_exec = NULL;
	for (int i = 0; i < 3; i++) {
		kvc_attach_opts_init(&o);
		o.socket = d2.sock;
		o.staging_size = 1 << 16;
		cr_assert_eq(kvc_attach(&o, &c[i]), 0);
	}
	int bad = 0;

	for (int r = 0; r < 300; r++) {
		bad += kvc_nop(c[r % 3]) != 0;
		if (r % 50 == 0)
			t_sleep_ms(20); /* long enough for the workers to go idle */
	}
	for (int i = 0; i < 3; i++)
		kvc_detach(c[i]);
	t_sh(log, sizeof(log), "cat %s", d2.log);
	int st = t_daemon_stop(&d2);

	t_daemon_cleanup(&d2);
	cr_assert_eq(bad, 0);
	cr_assert_eq(st, 0, "stops on SIGTERM: %s", log);
	cr_assert_not_null(strstr(log, "futex_waitv is not available"), "%s", log);
}
