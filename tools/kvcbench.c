/* kvcbench - measure kvcd against the physical reference in the same run.
 *
 *   kvcbench [--socket PATH] nop [--count N] [--adaptive | --sleep] [--no-peers] [--json]
 *       NOP round trips; by default the client busy-polls. --adaptive: libkvcclient's
 *       default waits (spin or sleep, whichever its measure says pays). --sleep: the same,
 *       and the client sleeps a moment between requests, so each one finds the worker
 *       idle (the wake-up path). The socket server's client runs the same loop, pauses
 *       included (--no-peers: kvcd and the floor only). p50/p99/p99.9 in microseconds.
 *   kvcbench [--socket PATH] throughput [--block-size 2M] [--procs N] [--iters N]
 *            [--adaptive] [--json]
 *       Each process (a busy-polling client; --adaptive: default waits) STOREs a block,
 *       FETCHes it back and DELETEs it, N times; store and
 *       fetch bandwidth against memcpy of the same bytes between two buffers of the same
 *       size, measured in the same run.
 *       With --redis SOCK the same against Redis SET/GET, and (unless --no-peers) against
 *       the minimal socket server of peers.c; --procs N runs N client processes.
 *   kvcbench [--socket PATH] index [--blocks N] [--count N] [--pid PID] [--json]
 *       LOOKUP and STORE latency, and metadata bytes per block (kvcd's STATS and, with
 *       --pid, its RSS), at 1k, 10k, ... N blocks.
 *   kvcbench [--socket PATH] prefix --model FILE [--chunk N] [--chunks N] [--json]
 *       LOOKUP + FETCH of a prefix of N chunks of a real model against recomputing it.
 *   kvcbench [--socket PATH] select [--blocks N] [--policy P] [--heads Q] [--model FILE]
 *       SELECT over N blocks stored under a policy with a summary; with --model, recall of
 *       the chunk that matters on the model's own keys and queries.
 *
 *   kvcbench [--socket PATH] gpu [--block-size 32M] [--iters N] [--json]
 *       GPU staging through kvcd on CUDA device 0: FETCH into it and STORE from it, raw and
 *       int8 (encoded and decoded on the GPU), against the device's own H2D and D2H copies
 *       from pinned memory in the same run. Exits 3 without a device or GPU staging.
 *
 * Codec speed in-process, without a daemon, is kvccodec-bench's. kvcbench talks to kvcd
 * through kvc.h only; its gpu scenario loads the CUDA driver (daemon/gpu/rt.c) for the
 * reference copies and to put a block into GPU staging.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <kvc.h>
#include <xxhash.h>

#include "cli.h"
#include "llama.h"
#include "rt.h"
#include "peers.h"
#include "timing.h"
#include "workload.h"

static const char *g_sock;

static uint16_t f32_to_f16(float f)
{
	_Float16 h = (_Float16)f;
	uint16_t u;

	memcpy(&u, &h, sizeof(u));
	return u;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static int parse_size(const char *s, size_t *out)
{
	uint64_t v = 0;
	int err = cli_size("kvcbench", "size", s, &v);

	*out = (size_t)v;
	return err;
}

/* Attach to @sock in namespace @ns; NULL (and the reason in *@err) on failure. */
static kvc_client *attach_to(const char *sock, const char *ns, size_t staging, unsigned flags,
			     int *err)
{
	struct kvc_attach_opts o;
	kvc_client *c = NULL;

	kvc_attach_opts_init(&o);
	o.socket = sock;
	o.ns = ns;
	o.staging_size = staging;
	o.flags = flags;
	*err = kvc_attach(&o, &c);
	return *err ? NULL : c;
}

/* Attach to the benchmarked kvcd, or exit saying why. */
static kvc_client *attach(size_t staging, unsigned flags)
{
	int err;
	kvc_client *c = attach_to(g_sock, "kvcbench", staging, flags, &err);

	if (!c) {
		cli_attach_error("kvcbench", g_sock, "kvcbench", err);
		exit(1);
	}
	return c;
}

struct lat {
	double p50, p99, p999, mean, max; /* microseconds */
};

/* How a NOP client waits: kvcbench nop's default, --sleep, --adaptive. */
enum {
	NOP_BUSY,
	NOP_SLEEP,
	NOP_ADAPTIVE
};
static const char *const nop_mode_name[] = { "busy-poll", "sleep", "adaptive" };

static void lat_summary(uint64_t *lat, unsigned long count, uint64_t sum, struct lat *out)
{
	qsort(lat, count, sizeof(*lat), cmp_u64);
	*out = (struct lat){ lat[count / 2] / 1e3, lat[count * 99 / 100] / 1e3,
			     lat[count * 999 / 1000] / 1e3, (double)sum / count / 1e3,
			     lat[count - 1] / 1e3 };
}

/* Round trips of one client: kvcd NOP when @ops is NULL, else the peer's no-op. */
static int nop_run(const struct peer_ops *ops, const char *addr, unsigned long count, int mode,
		   struct lat *out)
{
	kvc_client *c = NULL;
	struct peer *p = NULL;
	uint64_t *lat = malloc(count * sizeof(*lat)), sum = 0;
	int err = 0;

	if (!lat)
		return -ENOMEM;
	if (ops)
		p = ops->open(addr, 0);
	else
		c = attach(4096, mode == NOP_BUSY ? KVC_ATTACH_BUSY_POLL : 0);
	if (ops && !p) {
		free(lat);
		return -ECONNREFUSED;
	}
	for (unsigned long i = 0; i < count / 10 + 100 && !err; i++) /* warm-up */
		err = ops ? ops->nop(p) : kvc_nop(c);
	for (unsigned long i = 0; i < count && !err; i++) {
		uint64_t t0 = now_ns();

		err = ops ? ops->nop(p) : kvc_nop(c);
		lat[i] = now_ns() - t0;
		sum += lat[i];
		if (mode == NOP_SLEEP)
			usleep(0); /* let the worker go idle: measures the wake path */
	}
	if (!err)
		lat_summary(lat, count, sum, out);
	else
		fprintf(stderr, "kvcbench: nop on %s: %s\n", ops ? ops->name : "kvcd",
			kvc_strerror(err));
	free(lat);
	if (ops)
		ops->close(p);
	else
		kvc_detach(c);
	return err;
}

static void lat_json(const char *name, const struct lat *l, int comma)
{
	printf("\"%s\": {\"p50_us\": %.3f, \"p99_us\": %.3f, \"p999_us\": %.3f, \"mean_us\": %.3f, "
	       "\"max_us\": %.3f}%s",
	       name, l->p50, l->p99, l->p999, l->mean, l->max, comma ? ", " : "");
}

/* --burn N: N processes that only burn CPU, beside whatever is measured (a loaded machine). */
static pid_t g_burners[64];
static unsigned g_nburners;

static void burners_stop(void)
{
	for (unsigned i = 0; i < g_nburners; i++) {
		kill(g_burners[i], SIGKILL);
		waitpid(g_burners[i], NULL, 0);
	}
	g_nburners = 0;
}

static void burners_start(unsigned n)
{
	pid_t parent = getpid();

	for (g_nburners = 0; g_nburners < n && g_nburners < 64; g_nburners++) {
		g_burners[g_nburners] = fork();
		if (g_burners[g_nburners] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(0);
			for (volatile uint64_t x = 0;; x++)
				;
		}
	}
	atexit(burners_stop);
}

/* The floor under any shared-memory round trip: two threads passing a counter back and forth
 * through one cache line, each spinning on it. */
struct pingpong {
	_Alignas(64) volatile uint64_t word;
	unsigned long count;
};

static void *pong(void *arg)
{
	struct pingpong *pp = arg;

	for (uint64_t i = 1; i <= 2 * (pp->count + pp->count / 10 + 100); i += 2) {
		while (__atomic_load_n(&pp->word, __ATOMIC_ACQUIRE) != i)
			__builtin_ia32_pause();
		__atomic_store_n(&pp->word, i + 1, __ATOMIC_RELEASE);
	}
	return NULL;
}

static int pingpong_run(unsigned long count, struct lat *out)
{
	static struct pingpong pp;
	uint64_t *lat = malloc(count * sizeof(*lat)), sum = 0, v = 0;
	unsigned long warm = count / 10 + 100;
	pthread_t t;

	if (!lat)
		return -ENOMEM;
	pp.word = 0;
	pp.count = count;
	if (pthread_create(&t, NULL, pong, &pp)) {
		free(lat);
		return -EAGAIN;
	}
	for (unsigned long i = 0; i < warm + count; i++) {
		uint64_t t0 = now_ns();

		__atomic_store_n(&pp.word, ++v, __ATOMIC_RELEASE);
		++v;
		while (__atomic_load_n(&pp.word, __ATOMIC_ACQUIRE) != v)
			__builtin_ia32_pause();
		if (i >= warm) {
			lat[i - warm] = now_ns() - t0;
			sum += lat[i - warm];
		}
	}
	pthread_join(t, NULL);
	lat_summary(lat, count, sum, out);
	free(lat);
	return 0;
}

/* NOP round trips on kvcd, then the same count of no-ops on each peer (the minimal socket
 * server always, Redis PING when @redis names its socket), and the cache-line floor. */
static int bench_nop(unsigned long count, int mode, const char *redis, int peers, int json)
{
	char path[64];
	struct lat k, sk, rd, fl;
	pid_t srv;
	int err, have_redis = 0;

	err = nop_run(NULL, NULL, count, mode, &k);
	if (!err)
		err = pingpong_run(count, &fl);
	if (err)
		return 1;
	if (!peers) { /* kvcd and the floor only */
		if (json)
			printf("{\"mode\": \"%s\", \"count\": %lu, \"p50_us\": %.3f, \"p99_us\": %.3f, "
			       "\"p999_us\": %.3f, \"mean_us\": %.3f, \"max_us\": %.3f, "
			       "\"p50_over_floor\": %.2f}\n",
			       nop_mode_name[mode], count, k.p50, k.p99, k.p999, k.mean, k.max,
			       k.p50 / fl.p50);
		else
			printf("nop %s: %lu round trips, p50 %.2f us, p99 %.2f us, mean %.2f us "
			       "(p50 %.2fx the floor)\n",
			       nop_mode_name[mode], count, k.p50, k.p99, k.mean, k.p50 / fl.p50);
		return 0;
	}
	snprintf(path, sizeof(path), "/tmp/kvcbench-sock-%d", (int)getpid());
	srv = peer_sock_start(path);
	if (srv < 0) {
		fprintf(stderr, "kvcbench: socket server: %s\n", strerror((int)-srv));
		return 1;
	}
	err = nop_run(&peer_sock, path, count, mode, &sk);
	peer_sock_stop(srv);
	unlink(path);
	if (!err && redis) {
		err = nop_run(&peer_redis, redis, count, mode, &rd);
		have_redis = !err;
	}
	if (err)
		return 1;
	if (json) {
		/* kvcd's figures at the top level (what scripts read), the peers' inside */
		printf("{\"mode\": \"%s\", \"count\": %lu, \"p50_us\": %.3f, \"p99_us\": %.3f, "
		       "\"p999_us\": %.3f, \"mean_us\": %.3f, \"max_us\": %.3f, ",
		       nop_mode_name[mode], count, k.p50, k.p99, k.p999, k.mean, k.max);
		lat_json("socket", &sk, 1);
		if (have_redis)
			lat_json("redis", &rd, 1);
		lat_json("cacheline_floor", &fl, 1);
		printf("\"p50_over_floor\": %.2f, ", k.p50 / fl.p50);
		printf("\"p50_socket_over_kvcd\": %.2f", sk.p50 / k.p50);
		if (have_redis)
			printf(", \"p50_redis_over_kvcd\": %.2f", rd.p50 / k.p50);
		printf("}\n");
		return 0;
	}
	printf("nop %s: %lu round trips, p50 %.2f us, p99 %.2f us, p99.9 %.2f us, mean %.2f us\n",
	       nop_mode_name[mode], count, k.p50, k.p99, k.p999, k.mean);
	printf("  cache-line ping-pong (the floor): p50 %.3f us, p99 %.3f us (kvcd p50 %.2fx it)\n",
	       fl.p50, fl.p99, k.p50 / fl.p50);
	printf("  socket server: p50 %.2f us, p99 %.2f us, p99.9 %.2f us (p50 %.1fx kvcd)\n",
	       sk.p50, sk.p99, sk.p999, sk.p50 / k.p50);
	if (have_redis)
		printf("  redis PING:    p50 %.2f us, p99 %.2f us, p99.9 %.2f us (p50 %.1fx kvcd)\n",
		       rd.p50, rd.p99, rd.p999, rd.p50 / k.p50);
	return 0;
}

struct tp_result {
	uint64_t store_ns, fetch_ns, bytes;
	int err;
};

static void fill(unsigned char *b, size_t n, unsigned id)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(i * 131 + id);
}

