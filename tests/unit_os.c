/* unit_os.c - failure injection through the kvcd_os table: a pool that cannot be locked or
 * bound, or a memfd that cannot be made, fails with an error and leaks no mapping. */
#include <numaif.h>
#include <sys/mman.h>

#include "t_util.h"
#include "kvcd.h"

static int mapped, unmapped;
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);

static void *count_mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
	void *r = real_mmap(a, l, p, f, fd, o);

	mapped += r != MAP_FAILED;
	return r;
}

static int count_munmap(void *a, size_t l)
{
	unmapped++;
	return real_munmap(a, l);
}

static int fail_mlock(const void *a, size_t l)
{
	(void)a;
	(void)l;
	errno = ENOMEM;
	return -1;
}

static long fail_mbind(void *a, unsigned long l, int m, const unsigned long *n, unsigned long mx,
		       unsigned f)
{
	(void)a;
	(void)l;
	(void)m;
	(void)n;
	(void)mx;
	(void)f;
	errno = EINVAL;
	return -1;
}

static int fail_memfd(const char *n, unsigned f)
{
	(void)n;
	(void)f;
	errno = EMFILE;
	return -1;
}

static void setup(void)
{
	real_mmap = kvcd_os.mmap;
	real_munmap = kvcd_os.munmap;
	kvcd_os.mmap = count_mmap;
	kvcd_os.munmap = count_munmap;
	mapped = unmapped = 0;
}

TestSuite(os, .init = setup);

Test(os, pool_without_memlock_fails_and_unmaps)
{
	struct kvcd_pool p;

	kvcd_os.mlock = fail_mlock;
	cr_assert_eq(kvcd_pool_create(&p, 0, 4 << 20, KVCD_HUGE_TRY, false), -ENOMEM);
	cr_assert_eq(mapped, 1);
	cr_assert_eq(unmapped, 1, "no mapping leaked");
	cr_assert_null(p.base);
}

/* memlock = try: a kernel that will not lock the pool costs its locking, not the pool */
Test(os, pool_without_memlock_goes_on_when_told_to_try)
{
	struct kvcd_pool p;

	kvcd_os.mlock = fail_mlock;
	cr_assert_eq(kvcd_pool_open(&p, 0, 0, 4 << 20, KVCD_HUGE_NEVER, false, true, -1, NULL), 0);
	kvcd_pool_format(&p);
	void *b = kvcd_alloc(&p.alloc, 1 << 20);

	cr_assert_not_null(b);
	memset(b, 0x5a, 1 << 20);
	kvcd_pool_destroy(&p);
	cr_assert_eq(mapped, unmapped);
}

Test(os, pool_that_cannot_be_bound_fails)
{
	struct kvcd_pool p;

	kvcd_os.mbind = fail_mbind;
	cr_assert_eq(kvcd_pool_create(&p, 3, 4 << 20, KVCD_HUGE_NEVER, true), -EINVAL);
	cr_assert_eq(mapped, unmapped);
}

Test(os, pool_huge_pages_required_but_absent)
{
	struct kvcd_pool p;
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "r");
	long n = 0;

	if (f) {
		if (fscanf(f, "%ld", &n) != 1)
			n = 0;
		fclose(f);
	}
	if (n > 0)
		cr_skip_test("this machine has %ld huge pages reserved", n);
	cr_assert_lt(kvcd_pool_create(&p, 0, 4 << 20, KVCD_HUGE_REQUIRE, false), 0);
	cr_assert_eq(mapped, unmapped);
}

Test(os, pool_succeeds_with_real_calls)
{
	struct kvcd_pool p;

	cr_assert_eq(kvcd_pool_create(&p, 0, 4 << 20, KVCD_HUGE_TRY, false), 0);
	cr_assert_not_null(kvcd_alloc(&p.alloc, 1 << 20));
	kvcd_pool_destroy(&p);
	cr_assert_eq(mapped, unmapped);
}

