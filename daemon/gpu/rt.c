/* rt.c - the CUDA driver API loaded at run time, one device opened with the codec kernels,
 * and their launches (rt.h). */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kern.h"
#include "rt.h"

/* Threads per block, and the most blocks a launch asks for along each dimension: the kernels'
 * grid-stride loops do the rest, so a launch's size is bounded whatever the block. */
#define THREADS	   256
#define MAX_BLOCKS 65535u

int kvcg_cu_load(struct kvcg_cu *cu, void **lib, char *why, size_t len)
{
	static const struct {
		const char *sym;
		size_t off;
	} syms[] = {
		{ "cuInit", offsetof(struct kvcg_cu, init) },
		{ "cuDriverGetVersion", offsetof(struct kvcg_cu, driver_version) },
		{ "cuDeviceGetCount", offsetof(struct kvcg_cu, count) },
		{ "cuDeviceGet", offsetof(struct kvcg_cu, get) },
		{ "cuDeviceGetName", offsetof(struct kvcg_cu, name) },
		{ "cuDeviceTotalMem_v2", offsetof(struct kvcg_cu, total_mem) },
		{ "cuDeviceGetPCIBusId", offsetof(struct kvcg_cu, pci_bus_id) },
		{ "cuGetErrorString", offsetof(struct kvcg_cu, error_string) },
		{ "cuDevicePrimaryCtxRetain", offsetof(struct kvcg_cu, primary_retain) },
		{ "cuDevicePrimaryCtxRelease_v2", offsetof(struct kvcg_cu, primary_release) },
		{ "cuCtxSetCurrent", offsetof(struct kvcg_cu, ctx_set) },
		{ "cuCtxSynchronize", offsetof(struct kvcg_cu, ctx_sync) },
		{ "cuModuleLoadData", offsetof(struct kvcg_cu, module_load) },
		{ "cuModuleUnload", offsetof(struct kvcg_cu, module_unload) },
		{ "cuModuleGetFunction", offsetof(struct kvcg_cu, module_function) },
		{ "cuLaunchKernel", offsetof(struct kvcg_cu, launch) },
		{ "cuMemAlloc_v2", offsetof(struct kvcg_cu, mem_alloc) },
		{ "cuMemFree_v2", offsetof(struct kvcg_cu, mem_free) },
		{ "cuMemAllocHost_v2", offsetof(struct kvcg_cu, host_alloc) },
		{ "cuMemFreeHost", offsetof(struct kvcg_cu, host_free) },
		{ "cuMemcpyHtoD_v2", offsetof(struct kvcg_cu, htod) },
		{ "cuMemcpyDtoH_v2", offsetof(struct kvcg_cu, dtoh) },
		{ "cuMemcpyDtoD_v2", offsetof(struct kvcg_cu, dtod) },
		{ "cuMemsetD8_v2", offsetof(struct kvcg_cu, memset8) },
	};

	*lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!*lib) {
		snprintf(why, len, "no CUDA driver: %s", dlerror());
		return -ENOENT;
	}
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		void *f = dlsym(*lib, syms[i].sym);

		if (!f) {
			snprintf(why, len, "libcuda.so.1 lacks %s", syms[i].sym);
			dlclose(*lib);
			*lib = NULL;
			return -ENOSYS;
		}
		memcpy((char *)cu + syms[i].off, &f, sizeof(f));
	}
	return 0;
}

const char *kvcg_cu_err(const struct kvcg_cu *cu, CUresult e, char *buf, size_t len)
{
	const char *s = NULL;

	if (cu->error_string && cu->error_string(e, &s) == 0 && s)
		return s;
	snprintf(buf, len, "CUDA error %d", e);
	return buf;
}

