/* it_remote.c - the remote tier on a real Redis Cluster (3 masters, 3 replicas, on loopback,
 * started and stopped here): two kvcd share blocks through it, evicted blocks spill there and
 * come back on a miss, values that are not kvcd's are rejected, a killed master fails its
 * slots fast until its replica takes over, and a cluster that is down at start is found
 * later; and AUTH with a user and password against one ACL-protected Redis. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <xxhash.h>

#include "t_util.h"

#define NODES 6

struct cluster {
	char dir[64];
	int port[NODES];
	pid_t pid[NODES];
};

static struct cluster C;
static struct t_daemon A, B, R; /* R reads from replicas */
static pid_t auth_redis;	/* the single Redis of the AUTH test */
static char auth_dir[64];

static bool port_free(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int s = socket(AF_INET, SOCK_STREAM, 0), ok;

	ok = bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(s);
	return ok;
}

static void node_start(struct cluster *c, int i)
{
	char conf[160];
	FILE *f;

	snprintf(conf, sizeof(conf), "%s/%d.conf", c->dir, c->port[i]);
	f = fopen(conf, "w");
	fprintf(f,
		"port %d\nbind 127.0.0.1\ncluster-enabled yes\ncluster-config-file nodes-%d.conf\n"
		"cluster-node-timeout 1000\ncluster-require-full-coverage no\nappendonly no\n"
		"save \"\"\ndir %s\nprotected-mode no\nlogfile %s/%d.log\n"
		"repl-diskless-sync-delay 0\n",
		c->port[i], c->port[i], c->dir, c->dir, c->port[i]);
	fclose(f);
	c->pid[i] = fork();
	if (c->pid[i] == 0) {
		execlp("redis-server", "redis-server", conf, (char *)NULL);
		_exit(127);
	}
}

/* Pick free ports (and their cluster bus ports, +10000), but start nothing yet. */
static void cluster_ports(struct cluster *c)
{
	strcpy(c->dir, "/tmp/kvcd-redis-XXXXXX");
	cr_assert_not_null(mkdtemp(c->dir));
	for (int i = 0, p = 20000 + (getpid() % 4000) * 2; i < NODES; p++)
		if (port_free(p) && port_free(p + 10000))
			c->port[i++] = p;
}

static void cluster_start(struct cluster *c)
{
	char cmd[1024], out[8192];
	int n = 0;

	for (int i = 0; i < NODES; i++)
		node_start(c, i);
	for (int i = 0; i < NODES; i++) {
		snprintf(cmd, sizeof(cmd), "redis-cli -p %d ping 2>/dev/null", c->port[i]);
		for (int t = 0; t < 200 && t_sh(out, sizeof(out), "%s", cmd); t++)
			t_sleep_ms(20);
	}
	n = snprintf(cmd, sizeof(cmd), "redis-cli --cluster create");
	for (int i = 0; i < NODES; i++)
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " 127.0.0.1:%d", c->port[i]);
	snprintf(cmd + n, sizeof(cmd) - (size_t)n, " --cluster-replicas 1 --cluster-yes 2>&1");
	cr_assert_eq(t_sh(out, sizeof(out), "%s", cmd), 0, "%s", out);
	for (int i = 0; i < NODES; i++) { /* every node agrees the cluster is up */
		snprintf(cmd, sizeof(cmd), "redis-cli -p %d cluster info", c->port[i]);
		for (int t = 0; t < 500; t++) {
			t_sh(out, sizeof(out), "%s", cmd);
			if (strstr(out, "cluster_state:ok"))
				break;
			t_sleep_ms(20);
		}
		cr_assert_not_null(strstr(out, "cluster_state:ok"), "node %d: %s", i, out);
	}
	for (int i = 0; i < NODES; i++) { /* every replica has its first copy: it may fail over */
		snprintf(cmd, sizeof(cmd), "redis-cli -p %d info replication", c->port[i]);
		for (int t = 0; t < 500; t++) {
			t_sh(out, sizeof(out), "%s", cmd);
			if (strstr(out, "role:master") || strstr(out, "master_link_status:up"))
				break;
			t_sleep_ms(20);
		}
		cr_assert(strstr(out, "role:master") || strstr(out, "master_link_status:up"), "%s",
			  out);
	}
}

