/* gpu_tier.c - GPU staging through a real kvcd on a machine with a CUDA device: one process
 * stores from its GPU staging and another fetches into its own GPU staging and into host
 * staging, under raw, GPU-encoded and CPU-encoded policies, with the bytes each policy must
 * give back; a host STORE comes back into GPU staging; and a process killed with SIGKILL in
 * the middle of GPU STOREs leaves kvcd and the other clients working with every block intact.
 * Without a CUDA device, or a kvcd that serves no GPU staging, every test says so and is
 * skipped (tests/it_gpu.c checks the refusals there). */
#include <signal.h>
#include <sys/wait.h>

#include "t_util.h"
#include "codec.h"
#include "rt.h"

static struct t_daemon D;

/* kvcd's log to stderr (make gpu-check keeps what the suites print): on a GPU machine it says
 * what each device could and could not do. */
static void show_log(void)
{
	char line[512];
	FILE *f = D.log[0] ? fopen(D.log, "r") : NULL;

	while (f && fgets(line, sizeof(line), f))
		fprintf(stderr, "  kvcd: %s", line);
	if (f)
		fclose(f);
}

static void down(void)
{
	if (D.pid > 0)
		show_log();
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exits 0 on SIGTERM");
}

TestSuite(gpu_tier, .fini = down, .timeout = 120);

/* Start kvcd (with a GPU pool of @gpu_pool on each device, NULL: none), or skip (before
 * anything is started: a skipped test runs no .fini) when there is no CUDA device or kvcd
 * serves no GPU staging. The device is probed in a child, so this process has not touched the
 * driver when it forks its own children. */
