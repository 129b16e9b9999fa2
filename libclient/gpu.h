/* gpu.h - libkvcclient's GPU staging (gpu.c); private to the library. */
#ifndef KVCC_GPU_H
#define KVCC_GPU_H

#include <stdint.h>

#include "../proto/kvcp.h"

/* The CUDA driver's structs and constants this needs, as its ABI has them (tests/unit_gpuabi.c
 * checks them against cuda.h where the toolkit is installed). */
struct kvcc_loc { /* CUmemLocation */
	int type, id;
};

struct kvcc_access_desc { /* CUmemAccessDesc */
	struct kvcc_loc location;
	int flags;
};

#define KVCC_LOC_DEVICE	     1 /* CU_MEM_LOCATION_TYPE_DEVICE */
#define KVCC_HANDLE_POSIX_FD 1 /* CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR */
#define KVCC_ACCESS_RW	     3 /* CU_MEM_ACCESS_FLAGS_PROT_READWRITE */

/* One device's GPU staging as this process maps it. */
struct kvcc_gpu {
	unsigned long long va;	   /* the address, kept across re-attaches */
	unsigned long long handle; /* the imported allocation */
	uint64_t size;
	void *ctx;	/* the device's primary context, retained while mapped */
	int device;	/* this process's CUdevice */
	uint32_t index; /* kvcd's device index */
	int mapped;
};

/* Import @fd (the allocation kvcd exported for device @d) and map it at g->va (reserved on
 * first use). Returns 0, -ENODEV (no driver), -ENXIO (the device is not visible here),
 * -EPROTO (a re-attach granted another size), -EBADF, -ENOMEM or -EACCES. The caller closes
 * @fd. */
int kvcc_gpu_map(struct kvcc_gpu *g, const struct kvcp_attach_gpu_dev *d, int fd);
/* Unmap and release the allocation; the address range too unless @keep_va. */
void kvcc_gpu_unmap(struct kvcc_gpu *g, int keep_va);
/* Copy @n bytes from host @src to GPU staging offset @off (synchronous). 0, -EINVAL, -EIO. */
int kvcc_gpu_htod(struct kvcc_gpu *g, uint64_t off, const void *src, size_t n);
/* The CUdevice of this process's CUDA ordinal @ordinal. */
int kvcc_gpu_device(int ordinal, int *dev);

#endif /* KVCC_GPU_H */