static void cluster_stop(struct cluster *c)
{
	char cmd[128];

	for (int i = 0; i < NODES; i++)
		if (c->pid[i] > 0) {
			kill(c->pid[i], SIGKILL);
			waitpid(c->pid[i], NULL, 0);
			c->pid[i] = 0;
		}
	if (c->dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", c->dir);
		if (system(cmd))
			fprintf(stderr, "cleanup of %s failed\n", c->dir);
		c->dir[0] = '\0';
	}
}

static void cleanup(void)
{
	t_daemon_cleanup(&A);
	t_daemon_cleanup(&B);
	t_daemon_cleanup(&R);
	cluster_stop(&C);
	if (auth_redis > 0) {
		kill(auth_redis, SIGKILL);
		waitpid(auth_redis, NULL, 0);
		auth_redis = 0;
	}
	if (auth_dir[0]) {
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", auth_dir);
		if (system(cmd))
			fprintf(stderr, "cleanup of %s failed\n", auth_dir);
		auth_dir[0] = '\0';
	}
}

TestSuite(remote, .fini = cleanup, .timeout = 120);

/* kvcd with the [remote] section (and what follows it) @remote. */
static void kvcd_with(struct t_daemon *d, const char *pool, const char *remote)
{
	char conf[512];
	const char *args[] = { "--config", conf, "--pool-size", pool, NULL };
	FILE *f;

	memset(d, 0, sizeof(*d));
	t_daemon_dir(d, conf, sizeof(conf));
	f = fopen(conf, "w");
	fprintf(f, "%s", remote);
	fclose(f);
	cr_assert_eq(t_daemon_start_args(d, args), 0);
}

static void kvcd_on(struct t_daemon *d, const char *pool, const char *extra)
{
	char remote[512];

	snprintf(remote, sizeof(remote),
		 "[remote]\nredis = 127.0.0.1:%d,127.0.0.1:%d\nop_timeout_ms = 300\n%s", C.port[0],
		 C.port[1], extra);
	kvcd_with(d, pool, remote);
}

static struct kvc_stats *stats(const struct t_daemon *d)
{
	static struct kvc_stats st;
	kvc_client *c = t_attach(d, NULL, 4096);

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	return &st;
}

/* Wait until @d has put @n blocks in the cluster. */
static void wait_puts(const struct t_daemon *d, uint64_t n)
{
	for (int i = 0; i < 500 && stats(d)->remote.puts < n; i++)
		t_sleep_ms(10);
	cr_assert_geq(stats(d)->remote.puts, n);
}

static const struct kvc_layout L = {
	.dtype = KVC_F16, .layers = 4, .kv_heads = 4, .head_dim = 64, .tokens = 16
}; /* 64 KiB */

static struct kvc_key key(unsigned i)
{
	return (struct kvc_key){ 0xfeed, i };
}

/* Store blocks [from, to) in @c (bytes from their index). */
static void put_blocks(kvc_client *c, unsigned from, unsigned to)
{
	size_t size, n = kvc_layout_bytes(&L);
	unsigned char *stg = kvc_staging(c, &size);

	for (unsigned i = from; i < to; i++) {
		struct kvc_key k = key(i);

		t_fill(stg, n, i);
		cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	}
}

/* FETCH block @i from @c: 0 with its bytes checked, or the error. */
static int get_block(kvc_client *c, unsigned i)
{
	size_t size, n = kvc_layout_bytes(&L);
	unsigned char *stg = kvc_staging(c, &size), *want = malloc(n);
	struct kvc_key k = key(i);
	int r = kvc_fetch(c, &k, n, n, NULL);

	t_fill(want, n, i);
	if (!r)
		cr_assert_eq(memcmp(stg + n, want, n), 0, "block %u intact", i);
	free(want);
	return r;
}