/* kvcd: the engine's block is in staging already (that is where it writes it). */
static void tp_worker(size_t bs, unsigned long iters, unsigned id, unsigned flags,
		      struct tp_result *r)
{
	kvc_client *c = attach(2 * bs, flags);
	size_t ssz;
	unsigned char *stg = kvc_staging(c, &ssz);
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64 };
	struct kvc_layout got;

	l.tokens = (uint32_t)(bs / (2 * 2 * 64));
	memset(r, 0, sizeof(*r));
	fill(stg, bs, id);
	for (unsigned long i = 0; i < iters && !r->err; i++) {
		struct kvc_key k = { id + 1, i + 1 };
		uint64_t t0 = now_ns(), t1, t2;

		r->err = kvc_store(c, &k, &l, 0);
		t1 = now_ns();
		if (!r->err)
			r->err = kvc_fetch(c, &k, bs, bs, &got);
		t2 = now_ns();
		if (!r->err)
			r->err = kvc_delete(c, &k);
		r->store_ns += t1 - t0;
		r->fetch_ns += t2 - t1;
		r->bytes += bs;
	}
	if (!r->err && memcmp(stg, stg + bs, bs))
		r->err = -EIO;
	kvc_detach(c);
}

/* A peer: SET from the engine's buffer, GET (bytes left in the client library's buffer),
 * DEL; the last GET is checked byte for byte. */
static void peer_worker(const struct peer_ops *ops, const char *addr, size_t bs,
			unsigned long iters, unsigned id, struct tp_result *r)
{
	unsigned char *buf = malloc(bs);
	struct peer *p = ops->open(addr, bs);
	const void *got = NULL;

	memset(r, 0, sizeof(*r));
	if (!buf || !p) {
		r->err = -ECONNREFUSED;
		goto out;
	}
	fill(buf, bs, id);
	for (unsigned long i = 0; i < iters && !r->err; i++) {
		uint64_t key = ((uint64_t)id << 32) | i, t0 = now_ns(), t1, t2;

		r->err = ops->set(p, key, buf, bs);
		t1 = now_ns();
		if (!r->err)
			r->err = ops->get(p, key, bs, &got);
		t2 = now_ns();
		if (!r->err && i + 1 == iters && memcmp(buf, got, bs))
			r->err = -EIO;
		if (!r->err)
			r->err = ops->del(p, key);
		r->store_ns += t1 - t0;
		r->fetch_ns += t2 - t1;
		r->bytes += bs;
	}
out:
	if (p)
		ops->close(p);
	free(buf);
}

struct tp_sum {
	double store, fetch, both; /* GB/s, per-process bandwidth summed over processes */
};

/* How throughput's kvcd clients attach: busy-polling, or (--adaptive) libkvcclient's default. */
static unsigned g_tp_flags = KVC_ATTACH_BUSY_POLL;

