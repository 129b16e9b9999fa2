/* kvcbench - measure kvcd against the physical reference in the same run.
 *
 *   kvcbench [--socket PATH] nop [--count N] [--sleep] [--json]
 *       NOP round trips; by default the client busy-polls (--sleep: it sleeps in futex
 *       after the usual spin). p50/p99/p99.9 in microseconds.
 *   kvcbench [--socket PATH] throughput [--block-size 2M] [--procs N] [--iters N] [--json]
 *       Each process STOREs a block, FETCHes it back and DELETEs it, N times; store and
 *       fetch bandwidth against memcpy of the same bytes between two buffers of the same
 *       size, measured in the same run.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvc.h>

static const char *g_sock;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	}
	if (end == s || (*end && strcmp(end, "iB") && strcmp(end, "B")))
		return -EINVAL;
	*out = (size_t)v;
	return 0;
}

static kvc_client *attach(size_t staging, unsigned flags)
{
	struct kvc_attach_opts o;
	kvc_client *c;
	int err;

	kvc_attach_opts_init(&o);
	o.socket = g_sock;
	o.ns = "kvcbench";
	o.staging_size = staging;
	o.flags = flags;
	err = kvc_attach(&o, &c);
	if (err) {
		fprintf(stderr, "kvcbench: attach: %s\n", kvc_strerror(err));
		exit(1);
	}
	return c;
}

static int bench_nop(unsigned long count, int sleep_mode, int json)
{
	kvc_client *c = attach(4096, sleep_mode ? 0 : KVC_ATTACH_BUSY_POLL);
	uint64_t *lat = malloc(count * sizeof(*lat)), sum = 0;

	if (!lat)
		return 1;
	for (unsigned long i = 0; i < count / 10 + 100; i++) /* warm-up */
		kvc_nop(c);
	for (unsigned long i = 0; i < count; i++) {
		uint64_t t0 = now_ns();
		int err = kvc_nop(c);

		lat[i] = now_ns() - t0;
		sum += lat[i];
		if (err) {
			fprintf(stderr, "kvcbench: nop: %s\n", kvc_strerror(err));
			return 1;
		}
		if (sleep_mode)
			usleep(0); /* let the worker go idle now and then: measures the wake path */
	}
	qsort(lat, count, sizeof(*lat), cmp_u64);
	double p50 = lat[count / 2] / 1e3, p99 = lat[count * 99 / 100] / 1e3,
	       p999 = lat[count * 999 / 1000] / 1e3, mean = (double)sum / count / 1e3;

	if (json)
		printf("{\"mode\": \"%s\", \"count\": %lu, \"p50_us\": %.3f, \"p99_us\": %.3f, "
		       "\"p999_us\": %.3f, \"mean_us\": %.3f, \"max_us\": %.3f}\n",
		       sleep_mode ? "sleep" : "busy-poll", count, p50, p99, p999, mean,
		       lat[count - 1] / 1e3);
	else
		printf("nop %s: %lu round trips, p50 %.2f us, p99 %.2f us, p99.9 %.2f us, mean %.2f us\n",
		       sleep_mode ? "sleep" : "busy-poll", count, p50, p99, p999, mean);
	free(lat);
	kvc_detach(c);
	return 0;
}

struct tp_result {
	uint64_t store_ns, fetch_ns, bytes;
	int err;
};

