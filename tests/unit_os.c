/* unit_os.c - failure injection through the kvcd_os table: a pool that cannot be locked or
 * bound, or a memfd that cannot be made, fails with an error and leaks no mapping. */
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