/* @procs processes each move @iters blocks of @bs through kvcd (@ops NULL) or a peer. */
static int tp_run(const struct peer_ops *ops, const char *addr, size_t bs, unsigned procs,
		  unsigned long iters, struct tp_sum *out)
{
	struct tp_result *res = mmap(NULL, procs * sizeof(*res), PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t store = 0, fetch = 0, bytes = 0;
	int err = 0;

	if (res == MAP_FAILED)
		return -ENOMEM;
	pid_t pids[256];

	for (unsigned p = 0; p < procs; p++) {
		pids[p] = fork();
		if (pids[p] == 0) {
			if (ops)
				peer_worker(ops, addr, bs, iters, p, &res[p]);
			else
				tp_worker(bs, iters, p, g_tp_flags, &res[p]);
			_exit(0);
		}
		if (pids[p] < 0)
			err = -errno;
	}
	for (unsigned p = 0; p < procs; p++) { /* only ours: the socket server is a child too */
		int st;

		if (pids[p] > 0 &&
		    (waitpid(pids[p], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)))
			err = -ECHILD;
	}
	for (unsigned p = 0; p < procs; p++) {
		store += res[p].store_ns;
		fetch += res[p].fetch_ns;
		bytes += res[p].bytes;
		if (res[p].err)
			err = res[p].err;
	}
	munmap(res, procs * sizeof(*res));
	if (!err && (!store || !fetch))
		err = -ECHILD;
	if (err) {
		fprintf(stderr, "kvcbench: throughput on %s: %s\n", ops ? ops->name : "kvcd",
			kvc_strerror(err));
		return err;
	}
	out->store = (double)bytes / ((double)store / procs);
	out->fetch = (double)bytes / ((double)fetch / procs);
	out->both = 2.0 * bytes / ((double)(store + fetch) / procs);
	return 0;
}

/* STORE+FETCH on kvcd against memcpy of the same bytes, the minimal socket server and (with
 * @redis) Redis SET+GET, all in this run. */
static int bench_throughput(size_t bs, unsigned procs, unsigned long iters, const char *redis,
			    int peers, int json)
{
	struct tp_sum k, sk = { 0 }, rd = { 0 };
	char path[64];
	double mc;
	pid_t srv;
	int err;

	if (bs < 256 || bs % 256) {
		fprintf(stderr, "kvcbench: block size must be a multiple of 256 bytes\n");
		return 2;
	}
	mc = memcpy_gbps(bs, iters);
	if (tp_run(NULL, NULL, bs, procs, iters, &k))
		return 1;
	if (peers) {
		snprintf(path, sizeof(path), "/tmp/kvcbench-sock-%d", (int)getpid());
		srv = peer_sock_start(path);
		if (srv < 0)
			return 1;
		err = tp_run(&peer_sock, path, bs, procs, iters, &sk);
		peer_sock_stop(srv);
		unlink(path);
		if (err || (redis && tp_run(&peer_redis, redis, bs, procs, iters, &rd)))
			return 1;
	}
	if (json) {
		printf("{\"block_size\": %zu, \"procs\": %u, \"iters\": %lu, \"client\": \"%s\", "
		       "\"store_gbps\": %.3f, \"fetch_gbps\": %.3f, \"store_fetch_gbps\": %.3f, "
		       "\"memcpy_gbps\": %.3f, \"ratio_vs_memcpy\": %.3f",
		       bs, procs, iters, g_tp_flags ? "busy-poll" : "adaptive", k.store, k.fetch,
		       k.both, mc, k.both / mc);
		if (peers)
			printf(", \"socket\": {\"store_gbps\": %.3f, \"fetch_gbps\": %.3f, "
			       "\"store_fetch_gbps\": %.3f}, \"ratio_vs_socket\": %.3f",
			       sk.store, sk.fetch, sk.both, k.both / sk.both);
		if (peers && redis)
			printf(", \"redis\": {\"store_gbps\": %.3f, \"fetch_gbps\": %.3f, "
			       "\"store_fetch_gbps\": %.3f}, \"ratio_vs_redis\": %.3f",
			       rd.store, rd.fetch, rd.both, k.both / rd.both);
		printf("}\n");
		return 0;
	}
	printf("throughput %zu B x %lu x %u procs: store %.2f GB/s, fetch %.2f GB/s, "
	       "store+fetch %.2f GB/s, memcpy %.2f GB/s (%.0f%%)\n",
	       bs, iters, procs, k.store, k.fetch, k.both, mc, 100 * k.both / mc);
	if (peers)
		printf("  socket server: set %.2f GB/s, get %.2f GB/s, set+get %.2f GB/s "
		       "(kvcd %.1fx)\n",
		       sk.store, sk.fetch, sk.both, k.both / sk.both);
	if (peers && redis)
		printf("  redis:         set %.2f GB/s, get %.2f GB/s, set+get %.2f GB/s "
		       "(kvcd %.1fx)\n",
		       rd.store, rd.fetch, rd.both, k.both / rd.both);
	return 0;
}

/* ---- index: LOOKUP and STORE cost as the index grows ------------------------------------------ */

static struct kvc_key index_key(uint64_t i)
{
	return (struct kvc_key){ i * 0x9e3779b97f4a7c15ull + 1, i ^ 0x5bd1e995ull };
}

/* Resident set of @pid in bytes, or 0 when it cannot be read. */
static uint64_t rss_of(pid_t pid)
{
	char path[64], line[256];
	unsigned long long kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

/* Fill the index with 256-byte blocks up to 1k, 10k, 100k, 1M ... @max blocks; at each size
 * time LOOKUP of one random stored key and STORE of a new one (p50/p99 over @samples), and
 * read metadata bytes per block from STATS and, with @pid, the daemon's RSS growth per
 * block. Deletes everything it stored. */
static int bench_index(unsigned long max, unsigned long samples, pid_t pid, int json)
{
	kvc_client *c = attach(1 << 20, KVC_ATTACH_BUSY_POLL);
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 1
	};
	uint64_t *lat = malloc(samples * sizeof(*lat)), rss0 = pid ? rss_of(pid) : 0, rng = 1;
	unsigned long n = 0;
	struct kvc_stats *st = malloc(sizeof(*st));
	int err = 0, first = 1;

	if (!lat || !st)
		return 1;
	memset(kvc_staging(c, NULL), 7, 256);
	if (json)
		printf("{\"block_bytes\": 256, \"points\": [");
	for (unsigned long target = 1000; target <= max && !err; target *= 10) {
		struct lat lk, ls;
		uint64_t sum = 0;

		for (; n < target && !err; n++) {
			struct kvc_key k = index_key(n);

			err = kvc_store(c, &k, &l, 0);
		}
		for (unsigned long i = 0; i < samples && !err; i++) {
			struct kvc_key k;
			size_t hits = 0;
			uint64_t t0;

			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			k = index_key((rng >> 33) % n);
			t0 = now_ns();
			err = kvc_lookup(c, &k, 1, &hits);
			lat[i] = now_ns() - t0;
			sum += lat[i];
			if (!err && hits != 1)
				err = -ENOENT;
		}
		if (!err)
			lat_summary(lat, samples, sum, &lk);
		sum = 0;
		for (unsigned long i = 0; i < samples && !err;
		     i++) { /* new blocks, deleted after */
			struct kvc_key k = index_key(n + i);
			uint64_t t0 = now_ns();

			err = kvc_store(c, &k, &l, 0);
			lat[i] = now_ns() - t0;
			sum += lat[i];
		}
		for (unsigned long i = 0; i < samples && !err; i++) {
			struct kvc_key k = index_key(n + i);

			err = kvc_delete(c, &k);
		}
		if (!err)
			lat_summary(lat, samples, sum, &ls);
		if (!err)
			err = kvc_stats(c, st, sizeof(*st));
		if (err)
			break;
		double meta = (double)st->metadata_bytes / st->blocks,
		       rss = pid ? ((double)rss_of(pid) - (double)rss0) / n : 0,
		       pool = (double)st->bytes_used / st->blocks;

		if (json)
			printf("%s{\"blocks\": %lu, \"lookup_p50_us\": %.3f, \"lookup_p99_us\": %.3f, "
			       "\"store_p50_us\": %.3f, \"store_p99_us\": %.3f, "
			       "\"metadata_bytes_per_block\": %.1f, \"rss_growth_bytes_per_block\": "
			       "%.1f, \"pool_bytes_per_block\": %.1f}",
			       first ? "" : ", ", n, lk.p50, lk.p99, ls.p50, ls.p99, meta, rss,
			       pool);
		else
			printf("%8lu blocks: lookup p50 %.2f us p99 %.2f us, store p50 %.2f us p99 "
			       "%.2f us; metadata %.1f B/block, daemon RSS +%.1f B/block, pool %.1f "
			       "B/block\n",
			       n, lk.p50, lk.p99, ls.p50, ls.p99, meta, rss, pool);
		first = 0;
	}
	if (json && !err)
		printf("]}\n");
	for (unsigned long i = 0; i < n; i++) {
		struct kvc_key k = index_key(i);
		int e = kvc_delete(c, &k);

		if (e && e != -ENOENT && !err)
			err = e;
	}
	if (err)
		fprintf(stderr, "kvcbench: index at %lu blocks: %s\n", n, kvc_strerror(err));
	free(lat);
	free(st);
	kvc_detach(c);
	return err ? 1 : 0;
}

/* ---- prefix: the hit path against recomputing the prefix ------------------------------------- */

/* A prompt of @chunks chunks: recompute it with the model (the cost a hit saves), store it,
 * then time LOOKUP of the whole chain and LOOKUP + FETCH of every hit into a fresh KV cache,
 * as kvc-llama does on a hit. p50 over @reps. */
static int bench_prefix(const char *model, unsigned chunk, unsigned chunks, unsigned reps, int json)
{
	struct llm m;
	struct llm_state s;
	struct llm_kvc k = { .chunk = chunk };
	const char *why = NULL;
	size_t n = (size_t)chunk * chunks;
	int32_t *tok = NULL;
	uint64_t *tc = malloc(reps * sizeof(*tc)), *tl = malloc(reps * sizeof(*tl)),
		 *th = malloc(reps * sizeof(*th)), rng = 42;
	struct kvc_key *keys = malloc(chunks * sizeof(*keys));
	int err = llm_load(model, &m, &why);

	if (err) {
		fprintf(stderr, "kvcbench: model %s: %s\n", model, why ? why : strerror(-err));
		return 1;
	}
	if (!tc || !tl || !th || !keys || n > (size_t)m.c.seq_len ||
	    llm_state_init(&m, &s, KVC_F16)) {
		fprintf(stderr, "kvcbench: prefix: %zu tokens do not fit this model (seq_len %d)\n",
			n, m.c.seq_len);
		return 2;
	}
	tok = malloc(n * sizeof(*tok));
	for (size_t i = 0; tok && i < n; i++) { /* random ids: the cost does not depend on them */
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		tok[i] = i ? (int32_t)((rng >> 33) % (uint64_t)m.c.vocab) : 1;
	}
	k.c = attach(1 << 20, KVC_ATTACH_BUSY_POLL);
	llm_kvc_keyns(&m, KVC_F16, "kvcbench", &k);
	err = tok ? kvc_key_chain_all(k.keyns, tok, n, chunk, keys, chunks) : -ENOMEM;
	for (unsigned r = 0; r < reps && err >= 0; r++) {
		uint64_t t0 = now_ns();

		for (size_t i = 0; i < n; i++)
			llm_forward(&m, &s, tok[i], (int)i);
		tc[r] = now_ns() - t0;
	}
	if (err >= 0)
		err = llm_kvc_save(&m, &s, &k, tok, 0, chunks);
	for (unsigned r = 0; r < reps && err >= 0; r++) {
		size_t hits = 0;
		uint64_t t0 = now_ns();

		err = kvc_lookup(k.c, keys, chunks, &hits);
		tl[r] = now_ns() - t0;
		if (err >= 0 && hits != chunks)
			err = -ENOENT;
		t0 = now_ns();
		if (err >= 0)
			err = llm_kvc_restore(&m, &s, &k, tok, n, n);
		th[r] = now_ns() - t0;
		if (err >= 0 && (size_t)err != n)
			err = -ENOENT;
	}
	for (unsigned i = 0; i < chunks; i++)
		kvc_delete(k.c, &keys[i]);
	if (err < 0) {
		fprintf(stderr, "kvcbench: prefix: %s\n", kvc_strerror(err));
	} else {
		qsort(tc, reps, sizeof(*tc), cmp_u64);
		qsort(tl, reps, sizeof(*tl), cmp_u64);
		qsort(th, reps, sizeof(*th), cmp_u64);
		double c50 = tc[reps / 2] / 1e3, l50 = tl[reps / 2] / 1e3, h50 = th[reps / 2] / 1e3;

		if (json)
			printf("{\"tokens\": %zu, \"chunks\": %u, \"chunk\": %u, \"block_bytes\": %llu, "
			       "\"recompute_p50_us\": %.1f, \"lookup_p50_us\": %.2f, "
			       "\"lookup_fetch_p50_us\": %.1f, \"recompute_over_hit\": %.1f}\n",
			       n, chunks, chunk,
			       (unsigned long long)(k.bytes_fetched / reps / chunks), c50, l50, h50,
			       c50 / h50);
		else
			printf("prefix of %zu tokens (%u chunks of %u): recompute p50 %.1f us; LOOKUP "
			       "p50 %.2f us; LOOKUP + FETCH into the cache p50 %.1f us (%.1fx faster)\n",
			       n, chunks, chunk, c50, l50, h50, c50 / h50);
	}
	kvc_detach(k.c);
	llm_state_free(&s);
	llm_free(&m);
	free(tok);
	free(tc);
	free(tl);
	free(th);
	free(keys);
	return err < 0 ? 1 : 0;
}

/* ---- select: Quest retrieval over many blocks --------------------------------------------- */

static struct kvc_key select_key(unsigned long i)
{
	struct kvc_key k = { 0x5e1ec7ull, i };

	return k;
}

/* Timing: @nblocks blocks of one layer, 8 KV heads x 128, 16 tokens of random keys, stored with
 * bounds; SELECT of the top 16 for @qheads query heads over all of them, p50 over @reps. */
/* @per_block: pool bytes each block takes, its summary included (kvcd's own STATS). */
static int select_timing(kvc_client *c, unsigned long nblocks, unsigned reps, int slot,
			 unsigned qheads, double *p50, double *p99, double *per_block)
{
	struct kvc_layout l = { .dtype = KVC_F16,
				.codec = (uint8_t)slot,
				.layers = 1,
				.kv_heads = 8,
				.head_dim = 128,
				.tokens = 16 };
	size_t bytes = kvc_layout_bytes(&l);
	uint16_t *stg = kvc_staging(c, NULL);
	struct kvc_key *keys = malloc(nblocks * sizeof(*keys));
	struct kvc_select_hit hits[16];
	float q[64 * 128];
	uint64_t *t = malloc(reps * sizeof(*t)), rng = 7, used0, blocks0;
	struct kvc_stats st = { 0 };
	int err = keys && t ? kvc_stats(c, &st, sizeof(st)) : -ENOMEM;

	used0 = st.bytes_used; /* a pool too small for them all evicts: count what stays */
	blocks0 = st.blocks;
	for (unsigned long b = 0; b < nblocks && !err; b++) {
		for (size_t i = 0; i < bytes / 2; i++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			stg[i] = f32_to_f16((float)((int64_t)(rng >> 40) - (1 << 23)) / (1 << 22));
		}
		keys[b] = select_key(b);
		err = kvc_store(c, &keys[b], &l, 0);
	}
	if (!err && !(err = kvc_stats(c, &st, sizeof(st))))
		*per_block = st.blocks > blocks0 ? (double)(st.bytes_used - used0) /
							   (double)(st.blocks - blocks0)
						 : 0;
	for (unsigned i = 0; i < qheads * 128; i++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		q[i] = (float)((int64_t)(rng >> 40) - (1 << 23)) / (1 << 22);
	}
	for (unsigned r = 0; r < reps && !err; r++) {
		uint64_t t0 = now_ns();
		int n = kvc_select(c, keys, nblocks, 0, q, qheads, 128, 16, hits);

		t[r] = now_ns() - t0;
		err = n < 0 ? n : n != 16 ? -ENOENT : 0;
	}
	for (unsigned long b = 0; keys && b < nblocks; b++)
		kvc_delete(c, &keys[b]);
	if (!err) {
		qsort(t, reps, sizeof(*t), cmp_u64);
		*p50 = t[reps / 2] / 1e3;
		*p99 = t[reps - 1 - reps / 100] / 1e3;
	}
	free(keys);
	free(t);
	return err;
}

/* Recall on real keys: the model's KV of a sampled sequence in chunks of @chunk tokens, stored
 * with bounds; at random positions and layers, the model's own queries there SELECT the top
 * 8 of the chunks before them. @recall: how often the chunk holding the largest true
 * q.k / sqrt(d) (over the query heads and the chunk's keys) is first, in the top 4, the top 8. */
static int select_recall(kvc_client *c, const char *model, unsigned chunk, unsigned trials,
			 int slot, double recall[3], unsigned *cands)
{
	struct llm m;
	struct llm_state s;
	struct llm_kvc e = { .c = c, .chunk = chunk, .codec = (uint8_t)slot };
	const char *why = NULL;
	int err = llm_load(model, &m, &why), ok[3] = { 0 };
	uint64_t rng = 99;
	const unsigned k = 8;

	if (err) {
		fprintf(stderr, "kvcbench: model %s: %s\n", model, why ? why : strerror(-err));
		return err;
	}
	const struct llm_config *cf = &m.c;
	unsigned nchunks = (unsigned)cf->seq_len / chunk, hd = (unsigned)cf->head_dim;
	int32_t *tok = malloc((size_t)cf->seq_len * 4);
	struct kvc_key *keys = malloc(nchunks * sizeof(*keys));
	struct kvc_select_hit *hits = malloc(k * sizeof(*hits));

	if (!tok || !keys || !hits || llm_state_init(&m, &s, KVC_F16))
		return -ENOMEM;
	tok[0] = 1;
	for (int p = 0; p + 1 < cf->seq_len; p++) {
		llm_forward(&m, &s, tok[p], p);
		tok[p + 1] = llm_sample(s.logits, cf->vocab, 0.8f, &rng);
	}
	llm_forward(&m, &s, tok[cf->seq_len - 1], cf->seq_len - 1);
	llm_kvc_keyns(&m, KVC_F16, "kvcbench-select", &e);
	err = kvc_key_chain_all(e.keyns, tok, (size_t)nchunks * chunk, chunk, keys, nchunks);
	if (err >= 0)
		err = llm_kvc_save(&m, &s, &e, tok, 0, nchunks);
	*cands = 0;
	for (unsigned tr = 0; tr < trials && err >= 0; tr++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		unsigned layer = (unsigned)(rng >> 33) % (unsigned)cf->layers;
		unsigned pos = cf->seq_len / 2 + (unsigned)(rng >> 40) % (cf->seq_len / 2);
		unsigned n = pos / chunk, best = 0; /* the chunks wholly before pos */
		const float *q = s.qs + ((size_t)pos * cf->layers + layer) * cf->dim;
		double top = -INFINITY;
		int rep = cf->heads / cf->kv_heads, got;

		if (n < k) { /* a window of candidates large enough to choose from */
			tr--;
			continue;
		}

		for (unsigned b = 0; b < n; b++)
			for (unsigned t = b * chunk; t < (b + 1) * chunk; t++)
				for (int h = 0; h < cf->heads; h++) {
					const float *kk = s.kc +
							  ((size_t)layer * cf->seq_len + t) *
								  cf->kv_dim +
							  (size_t)(h / rep) * hd;
					double dot = 0;

					for (unsigned i = 0; i < hd; i++)
						dot += (double)q[h * hd + i] * kk[i];
					if (dot > top) {
						top = dot;
						best = b;
					}
				}
		got = kvc_select(c, keys, n, layer, q, (uint32_t)cf->heads, hd, k < n ? k : n,
				 hits);
		if (got < 0) {
			err = got;
			break;
		}
		for (int i = 0; i < got; i++)
			if (hits[i].index == best)
				for (int j = 0; j < 3; j++)
					ok[j] += i < (j == 0 ? 1 : j == 1 ? 4 : 8);
		*cands += n;
	}
	for (unsigned i = 0; i < nchunks; i++)
		kvc_delete(c, &keys[i]);
	for (int j = 0; j < 3; j++)
		recall[j] = (double)ok[j] / trials;
	*cands /= trials;
	llm_state_free(&s);
	llm_free(&m);
	free(tok);
	free(keys);
	free(hits);
	return err < 0 ? err : 0;
}

static int bench_select(unsigned long nblocks, unsigned reps, const char *model, const char *policy,
			unsigned qheads, int json)
{
	kvc_client *c = attach(1 << 20, KVC_ATTACH_BUSY_POLL);
	char why[128];
	int slot = kvc_policy(c, policy ? policy : "none:summary=quest", 0, why, sizeof(why)), err;
	double p50 = 0, p99 = 0, recall[3] = { -1, -1, -1 };
	unsigned cands = 0;
	const char *canon = policy ? policy : "none:summary=quest";
	double per_block = 0;

	if (slot < 0) {
		fprintf(stderr, "kvcbench: select: policy: %s\n", why);
		return 1;
	}
	if (!qheads || qheads > 64 || qheads % 8) {
		fprintf(stderr,
			"kvcbench: select: --heads: query heads, a multiple of 8 up to 64\n");
		kvc_detach(c);
		return 2;
	}
	err = select_timing(c, nblocks, reps, slot, qheads, &p50, &p99, &per_block);
	if (!err && model)
		err = select_recall(c, model, 16, 400, slot, recall, &cands);
	kvc_detach(c);
	if (err) {
		fprintf(stderr, "kvcbench: select: %s\n", kvc_strerror(err));
		return 1;
	}
	if (json)
		printf("{\"policy\": \"%s\", \"pool_bytes_per_block\": %.0f, \"candidates\": %lu, "
		       "\"kv_heads\": 8, \"q_heads\": %u, \"head_dim\": 128, "
		       "\"k\": 16, \"select_p50_us\": %.1f, \"select_p99_us\": %.1f, "
		       "\"recall_top1\": %.4f, \"recall_top4\": %.4f, \"recall_top8\": %.4f, "
		       "\"recall_candidates\": %u}\n",
		       canon, per_block, nblocks, qheads, p50, p99, recall[0], recall[1], recall[2],
		       cands);
	else
		printf("%s (%.0f pool bytes per block, summary included): ", canon, per_block);
	if (!json)
		printf("select over %lu blocks (8 KV heads x 128, %u query heads, top 16): p50 %.1f us, "
		       "p99 %.1f us; real keys, %u candidates: the best chunk first %.1f%%, in the top "
		       "4 %.1f%%, in the top 8 %.1f%%\n",
		       nblocks, qheads, p50, p99, cands, 100 * recall[0], 100 * recall[1],
		       100 * recall[2]);
	return 0;
}

/* ---- restart: the cache across a kvcd crash ----------------------------------------------
 * kvcbench starts kvcd itself on a state directory, fills most of the pool, runs @clients
 * verifying readers, SIGKILLs kvcd and starts it again on the same pools: time to READY, the
 * blocks before and after, and the readers' hit rate before and after. */

struct restart_share {
	volatile int phase; /* 0: before the crash, 1: after, 2: stop */
	struct {
		uint64_t hits, misses, resets, down, other, corrupt;
	} r[2][64];
};

/* Start kvcd @bin on @sock with a @pool pool and one more option (@o1 @v1); its log goes to
 * stderr. */
static pid_t spawn_kvcd(const char *bin, const char *sock, const char *pool, const char *o1,
			const char *v1)
{
	pid_t pid = fork();

	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		dup2(fd, 1);
		execl(bin, bin, "--foreground", "--socket", sock, "--pool-size", pool, o1, v1,
		      (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Wait until kvcd answers an attach; returns the ns waited, or 0 if it died. */
static uint64_t wait_ready(pid_t pid, uint64_t t0)
{
	for (;;) {
		struct kvc_attach_opts o;
		kvc_client *c;

		if (waitpid(pid, NULL, WNOHANG) == pid)
			return 0;
		kvc_attach_opts_init(&o);
		o.socket = g_sock;
		o.staging_size = 4096;
		if (kvc_attach(&o, &c) == 0) {
			kvc_detach(c);
			return now_ns() - t0;
		}
		usleep(1000);
	}
}

/* ---- cold working sets: random blocks of a pool far larger than the last-level cache ----- */

/* kvcbench cold: a fresh kvcd with a @pool-byte pool, filled with blocks of @bs bytes; FETCH
 * of @iters blocks picked at random against memcpy of the same random pattern out of a
 * client buffer as large as the pool; then STORE into the full pool (each one evicts)
 * against memcpy into random places of that buffer. */
static int bench_cold(const char *bin, const char *pool_arg, size_t bs, unsigned long iters,
		      int json)
{
	char dir[] = "/tmp/kvcbench-cold-XXXXXX", sock[96];
	size_t pool, n, ssz;
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64 };
	uint64_t rng = 42, t, t_fetch, t_mc_read, t_store, t_mc_write, evict0;
	struct kvc_stats st;
	unsigned char *buf, *stg;
	kvc_client *c;
	pid_t pid;
	int err = 0;

	if (parse_size(pool_arg, &pool) || !mkdtemp(dir))
		return 2;
	l.tokens = (uint32_t)(bs / (2 * 2 * 64));
	n = pool / (bs + 4096) * 9 / 10; /* what fits, headroom for the allocator */
	snprintf(sock, sizeof(sock), "%s/k.sock", dir);
	pid = spawn_kvcd(bin, sock, pool_arg, "--log-level", "warning");
	g_sock = sock;
	if (!wait_ready(pid, now_ns()))
		return 1;
	c = attach_to(sock, "cold", 2 * bs, 0, &err);
	buf = malloc(n * bs);
	if (!c || !buf)
		return 1;
	stg = kvc_staging(c, &ssz);
	for (size_t i = 0; i < n * bs; i += 4096)
		buf[i] = (unsigned char)i; /* faulted in, as the pool is */
	fill(stg, bs, 7);
	for (size_t i = 0; i < n && !err; i++) {
		struct kvc_key k = { 0xc01d, i };

		err = kvc_store(c, &k, &l, 0);
	}
	t = now_ns();
	for (unsigned long i = 0; i < iters && !err; i++) {
		struct kvc_key k = { 0xc01d, (rng = rng * 6364136223846793005ull + 1) >> 33 % n };

		k.lo %= n;
		err = kvc_fetch(c, &k, 0, bs, NULL);
	}
	t_fetch = now_ns() - t;
	rng = 42;
	t = now_ns();
	for (unsigned long i = 0; i < iters; i++) {
		size_t at = ((rng = rng * 6364136223846793005ull + 1) >> 33) % n;

		memcpy(stg, buf + at * bs, bs);
		__asm__ volatile("" : : "r"(stg) : "memory");
	}
	t_mc_read = now_ns() - t;
	kvc_stats(c, &st, sizeof(st));
	evict0 = st.evictions;
	for (size_t i = 0; !err; i++) { /* fill up to the first eviction: the pool is full */
		struct kvc_key k = { 0xf111, i };

		err = kvc_store(c, &k, &l, 0);
		kvc_stats(c, &st, sizeof(st));
		if (st.evictions > evict0)
			break;
	}
	evict0 = st.evictions;
	t = now_ns();
	for (unsigned long i = 0; i < iters && !err; i++) {
		struct kvc_key k = { 0x5707e, i };

		err = kvc_store(c, &k, &l, 0);
	}
	t_store = now_ns() - t;
	kvc_stats(c, &st, sizeof(st));
	rng = 43;
	t = now_ns();
	for (unsigned long i = 0; i < iters; i++) {
		size_t at = ((rng = rng * 6364136223846793005ull + 1) >> 33) % n;

		memcpy(buf + at * bs, stg, bs);
		__asm__ volatile("" : : "r"(buf) : "memory");
	}
	t_mc_write = now_ns() - t;
	kvc_detach(c);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	free(buf);
	snprintf(sock, sizeof(sock), "rm -rf %s", dir);
	if (system(sock))
		fprintf(stderr, "kvcbench: could not remove %s\n", dir);
	if (err) {
		fprintf(stderr, "kvcbench cold: %s\n", kvc_strerror(err));
		return 1;
	}
	double gb = (double)bs * iters;

	if (json)
		printf("{\"scenario\": \"cold\", \"pool_bytes\": %zu, \"block_bytes\": %zu, "
		       "\"blocks\": %zu, \"iters\": %lu, \"fetch_gbps\": %.3f, "
		       "\"memcpy_random_read_gbps\": %.3f, \"fetch_vs_memcpy\": %.3f, "
		       "\"store_evicting_gbps\": %.3f, \"memcpy_random_write_gbps\": %.3f, "
		       "\"store_vs_memcpy\": %.3f, \"evictions\": %llu}\n",
		       pool, bs, n, iters, gb / t_fetch, gb / t_mc_read,
		       (double)t_mc_read / t_fetch, gb / t_store, gb / t_mc_write,
		       (double)t_mc_write / t_store, (unsigned long long)(st.evictions - evict0));
	else
		printf("cold: %zu blocks of %zu KiB in a %zu MiB pool: FETCH of random blocks %.2f "
		       "GB/s against memcpy of the same pattern %.2f GB/s (%.2fx); STORE into the full "
		       "pool (evicting) %.2f GB/s against memcpy to random places %.2f GB/s (%.2fx)\n",
		       n, bs >> 10, pool >> 20, gb / t_fetch, gb / t_mc_read,
		       (double)t_mc_read / t_fetch, gb / t_store, gb / t_mc_write,
		       (double)t_mc_write / t_store);
	return 0;
}

/* ---- workload: a trace replayed by several engine processes ------------------------------ */

/* Llama-3-8B's 16-token chunk (K and V, 8 KV heads of 128, f16) with one of its 32 layers:
 * 64 KiB. Hit rates depend on the pool's capacity in blocks, not on their size; a whole
 * model's 2 MiB blocks would only make the replay 32 times longer. */
static const struct kvc_layout WL_LAYOUT = {
	.dtype = KVC_F16, .layers = 1, .kv_heads = 8, .head_dim = 128, .tokens = WL_CHUNK_TOKENS
};

/* What the processes of one replay count, in shared memory. Samples are per request: the
 * LOOKUP's time, then the mean time of a block fetched. */
struct wl_share {
	uint64_t hit_chunks, chunks, fetched_bytes, stored, errors;
	uint64_t lookup_ns[]; /* [requests], then fetch_ns[requests] */
};

static int wl_replay_kvcd(const struct wl_trace *t, const char *sock, unsigned procs, unsigned id,
			  bool parents, struct wl_share *sh)
{
	size_t bs = kvc_layout_bytes(&WL_LAYOUT), slot = (bs + 16 + 63) & ~(size_t)63, cap;
	int err;
	kvc_client *c = attach_to(sock, "workload", 64 * slot, 0, &err);
	struct kvc_key *keys = malloc(WL_MAX_CHUNKS * sizeof(*keys));
	unsigned char *stg;
	uint64_t *fetch_ns = sh->lookup_ns + t->n;

	if (!c || !keys)
		return c ? -ENOMEM : err;
	stg = kvc_staging(c, &cap);
	for (size_t i = 0; i < 64; i++) /* KV-like bytes in every slot: small normal values */
		for (size_t j = 0; j < bs / 2; j++)
			((uint16_t *)(stg + i * slot))[j] =
				(uint16_t)(0x3000 + (XXH64(&j, sizeof(j), i) & 0x7ff) +
					   ((j & 1) << 15));
	for (size_t r = id; r < t->n; r += procs) {
		const struct wl_req *q = &t->req[r];
		size_t n = wl_keys(q, 1, keys, WL_MAX_CHUNKS), hits = 0;
		uint64_t t0 = now_ns();

		err = kvc_lookup(c, keys, q->nchunks, &hits);
		sh->lookup_ns[r] = now_ns() - t0;
		if (err)
			break;
		t0 = now_ns();
		for (size_t i0 = 0; i0 < hits;) { /* the hits, 64 per doorbell */
			struct kvc_req rq[64];
			struct kvc_cqe cq[64];
			size_t m = hits - i0 < 64 ? hits - i0 : 64;
			int sent, done = 0;

			memset(rq, 0, sizeof(rq));
			for (size_t j = 0; j < m; j++)
				rq[j] = (struct kvc_req){ .op = KVC_OP_FETCH,
							  .key = keys[i0 + j],
							  .off = j * slot,
							  .len = slot };
			sent = kvc_submit(c, rq, (unsigned)m, NULL);
			while (sent > 0 && done < sent) {
				int w = kvc_wait(c, cq + done, 1, (unsigned)(sent - done), -1);

				if (w < 0)
					break;
				done += w;
			}
			for (int j = 0; j < done; j++)
				if (cq[j].res) /* evicted since the LOOKUP */
					__atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
				else
					__atomic_fetch_add(&sh->fetched_bytes, cq[j].value,
							   __ATOMIC_RELAXED);
			if (sent <= 0 || done < sent)
				break;
			i0 += m;
		}
		fetch_ns[r] = hits ? (now_ns() - t0) / hits : 0;
		for (size_t i = hits; i < n; i++) { /* the rest of the prompt, then the answer */
			struct kvc_req rq = { .op = KVC_OP_STORE,
					      .key = keys[i],
					      .layout = WL_LAYOUT,
					      .off = (i % 64) * slot,
					      .len = bs };
			struct kvc_cqe cq;

			if (parents && i) {
				memcpy(stg + rq.off + bs, &keys[i - 1], sizeof(keys[i - 1]));
				rq.flags = KVC_REQ_PARENT;
				rq.len = bs + sizeof(keys[i - 1]);
			}
			if (kvc_submit(c, &rq, 1, NULL) != 1 || kvc_wait(c, &cq, 1, 1, -1) != 1)
				break;
			if (!cq.res)
				__atomic_fetch_add(&sh->stored, 1, __ATOMIC_RELAXED);
			else if (cq.res != -EEXIST)
				__atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
		}
		__atomic_fetch_add(&sh->hit_chunks, hits, __ATOMIC_RELAXED);
		__atomic_fetch_add(&sh->chunks, q->nchunks, __ATOMIC_RELAXED);
	}
	free(keys);
	kvc_detach(c);
	return err;
}

/* The same for Redis (allkeys-lru) at @sock: a pipelined GET of the prompt's blocks gives the
 * cached prefix (the leading hits) and its bytes; a pipelined SET stores the rest. */
static int wl_replay_redis(const struct wl_trace *t, const char *sock, unsigned procs, unsigned id,
			   struct wl_share *sh)
{
	size_t bs = kvc_layout_bytes(&WL_LAYOUT);
	redisContext *rc = redisConnectUnix(sock);
	struct kvc_key *keys = malloc(WL_MAX_CHUNKS * sizeof(*keys));
	char *val = malloc(bs);
	uint64_t *fetch_ns = sh->lookup_ns + t->n;
	int err = 0;

	if (!rc || rc->err || !keys || !val)
		return -EIO;
	for (size_t j = 0; j < bs; j++)
		val[j] = (char)(j * 131);
	for (size_t r = id; r < t->n && !err; r += procs) {
		const struct wl_req *q = &t->req[r];
		size_t n = wl_keys(q, 1, keys, WL_MAX_CHUNKS), hits = 0;
		bool gap = false;
		uint64_t t0 = now_ns();

		for (size_t i = 0; i < q->nchunks; i++)
			redisAppendCommand(rc, "GET wl:%016llx%016llx",
					   (unsigned long long)keys[i].hi,
					   (unsigned long long)keys[i].lo);
		for (size_t i = 0; i < q->nchunks; i++) {
			redisReply *rep = NULL;

			if (redisGetReply(rc, (void **)&rep) != REDIS_OK || !rep) {
				err = -EIO;
				break;
			}
			if (rep->type == REDIS_REPLY_STRING && rep->len == bs && !gap) {
				hits++;
				__atomic_fetch_add(&sh->fetched_bytes, bs, __ATOMIC_RELAXED);
			} else {
				gap = true;
			}
			freeReplyObject(rep);
		}
		sh->lookup_ns[r] = now_ns() - t0;
		fetch_ns[r] = hits ? sh->lookup_ns[r] / hits : 0;
		for (size_t i = hits; i < n; i++)
			redisAppendCommand(rc, "SET wl:%016llx%016llx %b",
					   (unsigned long long)keys[i].hi,
					   (unsigned long long)keys[i].lo, val, bs);
		for (size_t i = hits; i < n && !err; i++) {
			redisReply *rep = NULL;

			if (redisGetReply(rc, (void **)&rep) != REDIS_OK || !rep) {
				err = -EIO;
				break;
			}
			if (rep->type == REDIS_REPLY_STATUS)
				__atomic_fetch_add(&sh->stored, 1, __ATOMIC_RELAXED);
			else
				__atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
			freeReplyObject(rep);
		}
		__atomic_fetch_add(&sh->hit_chunks, hits, __ATOMIC_RELAXED);
		__atomic_fetch_add(&sh->chunks, q->nchunks, __ATOMIC_RELAXED);
	}
	redisFree(rc);
	free(keys);
	free(val);
	return err;
}

static double pct(uint64_t *v, size_t n, double p)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) /* the requests that have a sample */
		if (v[i])
			v[k++] = v[i];
	if (!k)
		return 0;
	qsort(v, k, sizeof(*v), cmp_u64);
	return (double)v[(size_t)(p * (double)(k - 1))] / 1e3;
}

/* One replay of @t by @procs processes against kvcd @bin (a fresh one, @pool bytes, @policy
 * for the namespace; @parents: STOREs name their parents) or, with @bin NULL, against a fresh
 * redis-server with maxmemory @pool and allkeys-lru. Prints its JSON object. */
static int wl_run(const struct wl_trace *t, const char *name, const char *bin, uint64_t pool,
		  const char *policy, bool parents, unsigned procs, bool first)
{
	char dir[] = "/tmp/kvcbench-wl-XXXXXX", sock[128], conf[160], poolarg[32], mm[32];
	size_t shbytes = sizeof(struct wl_share) + 2 * t->n * sizeof(uint64_t);
	struct wl_share *sh = mmap(NULL, shbytes, PROT_READ | PROT_WRITE,
				   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t server, kids[64];
	uint64_t t0, evictions = 0;
	double secs, ratio = 1;
	int bad = 0;

	if (sh == MAP_FAILED || !mkdtemp(dir))
		return -ENOMEM;
	procs = procs > 64 ? 64 : procs;
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	snprintf(poolarg, sizeof(poolarg), "%lluM", (unsigned long long)(pool >> 20));
	if (bin) {
		FILE *f;

		snprintf(conf, sizeof(conf), "%s/kvcd.conf", dir);
		f = fopen(conf, "w");
		/* no background eviction: the pool is filled as the references fill theirs */
		fprintf(f,
			"[kvcd]\nhigh_watermark = 100\nlow_watermark = 100\n"
			"[namespace workload]\npolicy = %s\n",
			policy ? policy : "none");
		fclose(f);
		server = spawn_kvcd(bin, sock, poolarg, "--config", conf);
		g_sock = sock;
		if (!wait_ready(server, now_ns()))
			return -EIO;
	} else {
		snprintf(mm, sizeof(mm), "%llu", (unsigned long long)pool);
		server = fork();
		if (server == 0) {
			int fd = open("/dev/null", O_WRONLY);

			dup2(fd, 1);
			execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock,
			       "--save", "", "--appendonly", "no", "--maxmemory", mm,
			       "--maxmemory-policy", "allkeys-lru", "--dir", dir, (char *)NULL);
			_exit(127);
		}
		for (int w = 0; w < 500 && access(sock, F_OK); w++)
			usleep(10000);
	}
	t0 = now_ns();
	for (unsigned p = 0; p < procs; p++) {
		kids[p] = fork();
		if (kids[p] == 0)
			_exit((bin ? wl_replay_kvcd(t, sock, procs, p, parents, sh)
				   : wl_replay_redis(t, sock, procs, p, sh)) != 0);
	}
	for (unsigned p = 0; p < procs; p++) {
		int st = 0;

		waitpid(kids[p], &st, 0);
		bad |= !WIFEXITED(st) || WEXITSTATUS(st);
	}
	secs = (double)(now_ns() - t0) / 1e9;
	if (bin) {
		kvc_client *c = attach_to(sock, "workload", 4096, 0, &bad);
		struct kvc_stats st;

		if (c && !kvc_stats(c, &st, sizeof(st))) {
			evictions = st.evictions;
			ratio = st.bytes_stored ? (double)st.bytes_in / (double)st.bytes_stored : 1;
		}
		if (c)
			kvc_detach(c);
	} else {
		redisContext *rc = redisConnectUnix(sock);
		redisReply *rep = rc && !rc->err ? redisCommand(rc, "INFO stats") : NULL;
		const char *e = rep && rep->type == REDIS_REPLY_STRING
					? strstr(rep->str, "evicted_keys:")
					: NULL;

		if (e)
			evictions = strtoull(e + 13, NULL, 10);
		if (rep)
			freeReplyObject(rep);
		if (rc)
			redisFree(rc);
	}
	kill(server, SIGTERM);
	waitpid(server, NULL, 0);
	snprintf(conf, sizeof(conf), "rm -rf %s", dir);
	if (system(conf))
		fprintf(stderr, "kvcbench: could not remove %s\n", dir);
	double hit = sh->chunks ? (double)sh->hit_chunks / (double)sh->chunks : 0;

	printf("%s{\"name\": \"%s\", \"policy\": \"%s\", \"compression\": %.2f, "
	       "\"parents\": %s, \"hit_rate\": %.4f, "
	       "\"hit_tokens\": %llu, \"tokens\": %llu, \"tokens_from_cache_per_gb\": %.0f, "
	       "\"fetched_bytes\": %llu, \"lookup_p50_us\": %.1f, \"lookup_p99_us\": %.1f, "
	       "\"fetch_p50_us\": %.1f, \"fetch_p99_us\": %.1f, \"evictions\": %llu, "
	       "\"stored\": %llu, \"errors\": %llu, \"seconds\": %.2f, \"failed\": %d}",
	       first ? "\n    " : ",\n    ", name, policy ? policy : "none", ratio,
	       parents ? "true" : "false", hit,
	       (unsigned long long)sh->hit_chunks * WL_CHUNK_TOKENS,
	       (unsigned long long)sh->chunks * WL_CHUNK_TOKENS,
	       (double)sh->hit_chunks * WL_CHUNK_TOKENS / ((double)pool / 1e9),
	       (unsigned long long)sh->fetched_bytes, bin ? pct(sh->lookup_ns, t->n, 0.5) : 0.0,
	       bin ? pct(sh->lookup_ns, t->n, 0.99) : 0.0, pct(sh->lookup_ns + t->n, t->n, 0.5),
	       pct(sh->lookup_ns + t->n, t->n, 0.99), (unsigned long long)evictions,
	       (unsigned long long)sh->stored, (unsigned long long)sh->errors, secs, bad);
	fflush(stdout);
	munmap(sh, shbytes);
	return bad ? -EIO : 0;
}

/* kvcbench workload: generate the trace if it is not there, compute LRU and Belady on it,
 * replay it on kvcd (prefix-aware eviction; then without parents; then compressed) and on
 * Redis, all with the same memory. */
static int bench_workload(const char *bin, const char *trace, uint64_t seed, unsigned requests,
			  const char *pool_arg, double fraction, unsigned procs, bool full)
{
	struct wl_trace t;
	struct wl_sim lru, opt;
	struct wl_params p;
	size_t bad_line = 0, bs = kvc_layout_bytes(&WL_LAYOUT), cap;
	uint64_t pool;
	int err;

	if (access(trace, F_OK)) {
		FILE *f = fopen(trace, "w");

		wl_defaults(&p);
		p.seed = seed;
		p.requests = requests ? requests : p.requests;
		err = f ? wl_generate(&p, f) : -errno;
		if (f && fclose(f))
			err = err ? err : -errno;
		if (err) {
			fprintf(stderr, "kvcbench: writing %s: %s\n", trace, strerror(-err));
			return 1;
		}
		fprintf(stderr, "kvcbench: wrote the trace %s (seed %llu)\n", trace,
			(unsigned long long)seed);
	}
	err = wl_load(trace, &t, &bad_line);
	if (err) {
		fprintf(stderr, "kvcbench: %s: %s (line %zu)\n", trace, strerror(-err), bad_line);
		return 1;
	}
	err = wl_sim_lru(&t, SIZE_MAX, &lru); /* every block once: the working set */
	if (err)
		return 1;
	if (pool_arg) {
		size_t z;

		if (parse_size(pool_arg, &z))
			return 2;
		pool = z;
	} else { /* a pool that holds @fraction of the distinct blocks */
		pool = (uint64_t)((double)lru.unique_blocks * fraction * (double)(bs + 64));
		pool = (pool + (1 << 20) - 1) & ~(uint64_t)((1 << 20) - 1);
	}
	cap = (size_t)(pool / (bs + 64)); /* TLSF: the block and its 64-byte header */
	if (wl_sim_lru(&t, cap, &lru) || wl_sim_belady(&t, cap, &opt))
		return 1;
	printf("{\"scenario\": \"workload\", \"trace\": \"%s\", \"requests\": %zu, \"tokens\": %llu, "
	       "\"distinct_blocks\": %llu, \"block_bytes\": %zu, \"pool_bytes\": %llu, "
	       "\"capacity_blocks\": %zu, \"procs\": %u,\n  \"belady\": {\"hit_rate\": %.4f, "
	       "\"evictions\": %llu},\n  \"lru\": {\"hit_rate\": %.4f, \"evictions\": %llu},\n  "
	       "\"runs\": [",
	       trace, t.n, (unsigned long long)t.chunks * WL_CHUNK_TOKENS,
	       (unsigned long long)lru.unique_blocks, bs, (unsigned long long)pool, cap, procs,
	       (double)opt.hit_chunks / (double)opt.chunks, (unsigned long long)opt.evictions,
	       (double)lru.hit_chunks / (double)lru.chunks, (unsigned long long)lru.evictions);
	fflush(stdout);
	err = wl_run(&t, "kvcd", bin, pool, NULL, true, procs, true);
	err |= wl_run(&t, "kvcd without parents", bin, pool, NULL, false, procs, false);
	if (!access("/usr/bin/redis-server", X_OK))
		err |= wl_run(&t, "redis allkeys-lru", NULL, pool, NULL, false, procs, false);
	err |= wl_run(&t, "kvcd int8", bin, pool, "int8", true, procs, false);
	err |= wl_run(&t, "kvcd kivi", bin, pool, "kivi:kbits=6,vbits=5,group=64", true, procs,
		      false);
	if (full) /* capacity as hit rate: the pool halved and doubled */
		for (int k = 0; k < 2; k++)
			err |= wl_run(&t, k ? "kvcd, pool x2" : "kvcd, pool x0.5", bin,
				      k ? 2 * pool : pool / 2, NULL, true, procs, false);
	printf("\n  ]}\n");
	wl_free(&t);
	return err ? 1 : 0;
}

static void restart_reader(struct restart_share *sh, unsigned id, unsigned long nblocks, size_t bs)
{
	kvc_client *c = attach(2 * bs, 0);
	size_t ssz;
	unsigned char *stg = kvc_staging(c, &ssz), *want = malloc(bs);
	uint64_t x = 0x9e3779b97f4a7c15ull * (id + 1);

	while (sh->phase < 2) {
		int ph = sh->phase;
		unsigned long i;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		i = x % nblocks;
		struct kvc_key k = { 0x5e57a27, i };
		int r = kvc_fetch(c, &k, 0, bs, NULL);

		if (r == 0) {
			fill(want, bs, (unsigned)i);
			sh->r[ph][id].hits++;
			sh->r[ph][id].corrupt += memcmp(want, stg, bs) != 0;
		} else if (r == -ENOENT && kvc_nop(c) == 0) { /* not: no daemon at the path */
			sh->r[ph][id].misses++;
		} else if (r == -ECONNRESET) {
			sh->r[ph][id].resets++;
		} else if (r == -ENOENT || r == -ECONNREFUSED) { /* kvcd is down: retry soon */
			sh->r[ph][id].down++;
			usleep(1000);
		} else {
			sh->r[ph][id].other++;
		}
	}
	free(want);
	kvc_detach(c);
	_exit(0);
}

static int bench_restart(const char *bin, const char *pool, unsigned clients, size_t bs, int json)
{
	char dir[] = "/dev/shm/kvcbench-restart-XXXXXX", sock[128];
	struct restart_share *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
					MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64 };
	struct kvc_stats st;
	uint64_t t_cold, t_warm, before, after, hits[2] = { 0 }, tries[2] = { 0 }, bad = 0,
						other = 0;
	unsigned long n = 0;
	size_t pool_bytes;
	pid_t kvcd, readers[64];

	if (sh == MAP_FAILED || !mkdtemp(dir) || clients > 64 || parse_size(pool, &pool_bytes))
		return 1;
	memset(sh, 0, sizeof(*sh));
	snprintf(sock, sizeof(sock), "%s/kvcd.sock", dir);
	g_sock = sock;
	kvcd = spawn_kvcd(bin, sock, pool, "--state-dir", dir);
	t_cold = wait_ready(kvcd, now_ns());
	if (!t_cold)
		return 1;
	/* fill 90% of the pool: blocks of @bs bytes */
	kvc_client *c = attach(bs, 0);
	size_t ssz;
	unsigned char *stg = kvc_staging(c, &ssz);

	l.tokens = (uint32_t)(bs / (2 * 2 * 64));
	for (; (n + 1) * (bs + 64) < pool_bytes / 10 * 9; n++) {
		struct kvc_key k = { 0x5e57a27, n };

		fill(stg, bs, (unsigned)n);
		if (kvc_store(c, &k, &l, 0))
			break;
	}
	kvc_stats(c, &st, sizeof(st));
	kvc_detach(c);
	for (unsigned i = 0; i < clients; i++)
		if ((readers[i] = fork()) == 0)
			restart_reader(sh, i, n, bs);
	usleep(1000000);
	c = attach(4096, 0);
	kvc_stats(c, &st, sizeof(st));
	before = st.blocks;
	kvc_detach(c);
	kill(kvcd, SIGKILL); /* a crash, under load */
	waitpid(kvcd, NULL, 0);
	sh->phase = 1;
	uint64_t t0 = now_ns();

	kvcd = spawn_kvcd(bin, sock, pool, "--state-dir", dir);
	t_warm = wait_ready(kvcd, t0);
	usleep(1000000);
	sh->phase = 2;
	for (unsigned i = 0; i < clients; i++)
		waitpid(readers[i], NULL, 0);
	c = attach(4096, 0);
	kvc_stats(c, &st, sizeof(st));
	after = st.blocks;
	kvc_detach(c);
	kill(kvcd, SIGTERM);
	waitpid(kvcd, NULL, 0);
	for (unsigned i = 0; i < clients; i++)
		for (int ph = 0; ph < 2; ph++) {
			hits[ph] += sh->r[ph][i].hits;
			tries[ph] += sh->r[ph][i].hits + sh->r[ph][i].misses;
			bad += sh->r[ph][i].corrupt;
			other += sh->r[ph][i].other;
		}
	char cmd[160];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd))
		fprintf(stderr, "kvcbench: could not remove %s\n", dir);
	if (json)
		printf("{\"scenario\": \"restart\", \"pool\": \"%s\", \"block_bytes\": %zu, "
		       "\"clients\": %u, \"blocks_before\": %llu, \"blocks_after\": %llu, "
		       "\"ready_cold_ms\": %.1f, \"ready_warm_ms\": %.1f, \"warm_vs_cold\": %.3f, "
		       "\"hit_rate_before\": %.4f, "
		       "\"hit_rate_after\": %.4f, \"fetches_after\": %llu, \"corrupt\": %llu, "
		       "\"errors\": %llu}\n",
		       pool, bs, clients, (unsigned long long)before, (unsigned long long)after,
		       t_cold / 1e6, t_warm / 1e6, (double)t_warm / t_cold,
		       tries[0] ? (double)hits[0] / tries[0] : 0,
		       tries[1] ? (double)hits[1] / tries[1] : 0, (unsigned long long)tries[1],
		       (unsigned long long)bad, (unsigned long long)other);
	else
		printf("restart of a %s pool (%llu blocks of %zu KiB) under %u readers: READY in "
		       "%.1f ms cold, %.1f ms warm; blocks %llu before, %llu after; hit rate %.4f "
		       "before, %.4f after (%llu fetches); %llu corrupt, %llu other errors\n",
		       pool, (unsigned long long)before, bs >> 10, clients, t_cold / 1e6,
		       t_warm / 1e6, (unsigned long long)before, (unsigned long long)after,
		       tries[0] ? (double)hits[0] / tries[0] : 0,
		       tries[1] ? (double)hits[1] / tries[1] : 0, (unsigned long long)tries[1],
		       (unsigned long long)bad, (unsigned long long)other);
	return bad || after != before ? 1 : 0;
}