static void tp_worker(size_t bs, unsigned long iters, unsigned id, struct tp_result *r)
{
	kvc_client *c = attach(2 * bs, KVC_ATTACH_BUSY_POLL);
	size_t ssz;
	unsigned char *stg = kvc_staging(c, &ssz);
	struct kvc_layout l = { .dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64 };
	struct kvc_layout got;

	l.tokens = (uint32_t)(bs / (2 * 2 * 64));
	memset(r, 0, sizeof(*r));
	for (size_t i = 0; i < bs; i++)
		stg[i] = (unsigned char)(i * 131 + id);
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

static double memcpy_gbps(size_t bs, unsigned long iters)
{
	unsigned char *a = malloc(bs), *b = malloc(bs);
	uint64_t t0, t;

	memset(a, 1, bs);
	memset(b, 2, bs);
	for (int i = 0; i < 3; i++)
		memcpy(b, a, bs);
	t0 = now_ns();
	for (unsigned long i = 0; i < iters; i++) {
		memcpy(b, a, bs);
		__asm__ volatile("" : : "r"(b) : "memory");
	}
	t = now_ns() - t0;
	free(a);
	free(b);
	return (double)bs * iters / t;
}

static int bench_throughput(size_t bs, unsigned procs, unsigned long iters, int json)
{
	struct tp_result *res = mmap(NULL, procs * sizeof(*res), PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t store = 0, fetch = 0, bytes = 0, t0, wall;
	double mc, sg, fg, both;
	int err = 0;

	if (bs < 256 || bs % 256 || res == MAP_FAILED) {
		fprintf(stderr, "kvcbench: block size must be a multiple of 256 bytes\n");
		return 2;
	}
	mc = memcpy_gbps(bs, iters);
	t0 = now_ns();
	for (unsigned p = 0; p < procs; p++)
		if (fork() == 0) {
			tp_worker(bs, iters, p, &res[p]);
			_exit(0);
		}
	for (unsigned p = 0; p < procs; p++) {
		int st;

		wait(&st);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			err = -ECHILD;
	}
	wall = now_ns() - t0;
	for (unsigned p = 0; p < procs; p++) {
		store += res[p].store_ns;
		fetch += res[p].fetch_ns;
		bytes += res[p].bytes;
		if (res[p].err)
			err = res[p].err;
	}
	if (!err && (!store || !fetch))
		err = -ECHILD;
	if (err) {
		fprintf(stderr, "kvcbench: throughput: %s\n", kvc_strerror(err));
		return 1;
	}
	/* per-process bandwidth summed over processes */
	sg = (double)bytes / ((double)store / procs);
	fg = (double)bytes / ((double)fetch / procs);
	both = 2.0 * bytes / ((double)(store + fetch) / procs);
	if (json)
		printf("{\"block_size\": %zu, \"procs\": %u, \"iters\": %lu, \"store_gbps\": %.3f, "
		       "\"fetch_gbps\": %.3f, \"store_fetch_gbps\": %.3f, \"memcpy_gbps\": %.3f, "
		       "\"ratio_vs_memcpy\": %.3f, \"wall_s\": %.3f}\n", bs, procs, iters, sg, fg, both,
		       mc, both / mc, wall / 1e9);
	else
		printf("throughput %zu B x %lu x %u procs: store %.2f GB/s, fetch %.2f GB/s, "
		       "store+fetch %.2f GB/s, memcpy %.2f GB/s (%.0f%%)\n", bs, iters, procs, sg, fg,
		       both, mc, 100 * both / mc);
	munmap(res, procs * sizeof(*res));
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kvcbench [--socket PATH] nop [--count N] [--sleep] [--json]\n"
		   "       kvcbench [--socket PATH] throughput [--block-size SIZE] [--procs N]\n"
		   "                [--iters N] [--json]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, 0, 's' }, { "count", required_argument, 0, 'c' },
		{ "sleep", no_argument, 0, 'S' }, { "json", no_argument, 0, 'j' },
		{ "block-size", required_argument, 0, 'b' }, { "procs", required_argument, 0, 'p' },
		{ "iters", required_argument, 0, 'i' }, { "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 }
	};
	unsigned long count = 100000, iters = 0;
	size_t bs = 2 << 20;
	unsigned procs = 1;
	int o, json = 0, sleep_mode = 0;
	const char *cmd = NULL;

	/* options may come before or after the command */
	while (optind < argc) {
		o = getopt_long(argc, argv, "+s:c:Sjb:p:i:h", opts, NULL);
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
		case 'S': sleep_mode = 1; break;
		case 'j': json = 1; break;
		case 'b':
			if (parse_size(optarg, &bs))
				return 2;
			break;
		case 'p': procs = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'i': iters = strtoul(optarg, NULL, 10); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!cmd || !count || !procs || procs > 256) {
		usage(stderr);
		return 2;
	}
	if (!iters) /* about 1 GiB moved per process by default */
		iters = bs >= (1u << 30) ? 1 : (1u << 30) / bs;
	if (!strcmp(cmd, "nop"))
		return bench_nop(count, sleep_mode, json);
	if (!strcmp(cmd, "throughput"))
		return bench_throughput(bs, procs, iters, json);
	usage(stderr);
	return 2;
}
