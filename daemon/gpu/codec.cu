/* codec.cu - the GPU codec kernels: each walks its grid over kern.h's items, so that what
 * runs here is what tests/unit_gpucodec.c checks against the CPU codecs on the host.
 *
 * Built by nvcc into a fatbin (sm_80, sm_90, sm_100 and PTX for later devices) with
 * --fmad=false and IEEE division and square root: no contraction or approximation may change
 * a rounding. The host loads it with cuModuleLoadData (daemon/gpu/rt.c); kernels are looked
 * up by these names. A grid-stride loop lets the host bound the grid whatever the block.
 */
#include "kern.h"

#define KVCG_STRIDE_LOOP(i, n)                                                       \
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (n); \
	     i += (uint64_t)gridDim.x * blockDim.x)

/* Phase 1: every group's parameters. *@err keeps the first error any item met. */
extern "C" __global__ void kvcg_encode_params(struct kvcg_job j, const uint8_t *raw, uint8_t *dst,
					      int *err)
{
	uint64_t n = kvcg_enc1_items(&j);

	KVCG_STRIDE_LOOP(i, n)
	{
		int e = kvcg_enc_params(&j, raw, dst, i);

		if (e)
			atomicCAS(err, 0, e);
	}
}

/* Phase 2: codes and residual rows, after phase 1 has written every group's parameters. */
extern "C" __global__ void kvcg_encode_codes(struct kvcg_job j, const uint8_t *raw, uint8_t *dst)
{
	uint64_t n = kvcg_enc2_items(&j);

	KVCG_STRIDE_LOOP(i, n)
	kvcg_enc_codes(&j, raw, dst, i);
}

extern "C" __global__ void kvcg_decode(struct kvcg_job j, const uint8_t *in, uint8_t *raw)
{
	uint64_t n = kvcg_dec_items(&j);

	KVCG_STRIDE_LOOP(i, n)
	kvcg_dec_elem(&j, in, raw, i);
}
