/* unit_gpuabi.c - the CUDA driver ABI as kvcd (daemon/gpu/rt.h) and libkvcclient
 * (libclient/gpu.h) declare it, to build without cuda.h: every struct layout and constant
 * against cuda.h itself, where the toolkit is installed (the Makefile adds its include
 * directory). */
#if __has_include(<cuda.h>)
#include <cuda.h> /* first: rt.h then takes its types */
#define HAVE_CUDA_H 1
#endif
#include "t_util.h"
#include "rt.h"
#include "../libclient/gpu.h"

#ifdef HAVE_CUDA_H

#define SAME_FIELD(a, fa, b, fb) \
	(offsetof(a, fa) == offsetof(b, fb) && sizeof(((a *)0)->fa) == sizeof(((b *)0)->fb))

static_assert(sizeof(struct kvcg_mem_prop) == sizeof(CUmemAllocationProp), "prop size");
static_assert(SAME_FIELD(struct kvcg_mem_prop, type, CUmemAllocationProp, type), "prop.type");
static_assert(SAME_FIELD(struct kvcg_mem_prop, handle_types, CUmemAllocationProp,
			 requestedHandleTypes),
	      "prop.handle_types");
static_assert(SAME_FIELD(struct kvcg_mem_prop, location, CUmemAllocationProp, location),
	      "prop.location");
static_assert(SAME_FIELD(struct kvcg_mem_prop, win32_meta, CUmemAllocationProp,
			 win32HandleMetaData),
	      "prop.win32_meta");
static_assert(offsetof(struct kvcg_mem_prop, compression) ==
		      offsetof(CUmemAllocationProp, allocFlags),
	      "prop.allocFlags");
static_assert(sizeof(struct kvcg_mem_location) == sizeof(CUmemLocation), "location size");
static_assert(SAME_FIELD(struct kvcg_mem_location, id, CUmemLocation, id), "location.id");
static_assert(sizeof(struct kvcg_mem_access) == sizeof(CUmemAccessDesc), "access size");
static_assert(SAME_FIELD(struct kvcg_mem_access, flags, CUmemAccessDesc, flags), "access.flags");
static_assert(sizeof(struct kvcc_access_desc) == sizeof(CUmemAccessDesc), "client access size");
static_assert(SAME_FIELD(struct kvcc_access_desc, flags, CUmemAccessDesc, flags),
	      "client access.flags");
static_assert(sizeof(CUmemGenericAllocationHandle) == sizeof(unsigned long long), "handle");
static_assert(sizeof(CUdeviceptr) == sizeof(unsigned long long), "device pointer");

static_assert(KVCG_MEM_ALLOCATION_PINNED == CU_MEM_ALLOCATION_TYPE_PINNED, "pinned");
static_assert(KVCG_MEM_HANDLE_POSIX_FD == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, "posix fd");
static_assert(KVCG_MEM_LOCATION_DEVICE == CU_MEM_LOCATION_TYPE_DEVICE, "location device");
static_assert(KVCG_MEM_ACCESS_RW == CU_MEM_ACCESS_FLAGS_PROT_READWRITE, "read-write");
static_assert(KVCG_MEM_GRANULARITY_MINIMUM == CU_MEM_ALLOC_GRANULARITY_MINIMUM, "granularity");
static_assert(KVCG_ATTR_VMM_SUPPORTED == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
	      "vmm attribute");
static_assert(KVCG_ATTR_POSIX_FD_SUPPORTED ==
		      CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
	      "posix fd attribute");
static_assert(KVCG_HOST_REGISTER_PORTABLE == CU_MEMHOSTREGISTER_PORTABLE, "portable");
static_assert(KVCG_STREAM_NON_BLOCKING == CU_STREAM_NON_BLOCKING, "non-blocking stream");
static_assert(KVCC_LOC_DEVICE == CU_MEM_LOCATION_TYPE_DEVICE &&
		      KVCC_HANDLE_POSIX_FD == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR &&
		      KVCC_ACCESS_RW == CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
	      "client constants");

/* The driver's entry points, by the names the loaders resolve: each is the one cuda.h maps
 * the API to (its _v2 and default-stream spellings). */
Test(gpuabi, symbol_names_are_cuda_h_s)
{
	static const struct {
		const char *api, *mapped, *ours;
	} names[] = {
#define STR2(x) #x
#define STR(x)	STR2(x)
		{ "cuDeviceTotalMem", STR(cuDeviceTotalMem), "cuDeviceTotalMem_v2" },
		{ "cuDevicePrimaryCtxRelease", STR(cuDevicePrimaryCtxRelease),
		  "cuDevicePrimaryCtxRelease_v2" },
		{ "cuMemAlloc", STR(cuMemAlloc), "cuMemAlloc_v2" },
		{ "cuMemFree", STR(cuMemFree), "cuMemFree_v2" },
		{ "cuMemAllocHost", STR(cuMemAllocHost), "cuMemAllocHost_v2" },
		{ "cuMemHostRegister", STR(cuMemHostRegister), "cuMemHostRegister_v2" },
		{ "cuStreamDestroy", STR(cuStreamDestroy), "cuStreamDestroy_v2" },
		{ "cuStreamSynchronize", STR(cuStreamSynchronize), "cuStreamSynchronize" },
		{ "cuMemcpyHtoD", STR(cuMemcpyHtoD), "cuMemcpyHtoD_v2" },
		{ "cuMemcpyDtoH", STR(cuMemcpyDtoH), "cuMemcpyDtoH_v2" },
		{ "cuMemcpyDtoD", STR(cuMemcpyDtoD), "cuMemcpyDtoD_v2" },
		{ "cuMemsetD8", STR(cuMemsetD8), "cuMemsetD8_v2" },
		{ "cuMemsetD8Async", STR(cuMemsetD8Async), "cuMemsetD8Async" },
		{ "cuMemcpyHtoDAsync", STR(cuMemcpyHtoDAsync), "cuMemcpyHtoDAsync_v2" },
		{ "cuMemcpyDtoHAsync", STR(cuMemcpyDtoHAsync), "cuMemcpyDtoHAsync_v2" },
		{ "cuMemcpyDtoDAsync", STR(cuMemcpyDtoDAsync), "cuMemcpyDtoDAsync_v2" },
		{ "cuLaunchKernel", STR(cuLaunchKernel), "cuLaunchKernel" },
		{ "cuCtxPushCurrent", STR(cuCtxPushCurrent), "cuCtxPushCurrent_v2" },
		{ "cuCtxPopCurrent", STR(cuCtxPopCurrent), "cuCtxPopCurrent_v2" },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cr_assert_str_eq(names[i].mapped, names[i].ours, "%s", names[i].api);
}
#else
Test(gpuabi, symbol_names_are_cuda_h_s)
{
	cr_skip_test("skipped: no cuda.h (the CUDA toolkit) to check against");
}
#endif