Test(os, session_without_memfd_fails_cleanly)
{
	static struct kvcd d;
	struct kvcd_session s = { .sock = -1, .pidfd = -1 };
	struct kvcp_attach_req req = { .numa_node = -1 };
	int fds[2];

	kvcd_config_defaults(&d.cfg);
	d.topo.nnodes = 1;
	kvcd_os.memfd_create = fail_memfd;
	cr_assert_eq(kvcd_session_create(&d, &req, 1 << 20, &s, fds), -EMFILE);
	cr_assert_eq(fds[0], -1);
	cr_assert_eq(mapped, unmapped);
}

/* Where a session's segments go: the recorder passes each mbind on to the kernel and keeps the
 * node it asked for (a node this machine lacks is refused there, and must cost nothing). */
static int bound_node[8], nbound;
static long (*real_mbind)(void *, unsigned long, int, const unsigned long *, unsigned long,
			  unsigned);

static long record_mbind(void *a, unsigned long l, int m, const unsigned long *n, unsigned long mx,
			 unsigned f)
{
	int node = -1;

	for (unsigned long i = 0; i < mx; i++)
		if (n[i / (8 * sizeof(unsigned long))] >> (i % (8 * sizeof(unsigned long))) & 1) {
			node = (int)i;
			break;
		}
	if (nbound < 8)
		bound_node[nbound++] = m == MPOL_PREFERRED ? node : -2;
	return real_mbind(a, l, m, n, mx, f);
}

/* @cpus: the client's CPUs, those of topology node @on. */
static void cpus_on(const struct kvcd_topo *t, unsigned on, uint64_t cpus[16])
{
	memcpy(cpus, t->cpus[on], 16 * sizeof(uint64_t));
}

static int session_node(struct kvcd *d, const struct kvcp_attach_req *req)
{
	struct kvcd_session s = { .sock = -1, .pidfd = -1 };
	int fds[2];

	nbound = 0;
	cr_assert_eq(kvcd_session_create(d, req, 1 << 20, &s, fds), 0);
	cr_assert_eq(((volatile char *)s.staging)[4095] = 1, 1, "the staging is there");
	close(fds[0]);
	close(fds[1]);
	kvcd_session_destroy(&s);
	cr_assert_eq(nbound, 2, "both segments placed");
	cr_assert_eq(bound_node[0], bound_node[1]);
	return bound_node[1];
}

Test(os, a_session_s_staging_goes_to_its_client_s_or_its_gpu_s_node)
{
	static struct kvcd d;
	struct kvcp_attach_req req = { .numa_node = -1 };

	kvcd_config_defaults(&d.cfg);
	cr_assert_eq(kvcd_topo_load(&d.topo, "pack:2 [numa] core:2 pu:1"), 0);
	d.gpu.status = KVCP_GPU_READY;
	d.gpu.ndev = 2;
	d.gpu.dev[0].numa_node = d.topo.os_index[1];
	d.gpu.dev[1].numa_node = d.topo.os_index[0];
	real_mbind = kvcd_os.mbind;
	kvcd_os.mbind = record_mbind;

	cpus_on(&d.topo, 0, req.cpus);
	cr_assert_eq(session_node(&d, &req), d.topo.os_index[0], "the client's own node");
	req.flags = KVCP_ATTACH_F_GPU;
	cr_assert_eq(session_node(&d, &req), d.topo.os_index[1], "its first GPU's node");
	req.gpu_mask = 1u << 1;
	cr_assert_eq(session_node(&d, &req), d.topo.os_index[0], "the GPU it asked for");
	req.numa_node = d.topo.os_index[1];
	cr_assert_eq(session_node(&d, &req), d.topo.os_index[1], "a node it names wins");

	kvcd_os.mbind = fail_mbind; /* a kernel that places nothing: the attach goes on */
	struct kvcd_session s = { .sock = -1, .pidfd = -1 };
	int fds[2];

	cr_assert_eq(kvcd_session_create(&d, &req, 1 << 20, &s, fds), 0);
	close(fds[0]);
	close(fds[1]);
	kvcd_session_destroy(&s);
	cr_assert_eq(mapped, unmapped);
}
