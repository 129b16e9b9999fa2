/* gpu.c - libkvcclient's side of GPU staging: import the allocations kvcd exports (one POSIX fd
 * per device) and map them into this process, at the same address across re-attaches.
 *
 * The CUDA driver (libcuda.so.1) is loaded with dlopen the first time a client asks for GPU
 * access, so the library has no CUDA dependency and a client that does not ask never touches
 * it. The driver's types and constants are in gpu.h.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "gpu.h"

static struct {
	int (*init)(unsigned);
	int (*by_pci)(int *dev, const char *pci);
	int (*get)(int *dev, int ordinal);
	int (*import)(unsigned long long *h, void *os_handle, int type);
	int (*reserve)(unsigned long long *p, size_t size, size_t align, unsigned long long addr,
		       unsigned long long flags);
	int (*free_va)(unsigned long long p, size_t size);
	int (*map)(unsigned long long p, size_t size, size_t off, unsigned long long h,
		   unsigned long long flags);
	int (*unmap)(unsigned long long p, size_t size);
	int (*access)(unsigned long long p, size_t size, const struct kvcc_access_desc *d,
		      size_t count);
	int (*release)(unsigned long long h);
	int (*error)(int e, const char **s);
	int (*retain)(void **ctx, int dev);
	int (*release_ctx)(int dev);
	int (*push)(void *ctx);
	int (*pop)(void **ctx);
	int (*htod)(unsigned long long dst, const void *src, size_t n);
	int loaded; /* 1: ready, < 0: -errno of the failure */
} cu;

static void load(void)
{
	static const struct {
		const char *sym;
		void **fn;
	} syms[] = {
		{ "cuInit", (void **)&cu.init },
		{ "cuDeviceGetByPCIBusId", (void **)&cu.by_pci },
		{ "cuDeviceGet", (void **)&cu.get },
		{ "cuMemImportFromShareableHandle", (void **)&cu.import },
		{ "cuMemAddressReserve", (void **)&cu.reserve },
		{ "cuMemAddressFree", (void **)&cu.free_va },
		{ "cuMemMap", (void **)&cu.map },
		{ "cuMemUnmap", (void **)&cu.unmap },
		{ "cuMemSetAccess", (void **)&cu.access },
		{ "cuMemRelease", (void **)&cu.release },
		{ "cuGetErrorString", (void **)&cu.error },
		{ "cuDevicePrimaryCtxRetain", (void **)&cu.retain },
		{ "cuDevicePrimaryCtxRelease_v2", (void **)&cu.release_ctx },
		{ "cuCtxPushCurrent_v2", (void **)&cu.push },
		{ "cuCtxPopCurrent_v2", (void **)&cu.pop },
		{ "cuMemcpyHtoD_v2", (void **)&cu.htod },
	};
	void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);

	if (!lib) {
		cu.loaded = -ENODEV;
		return;
	}
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		void *f = dlsym(lib, syms[i].sym);

		if (!f) {
			cu.loaded = -ENOSYS;
			return;
		}
		memcpy(syms[i].fn, &f, sizeof(f));
	}
	cu.loaded = cu.init(0) ? -ENODEV : 1;
}

static int ready(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, load);
	return cu.loaded == 1 ? 0 : cu.loaded;
}

/* Import and map with the device's primary context pushed (the calls want a context; the
 * primary one is the one CUDA runtimes and PyTorch use), the caller's own left as it was. */
static int map_in_context(struct kvcc_gpu *g, const struct kvcp_attach_gpu_dev *d, int fd, int dev)
{
	struct kvcc_access_desc acc = { .location = { KVCC_LOC_DEVICE, 0 },
					.flags = KVCC_ACCESS_RW };
	unsigned long long h = 0;

	if (g->va && d->size != g->size)
		return -EPROTO; /* the new daemon grants another size: the address cannot stay */
	if (cu.import(&h, (void *)(uintptr_t)fd, KVCC_HANDLE_POSIX_FD))
		return -EBADF;
	if (!g->va && cu.reserve(&g->va, d->size, 0, 0, 0)) {
		g->va = 0;
		cu.release(h);
		return -ENOMEM;
	}
	g->size = d->size;
	acc.location.id = dev;
	if (cu.map(g->va, d->size, 0, h, 0)) {
		cu.release(h);
		return -ENOMEM;
	}
	if (cu.access(g->va, d->size, &acc, 1)) {
		cu.unmap(g->va, d->size);
		cu.release(h);
		return -EACCES;
	}
	g->handle = h;
	g->mapped = 1;
	return 0;
}

int kvcc_gpu_map(struct kvcc_gpu *g, const struct kvcp_attach_gpu_dev *d, int fd)
{
	char pci[sizeof(d->pci) + 1];
	void *ctx = NULL, *popped;
	int err = ready(), dev;

	if (err)
		return err;
	memcpy(pci, d->pci, sizeof(d->pci));
	pci[sizeof(d->pci)] = '\0';
	if (cu.by_pci(&dev, pci))
		return -ENXIO; /* a device this process cannot see (CUDA_VISIBLE_DEVICES) */
	if (!g->ctx) {
		if (cu.retain(&ctx, dev))
			return -ENODEV;
		g->ctx = ctx;
		g->device = dev;
	}
	if (cu.push(g->ctx))
		return -ENODEV;
	err = map_in_context(g, d, fd, dev);
	cu.pop(&popped);
	g->index = d->index;
	return err;
}

void kvcc_gpu_unmap(struct kvcc_gpu *g, int keep_va)
{
	void *popped;

	if (!g->ctx)
		return;
	cu.push(g->ctx);
	if (g->mapped) {
		cu.unmap(g->va, g->size);
		cu.release(g->handle);
		g->mapped = 0;
	}
	if (!keep_va && g->va) {
		cu.free_va(g->va, g->size);
		g->va = 0;
		g->size = 0;
	}
	cu.pop(&popped);
	if (!keep_va) {
		cu.release_ctx(g->device);
		g->ctx = NULL;
	}
}

int kvcc_gpu_htod(struct kvcc_gpu *g, uint64_t off, const void *src, size_t n)
{
	void *popped;
	int err;

	if (!g->mapped || off > g->size || n > g->size - off || cu.push(g->ctx))
		return -EINVAL;
	err = cu.htod(g->va + off, src, n) ? -EIO : 0;
	cu.pop(&popped);
	return err;
}

int kvcc_gpu_device(int ordinal, int *dev)
{
	int err = ready();

	if (err)
		return err;
	return cu.get(dev, ordinal) ? -ENODEV : 0;
}
