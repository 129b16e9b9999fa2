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
		{ "cuMemsetD8Async", offsetof(struct kvcg_cu, memset8_async) },
		{ "cuDeviceGetAttribute", offsetof(struct kvcg_cu, attribute) },
		{ "cuStreamCreate", offsetof(struct kvcg_cu, stream_create) },
		{ "cuStreamDestroy_v2", offsetof(struct kvcg_cu, stream_destroy) },
		{ "cuStreamSynchronize", offsetof(struct kvcg_cu, stream_sync) },
		{ "cuMemcpyHtoDAsync_v2", offsetof(struct kvcg_cu, htod_async) },
		{ "cuMemcpyDtoHAsync_v2", offsetof(struct kvcg_cu, dtoh_async) },
		{ "cuMemcpyDtoDAsync_v2", offsetof(struct kvcg_cu, dtod_async) },
		{ "cuMemHostRegister_v2", offsetof(struct kvcg_cu, host_register) },
		{ "cuMemHostUnregister", offsetof(struct kvcg_cu, host_unregister) },
		{ "cuMemGetAllocationGranularity", offsetof(struct kvcg_cu, mem_granularity) },
		{ "cuMemCreate", offsetof(struct kvcg_cu, mem_create) },
		{ "cuMemRelease", offsetof(struct kvcg_cu, mem_release) },
		{ "cuMemExportToShareableHandle", offsetof(struct kvcg_cu, mem_export) },
		{ "cuMemAddressReserve", offsetof(struct kvcg_cu, va_reserve) },
		{ "cuMemAddressFree", offsetof(struct kvcg_cu, va_free) },
		{ "cuMemMap", offsetof(struct kvcg_cu, mem_map) },
		{ "cuMemUnmap", offsetof(struct kvcg_cu, mem_unmap) },
		{ "cuMemSetAccess", offsetof(struct kvcg_cu, mem_set_access) },
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

int kvcg_dev_open(const struct kvcg_cu *cu, int ordinal, struct kvcg_dev *dv, char *why, size_t len)
{
	char err[64];
	CUresult e;
	int n = 0;

	memset(dv, 0, sizeof(*dv));
	dv->ordinal = ordinal;
	if ((e = cu->count(&n))) {
		snprintf(why, len, "the driver: %s", kvcg_cu_err(cu, e, err, sizeof(err)));
		return -ENODEV;
	}
	if (ordinal < 0 || ordinal >= n) {
		snprintf(why, len, "no CUDA device %d (%d present)", ordinal, n);
		return -ENODEV;
	}
	if ((e = cu->get(&dv->dev, ordinal)) ||
	    (e = cu->name(dv->name, sizeof(dv->name), dv->dev)) ||
	    (e = cu->primary_retain(&dv->ctx, dv->dev)) || (e = cu->ctx_set(dv->ctx))) {
		snprintf(why, len, "device %d: %s", ordinal, kvcg_cu_err(cu, e, err, sizeof(err)));
		return -ENODEV;
	}
	if (!kvcg_fatbin_size())
		snprintf(dv->codec_why, sizeof(dv->codec_why),
			 "the GPU codecs were not built (no nvcc at build time)");
	else if ((e = cu->module_load(&dv->mod, kvcg_fatbin)) ||
		 (e = cu->module_function(&dv->enc_params, dv->mod, "kvcg_encode_params")) ||
		 (e = cu->module_function(&dv->enc_codes, dv->mod, "kvcg_encode_codes")) ||
		 (e = cu->module_function(&dv->dec, dv->mod, "kvcg_decode"))) {
		snprintf(dv->codec_why, sizeof(dv->codec_why), "the codec kernels: %s",
			 kvcg_cu_err(cu, e, err, sizeof(err)));
		if (dv->mod)
			cu->module_unload(dv->mod);
		dv->mod = NULL;
	}
	return 0;
}

void kvcg_dev_close(const struct kvcg_cu *cu, struct kvcg_dev *dv)
{
	if (dv->mod)
		cu->module_unload(dv->mod);
	if (dv->ctx)
		cu->primary_release(dv->dev);
	dv->mod = NULL;
	dv->ctx = NULL;
}

int kvcg_dev_bind(const struct kvcg_cu *cu, const struct kvcg_dev *dv)
{
	return cu->ctx_set(dv->ctx) ? -EIO : 0;
}

int kvcg_rt_open(struct kvcg_rt *rt, int ordinal, char *why, size_t len)
{
	char err[64];
	CUresult e;
	int ret;

	memset(rt, 0, sizeof(*rt));
	ret = kvcg_cu_load(&rt->cu, &rt->lib, why, len);
	if (ret)
		return ret;
	if ((e = rt->cu.init(0))) {
		snprintf(why, len, "cuInit: %s", kvcg_cu_err(&rt->cu, e, err, sizeof(err)));
		return -ENODEV;
	}
	ret = kvcg_dev_open(&rt->cu, ordinal, &rt->d, why, len);
	if (ret)
		return ret;
	if (!rt->d.mod) {
		snprintf(why, len, "device %d (%s): %s", ordinal, rt->d.name, rt->d.codec_why);
		return -ENOEXEC;
	}
	return 0;
}

void kvcg_rt_close(struct kvcg_rt *rt)
{
	if (rt->lib) {
		kvcg_dev_close(&rt->cu, &rt->d);
		dlclose(rt->lib);
	}
	memset(rt, 0, sizeof(*rt));
}

/* A grid of one row per unit (up to the limit of y; the kernels stride over the rest) and as
 * many columns as the largest unit has items for @items. */
static int launch(const struct kvcg_cu *cu, CUfunction f, const struct kvcg_job *j,
		  uint32_t (*items)(const struct kvcg_job *, uint32_t), CUstream s, void **params)
{
	uint32_t most = items(j, 0) > items(j, 1) ? items(j, 0) : items(j, 1);
	uint64_t gx = ((uint64_t)most + THREADS - 1) / THREADS, gy = kvcg_units(j);

	if (!most)
		return 0;
	gx = gx < MAX_BLOCKS ? gx : MAX_BLOCKS;
	gy = gy < MAX_BLOCKS ? gy : MAX_BLOCKS;
	return cu->launch(f, (unsigned)gx, (unsigned)gy, 1, THREADS, 1, 1, 0, s, params, NULL)
		       ? -EIO
		       : 0;
}

int kvcg_encode(const struct kvcg_cu *cu, const struct kvcg_dev *dv, const struct kvcg_job *j,
		CUdeviceptr raw, CUdeviceptr dst, CUdeviceptr err, CUstream s)
{
	struct kvcg_job job = *j;
	void *p1[] = { &job, &raw, &dst, &err }, *p2[] = { &job, &raw, &dst };

	if (!dv->mod)
		return -ENOEXEC;
	if (cu->memset8_async(err, 0, sizeof(int), s))
		return -EIO;
	if (launch(cu, dv->enc_params, j, kvcg_enc1_items, s, p1))
		return -EIO;
	/* the stream orders phase 2 after phase 1: codes read the parameters it wrote */
	return launch(cu, dv->enc_codes, j, kvcg_enc2_items, s, p2);
}

int kvcg_decode(const struct kvcg_cu *cu, const struct kvcg_dev *dv, const struct kvcg_job *j,
		CUdeviceptr in, CUdeviceptr raw, CUstream s)
{
	struct kvcg_job job = *j;
	void *p[] = { &job, &in, &raw };

	if (!dv->mod)
		return -ENOEXEC;
	return launch(cu, dv->dec, j, kvcg_dec_items, s, p);
}