/* ---- remote: fetch-through from a Redis Cluster ---------------------------------------------
 * Two kvcd on one cluster: A stores N blocks (write-through), B fetches them through (each a
 * GET, a check and an adoption into its pool), then again from its pool; against GETs of the
 * same values straight from the cluster (hiredis, following MOVED), and a 64-chunk prefix
 * fetched through (one LOOKUP brings the chain, pipelined per node) against one chunk. */

/* Connections to the cluster's nodes, by "host:port", opened as first needed. */
static redisContext *cluster_conn(const char *where)
{
	static redisContext *conn[8];
	static char addr[8][64];
	char host[64];
	int i;

	for (i = 0; i < 8 && addr[i][0] && strcmp(addr[i], where); i++)
		;
	if (i == 8)
		return NULL;
	if (!addr[i][0]) {
		const char *colon = strrchr(where, ':');

		if (!colon)
			return NULL;
		snprintf(host, sizeof(host), "%.*s", (int)(colon - where), where);
		conn[i] = redisConnect(host, atoi(colon + 1));
		snprintf(addr[i], sizeof(addr[i]), "%s", where);
	}
	return conn[i] && !conn[i]->err ? conn[i] : NULL;
}

/* GET @key from the cluster at @seed, following MOVED: the bytes' length, or -1. The node
 * that answered in @owner when not NULL. */
