/* pool.c - pinned host memory, one pool per NUMA node.
 *
 * The pool is private to the daemon (clients never map it): a shared file, so that it can
 * outlive this process (a memfd kvcd hands to systemd's file descriptor store, or a file in
 * the state directory on tmpfs or hugetlbfs), huge pages when available, bound to its node
 * with mbind before the first touch, MADV_DONTFORK so a fork never copies it, and mlock'ed,
 * which prefaults every page on the bound node. Its first KVCD_SB_BYTES are the superblock
 * (format version, size, namespace names); a GPU pool is another domain kind beside these
 * (enum kvcd_domain_kind); the store only sees kvcd_pool.
 */
#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvcd.h"

#define HUGE_2M (2ull << 20)

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21u << 26) /* log2 of the page size, in MFD_HUGE_SHIFT's bits */
#endif

/* A new memfd of @size, mapped at *@map: hugetlb-backed when asked and available (hugetlb
 * pages are reserved at mmap, so that is where their absence shows). Returns the fd or -1. */
static int pool_memfd(size_t size, int hugepages, bool *huge, void **map)
{
	for (int h = hugepages != KVCD_HUGE_NEVER && size % HUGE_2M == 0; h >= 0; h--) {
		int fd;

		if (!h && hugepages == KVCD_HUGE_REQUIRE)
			break;
		fd = kvcd_os.memfd_create("kvcd-pool",
					  MFD_CLOEXEC | (h ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
		if (fd < 0)
			continue;
		if (kvcd_os.ftruncate(fd, (off_t)size) == 0) {
			*map = kvcd_os.mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (*map != MAP_FAILED) {
				*huge = h;
				return fd;
			}
		}
		close(fd);
	}
	return -1;
}

/* The state directory's file for the pool: reused when it has the pool's size, else made
 * so (its contents are then not adopted: the superblock will not match). */
static int pool_file(const char *path, size_t size, bool *huge)
{
	struct stat st;
	char dir[256];
	int fd;

	*huge = false;
	snprintf(dir, sizeof(dir), "%s", path); /* the directory, made if absent */
	if (strrchr(dir, '/')) {
		*strrchr(dir, '/') = '\0';
		if (dir[0] && mkdir(dir, 0700) && errno != EEXIST)
			return -1;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) || ((size_t)st.st_size != size && kvcd_os.ftruncate(fd, (off_t)size))) {
		close(fd);
		return -1;
	}
	*huge = st.st_blksize >= (blksize_t)HUGE_2M; /* hugetlbfs reports its page size */
	return fd;
}

static bool sb_intact(const struct kvcd_pool *p)
{
	struct kvcd_sb *sb = p->base;
	uint64_t sum = sb->sum, got;

	if (memcmp(sb->magic, KVCD_SB_MAGIC, 8))
		return false;
	if (sb->version != KVCD_SB_VERSION || sb->sb_bytes != KVCD_SB_BYTES ||
	    sb->size != p->size) {
		kvcd_log(LOG_WARNING,
			 "pool %u: format %u of %llu bytes, this kvcd writes format %u of %zu: "
			 "starting it empty",
			 p->index, sb->version, (unsigned long long)sb->size, KVCD_SB_VERSION,
			 p->size);
		return false;
	}
	sb->sum = 0;
	got = XXH3_64bits(sb, sizeof(*sb));
	sb->sum = sum;
	if (got != sum)
		kvcd_log(LOG_WARNING, "pool %u: superblock checksum mismatch: starting it empty",
			 p->index);
	return got == sum;
}

static void sb_seal(struct kvcd_sb *sb)
{
	sb->sum = 0;
	sb->sum = XXH3_64bits(sb, sizeof(*sb));
}

void kvcd_pool_format(struct kvcd_pool *p)
{
	struct kvcd_sb *sb = p->base;

	memset(sb, 0, sizeof(*sb));
	/* the arena first: a crash between the two leaves no superblock, so no adoption */
	kvcd_alloc_init(&p->alloc, (char *)p->base + KVCD_SB_BYTES, p->size - KVCD_SB_BYTES);
	memcpy(sb->magic, KVCD_SB_MAGIC, 8);
	sb->version = KVCD_SB_VERSION;
	sb->sb_bytes = KVCD_SB_BYTES;
	sb->size = p->size;
	sb->node = p->node;
	sb->index = p->index;
	sb_seal(sb);
	p->warm = false;
}

void kvcd_pool_set_names(struct kvcd_pool *p, const char (*names)[KVCP_NS_MAX], unsigned n)
{
	struct kvcd_sb *sb = p->base;

	memset(sb->ns, 0, sizeof(sb->ns));
	memcpy(sb->ns, names, (n < 256 ? n : 256) * sizeof(sb->ns[0]));
	sb_seal(sb);
}

static void memlock_advice(size_t size, int err)
{
	struct rlimit rl = { 0, 0 };

	getrlimit(RLIMIT_MEMLOCK, &rl);
	kvcd_log(LOG_ERR,
		 "cannot lock %zu MiB of pool memory in RAM (%s); RLIMIT_MEMLOCK is %s%llu KiB. "
		 "Raise it (LimitMEMLOCK=infinity in kvcd.service, `ulimit -l unlimited`, or "
		 "memlock in /etc/security/limits.conf), grant CAP_IPC_LOCK, or lower pool_size.",
		 size >> 20, strerror(err), rl.rlim_cur == RLIM_INFINITY ? "unlimited, " : "",
		 rl.rlim_cur == RLIM_INFINITY ? 0ull : (unsigned long long)rl.rlim_cur >> 10);
}

int kvcd_pool_open(struct kvcd_pool *p, unsigned index, int node, size_t size, int hugepages,
		   bool bind, bool lock_try, int fd, const char *path)
{
	struct stat st;
	int err;

	memset(p, 0, sizeof(*p));
	p->kind = KVCD_DOMAIN_HOST;
	p->node = node;
	p->index = index;
	p->size = size;
	p->fd = -1;
	if (size <= KVCD_SB_BYTES + (1u << 16))
		return -EINVAL;
	p->base = MAP_FAILED;
	if (fd >= 0) /* handed back to us: its size is what it is */
		p->fd = fstat(fd, &st) == 0 && (size_t)st.st_size == size ? fd : -1;
	else if (path)
		p->fd = pool_file(path, size, &p->huge);
	else
		p->fd = pool_memfd(size, hugepages, &p->huge, &p->base);
	if (p->fd < 0) {
		err = fd >= 0 ? -EINVAL : -errno;
		kvcd_log(LOG_ERR, "cannot make the %zu MiB pool for node %d%s%s: %s", size >> 20,
			 node, path ? " in " : "", path ? path : "",
			 fd >= 0 ? "the descriptor handed back has another size"
			 : hugepages == KVCD_HUGE_REQUIRE
				 ? "huge pages required (hugepages=require; reserve them in "
				   "/proc/sys/vm/nr_hugepages)"
				 : strerror(-err));
		return err;
	}
	if (p->base == MAP_FAILED)
		p->base = kvcd_os.mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
	if (p->base == MAP_FAILED) {
		err = -errno;
		kvcd_log(LOG_ERR, "cannot map %zu MiB for node %d: %s", size >> 20, node,
			 strerror(-err));
		p->base = NULL;
		goto out_close;
	}
	if (!p->huge && hugepages == KVCD_HUGE_TRY)
		kvcd_os.madvise(p->base, size, MADV_HUGEPAGE); /* transparent huge pages, if any */
	if (bind && node >= 0 && kvcd_mbind_node(p->base, size, MPOL_BIND, node)) {
		err = -errno;
		kvcd_log(LOG_ERR, "cannot bind pool to NUMA node %d: %s", node, strerror(-err));
		goto out_unmap;
	}
	if (kvcd_os.madvise(p->base, size, MADV_DONTFORK)) {
		err = -errno;
		kvcd_log(LOG_ERR, "madvise(MADV_DONTFORK) failed: %s", strerror(-err));
		goto out_unmap;
	}
	if (kvcd_os.mlock(p->base, size)) { /* faults every page in, on the bound node */
		err = -errno;
		if (!lock_try) {
			memlock_advice(size, -err);
			goto out_unmap;
		}
		/* where the kernel will not lock (a sandbox): the pool works, and may be paged
		 * out; its pages are still made now, on the bound node */
		kvcd_log(LOG_WARNING,
			 "node %d: the %zu MiB pool is not locked in RAM (%s; memlock = try): the "
			 "kernel may page it out",
			 node, size >> 20, strerror(-err));
		kvcd_os.madvise(p->base, size, MADV_POPULATE_WRITE);
	}
	p->warm = sb_intact(p);
	return 0;
out_unmap:
	kvcd_os.munmap(p->base, size);
	p->base = NULL;
out_close:
	if (fd < 0)
		close(p->fd);
	p->fd = -1;
	return err;
}

int kvcd_pool_create(struct kvcd_pool *p, int node, size_t size, int hugepages, bool bind)
{
	int err = kvcd_pool_open(p, 0, node, size, hugepages, bind, false, -1, NULL);

	if (!err)
		kvcd_pool_format(p);
	return err;
}

void kvcd_pool_destroy(struct kvcd_pool *p)
{
	if (p->base)
		kvcd_os.munmap(p->base, p->size);
	if (p->fd >= 0)
		close(p->fd);
	p->base = NULL;
	p->fd = -1;
}
