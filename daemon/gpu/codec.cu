/* codec.cu - the GPU codec kernels: each walks its grid over kern.h's items, so that what
 * runs here is what tests/unit_gpucodec.c checks against the CPU codecs on the host.
 *
 * Built by nvcc into a fatbin (sm_80, sm_90, sm_100 and PTX for later devices) with
 * --fmad=false and IEEE division and square root: no contraction or approximation may change
 * a rounding. The host loads it with cuModuleLoadData (daemon/gpu/rt.c); kernels are looked
 * up by these names. The grid's rows are the block's units and its columns their items, each
 * grid-strided so that the host bounds the grid whatever the block.
 */
#include "kern.h"

/* Units along y, their items along x, both grid-strided. */
#define KVCG_GRID_LOOP(unit, k, items)                                                   \
	for (uint32_t unit = blockIdx.y; unit < kvcg_units(&j); unit += gridDim.y)        \
		for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x,                   \
			      n_ = items(&j, unit / j.heads % 2);                          \
		     k < n_; k += gridDim.x * blockDim.x)

/* Phase 1: every group's parameters. *@err keeps the first error any item met. */
extern "C" __global__ void kvcg_encode_params(struct kvcg_job j, const uint8_t *raw, uint8_t *dst,
					      int *err)
{
	KVCG_GRID_LOOP(unit, k, kvcg_enc1_items)
	{
		int e = kvcg_enc_params(&j, raw, dst, unit, k);

		if (e)
			atomicCAS(err, 0, e);
	}
}

/* Phase 2: codes and residual rows, after phase 1 has written every group's parameters. */
extern "C" __global__ void kvcg_encode_codes(struct kvcg_job j, const uint8_t *raw, uint8_t *dst)
{
	KVCG_GRID_LOOP(unit, k, kvcg_enc2_items)
	kvcg_enc_codes(&j, raw, dst, unit, k);
}

extern "C" __global__ void kvcg_decode(struct kvcg_job j, const uint8_t *in, uint8_t *raw)
{
	KVCG_GRID_LOOP(unit, k, kvcg_dec_items)
	kvcg_dec_elem(&j, in, raw, unit, k);
}