static long long cluster_get(const char *seed, const char *key, redisContext **owner)
{
	char where[64];
	long long len = -1;

	snprintf(where, sizeof(where), "%s", seed);
	for (int hop = 0; hop < 3; hop++) {
		redisContext *c = cluster_conn(where);
		redisReply *r = c ? redisCommand(c, "GET %s", key) : NULL;

		if (!r)
			return -1;
		if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "MOVED ", 6)) {
			snprintf(where, sizeof(where), "%s", strrchr(r->str, ' ') + 1);
			freeReplyObject(r);
			continue;
		}
		len = r->type == REDIS_REPLY_STRING ? (long long)r->len : -1;
		if (owner)
			*owner = c;
		freeReplyObject(r);
		break;
	}
	return len;
}

/* The floor under a remote prefix: GETs of the values of @keys straight from their nodes
 * (found beforehand), pipelined as kvcd does: every GET sent before a reply is read. The
 * time of the pipelined batch, or 0 when a value is missing. */
static uint64_t cluster_pipelined(const char *seed, const char *ns, const struct kvc_key *keys,
				  unsigned n)
{
	unsigned long long h = XXH64(ns, strlen(ns), 0x6b766364);
	redisContext *own[64];
	char name[64][80];
	uint64_t t;

	n = n < 64 ? n : 64;
	for (unsigned i = 0; i < n; i++) {
		snprintf(name[i], sizeof(name[i]), "kvcd:%016llx:%016llx%016llx", h,
			 (unsigned long long)keys[i].hi, (unsigned long long)keys[i].lo);
		if (cluster_get(seed, name[i], &own[i]) <= 0)
			return 0;
	}
	t = now_ns();
	for (unsigned i = 0; i < n; i++)
		redisAppendCommand(own[i], "GET %s", name[i]);
	for (unsigned i = 0; i < n; i++) {
		int done = 0;

		while (!done && redisBufferWrite(own[i], &done) == REDIS_OK)
			;
	}
	for (unsigned i = 0; i < n; i++) {
		redisReply *r = NULL;

		if (redisGetReply(own[i], (void **)&r) != REDIS_OK || !r ||
		    r->type != REDIS_REPLY_STRING) {
			t = 0;
		}
		if (r)
			freeReplyObject(r);
	}
	return t ? now_ns() - t : 0;
}

