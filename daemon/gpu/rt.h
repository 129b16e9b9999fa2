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

#ifndef __cuda_cuda_h__ /* the same types as cuda.h's, which tests/unit_gpuabi.c includes */
typedef int CUresult;	/* CUDA_SUCCESS == 0 */
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUmemGenericAllocationHandle;
#endif

/* The virtual memory management API's structs and constants, as cuda.h has them
 * (tests/unit_gpuabi.c checks every one against cuda.h where the toolkit is installed). */
struct kvcg_mem_location {
	int type; /* KVCG_MEM_LOCATION_DEVICE */
	int id;	  /* the device ordinal */
};

struct kvcg_mem_prop {	  /* CUmemAllocationProp */
	int type;	  /* KVCG_MEM_ALLOCATION_PINNED */
	int handle_types; /* KVCG_MEM_HANDLE_POSIX_FD */
	struct kvcg_mem_location location;
	void *win32_meta; /* NULL */
	unsigned char compression, rdma_capable;
	unsigned short usage;
	unsigned char reserved[4];
};

struct kvcg_mem_access { /* CUmemAccessDesc */
	struct kvcg_mem_location location;
	int flags; /* KVCG_MEM_ACCESS_RW */
};

#define KVCG_MEM_ALLOCATION_PINNED   1
#define KVCG_MEM_HANDLE_POSIX_FD     1
#define KVCG_MEM_LOCATION_DEVICE     1
#define KVCG_MEM_ACCESS_RW	     3
#define KVCG_MEM_GRANULARITY_MINIMUM 0
#define KVCG_ATTR_VMM_SUPPORTED	     102
#define KVCG_ATTR_POSIX_FD_SUPPORTED 103
#define KVCG_HOST_REGISTER_PORTABLE  1
#define KVCG_STREAM_NON_BLOCKING     1

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
	CUresult (*memset8_async)(CUdeviceptr dst, unsigned char v, size_t n, CUstream s);
	CUresult (*attribute)(int *v, int attr, CUdevice d);
	CUresult (*stream_create)(CUstream *s, unsigned flags);
	CUresult (*stream_destroy)(CUstream s);
	CUresult (*stream_sync)(CUstream s);
	CUresult (*htod_async)(CUdeviceptr dst, const void *src, size_t bytes, CUstream s);
	CUresult (*dtoh_async)(void *dst, CUdeviceptr src, size_t bytes, CUstream s);
	CUresult (*dtod_async)(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s);
	CUresult (*host_register)(void *p, size_t bytes, unsigned flags);
	CUresult (*host_unregister)(void *p);
	CUresult (*mem_granularity)(size_t *g, const struct kvcg_mem_prop *prop, int option);
	CUresult (*mem_create)(CUmemGenericAllocationHandle *h, size_t size,
			       const struct kvcg_mem_prop *prop, unsigned long long flags);
	CUresult (*mem_release)(CUmemGenericAllocationHandle h);
	CUresult (*mem_export)(void *shareable, CUmemGenericAllocationHandle h, int type,
			       unsigned long long flags);
	CUresult (*va_reserve)(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr,
			       unsigned long long flags);
	CUresult (*va_free)(CUdeviceptr p, size_t size);
	CUresult (*mem_map)(CUdeviceptr p, size_t size, size_t offset,
			    CUmemGenericAllocationHandle h, unsigned long long flags);
	CUresult (*mem_unmap)(CUdeviceptr p, size_t size);
	CUresult (*mem_set_access)(CUdeviceptr p, size_t size, const struct kvcg_mem_access *d,
				   size_t count);
};

/* Load the driver: 0 with @cu filled and *@lib the handle (dlclose it), or -ENOENT (no
 * libcuda.so.1) / -ENOSYS (it lacks an entry point) with the reason in @why. */
int kvcg_cu_load(struct kvcg_cu *cu, void **lib, char *why, size_t len);
/* The driver's words for @e, or "CUDA error N" in @buf. */
const char *kvcg_cu_err(const struct kvcg_cu *cu, CUresult e, char *buf, size_t len);

/* The embedded fatbin (fatbin.c): its bytes, and 0 when nvcc was not found at build time. */
extern const unsigned char kvcg_fatbin[];
size_t kvcg_fatbin_size(void);

/* One device: its primary context, and the codec kernels when the fatbin has code for it. */
struct kvcg_dev {
	int ordinal;
	CUdevice dev;
	CUcontext ctx;
	CUmodule mod; /* NULL: no codec kernels (why: codec_why) */
	CUfunction enc_params, enc_codes, dec;
	char name[96];
	char codec_why[96];
};

/* Open device @ordinal with the driver @cu (cuInit called): retain its primary context, make
 * it current on this thread and load the kernels. 0, or -ENODEV with the reason in @why; a
 * device whose kernels cannot be loaded still opens (dv->mod NULL, dv->codec_why says why).
 * kvcg_dev_close releases what an open took, also half-way. */
int kvcg_dev_open(const struct kvcg_cu *cu, int ordinal, struct kvcg_dev *dv, char *why,
		  size_t len);
void kvcg_dev_close(const struct kvcg_cu *cu, struct kvcg_dev *dv);
/* Make @dv's context current on this thread (each thread that calls into it must). */
int kvcg_dev_bind(const struct kvcg_cu *cu, const struct kvcg_dev *dv);

/* Encode the raw block at @raw (device memory, aligned to its element size) into @dst as @j
 * describes, the header excluded (the caller copies kvcd_codec_gpu_header's bytes to @dst).
 * @err: one device int, set to 0 here; after the stream's work it holds 0, -EINVAL or
 * -ERANGE (the block needs the CPU codec's answer). Asynchronous on @s; returns 0, -ENOEXEC
 * (no kernels on this device) or -EIO when a launch fails. */
int kvcg_encode(const struct kvcg_cu *cu, const struct kvcg_dev *dv, const struct kvcg_job *j,
		CUdeviceptr raw, CUdeviceptr dst, CUdeviceptr err, CUstream s);
/* Decode the encoded block at @in (as @j, from kvcd_codec_gpu_read) into @raw. */
int kvcg_decode(const struct kvcg_cu *cu, const struct kvcg_dev *dv, const struct kvcg_job *j,
		CUdeviceptr in, CUdeviceptr raw, CUstream s);

/* For tools and tests: the driver and one device with its kernels. */
struct kvcg_rt {
	struct kvcg_cu cu;
	void *lib;
	struct kvcg_dev d;
};

/* Load the driver and open device @ordinal: 0, -ENOENT (no driver), -ENODEV (no such device,
 * or the driver cannot be initialised), -ENOEXEC (no kernels for it: not built, or nothing
 * for this device), with the reason in @why. kvcg_rt_close releases it, also half-way. */
int kvcg_rt_open(struct kvcg_rt *rt, int ordinal, char *why, size_t len);
void kvcg_rt_close(struct kvcg_rt *rt);

#endif /* KVCG_RT_H */