Test(remote, shared_spilled_rejected_and_failed_over)
{
	struct kvc_key keys[32];
	size_t local, remote;
	char cmd[512], out[4096];

	cluster_ports(&C);
	cluster_start(&C);
	/* two kvcd on one cluster: what one stores (write-through), the other hits */
	kvcd_on(&A, "64M", "[namespace shared]\nremote = all\n");
	kvcd_on(&B, "64M", "[namespace shared]\nremote = all\n");
	kvc_client *a = t_attach(&A, "shared", 1u << 20), *b = t_attach(&B, "shared", 1u << 20);

	put_blocks(a, 0, 32);
	wait_puts(&A, 32);
	for (unsigned i = 0; i < 32; i++)
		keys[i] = key(i);
	cr_assert_eq(kvc_lookup_tiers(b, keys, 32, &local, &remote), 0);
	cr_assert_eq(local, 0);
	cr_assert_eq(remote, 32, "the chain is in the cluster: %zu", remote);
	cr_assert_eq(kvc_lookup_tiers(b, keys, 32, &local, &remote), 0);
	cr_assert_eq(local, 32, "and in B's pool now");
	for (unsigned i = 0; i < 32; i++)
		cr_assert_eq(get_block(b, i), 0);
	cr_assert_eq(stats(&B)->remote.hits, 32);
	cr_assert_eq(stats(&B)->remote.slots_ok, 16384);

	/* spill: a 16 MiB pool of a namespace that sends its evictions (the default) */
	kvc_detach(a);
	t_daemon_cleanup(&A);
	kvcd_on(&A, "16M", "");
	a = t_attach(&A, "spill", 1u << 20);
	put_blocks(a, 100, 400); /* 300 blocks of 64 KiB: about 19 MiB */
	cr_assert_gt(stats(&A)->evictions, 0);
	wait_puts(&A, stats(&A)->evictions);
	cr_assert_eq(get_block(a, 100), 0, "evicted, then fetched back from the cluster");
	cr_assert_geq(stats(&A)->remote.hits, 1);

	/* a value under kvcd's key that is not kvcd's is rejected, never served */
	snprintf(cmd, sizeof(cmd),
		 "redis-cli -c -p %d SET kvcd:%016llx:%016llx%016llx not-a-block >/dev/null",
		 C.port[0], (unsigned long long)XXH64("spill", 5, 0x6b766364), 0xfeedull, 999ull);
	cr_assert_eq(t_sh(out, sizeof(out), "%s", cmd), 0);
	cr_assert_eq(get_block(a, 999), -ENOENT);
	cr_assert_eq(stats(&A)->remote.rejected, 1);

	/* a master killed: its slots fail fast, local traffic is untouched, and once its
	 * replica is promoted every block comes back without restarting kvcd */
	kvc_client *c = t_attach(&B, "fresh", 1u << 20);

	kvc_detach(b);
	t_daemon_cleanup(&B);
	kvcd_on(&B, "64M", "[namespace shared]\nremote = all\n");
	b = t_attach(&B, "shared", 1u << 20);
	kvc_detach(c);
	/* slots move while B's map is stale: MOVED (and ASK during the move) are followed */
	char id0[64], id1[64];

	snprintf(cmd, sizeof(cmd), "redis-cli -p %d cluster myid", C.port[0]);
	cr_assert_eq(t_sh(id0, sizeof(id0), "%s", cmd), 0);
	snprintf(cmd, sizeof(cmd), "redis-cli -p %d cluster myid", C.port[1]);
	cr_assert_eq(t_sh(id1, sizeof(id1), "%s", cmd), 0);
	id0[strcspn(id0, "\n")] = id1[strcspn(id1, "\n")] = '\0';
	snprintf(cmd, sizeof(cmd),
		 "redis-cli --cluster reshard 127.0.0.1:%d --cluster-from %s --cluster-to %s "
		 "--cluster-slots 3000 --cluster-yes >/dev/null 2>&1",
		 C.port[0], id0, id1);
	cr_assert_eq(t_sh(out, sizeof(out), "%s", cmd), 0, "reshard");
	for (unsigned i = 0; i < 32; i++)
		cr_assert_eq(get_block(b, i), 0, "block %u found where it moved", i);
	kvc_detach(b);
	t_daemon_cleanup(&B);
	kvcd_on(&B, "64M", "[namespace shared]\nremote = all\n");
	b = t_attach(&B, "shared", 1u << 20);
	kvcd_on(&R, "64M", "read_replicas = yes\n[namespace shared]\nremote = all\n");
	kvc_client *rr = t_attach(&R, "shared", 1u << 20);

	t_sleep_ms(300); /* replication of the last SETs */
	kill(C.pid[0], SIGKILL);
	waitpid(C.pid[0], NULL, 0);
	C.pid[0] = 0;
	unsigned hits = 0;

	for (unsigned i = 0; i < 32; i++) {
		int r = get_block(b, i);

		cr_assert(r == 0 || r == -ENOENT, "block %u: %s (a miss, never a hang)", i,
			  kvc_strerror(r));
		hits += r == 0;
	}
	cr_assert_lt(hits, 32, "the dead master's blocks are misses for now");
	for (unsigned i = 0; i < 32; i++) /* read_replicas: the dead master's replica serves */
		cr_assert_eq(get_block(rr, i), 0, "block %u read from a replica", i);
	kvc_detach(rr);
	cr_assert_eq(t_daemon_stop(&R), 0);
	t_daemon_cleanup(&R);
	put_blocks(b, 200, 210); /* local traffic goes on */
	for (unsigned i = 200; i < 210; i++)
		cr_assert_eq(get_block(b, i), 0);
	for (int t = 0; t < 150 && hits < 32; t++) { /* failover: cluster-node-timeout 1 s */
		t_sleep_ms(100);
		hits = 0;
		for (unsigned i = 0; i < 32; i++)
			hits += get_block(b, i) == 0;
	}
	cr_assert_eq(hits, 32, "after the failover every block is a hit again");
	kvc_detach(a);
	kvc_detach(b);
	cr_assert_eq(t_daemon_stop(&A), 0);
	cr_assert_eq(t_daemon_stop(&B), 0);
}