/* What remote_model_prefix measures, each the median over its rounds. */
struct model_prefix_times {
	uint64_t prefix, one;	      /* kvc-llama's restore from the cluster */
	uint64_t raw_prefix, raw_one; /* the same values GET from the cluster directly */
	uint64_t recompute;	      /* the prefix computed again */
};

/* The model's prefix through the cluster, as kvc-llama restores it: @chunks chunks of 8 (63:
 * with one chunk more, all of stories260K's 512 positions) tokens stored by kvcd @sa,
 * restored by kvcd @sb (a LOOKUP brings the chain, then one batch of FETCHes), against one
 * chunk of another chain, against the same values read from the cluster directly, and
 * against recomputing the prefix. Each of @rounds rounds has new tokens, so every restore
 * comes from the cluster. Returns 0 or -errno. */
static int remote_model_prefix(const char *model, const char *sa, const char *sb, const char *seed,
			       unsigned chunks, unsigned rounds, struct model_prefix_times *out)
{
	struct llm m;
	struct llm_state s, s2;
	struct llm_kvc ka = { .chunk = 8 }, kb = { .chunk = 8 };
	const char *why = NULL;
	size_t n = 8 * (size_t)chunks;
	int32_t *tok = malloc((n + 8) * sizeof(*tok)), *one;
	struct kvc_key keys[64];
	uint64_t rng = 7, t, tp[16], t1[16], rp[16], r1[16], tr[16];
	int err = llm_load(model, &m, &why);

	rounds = rounds < 16 ? rounds : 16;
	if (err || !tok || chunks > 64 || n + 8 > (size_t)m.c.seq_len ||
	    llm_state_init(&m, &s, KVC_F16) || llm_state_init(&m, &s2, KVC_F16))
		return err ? err : -EINVAL;
	one = tok + n; /* a chunk of its own, another chain */
	ka.c = attach_to(sa, "bench", 1 << 20, 0, &err);
	kb.c = attach_to(sb, "bench", 1 << 20, 0, &err);
	if (!ka.c || !kb.c)
		return err ? err : -EIO;
	llm_kvc_keyns(&m, KVC_F16, "kvcbench", &ka);
	llm_kvc_keyns(&m, KVC_F16, "kvcbench", &kb);
	for (unsigned r = 0; err >= 0 && r < rounds; r++) {
		struct kvc_stats st;
		uint64_t puts0;

		for (size_t i = 0; i < n + 8; i++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			tok[i] = i % (n ? n : 1) ? (int32_t)((rng >> 33) % (uint64_t)m.c.vocab) : 1;
		}
		kvc_stats(ka.c, &st, sizeof(st));
		puts0 = st.remote.puts;
		t = now_ns();
		for (size_t i = 0; i < n; i++)
			llm_forward(&m, &s, tok[i], (int)i);
		tr[r] = now_ns() - t;
		err = llm_kvc_save(&m, &s, &ka, tok, 0, chunks);
		for (size_t i = 0; err >= 0 && i < 8; i++)
			llm_forward(&m, &s2, one[i], (int)i);
		if (err >= 0)
			err = llm_kvc_save(&m, &s2, &ka, one, 0, 1);
		for (int w = 0; err >= 0 && w < 3000; w++) { /* the writes reach the cluster */
			kvc_stats(ka.c, &st, sizeof(st));
			if (st.remote.puts >= puts0 + chunks + 1)
				break;
			usleep(1000);
		}
		t = now_ns();
		if (err >= 0)
			err = llm_kvc_restore(&m, &s, &kb, tok, n, n);
		tp[r] = now_ns() - t;
		if (err >= 0 && (size_t)err != n)
			err = -ENOENT;
		t = now_ns();
		if (err >= 0)
			err = llm_kvc_restore(&m, &s2, &kb, one, 8, 8);
		t1[r] = now_ns() - t;
		if (err >= 0 && err != 8)
			err = -ENOENT;
		if (err >= 0)
			err = kvc_key_chain_all(ka.keyns, tok, n, 8, keys, chunks);
		if (err >= 0) {
			rp[r] = cluster_pipelined(seed, "bench", keys, chunks);
			err = kvc_key_chain_all(ka.keyns, one, 8, 8, keys, 1);
		}
		if (err >= 0)
			r1[r] = cluster_pipelined(seed, "bench", keys, 1);
		if (err >= 0 && (!rp[r] || !r1[r]))
			err = -ENOENT;
	}
	if (err >= 0) {
		qsort(tp, rounds, sizeof(*tp), cmp_u64);
		qsort(t1, rounds, sizeof(*t1), cmp_u64);
		qsort(rp, rounds, sizeof(*rp), cmp_u64);
		qsort(r1, rounds, sizeof(*r1), cmp_u64);
		qsort(tr, rounds, sizeof(*tr), cmp_u64);
		*out = (struct model_prefix_times){ tp[rounds / 2], t1[rounds / 2], rp[rounds / 2],
						    r1[rounds / 2], tr[rounds / 2] };
	}
	kvc_detach(ka.c);
	kvc_detach(kb.c);
	llm_state_free(&s);
	llm_state_free(&s2);
	llm_free(&m);
	free(tok);
	return err < 0 ? err : 0;
}

/* The remote tier: kvcd A writes through to the cluster at @cluster, kvcd B fetches through
 * it. Per round, fresh blocks: B's fetch-through of @n blocks of @bs bytes against GETs of
 * the same sizes straight from the cluster (alternating), and a 64-chunk chain against one
 * chunk; then the model's prefix (remote_model_prefix). Figures are medians over @rounds. */
