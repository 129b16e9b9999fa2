/* it_restart.c - warm restarts: kvcd keeps its pools in files of a state directory, and a
 * kvcd started on them (after a crash or a clean stop) rebuilds its index from the blocks'
 * own records, checks every block's checksum, and serves the cache warm. Clients re-attach on
 * their own and hit. What does not check out is dropped, never misread. */
#include <signal.h>

#include "t_util.h"

#define NBLK 64

static struct t_daemon D;
static char state[96], conf[160];

static void cleanup(void)
{
	char cmd[128];

	t_daemon_cleanup(&D);
	if (state[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", state);
		if (system(cmd))
			fprintf(stderr, "cleanup of %s failed\n", state);
	}
}

TestSuite(restart, .fini = cleanup, .timeout = 60);

static void start(void)
{
	const char *args[] = { "--config", conf, "--pool-size", "32M", "--state-dir", state, NULL };

	cr_assert_eq(t_daemon_start_args(&D, args), 0, "kvcd failed to start");
}

/* A daemon directory, a config with a compressed namespace, and a state directory on tmpfs
 * when there is one. */
static void prepare(void)
{
	FILE *f;

	memset(&D, 0, sizeof(D));
	t_daemon_dir(&D, conf, sizeof(conf));
	f = fopen(conf, "w");
	fputs("[namespace packed]\npolicy = int8\n", f);
	fclose(f);
	snprintf(state, sizeof(state), "%s/kvcd-state-XXXXXX",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	cr_assert_not_null(mkdtemp(state));
}

static const struct kvc_layout L = {
	.dtype = KVC_F16, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 16
};

static struct kvc_key key(unsigned i)
{
	return (struct kvc_key){ 0x1000 + i, 0xabc };
}

/* Store NBLK blocks in @c; keep what a FETCH gives back in @want (NBLK blocks). */
static void fill(kvc_client *c, unsigned char *want)
{
	size_t size, n = kvc_layout_bytes(&L);
	unsigned char *stg = kvc_staging(c, &size);

	for (unsigned i = 0; i < NBLK; i++) {
		struct kvc_key k = key(i);

		for (size_t j = 0; j < n; j++) /* finite f16 values */
			stg[j] = (unsigned char)(t_urand() * 256) & (j % 2 ? 0x3b : 0xff);
		cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
		cr_assert_eq(kvc_fetch(c, &k, n, size - n, NULL), 0);
		memcpy(want + i * n, stg + n, n);
	}
}

/* Every block is there and gives back the same bytes. Returns how many hit. */
static unsigned check(kvc_client *c, const unsigned char *want)
{
	size_t size, n = kvc_layout_bytes(&L);
	unsigned char *stg = kvc_staging(c, &size);
	unsigned hits = 0;

	for (unsigned i = 0; i < NBLK; i++) {
		struct kvc_key k = key(i);
		int r = kvc_fetch(c, &k, 0, size, NULL);

		cr_assert(r == 0 || r == -ENOENT, "block %u: %s", i, kvc_strerror(r));
		if (r == 0) {
			cr_assert_eq(memcmp(stg, want + i * n, n), 0, "block %u intact", i);
			hits++;
		}
	}
	return hits;
}

static kvc_client *attach_ns(const char *ns)
{
	return t_attach(&D, ns, 1u << 20);
}

/* A crash (SIGKILL) and a clean stop both leave the cache for the next kvcd; clients that
 * were attached carry on after one -ECONNRESET. */
Test(restart, crash_and_clean_stop_keep_the_cache)
{
	static unsigned char raw[NBLK * 16384], packed[NBLK * 16384];
	struct kvc_key keys[NBLK];
	struct kvc_stats st;
	size_t hits;

	prepare();
	start();
	kvc_client *a = attach_ns("default"), *b = attach_ns("packed");

	fill(a, raw);
	fill(b, packed);
	for (unsigned i = 0; i < NBLK; i++)
		keys[i] = key(i);
	cr_assert_eq(kill(D.pid, SIGKILL), 0);
	waitpid(D.pid, NULL, 0);
	D.pid = 0;
	start();
	cr_assert_eq(kvc_nop(a), -ECONNRESET, "the old daemon's requests are lost");
	cr_assert_eq(kvc_lookup(a, keys, NBLK, &hits), 0);
	cr_assert_eq(hits, NBLK, "every block back after a crash: %zu", hits);
	cr_assert_eq(check(a, raw), NBLK);
	cr_assert_eq(kvc_nop(b), -ECONNRESET);
	cr_assert_eq(check(b, packed), NBLK, "compressed blocks too");
	cr_assert_eq(kvc_stats(a, &st, sizeof(st)), 0);
	cr_assert_eq(st.blocks, 2 * NBLK);
	cr_assert_eq(t_daemon_stop(&D), 0);
	start();
	cr_assert_eq(kvc_nop(a), -ECONNRESET);
	cr_assert_eq(check(a, raw), NBLK, "and after a clean stop");
	cr_assert_eq(kvc_nop(b), -ECONNRESET);
	cr_assert_eq(check(b, packed), NBLK);
	kvc_detach(a);
	kvc_detach(b);
}

/* Find @n bytes equal to @pat in the state file and flip one of them. */
static bool corrupt(const void *pat, size_t n)
{
	char path[160];
	int fd;
	struct stat st;
	unsigned char *m;
	bool done = false;

	snprintf(path, sizeof(path), "%s/kvcd-pool-0", state);
	fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &st), 0);
	m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(m, MAP_FAILED);
	unsigned char *hit = memmem(m, (size_t)st.st_size, pat, n);

	if (hit) {
		hit[n / 2] ^= 0x40;
		done = true;
	}
	munmap(m, (size_t)st.st_size);
	close(fd);
	return done;
}