int kvcg_rt_open(struct kvcg_rt *rt, int ordinal, char *why, size_t len)
{
	char err[64];
	CUresult e;
	int n = 0, ret;

	memset(rt, 0, sizeof(*rt));
	rt->dev = -1;
	ret = kvcg_cu_load(&rt->cu, &rt->lib, why, len);
	if (ret)
		return ret;
	if ((e = rt->cu.init(0)) || (e = rt->cu.count(&n))) {
		snprintf(why, len, "the driver: %s", kvcg_cu_err(&rt->cu, e, err, sizeof(err)));
		return -ENODEV;
	}
	if (ordinal < 0 || ordinal >= n) {
		snprintf(why, len, "no CUDA device %d (%d present)", ordinal, n);
		return -ENODEV;
	}
	if ((e = rt->cu.get(&rt->dev, ordinal)) ||
	    (e = rt->cu.name(rt->name, sizeof(rt->name), rt->dev)) ||
	    (e = rt->cu.primary_retain(&rt->ctx, rt->dev)) || (e = rt->cu.ctx_set(rt->ctx))) {
		snprintf(why, len, "device %d: %s", ordinal,
			 kvcg_cu_err(&rt->cu, e, err, sizeof(err)));
		return -ENODEV;
	}
	if (!kvcg_fatbin_size()) {
		snprintf(why, len, "the GPU codecs were not built (no nvcc at build time)");
		return -ENOEXEC;
	}
	if ((e = rt->cu.module_load(&rt->mod, kvcg_fatbin)) ||
	    (e = rt->cu.module_function(&rt->enc_params, rt->mod, "kvcg_encode_params")) ||
	    (e = rt->cu.module_function(&rt->enc_codes, rt->mod, "kvcg_encode_codes")) ||
	    (e = rt->cu.module_function(&rt->dec, rt->mod, "kvcg_decode"))) {
		snprintf(why, len, "device %d (%s): the codec kernels: %s", ordinal, rt->name,
			 kvcg_cu_err(&rt->cu, e, err, sizeof(err)));
		return -ENOEXEC;
	}
	return 0;
}

void kvcg_rt_close(struct kvcg_rt *rt)
{
	if (rt->mod)
		rt->cu.module_unload(rt->mod);
	if (rt->ctx)
		rt->cu.primary_release(rt->dev);
	if (rt->lib)
		dlclose(rt->lib);
	memset(rt, 0, sizeof(*rt));
}

int kvcg_rt_bind(struct kvcg_rt *rt)
{
	return rt->cu.ctx_set(rt->ctx) ? -EIO : 0;
}

/* A grid of one row per unit (up to the limit of y; the kernels stride over the rest) and as
 * many columns as the largest unit has items for @items. */
static int launch(struct kvcg_rt *rt, CUfunction f, const struct kvcg_job *j,
		  uint32_t (*items)(const struct kvcg_job *, uint32_t), CUstream s, void **params)
{
	uint32_t most = items(j, 0) > items(j, 1) ? items(j, 0) : items(j, 1);
	uint64_t gx = ((uint64_t)most + THREADS - 1) / THREADS, gy = kvcg_units(j);

	if (!most)
		return 0;
	gx = gx < MAX_BLOCKS ? gx : MAX_BLOCKS;
	gy = gy < MAX_BLOCKS ? gy : MAX_BLOCKS;
	return rt->cu.launch(f, (unsigned)gx, (unsigned)gy, 1, THREADS, 1, 1, 0, s, params, NULL)
		       ? -EIO
		       : 0;
}

int kvcg_encode(struct kvcg_rt *rt, const struct kvcg_job *j, CUdeviceptr raw, CUdeviceptr dst,
		CUdeviceptr err, CUstream s)
{
	struct kvcg_job job = *j;
	void *p1[] = { &job, &raw, &dst, &err }, *p2[] = { &job, &raw, &dst };

	if (rt->cu.memset8(err, 0, sizeof(int)))
		return -EIO;
	if (launch(rt, rt->enc_params, j, kvcg_enc1_items, s, p1))
		return -EIO;
	/* the stream orders phase 2 after phase 1: codes read the parameters it wrote */
	return launch(rt, rt->enc_codes, j, kvcg_enc2_items, s, p2);
}

int kvcg_decode(struct kvcg_rt *rt, const struct kvcg_job *j, CUdeviceptr in, CUdeviceptr raw,
		CUstream s)
{
	struct kvcg_job job = *j;
	void *p[] = { &job, &in, &raw };

	return launch(rt, rt->dec, j, kvcg_dec_items, s, p);
}
