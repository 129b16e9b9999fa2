/* os_linux.c - the raw Linux calls kvcd makes on memory, futexes and processes.
 *
 * Memory calls go through the kvcd_os table so that a test can replace one entry and watch
 * the daemon fail cleanly (no memlock, no huge pages, no memfd).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kvcd.h"

static long sys_mbind(void *addr, unsigned long len, int mode, const unsigned long *nodemask,
		      unsigned long maxnode, unsigned flags)
{
	return mbind(addr, len, mode, nodemask, maxnode, flags);
}

static int sys_memfd_create(const char *name, unsigned flags)
{
	return memfd_create(name, flags);
}

struct kvcd_os kvcd_os = {
	.mmap = mmap,
	.munmap = munmap,
	.mlock = mlock,
	.madvise = madvise,
	.mbind = sys_mbind,
	.memfd_create = sys_memfd_create,
	.ftruncate = ftruncate,
	.fallocate = fallocate,
};

int kvcd_pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int kvcd_futex_waitv(struct futex_waitv *w, unsigned n, uint64_t abs_ns)
{
	struct timespec ts = { (time_t)(abs_ns / 1000000000ull), (long)(abs_ns % 1000000000ull) };

	return (int)syscall(SYS_futex_waitv, w, n, 0, &ts, CLOCK_MONOTONIC);
}

int kvcd_mbind_node(void *addr, size_t len, int mode, int node)
{
	unsigned long mask[8192 / (8 * sizeof(unsigned long))] = { 0 }; /* the kernel's limit */

	if (node < 0 || (size_t)node >= sizeof(mask) * 8) {
		errno = EINVAL;
		return -1;
	}
	mask[node / (8 * sizeof(unsigned long))] |= 1ul << (node % (8 * sizeof(unsigned long)));
	return (int)kvcd_os.mbind(addr, len, mode, mask, sizeof(mask) * 8, 0);
}

int kvcd_futex_wait(uint32_t *uaddr, uint32_t val, uint64_t rel_ns)
{
	struct timespec ts = { (time_t)(rel_ns / 1000000000u), (long)(rel_ns % 1000000000u) };

	return (int)syscall(SYS_futex, uaddr, FUTEX_WAIT_PRIVATE, val, &ts, NULL, 0);
}

int kvcd_futex_wake(uint32_t *uaddr, int n, bool shared)
{
	return (int)syscall(SYS_futex, uaddr, shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, n, NULL,
			    NULL, 0);
}

/* CAP_IPC_LOCK (bit 14) in the effective set lifts RLIMIT_MEMLOCK. */
bool kvcd_has_cap_ipc_lock(void)
{
	char line[256];
	unsigned long long eff = 0;
	FILE *f = fopen("/proc/self/status", "re");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &eff) == 1)
			break;
	fclose(f);
	return eff & (1ull << 14);
}

uint64_t kvcd_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