/* A block whose bytes changed while kvcd was down fails its checksum and is dropped; the
 * others come back. */
Test(restart, a_corrupted_block_is_dropped)
{
	static unsigned char raw[NBLK * 16384];
	size_t n = kvc_layout_bytes(&L);

	prepare();
	start();
	kvc_client *a = attach_ns("default");

	fill(a, raw);
	cr_assert_eq(t_daemon_stop(&D), 0);
	cr_assert(corrupt(raw + 7 * n, n), "block 7 found in the pool file");
	start();
	cr_assert_eq(kvc_nop(a), -ECONNRESET);
	cr_assert_eq(check(a, raw), NBLK - 1, "all but the corrupted one");
	struct kvc_key k = key(7);

	cr_assert_eq(kvc_fetch(a, &k, 0, n, NULL), -ENOENT, "never served corrupt");
	kvc_detach(a);
	cr_assert_eq(t_daemon_stop(&D), 0);
	char buf[8192] = { 0 };
	FILE *f = fopen(D.log, "r");

	cr_assert_eq(fread(buf, 1, sizeof(buf) - 1, f) > 0, 1);
	fclose(f);
	cr_assert_not_null(strstr(buf, "1 failing their checksum"), "%s", buf);
}

/* A pool written in another format version starts empty, and says so: never misread. */
Test(restart, another_format_version_starts_cold)
{
	static unsigned char raw[NBLK * 16384];
	char path[160], buf[8192] = { 0 };
	uint32_t v;
	int fd;

	prepare();
	start();
	kvc_client *a = attach_ns("default");

	fill(a, raw);
	cr_assert_eq(t_daemon_stop(&D), 0);
	snprintf(path, sizeof(path), "%s/kvcd-pool-0", state);
	fd = open(path, O_RDWR);
	cr_assert_eq(pread(fd, &v, 4, 8), 4); /* struct kvcd_sb.version */
	v += 1;
	cr_assert_eq(pwrite(fd, &v, 4, 8), 4);
	close(fd);
	start();
	cr_assert_eq(kvc_nop(a), -ECONNRESET);
	cr_assert_eq(check(a, raw), 0, "nothing adopted from an unknown format");
	fill(a, raw); /* and the pool works */
	cr_assert_eq(check(a, raw), NBLK);
	kvc_detach(a);
	cr_assert_eq(t_daemon_stop(&D), 0);
	FILE *f = fopen(D.log, "r");

	cr_assert_eq(fread(buf, 1, sizeof(buf) - 1, f) > 0, 1);
	fclose(f);
	cr_assert_not_null(strstr(buf, "starting it empty"), "%s", buf);
}

/* ---- systemd's file descriptor store, played by the test ------------------------------------
 * kvcd under systemd hands its pools over with sd_notify("FDSTORE=1") and gets them back at
 * the next start in LISTEN_FDS. The test plays the service manager on both ends. */

