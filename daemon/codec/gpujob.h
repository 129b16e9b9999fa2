/* gpujob.h - a block in the units form, described for the GPU codec kernels (daemon/gpu/).
 *
 * The kernels know nothing of policies: libkvccodec fixes every count and offset of a block
 * (kvcd_codec_gpu_job) and the kernels walk it. Plain C with fixed-width fields only, so
 * that nvcc and the C compiler read the same struct and a job can be passed to a kernel by
 * value.
 *
 * Which blocks: the int, fp8 and kivi codecs with every token regular (no sinks in the block,
 * no outlier or important tokens, no rotation, rope, sparse values or params=u8), no token
 * selection and no SELECT summary. Everything else stays on the CPU codecs.
 */
#ifndef KVCD_GPUJOB_H
#define KVCD_GPUJOB_H

#include <stdint.h>

/* The codec kinds, the values of KVCP_CODEC_* (units.c checks that they agree). */
#define KVCG_INT  1u
#define KVCG_FP8  2u
#define KVCG_KIVI 3u

/* The dtypes, the values of KVCP_F32 etc. */
#define KVCG_F32  1u
#define KVCG_F16  2u
#define KVCG_BF16 3u

/* One K or V unit: T rows of hd channels. */
struct kvcg_unit {
	uint64_t bytes;	      /* the whole unit */
	uint64_t codes_at;    /* its codes, after the parameters */
	uint64_t code_bytes;  /* packed codes (fp8: one byte each) */
	uint64_t res_at;      /* kivi K: the residual rows, in the engine's dtype */
	uint32_t nq;	      /* rows quantized: the first nq tokens */
	uint32_t nres;	      /* rows after them kept exact (kivi K) */
	uint32_t nparams;     /* parameter groups */
	uint32_t bits;	      /* int, kivi; 8 for fp8 */
	uint32_t per_channel; /* kivi K: groups of G tokens of one channel */
	uint32_t one_pass;    /* each per-token group's codes fill whole bytes: phase 1 writes
			       * them too, and phase 2 has nothing to do */
};

struct kvcg_job {
	uint32_t kind;			    /* KVCG_* */
	uint32_t dtype;			    /* KVCG_F32, F16, BF16 */
	uint32_t es;			    /* bytes per element */
	uint32_t layers, heads, tokens, hd; /* the codec's view: one head of kv_heads *
					     * head_dim channels when groups span heads */
	uint32_t gch, ngt;		    /* per-token groups: channels each, per row */
	uint32_t G;			    /* kivi K: tokens per group */
	uint64_t body;			    /* where the first unit starts: the header's size */
	uint64_t bytes;			    /* the encoded block */
	uint64_t raw_bytes;		    /* the block in the engine's layout */
	struct kvcg_unit u[2];		    /* K, V */
};

#endif /* KVCD_GPUJOB_H */