static int bench_remote(const char *bin, const char *cluster, size_t bs, unsigned n,
			unsigned rounds, int json, const char *model)
{
	char dir[] = "/tmp/kvcbench-remote-XXXXXX", conf[128], sa[128], sb[128], seed[64];
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64 }, sl = {
		.dtype = KVC_F16, .layers = 5, .kv_heads = 4, .head_dim = 8, .tokens = 16
	}; /* a chunk of stories260K's KV, as kvc-llama stores it */
	kvc_client *a, *b;
	pid_t pa, pb;
	FILE *f;
	uint64_t t, t_remote[16], t_local[16], t_raw[16], t_chain[16], t_one[16];
	double ratio[16];
	unsigned long long ns_hash = XXH64("bench", 5, 0x6b766364);
	struct kvc_stats st;
	size_t ssz, local, remote;
	int bad = 0, err;

	rounds = rounds < 1 ? 1 : rounds > 16 ? 16 : rounds;
	if (!mkdtemp(dir))
		return 1;
	snprintf(seed, sizeof(seed), "%.*s", (int)strcspn(cluster, ","), cluster);
	snprintf(conf, sizeof(conf), "%s/kvcd.conf", dir);
	f = fopen(conf, "w");
	fprintf(f, "[remote]\nredis = %s\nop_timeout_ms = 2000\n[namespace bench]\nremote = all\n",
		cluster);
	fclose(f);
	snprintf(sa, sizeof(sa), "%s/a.sock", dir);
	snprintf(sb, sizeof(sb), "%s/b.sock", dir);
	pa = spawn_kvcd(bin, sa, "1G", "--config", conf);
	pb = spawn_kvcd(bin, sb, "1G", "--config", conf);
	g_sock = sa;
	wait_ready(pa, now_ns());
	g_sock = sb;
	wait_ready(pb, now_ns());
	a = attach_to(sa, "bench", 2 * bs, 0, &err);
	b = attach_to(sb, "bench", 2 * bs, 0, &err);
	if (!a || !b)
		return 1;
	unsigned char *sta = kvc_staging(a, &ssz), *stb = kvc_staging(b, &ssz);

	l.tokens = (uint32_t)(bs / (2 * 2 * 64));
	for (unsigned r = 0; r < rounds; r++) {
		uint64_t puts0;
		struct kvc_key chain[64], one = { 0x0e + r, 64 };

		kvc_stats(a, &st, sizeof(st));
		puts0 = st.remote.puts;
		for (unsigned i = 0; i < n; i++) {
			struct kvc_key k = { 0xbe7c + r, i };

			fill(sta, bs, i + r);
			bad |= kvc_store(a, &k, &l, 0) != 0;
		}
		/* the 64-chunk chain and a one-chunk chain, for the prefix figures */
		for (unsigned i = 0; i < 65; i++) {
			struct kvc_key k = { i < 64 ? 0xc4a1 + r : 0x0e + r, i };

			fill(sta, kvc_layout_bytes(&sl), i);
			bad |= kvc_store(a, &k, &sl, 0) != 0;
		}
		for (int w = 0; w < 5000; w++) { /* the writes reach the cluster */
			kvc_stats(a, &st, sizeof(st));
			if (st.remote.puts >= puts0 + n + 65)
				break;
			usleep(1000);
		}
		/* raw GETs first in odd rounds, kvcd first in even ones */
		for (int pass = 0; pass < 2; pass++) {
			if ((pass == 0) == (r % 2 == 1)) {
				t = now_ns();
				for (unsigned i = 0; i < n; i++) {
					char key[80];

					snprintf(key, sizeof(key), "kvcd:%016llx:%016llx%016llx",
						 ns_hash, 0xbe7cull + r, (unsigned long long)i);
					bad |= cluster_get(seed, key, NULL) < (long long)bs;
				}
				t_raw[r] = now_ns() - t;
				continue;
			}
			t = now_ns();
			for (unsigned i = 0; i < n; i++) {
				struct kvc_key k = { 0xbe7c + r, i };

				bad |= kvc_fetch(b, &k, 0, bs, NULL) != 0;
			}
			t_remote[r] = now_ns() - t;
		}
		fill(sta, bs, n - 1 + r);
		bad |= memcmp(sta, stb, bs) != 0;
		t = now_ns();
		for (unsigned i = 0; i < n; i++) {
			struct kvc_key k = { 0xbe7c + r, i };

			bad |= kvc_fetch(b, &k, 0, bs, NULL) != 0;
		}
		t_local[r] = now_ns() - t;
		ratio[r] = (double)t_raw[r] / (double)t_remote[r];
		for (unsigned i = 0; i < 64; i++)
			chain[i] = (struct kvc_key){ 0xc4a1 + r, i };
		t = now_ns();
		bad |= kvc_lookup_tiers(b, chain, 64, &local, &remote) != 0 || remote != 64;
		for (unsigned i = 0; i < 64; i++)
			bad |= kvc_fetch(b, &chain[i], 0, bs, NULL) != 0;
		t_chain[r] = now_ns() - t;
		t = now_ns();
		bad |= kvc_fetch(b, &one, 0, bs, NULL) != 0;
		t_one[r] = now_ns() - t;
	}
	kvc_stats(b, &st, sizeof(st));
	kvc_detach(a);
	kvc_detach(b);
	struct model_prefix_times mt = { 0 };

	if (model) {
		int e = remote_model_prefix(model, sa, sb, seed, 63, rounds, &mt);

		if (e)
			fprintf(stderr, "kvcbench remote: the model's prefix: %s\n",
				kvc_strerror(e));
		bad |= e != 0;
	}
	kill(pa, SIGTERM);
	kill(pb, SIGTERM);
	waitpid(pa, NULL, 0);
	waitpid(pb, NULL, 0);
	snprintf(conf, sizeof(conf), "rm -rf %s", dir);
	if (system(conf))
		fprintf(stderr, "kvcbench: could not remove %s\n", dir);
	double gb = (double)bs * n / 1e9, rmin, rmax;

	qsort(t_remote, rounds, sizeof(*t_remote), cmp_u64);
	qsort(t_local, rounds, sizeof(*t_local), cmp_u64);
	qsort(t_raw, rounds, sizeof(*t_raw), cmp_u64);
	qsort(t_chain, rounds, sizeof(*t_chain), cmp_u64);
	qsort(t_one, rounds, sizeof(*t_one), cmp_u64);
	qsort(ratio, rounds, sizeof(*ratio), cmp_double);
	rmin = ratio[0];
	rmax = ratio[rounds - 1];
	unsigned h = rounds / 2;
	uint64_t m_prefix = mt.prefix, m_one = mt.one, m_recompute = mt.recompute;

	if (json)
		printf("{\"scenario\": \"remote\", \"block_bytes\": %zu, \"blocks\": %u, "
		       "\"rounds\": %u, \"remote_fetch_gbps\": %.3f, \"local_fetch_gbps\": %.3f, "
		       "\"raw_redis_get_gbps\": %.3f, \"remote_vs_raw_redis\": %.3f, "
		       "\"remote_vs_raw_redis_min\": %.3f, \"remote_vs_raw_redis_max\": %.3f, "
		       "\"prefix64_us\": %.1f, \"one_chunk_us\": %.1f, \"prefix64_vs_one_chunk\": "
		       "%.2f, \"remote_get_p50_us\": %.1f, \"remote_get_p99_us\": %.1f, "
		       "\"model_prefix63_us\": %.1f, \"model_one_chunk_us\": %.1f, "
		       "\"model_prefix_vs_one_chunk\": %.2f, \"raw_prefix63_us\": %.1f, "
		       "\"raw_one_chunk_us\": %.1f, \"raw_prefix_vs_one_chunk\": %.2f, "
		       "\"model_recompute_us\": %.1f, "
		       "\"recompute_over_remote_prefix\": %.1f, \"errors\": %d}\n",
		       bs, n, rounds, gb / (t_remote[h] / 1e9), gb / (t_local[h] / 1e9),
		       gb / (t_raw[h] / 1e9), ratio[h], rmin, rmax, t_chain[h] / 1e3,
		       t_one[h] / 1e3, (double)t_chain[h] / t_one[h], st.remote.get_p50_ns / 1e3,
		       st.remote.get_p99_ns / 1e3, m_prefix / 1e3, m_one / 1e3,
		       m_one ? (double)m_prefix / m_one : 0.0, mt.raw_prefix / 1e3,
		       mt.raw_one / 1e3, mt.raw_one ? (double)mt.raw_prefix / mt.raw_one : 0.0,
		       m_recompute / 1e3, m_prefix ? (double)m_recompute / m_prefix : 0.0, bad);
	else
		printf("medians of %u rounds: remote fetch-through of %u blocks of %zu KiB: %.2f "
		       "GB/s (local hit %.2f GB/s, raw Redis GET %.2f GB/s: %.2fx of it, rounds "
		       "%.2f-%.2f); a 64-chunk prefix in %.0f us, one chunk in %.0f us (%.1fx); "
		       "the model's 63-chunk prefix from the cluster in %.0f us, one of its chunks "
		       "in %.0f us (%.1fx; the same values GET directly, pipelined: %.0f us and "
		       "%.0f us, %.1fx), recomputed in %.0f us (%.1fx the remote hit)%s\n",
		       rounds, n, bs >> 10, gb / (t_remote[h] / 1e9), gb / (t_local[h] / 1e9),
		       gb / (t_raw[h] / 1e9), ratio[h], rmin, rmax, t_chain[h] / 1e3,
		       t_one[h] / 1e3, (double)t_chain[h] / t_one[h], m_prefix / 1e3, m_one / 1e3,
		       m_one ? (double)m_prefix / m_one : 0.0, mt.raw_prefix / 1e3,
		       mt.raw_one / 1e3, mt.raw_one ? (double)mt.raw_prefix / mt.raw_one : 0.0,
		       m_recompute / 1e3, m_prefix ? (double)m_recompute / m_prefix : 0.0,
		       bad ? "; ERRORS" : "");
	return bad;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvcbench [--socket PATH] nop [--count N] [--adaptive | --sleep] [--no-peers]\n"
		"                [--json]\n"
		"       kvcbench [--socket PATH] throughput [--block-size SIZE] [--procs N]\n"
		"                [--iters N] [--adaptive] [--redis PATH] [--no-peers] [--json]\n"
		"       kvcbench [--socket PATH] index [--blocks N] [--count N] [--pid PID] [--json]\n"
		"       kvcbench [--socket PATH] prefix --model FILE [--chunk N] [--chunks N]\n"
		"                [--iters N] [--json]\n"
		"       kvcbench [--socket PATH] select [--blocks N] [--iters N] [--model FILE]\n"
		"                [--policy P] [--heads QUERY_HEADS] [--json]\n"
		"       kvcbench restart --kvcd BIN [--pool-size SIZE] [--procs N]\n"
		"                [--block-size SIZE] [--json]\n"
		"       kvcbench cold --kvcd BIN [--pool-size 4G] [--block-size 256K] [--iters N]\n"
		"       kvcbench workload --kvcd BIN [--trace FILE] [--seed N] [--requests N]\n"
		"                [--pool-size SIZE | --fraction F] [--procs N] [--full]\n"
		"       kvcbench remote --kvcd BIN --cluster HOST:PORT[,...] [--block-size SIZE]\n"
		"                [--blocks N] [--iters ROUNDS] [--model FILE] [--json]\n"
		"       kvcbench [--socket PATH] gpu [--block-size 32M] [--iters N] [--json]\n"
		"Any command: --burn N runs N CPU-burning processes beside it (a loaded machine).\n"
		"kvccodec-bench measures the codecs in-process.\n");
}

/* ---- gpu: kvcd's GPU staging against the device's own copies ------------------------------- */

/* Seconds per call of @what over @n calls. */
#define SECS_PER(n, secs, what)                                        \
	do {                                                           \
		uint64_t t0_ = now_ns();                               \
		for (unsigned long i_ = 0; i_ < (n); i_++)             \
			what;                                          \
		(secs) = (double)(now_ns() - t0_) / 1e9 / (double)(n); \
	} while (0)

/* Bytes the namespace's pool copies hold now (STATS): what a STORE put there. */
static uint64_t ns_stored(kvc_client *c, const char *ns)
{
	struct kvc_stats st;

	if (kvc_stats(c, &st, sizeof(st)))
		return 0;
	for (unsigned i = 0; i < st.nns && i < 32; i++)
		if (!strcmp(st.ns[i].name, ns))
			return st.ns[i].bytes_stored;
	return 0;
}

/* STORE from GPU staging (then DELETE, untimed) and FETCH into it under policy slot @slot:
 * seconds per STORE and per FETCH of the block at GPU staging offset 0; the pool bytes one
 * stored block takes in *@stored. */
static int gpu_round(kvc_client *c, unsigned idx, struct kvc_layout l, int slot,
		     unsigned long iters, double *st, double *ft, uint64_t *stored)
{
	struct kvc_key k = { 0x67707562656e6368ull, (uint64_t)slot };
	struct kvc_layout back;
	uint64_t total = 0, t0, before;
	size_t n = kvc_layout_bytes(&l);

	l.codec = (uint8_t)slot;
	for (unsigned long i = 0; i <= iters; i++) { /* the first is a warm-up */
		kvc_delete(c, &k);
		before = ns_stored(c, "gpubench");
		t0 = now_ns();
		if (kvc_store_gpu(c, idx, &k, &l, 0))
			return -1;
		if (i)
			total += now_ns() - t0;
		*stored = ns_stored(c, "gpubench") - before;
	}
	*st = (double)total / 1e9 / (double)iters;
	SECS_PER(iters, *ft, kvc_fetch_gpu(c, idx, &k, 0, n, &back));
	return kvc_fetch_gpu(c, idx, &k, 0, n, &back);
}

/* FETCH into GPU staging of a block a host STORE has just put in the pool (STORE and DELETE
 * untimed): seconds per FETCH, each one a miss of the GPU pool, through PCIe. The block's
 * bytes are in host staging. */
static int gpu_miss_round(kvc_client *c, unsigned idx, struct kvc_layout l, unsigned long iters,
			  double *ft)
{
	struct kvc_key k = { 0x67707562656e6368ull, 0x6d697373ull };
	struct kvc_layout back;
	uint64_t total = 0, t0;
	size_t n = kvc_layout_bytes(&l);

	for (unsigned long i = 0; i <= iters; i++) {
		kvc_delete(c, &k);
		if (kvc_store(c, &k, &l, 0))
			return -1;
		t0 = now_ns();
		if (kvc_fetch_gpu(c, idx, &k, 0, n, &back))
			return -1;
		if (i)
			total += now_ns() - t0;
	}
	*ft = (double)total / 1e9 / (double)iters;
	return 0;
}