Test(remote, cluster_down_at_start)
{
	cluster_ports(&C);
	kvcd_on(&A, "64M", "[namespace shared]\nremote = all\n"); /* nothing listens yet */
	kvc_client *a = t_attach(&A, "shared", 1u << 20);

	put_blocks(a, 0, 4); /* serves locally meanwhile */
	cr_assert_eq(get_block(a, 0), 0);
	cr_assert_eq(stats(&A)->remote.slots_ok, 0);
	cluster_start(&C);
	for (int t = 0; t < 300 && stats(&A)->remote.slots_ok < 16384; t++) {
		put_blocks(a, 10 + (unsigned)t, 11 + (unsigned)t); /* gives the thread work */
		t_sleep_ms(20);
	}
	cr_assert_eq(stats(&A)->remote.slots_ok, 16384, "found the cluster later");
	put_blocks(a, 1000, 1004);
	wait_puts(&A, 1);
	static char out[1 << 17];

	cr_assert_eq(t_kvcctl(&A, "stats --json", out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "\"slots_ok\": 16384"), "%s", out);
	cr_assert_eq(t_kvcctl(&A, "stats --prometheus", out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "\nkvcd_remote_slots_ok 16384\n"), "%s", out);
	kvc_detach(a);
	cr_assert_eq(t_daemon_stop(&A), 0);
}

/* One Redis (not a cluster) on a UNIX socket whose only user is "kvcd" with a password, as
 * Redis 6 ACLs make it: kvcd with that user and password puts and gets; with a wrong password
 * it is refused (says so), counts errors, and its misses stay misses. */
Test(remote, auth_user_and_password)
{
	char conf[256], sock[128], out[4096], remote[512];
	FILE *f;

	strcpy(auth_dir, "/tmp/kvcd-redis-auth-XXXXXX");
	cr_assert_not_null(mkdtemp(auth_dir));
	snprintf(sock, sizeof(sock), "%s/redis.sock", auth_dir);
	snprintf(conf, sizeof(conf), "%s/redis.conf", auth_dir);
	f = fopen(conf, "w");
	fprintf(f,
		"port 0\nunixsocket %s\nsave \"\"\nappendonly no\ndir %s\nlogfile %s/redis.log\n"
		"user default off\nuser kvcd on >s3cret ~kvcd:* +@all\n",
		sock, auth_dir, auth_dir);
	fclose(f);
	auth_redis = fork();
	if (auth_redis == 0) {
		execlp("redis-server", "redis-server", conf, (char *)NULL);
		_exit(127);
	}
	for (int t = 0; t < 200 && access(sock, F_OK); t++)
		t_sleep_ms(20);
	cr_assert_eq(access(sock, F_OK), 0, "redis-server listens on %s", sock);

	snprintf(remote, sizeof(remote),
		 "[remote]\nredis = unix:%s\nuser = kvcd\npassword = s3cret\n"
		 "[namespace shared]\nremote = all\n",
		 sock);
	kvcd_with(&A, "64M", remote);
	kvc_client *a = t_attach(&A, "shared", 1u << 20);

	put_blocks(a, 0, 4);
	wait_puts(&A, 4);
	cr_assert_eq(t_sh(out, sizeof(out),
			  "redis-cli -s %s --user kvcd --pass s3cret --no-auth-warning dbsize",
			  sock),
		     0);
	cr_assert_eq(atoi(out), 4, "the cluster holds the 4 blocks: %s", out);
	kvc_detach(a);

	/* the right user and password: another kvcd gets them */
	kvcd_with(&B, "64M", remote);
	kvc_client *b = t_attach(&B, "shared", 1u << 20);

	for (unsigned i = 0; i < 4; i++)
		cr_assert_eq(get_block(b, i), 0, "block %u through AUTH", i);
	kvc_detach(b);
	cr_assert_eq(t_daemon_stop(&B), 0);

	/* a wrong password: refused, counted, and a FETCH is a plain miss */
	snprintf(remote, sizeof(remote),
		 "[remote]\nredis = unix:%s\nuser = kvcd\npassword = wrong\n"
		 "[namespace shared]\nremote = all\n",
		 sock);
	kvcd_with(&R, "64M", remote);
	kvc_client *r = t_attach(&R, "shared", 1u << 20);

	cr_assert_eq(get_block(r, 0), -ENOENT);
	put_blocks(r, 100, 102);
	for (int t = 0; t < 200 && !stats(&R)->remote.errors; t++)
		t_sleep_ms(10);
	cr_assert_gt(stats(&R)->remote.errors, 0);
	cr_assert_eq(stats(&R)->remote.puts, 0);
	cr_assert_eq(stats(&R)->remote.hits, 0);
	kvc_detach(r);
	cr_assert_eq(t_daemon_stop(&R), 0);
	cr_assert_eq(t_sh(out, sizeof(out), "grep -c 'AUTH refused' %s", R.log), 0,
		     "the log says why: %s", out);
	cr_assert_eq(t_daemon_stop(&A), 0);
}