static void start_with_or_skip(const char *gpu_pool)
{
	const char *args[] = { "--pool-size", "256M", "--gpu-pool-size", gpu_pool, NULL };
	struct kvc_stats st;
	kvc_client *c;
	int status;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (!pid) {
		struct kvcg_rt rt;
		char why[160];
		int err = kvcg_rt_open(&rt, 0, why, sizeof(why));

		_exit(err == -ENOENT || err == -ENODEV ? 3 : 0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
		cr_skip_test("skipped: no CUDA device");
	if (!gpu_pool)
		args[2] = NULL;
	cr_assert_eq(t_daemon_start_args(&D, args), 0, "kvcd failed to start");
	c = t_attach(&D, NULL, 4096);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	if (st.gpu.status != KVC_GPU_READY || strstr(st.gpu.why, " 0 with GPU staging")) {
		show_log();
		cr_assert_eq(t_daemon_down(&D), 0);
		cr_skip_test("skipped: kvcd serves no GPU staging here (%s)", st.gpu.why);
	}
}

static void start_or_skip(void)
{
	start_with_or_skip(NULL);
}

static const struct kvc_layout L = {
	.dtype = KVC_F16, .layers = 4, .kv_heads = 8, .head_dim = 128, .tokens = 64
};

static const char *const policies[] = {
	"none",				 /* a plain copy each way */
	"int8",				 /* encoded and decoded on the GPU */
	"kivi:kbits=4,vbits=4,group=32", /* the same, KIVI */
	"int4:rotate=hadamard",		 /* the CPU codec, through a bounce buffer */
	"none:select=recent,keep=50%",	 /* selection: the sparse form back */
};

/* A block of KV-like f16 values, different per @seed. */
static void make_block(uint16_t *out, size_t n, uint64_t seed)
{
	float *f = malloc(n * sizeof(float));

	t_rng = seed * 0x9e3779b97f4a7c15ull + 11;
	for (size_t i = 0; i < n; i++)
		f[i] = t_nrand() * (i % 128 == 5 ? 6.0f : 1.0f);
	kvcd_from_f32(KVCD_ISA_SCALAR, KVCP_F16, f, out, n);
	free(f);
}

/* What FETCH gives back for @raw stored under @pol: its bytes, or the codec's round trip. */
static size_t expected(const char *pol, const void *raw, void *out, size_t cap)
{
	struct kvcd_policy p;
	struct kvcp_layout l, back;
	char why[128];
	uint64_t n;
	void *enc;

	memcpy(&l, &L, sizeof(l));
	cr_assert_eq(kvcd_policy_parse(pol, &p, why, sizeof(why)), 0, "%s", why);
	if (p.kind == KVCD_CODEC_NONE && !kvcd_policy_sel(&p)) {
		memcpy(out, raw, kvcp_layout_bytes(&l));
		return kvcp_layout_bytes(&l);
	}
	n = kvcd_codec_size(&p, &l, false, 0);
	cr_assert_gt(n, 0, "%s", pol);
	enc = malloc(n);
	cr_assert_eq(kvcd_codec_encode(KVCD_ISA_SCALAR, &p, &l, 0, raw, NULL, enc), 0, "%s", pol);
	cr_assert_eq(kvcd_codec_decode(KVCD_ISA_SCALAR, enc, n, out, cap, &back), 0, "%s", pol);
	n = kvcd_codec_out_size(enc, n);
	free(enc);
	return n;
}

/* The driver in this process, device 0, or skip. */
static void cuda_open(struct kvcg_rt *rt)
{
	char why[160];
	int err = kvcg_rt_open(rt, 0, why, sizeof(why));

	/* the kernels are not needed here: -ENOEXEC still leaves the context open */
	cr_assert(err == 0 || err == -ENOEXEC, "%s", why);
}

static int gpu_attach(kvc_client **c)
{
	struct kvc_attach_opts o;

	kvc_attach_opts_init(&o);
	o.socket = D.sock;
	o.ns = "gpu";
	o.staging_size = 32 << 20;
	o.gpu = 1;
	o.gpu_staging_size = 32 << 20;
	return kvc_attach(&o, c);
}

static kvc_client *gpu_client(void)
{
	kvc_client *c = NULL;
	int err = gpu_attach(&c);

	cr_assert_eq(err, 0, "%s", strerror(-err));
	return c;
}

static struct kvc_key key_of(unsigned i)
{
	struct kvc_key k = { 0x6770750000000000ull | i, i * 2654435761ull };

	return k;
}

/* A child's driver, client and GPU staging of at least @n bytes on device 0; 0, or the exit
 * code that says which failed. */
static int child_setup(struct kvcg_rt *rt, kvc_client **c, int *idx, size_t n)
{
	char why[160];
	size_t size;

	if (kvcg_rt_open(rt, 0, why, sizeof(why)) && !rt->d.ctx)
		return 10;
	if (gpu_attach(c))
		return 15;
	*idx = kvc_gpu_index(*c, 0);
	if (*idx < 0 || !kvc_gpu_staging(*c, (unsigned)*idx, &size) || size < n)
		return 11;
	return 0;
}

/* The child: store every policy's block from its GPU staging, then exit. */
static int store_all_from_gpu(void)
{
	struct kvcg_rt rt;
	kvc_client *c;
	size_t n = kvc_layout_bytes(&L);
	uint16_t *raw = malloc(n);
	char why[160];
	int idx, err;

	if ((err = child_setup(&rt, &c, &idx, n)))
		return err;
	for (unsigned i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		struct kvc_layout l = L;
		struct kvc_key k = key_of(i);
		int slot = kvc_policy(c, policies[i], 0, why, sizeof(why));

		if (slot <= 0)
			return 12;
		l.codec = (uint8_t)slot;
		make_block(raw, n / 2, i);
		if (rt.cu.htod(kvc_gpu_staging(c, (unsigned)idx, NULL), raw, n))
			return 13;
		if (kvc_store_gpu(c, (unsigned)idx, &k, &l, 0))
			return 14;
	}
	kvc_detach(c);
	kvcg_rt_close(&rt);
	free(raw);
	return 0;
}

Test(gpu_tier, store_from_gpu_fetch_into_gpu_and_host_elsewhere)
{
	struct kvcg_rt rt;
	size_t n = kvc_layout_bytes(&L), cap = 2 * n, size;
	uint16_t *raw = malloc(n);
	char *want = malloc(cap), *got = malloc(cap), *stg;
	pid_t pid;
	int st, idx;
	kvc_client *c;

	start_or_skip();
	/* the storing process first, before this one touches CUDA: it forks no driver state */
	pid = fork();
	cr_assert_geq(pid, 0);
	if (!pid)
		_exit(store_all_from_gpu());
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cuda_open(&rt);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the storing process: %d", st);
	c = gpu_client();
	idx = kvc_gpu_index(c, 0);
	cr_assert_geq(idx, 0, "device 0 has GPU staging");
	stg = kvc_staging(c, &size);
	for (unsigned i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		struct kvc_key k = key_of(i);
		struct kvc_layout back;
		size_t m;

		make_block(raw, n / 2, i);
		m = expected(policies[i], raw, want, cap);
		cr_assert_eq(kvc_fetch_gpu(c, (unsigned)idx, &k, 0, cap, &back), 0, "%s",
			     policies[i]);
		cr_assert_eq(rt.cu.dtoh(got, kvc_gpu_staging(c, (unsigned)idx, NULL), m), 0);
		cr_assert_eq(memcmp(got, want, m), 0, "%s: into GPU staging", policies[i]);
		cr_assert_eq(kvc_fetch(c, &k, 0, size, &back), 0, "%s", policies[i]);
		cr_assert_eq(memcmp(stg, want, m), 0, "%s: into host staging", policies[i]);
	}
	kvc_detach(c);
	kvcg_rt_close(&rt);
	free(raw);
	free(want);
	free(got);
}

Test(gpu_tier, host_store_comes_back_into_gpu_staging)
{
	struct kvcg_rt rt;
	size_t n = kvc_layout_bytes(&L), size;
	char *got = malloc(n), *stg;
	struct kvc_key k = key_of(100);
	struct kvc_layout back;
	kvc_client *c;
	int idx;

	start_or_skip();
	cuda_open(&rt);
	c = gpu_client();
	idx = kvc_gpu_index(c, 0);
	stg = kvc_staging(c, &size);
	make_block((uint16_t *)stg, n / 2, 100);
	cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	cr_assert_eq(kvc_fetch_gpu(c, (unsigned)idx, &k, 0, n, &back), 0);
	cr_assert_eq(rt.cu.dtoh(got, kvc_gpu_staging(c, (unsigned)idx, NULL), n), 0);
	cr_assert_eq(memcmp(got, stg, n), 0);
	cr_assert_eq(kvc_fetch_gpu(c, (unsigned)idx, &k, 0, n - 2, &back), -ENOSPC);
	k = key_of(101);
	cr_assert_eq(kvc_fetch_gpu(c, (unsigned)idx, &k, 0, n, &back), -ENOENT);
	kvc_detach(c);
	kvcg_rt_close(&rt);
	free(got);
}

/* GPU STOREs that name their parent (the trailer in GPU staging, written by the library): both
 * stored, both whole. */
Test(gpu_tier, gpu_stores_name_their_parents)
{
	struct kvcg_rt rt;
	size_t n = kvc_layout_bytes(&L), size;
	struct kvc_key k0 = key_of(300), k1 = key_of(301);
	struct kvc_req r[2] = {
		{ .op = KVC_OP_STORE, .flags = KVC_REQ_GPU, .key = k0, .layout = L, .len = n },
		{ .op = KVC_OP_STORE, .flags = KVC_REQ_GPU, .key = k1, .layout = L, .len = n },
	};
	struct kvc_cqe cqe[2];
	struct kvc_layout back;
	uint16_t *raw = malloc(n);
	char *stg;
	kvc_client *c;
	int idx, got = 0;

	start_or_skip();
	cuda_open(&rt);
	c = gpu_client();
	idx = kvc_gpu_index(c, 0);
	r[1].off = (n + 16 + 63) & ~(size_t)63;
	for (int i = 0; i < 2; i++) {
		r[i].gpu = (uint16_t)idx;
		make_block(raw, n / 2, 300 + (unsigned)i);
		cr_assert_eq(rt.cu.htod(kvc_gpu_staging(c, (unsigned)idx, NULL) + r[i].off, raw, n),
			     0);
	}
	cr_assert_eq(kvc_req_parent(c, &r[1], &k0), 0);
	cr_assert_eq(r[1].flags, KVC_REQ_GPU | KVC_REQ_PARENT);
	cr_assert_eq(kvc_submit(c, r, 2, NULL), 2);
	while (got < 2) {
		int m = kvc_wait(c, cqe + got, 1, 2 - (unsigned)got, 5000);

		cr_assert_gt(m, 0);
		got += m;
	}
	cr_assert_eq(cqe[0].res, 0);
	cr_assert_eq(cqe[1].res, 0);
	stg = kvc_staging(c, &size);
	make_block(raw, n / 2, 301);
	cr_assert_eq(kvc_fetch(c, &k1, 0, size, &back), 0);
	cr_assert_eq(memcmp(stg, raw, n), 0);
	kvc_detach(c);
	kvcg_rt_close(&rt);
	free(raw);
}

/* The child: GPU STOREs of fresh keys until it is killed; says when the first is in. */
static int store_until_killed(int fd)
{
	struct kvcg_rt rt;
	struct kvc_layout l = L;
	kvc_client *c;
	size_t n;
	int idx, err;

	l.tokens = 1024; /* 16 MiB a block: the kill lands in the middle of copies */
	n = kvc_layout_bytes(&l);
	if ((err = child_setup(&rt, &c, &idx, n)))
		return err;
	if (rt.cu.memset8(kvc_gpu_staging(c, (unsigned)idx, NULL), 0x3c, n))
		return 12;
	for (unsigned i = 1000;; i++) {
		struct kvc_key k = key_of(i);

		if (kvc_store_gpu(c, (unsigned)idx, &k, &l, 0) && i == 1000)
			return 13;
		if (i == 1000 && write(fd, "x", 1) != 1)
			return 14;
	}
}

Test(gpu_tier, sigkill_in_the_middle_of_gpu_stores)
{
	struct kvcg_rt rt;
	struct kvc_stats st;
	struct kvc_layout back;
	size_t n = kvc_layout_bytes(&L), size;
	int p[2], status;
	char x, *stg;
	pid_t pid;
	kvc_client *c;
	struct kvc_key k;

	start_with_or_skip("64M"); /* copies in the GPU pool are being filled at the kill too */
	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (!pid) {
		close(p[0]);
		_exit(store_until_killed(p[1]));
	}
	close(p[1]);
	if (read(p[0], &x, 1) != 1) { /* it exited */
		cr_assert_eq(waitpid(pid, &status, 0), pid);
		close(p[0]);
		cr_assert_fail("the storing process failed: %d", status);
	}
	t_sleep_ms(30);
	kill(pid, SIGKILL);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	close(p[0]);
	cuda_open(&rt);
	c = gpu_client();
	/* the first block is there, whole (checked against its checksum); kvcd serves; the
	 * dead client's session is gone */
	k = key_of(1000);
	stg = kvc_staging(c, &size);
	cr_assert_eq(kvc_fetch(c, &k, 0, size, &back), 0, "the first block");
	cr_assert_eq(back.tokens, 1024);
	for (size_t i = 0; i < 64; i++)
		cr_assert_eq((unsigned char)stg[i], 0x3c);
	make_block((uint16_t *)stg, n / 2, 7);
	k = key_of(200);
	cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	cr_assert_eq(kvc_fetch_gpu(c, (unsigned)kvc_gpu_index(c, 0), &k, 0, n, &back), 0);
	for (int i = 0; i < 200; i++) {
		cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
		if (st.clients == 1)
			break;
		t_sleep_ms(10);
	}
	cr_assert_eq(st.clients, 1, "the killed client's session went away");
	kvc_detach(c);
	kvcg_rt_close(&rt);
}

/* The GPU pool: a GPU FETCH that misses leaves a copy there and the next one is served from it
 * (a device-to-device copy, or a decode on the device), with the same bytes; a GPU STORE
 * leaves one too; a block deleted and stored again with other bytes is never served from the
 * old copy; and past the high watermark the least recently used copies go, every FETCH still
 * right. */
static struct kvc_gpu_pool_stats {
	uint64_t pool_bytes, blocks, hits, misses, promotions, demotions;
} pool_stats(kvc_client *c, int idx)
{
	struct kvc_stats st;

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	return (struct kvc_gpu_pool_stats){
		st.gpu_pool[idx].pool_bytes, st.gpu_pool[idx].blocks,	  st.gpu_pool[idx].hits,
		st.gpu_pool[idx].misses,     st.gpu_pool[idx].promotions, st.gpu_pool[idx].demotions
	};
}

/* FETCH @k into GPU staging and compare with @want (@m bytes). */
static void fetch_gpu_equals(struct kvcg_rt *rt, kvc_client *c, int idx, struct kvc_key k,
			     const char *want, size_t m, char *got, const char *what)
{
	struct kvc_layout back;

	memset(got, 0, m);
	cr_assert_eq(kvc_fetch_gpu(c, (unsigned)idx, &k, 0, 2 * m, &back), 0, "%s", what);
	cr_assert_eq(rt->cu.dtoh(got, kvc_gpu_staging(c, (unsigned)idx, NULL), m), 0);
	cr_assert_eq(memcmp(got, want, m), 0, "%s", what);
}

Test(gpu_tier, the_gpu_pool_serves_fetches_and_drops_copies_for_room)
{
	struct kvcg_rt rt;
	size_t n = kvc_layout_bytes(&L), size;
	char *want = malloc(2 * n), *got = malloc(2 * n), *stg, why[160];
	struct kvc_gpu_pool_stats a, b;
	struct kvc_layout l = L;
	kvc_client *c;
	int idx, slot;

	start_with_or_skip("48M");
	cuda_open(&rt);
	c = gpu_client();
	idx = kvc_gpu_index(c, 0);
	stg = kvc_staging(c, &size);
	a = pool_stats(c, idx);
	cr_assert_geq(a.pool_bytes, 48u << 20, "the pool was made");

	/* a host STORE: promoted by the first GPU FETCH, served from the pool by the second */
	struct kvc_key k = key_of(300);

	make_block((uint16_t *)stg, n / 2, 300);
	memcpy(want, stg, n);
	cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	fetch_gpu_equals(&rt, c, idx, k, want, n, got, "a miss, through the host");
	fetch_gpu_equals(&rt, c, idx, k, want, n, got, "a hit, from the pool");
	b = pool_stats(c, idx);
	cr_assert_eq(b.promotions, a.promotions + 1);
	cr_assert_eq(b.hits, a.hits + 1);

	/* deleted and stored again with other bytes: the old copy is never served */
	cr_assert_eq(kvc_delete(c, &k), 0);
	make_block((uint16_t *)stg, n / 2, 301);
	memcpy(want, stg, n);
	cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	fetch_gpu_equals(&rt, c, idx, k, want, n, got, "the new bytes");
	fetch_gpu_equals(&rt, c, idx, k, want, n, got, "the new bytes, from the pool");

	/* a GPU STORE under a policy the device encodes: its copy decodes on the device */
	slot = kvc_policy(c, "int8", 0, why, sizeof(why));
	cr_assert_gt(slot, 0, "%s", why);
	l.codec = (uint8_t)slot;
	k = key_of(302);
	make_block((uint16_t *)stg, n / 2, 302);
	cr_assert_eq(rt.cu.htod(kvc_gpu_staging(c, (unsigned)idx, NULL), stg, n), 0);
	size_t m = expected("int8", stg, want, 2 * n);

	a = pool_stats(c, idx);
	cr_assert_eq(kvc_store_gpu(c, (unsigned)idx, &k, &l, 0), 0);
	fetch_gpu_equals(&rt, c, idx, k, want, m, got, "int8, decoded from the pool");
	b = pool_stats(c, idx);
	cr_assert_eq(b.promotions, a.promotions + 1, "the STORE left its copy");
	cr_assert_eq(b.hits, a.hits + 1);

	/* more than the pool holds: the least recently used copies go, every FETCH is right */
	for (unsigned i = 0; i < 96; i++) {
		k = key_of(400 + i);
		make_block((uint16_t *)stg, n / 2, 400 + i);
		memcpy(want, stg, n);
		cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
		fetch_gpu_equals(&rt, c, idx, k, want, n, got, "filling the pool");
	}
	b = pool_stats(c, idx);
	cr_assert_gt(b.demotions, 0);
	cr_assert_leq(b.blocks * n, b.pool_bytes);
	for (unsigned i = 0; i < 96; i += 7) {
		k = key_of(400 + i);
		make_block((uint16_t *)want, n / 2, 400 + i);
		fetch_gpu_equals(&rt, c, idx, k, want, n, got, "after demotions");
	}
	kvc_detach(c);
	kvcg_rt_close(&rt);
	free(want);
	free(got);
}