static int bench_gpu(size_t bs, unsigned long iters, int json)
{
	struct kvcg_rt rt;
	struct kvc_attach_opts o;
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 32, .kv_heads = 8, .head_dim = 128 };
	kvc_client *c = NULL;
	CUdeviceptr dbuf = 0, dbuf2 = 0;
	uint16_t *host = NULL;
	double ref_h2d, ref_d2h, ref_d2d, st, ft, st8, ft8, fmiss;
	uint64_t stored, stored8, pool = 0;
	struct kvc_stats kst;
	size_t n, gsz;
	char why[160];
	int err, idx, slot, slot8, ret = 1;

	l.tokens = (uint32_t)(bs / (32u * 2 * 8 * 128 * 2));
	if (!l.tokens)
		l.tokens = 1;
	n = kvc_layout_bytes(&l);
	err = kvcg_rt_open(&rt, 0, why, sizeof(why));
	if (err && err != -ENOEXEC) {
		fprintf(stderr, "kvcbench gpu: skipped: no CUDA device: %s\n", why);
		kvcg_rt_close(&rt);
		return 3;
	}
	kvc_attach_opts_init(&o);
	o.socket = g_sock;
	o.ns = "gpubench";
	o.staging_size = n;
	o.gpu = 1;
	o.gpu_staging_size = n;
	err = kvc_attach(&o, &c);
	if (err) {
		fprintf(stderr, "kvcbench gpu: skipped: kvcd gives no GPU staging: %s\n",
			kvc_strerror(err));
		kvcg_rt_close(&rt);
		return 3;
	}
	idx = kvc_gpu_index(c, 0);
	slot = kvc_policy(c, "none", 0, why, sizeof(why));
	slot8 = kvc_policy(c, "int8", 0, why, sizeof(why));
	if (idx < 0 || !kvc_gpu_staging(c, (unsigned)idx, &gsz) || gsz < n || slot <= 0 ||
	    slot8 <= 0 || rt.cu.host_alloc((void **)&host, n) || rt.cu.mem_alloc(&dbuf, n) ||
	    rt.cu.mem_alloc(&dbuf2, n) || kvc_stats(c, &kst, sizeof(kst))) {
		fprintf(stderr, "kvcbench gpu: setting up %zu bytes failed\n", n);
		goto out;
	}
	for (size_t i = 0; i < n / 2; i++) /* KV-like values the int8 codec takes */
		host[i] = f32_to_f16((float)((int)(i * 2654435761u % 2001) - 1000) / 300.0f);
	pool = kst.gpu_pool[idx].pool_bytes;
	memcpy(kvc_staging(c, NULL), host, n);
	if (rt.cu.htod(kvc_gpu_staging(c, (unsigned)idx, NULL), host, n) ||
	    rt.cu.htod(dbuf, host, n))
		goto out;
	/* the references: what this device copies to and from pinned memory, and within its own
	 * memory, in this run */
	SECS_PER(iters, ref_h2d, rt.cu.htod(dbuf, host, n));
	SECS_PER(iters, ref_d2h, rt.cu.dtoh(host, dbuf, n));
	SECS_PER(iters, ref_d2d, rt.cu.dtod(dbuf2, dbuf, n));
	/* with a GPU pool, a FETCH after the STORE is served from the pool's copy; one after a
	 * host STORE misses it and crosses PCIe */
	if (gpu_round(c, (unsigned)idx, l, slot, iters, &st, &ft, &stored) ||
	    gpu_round(c, (unsigned)idx, l, slot8, iters, &st8, &ft8, &stored8) ||
	    gpu_miss_round(c, (unsigned)idx, l, iters, &fmiss)) {
		fprintf(stderr, "kvcbench gpu: a GPU STORE or FETCH failed\n");
		goto out;
	}
	if (json) {
		printf("{\"device\": \"%s\", \"block_bytes\": %zu, \"ref_h2d_gbps\": %.2f, "
		       "\"ref_d2h_gbps\": %.2f, \"ref_d2d_gbps\": %.2f, \"store_gpu_gbps\": %.2f, "
		       "\"fetch_gpu_gbps\": %.2f, \"store_vs_d2h\": %.3f, \"fetch_vs_h2d\": %.3f, "
		       "\"store_int8_gbps\": %.2f, \"fetch_int8_gbps\": %.2f, "
		       "\"int8_stored_bytes\": %llu, \"raw_stored_bytes\": %llu, "
		       "\"gpu_pool_bytes\": %llu",
		       rt.d.name, n, n / ref_h2d / 1e9, n / ref_d2h / 1e9, n / ref_d2d / 1e9,
		       n / st / 1e9, n / fmiss / 1e9, ref_d2h / st, ref_h2d / fmiss, n / st8 / 1e9,
		       n / ft8 / 1e9, (unsigned long long)stored8, (unsigned long long)stored,
		       (unsigned long long)pool);
		if (pool)
			printf(", \"fetch_pool_gbps\": %.2f, \"pool_vs_d2d\": %.3f}\n",
			       n / ft / 1e9, ref_d2d / ft);
		else
			printf(", \"fetch_pool_gbps\": null, \"pool_vs_d2d\": null}\n");
	} else {
		printf("%s, %zu-byte f16 block\n"
		       "  reference      H2D %7.2f GB/s   D2H %7.2f GB/s (pinned)   D2D %7.2f GB/s\n"
		       "  kvcd raw       FETCH into GPU staging %7.2f GB/s (%.0f%% of H2D), "
		       "STORE from it %7.2f GB/s (%.0f%% of D2H)\n"
		       "  kvcd int8      FETCH %7.2f GB/s, STORE %7.2f GB/s (raw bytes); "
		       "%llu bytes in the pool against %llu raw\n",
		       rt.d.name, n, n / ref_h2d / 1e9, n / ref_d2h / 1e9, n / ref_d2d / 1e9,
		       n / fmiss / 1e9, 100 * ref_h2d / fmiss, n / st / 1e9, 100 * ref_d2h / st,
		       n / ft8 / 1e9, n / st8 / 1e9, (unsigned long long)stored8,
		       (unsigned long long)stored);
		if (pool)
			printf("  GPU pool       FETCH from its copy %7.2f GB/s (%.0f%% of D2D)\n",
			       n / ft / 1e9, 100 * ref_d2d / ft);
	}
	ret = 0;
out:
	if (host)
		rt.cu.host_free(host);
	if (dbuf)
		rt.cu.mem_free(dbuf);
	if (dbuf2)
		rt.cu.mem_free(dbuf2);
	kvc_detach(c);
	kvcg_rt_close(&rt);
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = { { "socket", required_argument, 0, 's' },
					      { "count", required_argument, 0, 'c' },
					      { "sleep", no_argument, 0, 'S' },
					      { "adaptive", no_argument, 0, 'A' },
					      { "json", no_argument, 0, 'j' },
					      { "block-size", required_argument, 0, 'b' },
					      { "procs", required_argument, 0, 'p' },
					      { "iters", required_argument, 0, 'i' },
					      { "help", no_argument, 0, 'h' },
					      { "policy", required_argument, 0, 'P' },
					      { "heads", required_argument, 0, 'H' },
					      { "redis", required_argument, 0, 'R' },
					      { "no-peers", no_argument, 0, 'N' },
					      { "blocks", required_argument, 0, 'B' },
					      { "pid", required_argument, 0, 'd' },
					      { "model", required_argument, 0, 'M' },
					      { "chunk", required_argument, 0, 'k' },
					      { "chunks", required_argument, 0, 'K' },
					      { "kvcd", required_argument, 0, 'D' },
					      { "pool-size", required_argument, 0, 'z' },
					      { "cluster", required_argument, 0, 'C' },
					      { "trace", required_argument, 0, 'T' },
					      { "seed", required_argument, 0, 'e' },
					      { "requests", required_argument, 0, 'r' },
					      { "fraction", required_argument, 0, 'F' },
					      { "full", no_argument, 0, 'L' },
					      { "burn", required_argument, 0, 'U' },
					      { 0, 0, 0, 0 } };
	unsigned long count = 100000, iters = 0, blocks = 1000000;
	size_t bs = 2 << 20;
	unsigned procs = 1, chunk = 8, chunks = 64, reps;
	int o, json = 0, nop_mode = NOP_BUSY, peers = 1;
	const char *redis = NULL, *model = NULL, *kvcd = NULL, *pool = "4G", *cluster = NULL;
	const char *trace = "bench/traces/fleet-s1.jsonl", *pool_given = NULL;
	unsigned long long seed = 1;
	unsigned requests = 0;
	double fraction = 0.1;
	bool full = false, procs_given = false, iters_given = false, bs_given = false;
	unsigned burn = 0;
	pid_t pid = 0;
	const char *policy = NULL;
	unsigned qheads = 32; /* select: query heads over its 8 KV heads */
	const char *cmd = NULL;
	cli_version(argc, argv, "kvcbench");

	/* options may come before or after the command */
	while (optind < argc) {
		o = getopt_long(argc, argv,
				"+s:c:SAjb:p:i:hP:H:R:NB:d:M:k:K:D:z:C:T:e:r:F:LU:", opts, NULL);
		if (o == -1) {
			if (cmd) {
				usage(stderr);
				return 2;
			}
			cmd = argv[optind++];
			continue;
		}
		switch (o) {
		case 's': g_sock = optarg; break;
		case 'c': count = strtoul(optarg, NULL, 10); break;
		case 'S': nop_mode = NOP_SLEEP; break;
		case 'A': nop_mode = NOP_ADAPTIVE; break;
		case 'j': json = 1; break;
		case 'b':
			if (parse_size(optarg, &bs))
				return 2;
			bs_given = true;
			break;
		case 'p':
			procs = (unsigned)strtoul(optarg, NULL, 10);
			procs_given = true;
			break;
		case 'i':
			iters = strtoul(optarg, NULL, 10);
			iters_given = true;
			break;
		case 'h': usage(stdout); return 0;
		case 'P': policy = optarg; break;
		case 'H': qheads = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'R': redis = optarg; break;
		case 'N': peers = 0; break;
		case 'B': blocks = strtoul(optarg, NULL, 10); break;
		case 'd': pid = (pid_t)strtol(optarg, NULL, 10); break;
		case 'M': model = optarg; break;
		case 'k': chunk = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'K': chunks = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'D': kvcd = optarg; break;
		case 'z': pool = pool_given = optarg; break;
		case 'T': trace = optarg; break;
		case 'e': seed = strtoull(optarg, NULL, 10); break;
		case 'r': requests = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'F': fraction = strtod(optarg, NULL); break;
		case 'L': full = true; break;
		case 'U': burn = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'C': cluster = optarg; break;
		default: usage(stderr); return 2;
		}
	}
	if (!cmd || !count || !procs || procs > 256) {
		usage(stderr);
		return 2;
	}
	reps = iters ? (unsigned)iters : 21; /* remote: 5 when not given */
	if (!iters)			     /* about 1 GiB moved per process by default */
		iters = bs >= (1u << 30) ? 1 : (1u << 30) / bs;
	if (burn)
		burners_start(burn);
	if (!strcmp(cmd, "nop"))
		return bench_nop(count, nop_mode, redis, peers, json);
	if (nop_mode == NOP_ADAPTIVE)
		g_tp_flags = 0;
	if (!strcmp(cmd, "throughput"))
		return bench_throughput(bs, procs, iters, redis, peers, json);
	if (!strcmp(cmd, "index"))
		return bench_index(blocks, count == 100000 ? 20000 : count, pid, json);
	if (!strcmp(cmd, "prefix")) {
		if (!model || !chunk || !chunks) {
			usage(stderr);
			return 2;
		}
		return bench_prefix(model, chunk, chunks, reps, json);
	}
	if (!strcmp(cmd, "remote")) {
		if (!kvcd || !cluster) {
			usage(stderr);
			return 2;
		}
		return bench_remote(kvcd, cluster, bs, blocks == 1000000 ? 16 : (unsigned)blocks,
				    reps == 21 ? 5 : reps, json, model);
	}
	if (!strcmp(cmd, "cold")) {
		if (!kvcd) {
			usage(stderr);
			return 2;
		}
		size_t cbs = bs_given ? bs : 256u << 10;

		return bench_cold(kvcd, pool_given ? pool_given : "4G", cbs,
				  iters_given ? iters : (1ul << 30) / cbs, json);
	}
	if (!strcmp(cmd, "workload")) {
		if (!kvcd || fraction <= 0 || fraction > 1) {
			usage(stderr);
			return 2;
		}
		return bench_workload(kvcd, trace, seed, requests, pool_given, fraction,
				      procs_given ? procs : 2, full);
	}
	if (!strcmp(cmd, "restart")) {
		if (!kvcd) {
			usage(stderr);
			return 2;
		}
		return bench_restart(kvcd, pool, procs == 1 ? 8 : procs,
				     bs == (2 << 20) ? 256 << 10 : bs, json);
	}
	if (!strcmp(cmd, "gpu"))
		return bench_gpu(bs_given ? bs : 32u << 20, iters_given ? iters : 20, json);
	if (!strcmp(cmd, "select"))
		return bench_select(blocks == 1000000 ? 10000 : blocks, reps, model, policy, qheads,
				    json);
	usage(stderr);
	return 2;
}
