/* pool.c - pinned host memory, one pool per NUMA node.
 *
 * The pool is private to the daemon (clients never map it): anonymous memory, huge pages
 * when available, bound to its node with mbind before the first touch, MADV_DONTFORK so a
 * fork never copies it, and mlock'ed, which prefaults every page on the bound node. A GPU
 * pool is another domain kind beside these (enum kvcd_domain_kind); the store only sees
 * kvcd_pool.
 */
#include <errno.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "kvcd.h"

#define HUGE_2M (2ull << 20)

static void *map_pool(size_t size, int hugepages, bool *huge)
{
	void *p = MAP_FAILED;

	*huge = false;
	if (hugepages != KVCD_HUGE_NEVER && size % HUGE_2M == 0) {
		p = kvcd_os.mmap(NULL, size, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		*huge = p != MAP_FAILED;
	}
	if (p == MAP_FAILED && hugepages != KVCD_HUGE_REQUIRE) {
		p = kvcd_os.mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				 -1, 0);
		if (p != MAP_FAILED && hugepages == KVCD_HUGE_TRY)
			kvcd_os.madvise(p, size,
					MADV_HUGEPAGE); /* transparent huge pages, best effort */
	}
	return p;
}

static void memlock_advice(size_t size, int err)
{
	struct rlimit rl = { 0, 0 };

	getrlimit(RLIMIT_MEMLOCK, &rl);
	fprintf(stderr,
		"kvcd: cannot lock %zu MiB of pool memory in RAM (%s); RLIMIT_MEMLOCK is %s%llu KiB. "
		"Raise it (LimitMEMLOCK=infinity in kvcd.service, `ulimit -l unlimited`, or "
		"memlock in /etc/security/limits.conf), grant CAP_IPC_LOCK, or lower pool_size.\n",
		size >> 20, strerror(err), rl.rlim_cur == RLIM_INFINITY ? "unlimited, " : "",
		rl.rlim_cur == RLIM_INFINITY ? 0ull : (unsigned long long)rl.rlim_cur >> 10);
}

int kvcd_pool_create(struct kvcd_pool *p, int node, size_t size, int hugepages, bool bind)
{
	unsigned long mask[KVCD_MAX_NODES * 64 / (8 * sizeof(unsigned long)) + 64] = { 0 };
	int err;

	memset(p, 0, sizeof(*p));
	p->kind = KVCD_DOMAIN_HOST;
	p->node = node;
	p->size = size;
	p->base = map_pool(size, hugepages, &p->huge);
	if (p->base == MAP_FAILED) {
		err = -errno;
		fprintf(stderr, "kvcd: cannot map %zu MiB for node %d%s: %s\n", size >> 20, node,
			hugepages == KVCD_HUGE_REQUIRE
				? " with huge pages (hugepages=require; "
				  "reserve them in /proc/sys/vm/nr_hugepages)"
				: "",
			strerror(-err));
		p->base = NULL;
		return err;
	}
	if (bind && node >= 0 && (size_t)node < sizeof(mask) * 8) {
		mask[node / (8 * sizeof(unsigned long))] |= 1ul
							    << (node % (8 * sizeof(unsigned long)));
		if (kvcd_os.mbind(p->base, size, MPOL_BIND, mask, sizeof(mask) * 8, 0)) {
			err = -errno;
			fprintf(stderr, "kvcd: cannot bind pool to NUMA node %d: %s\n", node,
				strerror(-err));
			goto out_unmap;
		}
	}
	if (kvcd_os.madvise(p->base, size, MADV_DONTFORK)) {
		err = -errno;
		fprintf(stderr, "kvcd: madvise(MADV_DONTFORK) failed: %s\n", strerror(-err));
		goto out_unmap;
	}
	if (kvcd_os.mlock(p->base, size)) { /* faults every page in, on the bound node */
		err = -errno;
		memlock_advice(size, -err);
		goto out_unmap;
	}
	err = kvcd_alloc_init(&p->alloc, p->base, size);
	if (err) {
		fprintf(stderr, "kvcd: pool of %zu bytes is too small\n", size);
		goto out_unmap;
	}
	return 0;
out_unmap:
	kvcd_os.munmap(p->base, size);
	p->base = NULL;
	return err;
}

void kvcd_pool_destroy(struct kvcd_pool *p)
{
	if (p->base)
		kvcd_os.munmap(p->base, p->size);
	p->base = NULL;
}