/* While a FETCH waits on the remote tier, sq.hint tells its client so (KVCP_HINT_LONG), and a
 * spinning client goes to sleep; the hint is gone once the answer is there. The cluster is
 * stopped (SIGSTOP), so the get waits out the tier's op_timeout_ms. */
Test(remote, a_fetch_waiting_on_the_remote_tier_says_so)
{
	struct kvcp_attach_req req = kvcp_raw_request("shared");
	struct kvcp_raw r;
	struct kvcp_sqe fetch = { .opcode = KVCP_OP_FETCH, .user_data = 77, .off = 0, .len = 4096 };
	struct kvcp_cqe cqe;
	char *base;
	int said = 0, popped = 0;

	cluster_ports(&C);
	cluster_start(&C);
	kvcd_on(&R, "16M", "[namespace shared]\nremote = all\n");
	req.flags = KVCP_ATTACH_F_PHASE;
	cr_assert_eq(kvcp_raw_attach(R.sock, &req, &r), 0);
	base = (char *)r.hdr;
	cr_assert_eq(kvcp_load_relaxed(&r.hdr->sq.hint), 0, "nothing in hand");
	for (int i = 0; i < NODES; i++)
		kill(C.pid[i], SIGSTOP);
	fetch.key = (struct kvcp_key){ 0xfeed, 999 };
	cr_assert_eq(kvcp_ring_push_phase(&r.hdr->sq, base + r.hdr->sq_off, r.hdr->sq_entries,
					  &r.sq_prod, &r.sq_cons_cache, &fetch, KVCP_SQE_PHASE_WORD,
					  KVCP_SQE_PHASE_BIT),
		     0);
	kvcp_fence();
	__atomic_fetch_add(&r.hdr->sq.futex, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &r.hdr->sq.futex, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0);
	for (int i = 0; i < 3000 && !popped; i++) {
		said |= kvcp_load_relaxed(&r.hdr->sq.hint) == KVCP_HINT_LONG;
		popped = kvcp_ring_pop_phase(&r.hdr->cq, base + r.hdr->cq_off, r.hdr->cq_entries,
					     &r.cq_cons, &cqe, KVCP_CQE_PHASE_WORD,
					     KVCP_CQE_PHASE_BIT) == 1;
		usleep(1000);
	}
	uint32_t after = kvcp_load_relaxed(&r.hdr->sq.hint);

	for (int i = 0; i < NODES; i++)
		kill(C.pid[i], SIGCONT);
	kvcp_raw_close(&r);
	cr_assert(popped, "answered once the tier gave up");
	cr_assert_eq(cqe.user_data, 77);
	cr_assert_lt(cqe.res, 0, "a miss");
	cr_assert(said, "sq.hint said the request takes long while it waited");
	cr_assert_eq(after, 0, "and not once it was answered");
	t_daemon_cleanup(&R);
	cluster_stop(&C);
}
