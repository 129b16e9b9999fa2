/* isa.c - CPU feature detection for the codec's and the checksum's vector kernels. */
#include <cpuid.h>

#include "isa.h"

enum kvcd_isa kvcd_isa_best(void)
{
	static int best = -1;

	if (best < 0) {
		__builtin_cpu_init();
		if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
			best = __builtin_cpu_supports("avx512vnni") ? KVCD_ISA_AVX512_VNNI
								    : KVCD_ISA_AVX512;
		else
			best = __builtin_cpu_supports("avx2") ? KVCD_ISA_AVX2 : KVCD_ISA_SCALAR;
	}
	return (enum kvcd_isa)best;
}

enum kvcd_isa kvcd_isa_clamp(enum kvcd_isa isa)
{
	return isa > kvcd_isa_best() ? kvcd_isa_best() : isa;
}

const char *kvcd_isa_name(enum kvcd_isa isa)
{
	static const char *const names[] = { "scalar", "avx2", "avx512", "avx512vnni" };

	return (unsigned)isa <= KVCD_ISA_AVX512_VNNI ? names[isa] : "?";
}

/* F16C converts exactly like kvcd_f32_to_f16 / kvcd_f16_to_f32 on finite values
 * (unit_quant checks it), at a fraction of the cost: the SIMD variants use it. */
bool kvcd_has_f16c(void)
{
	static int known = -1;
	unsigned a, b, c, d;

	if (known < 0)
		known = kvcd_isa_best() >= KVCD_ISA_AVX2 && __get_cpuid(1, &a, &b, &c, &d) &&
			(c & bit_F16C);
	return known;
}
