/* rt.h - the CUDA driver API as kvcd uses it, loaded at run time, and the GPU codec kernels
 * launched through it.
 *
 * libcuda.so.1 is dlopen'ed (no link-time CUDA dependency: kvcd and everything linked with
 * this starts where there is no driver). The driver's types are declared here as its ABI has
 * them, so cuda.h is not needed to build. The kernels' fatbin is embedded at build time when
 * nvcc was found (fatbin.c); without it the codec calls return -ENOEXEC.
 */
#ifndef KVCG_RT_H
#define KVCG_RT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../codec/gpujob.h"

typedef int CUresult; /* CUDA_SUCCESS == 0 */
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;

/* The driver entry points, resolved all or none. */
struct kvcg_cu {
	CUresult (*init)(unsigned flags);
	CUresult (*driver_version)(int *v);
	CUresult (*count)(int *n);
	CUresult (*get)(CUdevice *d, int ordinal);
	CUresult (*name)(char *name, int len, CUdevice d);
	CUresult (*total_mem)(size_t *bytes, CUdevice d);
	CUresult (*pci_bus_id)(char *id, int len, CUdevice d);
	CUresult (*error_string)(CUresult e, const char **s);
	CUresult (*primary_retain)(CUcontext *c, CUdevice d);
	CUresult (*primary_release)(CUdevice d);
	CUresult (*ctx_set)(CUcontext c);
	CUresult (*ctx_sync)(void);
	CUresult (*module_load)(CUmodule *m, const void *image);
	CUresult (*module_unload)(CUmodule m);
	CUresult (*module_function)(CUfunction *f, CUmodule m, const char *name);
	CUresult (*launch)(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
			   unsigned by, unsigned bz, unsigned shared, CUstream s, void **params,
			   void **extra);
	CUresult (*mem_alloc)(CUdeviceptr *p, size_t bytes);
	CUresult (*mem_free)(CUdeviceptr p);
	CUresult (*host_alloc)(void **p, size_t bytes); /* pinned */
	CUresult (*host_free)(void *p);
	CUresult (*htod)(CUdeviceptr dst, const void *src, size_t bytes);
	CUresult (*dtoh)(void *dst, CUdeviceptr src, size_t bytes);
	CUresult (*dtod)(CUdeviceptr dst, CUdeviceptr src, size_t bytes);
	CUresult (*memset8)(CUdeviceptr dst, unsigned char v, size_t n);
};

/* Load the driver: 0 with @cu filled and *@lib the handle (dlclose it), or -ENOENT (no
 * libcuda.so.1) / -ENOSYS (it lacks an entry point) with the reason in @why. */
int kvcg_cu_load(struct kvcg_cu *cu, void **lib, char *why, size_t len);
/* The driver's words for @e, or "CUDA error N" in @buf. */
const char *kvcg_cu_err(const struct kvcg_cu *cu, CUresult e, char *buf, size_t len);

/* The embedded fatbin (fatbin.c): its bytes, and 0 when nvcc was not found at build time. */
extern const unsigned char kvcg_fatbin[];
size_t kvcg_fatbin_size(void);

/* One device, made current on the calling thread, with the kernels loaded. */
struct kvcg_rt {
	struct kvcg_cu cu;
	void *lib;
	CUdevice dev;
	CUcontext ctx;
	CUmodule mod;
	CUfunction enc_params, enc_codes, dec;
	char name[96];
};

/* Open device @ordinal: 0, -ENOENT (no driver), -ENODEV (no such device, or the driver
 * cannot be initialised), -ENOEXEC (no fatbin built in, or it has nothing for this device),
 * with the reason in @why. kvcg_rt_close releases what an open took, also half-way. */
int kvcg_rt_open(struct kvcg_rt *rt, int ordinal, char *why, size_t len);
void kvcg_rt_close(struct kvcg_rt *rt);
/* Make @rt's device current on this thread (each thread that calls into it must). */
int kvcg_rt_bind(struct kvcg_rt *rt);

/* Encode the raw block at @raw (device memory, aligned to its element size) into @dst as @j
 * describes, the header excluded (the caller copies kvcd_codec_gpu_header's bytes to @dst).
 * @err: one device int, set to 0 here; after the stream's work it holds 0, -EINVAL or
 * -ERANGE (the block needs the CPU codec's answer). Asynchronous on @s; returns 0 or -EIO
 * when a launch fails. */
int kvcg_encode(struct kvcg_rt *rt, const struct kvcg_job *j, CUdeviceptr raw, CUdeviceptr dst,
		CUdeviceptr err, CUstream s);
/* Decode the encoded block at @in (as @j, from kvcd_codec_gpu_read) into @raw. */
int kvcg_decode(struct kvcg_rt *rt, const struct kvcg_job *j, CUdeviceptr in, CUdeviceptr raw,
		CUstream s);

#endif /* KVCG_RT_H */