static pid_t spawn(int notify_fd, const char *notify_path, int pool_fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		int log = open(D.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		char pidbuf[16];

		dup2(log, 1);
		dup2(log, 2);
		if (notify_fd >= 0)
			setenv("NOTIFY_SOCKET", notify_path, 1);
		if (pool_fd >= 0) { /* as systemd passes stored descriptors: from fd 3 on */
			dup2(pool_fd, 3);
			snprintf(pidbuf, sizeof(pidbuf), "%d", (int)getpid());
			setenv("LISTEN_PID", pidbuf, 1);
			setenv("LISTEN_FDS", "1", 1);
			setenv("LISTEN_FDNAMES", "kvcd-pool-0", 1);
		}
		execl(t_kvcd_bin(), t_kvcd_bin(), "--foreground", "--socket", D.sock, "--config",
		      conf, "--pool-size", "32M", (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Read notifications until READY=1; returns the descriptor stored as kvcd-pool-0, or -1. */
static int collect_fdstore(int ns)
{
	int pool = -1;

	for (int i = 0; i < 100; i++) {
		char buf[512] = { 0 }, cbuf[CMSG_SPACE(8 * sizeof(int))];
		struct iovec iov = { buf, sizeof(buf) - 1 };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm;

		if (recvmsg(ns, &mh, 0) < 0)
			break;
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_type == SCM_RIGHTS && strstr(buf, "FDNAME=kvcd-pool-0"))
				memcpy(&pool, CMSG_DATA(cm), sizeof(int));
		if (strstr(buf, "READY=1"))
			break;
	}
	return pool;
}

Test(restart, systemd_fd_store_keeps_the_pools)
{
	static unsigned char raw[NBLK * 16384];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 10, 0 };
	int ns, pool;

	prepare();
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", D.dir);
	ns = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(ns, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(ns, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	D.pid = spawn(ns, sa.sun_path, -1);
	pool = collect_fdstore(ns);
	cr_assert_geq(pool, 0, "kvcd gave its pool to the store before READY");
	kvc_client *a = attach_ns("default");

	fill(a, raw);
	cr_assert_eq(kill(D.pid, SIGKILL), 0); /* systemd would restart it: Restart=on-failure */
	waitpid(D.pid, NULL, 0);
	D.pid = spawn(ns, sa.sun_path, pool);
	cr_assert_geq(collect_fdstore(ns), 0, "and gives it again");
	cr_assert_eq(kvc_nop(a), -ECONNRESET);
	cr_assert_eq(check(a, raw), NBLK, "every block back from the store");
	kvc_detach(a);
	close(pool);
	close(ns);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* A learned basis is a block of its namespace: a restart brings it back with the blocks
 * stored under it, which read as before, and the next CALIBRATE continues its versions. */
Test(restart, learned_bases_come_back)
{
	size_t size, n = kvc_layout_bytes(&L);
	unsigned char *want = malloc(n);
	struct kvc_layout l = L;
	struct kvc_key k = { 0x2000, 1 };

	prepare();
	start();
	kvc_client *c = attach_ns("learn");
	unsigned char *stg = kvc_staging(c, &size);
	int raw = kvc_policy(c, "none", 0, NULL, 0),
	    lr = kvc_policy(c, "none:rank=16,learned=on", 0, NULL, 0);

	cr_assert_gt(lr, 0);
	l.codec = (uint8_t)raw;
	for (unsigned i = 0; i < 8; i++) {
		struct kvc_key ki = { 0x2001, i };

		for (size_t j = 0; j < n; j++) /* finite f16 values */
			stg[j] = (unsigned char)(t_urand() * 256) & (j % 2 ? 0x3b : 0xff);
		cr_assert_eq(kvc_store(c, &ki, &l, 0), 0);
	}
	cr_assert_eq(kvc_calibrate(c, 0, 90, NULL), 1);
	l.codec = (uint8_t)lr;
	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(kvc_fetch(c, &k, 0, size, NULL), 0);
	memcpy(want, stg, n);
	cr_assert_eq(kill(D.pid, SIGKILL), 0);
	waitpid(D.pid, NULL, 0);
	D.pid = 0;
	start();
	cr_assert_eq(kvc_nop(c), -ECONNRESET);
	memset(stg, 0, n);
	cr_assert_eq(kvc_fetch(c, &k, 0, size, NULL), 0, "its basis came back");
	cr_assert_eq(memcmp(stg, want, n), 0, "the same bytes");
	cr_assert_eq(kvc_calibrate(c, 0, 90, NULL), 2, "versions go on");
	cr_assert_eq(t_daemon_stop(&D), 0);
	start();
	cr_assert_eq(kvc_nop(c), -ECONNRESET);
	cr_assert_eq(kvc_fetch(c, &k, 0, size, NULL), 0, "and after a clean stop");
	cr_assert_eq(memcmp(stg, want, n), 0);
	kvc_detach(c);
	free(want);
}
